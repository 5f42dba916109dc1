//! The in-memory LRU index over the disk cache.
//!
//! The unit of eviction is a *group*: one NAR (keyed by its FileHash) together with every
//! narinfo that points at it. A NAR shared by several narinfos is counted once, and a narinfo
//! is never left pointing at an evicted NAR. A group may hold narinfos whose NAR was never
//! fetched, or (after a crash between the two writes) a NAR without narinfos.
//!
//! Recency is a logical clock: each access moves the group to a new tick in a `BTreeMap`, so
//! touch and evict are O(log n) and the index holds ~150 bytes per entry.

use std::collections::{BTreeMap, HashMap};

use crate::nix::hash::Sha256;
use crate::nix::store_path::StorePathHash;

/// A NAR file in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarFile {
    /// Extension with its dot, e.g. `.xz`, or `""`.
    pub ext: &'static str,
    pub size: u64,
    /// False for a file found on disk at start-up until its size was checked against its
    /// narinfo (the disk may have changed since nixgate wrote it).
    pub checked: bool,
}

#[derive(Debug, Default)]
struct Group {
    narinfos: Vec<(StorePathHash, u64)>,
    nar: Option<NarFile>,
    tick: u64,
}

impl Group {
    fn bytes(&self) -> u64 {
        self.narinfos.iter().map(|(_, s)| s).sum::<u64>() + self.nar.map_or(0, |n| n.size)
    }
    fn files(&self) -> u64 {
        self.narinfos.len() as u64 + u64::from(self.nar.is_some())
    }
}

/// What an eviction removed; the caller deletes the files.
#[derive(Debug, PartialEq, Eq)]
pub struct Evicted {
    pub file_hash: Sha256,
    pub narinfos: Vec<StorePathHash>,
    pub nar: Option<NarFile>,
}

/// The LRU index.
#[derive(Debug, Default)]
pub struct Index {
    narinfos: HashMap<StorePathHash, Sha256>,
    groups: HashMap<Sha256, Group>,
    lru: BTreeMap<u64, Sha256>,
    clock: u64,
    bytes: u64,
    files: u64,
    /// Bytes promised to downloads under way (not yet committed): they count against the cap.
    reserved: u64,
}

impl Index {
    /// Total bytes of all indexed files.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The store path hashes of every narinfo, and the FileHashes of every NAR held.
    pub fn keys(&self) -> (Vec<StorePathHash>, Vec<Sha256>) {
        let narinfos = self.narinfos.keys().copied().collect();
        let nars = self
            .groups
            .iter()
            .filter(|(_, g)| g.nar.is_some())
            .map(|(fh, _)| *fh)
            .collect();
        (narinfos, nars)
    }

    /// Number of indexed files (narinfos + NARs).
    pub fn files(&self) -> u64 {
        self.files
    }

    fn touch(&mut self, fh: Sha256) {
        self.clock += 1;
        let tick = self.clock;
        if let Some(g) = self.groups.get_mut(&fh) {
            self.lru.remove(&g.tick);
            g.tick = tick;
            self.lru.insert(tick, fh);
        }
    }

    fn group_mut(&mut self, fh: Sha256) -> &mut Group {
        if !self.groups.contains_key(&fh) {
            self.clock += 1;
            self.lru.insert(self.clock, fh);
            self.groups.insert(
                fh,
                Group {
                    tick: self.clock,
                    ..Default::default()
                },
            );
        }
        self.groups.get_mut(&fh).expect("inserted above")
    }

    /// The FileHash of the NAR a cached narinfo points at; marks the group used.
    pub fn narinfo(&mut self, h: &StorePathHash) -> Option<Sha256> {
        let fh = *self.narinfos.get(h)?;
        self.touch(fh);
        Some(fh)
    }

    /// The cached NAR with this FileHash, if present; marks the group used.
    pub fn nar(&mut self, fh: &Sha256) -> Option<NarFile> {
        let nar = self.groups.get(fh)?.nar?;
        self.touch(*fh);
        Some(nar)
    }

    /// The narinfos that point at this NAR (without marking anything used).
    pub fn narinfos_of(&self, fh: &Sha256) -> Vec<StorePathHash> {
        self.groups
            .get(fh)
            .map(|g| g.narinfos.iter().map(|(h, _)| *h).collect())
            .unwrap_or_default()
    }

    /// Records a narinfo file of `size` bytes for `h`, pointing at `fh`. A previous narinfo
    /// for `h` is replaced; returns the FileHash it pointed at when that differs.
    pub fn insert_narinfo(&mut self, h: StorePathHash, fh: Sha256, size: u64) -> Option<Sha256> {
        let old = self.remove_narinfo(&h).filter(|o| *o != fh);
        let g = self.group_mut(fh);
        g.narinfos.push((h, size));
        self.narinfos.insert(h, fh);
        self.bytes += size;
        self.files += 1;
        self.touch(fh);
        old
    }

    /// Removes the narinfo of `h` (a damaged file); the FileHash it pointed at.
    pub fn drop_narinfo(&mut self, h: &StorePathHash) -> Option<Sha256> {
        self.remove_narinfo(h)
    }

    /// Marks the NAR of `fh` as checked.
    pub fn mark_checked(&mut self, fh: &Sha256) {
        if let Some(n) = self.groups.get_mut(fh).and_then(|g| g.nar.as_mut()) {
            n.checked = true;
        }
    }

    pub(super) fn remove_narinfo(&mut self, h: &StorePathHash) -> Option<Sha256> {
        let fh = self.narinfos.remove(h)?;
        let g = self.groups.get_mut(&fh)?;
        if let Some(i) = g.narinfos.iter().position(|(x, _)| x == h) {
            let (_, size) = g.narinfos.swap_remove(i);
            self.bytes -= size;
            self.files -= 1;
        }
        Some(fh)
    }

    /// Records the NAR file for `fh` (replacing a previous record).
    pub fn insert_nar(&mut self, fh: Sha256, nar: NarFile) {
        let g = self.group_mut(fh);
        let old = g.nar.replace(nar);
        self.bytes = self.bytes + nar.size - old.map_or(0, |o| o.size);
        self.files += u64::from(old.is_none());
        self.touch(fh);
    }

    /// Removes a whole group (e.g. a file of it vanished from disk).
    pub fn remove_group(&mut self, fh: &Sha256) -> Option<Evicted> {
        let g = self.groups.remove(fh)?;
        self.lru.remove(&g.tick);
        self.bytes -= g.bytes();
        self.files -= g.files();
        for (h, _) in &g.narinfos {
            self.narinfos.remove(h);
        }
        Some(Evicted {
            file_hash: *fh,
            narinfos: g.narinfos.into_iter().map(|(h, _)| h).collect(),
            nar: g.nar,
        })
    }

    /// Bytes promised to downloads under way.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Promises `n` more bytes to a download if indexed files can be evicted to make room under
    /// `cap` (reservations are never evicted); evicts them. `None`: it does not fit.
    pub fn reserve(&mut self, n: u64, cap: u64) -> Option<Vec<Evicted>> {
        let reserved = self.reserved.checked_add(n).filter(|r| *r <= cap)?;
        self.reserved = reserved;
        Some(self.evict_to(cap - reserved, None))
    }

    /// Gives back `n` reserved bytes (the download ended or was committed).
    pub fn release(&mut self, n: u64) {
        self.reserved = self.reserved.saturating_sub(n);
    }

    /// Evicts least recently used groups until at most `limit` bytes remain, never evicting
    /// `keep` (the group just written).
    pub fn evict_to(&mut self, limit: u64, keep: Option<&Sha256>) -> Vec<Evicted> {
        let mut out = Vec::new();
        let mut skipped = None;
        while self.bytes > limit {
            let Some((&tick, &fh)) = self.lru.range(skipped.map_or(0, |t| t + 1)..).next() else {
                break;
            };
            if Some(&fh) == keep {
                skipped = Some(tick);
                continue;
            }
            out.extend(self.remove_group(&fh));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> StorePathHash {
        StorePathHash([i; 20])
    }
    fn f(i: u8) -> Sha256 {
        Sha256([i; 32])
    }
    const NAR: NarFile = NarFile {
        ext: ".xz",
        size: 1000,
        checked: true,
    };

    #[test]
    fn shared_nar_counts_once_and_evicts_as_a_group() {
        let mut ix = Index::default();
        ix.insert_narinfo(h(1), f(1), 10);
        ix.insert_narinfo(h(2), f(1), 10);
        ix.insert_nar(f(1), NAR);
        assert_eq!((ix.bytes(), ix.files()), (1020, 3));
        ix.insert_narinfo(h(3), f(3), 10);
        ix.insert_nar(f(3), NAR);
        let ev = ix.evict_to(1500, Some(&f(3)));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].file_hash, f(1));
        assert_eq!(ev[0].narinfos.len(), 2);
        assert_eq!(ix.narinfo(&h(1)), None);
        assert_eq!((ix.bytes(), ix.files()), (1010, 2));
    }

    #[test]
    fn access_order_decides() {
        let mut ix = Index::default();
        for i in 1..=3 {
            ix.insert_narinfo(h(i), f(i), 100);
        }
        // Use the oldest: now 2 is the least recently used.
        assert_eq!(ix.narinfo(&h(1)), Some(f(1)));
        let ev = ix.evict_to(200, None);
        assert_eq!(ev[0].file_hash, f(2));
        assert!(ix.narinfo(&h(1)).is_some() && ix.narinfo(&h(3)).is_some());
    }

    #[test]
    fn reservations_count_against_the_cap() {
        let mut ix = Index::default();
        ix.insert_nar(f(1), NAR);
        assert!(ix.reserve(2000, 4000).unwrap().is_empty());
        let ev = ix.reserve(2000, 4000).unwrap();
        assert_eq!(ev.len(), 1, "cached bytes make room for downloads");
        assert!(
            ix.reserve(1, 4000).is_none(),
            "in-flight bytes never exceed the cap"
        );
        ix.release(2000);
        assert!(ix.reserve(2000, 4000).is_some());
        assert!(ix.reserve(u64::MAX, u64::MAX).is_none());
        assert_eq!(ix.reserved(), 4000);
    }

    #[test]
    fn keep_is_never_evicted_and_replacing_moves_a_narinfo() {
        let mut ix = Index::default();
        ix.insert_narinfo(h(1), f(1), 100);
        ix.insert_nar(
            f(1),
            NarFile {
                ext: "",
                size: 5000,
                checked: true,
            },
        );
        assert!(ix.evict_to(10, Some(&f(1))).is_empty());
        assert_eq!(ix.insert_narinfo(h(1), f(2), 50), Some(f(1)));
        assert_eq!(ix.narinfos_of(&f(1)), vec![]);
        assert_eq!(ix.bytes(), 5050);
        assert_eq!(ix.evict_to(0, None).len(), 2);
        assert_eq!((ix.bytes(), ix.files()), (0, 0));
    }
}
