//! Talking to upstream binary caches over HTTP(S): one pooled hyper client with rustls,
//! a timeout for each phase (connect, first byte, stall between body chunks), and a circuit
//! breaker per upstream. Errors say whether the upstream is *down* (try another source, answer
//! 503) or said *not found* (a real 404 that may be cached briefly).

pub mod body;
pub mod breaker;
pub mod egress;
pub mod heal;
pub mod netrc;
pub mod probe;
mod remote;
mod response;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use thiserror::Error;
use url::Url;

use crate::metrics::{Metrics, UpstreamStatus};
pub use body::UpstreamBody;
pub use egress::Egress;
use netrc::{Credentials, Netrc};
pub use remote::Upstream;
use response::{answer, classify};

/// Upstream timeouts, one per phase of a request (`--connect-timeout`, `--first-byte-timeout`,
/// `--stall-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP+TLS handshake.
    pub connect: Duration,
    /// Request sent to response headers.
    pub first_byte: Duration,
    /// Longest silence between body chunks.
    pub stall: Duration,
    /// Longest a whole narinfo (headers and body) may take from an upstream.
    pub narinfo: Duration,
    /// Bytes per second a body must average over each `stall` window.
    pub min_rate: u64,
}

/// Why an upstream request gave nothing usable.
#[derive(Debug, Clone, Error)]
pub enum UpstreamError {
    #[error("circuit open after repeated failures")]
    CircuitOpen,
    #[error("connect: {0}")]
    Connect(String),
    #[error("no response headers within {0:?}")]
    FirstByteTimeout(Duration),
    #[error("body stalled for {0:?}")]
    Stalled(Duration),
    #[error("body too slow: {got} bytes in {window:?}, at least {owed} due (--min-transfer-rate)")]
    TooSlow {
        got: u64,
        owed: u64,
        window: Duration,
    },
    #[error("not complete within {0:?} (--narinfo-timeout)")]
    Deadline(Duration),
    #[error("status {0}")]
    Status(u16),
    #[error("authentication failed (status {0}): check the --netrc-file entry for this host")]
    AuthFailed(u16),
    #[error("body: {0}")]
    Body(String),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("access denied (status {0}): check the object store's credentials and policy")]
    Denied(u16),
}

impl UpstreamError {
    /// The request was not sent: the circuit is open (its opening was logged once).
    pub fn is_skip(&self) -> bool {
        matches!(self, UpstreamError::CircuitOpen)
    }
}

/// A successful answer, or a clean "not here".
// Moved once per request and matched at once; boxing the body would add an allocation to
// every request for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    Found(UpstreamBody),
    NotFound,
}

/// The longest a peer may take to answer with headers (connect included).
pub const PEER_FIRST_BYTE: Duration = Duration::from_secs(2);
/// The longest a peer's body may go without a byte.
pub const PEER_STALL: Duration = Duration::from_secs(5);

/// How a request asks (the request flavour; `fetch::Remote::asker` picks it from the
/// remote's role): as an upstream (credentials for its exact origin, counted in its metrics),
/// as a peer appliance (only-if-cached, [`PEER_FIRST_BYTE`], not upstream traffic) or as a
/// fleet member asked as the owner of a key (marked as a fleet request, so it fetches but
/// never forwards; [`FLEET_FIRST_BYTE`]; not upstream traffic), or as the object store's
/// client (a presigned URL: no header of ours, through the egress, [`BUCKET_FIRST_BYTE`]; a
/// 403 is an error, not "not found").
#[derive(Clone, Copy)]
pub enum Asker<'a> {
    Upstream(&'a Metrics),
    Peer,
    Fleet,
    Bucket,
}

/// The longest the object store may take to answer with headers (connect included): it is
/// a shortcut, and a miss must not wait on it long when it hangs (a narinfo miss waits at
/// most the hedge, `fetch/narinfo/walk.rs`; the first failure opens the bucket's circuit,
/// `objstore/probe.rs`).
pub const BUCKET_FIRST_BYTE: Duration = Duration::from_secs(3);
/// The longest the object store's body may go without a byte.
pub const BUCKET_STALL: Duration = Duration::from_secs(3);

/// The request header that marks a fleet request: the owner answers it from its cache or
/// fetches it itself, and never forwards it to another member (so nothing loops).
pub const FLEET_HEADER: &str = "x-nixgate-fleet";

/// How long a fleet owner may take to answer with headers before the next owner (then the
/// upstream) is asked. The owner answers once its own upstream's first bytes arrive, so this
/// covers its upstream's latency too; a member that is alive answers well within it.
pub const FLEET_FIRST_BYTE: Duration = Duration::from_secs(5);

/// The request for `url`. `creds` (the netrc entry for `url`'s host) are sent only to an
/// upstream: never to a peer or a fleet member, whatever their host.
fn build_request(
    method: Method,
    url: &Url,
    asker: Asker<'_>,
    creds: Option<&Credentials>,
) -> Result<Request<Empty<Bytes>>, UpstreamError> {
    let mut req = Request::builder();
    match asker {
        Asker::Peer => req = req.header(http::header::CACHE_CONTROL, "only-if-cached"),
        Asker::Fleet => req = req.header(FLEET_HEADER, "1"),
        Asker::Bucket => {}
        Asker::Upstream(_) => {
            if let Some(c) = creds {
                req = req.header(http::header::AUTHORIZATION, c.header());
            }
        }
    }
    req.method(method)
        .uri(url.as_str())
        .header(
            http::header::USER_AGENT,
            concat!("nixgate/", env!("CARGO_PKG_VERSION")),
        )
        // The bytes must hash to FileHash exactly: no transparent decoding.
        .header(http::header::ACCEPT_ENCODING, "identity")
        .body(Empty::new())
        .map_err(|e| UpstreamError::Connect(e.to_string()))
}

type HttpsClient<C> = Client<hyper_rustls::HttpsConnector<C>, Empty<Bytes>>;

/// The shared upstream HTTP client.
///
/// It never follows redirects (hyper's client does not, and none is added): a 3xx is an
/// error like any other unexpected status, so credentials sent to an upstream can never be
/// carried to the host a redirect names. Clones share the connection pools.
#[derive(Clone)]
pub struct UpstreamClient {
    /// For upstreams: through the configured proxy, trusting the extra CAs (`egress.rs`).
    client: HttpsClient<egress::EgressConnector>,
    /// For peers and fleet members: never through a proxy.
    direct: HttpsClient<HttpConnector>,
    /// The proxy rules, for the credentials of a plain-HTTP proxy.
    proxies: Option<std::sync::Arc<hyper_util::client::proxy::matcher::Matcher>>,
    timeouts: Timeouts,
    /// Credentials per upstream host (`--netrc-file`).
    netrc: Netrc,
}

impl UpstreamClient {
    /// Builds the client (HTTP/1.1; https with the Mozilla roots compiled in, so the image
    /// needs no CA bundle, plus `egress`'s CAs); `netrc` gives upstreams their credentials;
    /// upstream requests go through `egress`'s proxy.
    pub fn new(timeouts: Timeouts, netrc: Netrc, egress: &Egress) -> Self {
        // Two rustls providers are linked (ring here, aws-lc-rs through librqbit's reqwest),
        // so rustls cannot pick one by itself: make ring the process default (for librqbit's
        // https trackers too). Installing twice is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeouts.connect));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(30)));
        let pooled = |b: &mut hyper_util::client::legacy::Builder| {
            b.pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .clone()
        };
        let builder = Client::builder(TokioExecutor::new());
        let via = egress::EgressConnector::new(http.clone(), egress.matcher());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(egress.tls_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(via);
        let direct = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(egress.tls_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        UpstreamClient {
            client: pooled(&mut builder.clone()).build(https),
            direct: pooled(&mut builder.clone()).build(direct),
            proxies: egress.matcher().map(std::sync::Arc::new),
            timeouts,
            netrc,
        }
    }

    /// Sends `method url` to `to` as `asker` says (see [`Asker`]), honouring its breaker,
    /// for the bytes from `offset` on (`Range: bytes=offset-` when it is not 0: resumes a
    /// download that broke mid-way; the server may answer 206, the body then starts at
    /// [`UpstreamBody::range_start`], or ignore the range with a 200, the whole file).
    ///
    /// 404, 410 and 403 are "not found", as Nix treats them for cache files, except that a
    /// 401, or a 403 to a request that carried credentials, is an auth failure (an error). A
    /// peer's 504 (only-if-cached) is "not found" too.
    pub async fn request(
        &self,
        to: &Upstream,
        asker: Asker<'_>,
        method: Method,
        url: &Url,
        offset: u64,
    ) -> Result<Answer, UpstreamError> {
        let r = self.send(to, method, url, asker, offset).await;
        // A fleet owner's failure is not shown as its last error: it may be its upstream's.
        if let (Err(e), Asker::Upstream(_) | Asker::Peer | Asker::Bucket) = (&r, asker) {
            to.note_error(e);
        }
        r
    }

    async fn send(
        &self,
        up: &Upstream,
        method: Method,
        url: &Url,
        asker: Asker<'_>,
        offset: u64,
    ) -> Result<Answer, UpstreamError> {
        let sent = std::time::Instant::now();
        let origin = up.base.origin().ascii_serialization();
        let count = |s, answered: bool| {
            if let Asker::Upstream(m) = asker {
                m.upstream(&origin, s, answered.then(|| sent.elapsed()))
            }
        };
        if !up.breaker.allow() {
            count(UpstreamStatus::CircuitOpen, false);
            return Err(UpstreamError::CircuitOpen);
        }
        // Credentials go to the exact origin of the upstream they were configured for (a
        // netrc `default` entry thus only ever reaches a configured upstream), never to a
        // URL elsewhere, whatever led to it.
        let creds = match asker {
            Asker::Upstream(_) if url.origin() == up.base.origin() => {
                url.host_str().and_then(|h| self.netrc.lookup(h))
            }
            Asker::Upstream(_) | Asker::Peer | Asker::Fleet | Asker::Bucket => None,
        };
        let mut req = build_request(method, url, asker, creds)?;
        if offset > 0 {
            let range = format!("bytes={offset}-");
            let range = http::HeaderValue::from_str(&range).expect("digits are a valid header");
            req.headers_mut().insert(http::header::RANGE, range);
        }
        let (first_byte, stall) = self.phase_timeouts(asker);
        let sending = self.sending(asker, url, req);
        let resp = match tokio::time::timeout(first_byte, sending).await {
            Err(_) => {
                up.breaker.failure();
                count(UpstreamStatus::Timeout, false);
                return Err(UpstreamError::FirstByteTimeout(first_byte));
            }
            Ok(Err(e)) => {
                up.breaker.failure();
                count(UpstreamStatus::ConnectError, false);
                let e: &dyn std::error::Error = &e;
                let detail = e
                    .source()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string());
                return Err(UpstreamError::Connect(detail));
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let class = classify(status, creds.is_some());
        count(class, true);
        if class == UpstreamStatus::AuthFailed {
            // The upstream answered: it is up, but will not serve us. Never log the header.
            up.breaker.success();
            tracing::warn!(
                upstream = %up,
                status = status.as_u16(),
                credentials = creds.is_some(),
                "upstream refused authentication; check --netrc-file"
            );
            return Err(UpstreamError::AuthFailed(status.as_u16()));
        }
        let progress = body::Progress::new(stall, self.timeouts.min_rate);
        answer(up, asker, resp, progress, offset)
    }

    /// Sends `req` with the client `asker` calls for: to an upstream through the configured
    /// proxy (with the proxy's credentials when it forwards plain HTTP), to a peer or fleet
    /// member directly.
    fn sending(
        &self,
        asker: Asker<'_>,
        url: &Url,
        mut req: Request<Empty<Bytes>>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        match asker {
            Asker::Bucket => self.client.request(req),
            Asker::Upstream(_) => {
                let m = self.proxies.as_ref();
                if let Some(auth) = m.and_then(|m| egress::proxy_auth(m, url)) {
                    let name = http::header::PROXY_AUTHORIZATION;
                    req.headers_mut().insert(name, auth);
                }
                self.client.request(req)
            }
            Asker::Peer | Asker::Fleet => self.direct.request(req),
        }
    }

    /// The upstream timeouts (`--connect-timeout`, `--narinfo-timeout`, …).
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Time to headers and longest body silence for a request by `asker`.
    fn phase_timeouts(&self, asker: Asker<'_>) -> (Duration, Duration) {
        match asker {
            Asker::Fleet => (FLEET_FIRST_BYTE, self.timeouts.stall),
            // A peer answers from its disk, on the LAN: one that hangs must not cost a miss
            // the upstream timeouts (25 s by default) while the upstream is down.
            Asker::Peer => (
                (self.timeouts.connect + self.timeouts.first_byte).min(PEER_FIRST_BYTE),
                self.timeouts.stall.min(PEER_STALL),
            ),
            Asker::Upstream(_) => (
                self.timeouts.connect + self.timeouts.first_byte,
                self.timeouts.stall,
            ),
            Asker::Bucket => (
                (self.timeouts.connect + self.timeouts.first_byte).min(BUCKET_FIRST_BYTE),
                self.timeouts.stall.min(BUCKET_STALL),
            ),
        }
    }
}

#[cfg(test)]
mod tests;
