//! A hit: what the store hands out for a NAR it holds (pingora's `HitHandler` is the model).
//! Not a path to open but the open file itself, with its length and what it is, opened once on
//! the blocking pool by the store (`lookup.rs`, `uploads.rs`). Every reader goes through it:
//! `sendfile` (`http/front.rs`), `pread` bodies (`http/body.rs`), torrent hashing and seeding
//! (`torrent/`), upload checks and copies (`upload/`).
//!
//! An open file stays readable after it is unlinked, so a hit is readable to its end even when
//! the NAR is evicted (or a held upload deleted) meanwhile; a NAR evicted between the index
//! lookup and the open is a miss, decided once in the store. Where a second representation
//! (say a zstd copy beside the upstream's xz file) or a second tier (an object store below the
//! disk, materialised into a local file) plugs in: a [`Representation`] or [`Tier`] variant
//! and the store's choice of which file to open; readers do not change.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// Which bytes of a NAR a hit holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// The file its narinfo names (FileHash, FileSize), as compressed by whoever published
    /// it; the extension (with its dot, or `""`) is the one in its URL.
    Published(&'static str),
    /// nixgate's own file of the NAR, recompressed from a verified one for runners
    /// (`fetch/transcode.rs`); the extension of its URL.
    Served(&'static str),
}

/// Where a hit was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The LRU disk cache.
    Cache,
    /// The held uploads (`store::uploads`), never evicted by the LRU.
    Upload,
}

/// An open NAR file with its length and representation; cheap to clone (one shared file).
#[derive(Debug, Clone)]
pub struct Hit {
    file: Arc<File>,
    len: u64,
    repr: Representation,
    tier: Tier,
    /// Where it was opened from: [`Hit::link_into`] links it when it is still there.
    path: PathBuf,
}

impl Hit {
    /// Opens `path`, a NAR of `len` bytes (blocking I/O: called on the blocking pool).
    pub(super) fn open(
        path: PathBuf,
        len: u64,
        repr: Representation,
        tier: Tier,
    ) -> io::Result<Self> {
        let file = Arc::new(File::open(&path)?);
        Ok(Hit {
            file,
            len,
            repr,
            tier,
            path,
        })
    }

    /// [`Self::open`] with the length of the file opened (its `fstat`), for a file that may
    /// be replaced by another of a different length between the index lookup and the open
    /// (nixgate's own file, made by this version or streamed from another's encoder).
    pub(super) fn open_whole(path: PathBuf, repr: Representation, tier: Tier) -> io::Result<Self> {
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        Ok(Hit {
            file: Arc::new(file),
            len,
            repr,
            tier,
            path,
        })
    }

    /// Its length in bytes (the size the index recorded: FileSize once checked).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Which bytes it holds.
    pub fn representation(&self) -> Representation {
        self.repr
    }

    /// The extension of its URL (`.xz`, …, or `""`).
    pub fn ext(&self) -> &'static str {
        match self.repr {
            Representation::Published(ext) | Representation::Served(ext) => ext,
        }
    }

    /// Where it was found.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Reads bytes at `pos` into `buf` (blocking I/O); 0 at the end of the file.
    pub fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.file.read_at(buf, pos)
    }

    /// Fills `buf` from `pos` (blocking I/O).
    pub fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, pos)
    }

    /// Up to `len` bytes at `pos`, read on the blocking pool.
    pub async fn read(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        pread(&self.file, pos, len).await
    }

    /// The whole file from its start, as a sequential reader (blocking I/O); it shares no
    /// file position with other readers of the hit.
    pub fn reader(&self) -> impl Read + Send + 'static {
        HitReader {
            hit: self.clone(),
            pos: 0,
        }
    }

    /// Makes `dest` a file with these bytes (blocking I/O): a hard link when the file is still
    /// in place (no copy), else (evicted since it was opened) a copy from the open file,
    /// fsynced. `dest` must be on the cache's file system and must not exist.
    pub fn link_into(&self, dest: &Path) -> io::Result<()> {
        if std::fs::hard_link(&self.path, dest).is_ok() {
            return Ok(());
        }
        let copied = File::create_new(dest).and_then(|mut out| {
            io::copy(&mut self.reader(), &mut out)?;
            out.sync_all()
        });
        if copied.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        copied
    }
}

impl AsFd for Hit {
    /// For `sendfile(2)`: positional, so it moves no shared file position.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

struct HitReader {
    hit: Hit,
    pos: u64,
}

impl Read for HitReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.hit.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Up to `len` bytes of `file` at `pos`, read on the blocking pool; an error at the end of
/// the file (the caller asked for bytes it was told are there). For hits and for downloads
/// tailed as they grow alike.
pub async fn pread(file: &Arc<File>, pos: u64, len: usize) -> io::Result<Bytes> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = BytesMut::zeroed(len);
        let n = file.read_at(&mut buf, pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than expected",
            ));
        }
        buf.truncate(n);
        Ok(buf.freeze())
    })
    .await
    .map_err(io::Error::other)?
}
