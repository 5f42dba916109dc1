//! Getting what the cache does not hold: the source policy (cache → upstreams in order →
//! peers when every upstream failed) with verification before anything is stored, and
//! per-key coalescing of concurrent misses.

mod decode;
mod lz4;
pub mod nar;
mod nar_url;
pub mod narinfo;
mod provenance;
mod settings;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::metrics::Metrics;
use crate::nix::signature::TrustedKeys;
use crate::peers::PeerSet;
use crate::store::Store;
use crate::upstream::{Upstream, UpstreamClient, UpstreamError};
pub use settings::{FetchSettings, PeerPolicy, PeerTuning};

/// Why a fetch produced nothing. Cloneable: every coalesced waiter gets the same answer.
#[derive(Debug, Clone, Error)]
pub enum FetchError {
    /// Every upstream answered and none has it (a real 404).
    #[error("not found upstream")]
    NotFound,
    /// At least one source failed and none had it: answer 503, never a false 404.
    #[error("{from} unavailable: {error}")]
    Unavailable { from: Box<Origin>, error: Broke },
    /// The data came but did not verify; nothing was stored.
    #[error("verification failed: {0}")]
    Verification(#[from] verify::VerifyError),
    /// The local disk failed (full, read-only, …). A message: the disk's failures decide
    /// nothing here (`store` has classified them already).
    #[error("cache storage: {0}")]
    Storage(String),
}

/// Who could not deliver.
#[derive(Debug, Clone)]
pub enum Origin {
    Upstream(url::Url),
    /// Every upstream that was asked (a passthrough continues from any of them).
    Upstreams,
    Peer(url::Url),
    Fleet(url::Url),
    Swarm,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Upstream(u) => write!(f, "upstream {u}"),
            Origin::Upstreams => f.write_str("the upstreams"),
            Origin::Peer(u) => write!(f, "peer {u}"),
            Origin::Fleet(u) => write!(f, "fleet member {u}"),
            Origin::Swarm => f.write_str("the swarm"),
        }
    }
}

/// How a source failed to deliver.
#[derive(Debug, Clone, Error)]
pub enum Broke {
    #[error(transparent)]
    Http(#[from] UpstreamError),
    #[error("{0}")]
    Swarm(String),
}

impl Broke {
    /// The source sent too little for too long (drip-fed or stalled).
    pub fn too_slow(&self) -> bool {
        matches!(
            self,
            Broke::Http(UpstreamError::TooSlow { .. } | UpstreamError::Stalled(_))
        )
    }
}

impl FetchError {
    fn unavailable(up: &Upstream, e: &UpstreamError) -> Self {
        FetchError::Unavailable {
            from: Box::new(Origin::Upstream(up.base.clone())),
            error: Broke::Http(e.clone()),
        }
    }
}

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
    pub upstreams: Vec<Upstream>,
    pub client: UpstreamClient,
    pub keys: TrustedKeys,
    pub metrics: Arc<Metrics>,
    /// Other appliances to ask when every upstream fails.
    pub peers: Arc<PeerSet>,
    /// Paths an upstream recently answered 404 for.
    negative: moka::sync::Cache<String, ()>,
    /// Narinfo fetches under way, by store path hash and whether it is a fleet request.
    narinfos: crate::coalesce::Coalescer<
        (crate::nix::store_path::StorePathHash, bool),
        Result<bytes::Bytes, FetchError>,
    >,
    /// NAR downloads under way, by FileHash and whether it is a fleet request.
    nars: crate::coalesce::Inflight<(crate::nix::hash::Sha256, bool), nar::Download>,
    /// Which stored narinfos came from peers.
    provenance: provenance::Provenance,
    /// Passthroughs (NARs larger than the cache) still open to joiners, by FileHash.
    passthroughs: crate::coalesce::Inflight<crate::nix::hash::Sha256, nar::PassthroughHub>,
    /// When peers are preferred over upstreams.
    pub tuning: PeerTuning,
    /// The BitTorrent engine, once started (absent with `--no-torrent`).
    torrent: std::sync::OnceLock<Arc<crate::torrent::Engine>>,
}

impl Fetcher {
    /// Upstreams, keys, timeouts and the peer policy come from `settings`.
    pub fn new(
        settings: FetchSettings,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        peers: Arc<PeerSet>,
    ) -> Self {
        Fetcher {
            store,
            upstreams: settings.upstreams.into_iter().map(Upstream::new).collect(),
            client: UpstreamClient::new(settings.timeouts, settings.netrc),
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
    /// Relays a file nixgate cannot verify and therefore never stores (`.ls` listings, build
    /// logs, realisations): the first upstream that has it answers.
    pub async fn uncached(&self, rel: &str) -> Result<crate::upstream::UpstreamBody, FetchError> {
        let mut failure = None;
        for up in &self.upstreams {
            // `rel` comes validated from the routes; one that forms no URL is not there.
            let url = up.base.join(rel).map_err(|_| FetchError::NotFound)?;
            match self
                .client
                .request(up, http::Method::GET, &url, &self.metrics)
                .await
            {
                Ok(crate::upstream::Answer::Found(b)) => return Ok(b),
                Ok(crate::upstream::Answer::NotFound) => {}
                Err(e) => failure = Some(FetchError::unavailable(up, &e)),
            }
        }
        Err(failure.unwrap_or(FetchError::NotFound))
    }
}
