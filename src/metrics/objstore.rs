//! Metrics of the object-store tier (`--object-store`, `objstore/`): bytes read from and
//! written to the bucket, the write-behind queue's depth and what it dropped, and errors by
//! kind. Families are only rendered when a bucket is configured.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use super::family::{Family, Kind};
use super::ObjectStoreError;

/// The object store's counters.
#[derive(Default)]
pub struct ObjectStoreCounters {
    /// A bucket is configured (the families are rendered).
    on: AtomicBool,
    written: AtomicU64,
    queued: AtomicU64,
    dropped: AtomicU64,
    uploaded: AtomicU64,
    errors: [AtomicU64; ObjectStoreError::COUNT],
}

impl ObjectStoreCounters {
    /// A bucket is configured: its families appear (at 0) in the exposition.
    pub fn enable(&self) {
        self.on.store(true, Relaxed);
    }

    /// `n` bytes were written to the bucket.
    pub fn written(&self, n: u64) {
        self.written.fetch_add(n, Relaxed);
    }

    /// A path was queued for upload (`true`) or taken off the queue (`false`).
    pub fn queue(&self, added: bool) {
        match added {
            true => self.queued.fetch_add(1, Relaxed),
            false => self.queued.fetch_sub(1, Relaxed),
        };
    }

    /// Bytes written to the bucket, and paths dropped from a full queue, so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.written.load(Relaxed), self.dropped.load(Relaxed))
    }

    /// The paths waiting in the write-behind queue.
    pub fn queue_depth(&self) -> u64 {
        self.queued.load(Relaxed)
    }

    /// A path was not queued: the queue was full.
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    /// A path's NAR and narinfo are in the bucket (uploaded now or found there).
    pub fn uploaded(&self) {
        self.uploaded.fetch_add(1, Relaxed);
    }

    pub fn error(&self, kind: ObjectStoreError) {
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }

    /// The families, in exposition order; `read`: the bytes fetched from the bucket (kept with
    /// every source's in `nixgate_fetched_bytes_total{source="bucket"}`).
    pub(super) fn families(&self, read: u64) -> Vec<Family> {
        if !self.on.load(Relaxed) {
            return Vec::new();
        }
        let bytes = [("read", read), ("written", self.written.load(Relaxed))];
        vec![
            Family::new(
                "nixgate_object_store_bytes_total",
                Kind::Counter,
                "Bytes read from (verified NARs and narinfos) and written to the object store.",
            )
            .samples(
                bytes
                    .into_iter()
                    .map(|(d, v)| ("", format!("direction=\"{d}\""), v as f64)),
            ),
            Family::new(
                "nixgate_object_store_queue_depth",
                Kind::Gauge,
                "Paths waiting in the write-behind queue to the object store.",
            )
            .value(&self.queued),
            Family::new(
                "nixgate_object_store_writes_dropped_total",
                Kind::Counter,
                "Paths not written to the object store because the write-behind queue was full (never blocks a request).",
            )
            .value(&self.dropped),
            Family::new(
                "nixgate_object_store_uploads_total",
                Kind::Counter,
                "Paths whose NAR and narinfo are in the object store after a write-behind (uploaded, or found there).",
            )
            .value(&self.uploaded),
            Family::new(
                "nixgate_object_store_errors_total",
                Kind::Counter,
                "Object store failures by kind (refused: an object that failed verification; local: reading the cached file).",
            )
            .by("kind", ObjectStoreError::ALL, |k| &self.errors[k as usize]),
        ]
    }
}
