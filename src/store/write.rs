//! The write path: a [`WriteHandle`] is a file in `tmp/` destined for one place in the cache.
//! [`WriteHandle::commit`] is the only way a file enters the cache (fsync, rename, fsync the
//! directory, then index it and evict inline); dropping the handle deletes the temp file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::index::NarFile;
use super::{io_err, Store, StoreError};
use crate::nix::hash::Sha256;
use crate::nix::store_path::StorePathHash;

/// What a write becomes once committed.
#[derive(Debug, Clone, Copy)]
enum Entry {
    NarInfo(StorePathHash, Sha256),
    Nar(Sha256, &'static str),
}

/// A file being written in `tmp/`; dropped without [`WriteHandle::commit`] it is deleted.
pub struct WriteHandle {
    store: Arc<Store>,
    entry: Entry,
    path: PathBuf,
    file: Option<File>,
}

impl Store {
    /// Begins writing the NAR `<fh>.nar<ext>` (the caller verifies it before committing).
    pub fn begin_nar(
        self: &Arc<Self>,
        fh: Sha256,
        ext: &'static str,
    ) -> Result<WriteHandle, StoreError> {
        self.begin(Entry::Nar(fh, ext))
    }

    /// Begins writing the narinfo file of `h`, which points at NAR `fh`.
    pub fn begin_narinfo(
        self: &Arc<Self>,
        h: StorePathHash,
        fh: Sha256,
    ) -> Result<WriteHandle, StoreError> {
        self.begin(Entry::NarInfo(h, fh))
    }

    fn begin(self: &Arc<Self>, entry: Entry) -> Result<WriteHandle, StoreError> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .layout
            .tmp
            .join(format!("{}-{n}.part", std::process::id()));
        let file = File::create(&path).map_err(io_err(&path))?;
        Ok(WriteHandle {
            store: self.clone(),
            entry,
            path,
            file: Some(file),
        })
    }

    fn dest(&self, entry: Entry) -> PathBuf {
        match entry {
            Entry::NarInfo(h, fh) => self.layout.narinfo_path(&h, &fh),
            Entry::Nar(fh, ext) => self.layout.nar_path(&fh, ext),
        }
    }

    /// Indexes a file just renamed into place and evicts down to the cap (keeping its group).
    fn record(&self, entry: Entry, size: u64) {
        let (stale, evicted) = {
            let mut ix = self.index();
            match entry {
                Entry::NarInfo(h, fh) => {
                    let stale = ix.insert_narinfo(h, fh, size);
                    (
                        stale.map(|old| (h, old)),
                        ix.evict_to(self.max_bytes, Some(&fh)),
                    )
                }
                Entry::Nar(fh, ext) => {
                    ix.insert_nar(fh, NarFile { ext, size });
                    (None, ix.evict_to(self.max_bytes, Some(&fh)))
                }
            }
        };
        if let Some((h, old)) = stale {
            let _ = fs::remove_file(self.layout.narinfo_path(&h, &old));
        }
        self.delete_evicted(evicted);
    }
}

impl WriteHandle {
    /// Where the bytes go (for readers that tail a download).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is open until commit")
    }

    /// Writes `bytes` at the current position (blocking I/O).
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path.clone();
        self.file().write_all(bytes).map_err(io_err(&path))
    }

    /// Moves the fully written (and verified) file into the cache; its final path. Blocking
    /// I/O: call from `spawn_blocking`.
    pub fn commit(mut self) -> Result<PathBuf, StoreError> {
        let file = self.file.take().expect("file is open until commit");
        let dest = self.store.dest(self.entry);
        let published = publish(&file, &self.path, &dest);
        let size = match published {
            Ok(size) => size,
            Err(e) => {
                let _ = fs::remove_file(&self.path);
                return Err(e);
            }
        };
        if let Entry::NarInfo(h, _) = self.entry {
            self.store.hot.invalidate(&h);
        }
        self.store.record(self.entry, size);
        Ok(dest)
    }
}

/// fsync, rename into place, fsync the directory; the file's size.
fn publish(file: &File, tmp: &Path, dest: &Path) -> Result<u64, StoreError> {
    file.sync_all().map_err(io_err(tmp))?;
    let size = file.metadata().map_err(io_err(tmp))?.len();
    let dir = dest.parent().expect("store paths have a parent");
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    fs::rename(tmp, dest).map_err(io_err(dest))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(size)
}

impl Drop for WriteHandle {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}
