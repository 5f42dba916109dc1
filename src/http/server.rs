//! The accept loop (HTTP/1.1 keep-alive, as Nix uses over plain http, behind the connection
//! limits and the send timeout), request dispatch, and graceful shutdown: on cancel, stop accepting and let in-flight responses finish for
//! up to [`DRAIN_DEADLINE`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::body::{self, Body};
use super::error::ServeError;
use super::front::{drive, report, Front};
use super::handlers;
use super::limits::{ConnLimits, Gate, Permit, Slot};
use super::routes::{parse, Target};
use super::send_timeout::SendTimeout;
use super::state::App;
use crate::fetch::Ask;
use crate::peers::fleet::FLEET_HEADER;

/// How long shutdown waits for in-flight responses (Kubernetes' default grace is 30 s).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(20);
/// Slow-loris guard: the request head must arrive within this.
pub(super) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The same on a reserve connection, whose slots are few and for probes that ask at once.
const RESERVE_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

fn only_if_cached(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("only-if-cached"))
}

async fn dispatch(
    app: &Arc<App>,
    target: Target,
    req: &Request<Incoming>,
) -> Result<(crate::metrics::Outcome, Response<Body>), ServeError> {
    let oic = only_if_cached(req);
    let ask = Ask {
        only_if_cached: oic,
        fleet: req.headers().contains_key(FLEET_HEADER),
    };
    if ask.fleet {
        app.metrics.fleet_served();
    }
    let head = req.method() == Method::HEAD;
    match target {
        Target::CacheInfo => handlers::cache_info(app),
        Target::Health => handlers::health(app),
        Target::Ready => handlers::ready(app).await,
        Target::Metrics => handlers::metrics(app),
        Target::Peers => handlers::peers(app),
        Target::Torrent(fh) => handlers::torrent(app, fh).await,
        Target::Digest => handlers::digest(app).await,
        Target::StatusPage => super::status::page(app),
        Target::StatusJson => super::status::json(app),
        Target::NarInfo(h) => handlers::narinfo(app, h, ask).await,
        Target::Nar { file_hash, ext } if head => {
            handlers::nar_head(app, file_hash, ext, ask).await
        }
        Target::Nar { file_hash, ext } => {
            handlers::nar(app, file_hash, ext, req.headers(), ask).await
        }
        Target::Listing(h) => {
            handlers::relayed(app, &format!("{h}.ls"), "application/json", oic).await
        }
        Target::Log(drv) => {
            handlers::relayed(app, &format!("log/{drv}"), "text/plain; charset=utf-8", oic).await
        }
        Target::Realisation(rel) => handlers::relayed(app, &rel, "application/json", oic).await,
        Target::Invalid(why) => Err(ServeError::BadRequest(why)),
        Target::NotFound => Err(ServeError::NotFound),
    }
}

/// Handles one request; never fails (errors become responses).
#[tracing::instrument(skip_all, fields(method = %req.method(), path = %req.uri().path()))]
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let target = parse(req.uri().path());
    let route = target.route();
    let res = if matches!(*req.method(), Method::GET | Method::HEAD) {
        dispatch(&app, target, &req).await
    } else {
        Err(ServeError::MethodNotAllowed)
    };
    let (outcome, mut resp) = match res {
        Ok(r) => r,
        Err(e) => {
            match &e {
                ServeError::Storage | ServeError::BadUpstreamData => {
                    tracing::error!(error = ?e, "request failed")
                }
                _ => tracing::debug!(error = ?e, "request refused"),
            }
            (e.outcome(), e.into_response(app.down_policy))
        }
    };
    app.metrics.request(route, outcome);
    app.status.request(route, outcome, req.uri().path());
    if req.method() == Method::HEAD {
        // Headers (Content-Length included) stay; the body never goes out.
        *resp.body_mut() = body::empty();
    }
    Ok(resp)
}

/// Answers a request on a reserve connection (beyond `--max-connections`): the cheap routes
/// that probes and operators need, and a quick 503 for everything else.
async fn handle_reserve(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let target = parse(req.uri().path());
    if matches!(
        target,
        Target::Health | Target::Ready | Target::Metrics | Target::CacheInfo
    ) {
        return handle(app, req).await;
    }
    app.metrics
        .request(target.route(), crate::metrics::Outcome::Unavailable);
    let text = "over the connection limit, retry later\n";
    Ok(Response::builder()
        .status(http::StatusCode::SERVICE_UNAVAILABLE)
        .header(header::RETRY_AFTER, 1)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_LENGTH, text.len())
        .body(body::small(text))
        .expect("static headers are valid"))
}

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

/// True when a connection ended because its client accepted no bytes (see [`SendTimeout`]).
pub(super) fn timed_out(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    false
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
