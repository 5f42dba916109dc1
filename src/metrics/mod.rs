//! Prometheus metrics with a small fixed label set (names are part of the interface contract
//! in docs/DESIGN.md §3). Counters are plain atomics indexed by label enums, so recording costs one
//! relaxed add on the hot path and rendering needs no registry. Labels live in `labels`, the
//! exposition (the one table of names, types and help texts) in `render`.

mod family;
pub mod histogram;
mod labels;
pub mod objstore;
pub mod process;
mod render;
pub mod state;
pub mod transcode;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use histogram::Histogram;

pub use labels::*;
pub use transcode::{NarinfoAs, StageCpu};

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// One upstream's answers by class, and its time to response headers.
#[derive(Default)]
pub struct UpstreamCounters {
    answers: [AtomicU64; UpstreamStatus::COUNT],
    headers: Histogram,
}

impl UpstreamCounters {
    /// An answer of `status`, `took` after the request was sent (`None`: no answer at all).
    pub fn answered(&self, status: UpstreamStatus, took: Option<Duration>) {
        self.answers[status as usize].fetch_add(1, Relaxed);
        if let Some(t) = took {
            self.headers.observe(t);
        }
    }
}

/// All of nixgate's metrics.
pub struct Metrics {
    requests: [[AtomicU64; Outcome::COUNT]; Route::COUNT],
    durations: [[Histogram; Outcome::COUNT]; Route::COUNT],
    /// Upstream answers and time to headers, by upstream (its origin; never credentials).
    by_upstream: std::sync::RwLock<Vec<(String, Arc<UpstreamCounters>)>>,
    fetched: [AtomicU64; Source::COUNT],
    served: AtomicU64,
    upstream: [AtomicU64; UpstreamStatus::COUNT],
    cache_size: AtomicU64,
    cache_entries: AtomicU64,
    evictions: AtomicU64,
    verification_failures: [AtomicU64; Source::COUNT],
    untrusted: [AtomicU64; Untrusted::COUNT],
    coalesced: AtomicU64,
    resumed: [AtomicU64; Source::COUNT],
    torrents_seeding: AtomicU64,
    fleet_served: AtomicU64,
    store_failures: [AtomicU64; StoreFailure::COUNT],
    digests_refused: AtomicU64,
    torrent_hashes: AtomicU64,
    connections: [AtomicU64; ConnSlot::COUNT],
    refused: [AtomicU64; Refusal::COUNT],
    send_timeouts: AtomicU64,
    uploads: [AtomicU64; UploadOutcome::COUNT],
    upload_bytes: AtomicU64,
    upload_staging_bytes: AtomicU64,
    zero_copy: AtomicU64,
    /// NARs recompressed for runners, and NAR bytes sent by compression.
    pub transcode: transcode::TranscodeCounters,
    /// The object-store tier's bytes, queue and errors.
    pub object_store: objstore::ObjectStoreCounters,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| counters()),
            durations: std::array::from_fn(|_| std::array::from_fn(|_| Histogram::default())),
            by_upstream: Default::default(),
            fetched: counters(),
            served: AtomicU64::new(0),
            upstream: counters(),
            cache_size: AtomicU64::new(0),
            cache_entries: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            verification_failures: counters(),
            untrusted: counters(),
            coalesced: AtomicU64::new(0),
            resumed: counters(),
            torrents_seeding: AtomicU64::new(0),
            fleet_served: AtomicU64::new(0),
            store_failures: counters(),
            digests_refused: AtomicU64::new(0),
            torrent_hashes: AtomicU64::new(0),
            connections: counters(),
            refused: counters(),
            send_timeouts: AtomicU64::new(0),
            uploads: counters(),
            upload_bytes: AtomicU64::new(0),
            upload_staging_bytes: AtomicU64::new(0),
            zero_copy: AtomicU64::new(0),
            transcode: Default::default(),
            object_store: Default::default(),
        }
    }
}

impl Metrics {
    pub fn request(&self, route: Route, outcome: Outcome) {
        self.requests[route as usize][outcome as usize].fetch_add(1, Relaxed);
    }
    /// A request and how long it took from its head to the response's head.
    pub fn request_took(&self, route: Route, outcome: Outcome, took: Duration) {
        self.request(route, outcome);
        self.durations[route as usize][outcome as usize].observe(took);
    }
    /// The counters of the upstream named `origin` (registered on first use).
    pub fn upstream_counters(&self, origin: &str) -> Arc<UpstreamCounters> {
        if let Some((_, c)) = self.read_upstreams().iter().find(|(o, _)| o == origin) {
            return c.clone();
        }
        let mut all = self.by_upstream.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = all.iter().find(|(o, _)| o == origin) {
            return c.clone();
        }
        let c = Arc::new(UpstreamCounters::default());
        all.push((origin.to_owned(), c.clone()));
        c
    }
    fn read_upstreams(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, Vec<(String, Arc<UpstreamCounters>)>> {
        self.by_upstream.read().unwrap_or_else(|p| p.into_inner())
    }
    pub fn fetched(&self, source: Source, bytes: u64) {
        self.fetched[source as usize].fetch_add(bytes, Relaxed);
    }
    pub fn served(&self, bytes: u64) {
        self.served.fetch_add(bytes, Relaxed);
    }
    /// An answer (or failure) of the upstream at `origin` (`scheme://host:port`), with its
    /// time to headers when it answered.
    pub fn upstream(&self, origin: &str, status: UpstreamStatus, took: Option<Duration>) {
        self.upstream[status as usize].fetch_add(1, Relaxed);
        self.upstream_counters(origin).answered(status, took);
    }
    pub fn set_torrents_seeding(&self, n: u64) {
        self.torrents_seeding.store(n, Relaxed);
    }
    pub fn set_cache(&self, bytes: u64, entries: u64) {
        self.cache_size.store(bytes, Relaxed);
        self.cache_entries.store(entries, Relaxed);
    }
    pub fn evicted(&self, n: u64) {
        self.evictions.fetch_add(n, Relaxed);
    }
    /// Data refused for `why` (see [`Untrusted`]).
    pub fn untrusted(&self, why: Untrusted) {
        self.untrusted[why as usize].fetch_add(1, Relaxed);
    }
    pub fn verification_failure(&self, source: Source) {
        self.verification_failures[source as usize].fetch_add(1, Relaxed);
    }
    /// A request joined a fetch already under way instead of starting one.
    pub fn coalesced(&self) {
        self.coalesced.fetch_add(1, Relaxed);
    }

    /// A download whose source broke mid-way continued from `source`.
    pub fn resumed(&self, source: Source) {
        self.resumed[source as usize].fetch_add(1, Relaxed);
    }

    /// This appliance answered a fleet request (a member asked it as the owner of a key).
    pub fn fleet_served(&self) {
        self.fleet_served.fetch_add(1, Relaxed);
    }

    /// Requests so far with this route and outcome (for the status page).
    pub fn requests_of(&self, route: Route, outcome: Outcome) -> u64 {
        self.requests[route as usize][outcome as usize].load(Relaxed)
    }
    /// Bytes fetched so far from `source`.
    pub fn fetched_bytes(&self, source: Source) -> u64 {
        self.fetched[source as usize].load(Relaxed)
    }
    /// Response body bytes sent so far.
    pub fn served_bytes(&self) -> u64 {
        self.served.load(Relaxed)
    }
    /// Upstream answers so far of this class.
    pub fn upstream_count(&self, status: UpstreamStatus) -> u64 {
        self.upstream[status as usize].load(Relaxed)
    }
    /// Bytes and files held in the disk cache now.
    pub fn cache(&self) -> (u64, u64) {
        (
            self.cache_size.load(Relaxed),
            self.cache_entries.load(Relaxed),
        )
    }
    /// Evictions so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Relaxed)
    }
    /// Verification failures so far, all sources.
    pub fn verification_failures(&self) -> u64 {
        self.verification_failures
            .iter()
            .map(|v| v.load(Relaxed))
            .sum()
    }
    /// The cache could not store a download (it was served uncached).
    pub fn store_failure(&self, reason: StoreFailure) {
        self.store_failures[reason as usize].fetch_add(1, Relaxed);
    }
    /// A peer's digest was refused (too large, malformed, or implausibly full).
    pub fn digest_refused(&self) {
        self.digests_refused.fetch_add(1, Relaxed);
    }

    /// A cached NAR was hashed into its torrent.
    pub fn torrent_hashed(&self) {
        self.torrent_hashes.fetch_add(1, Relaxed);
    }
    /// Client connections open now, by slot.
    pub fn set_connections(&self, slot: ConnSlot, n: u64) {
        self.connections[slot as usize].store(n, Relaxed);
    }
    /// A client connection was closed on accept.
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }
    /// A client connection was dropped for accepting no bytes within `--send-timeout`.
    pub fn send_timeout(&self) {
        self.send_timeouts.fetch_add(1, Relaxed);
    }
    /// An upload request ended so.
    pub fn upload(&self, outcome: UploadOutcome) {
        self.uploads[outcome as usize].fetch_add(1, Relaxed);
    }
    /// Upload requests that ended so, so far.
    pub fn uploads(&self, outcome: UploadOutcome) -> u64 {
        self.uploads[outcome as usize].load(Relaxed)
    }
    /// Bytes held by uploads (their own budget).
    pub fn set_upload_held(&self, bytes: u64) {
        self.upload_bytes.store(bytes, Relaxed);
    }
    /// Bytes staged (uploaded NARs awaiting a narinfo).
    pub fn set_upload_staged(&self, bytes: u64) {
        self.upload_staging_bytes.store(bytes, Relaxed);
    }
    /// A cached NAR was answered on the zero-copy path (`sendfile`).
    pub fn zero_copy(&self) {
        self.zero_copy.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_contract_names() {
        let m = Metrics::default();
        m.request(Route::Nar, Outcome::Hit);
        m.fetched(Source::Upstream, 42);
        m.verification_failure(Source::Upstream);
        let t = m.render();
        assert!(t.contains("nixgate_requests_total{route=\"nar\",result=\"hit\"} 1"));
        assert!(t.contains("nixgate_fetched_bytes_total{source=\"upstream\"} 42"));
        assert!(t.contains("nixgate_verification_failures_total{source=\"upstream\"} 1"));
        for name in [
            "nixgate_served_bytes_total",
            "nixgate_upstream_requests_total",
            "nixgate_cache_size_bytes",
            "nixgate_cache_entries",
            "nixgate_evictions_total",
        ] {
            assert!(t.contains(name), "{name}");
        }
    }
}
