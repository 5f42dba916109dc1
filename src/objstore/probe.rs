//! Closing the object store's circuit without runners. The bucket's breaker
//! (`Breaker::background`) opens after [`FAILURES`] failures and is never half-opened by a
//! request: while it is open every read skips the bucket and goes to the usual sources, so no
//! runner waits on a bucket that just hung. Instead, every [`EVERY`], once the open period
//! ([`OPEN_FOR`]) is over, this task asks for `<prefix>/nix-cache-info` with a signed GET
//! and reads the answer whole. An answer closes the circuit (a 404 is one: the store is
//! reachable, the object merely not written yet); a 403, a 5xx, a timeout or a body that
//! stalls keeps it open for another period.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tokio_util::sync::CancellationToken;

use super::Bucket;
use crate::upstream::{Answer, Asker, Upstream, UpstreamClient, UpstreamError, BUCKET_FIRST_BYTE};

/// Consecutive failures that open the bucket's circuit: one. A runner that finds out pays
/// once; nobody pays again until the prober saw an answer.
pub const FAILURES: u32 = 1;
/// How long the bucket's circuit stays open before it is probed (again).
pub const OPEN_FOR: Duration = Duration::from_secs(5);
/// How often the circuit is looked at.
const EVERY: Duration = Duration::from_secs(1);
/// The most of `nix-cache-info` read (it is a few lines).
const MAX_CACHE_INFO: usize = 64 << 10;

/// Probes the bucket's circuit whenever it is open and due, until `token` is cancelled.
pub async fn run(bucket: Arc<Bucket>, client: UpstreamClient, token: CancellationToken) {
    while tokio::time::timeout(EVERY, token.cancelled())
        .await
        .is_err()
    {
        if !bucket.at.breaker.due() {
            continue;
        }
        // One probe at a time, awaited here: the next tick comes after it ended.
        let probed = tokio::select! {
            r = probe(&bucket, &client) => r,
            () = token.cancelled() => return,
        };
        match probed {
            Ok(()) => {
                bucket.answered();
                bucket.at.breaker.probe_answered();
            }
            Err(e) => {
                tracing::debug!(bucket = %bucket.at, error = %e, "circuit probe failed; kept open");
                bucket.at.breaker.failure();
            }
        }
    }
}

/// Asks the bucket for `nix-cache-info` (signed) and reads it whole: `Ok` when the store
/// answered (the object or a 404), else why not.
pub async fn probe(bucket: &Bucket, client: &UpstreamClient) -> Result<(), UpstreamError> {
    let url = bucket.presign(&Method::GET, &bucket.keys.under("nix-cache-info"));
    // Through a breaker of its own: the bucket's must not be closed by the response's
    // headers before the body came (a bucket may hang after them), nor refuse the probe.
    let probe = Upstream::new(bucket.at.base.clone());
    let deadline = BUCKET_FIRST_BYTE + Duration::from_secs(1);
    let asked = async {
        match client
            .request(&probe, Asker::Bucket, Method::GET, &url, 0)
            .await?
        {
            Answer::Found(body) => body.read_all(MAX_CACHE_INFO).await.map(drop),
            Answer::NotFound => Ok(()),
        }
    };
    tokio::time::timeout(deadline, asked)
        .await
        .unwrap_or(Err(UpstreamError::Deadline(deadline)))
}
