//! The compact storage under the LRU [`super::index`]: groups and narinfos live in two slabs
//! (a `Vec` of fixed-size nodes linked by `u32` indices, with free lists), found through two
//! `hashbrown::HashTable<u32>`s that hold only the node index (the binary key is read from the
//! node), and the LRU is an intrusive doubly linked list through the groups.
//!
//! Cost per narinfo+NAR pair: a [`Group`] (56 bytes) + an [`Info`] (32 bytes) + one bucket in
//! each table (4 bytes + 1 control byte, at a load of 44–87 %: 6–11 bytes each), so 100–110
//! bytes (114 measured as RSS at 1,000,000 pairs, bench/scale.sh), no per-entry heap
//! allocation. Right after a `Vec` or a table doubles, up to
//! twice that is reserved (virtual memory, touched as it fills).

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

/// The null link.
pub(super) const NIL: u32 = u32::MAX;
/// The group holds its NAR (`nar_size`, `ext` are valid).
pub(super) const HAS_NAR: u8 = 1;
/// The NAR's size was checked against its narinfo (or it was written by this process).
pub(super) const CHECKED: u8 = 2;
/// Found by the start-up scan and not used since: placed by mtime when the scan ends.
pub(super) const PENDING: u8 = 4;

/// One NAR (keyed by its FileHash) and the narinfos that point at it: 56 bytes.
#[derive(Debug, Clone)]
pub(super) struct Group {
    pub fh: [u8; 32],
    pub nar_size: u64,
    /// Toward the more recently used end (`NIL` at the head); the free list reuses `next`.
    pub prev: u32,
    /// Toward the less recently used end (`NIL` at the tail).
    pub next: u32,
    /// First narinfo of this group in the `infos` slab.
    pub infos: u32,
    /// Index of the NAR's extension in `NAR_EXTENSIONS`.
    pub ext: u8,
    pub flags: u8,
}

/// One narinfo: 32 bytes.
#[derive(Debug, Clone)]
pub(super) struct Info {
    pub h: [u8; 20],
    /// The file's size (a narinfo is a few KiB; saturates at 4 GiB).
    pub size: u32,
    pub group: u32,
    /// The next narinfo of the same group (`NIL` ends the chain; the free list reuses it).
    pub next: u32,
}

/// The slabs, their lookup tables and the LRU list.
#[derive(Debug, Default)]
pub(super) struct Slots {
    pub groups: Vec<Group>,
    pub infos: Vec<Info>,
    free_groups: Option<u32>,
    free_infos: Option<u32>,
    by_fh: HashTable<u32>,
    by_h: HashTable<u32>,
    /// Keyed (SipHash with a random key): keys come from requests and from narinfos.
    hasher: RandomState,
    /// The most recently used group.
    head: Option<u32>,
    /// The least recently used group.
    tail: Option<u32>,
}

fn opt(i: u32) -> Option<u32> {
    (i != NIL).then_some(i)
}

impl Slots {
    /// The group of FileHash `fh`.
    pub fn find_group(&self, fh: &[u8; 32]) -> Option<u32> {
        let hash = self.hasher.hash_one(fh);
        self.by_fh
            .find(hash, |&i| self.groups[i as usize].fh == *fh)
            .copied()
    }

    /// The narinfo of store path hash `h`.
    pub fn find_info(&self, h: &[u8; 20]) -> Option<u32> {
        let hash = self.hasher.hash_one(h);
        self.by_h
            .find(hash, |&i| self.infos[i as usize].h == *h)
            .copied()
    }

    /// A new empty group for `fh` (not yet in the LRU list; link it).
    pub fn new_group(&mut self, fh: [u8; 32]) -> u32 {
        let node = Group {
            fh,
            nar_size: 0,
            prev: NIL,
            next: NIL,
            infos: NIL,
            ext: 0,
            flags: 0,
        };
        let i = match self.free_groups {
            Some(i) => {
                self.free_groups = opt(self.groups[i as usize].next);
                self.groups[i as usize] = node;
                i
            }
            None => push(&mut self.groups, node),
        };
        let (groups, hasher) = (&self.groups, &self.hasher);
        let hash = hasher.hash_one(fh);
        self.by_fh
            .insert_unique(hash, i, |&j| hasher.hash_one(groups[j as usize].fh));
        i
    }

    /// Frees group `g` (unlinked from the LRU list; its narinfos must be freed first).
    pub fn free_group(&mut self, g: u32) {
        self.unlink(g);
        let hash = self.hasher.hash_one(self.groups[g as usize].fh);
        if let Ok(e) = self.by_fh.find_entry(hash, |&i| i == g) {
            e.remove();
        }
        self.groups[g as usize].next = self.free_groups.unwrap_or(NIL);
        self.groups[g as usize].flags = 0;
        self.free_groups = Some(g);
    }

    /// A new narinfo of `size` bytes for `h` in group `g` (first in its chain).
    pub fn new_info(&mut self, h: [u8; 20], size: u32, g: u32) -> u32 {
        let node = Info {
            h,
            size,
            group: g,
            next: self.groups[g as usize].infos,
        };
        let i = match self.free_infos {
            Some(i) => {
                self.free_infos = opt(self.infos[i as usize].next);
                self.infos[i as usize] = node;
                i
            }
            None => push(&mut self.infos, node),
        };
        self.groups[g as usize].infos = i;
        let (infos, hasher) = (&self.infos, &self.hasher);
        self.by_h.insert_unique(hasher.hash_one(h), i, |&j| {
            hasher.hash_one(infos[j as usize].h)
        });
        i
    }

    /// Frees narinfo `n`, unchaining it from its group.
    pub fn free_info(&mut self, n: u32) {
        let Info { h, group, next, .. } = self.infos[n as usize];
        let hash = self.hasher.hash_one(h);
        if let Ok(e) = self.by_h.find_entry(hash, |&i| i == n) {
            e.remove();
        }
        if self.groups[group as usize].infos == n {
            self.groups[group as usize].infos = next;
        } else {
            let mut at = self.groups[group as usize].infos;
            while at != NIL && self.infos[at as usize].next != n {
                at = self.infos[at as usize].next;
            }
            if at != NIL {
                self.infos[at as usize].next = next;
            }
        }
        self.infos[n as usize].next = self.free_infos.unwrap_or(NIL);
        self.free_infos = Some(n);
    }

    /// The narinfos of group `g`.
    pub fn infos_of(&self, g: u32) -> impl Iterator<Item = &Info> + '_ {
        let mut at = self.groups[g as usize].infos;
        std::iter::from_fn(move || {
            let info = self.infos.get(at as usize)?;
            at = info.next;
            Some(info)
        })
    }

    /// Takes `g` out of the LRU list (a no-op for a group not in it).
    pub fn unlink(&mut self, g: u32) {
        let Group { prev, next, .. } = self.groups[g as usize];
        match opt(prev) {
            Some(p) => self.groups[p as usize].next = next,
            None if self.head == Some(g) => self.head = opt(next),
            None => return,
        }
        match opt(next) {
            Some(n) => self.groups[n as usize].prev = prev,
            None => self.tail = opt(prev),
        }
        let node = &mut self.groups[g as usize];
        (node.prev, node.next) = (NIL, NIL);
    }

    /// Makes `g` the most recently used group.
    pub fn link_front(&mut self, g: u32) {
        self.unlink(g);
        let old = self.head.replace(g);
        self.groups[g as usize].next = old.unwrap_or(NIL);
        match old {
            Some(o) => self.groups[o as usize].prev = g,
            None => self.tail = Some(g),
        }
    }

    /// Makes `g` the least recently used group.
    pub fn link_back(&mut self, g: u32) {
        self.unlink(g);
        let old = self.tail.replace(g);
        self.groups[g as usize].prev = old.unwrap_or(NIL);
        match old {
            Some(o) => self.groups[o as usize].next = g,
            None => self.head = Some(g),
        }
    }

    /// The least recently used group.
    pub fn tail(&self) -> Option<u32> {
        self.tail
    }

    /// The next more recently used group than `g`.
    pub fn newer(&self, g: u32) -> Option<u32> {
        opt(self.groups[g as usize].prev)
    }

    #[cfg(test)]
    /// Heap bytes held (slab capacity and table buckets, with their control bytes).
    pub fn heap_bytes(&self) -> usize {
        let table = |t: &HashTable<u32>| t.capacity() * 8 / 7 * (4 + 1);
        self.groups.capacity() * std::mem::size_of::<Group>()
            + self.infos.capacity() * std::mem::size_of::<Info>()
            + table(&self.by_fh)
            + table(&self.by_h)
    }

    /// Every live group's index.
    pub fn live_groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_fh.iter().copied()
    }

    /// Every live narinfo's index.
    pub fn live_infos(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_h.iter().copied()
    }
}

fn push<T>(v: &mut Vec<T>, node: T) -> u32 {
    let i = u32::try_from(v.len()).ok().filter(|i| *i != NIL);
    let i = i.expect("at most 4 billion cache entries");
    v.push(node);
    i
}
