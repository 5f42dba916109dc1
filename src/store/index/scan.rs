//! The start-up scan's side of the [`Index`]: what the scan finds goes to the cold end, never
//! displacing what is already known, and is ordered by mtime when the scan completes.

use super::{Index, NarFile};
use crate::nix::hash::Sha256;
use crate::nix::store_path::StorePathHash;
use crate::store::slots::PENDING;

impl Index {
    /// The scan begins: until [`Index::finish_scan`], nothing is evicted nor reserved.
    pub fn start_scan(&mut self) {
        self.scan = Some(Box::default());
    }

    /// Whether the start-up scan is still running.
    pub fn scanning(&self) -> bool {
        self.scan.is_some()
    }

    /// A narinfo file the scan found (mtime in ns): indexed unless already known or removed.
    pub fn scanned_narinfo(&mut self, h: StorePathHash, fh: Sha256, size: u64, mtime: u64) {
        let Some(scan) = &self.scan else { return };
        if scan.gone_narinfos.contains(&h.0) || self.slots.find_info(&h.0).is_some() {
            return;
        }
        let g = self.scanned_group(fh, mtime);
        self.add_narinfo(h, g, size);
    }

    /// A NAR file the scan found (mtime in ns): indexed unless already known or removed.
    pub fn scanned_nar(&mut self, fh: Sha256, ext: &'static str, size: u64, mtime: u64) {
        let Some(scan) = &self.scan else { return };
        if scan.gone_nars.contains(&fh.0) {
            return;
        }
        let g = self.scanned_group(fh, mtime);
        if self.nar_of(g).is_none() {
            let checked = false;
            self.set_nar(g, NarFile { ext, size, checked });
        }
    }

    /// The group of `fh`; a new one goes to the cold end, pending its place by mtime.
    pub(super) fn scanned_group(&mut self, fh: Sha256, mtime: u64) -> u32 {
        let scan = self.scan.as_mut().expect("scanning");
        let g = match self.slots.find_group(&fh.0) {
            Some(g) => g,
            None => {
                let g = self.slots.new_group(fh.0);
                self.slots.link_back(g);
                self.slots.groups[g as usize].flags |= PENDING;
                let i = g as usize;
                if scan.mtimes.len() <= i {
                    scan.mtimes.resize(i + 1, 0);
                }
                scan.mtimes[i] = 0;
                g
            }
        };
        if self.slots.groups[g as usize].flags & PENDING != 0 {
            let m = &mut scan.mtimes[g as usize];
            *m = (*m).max(mtime);
        }
        g
    }

    /// The scan is complete: the groups it found and nobody used since are ordered by their
    /// newest file's mtime, oldest at the cold end, below everything used meanwhile.
    pub fn finish_scan(&mut self) {
        let Some(scan) = self.scan.take() else { return };
        let groups = &self.slots.groups;
        let mut pending: Vec<(u64, u32)> = (self.slots.live_groups())
            .filter(|g| groups[*g as usize].flags & PENDING != 0)
            .map(|g| (scan.mtimes[g as usize], g))
            .collect();
        drop(scan);
        pending.sort_unstable();
        for &(_, g) in pending.iter().rev() {
            self.slots.groups[g as usize].flags &= !PENDING;
            self.slots.link_back(g);
        }
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

    #[test]
    fn scan_orders_by_mtime_below_what_was_used_and_evicts_nothing_meanwhile() {
        let mut ix = Index::default();
        ix.start_scan();
        // Found in listing order, not age order; group 3's NAR is newer than its narinfo.
        ix.scanned_nar(f(3), ".xz", 100, 10);
        ix.scanned_narinfo(h(3), f(3), 10, 50);
        ix.scanned_narinfo(h(1), f(1), 10, 20);
        ix.scanned_nar(f(1), ".xz", 100, 20);
        // A lookup found group 2 on disk before the scan reached it: it was used.
        ix.insert_narinfo(h(2), f(2), 10);
        ix.scanned_narinfo(h(2), f(9), 10, 1); // already known: the scan does not move it
        ix.scanned_nar(f(4), "", 100, 30);
        assert!(
            ix.evict_to(0, None).is_empty(),
            "no eviction while scanning"
        );
        assert!(
            ix.reserve(1, 1 << 20).is_none(),
            "no admission while scanning"
        );
        assert_eq!((ix.bytes(), ix.files()), (330, 6));
        ix.finish_scan();
        let order: Vec<_> = ix.evict_to(0, None).iter().map(|e| e.file_hash).collect();
        assert_eq!(order, vec![f(1), f(4), f(3), f(2)]);
        assert_eq!((ix.bytes(), ix.files()), (0, 0));
    }

    #[test]
    fn what_is_removed_during_the_scan_stays_removed() {
        let mut ix = Index::default();
        ix.start_scan();
        ix.insert_narinfo(h(1), f(1), 10);
        ix.insert_nar(
            f(1),
            crate::store::index::NarFile {
                ext: ".xz",
                size: 100,
                checked: false,
            },
        );
        ix.remove_group(&f(1));
        ix.insert_narinfo(h(2), f(2), 10);
        ix.drop_narinfo(&h(2));
        // The scan had listed these files before they were deleted.
        ix.scanned_narinfo(h(1), f(1), 10, 1);
        ix.scanned_nar(f(1), ".xz", 100, 1);
        ix.scanned_narinfo(h(2), f(2), 10, 1);
        ix.finish_scan();
        assert_eq!(ix.narinfo(&h(1)), None);
        assert_eq!(ix.nar(&f(1)), None);
        assert_eq!(ix.narinfo(&h(2)), None);
        assert_eq!(ix.files(), 0);
    }
}
