//! nixgate's own file of a NAR: the verified NAR recompressed for runners (zstd, or plain),
//! `nar/<fh[..2]>/<fh>.served.nar<ext>`, a second file of the NAR's group (counted against
//! the cap, evicted with the group; see `index/served.rs`). Written through the normal write
//! path ([`Store::begin_served`], then `WriteHandle::commit`), handed out as a [`Hit`] with
//! [`Representation::Served`].

use std::sync::Arc;

use super::index::NarFile;
use super::write::Entry;
use super::{io_err, Hit, Representation, Store, StoreError, Tier, WriteHandle};
use crate::nix::hash::Sha256;

impl Store {
    /// Begins writing nixgate's own file of NAR `fh` (`ext`: `.zst` or `""`), reserving
    /// `size` bytes of the cap (it grows with what is written).
    pub fn begin_served(
        self: &Arc<Self>,
        fh: Sha256,
        ext: &'static str,
        size: Option<u64>,
    ) -> Result<WriteHandle, StoreError> {
        self.begin_reserved(Entry::Served(fh, ext), size)
    }

    /// Whether nixgate's own file of `fh` with extension `ext` is indexed (no disk access;
    /// marks the group used).
    pub fn holds_served(&self, fh: &Sha256, ext: &str) -> bool {
        self.served_file(fh, ext).is_some()
    }

    fn served_file(&self, fh: &Sha256, ext: &str) -> Option<NarFile> {
        let mut ix = self.index();
        if let Some(f) = ix.served(fh) {
            return (f.ext == ext).then_some(f);
        }
        if !ix.scanning() {
            return None;
        }
        drop(ix);
        // While the start-up scan runs, the disk may hold it unindexed.
        let ext = crate::nix::compression::Compression::known_extension(ext)?;
        let md = std::fs::metadata(self.layout.served_path(fh, ext)).ok()?;
        let (size, checked) = (md.len(), true);
        let file = NarFile { ext, size, checked };
        self.index().insert_served(*fh, file);
        Some(file)
    }

    /// nixgate's own file of `fh` with extension `ext`, opened; `None` when not held (or
    /// evicted since the lookup).
    pub async fn served(
        self: &Arc<Self>,
        fh: &Sha256,
        ext: &str,
    ) -> Result<Option<Hit>, StoreError> {
        let Some(file) = self.served_file(fh, ext) else {
            return Ok(None);
        };
        let (store, fh) = (self.clone(), *fh);
        let opened = tokio::task::spawn_blocking(move || store.open_served(fh, file)).await;
        opened.map_err(|e| io_err(&self.layout.root)(std::io::Error::other(e)))?
    }

    fn open_served(&self, fh: Sha256, file: NarFile) -> Result<Option<Hit>, StoreError> {
        let path = self.layout.served_path(&fh, file.ext);
        let repr = Representation::Served(file.ext);
        match Hit::open_whole(path.clone(), repr, Tier::Cache) {
            Ok(hit) => Ok(Some(hit)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Evicted since the lookup, or removed behind the store's back: a record
                // without its file goes (a commit renames before it indexes).
                let mut ix = self.index();
                if ix.served(&fh) == Some(file) && !path.exists() {
                    ix.remove_served(&fh);
                    self.metrics.set_cache(ix.bytes(), ix.files());
                }
                Ok(None)
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn a_served_file_is_written_found_after_restart_and_evicted_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let open = |max| {
            let s = Store::open(dir.path(), max, Arc::new(Metrics::default()), None).unwrap();
            assert!(s.wait_indexed(std::time::Duration::from_secs(10)));
            s
        };
        let (fh, other) = (Sha256([1; 32]), Sha256([2; 32]));
        {
            let s = open(5000);
            let mut w = s.begin_nar(fh, ".xz", Some(1000)).unwrap();
            w.write_all(&[1; 1000]).unwrap();
            w.commit().unwrap();
            let mut w = s.begin_served(fh, ".zst", Some(1000)).unwrap();
            w.write_all(&[2; 1300]).unwrap();
            w.commit().unwrap();
            assert_eq!(s.bytes(), 2300);
            assert!(s.holds_served(&fh, ".zst") && !s.holds_served(&fh, ""));
            let hit = s.served(&fh, ".zst").await.unwrap().unwrap();
            assert_eq!((hit.len(), hit.ext()), (1300, ".zst"));
            assert_eq!(hit.representation(), Representation::Served(".zst"));
            assert_eq!(s.nar(&fh, ".xz").await.unwrap().unwrap().len(), 1000);
        }
        let s = open(5000);
        assert_eq!(s.bytes(), 2300, "both files found by the scan");
        assert!(s.served(&fh, ".zst").await.unwrap().is_some());
        let mut w = s.begin_nar(other, ".xz", Some(3000)).unwrap();
        w.write_all(&[3; 3000]).unwrap();
        w.commit().unwrap();
        assert!(s.served(&fh, ".zst").await.unwrap().is_none(), "evicted");
        assert!(s.nar(&fh, ".xz").await.unwrap().is_none(), "with its group");
        assert!(!s.layout.served_path(&fh, ".zst").exists());
        assert_eq!(s.bytes(), 3000);
    }
}
