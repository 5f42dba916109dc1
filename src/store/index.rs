//! The in-memory LRU index over the disk cache.
//!
//! The unit of eviction is a *group*: one NAR (keyed by its FileHash) together with every
//! narinfo that points at it. A NAR shared by several narinfos is counted once, and a narinfo
//! is never left pointing at an evicted NAR. A group may hold narinfos whose NAR was never
//! fetched, or (after a crash between the two writes) a NAR without narinfos.
//!
//! Recency is an intrusive doubly linked list through the groups, so touch and evict are O(1).
//! The storage is compact (see [`super::slots`]): binary keys in fixed-size nodes, about
//! 100 bytes per narinfo+NAR pair and no per-entry heap allocation.
//!
//! While the start-up scan runs ([`Index::start_scan`]), the scan adds what it finds at the
//! cold end without displacing anything already known (found on disk by a lookup, or used),
//! nothing is evicted (the partial index cannot tell what is least recently used) and what is
//! removed is remembered so that the scan does not bring it back. [`Index::finish_scan`]
//! orders the groups the scan found by mtime, oldest coldest.

mod scan;
mod served;

use std::collections::HashSet;

use super::slots::{Slots, CHECKED, HAS_NAR, PENDING};
use crate::nix::compression::NAR_EXTENSIONS;
use crate::nix::hash::Sha256;
use crate::nix::store_path::StorePathHash;

/// A NAR file in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarFile {
    /// Extension with its dot, e.g. `.xz`, or `""` (one of `NAR_EXTENSIONS`).
    pub ext: &'static str,
    pub size: u64,
    /// False for a file found on disk at start-up until its size was checked against its
    /// narinfo (the disk may have changed since nixgate wrote it).
    pub checked: bool,
}

/// What an eviction removed; the caller deletes the files.
#[derive(Debug, PartialEq, Eq)]
pub struct Evicted {
    pub file_hash: Sha256,
    pub narinfos: Vec<StorePathHash>,
    pub nar: Option<NarFile>,
    /// nixgate's own file of the NAR ([`Index::insert_served`]), evicted with its group.
    pub served: Option<NarFile>,
}

/// The start-up scan's state: the mtime of each group it found (by group index) and what was
/// removed meanwhile.
#[derive(Debug, Default)]
struct Scan {
    mtimes: Vec<u64>,
    gone_narinfos: HashSet<[u8; 20]>,
    gone_nars: HashSet<[u8; 32]>,
}

/// The LRU index.
#[derive(Debug, Default)]
pub struct Index {
    slots: Slots,
    bytes: u64,
    files: u64,
    /// Bytes promised to downloads under way (not yet committed): they count against the cap.
    reserved: u64,
    scan: Option<Box<Scan>>,
    /// nixgate's own files (zstd or plain) of the groups that have one, by FileHash: a side
    /// table, since few groups have one at first and a slot costs every group.
    served: std::collections::HashMap<[u8; 32], NarFile>,
}

fn ext_index(ext: &str) -> u8 {
    let i = NAR_EXTENSIONS.iter().position(|e| *e == ext);
    i.expect("a NAR extension from NAR_EXTENSIONS") as u8
}

impl Index {
    /// Total bytes of all indexed files.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of indexed files (narinfos + NARs).
    pub fn files(&self) -> u64 {
        self.files
    }

    /// The store path hashes of every narinfo, and the FileHashes of every NAR held.
    pub fn keys(&self) -> (Vec<StorePathHash>, Vec<Sha256>) {
        let s = &self.slots;
        let narinfos = s.live_infos().map(|i| StorePathHash(s.infos[i as usize].h));
        let nars = s.live_groups().map(|g| &s.groups[g as usize]);
        let nars = nars
            .filter(|g| g.flags & HAS_NAR != 0)
            .map(|g| Sha256(g.fh));
        (narinfos.collect(), nars.collect())
    }

    fn nar_of(&self, g: u32) -> Option<NarFile> {
        let g = &self.slots.groups[g as usize];
        (g.flags & HAS_NAR != 0).then(|| NarFile {
            ext: NAR_EXTENSIONS[g.ext as usize],
            size: g.nar_size,
            checked: g.flags & CHECKED != 0,
        })
    }

    /// Marks group `g` used: it becomes the most recently used (and keeps its place when the
    /// scan ends).
    fn touch(&mut self, g: u32) {
        self.slots.groups[g as usize].flags &= !PENDING;
        self.slots.link_front(g);
    }

    /// The group of `fh`, created (most recently used) if needed.
    fn group(&mut self, fh: Sha256) -> u32 {
        match self.slots.find_group(&fh.0) {
            Some(g) => g,
            None => {
                let g = self.slots.new_group(fh.0);
                self.slots.link_front(g);
                g
            }
        }
    }

    /// The FileHash of the NAR a cached narinfo points at; marks the group used.
    pub fn narinfo(&mut self, h: &StorePathHash) -> Option<Sha256> {
        let n = self.slots.find_info(&h.0)?;
        let g = self.slots.infos[n as usize].group;
        self.touch(g);
        Some(Sha256(self.slots.groups[g as usize].fh))
    }

    /// The cached NAR with this FileHash, if present; marks the group used.
    pub fn nar(&mut self, fh: &Sha256) -> Option<NarFile> {
        let g = self.slots.find_group(&fh.0)?;
        let nar = self.nar_of(g)?;
        self.touch(g);
        Some(nar)
    }

    /// The narinfos that point at this NAR (without marking anything used).
    pub fn narinfos_of(&self, fh: &Sha256) -> Vec<StorePathHash> {
        let Some(g) = self.slots.find_group(&fh.0) else {
            return Vec::new();
        };
        self.slots.infos_of(g).map(|i| StorePathHash(i.h)).collect()
    }

    /// Records a narinfo file of `size` bytes for `h`, pointing at `fh`. A previous narinfo
    /// for `h` is replaced; returns the FileHash it pointed at when that differs.
    pub fn insert_narinfo(&mut self, h: StorePathHash, fh: Sha256, size: u64) -> Option<Sha256> {
        let old = self.remove_narinfo(&h).filter(|o| *o != fh);
        let g = self.group(fh);
        self.add_narinfo(h, g, size);
        self.touch(g);
        old
    }

    fn add_narinfo(&mut self, h: StorePathHash, g: u32, size: u64) {
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        self.slots.new_info(h.0, size, g);
        self.bytes += u64::from(size);
        self.files += 1;
    }

    /// Removes the narinfo of `h` (a damaged file); the FileHash it pointed at.
    pub fn drop_narinfo(&mut self, h: &StorePathHash) -> Option<Sha256> {
        self.remove_narinfo(h)
    }

    /// Marks the NAR of `fh` as checked.
    pub fn mark_checked(&mut self, fh: &Sha256) {
        if let Some(g) = self.slots.find_group(&fh.0) {
            let g = &mut self.slots.groups[g as usize];
            if g.flags & HAS_NAR != 0 {
                g.flags |= CHECKED;
            }
        }
    }

    pub(super) fn remove_narinfo(&mut self, h: &StorePathHash) -> Option<Sha256> {
        let n = self.slots.find_info(&h.0)?;
        let info = self.slots.infos[n as usize].clone();
        self.slots.free_info(n);
        self.bytes -= u64::from(info.size);
        self.files -= 1;
        if let Some(scan) = &mut self.scan {
            scan.gone_narinfos.insert(h.0);
        }
        Some(Sha256(self.slots.groups[info.group as usize].fh))
    }

    /// Records the NAR file for `fh` (replacing a previous record).
    pub fn insert_nar(&mut self, fh: Sha256, nar: NarFile) {
        let g = self.group(fh);
        self.set_nar(g, nar);
        self.touch(g);
    }

    fn set_nar(&mut self, g: u32, nar: NarFile) {
        let old = self.nar_of(g);
        self.bytes = self.bytes + nar.size - old.map_or(0, |o| o.size);
        self.files += u64::from(old.is_none());
        let node = &mut self.slots.groups[g as usize];
        node.nar_size = nar.size;
        node.ext = ext_index(nar.ext);
        node.flags = (node.flags & PENDING) | HAS_NAR | if nar.checked { CHECKED } else { 0 };
    }

    /// Removes the record of the NAR of `fh` alone (its file vanished from the disk); its
    /// narinfos stay, so the NAR is fetched again by their URL.
    pub fn remove_nar(&mut self, fh: &Sha256) -> Option<NarFile> {
        let g = self.slots.find_group(&fh.0)?;
        let nar = self.nar_of(g)?;
        self.bytes -= nar.size;
        self.files -= 1;
        self.slots.groups[g as usize].flags &= !(HAS_NAR | CHECKED);
        if let Some(scan) = &mut self.scan {
            scan.gone_nars.insert(fh.0);
        }
        Some(nar)
    }

    /// Removes a whole group (e.g. a file of it vanished from disk).
    pub fn remove_group(&mut self, fh: &Sha256) -> Option<Evicted> {
        let g = self.slots.find_group(&fh.0)?;
        let nar = self.nar_of(g);
        let narinfos: Vec<StorePathHash> =
            self.slots.infos_of(g).map(|i| StorePathHash(i.h)).collect();
        for h in &narinfos {
            self.remove_narinfo(h);
        }
        let served = self.served.remove(&fh.0);
        for n in nar.iter().chain(&served) {
            self.bytes -= n.size;
            self.files -= 1;
        }
        if let Some(scan) = &mut self.scan {
            scan.gone_nars.insert(fh.0);
        }
        self.slots.free_group(g);
        Some(Evicted {
            file_hash: *fh,
            narinfos,
            nar,
            served,
        })
    }

    /// Bytes promised to downloads under way.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Promises `n` more bytes to a download if indexed files can be evicted to make room under
    /// `cap` (reservations are never evicted); evicts them. `None`: it does not fit, or the
    /// start-up scan is still running (what the disk holds is not known yet).
    pub fn reserve(&mut self, n: u64, cap: u64) -> Option<Vec<Evicted>> {
        if self.scanning() {
            return None;
        }
        let reserved = self.reserved.checked_add(n).filter(|r| *r <= cap)?;
        self.reserved = reserved;
        Some(self.evict_to(cap - reserved, None))
    }

    /// Gives back `n` reserved bytes (the download ended or was committed).
    pub fn release(&mut self, n: u64) {
        self.reserved = self.reserved.saturating_sub(n);
    }

    /// Evicts least recently used groups until at most `limit` bytes remain, never evicting
    /// `keep` (the group just written). Nothing is evicted while the start-up scan runs.
    pub fn evict_to(&mut self, limit: u64, keep: Option<&Sha256>) -> Vec<Evicted> {
        let mut out = Vec::new();
        let mut at = self.slots.tail();
        while self.bytes > limit && !self.scanning() {
            let Some(g) = at else { break };
            at = self.slots.newer(g);
            let fh = Sha256(self.slots.groups[g as usize].fh);
            if Some(&fh) != keep {
                out.extend(self.remove_group(&fh));
            }
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

    #[test]
    fn an_entry_costs_about_100_bytes() {
        use crate::store::slots::{Group, Info};
        assert_eq!(std::mem::size_of::<Group>(), 56);
        assert_eq!(std::mem::size_of::<Info>(), 32);
        let mut ix = Index::default();
        let n = 100_000u32;
        for i in 0..n {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            let mut hk = [0u8; 20];
            hk[..4].copy_from_slice(&i.to_le_bytes());
            ix.insert_narinfo(StorePathHash(hk), Sha256(k), 500);
            ix.insert_nar(Sha256(k), NAR);
        }
        let per_pair = ix.slots.heap_bytes() / n as usize;
        // Slab nodes (88 bytes) plus table buckets, with the slack of the last doubling.
        eprintln!("{per_pair} bytes per narinfo+NAR pair");
        assert!(per_pair <= 2 * 100, "{per_pair} bytes per narinfo+NAR pair");
        assert_eq!(ix.files(), 2 * u64::from(n));
        assert_eq!(ix.evict_to(0, None).len(), n as usize);
        assert_eq!(ix.bytes(), 0);
    }
}
