//! Closing circuits without traffic: every second, each configured upstream whose circuit is
//! open and due for its probe is asked for `nix-cache-info` (with its credentials, counted in
//! `nixgate_upstream_requests_total`). An answer closes the circuit; a failure keeps it open
//! for another period. Runners' requests can still probe too; whichever comes first wins.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tokio_util::sync::CancellationToken;

use super::{Asker, Upstream, UpstreamClient};
use crate::metrics::Metrics;

/// How often open circuits are looked at.
const EVERY: Duration = Duration::from_secs(1);

/// Probes the open circuits of `upstreams` until `token` is cancelled.
pub async fn run(
    upstreams: Vec<Arc<Upstream>>,
    client: UpstreamClient,
    metrics: Arc<Metrics>,
    token: CancellationToken,
) {
    while tokio::time::timeout(EVERY, token.cancelled())
        .await
        .is_err()
    {
        for up in upstreams.iter().filter(|u| u.breaker.due()) {
            let Ok(url) = up.base.join("nix-cache-info") else {
                continue;
            };
            let (up, client, metrics) = (up.clone(), client.clone(), metrics.clone());
            // One at a time per upstream: the request takes the half-open slot, so the next
            // tick sees the circuit half-open (not due) until this one ends.
            tokio::spawn(async move {
                let r = client
                    .request(&up, Asker::Upstream(&metrics), Method::GET, &url, 0)
                    .await;
                tracing::debug!(upstream = %up, ok = r.is_ok(), "circuit probe");
            });
        }
    }
}
