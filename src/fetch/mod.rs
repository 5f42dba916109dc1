//! Getting what the cache does not hold: the source policy (cache → the key's fleet owners →
//! upstreams in order → the swarm and peers when the upstreams failed) with verification
//! before anything is stored, and per-key coalescing of concurrent misses.
//!
//! Sources are data: [`Remote`] (`remote.rs`) names who is asked and in which role, and
//! decides the request flavour, metrics label and blame; `nar/policy.rs` and
//! `narinfo/source.rs` list the sources in order. Failures are typed by class and origin
//! ([`FetchError`], `error.rs`; [`verify::VerifyError`] names the check).

mod decode;
mod encode;
mod error;
mod live;
mod lz4;
pub mod nar;
mod nar_url;
pub mod narinfo;
mod provenance;
mod remote;
mod rendered;
mod served;
mod settings;
mod tap;
#[cfg(test)]
mod testdata;
mod transcode;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::nix::signature::TrustedKeys;
use crate::peers::PeerSet;
use crate::store::Store;
use crate::upstream::{Answer, Upstream, UpstreamBody, UpstreamClient};
pub use error::{Broke, FetchError, Origin};
pub use remote::{Remote, Verdict};
pub use settings::{FetchSettings, PeerPolicy, PeerTuning, ServeCompression};

/// How a request asks for a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    /// `Cache-Control: only-if-cached` (a peer's fallback request): answer from the cache or
    /// not at all.
    pub only_if_cached: bool,
    /// A fleet request (another member asks us as the key's owner): fetch it ourselves, never
    /// ask the fleet in turn (so nothing loops). Coalesced apart from our own misses, so two
    /// members that briefly disagree on the owner cannot wait on each other.
    pub fleet: bool,
}

/// Everything a fetch needs.
pub struct Fetcher {
    pub store: Arc<Store>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub client: UpstreamClient,
    pub keys: TrustedKeys,
    pub metrics: Arc<Metrics>,
    /// Other appliances to ask when every upstream fails.
    pub peers: Arc<PeerSet>,
    /// The object store (`--object-store`): asked before the upstreams, written behind.
    pub bucket: Option<Arc<crate::objstore::Bucket>>,
    /// The write-behind queue to the bucket (its workers: `objstore::writer::run`).
    pub writes: Option<(crate::objstore::WriteBehind, crate::objstore::writer::Queue)>,
    /// NARs being materialised from the bucket, by FileHash (`nar/bucket.rs`).
    bucket_reads: crate::coalesce::Coalescer<crate::nix::hash::Sha256, Option<crate::store::Hit>>,
    /// Paths an upstream recently answered 404 for.
    negative: moka::sync::Cache<String, ()>,
    /// Narinfo fetches under way, by store path hash and whether it is a fleet request.
    narinfos: crate::coalesce::Coalescer<
        (crate::nix::store_path::StorePathHash, bool),
        Result<bytes::Bytes, FetchError>,
    >,
    /// NAR downloads under way, by FileHash and whether it is a fleet request.
    nars: crate::coalesce::Inflight<(crate::nix::hash::Sha256, nar::Via), nar::Download>,
    /// Which stored narinfos came from peers.
    provenance: provenance::Provenance,
    /// Passthroughs (NARs larger than the cache) still open to joiners, by FileHash.
    passthroughs: crate::coalesce::Inflight<crate::nix::hash::Sha256, nar::PassthroughHub>,
    /// When peers are preferred over upstreams.
    pub tuning: PeerTuning,
    /// The BitTorrent engine, once started (absent with `--no-torrent`).
    torrent: std::sync::OnceLock<Arc<crate::torrent::Engine>>,
    /// What runners get NARs as (`--serve-compression`; `None`: the upstream's file).
    serve: Option<crate::nix::served::Served>,
    /// Blocking-pool slots for the checks of downloads that transcode as they go (one per
    /// core: more would only contend for the cores; `nar/plan.rs` `Checks::check`).
    tap_slots: tokio::sync::Semaphore,
    /// Live transcodes (`live.rs`) running at once, one per core; more runners of uncached
    /// paths wait for a slot rather than add a decode thread each (a LAN client could
    /// otherwise ask for as many as it likes).
    live_slots: Arc<tokio::sync::Semaphore>,
    /// Transcodes under way, by FileHash (`served.rs`).
    transcodes: crate::coalesce::Coalescer<
        crate::nix::hash::Sha256,
        Result<(), std::sync::Arc<transcode::TranscodeError>>,
    >,
    /// The signed facts of NARs whose narinfo was served lately (uploads included), for a
    /// request of nixgate's own file of one that is not held.
    signed: moka::sync::Cache<crate::nix::hash::Sha256, transcode::Signed>,
    /// NARs whose own file an owner or peer failed to send lately (`nar/owned.rs`): not asked
    /// again for a minute, so a retry takes the upstream file's path (which can resume from
    /// another source) rather than break at the same place.
    served_failed: moka::sync::Cache<crate::nix::hash::Sha256, ()>,
    /// The narinfos runners get, rendered once per stored narinfo (`rendered.rs`).
    rendered: rendered::Rendered,
}

impl Fetcher {
    /// `--serve-compression`'s value: what runners get NARs as.
    pub fn serving(&self) -> &'static str {
        self.serve.map_or("upstream", |s| s.field())
    }

    /// Upstreams, keys, timeouts and the peer policy come from `settings`.
    pub fn new(
        settings: FetchSettings,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        peers: Arc<PeerSet>,
    ) -> Self {
        let bucket = settings.object_store.as_ref().and_then(|o| {
            let b = crate::objstore::Bucket::new(
                &o.url,
                o.credentials.clone(),
                &settings.egress,
                settings.timeouts.connect,
            );
            b.inspect_err(|e| tracing::error!(error = %e, "object store not usable; off"))
                .ok()
                .map(Arc::new)
        });
        if bucket.is_some() {
            metrics.object_store.enable();
        }
        let writes = bucket.as_ref().map(|_| {
            crate::objstore::WriteBehind::new(crate::objstore::writer::QUEUE, metrics.clone())
        });
        Fetcher {
            bucket,
            writes,
            bucket_reads: Default::default(),
            store,
            upstreams: settings
                .upstreams
                .into_iter()
                .map(|u| Arc::new(Upstream::new(u)))
                .collect(),
            client: UpstreamClient::new(settings.timeouts, settings.netrc, &settings.egress),
            keys: settings.keys,
            metrics,
            peers,
            negative: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(settings.negative_ttl.max(Duration::from_millis(1)))
                .build(),
            narinfos: Default::default(),
            nars: Default::default(),
            passthroughs: Default::default(),
            provenance: Default::default(),
            torrent: Default::default(),
            tuning: settings.tuning,
            serve: settings.serve.served(),
            tap_slots: tokio::sync::Semaphore::new(cores()),
            live_slots: Arc::new(tokio::sync::Semaphore::new(cores())),
            rendered: rendered::Rendered::new(settings.serve.served()),
            transcodes: Default::default(),
            // Needed from a runner's narinfo request to its NAR's commit (seconds), and for
            // uploads (whose narinfos `narinfos_of` does not see) until a runner asks again.
            signed: moka::sync::Cache::builder()
                .max_capacity(20_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            served_failed: moka::sync::Cache::builder()
                .max_capacity(20_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    /// Hands over the started BitTorrent engine (once).
    pub fn set_torrent(&self, engine: Arc<crate::torrent::Engine>) {
        let _ = self.torrent.set(engine);
    }

    pub fn torrent(&self) -> Option<&Arc<crate::torrent::Engine>> {
        self.torrent.get()
    }

    fn is_negative(&self, key: &str) -> bool {
        self.negative.contains_key(key)
    }

    fn remember_not_found(&self, key: String) {
        self.negative.insert(key, ());
    }
}

impl Fetcher {
    /// Queues path `h`, whose narinfo and NAR are committed locally (fetched or uploaded),
    /// for the object store, if one is configured; never waits (`objstore::writer`).
    pub fn to_bucket(&self, h: crate::nix::store_path::StorePathHash) {
        if let Some((writes, _)) = &self.writes {
            writes.enqueue(h);
        }
    }

    /// Removes the narinfo of the upload `h` (deleted with `DELETE`) from the object store,
    /// so other sites stop serving it; its NAR is left to the bucket's lifecycle (another
    /// path may share it). Bounded: a bucket that does not answer costs the request 5 s.
    pub async fn unpublish(&self, h: crate::nix::store_path::StorePathHash) {
        let Some(b) = &self.bucket else { return };
        let key = b.keys.narinfo(&h);
        let deleted = tokio::time::timeout(Duration::from_secs(5), b.delete(&key)).await;
        let error = match deleted {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 5 s".to_owned(),
        };
        tracing::warn!(hash = %h, %error, "could not delete a removed upload's narinfo from the object store");
    }
}

impl Fetcher {
    /// Relays a file nixgate cannot verify and therefore never stores (`.ls` listings, build
    /// logs, realisations): the first upstream that has it answers.
    pub async fn uncached(&self, rel: &str) -> Result<UpstreamBody, FetchError> {
        let mut verdict = Verdict::default();
        for up in &self.upstreams {
            // `rel` comes validated from the routes; one that forms no URL is not there.
            let url = up.base.join(rel).map_err(|_| FetchError::NotFound)?;
            let remote = Remote::Upstream(up.clone());
            let asked = remote.ask(&self.client, &self.metrics, http::Method::GET, &url, 0);
            match asked.await {
                Ok(Answer::Found(b)) => return Ok(b),
                Ok(Answer::NotFound) => {}
                Err(e) => verdict.unavailable(&remote, e),
            }
        }
        Err(verdict.into_error())
    }
}

/// The cores this process may use (2 when unknown).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
