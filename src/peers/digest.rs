//! Peers' digests (see [`crate::store::digest`] for the Bloom filter itself): fetched from
//! every peer every [`REFRESH`], so a fetcher asks only the peers that probably hold a key.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::PeerSet;
use crate::metrics::Metrics;
pub use crate::store::digest::{nar_key, narinfo_key, DigestError, Holdings, MAX_BYTES};
use crate::upstream::probe;

/// How often peers' digests are fetched again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Fetches every peer's digest once. A peer without one (an older release, or an error) is
/// then asked for everything, as before digests existed. A digest larger than [`MAX_BYTES`]
/// is not read past that; one that is too large or implausibly full is refused (counted,
/// logged) and its peer treated as having none: it never looks like a holder.
pub async fn refresh(set: &PeerSet, metrics: &Metrics) {
    let peers = set.peers();
    let fetches = peers.iter().map(|p| async move {
        let got = probe::get_bytes(
            &p.base,
            "/_p2p/v1/digest",
            Duration::from_secs(5),
            MAX_BYTES + 5,
        )
        .await
        .map_err(|e| (matches!(e, probe::ProbeError::TooLarge(_)), e.to_string()))
        .and_then(|b| Holdings::from_bytes(&b).map_err(|e| (true, e.to_string())));
        (p, got)
    });
    for (p, got) in futures_util::future::join_all(fetches).await {
        match &got {
            Err((true, e)) => {
                metrics.digest_refused();
                tracing::warn!(peer = %p, error = %e, "peer digest refused; asking it as if it had none");
            }
            Err((false, e)) => tracing::debug!(peer = %p, error = %e, "no digest from peer"),
            Ok(_) => {}
        }
        set.set_holdings(&p.base, got.ok());
    }
}

/// Refreshes the digests every [`REFRESH`] until `shutdown`.
pub async fn run(set: Arc<PeerSet>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    loop {
        refresh(&set, &metrics).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
}
