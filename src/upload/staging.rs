//! The staging area: Nix uploads a NAR before its narinfo, so a NAR waits here, on the cache
//! disk, until a narinfo names it. Bounded in bytes (`--upload-staging-size`: a NAR that would
//! not fit, including the bytes of uploads under way, is refused with 413) and in age
//! (`--upload-staging-age`: an unclaimed NAR is dropped). A NAR is staged only once its bytes
//! matched the FileHash its URL names; it is emptied at start-up (`store::uploads`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::UploadError;
use crate::metrics::Metrics;
use crate::nix::hash::Sha256;

/// A staged NAR.
#[derive(Debug)]
pub(super) struct Staged {
    pub path: PathBuf,
    pub size: u64,
    at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    nars: HashMap<(Sha256, &'static str), Staged>,
    /// Staged bytes plus the reservations of uploads under way.
    bytes: u64,
}

/// The staging area.
pub(super) struct Staging {
    dir: PathBuf,
    max_bytes: u64,
    max_age: Duration,
    inner: Mutex<Inner>,
    seq: AtomicU64,
    metrics: Arc<Metrics>,
}

/// Bytes of the staging area held by an upload under way; given back on drop.
pub(super) struct Reservation<'a> {
    staging: &'a Staging,
    bytes: u64,
}

/// A file being written in the staging directory; removed on drop unless kept.
pub(super) struct TempFile(Option<PathBuf>);

impl TempFile {
    pub fn path(&self) -> &Path {
        self.0.as_deref().expect("kept files are not used")
    }
    /// Keeps the file: the caller owns it from now on.
    pub fn keep(mut self) -> PathBuf {
        self.0.take().expect("kept once")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Staging {
    pub fn new(dir: PathBuf, max_bytes: u64, max_age: Duration, metrics: Arc<Metrics>) -> Self {
        Staging {
            dir,
            max_bytes,
            max_age,
            inner: Mutex::default(),
            seq: AtomicU64::new(0),
            metrics,
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new temp file name in the staging directory.
    pub fn temp(&self) -> TempFile {
        let n = self.seq.fetch_add(1, Relaxed);
        TempFile(Some(
            self.dir.join(format!("{}-{n}.part", std::process::id())),
        ))
    }

    /// Drops staged NARs older than the age limit.
    pub fn sweep(&self) {
        let mut inner = self.inner();
        let old: Vec<_> = inner
            .nars
            .iter()
            .filter(|(_, s)| s.at.elapsed() > self.max_age)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            if let Some(s) = inner.nars.remove(&k) {
                inner.bytes -= s.size;
                let _ = std::fs::remove_file(&s.path);
                tracing::info!(file_hash = %k.0, "dropping an uploaded NAR no narinfo named in time");
            }
        }
        self.metrics.set_upload_staged(inner.bytes);
    }

    /// Reserves `n` bytes for an upload under way (413 when they do not fit).
    pub fn reserve(&self, n: u64) -> Result<Reservation<'_>, UploadError> {
        self.sweep();
        let mut r = Reservation {
            staging: self,
            bytes: 0,
        };
        r.grow(n)?;
        Ok(r)
    }

    /// Stages the verified NAR `fh`/`ext` written to `file` (`size` bytes, all reserved),
    /// replacing an earlier upload of it.
    pub fn stage(&self, fh: Sha256, ext: &'static str, file: TempFile, mut r: Reservation<'_>) {
        let (size, path) = (std::mem::take(&mut r.bytes), file.keep());
        let mut inner = self.inner();
        let staged = Staged {
            path,
            size,
            at: Instant::now(),
        };
        if let Some(old) = inner.nars.insert((fh, ext), staged) {
            inner.bytes -= old.size;
            let _ = std::fs::remove_file(old.path);
        }
        self.metrics.set_upload_staged(inner.bytes);
    }

    /// Takes the staged NAR `fh`/`ext`: the caller moves or removes its file.
    pub fn take(&self, fh: &Sha256, ext: &'static str) -> Option<Staged> {
        self.sweep();
        let mut inner = self.inner();
        let s = inner.nars.remove(&(*fh, ext))?;
        inner.bytes -= s.size;
        self.metrics.set_upload_staged(inner.bytes);
        Some(s)
    }
}

impl Reservation<'_> {
    /// Grows the reservation to `total` bytes (413 when the staging area cannot take them).
    pub fn grow(&mut self, total: u64) -> Result<(), UploadError> {
        if total <= self.bytes {
            return Ok(());
        }
        let more = total - self.bytes;
        let mut inner = self.staging.inner();
        if inner.bytes + more > self.staging.max_bytes {
            return Err(UploadError::TooLarge(self.staging.max_bytes));
        }
        inner.bytes += more;
        self.bytes = total;
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let mut inner = self.staging.inner();
            inner.bytes -= self.bytes;
            self.staging.metrics.set_upload_staged(inner.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::default());
        let s = Staging::new(dir.path().into(), 100, Duration::from_millis(50), m);
        let a = s.reserve(60).unwrap();
        assert!(matches!(s.reserve(50), Err(UploadError::TooLarge(100))));
        let f = s.temp();
        std::fs::write(f.path(), b"x").unwrap();
        s.stage(Sha256([1; 32]), ".xz", f, a);
        assert!(s.reserve(50).is_err(), "staged bytes count");
        std::thread::sleep(Duration::from_millis(80));
        let b = s.reserve(90).unwrap();
        assert!(s.take(&Sha256([1; 32]), ".xz").is_none(), "expired");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        drop(b);
        assert!(s.reserve(100).is_ok());
    }
}
