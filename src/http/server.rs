//! The accept loop (HTTP/1.1 keep-alive, as Nix uses over plain http, behind the connection
//! limits and the send timeout): regular connections go to the front loop (`front.rs`),
//! reserve ones to hyper alone. Graceful shutdown: on cancel, stop accepting and let in-flight
//! responses finish for up to [`DRAIN_DEADLINE`].

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::front::{drive, report, Front};
use super::limits::{ConnLimits, Gate, Permit, Slot};
use super::send_timeout::SendTimeout;
use super::service::handle_reserve;
use super::state::App;

/// How long shutdown waits for in-flight responses (Kubernetes' default grace is 30 s).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(20);
/// The header read timeout on a reserve connection (30 s on a regular one), whose slots are few and for probes that ask at once.
const RESERVE_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The reserve connection builder: one request, short head.
fn reserve_builder() -> http1::Builder {
    let mut reserve = http1::Builder::new();
    reserve
        .timer(TokioTimer::new())
        .header_read_timeout(RESERVE_HEADER_READ_TIMEOUT)
        .keep_alive(false);
    reserve
}

/// Accept errors: EMFILE and friends back off (doubling up to a second) instead of spinning;
/// logged at most every few seconds.
#[derive(Default)]
struct AcceptBackoff {
    delay: Duration,
    failures: u64,
    last_log: Option<std::time::Instant>,
}

impl AcceptBackoff {
    async fn failed(&mut self, e: std::io::Error) {
        self.failures += 1;
        let now = std::time::Instant::now();
        if self
            .last_log
            .is_none_or(|t| now - t >= Duration::from_secs(5))
        {
            tracing::warn!(error = %e, failures = self.failures, "accept failed; backing off");
            self.last_log = Some(now);
            self.failures = 0;
        }
        self.delay = (self.delay * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::time::sleep(self.delay).await;
    }

    fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }
}

/// Serves one admitted connection: a regular one through the front loop (zero-copy NAR hits,
/// hyper for the rest), a reserve one by hyper alone.
async fn connection(front: Arc<Front>, reserve: http1::Builder, stream: TcpStream, permit: Permit) {
    let _ = stream.set_nodelay(true);
    if permit.slot() == Slot::Regular {
        front.serve(stream).await;
    } else {
        let io = TokioIo::new(SendTimeout::new(stream, front.send_timeout));
        let app = front.app.clone();
        let svc = service_fn(move |req| handle_reserve(app.clone(), req));
        let conn = reserve.serve_connection(io, svc);
        report(
            &front.app,
            drive(conn, &front.shutdown, std::future::pending()).await,
        );
    }
    drop(permit);
}

/// Serves connections from `listener` until `shutdown` is cancelled, then drains. Each
/// connection is admitted by the [`Gate`] of `limits` and its writes carry the send timeout.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    let reserve = reserve_builder();
    let gate = Gate::new(limits, app.metrics.clone());
    let front = Arc::new(Front::new(app, limits.send_timeout, shutdown.clone()));
    let tracker = TaskTracker::new();
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    backoff.failed(e).await;
                    continue;
                }
            },
        };
        backoff.succeeded();
        // Refused: dropping the stream closes it at once.
        let Ok(permit) = gate.admit(peer.ip()) else {
            continue;
        };
        tracker.spawn(connection(front.clone(), reserve.clone(), stream, permit));
    }
    drop(listener);
    tracker.close();
    tracing::info!("shutting down: draining in-flight responses");
    tokio::select! {
        _ = tracker.wait() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(DRAIN_DEADLINE) => tracing::warn!("drain deadline passed; closing"),
    }
}
