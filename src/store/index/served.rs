//! The [`Index`]'s record of nixgate's own files: the NAR of a group recompressed for runners
//! (zstd, or plain with `--serve-compression none`), a second file of the group beside the
//! upstream's. It counts against the cap like any file, marks the group used when served,
//! and leaves with the group ([`Index::remove_group`]).

use super::{Index, NarFile};
use crate::nix::hash::Sha256;

impl Index {
    /// nixgate's own file of the NAR `fh`, if held; marks the group used.
    pub fn served(&mut self, fh: &Sha256) -> Option<NarFile> {
        let file = *self.served.get(&fh.0)?;
        if let Some(g) = self.slots.find_group(&fh.0) {
            self.touch(g);
        }
        Some(file)
    }

    /// Records nixgate's own file of `fh` (replacing a previous one); the group is created
    /// (most recently used) if needed.
    pub fn insert_served(&mut self, fh: Sha256, file: NarFile) {
        let g = self.group(fh);
        self.touch(g);
        self.add_served(fh, file);
    }

    fn add_served(&mut self, fh: Sha256, file: NarFile) {
        match self.served.insert(fh.0, file) {
            Some(old) => self.bytes -= old.size,
            None => self.files += 1,
        }
        self.bytes += file.size;
    }

    /// A served file the start-up scan found (mtime in ns): indexed unless already known or
    /// its group was removed meanwhile.
    pub fn scanned_served(&mut self, fh: Sha256, file: NarFile, mtime: u64) {
        let gone = self
            .scan
            .as_ref()
            .is_none_or(|s| s.gone_nars.contains(&fh.0));
        if gone || self.served.contains_key(&fh.0) {
            return;
        }
        self.scanned_group(fh, mtime);
        self.add_served(fh, file);
    }

    /// The FileHash and extension of every served file held (for the digest).
    pub fn served_keys(&self) -> Vec<(Sha256, &'static str)> {
        let all = self.served.iter();
        all.map(|(fh, f)| (Sha256(*fh), f.ext)).collect()
    }

    /// Removes the record of the served file of `fh` alone (it vanished from the disk).
    pub fn remove_served(&mut self, fh: &Sha256) -> Option<NarFile> {
        let file = self.served.remove(&fh.0)?;
        self.bytes -= file.size;
        self.files -= 1;
        Some(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::store_path::StorePathHash;

    const XZ: NarFile = NarFile {
        ext: ".xz",
        size: 1000,
        checked: true,
    };
    const ZST: NarFile = NarFile {
        ext: ".zst",
        size: 1300,
        checked: true,
    };

    #[test]
    fn a_served_file_counts_and_leaves_with_its_group() {
        let (h, f) = (StorePathHash([1; 20]), Sha256([1; 32]));
        let mut ix = Index::default();
        ix.insert_narinfo(h, f, 10);
        ix.insert_nar(f, XZ);
        ix.insert_served(f, ZST);
        assert_eq!((ix.bytes(), ix.files()), (2310, 3));
        ix.insert_served(f, ZST);
        assert_eq!((ix.bytes(), ix.files()), (2310, 3), "replaced, not added");
        assert_eq!(ix.served(&f), Some(ZST));
        let ev = ix.evict_to(0, None);
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].nar, ev[0].served), (Some(XZ), Some(ZST)));
        assert_eq!((ix.bytes(), ix.files()), (0, 0));
        assert_eq!(ix.served(&f), None);
    }

    #[test]
    fn the_scan_finds_a_served_file_alone_or_beside_its_nar() {
        let (f, g) = (Sha256([1; 32]), Sha256([2; 32]));
        let mut ix = Index::default();
        ix.start_scan();
        ix.scanned_nar(f, ".xz", 1000, 5);
        ix.scanned_served(f, ZST, 6);
        ix.scanned_served(g, ZST, 1);
        ix.remove_group(&g);
        ix.scanned_served(g, ZST, 1);
        ix.finish_scan();
        assert_eq!((ix.bytes(), ix.files()), (2300, 2));
        assert_eq!(ix.remove_served(&f), Some(ZST));
        let unchecked = NarFile {
            checked: false,
            ..XZ
        };
        assert_eq!(ix.nar(&f), Some(unchecked), "the NAR stays");
        assert_eq!((ix.bytes(), ix.files()), (1000, 1));
    }
}
