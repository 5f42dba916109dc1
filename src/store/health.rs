//! Why the cache cannot store right now: each store failure is classified, counted
//! (`nixgate_cache_store_failures_total`), logged and remembered, and `/readyz` asks
//! [`Store::readiness`]. Nothing here stops a download: the fetcher streams it uncached.

use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::{check_writable, NotWritable, Store, StoreError};
use crate::metrics::StoreFailure;

/// Why the cache cannot store right now (`/readyz` answers 503 with it).
#[derive(Debug, Error)]
pub enum NotReady {
    #[error("cache dir {0}")]
    Dir(#[from] NotWritable),
    #[error("cache shard {} cannot be listed", .0.display())]
    Shard(PathBuf),
    /// A store failed less than [`REMEMBER`] ago and none succeeded since.
    #[error("cannot store ({}): {error}", .reason.as_str())]
    Failing { reason: StoreFailure, error: String },
}

/// How long a store failure keeps `/readyz` at 503 when no store succeeds after it.
const REMEMBER: Duration = Duration::from_secs(30);

/// The last store failure and the shards that could not be listed at start-up.
#[derive(Default)]
pub(super) struct Health {
    last: Mutex<Option<(StoreFailure, String, Instant)>>,
    bad_shards: Mutex<Vec<PathBuf>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StoreError {
    /// The metric label of this failure.
    pub fn reason(&self) -> StoreFailure {
        match self {
            StoreError::CapReached { .. } => StoreFailure::CapReached,
            StoreError::Indexing => StoreFailure::Indexing,
            StoreError::Io { source, .. }
                if matches!(
                    source.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                ) =>
            {
                StoreFailure::NoSpace
            }
            StoreError::Io { .. } | StoreError::Version(..) | StoreError::NotEmpty(_) => {
                StoreFailure::Io
            }
        }
    }
}

impl Store {
    /// Bytes free on the cache dir's filesystem for this process (`statvfs`); `None` when it
    /// cannot be read.
    pub fn disk_free(&self) -> Option<u64> {
        let st = rustix::fs::statvfs(&self.layout.root).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Records that a write could not be stored: counted, logged, and shown by `/readyz`.
    pub(super) fn store_failed(&self, e: &StoreError) {
        let reason = e.reason();
        self.metrics.store_failure(reason);
        if reason == StoreFailure::Indexing {
            // Expected while the scan runs, and the cache serves meanwhile: not a failure.
            tracing::debug!(error = %e, "serving a download uncached");
            return;
        }
        tracing::warn!(reason = reason.as_str(), error = %e, "cache cannot store this download; serving it uncached");
        *lock(&self.health.last) = Some((reason, e.to_string(), Instant::now()));
    }

    /// A NAR was stored: the cache works again.
    pub(super) fn stored(&self) {
        if lock(&self.health.last).take().is_some() {
            tracing::info!("cache stores again");
        }
    }

    /// Remembers a shard directory that could not be listed (its files are not indexed).
    pub(super) fn bad_shard(&self, shard: PathBuf, e: &io::Error) {
        tracing::error!(shard = %shard.display(), error = %e, "cannot list a cache shard; its files are not served and writes into it may fail");
        lock(&self.health.bad_shards).push(shard);
    }

    /// `Ok` with what `/readyz` says when the cache can store (or is indexing: it serves what
    /// it holds, and downloads uncached meanwhile); otherwise why not. Blocking I/O.
    pub fn readiness(&self) -> Result<String, NotReady> {
        check_writable(&self.layout.tmp)?;
        {
            let mut bad = lock(&self.health.bad_shards);
            bad.retain(|s| std::fs::read_dir(s).is_err());
            if let Some(s) = bad.first() {
                return Err(NotReady::Shard(s.clone()));
            }
        }
        let mut last = lock(&self.health.last);
        match &*last {
            Some((_, _, at)) if at.elapsed() > REMEMBER => *last = None,
            Some((reason, e, _)) => {
                return Err(NotReady::Failing {
                    reason: *reason,
                    error: e.clone(),
                })
            }
            None => {}
        }
        drop(last);
        let ix = self.index();
        Ok(if ix.scanning() {
            format!(
                "ready: indexing the cache ({} files so far); new downloads are served uncached until it completes\n",
                ix.files()
            )
        } else {
            "ready\n".to_owned()
        })
    }
}
