//! The disk cache: the [`Store`] handle and its deletions (with the eviction listener).
//! Layout in [`layout`], start-up scan in [`rebuild`], writes and cap reservations in
//! [`write`], reads in [`lookup`] (a NAR is handed out as a [`Hit`], the open file: see
//! [`hit`]), the LRU in [`index`], store failures and readiness in [`health`], the peer digest
//! in [`digest`].
//!
//! Layout under the cache dir (version in `VERSION`):
//!
//! ```text
//! VERSION                                   "nixgate-store 1"
//! peer-id                                   this appliance's id (peers::load_or_create_id)
//! tmp/                                      downloads in progress; emptied at start-up
//! narinfo/<h[..2]>/<h>-<filehash>.narinfo   line 1: upstream URL of the NAR; rest: the
//!                                           narinfo exactly as served (URL rewritten)
//! nar/<fh[..2]>/<filehash>.nar<ext>         the compressed NAR, verified against FileHash
//! nar/<fh[..2]>/<filehash>.served.nar<ext>  nixgate's own file of it (zstd, or plain) for
//!                                           runners (`served.rs`), evicted with its group
//! uploads/                                  uploaded paths, apart from the LRU (uploads.rs)
//! ```
//!
//! The narinfo→NAR link is in the file name, so the index is rebuilt from directory listings
//! and `stat` alone (no file is read at start-up). Every file is written to `tmp/` and renamed
//! into place (NARs fsynced first; see `write.rs` for why narinfos are not), so a crash (even
//! `kill -9`) leaves either the old state or the new one, never a partial file where a reader
//! would find it.

pub mod digest;
mod health;
mod hit;
pub mod index;
mod layout;
mod lookup;
mod rebuild;
mod served;
mod slots;
pub mod uploads;
mod writable;
mod write;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::nix::hash::Sha256;
use crate::nix::store_path::StorePathHash;
pub use health::NotReady;
pub use hit::{pread, Hit, Representation, Tier};
use index::{Evicted, Index};
pub use layout::check as check_cache_dir;
use layout::Layout;
pub use writable::{check_writable, NotWritable};
pub use write::WriteHandle;

/// A disk-cache failure.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cache dir {0} holds an unknown layout (VERSION {1:?}); use an empty directory")]
    Version(PathBuf, String),
    #[error("cache dir {0} is not empty and holds no nixgate VERSION file; refusing to use it (nothing was changed): point --cache-dir at an empty or new directory")]
    NotEmpty(PathBuf),
    /// The start-up scan is still running: the cache holds bytes it does not know of yet, so
    /// new downloads are streamed uncached until it completes.
    #[error("the cache index is being rebuilt at start-up: new downloads are served uncached until it completes")]
    Indexing,
    /// Downloads under way already hold what the cap allows.
    #[error("cache cap reached: {want} more bytes do not fit beside the downloads under way")]
    CapReached { want: u64 },
    #[error("cache I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The disk cache.
pub struct Store {
    layout: Layout,
    max_bytes: u64,
    index: Mutex<Index>,
    hot: moka::sync::Cache<StorePathHash, Bytes>,
    metrics: Arc<Metrics>,
    seq: AtomicU64,
    health: health::Health,
    /// Set when the start-up scan completes.
    indexed: rebuild::Indexed,
    /// Told the FileHash of every NAR that leaves the cache (the torrent engine stops seeding).
    on_gone: Option<mpsc::UnboundedSender<Sha256>>,
    /// Uploaded paths: their own subtree and budget, never evicted by the LRU.
    uploads: uploads::Uploads,
}

impl Store {
    /// Opens (creating if needed) the cache at `root` and removes leftover temp files; returns
    /// at once, while a background thread rebuilds the index from disk and then evicts down to
    /// `max_bytes` (see [`rebuild`]; [`Store::wait_indexed`] waits for it). `on_gone` is told
    /// the FileHash of every NAR that leaves the cache from then on.
    pub fn open(
        root: &Path,
        max_bytes: u64,
        metrics: Arc<Metrics>,
        on_gone: Option<mpsc::UnboundedSender<Sha256>>,
    ) -> Result<Arc<Self>, StoreError> {
        let layout = Layout::prepare(root)?;
        let uploads = uploads::Uploads::open(&root.join("uploads"), metrics.clone())?;
        let store = Arc::new(Store {
            layout,
            uploads,
            max_bytes,
            index: Mutex::new(Index::default()),
            hot: lookup::hot_cache(),
            metrics,
            seq: AtomicU64::new(0),
            health: Default::default(),
            indexed: Default::default(),
            on_gone,
        });
        store.start_scan()?;
        Ok(store)
    }

    /// The uploaded paths (apart from the LRU cache).
    pub fn uploads(&self) -> &uploads::Uploads {
        &self.uploads
    }

    /// The size cap.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index half-updated in a way that
        // matters more than losing the cache, so recover instead of propagating poison.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the group of `fh` (its narinfos and NAR): a narinfo whose NAR could not be
    /// obtained from a trustworthy source, so that the next request starts afresh.
    pub fn forget(&self, fh: &Sha256) {
        let removed = self.index().remove_group(fh);
        self.delete_files(removed.into_iter().collect());
    }

    /// Drops the narinfo of `h` alone (its NAR stays): a narinfo whose NarHash the NAR it
    /// names did not match.
    pub fn forget_narinfo(&self, h: &StorePathHash) {
        let Some(fh) = self.index().remove_narinfo(h) else {
            return;
        };
        self.delete_files(vec![Evicted {
            file_hash: fh,
            narinfos: vec![*h],
            nar: None,
            served: None,
        }]);
    }

    fn delete_evicted(&self, evicted: Vec<Evicted>) {
        if !evicted.is_empty() {
            self.metrics.evicted(evicted.len() as u64);
            // The NAR files of the groups: the upstream's and nixgate's own.
            let files = evicted
                .iter()
                .flat_map(|e| e.nar.iter().chain(e.served.iter()));
            let freed: u64 = files.map(|n| n.size).sum();
            tracing::info!(
                groups = evicted.len(),
                nar_bytes = freed,
                cap = self.max_bytes(),
                "evicted least recently used paths to stay under the cap"
            );
        }
        self.delete_files(evicted);
    }

    fn delete_files(&self, evicted: Vec<Evicted>) {
        for e in evicted {
            for h in &e.narinfos {
                self.hot.invalidate(h);
                let _ = std::fs::remove_file(self.layout.narinfo_path(h, &e.file_hash));
            }
            if let Some(nar) = e.nar {
                // Readers that already opened it keep their file handle.
                let _ = std::fs::remove_file(self.layout.nar_path(&e.file_hash, nar.ext));
                if let Some(tx) = &self.on_gone {
                    let _ = tx.send(e.file_hash);
                }
            }
            if let Some(served) = e.served {
                let _ = std::fs::remove_file(self.layout.served_path(&e.file_hash, served.ext));
            }
        }
        let ix = self.index();
        self.metrics.set_cache(ix.bytes(), ix.files());
    }

    /// Total bytes indexed.
    pub fn bytes(&self) -> u64 {
        self.index().bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;

    fn open(dir: &Path, max: u64) -> Arc<Store> {
        let s = Store::open(dir, max, Arc::new(Metrics::default()), None).unwrap();
        assert!(s.wait_indexed(std::time::Duration::from_secs(10)));
        s
    }

    fn nar(store: &Arc<Store>, fh: &Sha256, len: usize) {
        let mut t = store.begin_nar(*fh, ".xz", None).unwrap();
        t.file().write_all(&vec![7u8; len]).unwrap();
        t.commit().unwrap();
    }

    fn narinfo(store: &Arc<Store>, h: &StorePathHash, fh: &Sha256, contents: &[u8]) {
        let mut t = store.begin_narinfo(*h, *fh).unwrap();
        t.file().write_all(contents).unwrap();
        t.commit().unwrap();
    }

    #[tokio::test]
    async fn survives_restart_and_cleans_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let (h, fh) = (StorePathHash([1; 20]), Sha256([2; 32]));
        {
            let s = open(dir.path(), 1 << 20);
            narinfo(&s, &h, &fh, b"url\nnarinfo");
            nar(&s, &fh, 100);
            let abandoned = s.begin_nar(Sha256([3; 32]), ".xz", None).unwrap();
            std::mem::forget(abandoned); // as if the process died mid-download
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
        let s = open(dir.path(), 1 << 20);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(
            s.narinfo(&h, |_, _| true).await.unwrap().1,
            &b"url\nnarinfo"[..]
        );
        assert_eq!(s.nar(&fh, ".xz").await.unwrap().unwrap().len(), 100);
        assert!(s.nar(&fh, ".zst").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn evicts_inline_and_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 2500);
        for i in 0..5u8 {
            nar(&s, &Sha256([i; 32]), 1000);
        }
        assert!(s.bytes() <= 2500);
        assert!(s.nar(&Sha256([4; 32]), ".xz").await.unwrap().is_some());
        assert!(s.nar(&Sha256([0; 32]), ".xz").await.unwrap().is_none());
        assert!(!s.layout.nar_path(&Sha256([0; 32]), ".xz").exists());
        drop(s);
        let s = open(dir.path(), 1500);
        assert_eq!(s.bytes(), 1000);
        assert!(
            s.nar(&Sha256([4; 32]), ".xz").await.unwrap().is_some(),
            "newest survives a smaller cap"
        );
    }

    #[tokio::test]
    async fn a_dropped_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        let fh = Sha256([5; 32]);
        let mut w = s.begin_nar(fh, ".xz", None).unwrap();
        w.write_all(b"partial").unwrap();
        let tmp = w.path().to_owned();
        drop(w);
        assert!(!tmp.exists());
        assert!(s.nar(&fh, ".xz").await.unwrap().is_none());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn refuses_a_non_empty_directory_without_version() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["tmp", "nar", "narinfo"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
            fs::write(dir.path().join(d).join("precious"), "keep me").unwrap();
        }
        assert!(matches!(
            Store::open(dir.path(), 1 << 20, Arc::new(Metrics::default()), None),
            Err(StoreError::NotEmpty(..))
        ));
        for d in ["tmp", "nar", "narinfo"] {
            assert!(dir.path().join(d).join("precious").exists());
        }
        assert!(!dir.path().join("VERSION").exists());
        let empty = dir.path().join("fresh");
        fs::create_dir(&empty).unwrap();
        open(&empty, 1 << 20);
        assert!(empty.join("VERSION").exists());
    }

    #[test]
    fn rejects_foreign_layout() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("VERSION"), "something else").unwrap();
        assert!(matches!(
            Store::open(dir.path(), 1 << 20, Arc::new(Metrics::default()), None),
            Err(StoreError::Version(..))
        ));
    }

    #[tokio::test]
    async fn while_indexing_entries_are_found_on_disk_and_nothing_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        let (h, fh) = (StorePathHash([1; 20]), Sha256([2; 32]));
        // Files the scan has not reached yet.
        for p in [
            s.layout.narinfo_path(&h, &fh),
            s.layout.nar_path(&fh, ".xz"),
        ] {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"url\nnarinfo").unwrap();
        }
        s.index().start_scan();
        assert!(s.readiness().unwrap().contains("indexing"));
        assert!(matches!(
            s.begin_nar(Sha256([3; 32]), ".xz", Some(1)),
            Err(StoreError::Indexing)
        ));
        assert!(s.readiness().is_ok(), "indexing is not a failure");
        assert_eq!(s.narinfo(&h, |_, _| true).await.unwrap().0, fh);
        assert_eq!(s.nar_unchecked(&fh, ".xz"), Some(true));
        assert!(s.nar(&fh, ".zst").await.unwrap().is_none());
        assert!(s.nar_by_hash(&Sha256([4; 32])).await.unwrap().is_none());
        assert_eq!(s.index().narinfos_of(&fh), vec![h]);
        s.index().finish_scan();
        assert_eq!(s.readiness().unwrap(), "ready\n");
        assert_eq!(s.bytes(), 22);
        nar(&s, &Sha256([3; 32]), 10);
    }

    #[tokio::test]
    async fn a_hit_reads_to_the_end_after_eviction_and_a_vanished_nar_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 2500);
        let (kept, lost) = (Sha256([1; 32]), Sha256([2; 32]));
        nar(&s, &kept, 1000);
        let hit = s.nar(&kept, ".xz").await.unwrap().unwrap();
        nar(&s, &Sha256([3; 32]), 1000);
        nar(&s, &Sha256([4; 32]), 1000);
        assert!(s.nar(&kept, ".xz").await.unwrap().is_none(), "evicted");
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut hit.reader(), &mut all).unwrap();
        assert_eq!(all, vec![7u8; 1000]);
        assert_eq!(hit.read(990, 100).await.unwrap().len(), 10);
        let copy = dir.path().join("copy");
        hit.link_into(&copy).unwrap();
        assert_eq!(
            fs::read(&copy).unwrap(),
            all,
            "copied from the open file once evicted"
        );
        nar(&s, &lost, 500);
        fs::remove_file(s.layout.nar_path(&lost, ".xz")).unwrap();
        assert_eq!(s.bytes(), 2500);
        assert!(s.nar_by_hash(&lost).await.unwrap().is_none());
        assert_eq!(s.bytes(), 2000, "a vanished NAR leaves the index");
    }
}
