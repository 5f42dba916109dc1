//! The bucket: SigV4 signing (`rusty-s3`: sign-only, no I/O of its own) and the requests
//! that carry a body (PUTs, multipart), sent by our own hyper client over the same
//! egress (proxy, `--ca-file`) as upstreams. Reads do not come through here: they are
//! `fetch::Remote::Bucket` asks through the one `UpstreamClient` (timeouts per phase, its
//! breaker), with a URL this module presigns.
//!
//! Every request is a presigned URL (the signature is in the query, valid for [`VALID_FOR`]):
//! such URLs are bearer credentials, so they are only ever displayed through
//! `redact::Redacted` (`?***`). Bodies stream from the local file, never held in memory.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rusty_s3::S3Action;
use thiserror::Error;
use url::Url;

use super::keys::Keys;
use super::url::ObjectStoreUrl;
use crate::metrics::ObjectStoreError;
use crate::upstream::{egress, Egress, Upstream};

/// How long a presigned URL stays valid: a long NAR download or its resume must fit.
pub const VALID_FOR: Duration = Duration::from_secs(3600);

/// Why a request to the bucket did not succeed.
#[derive(Debug, Error)]
pub enum ObjError {
    #[error("circuit open after repeated failures")]
    CircuitOpen,
    #[error("connect: {0}")]
    Connect(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("status {0}")]
    Status(u16),
    #[error("access denied (status {0}): check the object store's credentials and policy")]
    Denied(u16),
    #[error("response: {0}")]
    Response(String),
    #[error("local file: {0}")]
    Local(#[from] std::io::Error),
    #[error("bucket: {0}")]
    Setup(#[from] rusty_s3::BucketError),
}

impl ObjError {
    /// Whether trying again may help: not when the store refused us (403/401) or our own
    /// file failed.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            ObjError::Denied(_) | ObjError::Local(_) | ObjError::Setup(_)
        )
    }

    /// Its label in `nixgate_object_store_errors_total{kind}` (`None`: not an error, a skip).
    pub fn kind(&self) -> Option<ObjectStoreError> {
        Some(match self {
            ObjError::CircuitOpen => return None,
            ObjError::Connect(_) => ObjectStoreError::Connect,
            ObjError::Timeout(_) => ObjectStoreError::Timeout,
            ObjError::Status(_) | ObjError::Response(_) => ObjectStoreError::Server,
            ObjError::Denied(_) => ObjectStoreError::Denied,
            ObjError::Local(_) => ObjectStoreError::Local,
            ObjError::Setup(_) => ObjectStoreError::Other,
        })
    }
}

/// A request body: a file's bytes streamed, or a small buffer.
pub type Body = BoxBody<Bytes, std::io::Error>;

type Sender = Client<hyper_rustls::HttpsConnector<egress::EgressConnector>, Body>;

/// The object store: where it is, how to sign for it, and its breaker.
pub struct Bucket {
    /// The prefix's URL (ending in `/`) and the breaker every request honours.
    pub at: Arc<Upstream>,
    s3: rusty_s3::Bucket,
    /// `None`: anonymous (unsigned) requests.
    creds: Option<rusty_s3::Credentials>,
    pub keys: Keys,
    sender: Sender,
    connect: Duration,
    /// Bytes per multipart part (`part-size`).
    pub(super) part_size: u64,
    /// Keys whose object failed a check lately: not read again (the next source is asked),
    /// and overwritten by the next write-behind of the path.
    refused: moka::sync::Cache<String, ()>,
    /// `nix-cache-info` is known to be there (written, or found).
    pub(super) cache_info: std::sync::atomic::AtomicBool,
    /// A narinfo read outlasted the hedge (`fetch/narinfo/walk.rs`) and the bucket has not
    /// answered since: reads skip it, so a bucket that hangs costs one hedge, not a NAR read
    /// or another hedge. It ends by itself: the overdue read answers (cleared) or fails
    /// within its deadline (the circuit opens; the prober's answer clears it).
    lagging: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("at", &self.at.label())
            .finish()
    }
}

impl Bucket {
    /// The bucket of `url`, signing with `creds`; requests through `egress`.
    pub fn new(
        url: &ObjectStoreUrl,
        creds: Option<rusty_s3::Credentials>,
        egress: &Egress,
        connect: Duration,
    ) -> Result<Self, ObjError> {
        let s3 = url.signer()?;
        let keys = Keys::new(&url.prefix);
        let base = s3.object_url(&keys.under(""));
        Ok(Bucket {
            at: Arc::new(
                Upstream::new(base)
                    .probed_in_background(super::probe::FAILURES, super::probe::OPEN_FOR),
            ),
            s3,
            creds,
            keys,
            sender: sender(egress, connect),
            connect,
            part_size: url.part_size,
            refused: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            cache_info: Default::default(),
            lagging: Default::default(),
        })
    }

    /// The key of `url`, a URL under the prefix's URL ([`Bucket::at`]), if it is one.
    pub fn key_of(&self, url: &Url) -> Option<String> {
        let base = &self.at.base;
        let same = url.origin() == base.origin();
        let rel = url.path().strip_prefix(base.path()).filter(|_| same)?;
        Some(self.keys.under(rel))
    }

    /// The object at `key` failed a check: skipped by reads, overwritten by writes.
    pub fn refuse(&self, key: String) {
        self.refused.insert(key, ());
    }

    /// Whether the object at `key` failed a check lately.
    pub fn is_refused(&self, key: &str) -> bool {
        self.refused.contains_key(key)
    }

    /// A read outlasted the hedge: reads skip the bucket until it answers again.
    pub fn lagged(&self) {
        self.lagging
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The bucket answered a read or the prober: reads go to it again.
    pub fn answered(&self) {
        self.lagging
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a read outlasted the hedge and the bucket has not answered since.
    pub fn is_overdue(&self) -> bool {
        self.lagging.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether reads skip it: a read is overdue, or its circuit is not closed.
    pub fn is_lagging(&self) -> bool {
        self.is_overdue() || self.at.breaker.is_open()
    }

    /// The object at `key` was written again.
    pub fn rewritten(&self, key: &str) {
        self.refused.invalidate(key);
    }

    /// A presigned URL for `method` on `key` (GET, HEAD or PUT); unsigned when anonymous.
    pub fn presign(&self, method: &Method, key: &str) -> Url {
        let creds = self.creds.as_ref();
        match *method {
            Method::HEAD => self.s3.head_object(creds, key).sign(VALID_FOR),
            Method::PUT => self.s3.put_object(creds, key).sign(VALID_FOR),
            _ => self.s3.get_object(creds, key).sign(VALID_FOR),
        }
    }

    pub(super) fn s3(&self) -> (&rusty_s3::Bucket, Option<&rusty_s3::Credentials>) {
        (&self.s3, self.creds.as_ref())
    }

    /// Whether `key` exists (HEAD: 200 yes, 404 no).
    pub async fn exists(&self, key: &str) -> Result<bool, ObjError> {
        let url = self.presign(&Method::HEAD, key);
        let resp = self.send(Method::HEAD, &url, empty(), None, 0).await?;
        Ok(resp.status() == StatusCode::OK)
    }

    /// Deletes `key` (gone already is done). Only for an upload removed with `DELETE`: the
    /// appliance never deletes anything else (retention is the bucket's lifecycle rule).
    pub async fn delete(&self, key: &str) -> Result<(), ObjError> {
        let url = self
            .s3
            .delete_object(self.creds.as_ref(), key)
            .sign(VALID_FOR);
        self.send(Method::DELETE, &url, empty(), None, 0).await?;
        Ok(())
    }

    /// PUTs `body` (`len` bytes) at `key`.
    pub async fn put(&self, key: &str, body: Body, len: u64, ty: &str) -> Result<(), ObjError> {
        let url = self.presign(&Method::PUT, key);
        let resp = self.send(Method::PUT, &url, body, Some(ty), len).await?;
        ok(resp.status())
    }

    /// Sends one request with a `Content-Length` of `len` (0: none for HEAD/GET), within a
    /// deadline that grows with the body (1 MiB/s at least); the breaker is told the outcome.
    /// A 404 is an answer (`exists`); other 4xx/5xx are errors.
    pub(super) async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Body,
        ty: Option<&str>,
        len: u64,
    ) -> Result<http::Response<hyper::body::Incoming>, ObjError> {
        if !self.at.breaker.allow() {
            return Err(ObjError::CircuitOpen);
        }
        let mut req = Request::builder().method(method.clone()).uri(url.as_str());
        if method == Method::PUT || method == Method::POST {
            req = req.header(http::header::CONTENT_LENGTH, len);
        }
        if let Some(ty) = ty {
            req = req.header(http::header::CONTENT_TYPE, ty);
        }
        let req = req
            .body(body)
            .map_err(|e| ObjError::Connect(e.to_string()))?;
        let deadline = self.connect + Duration::from_secs(30 + len / (1 << 20));
        let resp = match tokio::time::timeout(deadline, self.sender.request(req)).await {
            Err(_) => Err(ObjError::Timeout(deadline)),
            Ok(Err(e)) => Err(ObjError::Connect(connect_detail(&e))),
            Ok(Ok(r)) if r.status().is_server_error() => Err(ObjError::Status(r.status().into())),
            Ok(Ok(r)) => Ok(r),
        };
        match &resp {
            Err(_) => self.at.breaker.failure(),
            Ok(_) => self.at.breaker.success(),
        }
        let resp = resp?;
        match resp.status().as_u16() {
            401 | 403 => Err(ObjError::Denied(resp.status().as_u16())),
            200..=299 | 404 => Ok(resp),
            s => Err(ObjError::Status(s)),
        }
    }
}

/// An empty body.
pub fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// `len` bytes of the hit from `offset` on, read by `pread` in 256 KiB chunks (the hit's
/// file shares no position with its other readers).
pub fn hit_body(hit: crate::store::Hit, offset: u64, len: u64) -> Body {
    const CHUNK: u64 = 256 << 10;
    let end = offset + len;
    let chunks = futures_util::stream::try_unfold(offset, move |pos| {
        let hit = hit.clone();
        async move {
            if pos >= end {
                return Ok(None);
            }
            let got = hit.read(pos, CHUNK.min(end - pos) as usize).await?;
            let next = pos + got.len() as u64;
            Ok(Some((hyper::body::Frame::data(got), next)))
        }
    });
    BodyExt::boxed(StreamBody::new(chunks))
}

/// A 2xx, else the status as an error.
pub(super) fn ok(status: StatusCode) -> Result<(), ObjError> {
    match status.is_success() {
        true => Ok(()),
        false => Err(ObjError::Status(status.as_u16())),
    }
}

fn connect_detail(e: &hyper_util::client::legacy::Error) -> String {
    let e: &dyn std::error::Error = e;
    e.source().map_or_else(|| e.to_string(), |s| s.to_string())
}

/// The pooled client for requests with bodies, through the upstreams' egress.
fn sender(egress: &Egress, connect: Duration) -> Sender {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect));
    http.set_nodelay(true);
    let via = egress::EgressConnector::new(http, egress.matcher());
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(egress.tls_config())
        .https_or_http()
        .enable_http1()
        .wrap_connector(via);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(creds: Option<rusty_s3::Credentials>) -> Bucket {
        let url = "s3://nix-cache/ci?endpoint=http://127.0.0.1:8333"
            .parse()
            .unwrap();
        let egress = Egress::default();
        Bucket::new(&url, creds, &egress, Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn keys_come_back_from_urls_under_the_prefix_only() {
        let b = bucket(None);
        assert_eq!(b.at.base.as_str(), "http://127.0.0.1:8333/nix-cache/ci/");
        let url = b.at.base.join("nar/abc.nar.xz").unwrap();
        assert_eq!(b.key_of(&url).as_deref(), Some("ci/nar/abc.nar.xz"));
        let elsewhere = Url::parse("http://127.0.0.1:9/nix-cache/ci/x.narinfo").unwrap();
        assert_eq!(b.key_of(&elsewhere), None);
        let outside = Url::parse("http://127.0.0.1:8333/nix-cache/other/x").unwrap();
        assert_eq!(b.key_of(&outside), None);
    }

    #[test]
    fn presigned_urls_carry_the_signature_and_display_without_it() {
        let creds = rusty_s3::Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI");
        let b = bucket(Some(creds));
        let url = b.presign(&Method::GET, "ci/x.narinfo");
        assert_eq!(url.path(), "/nix-cache/ci/x.narinfo");
        assert!(url.query().unwrap().contains("X-Amz-Signature="));
        let shown = crate::redact::redact(&url);
        assert_eq!(shown, "http://127.0.0.1:8333/nix-cache/ci/x.narinfo?***");
        assert!(!format!("{b:?}").contains("wJalr"));
        // Anonymous: no signature at all.
        let anon = bucket(None).presign(&Method::HEAD, "ci/x.narinfo");
        assert!(anon.query().is_none_or(|q| !q.contains("Signature")));
    }
}
