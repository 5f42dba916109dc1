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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Egress, Timeouts};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A bucket at a local server that answers every request with `reply`, then holds the
    /// connection (`hold`) or closes it; and a client with 1 s timeouts.
    async fn bucket_answering(reply: &'static str, hold: bool) -> (Bucket, UpstreamClient) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = s.read(&mut [0u8; 4096]).await;
                    let _ = s.write_all(reply.as_bytes()).await;
                    if hold {
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        let url = format!("s3://nix-cache/ci?endpoint=http://{addr}&region=us-east-1");
        let (egress, second) = (Egress::default(), Duration::from_secs(1));
        let creds = rusty_s3::Credentials::new("ak", "sk");
        let bucket = Bucket::new(&url.parse().unwrap(), Some(creds), &egress, second).unwrap();
        let timeouts = Timeouts {
            connect: second,
            first_byte: second,
            stall: second,
            narinfo: second,
            min_rate: 0,
        };
        let client = UpstreamClient::new(timeouts, Default::default(), &egress);
        (bucket, client)
    }

    #[tokio::test]
    async fn an_answer_is_the_object_or_a_404() {
        let info = "HTTP/1.1 200 OK\r\nContent-Length: 21\r\n\r\nStoreDir: /nix/store\n";
        let (b, c) = bucket_answering(info, false).await;
        assert!(probe(&b, &c).await.is_ok());
        let absent = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let (b, c) = bucket_answering(absent, false).await;
        assert!(probe(&b, &c).await.is_ok(), "reachable: an answer");
    }

    #[tokio::test]
    async fn a_refusal_an_error_or_a_hang_is_not() {
        let denied = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        let (b, c) = bucket_answering(denied, false).await;
        assert!(matches!(
            probe(&b, &c).await,
            Err(UpstreamError::Denied(403))
        ));
        let failing = "HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\n\r\n";
        let (b, c) = bucket_answering(failing, false).await;
        assert!(matches!(
            probe(&b, &c).await,
            Err(UpstreamError::Status(503))
        ));
        // Headers, then nothing: the body stalls (1 s here).
        let hangs = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (b, c) = bucket_answering(hangs, true).await;
        assert!(probe(&b, &c).await.is_err());
        assert!(
            !b.at.breaker.is_open(),
            "a probe leaves the breaker to its caller"
        );
    }

    #[tokio::test]
    async fn reads_skip_the_bucket_while_overdue_or_open() {
        let (b, _) = bucket_answering("", false).await;
        assert!(!b.is_lagging());
        b.lagged();
        assert!(b.is_lagging(), "a read is overdue");
        b.answered();
        assert!(!b.is_lagging());
        b.at.breaker.failure();
        assert!(b.is_lagging(), "one failure opens the circuit");
        b.at.breaker.success();
        assert!(b.is_lagging(), "a request's answer does not close it");
        b.at.breaker.probe_answered();
        assert!(!b.is_lagging());
    }
}
