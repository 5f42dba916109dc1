//! Write-behind: what the appliance fetched from an upstream (or accepted as an upload) is
//! copied to the bucket after it was committed locally, never on a request's path.
//!
//! [`WriteBehind::enqueue`] only tries a bounded channel: a full queue drops the path (counted
//! in `nixgate_object_store_writes_dropped_total`; the next site that fetches it writes it).
//! [`run`]'s workers take a path, read its narinfo and NAR from the cache (a `store::Hit`,
//! streamed, never held in memory) and write the NAR first and the narinfo last, so a narinfo
//! in the bucket never names a NAR that is not there; an object already there (HEAD) is not
//! written again. `nix-cache-info` is written once. Failures are retried with backoff; the
//! appliance never deletes from the bucket (retention is the bucket's lifecycle rule).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use super::client::{full, Bucket, ObjError};
use crate::metrics::Metrics;
use crate::nix::compression::Compression;
use crate::nix::narinfo::NarInfo;
use crate::nix::store_path::StorePathHash;
use crate::store::{Hit, Store};

/// Paths the queue holds at most.
pub const QUEUE: usize = 4096;
/// Uploads in parallel.
pub const WORKERS: usize = 4;
/// Attempts per path before it is given up (the next fill writes it).
const ATTEMPTS: u32 = 5;

/// The bucket's `nix-cache-info`: a cache of `/nix/store` paths, ranked below nixgate's own.
pub const CACHE_INFO: &str = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 50\n";

/// Why one path could not be written.
#[derive(Debug, Error)]
pub enum WriteError {
    #[error("object store: {0}")]
    Store(#[from] ObjError),
    #[error("the cache no longer holds its narinfo or NAR")]
    Gone,
}

/// The sending half of the queue; cheap to clone.
#[derive(Clone)]
pub struct WriteBehind {
    tx: mpsc::Sender<StorePathHash>,
    metrics: Arc<Metrics>,
}

/// The receiving half, shared by the workers.
pub type Queue = Arc<Mutex<mpsc::Receiver<StorePathHash>>>;

impl WriteBehind {
    /// A queue of `capacity` paths.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Self, Queue) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (WriteBehind { tx, metrics }, Arc::new(Mutex::new(rx)))
    }

    /// Queues path `h` (its narinfo and NAR are committed in the cache); never waits.
    pub fn enqueue(&self, h: StorePathHash) {
        match self.tx.try_send(h) {
            Ok(()) => self.metrics.object_store.queue(true),
            Err(_) => {
                self.metrics.object_store.dropped();
                tracing::debug!(hash = %h, "object store queue full; not written");
            }
        }
    }
}

/// One worker: takes paths off `queue` until `shutdown` (what is left queued is lost; the
/// next fill of those paths writes them).
pub async fn run(
    bucket: Arc<Bucket>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    queue: Queue,
    shutdown: CancellationToken,
) {
    let w = Worker {
        bucket,
        store,
        metrics,
    };
    loop {
        let next = async { queue.lock().await.recv().await };
        let h = tokio::select! {
            _ = shutdown.cancelled() => return,
            h = next => match h { Some(h) => h, None => return },
        };
        w.metrics.object_store.queue(false);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = w.write_with_retries(h) => {}
        }
    }
}

struct Worker {
    bucket: Arc<Bucket>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl Worker {
    async fn write_with_retries(&self, h: StorePathHash) {
        let mut backoff = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            let e = match self.write(h).await {
                Ok(()) => return self.metrics.object_store.uploaded(),
                Err(WriteError::Gone) => return,
                Err(WriteError::Store(e)) => e,
            };
            if let Some(kind) = e.kind() {
                self.metrics.object_store.error(kind);
            }
            if !e.is_retryable() {
                // Denied (credentials, policy, a read-only bucket): retrying only costs.
                tracing::info!(hash = %h, error = %e, "object store write refused; not retried");
                return;
            }
            tracing::info!(hash = %h, attempt, error = %e, "object store write failed");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        tracing::warn!(hash = %h, "object store write given up; the next fill writes it");
    }

    /// Writes `h`'s NAR, then its narinfo, each unless already there.
    async fn write(&self, h: StorePathHash) -> Result<(), WriteError> {
        let (narinfo, hit, nar_key) = self.local(h).await.ok_or(WriteError::Gone)?;
        self.cache_info().await?;
        let b = &self.bucket;
        if b.is_refused(&nar_key) || !b.exists(&nar_key).await? {
            let ty = "application/x-nix-nar";
            b.upload_file(&nar_key, &hit, hit.len(), ty).await?;
            b.rewritten(&nar_key);
            self.metrics.object_store.written(hit.len());
        }
        let key = b.keys.narinfo(&h);
        if b.is_refused(&key) || !b.exists(&key).await? {
            let len = narinfo.len() as u64;
            b.put(&key, full(narinfo), len, "text/x-nix-narinfo")
                .await?;
            b.rewritten(&key);
            self.metrics.object_store.written(len);
        }
        Ok(())
    }

    /// `nix-cache-info`, unless there (asked until it is known to be there, then never).
    async fn cache_info(&self) -> Result<(), ObjError> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.bucket.cache_info.load(Relaxed) {
            return Ok(());
        }
        let key = self.bucket.keys.cache_info();
        if self.bucket.exists(&key).await? {
            self.bucket.cache_info.store(true, Relaxed);
            return Ok(());
        }
        let len = CACHE_INFO.len() as u64;
        let body = full(CACHE_INFO);
        self.bucket
            .put(&key, body, len, "text/x-nix-cache-info")
            .await?;
        self.bucket.cache_info.store(true, Relaxed);
        Ok(())
    }

    /// The narinfo as served (its `URL` is the standard `nar/<FileHash>.nar<ext>`), the NAR's
    /// hit and its key, from the cache or the held uploads.
    async fn local(&self, h: StorePathHash) -> Option<(Bytes, Hit, String)> {
        // A file read from disk must still be this path's, naming the NAR the index has (as
        // `fetch::narinfo` checks it): a damaged one is dropped, not copied to the bucket.
        let valid = |stored: &Bytes, fh: &crate::nix::hash::Sha256| {
            parse(&served(stored)).is_some_and(|ni| ni.base.hash == h && ni.file_hash == Some(*fh))
        };
        let narinfo = match self.store.uploads().narinfo(&h).await {
            Some(b) => b,
            None => served(&self.store.narinfo(&h, valid).await?.1),
        };
        let ni = parse(&narinfo).filter(|ni| ni.base.hash == h)?;
        let fh = ni.file_hash?;
        let ext = Compression::from_field(ni.compression.as_deref()).extension();
        let hit = match self.store.nar(&fh, ext).await {
            Ok(Some(hit)) => hit,
            _ => self.store.uploads().nar(&fh, ext).await.ok()??,
        };
        let key = self.bucket.keys.nar(&fh, ext);
        Some((narinfo, hit, key))
    }
}

fn parse(narinfo: &Bytes) -> Option<NarInfo> {
    let text = std::str::from_utf8(narinfo).ok()?;
    NarInfo::parse(text, crate::nix::STORE_DIR).ok()
}

/// The served part of a stored narinfo file (after its first line, the upstream NAR URL).
fn served(stored: &Bytes) -> Bytes {
    let start = stored.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    stored.slice(start..)
}
