//! The write path: a [`WriteHandle`] is a file in `tmp/` destined for one place in the cache.
//! [`WriteHandle::commit`] is the only way a file enters the cache (fsync, rename, fsync the
//! directory, then index it and evict inline); dropping the handle deletes the temp file.
//! Narinfos skip the two fsyncs: they are small, checked on every read from disk (parsed,
//! their hash and FileHash matched to their name, see `fetch::narinfo`), and refetched when
//! damaged or missing, so a power loss costs at most the last seconds of narinfos, never a
//! wrong answer; the rename still makes each one appear whole or not at all (and `kill -9`
//! needs no fsync: the page cache outlives the process). A NAR, whose bytes are not re-hashed
//! on read, is fsynced. This keeps two fsyncs (1.7 ms median, 16 ms p90 on the benchmark VM)
//! off every narinfo miss, the latency a runner waits on.
//!
//! A NAR write holds a reservation: its bytes count against the cap from the start (its
//! FileSize when known) and grow with what is written ([`WriteHandle::grow`]), so cached
//! files plus downloads under way never exceed the cap. A write that does not fit, or fails,
//! is recorded (metric, log, `/readyz`) and the caller streams the download uncached. So is
//! every write while the start-up scan runs (`StoreError::Indexing`, see `rebuild.rs`).

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
pub(super) enum Entry {
    NarInfo(StorePathHash, Sha256),
    Nar(Sha256, &'static str),
    /// nixgate's own file of NAR `fh`, with its extension (`served.rs`).
    Served(Sha256, &'static str),
}

/// A file being written in `tmp/`; dropped without [`WriteHandle::commit`] it is deleted.
pub struct WriteHandle {
    store: Arc<Store>,
    entry: Entry,
    path: PathBuf,
    file: Option<File>,
    /// Bytes of the cap this write holds until it is committed or dropped.
    reserved: u64,
}

impl Store {
    /// Begins writing the NAR `<fh>.nar<ext>` (the caller verifies it before committing),
    /// reserving `size` bytes of the cap (its FileSize, when known). Fails, recorded, when the
    /// reservation or the temp file cannot be had.
    pub fn begin_nar(
        self: &Arc<Self>,
        fh: Sha256,
        ext: &'static str,
        size: Option<u64>,
    ) -> Result<WriteHandle, StoreError> {
        self.begin_reserved(Entry::Nar(fh, ext), size)
    }

    /// Begins a file that holds a reservation of `size` bytes (see [`Store::begin_nar`]).
    pub(super) fn begin_reserved(
        self: &Arc<Self>,
        entry: Entry,
        size: Option<u64>,
    ) -> Result<WriteHandle, StoreError> {
        let want = size.unwrap_or(0);
        self.reserve(want).inspect_err(|e| self.store_failed(e))?;
        let mut w = self.begin(entry).inspect_err(|e| {
            self.index().release(want);
            self.store_failed(e);
        })?;
        w.reserved = want;
        Ok(w)
    }

    /// Reserves `n` bytes of the cap, evicting cached files to make room on disk.
    fn reserve(&self, n: u64) -> Result<(), StoreError> {
        let mut ix = self.index();
        if ix.scanning() {
            return Err(StoreError::Indexing);
        }
        let evicted = ix
            .reserve(n, self.max_bytes)
            .ok_or(StoreError::CapReached { want: n })?;
        drop(ix);
        self.delete_evicted(evicted);
        Ok(())
    }

    /// Begins writing the narinfo file of `h`, which points at NAR `fh`.
    pub fn begin_narinfo(
        self: &Arc<Self>,
        h: StorePathHash,
        fh: Sha256,
    ) -> Result<WriteHandle, StoreError> {
        if self.index().scanning() {
            self.store_failed(&StoreError::Indexing);
            return Err(StoreError::Indexing);
        }
        self.begin(Entry::NarInfo(h, fh))
            .inspect_err(|e| self.store_failed(e))
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
            reserved: 0,
        })
    }

    fn dest(&self, entry: Entry) -> PathBuf {
        match entry {
            Entry::NarInfo(h, fh) => self.layout.narinfo_path(&h, &fh),
            Entry::Nar(fh, ext) => self.layout.nar_path(&fh, ext),
            Entry::Served(fh, ext) => self.layout.served_path(&fh, ext),
        }
    }

    /// Indexes a file just renamed into place (its reservation of `reserved` bytes ends) and
    /// evicts down to the cap less the other downloads' reservations (keeping its group).
    fn record(&self, entry: Entry, size: u64, reserved: u64) {
        let (stale, evicted) = {
            let mut ix = self.index();
            ix.release(reserved);
            let limit = self.max_bytes.saturating_sub(ix.reserved());
            match entry {
                Entry::NarInfo(h, fh) => {
                    let stale = ix.insert_narinfo(h, fh, size);
                    (stale.map(|old| (h, old)), ix.evict_to(limit, Some(&fh)))
                }
                Entry::Nar(fh, ext) => {
                    ix.insert_nar(
                        fh,
                        NarFile {
                            ext,
                            size,
                            checked: true,
                        },
                    );
                    (None, ix.evict_to(limit, Some(&fh)))
                }
                Entry::Served(fh, ext) => {
                    let (size, checked) = (size, true);
                    ix.insert_served(fh, NarFile { ext, size, checked });
                    (None, ix.evict_to(limit, Some(&fh)))
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

    /// Writes `bytes` at the current position (blocking I/O), within the reservation.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let len = self.file().metadata().map_err(|e| self.failed(e))?.len();
        self.grow(len + bytes.len() as u64)?;
        self.file
            .as_mut()
            .expect("open")
            .write_all(bytes)
            .map_err(|e| self.failed(e))
    }

    /// Grows the reservation to cover `total` bytes written; fails (recorded) when the cap
    /// does not allow it: the caller stops writing and streams the rest uncached.
    pub fn grow(&mut self, total: u64) -> Result<(), StoreError> {
        if total <= self.reserved {
            return Ok(());
        }
        let more = total - self.reserved;
        self.store
            .reserve(more)
            .inspect_err(|e| self.store.store_failed(e))?;
        self.reserved = total;
        Ok(())
    }

    /// Records a failed write to this file (counted, logged, shown by `/readyz`).
    pub fn failed(&self, e: std::io::Error) -> StoreError {
        let e = io_err(&self.path)(e);
        self.store.store_failed(&e);
        e
    }

    /// Moves the fully written (and verified) file into the cache; its final path. Blocking
    /// I/O: call from `spawn_blocking`.
    pub fn commit(mut self) -> Result<PathBuf, StoreError> {
        let file = self.file.take().expect("file is open until commit");
        let dest = self.store.dest(self.entry);
        let durable = !matches!(self.entry, Entry::NarInfo(..));
        let published = publish(&file, &self.path, &dest, durable);
        let size = match published {
            Ok(size) => size,
            Err(e) => {
                let _ = fs::remove_file(&self.path);
                self.store.store_failed(&e);
                return Err(e);
            }
        };
        match self.entry {
            Entry::NarInfo(h, _) => self.store.hot.invalidate(&h),
            Entry::Nar(..) | Entry::Served(..) => self.store.stored(),
        }
        self.store
            .record(self.entry, size, std::mem::take(&mut self.reserved));
        Ok(dest)
    }
}

/// Renames into place, with an fsync of the file before and of the directory after when
/// `durable`; the file's size.
pub(super) fn publish(
    file: &File,
    tmp: &Path,
    dest: &Path,
    durable: bool,
) -> Result<u64, StoreError> {
    if durable {
        file.sync_all().map_err(io_err(tmp))?;
    }
    let size = file.metadata().map_err(io_err(tmp))?.len();
    let dir = dest.parent().expect("store paths have a parent");
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    fs::rename(tmp, dest).map_err(io_err(dest))?;
    if durable {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(size)
}

impl Drop for WriteHandle {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
        if self.reserved > 0 {
            self.store.index().release(self.reserved);
        }
    }
}
