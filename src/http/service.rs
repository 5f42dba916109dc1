//! Request dispatch for hyper: a request's route, its handler, the outcome counted, and an
//! error turned into its response; and the short answer of a reserve connection.

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, Method, Request, Response};
use hyper::body::Incoming;

use super::body::{self, Body};
use super::error::ServeError;
use super::handlers;
use super::routes::{parse, Target};
use super::state::App;
use crate::fetch::Ask;
use crate::peers::fleet::FLEET_HEADER;

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
    // A pushing runner's existence checks carry the upload token (handlers::refusal).
    let uploader = || app.uploader.authorize(req.headers()).is_ok();
    match target {
        Target::CacheInfo => handlers::cache_info(app),
        Target::Health => handlers::health(),
        Target::Ready => handlers::ready(app).await,
        Target::Metrics => handlers::metrics(app).await,
        Target::Peers => handlers::peers(app),
        Target::Torrent(fh) => handlers::torrent(app, fh).await,
        Target::Digest => handlers::digest(app).await,
        Target::StatusPage => super::status::page(app).await,
        Target::StatusJson => super::status::json(app).await,
        Target::NarInfo(h) => {
            let ua = req.headers().get(header::USER_AGENT);
            let ua = ua.and_then(|v| v.to_str().ok());
            handlers::narinfo(app, h, ask, uploader(), ua).await
        }
        Target::Nar { file_hash, ext } if head => {
            handlers::nar_head(app, file_hash, ext, ask, uploader()).await
        }
        Target::Nar { file_hash, ext } => {
            handlers::nar(app, file_hash, ext, req.headers(), ask, uploader()).await
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
    let started = std::time::Instant::now();
    let target = parse(req.uri().path());
    let route = target.route();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let res = match method {
        Method::GET | Method::HEAD => dispatch(&app, target, &req).await,
        Method::PUT | Method::DELETE => super::upload::handle(&app, target, req).await,
        _ => Err(ServeError::MethodNotAllowed),
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
    app.metrics.request_took(route, outcome, started.elapsed());
    app.status.request(route, outcome, &path);
    if method == Method::HEAD {
        // Headers (Content-Length included) stay; the body never goes out.
        *resp.body_mut() = body::empty();
    }
    Ok(resp)
}

/// Answers a request on a reserve connection (beyond `--max-connections`): the cheap routes
/// that probes and operators need, and a quick 503 for everything else.
pub async fn handle_reserve(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = std::time::Instant::now();
    let target = parse(req.uri().path());
    if matches!(
        target,
        Target::Health | Target::Ready | Target::Metrics | Target::CacheInfo
    ) {
        return handle(app, req).await;
    }
    let unavailable = crate::metrics::Outcome::Unavailable;
    app.metrics
        .request_took(target.route(), unavailable, started.elapsed());
    let text = "over the connection limit, retry later\n";
    Ok(Response::builder()
        .status(http::StatusCode::SERVICE_UNAVAILABLE)
        .header(header::RETRY_AFTER, 1)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_LENGTH, text.len())
        .body(body::small(text))
        .expect("static headers are valid"))
}
