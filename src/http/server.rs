//! The accept loop (HTTP/1.1 keep-alive, as Nix uses over plain http), request dispatch,
//! and graceful shutdown: on cancel, stop accepting and let in-flight responses finish for
//! up to [`DRAIN_DEADLINE`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::body::{self, Body};
use super::error::ServeError;
use super::handlers;
use super::routes::{parse, Target};
use super::state::App;
use crate::fetch::Ask;
use crate::peers::fleet::FLEET_HEADER;

/// How long shutdown waits for in-flight responses (Kubernetes' default grace is 30 s).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(20);
/// Slow-loris guard: the request head must arrive within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Serves connections from `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: CancellationToken) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let svc = service_fn(move |req| handle(app.clone(), req));
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight responses");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(DRAIN_DEADLINE) => tracing::warn!("drain deadline passed; closing"),
    }
}
