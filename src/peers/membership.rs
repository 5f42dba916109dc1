//! Fleet membership: every [`INTERVAL`] each fleet member's `/nix-cache-info` is probed for
//! its peer id ([`fleet::ID_HEADER`]) and what it serves runners as ([`fleet::SERVES_HEADER`]). A member that answers within [`PROBE_TIMEOUT`] owns
//! its share of keys; one that does not loses it until it answers again. A member that dies
//! between probes costs at most one refused connection per miss: the miss goes on to the
//! next owner (see `fetch`), and its circuit breaker takes it out after repeated failures.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::{fleet, PeerSet};
use crate::upstream::probe;

/// How often members are probed: a member that joins owns keys within this.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// How long a probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Probes every fleet member once.
pub async fn refresh(set: &PeerSet) {
    let members = set.fleet_members();
    let probes = members.iter().map(|m| async move {
        let names = [fleet::ID_HEADER, fleet::SERVES_HEADER];
        let got = probe::get_headers(&m.base, "/nix-cache-info", PROBE_TIMEOUT, &names);
        (m, got.await)
    });
    for (m, got) in join_all(probes).await {
        match got {
            Ok(mut got) => {
                let serves = got.pop().flatten();
                set.set_id(&m.base, got.pop().flatten(), serves)
            }
            Err(e) => {
                tracing::debug!(peer = %m, error = %e, "membership probe failed");
                set.set_id(&m.base, None, None);
            }
        }
    }
}

/// Probes the members every [`INTERVAL`] until `shutdown`.
pub async fn run(set: Arc<PeerSet>, shutdown: CancellationToken) {
    loop {
        refresh(&set).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}
