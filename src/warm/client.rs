//! The HTTP side of `nixgate warm`: requests to the appliance — narinfos read, NARs read in
//! full and discarded (so that the appliance fetches and caches them), and the
//! `Cache-Control: only-if-cached` checks that prove what it holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use url::Url;

use crate::nix::narinfo::MAX_NARINFO_BYTES;

/// Time to the response headers: the appliance answers once its upstream's headers arrive.
const HEADERS: Duration = Duration::from_secs(60);
/// Longest silence in a body before the download is given up.
const STALL: Duration = Duration::from_secs(120);
/// How many 503s a request waits out before it is reported (about 25 s in all).
const RETRIES: u32 = 5;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Why a request to the appliance gave nothing usable (reported per path; `warm` fails).
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("{rel}: {error}")]
    Path { rel: String, error: url::ParseError },
    #[error("{0}")]
    Request(#[from] http::Error),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    /// The connection failed (the error and its causes).
    #[error("{0}")]
    Connect(String),
    #[error("{rel}: status {status}")]
    Status { rel: String, status: StatusCode },
    #[error("status {0}")]
    NarStatus(StatusCode),
    #[error("no /nix-cache-info")]
    NoCacheInfo,
    #[error("{rel}: {error}")]
    Read {
        rel: String,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}: not UTF-8")]
    NotUtf8(String),
    #[error("body stalled for {0:?}")]
    Stalled(Duration),
    /// The body broke (the error and its causes).
    #[error("body: {0}")]
    Body(String),
    #[error("malformed narinfo: {0}")]
    Narinfo(#[from] crate::nix::narinfo::NarInfoError),
}

/// A client of one appliance.
pub struct ApplianceClient {
    client: HttpsClient,
    base: Url,
}

impl ApplianceClient {
    /// A client for the appliance at `base` (http or https; a path ending in `/`, as
    /// `config::parse_appliance_url` makes it).
    pub fn new(base: Url) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        ApplianceClient { client, base }
    }

    /// The appliance's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    async fn send(
        &self,
        method: Method,
        rel: &str,
        only_if_cached: bool,
    ) -> Result<http::Response<Incoming>, WarmError> {
        let url = self
            .base
            .join(rel.trim_start_matches('/'))
            .map_err(|error| WarmError::Path {
                rel: rel.to_owned(),
                error,
            })?;
        let mut req = Request::builder().method(method).uri(url.as_str());
        if only_if_cached {
            req = req.header(http::header::CACHE_CONTROL, "only-if-cached");
        }
        let req = req.body(Empty::new())?;
        match tokio::time::timeout(HEADERS, self.client.request(req)).await {
            Err(_) => Err(WarmError::NoAnswer(HEADERS)),
            Ok(Err(e)) => Err(WarmError::Connect(error_chain(&e))),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// The appliance's `StoreDir` (from /nix-cache-info).
    pub async fn store_dir(&self) -> Result<String, WarmError> {
        let text = self
            .text("nix-cache-info", 64 << 10)
            .await?
            .ok_or(WarmError::NoCacheInfo)?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("StoreDir:"))
            .map_or("/nix/store", str::trim)
            .to_owned())
    }

    /// A narinfo's text (`None`: the appliance answered 404, nothing upstream has it).
    pub async fn narinfo(&self, hash: &str) -> Result<Option<String>, WarmError> {
        self.text(&format!("{hash}.narinfo"), MAX_NARINFO_BYTES)
            .await
    }

    /// The appliance's cache cap, from its status document (`None`: it did not say).
    pub async fn cache_cap(&self) -> Option<u64> {
        let text = self.text("_status/v1", 8 << 20).await.ok()??;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["cache"]["max_bytes"].as_u64()
    }

    /// `send`, waiting out a 503 (the appliance cannot reach its upstream right now: a circuit
    /// about to be probed, a restart): its `Retry-After` (at most 10 s) or 1, 2, 4, 8, 8 s,
    /// [`RETRIES`] times; then the last answer is the caller's.
    async fn send_patiently(
        &self,
        method: Method,
        rel: &str,
    ) -> Result<http::Response<Incoming>, WarmError> {
        let mut backoff = Duration::from_secs(1);
        for _ in 0..RETRIES {
            let resp = self.send(method.clone(), rel, false).await?;
            if resp.status() != StatusCode::SERVICE_UNAVAILABLE {
                return Ok(resp);
            }
            let wait = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse().ok())
                .map_or(backoff, |s: u64| Duration::from_secs(s.clamp(1, 10)));
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(8));
        }
        self.send(method, rel, false).await
    }

    async fn text(&self, rel: &str, max: usize) -> Result<Option<String>, WarmError> {
        let resp = self.send_patiently(Method::GET, rel).await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            status => {
                let rel = rel.to_owned();
                return Err(WarmError::Status { rel, status });
            }
        }
        let body = http_body_util::Limited::new(resp.into_body(), max)
            .collect()
            .await
            .map_err(|error| WarmError::Read {
                rel: rel.to_owned(),
                error,
            })?;
        String::from_utf8(body.to_bytes().to_vec())
            .map(Some)
            .map_err(|_| WarmError::NotUtf8(rel.to_owned()))
    }

    /// GETs the NAR at `rel`, reading it in full and dropping the bytes; each chunk's size is
    /// added to `progress`. Returns the bytes read.
    pub async fn nar(&self, rel: &str, progress: &AtomicU64) -> Result<u64, WarmError> {
        let resp = self.send_patiently(Method::GET, rel).await?;
        if resp.status() != StatusCode::OK {
            return Err(WarmError::NarStatus(resp.status()));
        }
        let mut body = resp.into_body();
        let mut total = 0;
        loop {
            let frame = tokio::time::timeout(STALL, body.frame())
                .await
                .map_err(|_| WarmError::Stalled(STALL))?;
            match frame {
                None => return Ok(total),
                Some(Err(e)) => return Err(WarmError::Body(error_chain(&e))),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        total += data.len() as u64;
                        progress.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Whether the appliance holds `rel` now, asked with `Cache-Control: only-if-cached`
    /// (it answers 504 when it does not, and never fetches): a GET for a narinfo, a HEAD for
    /// a NAR (no body is sent).
    pub async fn cached(&self, method: Method, rel: &str) -> Result<bool, WarmError> {
        let resp = self.send(method, rel, true).await?;
        let status = resp.status();
        // Drain the (small) body so the connection is reused.
        let _ = resp.into_body().collect().await;
        Ok(status == StatusCode::OK)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
