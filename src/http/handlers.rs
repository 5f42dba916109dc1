//! One handler per route. Each returns the response and the outcome for the metrics, or a
//! [`ServeError`] that `error.rs` turns into a status.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, Response, StatusCode};

use super::body::{self, parse_range, Body, Range};
use super::error::ServeError;
use super::state::App;
use crate::fetch::nar::NarSource;
use crate::fetch::{Ask, FetchError};
use crate::metrics::Outcome;
use crate::nix::hash::Sha256;
use crate::nix::store_path::StorePathHash;
use crate::store::Hit;

type Handled = Result<(Outcome, Response<Body>), ServeError>;

fn ok(ctype: &'static str) -> http::response::Builder {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, ctype)
}

fn hit_or_miss(hit: bool) -> Outcome {
    if hit {
        Outcome::Hit
    } else {
        Outcome::Miss
    }
}

fn buffer(app: &App, ctype: &'static str, b: Bytes, outcome: Outcome) -> Handled {
    let resp = ok(ctype)
        .header(header::CONTENT_LENGTH, b.len())
        .body(body::full(b, &app.metrics))
        .expect("valid headers");
    Ok((outcome, resp))
}

/// A response for operators or other appliances (health, metrics, the peer set, the digest):
/// not Nix content, so not counted in `nixgate_served_bytes_total` (a scrape is not egress
/// saved).
fn operator(ctype: &'static str, b: Bytes) -> Handled {
    let resp = ok(ctype)
        .header(header::CONTENT_LENGTH, b.len())
        .body(body::small(b))
        .expect("valid headers");
    Ok((Outcome::Hit, resp))
}

/// `/nix-cache-info`: always 200, or Nix refuses the cache.
/// `/nix-cache-info`, with this appliance's peer id and what it serves runners as, for fleet
/// membership probes.
pub fn cache_info(app: &App) -> Handled {
    let (outcome, mut resp) = buffer(
        app,
        "text/x-nix-cache-info",
        app.cache_info.clone(),
        Outcome::Hit,
    )?;
    if let Ok(id) = http::HeaderValue::from_str(app.peers.own_id()) {
        resp.headers_mut()
            .insert(crate::peers::fleet::ID_HEADER, id);
    }
    if let Some(served) = app.fetcher.serves() {
        let value = http::HeaderValue::from_static(served.field());
        resp.headers_mut()
            .insert(crate::peers::fleet::SERVES_HEADER, value);
    }
    Ok((outcome, resp))
}

/// `/healthz`: the process is alive.
pub fn health() -> Handled {
    operator("text/plain; charset=utf-8", Bytes::from_static(b"ok\n"))
}

/// `/readyz`: 503 with the reason while the cache cannot store (dir not writable, a full
/// disk, the cap taken by downloads under way, an unreadable shard). Misses are still served
/// (uncached) meanwhile; this tells an operator or a load balancer why. While the start-up
/// index scan runs it is 200 with a body that says so: cached entries are served (looked up
/// on disk), so a readiness probe should send traffic.
pub async fn ready(app: &Arc<App>) -> Handled {
    let store = app.store.clone();
    let readiness = tokio::task::spawn_blocking(move || store.readiness()).await;
    let reason = match readiness {
        Ok(Ok(text)) => return operator("text/plain; charset=utf-8", Bytes::from(text)),
        Ok(Err(not_ready)) => not_ready.to_string(),
        Err(e) => e.to_string(),
    };
    let text = format!("not ready: {reason}\n");
    let resp = Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_LENGTH, text.len())
        .body(body::small(text))
        .expect("valid headers");
    Ok((Outcome::Unavailable, resp))
}

/// `/metrics`: Prometheus text format.
pub async fn metrics(app: &Arc<App>) -> Handled {
    let mut text = app.metrics.render();
    text.push_str(&state_gauges(app).await.render());
    operator(
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(text),
    )
}

/// The state the `/metrics` gauges show: readiness (as `/readyz` decides it, on the blocking
/// pool), each upstream's circuit, the peers and fleet members, the cap.
async fn state_gauges(app: &Arc<App>) -> crate::metrics::state::StateGauges {
    let store = app.store.clone();
    let ready = tokio::task::spawn_blocking(move || store.readiness().is_ok()).await;
    let peers = app.peers.status();
    crate::metrics::state::StateGauges {
        ready: ready.unwrap_or(false),
        cache_cap: app.store.max_bytes(),
        circuits: (app.fetcher.upstreams.iter())
            .map(|u| {
                (
                    u.base.origin().ascii_serialization(),
                    u.breaker.state_name(),
                )
            })
            .collect(),
        object_store_circuit: (app.fetcher.bucket.as_ref()).map(|b| b.at.breaker.state_name()),
        peers: peers.len(),
        peers_skipped: peers.iter().filter(|p| p.state != "ok").count(),
        fleet_owners: peers.iter().filter(|p| p.owner).count(),
    }
}

/// `/_p2p/v1/peers`: the peer set, where each peer came from and whether it is skipped.
pub fn peers(app: &App) -> Handled {
    let body = serde_json::json!({ "peers": app.peers.status() });
    operator("application/json", Bytes::from(body.to_string()))
}

/// How long a computed digest is served before it is rebuilt.
const DIGEST_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// `/_p2p/v1/digest`: what this appliance holds, as a Bloom filter (see `peers::digest`).
pub async fn digest(app: &Arc<App>) -> Handled {
    let fresh = {
        let d = app.digest.lock().unwrap_or_else(|p| p.into_inner());
        d.as_ref()
            .filter(|(at, _)| at.elapsed() < DIGEST_TTL)
            .map(|(_, b)| b.clone())
    };
    let b = match fresh {
        Some(b) => b,
        None => {
            let store = app.store.clone();
            let b = tokio::task::spawn_blocking(move || Bytes::from(store.holdings().to_bytes()))
                .await
                .map_err(|_| ServeError::Storage)?;
            *app.digest.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((std::time::Instant::now(), b.clone()));
            b
        }
    };
    operator("application/octet-stream", b)
}

/// `/_p2p/v1/torrent/<FileHash>`: the `.torrent` of a NAR this appliance holds (it is seeded
/// from then on); 404 when the NAR is not here or BitTorrent is off. Never fetches anything.
pub async fn torrent(app: &Arc<App>, fh: Sha256) -> Handled {
    let Some(engine) = app.fetcher.torrent() else {
        return Err(ServeError::NotFound);
    };
    match engine.torrent_file(&fh).await {
        Ok(Some(b)) => {
            let resp = ok("application/x-bittorrent")
                .header(header::CONTENT_LENGTH, b.len())
                .header(crate::torrent::PORT_HEADER, engine.port())
                .body(body::full(b, &app.metrics))
                .expect("valid headers");
            Ok((Outcome::Hit, resp))
        }
        Ok(None) => Err(ServeError::NotFound),
        Err(e) => {
            tracing::warn!(file_hash = %fh, error = %e, "cannot make or seed the torrent");
            Err(ServeError::Storage)
        }
    }
}

/// The error for a failed fetch, as told to the client. `uploader`: the request carries the
/// upload token, as a pushing runner's existence checks do (HEAD/GET of the narinfo, and of
/// the NAR URL before uploading it). Nix aborts `nix copy --to` on a 5xx to these, so while
/// no upstream can be asked a pusher is told "not here" (404) and uploads. The fetcher keeps
/// no negative entry for an outage, so pulling runners still get 503 and the path once an
/// upstream answers; and `upload/accept.rs` still refuses an upload that needs an
/// upstream's word (503).
fn refusal(e: FetchError, ask: Ask, uploader: bool) -> ServeError {
    match e {
        FetchError::Unavailable { from, error }
            if uploader && !ask.fleet && !ask.only_if_cached =>
        {
            tracing::info!(%from, %error, "upstreams unavailable: an uploader's existence check is answered 404");
            ServeError::NotHeldForUploader
        }
        e => ServeError::from_fetch(e, ask.only_if_cached),
    }
}

/// `/<hash>.narinfo`; `uploader` as for [`refusal`]. A runner whose Nix decodes nixgate's
/// own files gets the narinfo naming them once they exist (`fetch/served.rs`), so the answer
/// varies with the User-Agent.
pub async fn narinfo(
    app: &Arc<App>,
    h: StorePathHash,
    ask: Ask,
    uploader: bool,
    user_agent: Option<&str>,
) -> Handled {
    let (b, hit) = app
        .fetcher
        .narinfo(h, ask)
        .await
        .map_err(|e| refusal(e, ask, uploader))?;
    let asked_by_runner = !ask.fleet && !ask.only_if_cached;
    let b = match asked_by_runner {
        true => app.fetcher.narinfo_for(h, b, user_agent),
        false => b,
    };
    let (outcome, mut resp) = buffer(app, "text/x-nix-narinfo", b, hit_or_miss(hit))?;
    resp.headers_mut()
        .insert(header::VARY, http::HeaderValue::from_static("User-Agent"));
    Ok((outcome, resp))
}

const NAR_TYPE: &str = "application/x-nix-nar";

/// HEAD `/nar/...`: no body, and no download just to answer it; `uploader` as for
/// [`refusal`].
pub async fn nar_head(
    app: &Arc<App>,
    fh: Sha256,
    ext: &'static str,
    ask: Ask,
    uploader: bool,
) -> Handled {
    let size = app
        .fetcher
        .nar_head(fh, ext, ask)
        .await
        .map_err(|e| refusal(e, ask, uploader))?;
    let mut b = ok(NAR_TYPE).header(header::ACCEPT_RANGES, "bytes");
    if let Some(size) = size {
        b = b.header(header::CONTENT_LENGTH, size);
    }
    Ok((Outcome::Hit, b.body(body::empty()).expect("valid headers")))
}

/// GET `/nar/<FileHash>.nar<ext>`; `uploader` as for [`refusal`].
pub async fn nar(
    app: &Arc<App>,
    fh: Sha256,
    ext: &'static str,
    headers: &HeaderMap,
    ask: Ask,
    uploader: bool,
) -> Handled {
    let (source, hit) = app
        .fetcher
        .nar(fh, ext, ask)
        .await
        .map_err(|e| refusal(e, ask, uploader))?;
    let m = app.metrics.clone();
    // `nixgate_served_nar_bytes_total` counts what runners got, not members' and peers' asks.
    let runner = !ask.fleet && !ask.only_if_cached;
    let resp = match source {
        NarSource::Cached(hit) => return cached_file(app, hit, headers, runner),
        NarSource::Download(d) => {
            let mut b = ok(NAR_TYPE);
            // Counted up front when its length is known; else (nixgate's own file as it is
            // made, chunked) as it goes.
            let mut counted_as = runner.then_some(ext);
            if let Some(size) = d.download.size {
                if runner {
                    m.transcode.served(ext, size);
                }
                b = b.header(header::CONTENT_LENGTH, size);
                counted_as = None;
            }
            b.body(body::download(d, m, counted_as))
        }
        NarSource::Passthrough { chunks, size } => {
            let mut b = ok(NAR_TYPE);
            let mut counted_as = runner.then_some(ext);
            if let Some(size) = size {
                if runner {
                    m.transcode.served(ext, size);
                }
                b = b.header(header::CONTENT_LENGTH, size);
                counted_as = None;
            }
            b.body(body::channel(chunks, m, counted_as))
        }
    };
    Ok((hit_or_miss(hit), resp.expect("valid headers")))
}

/// A hit: the whole file or one `Range` of it (counted as served to a runner when `runner`).
fn cached_file(app: &Arc<App>, hit: Hit, headers: &HeaderMap, runner: bool) -> Handled {
    let size = hit.len();
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let m = app.metrics.clone();
    let b = ok(NAR_TYPE).header(header::ACCEPT_RANGES, "bytes");
    match range {
        Range::Partial(start, end) if runner => m.transcode.served(hit.ext(), end - start),
        Range::Full if runner => m.transcode.served(hit.ext(), size),
        _ => {}
    }
    let resp = match range {
        Range::Full => b
            .header(header::CONTENT_LENGTH, size)
            .body(body::hit_range(hit, 0, size, m)),
        Range::Partial(start, end) => b
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_LENGTH, end - start)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            )
            .body(body::hit_range(hit, start, end, m)),
        Range::Unsatisfiable => return Err(ServeError::RangeNotSatisfiable(size)),
    };
    Ok((Outcome::Hit, resp.expect("valid headers")))
}

/// `.ls`, `log/`, `realisations/`: relayed from upstream, never stored (they carry no
/// signature nixgate could check). With only-if-cached, we never hold them: 504.
pub async fn relayed(
    app: &Arc<App>,
    rel: &str,
    ctype: &'static str,
    only_if_cached: bool,
) -> Handled {
    if only_if_cached {
        return Err(ServeError::NotCached);
    }
    let up = app
        .fetcher
        .uncached(rel)
        .await
        .map_err(|e| ServeError::from_fetch(e, false))?;
    let mut b = ok(ctype);
    if let Some(len) = up.content_length {
        b = b.header(header::CONTENT_LENGTH, len);
    }
    Ok((
        Outcome::Miss,
        b.body(body::relay(up, app.metrics.clone()))
            .expect("valid headers"),
    ))
}
