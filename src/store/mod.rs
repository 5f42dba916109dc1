//! The disk cache: layout, crash-safe writes, the LRU index and inline eviction.
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
//! ```
//!
//! The narinfo→NAR link is in the file name, so the index is rebuilt from directory listings
//! and `stat` alone (no file is read at start-up). Every file is written to `tmp/`, fsynced and
//! renamed into place, so a crash (even `kill -9`) leaves either the old state or the new one,
//! never a partial file where a reader would find it.

pub mod index;
mod writable;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use thiserror::Error;

use crate::metrics::Metrics;
use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;
use crate::nix::store_path::StorePathHash;
use index::{Evicted, Index, NarFile};
pub use writable::check_writable;

const VERSION: &str = "nixgate-store 1\n";
/// Served narinfos kept in memory so hot lookups do not touch the disk.
const HOT_NARINFO_BYTES: u64 = 32 << 20;

/// A disk-cache failure.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cache dir {0} holds an unknown layout (VERSION {1:?}); use an empty directory")]
    Version(PathBuf, String),
    #[error("cache I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A file being written in `tmp/`; dropped without [`Store::commit_nar`] it is deleted.
pub struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Where the bytes go (for readers that tail a download).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is open until commit")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The disk cache.
pub struct Store {
    root: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    hot: moka::sync::Cache<StorePathHash, Bytes>,
    metrics: Arc<Metrics>,
    seq: AtomicU64,
    /// Told the FileHash of every NAR that leaves the cache (the torrent engine stops seeding).
    gone: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Sha256>>,
}

/// A file found while rebuilding the index.
struct Found {
    mtime: SystemTime,
    size: u64,
    kind: FoundKind,
}

enum FoundKind {
    NarInfo(StorePathHash, Sha256),
    Nar(Sha256, &'static str),
}

fn parse_narinfo_name(name: &str) -> Option<FoundKind> {
    let (h, fh) = name.strip_suffix(".narinfo")?.split_once('-')?;
    Some(FoundKind::NarInfo(
        h.parse().ok()?,
        Sha256::from_nix32(fh).ok()?,
    ))
}

fn parse_nar_name(name: &str) -> Option<FoundKind> {
    let (fh, ext) = name.split_once(".nar")?;
    Some(FoundKind::Nar(
        Sha256::from_nix32(fh).ok()?,
        Compression::known_extension(ext)?,
    ))
}

impl Store {
    /// Opens (creating if needed) the cache at `root`, removes leftover temp files, rebuilds
    /// the index from disk and evicts down to `max_bytes`.
    pub fn open(root: &Path, max_bytes: u64, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let version = root.join("VERSION");
        match fs::read_to_string(&version) {
            Ok(v) if v == VERSION => {}
            Ok(v) => return Err(StoreError::Version(root.to_owned(), v)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(root).map_err(io_err(root))?;
                fs::write(&version, VERSION).map_err(io_err(&version))?;
            }
            Err(e) => return Err(io_err(&version)(e)),
        }
        let tmp = root.join("tmp");
        // Anything in tmp/ is a download a previous process did not finish.
        match fs::remove_dir_all(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&tmp)(e)),
            _ => {}
        }
        for d in ["tmp", "narinfo", "nar"] {
            fs::create_dir_all(root.join(d)).map_err(io_err(root))?;
        }
        let store = Store {
            root: root.to_owned(),
            tmp,
            max_bytes,
            index: Mutex::new(Index::default()),
            hot: moka::sync::Cache::builder()
                .weigher(|_, v: &Bytes| v.len().try_into().unwrap_or(u32::MAX))
                .max_capacity(HOT_NARINFO_BYTES)
                .build(),
            metrics,
            seq: AtomicU64::new(0),
            gone: Default::default(),
        };
        store.rebuild()?;
        Ok(store)
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

    fn scan(
        &self,
        dir: &str,
        parse: fn(&str) -> Option<FoundKind>,
    ) -> Result<Vec<Found>, StoreError> {
        let mut out = Vec::new();
        let top = self.root.join(dir);
        for shard in fs::read_dir(&top).map_err(io_err(&top))? {
            let shard = shard.map_err(io_err(&top))?.path();
            let Ok(entries) = fs::read_dir(&shard) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(kind) = name.to_str().and_then(parse) else {
                    tracing::warn!(file = %e.path().display(), "removing unrecognised file from the cache");
                    let _ = fs::remove_file(e.path());
                    continue;
                };
                let Ok(md) = e.metadata() else { continue };
                let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(Found {
                    mtime,
                    size: md.len(),
                    kind,
                });
            }
        }
        Ok(out)
    }

    fn rebuild(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        // The two trees are independent: list them in parallel (start-up is I/O-bound).
        let (narinfos, nars) = std::thread::scope(|s| {
            let nars = s.spawn(|| self.scan("nar", parse_nar_name));
            let narinfos = self.scan("narinfo", parse_narinfo_name);
            (narinfos, nars.join().expect("scan thread panicked"))
        });
        let mut found = narinfos?;
        found.extend(nars?);
        // Oldest first, so that the logical clock reproduces the write order as recency.
        found.sort_unstable_by_key(|f| f.mtime);
        let evicted = {
            let mut ix = self.index();
            for f in found {
                match f.kind {
                    FoundKind::NarInfo(h, fh) => {
                        ix.insert_narinfo(h, fh, f.size);
                    }
                    FoundKind::Nar(fh, ext) => ix.insert_nar(fh, NarFile { ext, size: f.size }),
                }
            }
            ix.evict_to(self.max_bytes, None)
        };
        self.delete_evicted(evicted);
        let ix = self.index();
        tracing::info!(
            files = ix.files(),
            bytes = ix.bytes(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cache index rebuilt"
        );
        self.metrics.set_cache(ix.bytes(), ix.files());
        Ok(())
    }

    fn shard(&self, kind: &str, name: &str) -> PathBuf {
        self.root.join(kind).join(&name[..2])
    }

    fn narinfo_path(&self, h: &StorePathHash, fh: &Sha256) -> PathBuf {
        let h = h.to_string();
        self.shard("narinfo", &h)
            .join(format!("{h}-{}.narinfo", fh.to_nix32()))
    }

    /// Where the NAR with this FileHash and extension lives.
    pub fn nar_path(&self, fh: &Sha256, ext: &str) -> PathBuf {
        let f = fh.to_nix32();
        self.shard("nar", &f).join(format!("{f}.nar{ext}"))
    }

    /// The stored narinfo file for `h` (upstream URL line + served text), if cached.
    pub async fn narinfo(self: &Arc<Self>, h: &StorePathHash) -> Option<(Sha256, Bytes)> {
        let fh = self.index().narinfo(h)?;
        if let Some(b) = self.hot.get(h) {
            return Some((fh, b));
        }
        let path = self.narinfo_path(h, &fh);
        match tokio::fs::read(&path).await {
            Ok(b) => {
                let b = Bytes::from(b);
                self.hot.insert(*h, b.clone());
                Some((fh, b))
            }
            Err(e) => {
                // Evicted between the index lookup and the read, or removed by hand.
                tracing::debug!(error = %e, path = %path.display(), "cached narinfo vanished");
                None
            }
        }
    }

    /// The stored narinfo files that point at NAR `fh` (to learn its upstream URL).
    pub async fn narinfos_of(&self, fh: &Sha256) -> Vec<Bytes> {
        let paths: Vec<PathBuf> = self
            .index()
            .narinfos_of(fh)
            .iter()
            .map(|h| self.narinfo_path(h, fh))
            .collect();
        let mut out = Vec::new();
        for p in paths {
            if let Ok(b) = tokio::fs::read(&p).await {
                out.push(Bytes::from(b));
            }
        }
        out
    }

    /// The cached NAR with this FileHash, if it is stored under extension `ext`.
    pub fn nar(&self, fh: &Sha256, ext: &str) -> Option<(PathBuf, u64)> {
        let nar = self.index().nar(fh).filter(|n| n.ext == ext)?;
        Some((self.nar_path(fh, nar.ext), nar.size))
    }

    /// The cached NAR with this FileHash, whatever its extension: path, size, extension.
    pub fn nar_by_hash(&self, fh: &Sha256) -> Option<(PathBuf, u64, &'static str)> {
        let nar = self.index().nar(fh)?;
        Some((self.nar_path(fh, nar.ext), nar.size, nar.ext))
    }

    /// A digest of what the cache holds, for peers (`/_p2p/v1/digest`).
    pub fn holdings(&self) -> crate::peers::digest::Holdings {
        use crate::peers::digest::{nar_key, narinfo_key, Holdings};
        let (narinfos, nars) = self.index().keys();
        let mut h = Holdings::with_capacity(narinfos.len() + nars.len());
        for n in narinfos {
            h.insert(&narinfo_key(&n.to_string()));
        }
        for fh in nars {
            h.insert(&nar_key(&fh.to_nix32()));
        }
        h
    }

    /// A new temp file in `tmp/`.
    pub fn temp_file(&self) -> Result<TempFile, StoreError> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{}-{n}.part", std::process::id()));
        let file = File::create(&path).map_err(io_err(&path))?;
        Ok(TempFile {
            path,
            file: Some(file),
        })
    }

    fn publish(&self, mut tmp: TempFile, dest: &Path) -> Result<(), StoreError> {
        let file = tmp.file.take().expect("file is open until commit");
        let res = (|| {
            file.sync_all().map_err(io_err(&tmp.path))?;
            let dir = dest.parent().expect("store paths have a parent");
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            fs::rename(&tmp.path, dest).map_err(io_err(dest))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp.path);
        }
        res
    }

    /// Stores a narinfo file (blocking I/O: call from `spawn_blocking`).
    pub fn put_narinfo(
        &self,
        h: &StorePathHash,
        fh: &Sha256,
        contents: &[u8],
    ) -> Result<(), StoreError> {
        let mut tmp = self.temp_file()?;
        tmp.file().write_all(contents).map_err(io_err(&tmp.path))?;
        let dest = self.narinfo_path(h, fh);
        self.publish(tmp, &dest)?;
        self.hot.invalidate(h);
        let (stale, evicted) = {
            let mut ix = self.index();
            let stale = ix.insert_narinfo(*h, *fh, contents.len() as u64);
            (stale, ix.evict_to(self.max_bytes, Some(fh)))
        };
        if let Some(old) = stale {
            let _ = fs::remove_file(self.narinfo_path(h, &old));
        }
        self.delete_evicted(evicted);
        Ok(())
    }

    /// Moves a fully written and verified NAR into place (blocking I/O: `spawn_blocking`).
    pub fn commit_nar(
        &self,
        tmp: TempFile,
        fh: &Sha256,
        ext: &'static str,
        size: u64,
    ) -> Result<PathBuf, StoreError> {
        let dest = self.nar_path(fh, ext);
        self.publish(tmp, &dest)?;
        let evicted = {
            let mut ix = self.index();
            ix.insert_nar(*fh, NarFile { ext, size });
            ix.evict_to(self.max_bytes, Some(fh))
        };
        self.delete_evicted(evicted);
        Ok(dest)
    }

    /// Drops the group of `fh` (its narinfos and NAR): a narinfo whose NAR could not be
    /// obtained from a trustworthy source, so that the next request starts afresh.
    pub fn forget(&self, fh: &Sha256) {
        let removed = self.index().remove_group(fh);
        self.delete_files(removed.into_iter().collect());
    }

    /// Subscribes to NARs leaving the cache (once; later calls are ignored).
    pub fn on_nar_gone(&self, tx: tokio::sync::mpsc::UnboundedSender<Sha256>) {
        let _ = self.gone.set(tx);
    }

    fn delete_evicted(&self, evicted: Vec<Evicted>) {
        if !evicted.is_empty() {
            self.metrics.evicted(evicted.len() as u64);
        }
        self.delete_files(evicted);
    }

    fn delete_files(&self, evicted: Vec<Evicted>) {
        for e in evicted {
            for h in &e.narinfos {
                self.hot.invalidate(h);
                let _ = fs::remove_file(self.narinfo_path(h, &e.file_hash));
            }
            if let Some(nar) = e.nar {
                // Readers that already opened it keep their file handle.
                let _ = fs::remove_file(self.nar_path(&e.file_hash, nar.ext));
                if let Some(tx) = self.gone.get() {
                    let _ = tx.send(e.file_hash);
                }
            }
        }
        let ix = self.index();
        self.metrics.set_cache(ix.bytes(), ix.files());
    }

    /// True when the cache dir accepts writes (for `/readyz`).
    pub fn usable(&self) -> bool {
        check_writable(&self.tmp).is_ok()
    }

    /// Total bytes indexed.
    pub fn bytes(&self) -> u64 {
        self.index().bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, max: u64) -> Arc<Store> {
        Arc::new(Store::open(dir, max, Arc::new(Metrics::default())).unwrap())
    }

    fn nar(store: &Store, fh: &Sha256, len: usize) {
        let mut t = store.temp_file().unwrap();
        t.file().write_all(&vec![7u8; len]).unwrap();
        store.commit_nar(t, fh, ".xz", len as u64).unwrap();
    }

    #[tokio::test]
    async fn survives_restart_and_cleans_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let (h, fh) = (StorePathHash([1; 20]), Sha256([2; 32]));
        {
            let s = open(dir.path(), 1 << 20);
            s.put_narinfo(&h, &fh, b"url\nnarinfo").unwrap();
            nar(&s, &fh, 100);
            let abandoned = s.temp_file().unwrap();
            std::mem::forget(abandoned); // as if the process died mid-download
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
        let s = open(dir.path(), 1 << 20);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(s.narinfo(&h).await.unwrap().1, &b"url\nnarinfo"[..]);
        assert_eq!(s.nar(&fh, ".xz").unwrap().1, 100);
        assert!(s.nar(&fh, ".zst").is_none());
    }

    #[tokio::test]
    async fn evicts_inline_and_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 2500);
        for i in 0..5u8 {
            nar(&s, &Sha256([i; 32]), 1000);
        }
        assert!(s.bytes() <= 2500);
        assert!(s.nar(&Sha256([4; 32]), ".xz").is_some());
        assert!(s.nar(&Sha256([0; 32]), ".xz").is_none());
        assert!(!s.nar_path(&Sha256([0; 32]), ".xz").exists());
        drop(s);
        let s = open(dir.path(), 1500);
        assert_eq!(s.bytes(), 1000);
        assert!(
            s.nar(&Sha256([4; 32]), ".xz").is_some(),
            "newest survives a smaller cap"
        );
    }

    #[test]
    fn rejects_foreign_layout() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("VERSION"), "something else").unwrap();
        assert!(matches!(
            Store::open(dir.path(), 1 << 20, Arc::new(Metrics::default())),
            Err(StoreError::Version(..))
        ));
    }
}
