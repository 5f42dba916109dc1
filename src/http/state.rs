//! What every handler shares: the running appliance's store, fetcher, peers and metrics.
//! Built by `app` (the wiring); the HTTP surface only reads it.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use super::error::DownPolicy;
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::peers::PeerSet;
use crate::store::Store;

/// Shared state of a running appliance.
pub struct App {
    pub store: Arc<Store>,
    pub fetcher: Arc<Fetcher>,
    /// Uploads from runners (off without an upload token).
    pub uploader: Arc<crate::upload::Uploader>,
    pub metrics: Arc<Metrics>,
    /// The `/nix-cache-info` body.
    pub cache_info: Bytes,
    pub down_policy: DownPolicy,
    pub peers: Arc<PeerSet>,
    /// The status page's history and recent events.
    pub status: Arc<crate::status::Status>,
    /// The last `/_p2p/v1/digest` body and when it was built.
    pub digest: Mutex<Option<(Instant, Bytes)>>,
}
