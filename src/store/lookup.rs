//! Reads: narinfo lookups (through the hot in-memory cache of served narinfos) and NAR
//! lookups by FileHash, which hand out a [`Hit`] (the open file, see `hit.rs`), never a
//! path. Each lookup counts as a use for the LRU. While the start-up scan runs, an entry not
//! indexed yet is looked for on disk (one listing of its narinfo shard, one `stat` per NAR
//! extension asked for) and indexed as used.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::index::NarFile;
use super::{io_err, Hit, Representation, Store, StoreError, Tier};
use crate::nix::compression::{Compression, NAR_EXTENSIONS};
use crate::nix::hash::Sha256;
use crate::nix::store_path::StorePathHash;

/// Served narinfos kept in memory so hot lookups do not touch the disk.
pub(super) const HOT_NARINFO_BYTES: u64 = 32 << 20;

/// The hot narinfo cache, weighed by bytes.
pub(super) fn hot_cache() -> moka::sync::Cache<StorePathHash, Bytes> {
    moka::sync::Cache::builder()
        .weigher(|_, v: &Bytes| v.len().try_into().unwrap_or(u32::MAX))
        .max_capacity(HOT_NARINFO_BYTES)
        .build()
}

impl Store {
    /// The stored narinfo file for `h` (upstream URL line + served text), if cached. A file
    /// read from disk must pass `valid` (it may have been damaged since it was written): one
    /// that does not is dropped, so the caller refetches it.
    pub async fn narinfo(
        self: &Arc<Self>,
        h: &StorePathHash,
        valid: impl Fn(&Bytes, &Sha256) -> bool,
    ) -> Option<(Sha256, Bytes)> {
        let indexed = self.index().narinfo(h);
        let fh = match indexed {
            Some(fh) => fh,
            None => self.narinfo_on_disk(*h).await?,
        };
        if let Some(b) = self.hot.get(h) {
            return Some((fh, b));
        }
        let path = self.layout.narinfo_path(h, &fh);
        match tokio::fs::read(&path).await.map(Bytes::from) {
            Ok(b) if valid(&b, &fh) => {
                self.hot.insert(*h, b.clone());
                Some((fh, b))
            }
            Ok(_) => {
                tracing::warn!(path = %path.display(), "dropping a damaged cached narinfo; refetching");
                self.drop_narinfo(h, &fh);
                None
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
            .map(|h| self.layout.narinfo_path(h, fh))
            .collect();
        let mut out = Vec::new();
        for p in paths {
            if let Ok(b) = tokio::fs::read(&p).await {
                out.push(Bytes::from(b));
            }
        }
        out
    }

    /// While the scan runs: the narinfo of `h` on disk, indexed as used; its FileHash.
    async fn narinfo_on_disk(self: &Arc<Self>, h: StorePathHash) -> Option<Sha256> {
        if !self.index().scanning() {
            return None;
        }
        let store = self.clone();
        let found = tokio::task::spawn_blocking(move || store.layout.find_narinfo(&h)).await;
        let (fh, size) = found.ok()??;
        let mut ix = self.index();
        Some(match ix.narinfo(&h) {
            Some(fh) => fh, // indexed meanwhile
            None => {
                ix.insert_narinfo(h, fh, size);
                fh
            }
        })
    }

    /// The NAR of `fh` under `ext` (any known extension when `None`): from the index, or while
    /// the scan runs from the disk (then indexed as used, unchecked). Marks the group used.
    fn nar_file(&self, fh: &Sha256, ext: Option<&str>) -> Option<NarFile> {
        let mut ix = self.index();
        if let Some(nar) = ix.nar(fh) {
            return ext.is_none_or(|e| e == nar.ext).then_some(nar);
        }
        if !ix.scanning() {
            return None;
        }
        drop(ix);
        let one;
        let exts: &[&'static str] = match ext {
            Some(e) => {
                one = [Compression::known_extension(e)?];
                &one
            }
            None => &NAR_EXTENSIONS,
        };
        let nar = exts.iter().find_map(|e| {
            let md = std::fs::metadata(self.layout.nar_path(fh, e)).ok()?;
            let (ext, size, checked) = (*e, md.len(), false);
            md.is_file().then_some(NarFile { ext, size, checked })
        })?;
        let mut ix = self.index();
        match ix.nar(fh) {
            Some(known) => ext.is_none_or(|e| e == known.ext).then_some(known),
            None => {
                ix.insert_nar(*fh, nar);
                Some(nar)
            }
        }
    }

    /// Removes the narinfo of `h` (pointing at `fh`) from the index and the disk.
    fn drop_narinfo(&self, h: &StorePathHash, fh: &Sha256) {
        if self.index().drop_narinfo(h).is_some() {
            self.hot.invalidate(h);
            let _ = std::fs::remove_file(self.layout.narinfo_path(h, fh));
            let ix = self.index();
            self.metrics.set_cache(ix.bytes(), ix.files());
        }
    }

    /// The cached NAR with this FileHash, if it is stored under extension `ext`: opened.
    pub async fn nar(self: &Arc<Self>, fh: &Sha256, ext: &str) -> Result<Option<Hit>, StoreError> {
        match Compression::known_extension(ext) {
            Some(ext) => self.open_nar(*fh, Some(ext)).await,
            None => Ok(None),
        }
    }

    /// The cached NAR with this FileHash, whatever its extension: opened.
    pub async fn nar_by_hash(self: &Arc<Self>, fh: &Sha256) -> Result<Option<Hit>, StoreError> {
        self.open_nar(*fh, None).await
    }

    /// Like [`Store::nar`], for a NAR found on disk at start-up and not yet checked against
    /// its narinfo: `Some(true)` when it still needs [`Store::nar_checked`].
    pub fn nar_unchecked(&self, fh: &Sha256, ext: &str) -> Option<bool> {
        let nar = self.nar_file(fh, Some(ext))?;
        Some(!nar.checked)
    }

    /// Marks a NAR found at start-up as checked (its size matched its narinfo's FileSize).
    pub fn nar_checked(&self, fh: &Sha256) {
        self.index().mark_checked(fh);
    }

    /// Finds and opens a NAR. A miss is answered from the index without leaving this thread;
    /// the open (and, while the scan runs, the look at the disk) runs on the blocking pool.
    async fn open_nar(
        self: &Arc<Self>,
        fh: Sha256,
        ext: Option<&'static str>,
    ) -> Result<Option<Hit>, StoreError> {
        // Bound first: a guard in the `match` scrutinee would live through `nar_file`'s lock.
        let scanning = self.index().scanning();
        let indexed = match scanning {
            false => match self.nar_file(&fh, ext) {
                Some(nar) => Some(nar),
                None => return Ok(None),
            },
            true => None,
        };
        let store = self.clone();
        let opened = tokio::task::spawn_blocking(move || {
            match indexed.or_else(|| store.nar_file(&fh, ext)) {
                Some(nar) => store.open_file(fh, nar),
                None => Ok(None),
            }
        });
        let gone = |e| io_err(&self.layout.root)(std::io::Error::other(e));
        opened.await.map_err(gone)?
    }

    /// Opens an indexed NAR (blocking I/O). One that is not on the disk is a miss: evicted
    /// since the lookup (the index no longer has it), or removed behind the store's back
    /// (then its record goes, so the cache's size stays exact).
    fn open_file(&self, fh: Sha256, nar: NarFile) -> Result<Option<Hit>, StoreError> {
        let path = self.layout.nar_path(&fh, nar.ext);
        let repr = Representation::Published(nar.ext);
        match Hit::open(path.clone(), nar.size, repr, Tier::Cache) {
            Ok(hit) => Ok(Some(hit)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.drop_vanished_nar(&fh, nar.ext, &path);
                Ok(None)
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Drops the record of the NAR `<fh>.nar<ext>` whose file is not at `path`. Checked under
    /// the index lock: a commit renames its file into place before it indexes it, so a record
    /// seen there without its file is stale, never one about to appear.
    fn drop_vanished_nar(&self, fh: &Sha256, ext: &str, path: &Path) {
        let mut ix = self.index();
        if ix.nar(fh).is_none_or(|n| n.ext != ext) || path.exists() {
            return;
        }
        tracing::warn!(path = %path.display(), "a cached NAR vanished from the disk; forgetting it");
        ix.remove_nar(fh);
        self.metrics.set_cache(ix.bytes(), ix.files());
        drop(ix);
        if let Some(tx) = &self.on_gone {
            let _ = tx.send(*fh);
        }
    }
}
