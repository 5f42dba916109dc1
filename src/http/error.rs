//! The one mapping from what went wrong to what the client sees. Every arm is explicit (no
//! wildcard), the client gets a status and a short phrase (never a path or an OS error),
//! and the choice of status follows how Nix reacts to it (`docs/PROTOCOL.md` §1.6).

use std::time::Duration;

use http::{header, Response, StatusCode};

use super::body::{self, Body};
use crate::fetch::FetchError;
use crate::metrics::Outcome;

/// Why a request was not answered with content.
#[derive(Debug)]
pub enum ServeError {
    /// Malformed path (400): never looked up.
    BadRequest(&'static str),
    /// Not a route of ours, or a real upstream 404 (Nix caches it client-side for an hour).
    NotFound,
    /// `Cache-Control: only-if-cached` and we do not hold it (504, RFC 9111 §5.2.1.7).
    NotCached,
    MethodNotAllowed,
    /// Every upstream is failing: 503 + Retry-After (Nix retries), or 404 if configured.
    UpstreamDown,
    /// Every upstream is failing, nothing is held, and the request carries the upload token:
    /// 404, so a pushing Nix uploads instead of aborting on a 5xx. Never remembered.
    NotHeldForUploader,
    /// The upstream's data did not verify before any byte was sent (502).
    BadUpstreamData,
    /// Local disk trouble (500, which Nix treats as transient).
    Storage,
    RangeNotSatisfiable(u64),
}

/// What `UpstreamDown` turns into.
#[derive(Debug, Clone, Copy)]
pub struct DownPolicy {
    pub status: u16,
    pub retry_after: Duration,
}

impl ServeError {
    /// The error for a failed fetch; `only_if_cached` turns "don't have it" into 504.
    pub fn from_fetch(e: FetchError, only_if_cached: bool) -> Self {
        match e {
            FetchError::NotFound if only_if_cached => ServeError::NotCached,
            FetchError::NotFound => ServeError::NotFound,
            FetchError::Unavailable { .. } => ServeError::UpstreamDown,
            FetchError::Verification(_) => ServeError::BadUpstreamData,
            FetchError::Storage(_) => ServeError::Storage,
        }
    }

    /// The metrics outcome.
    pub fn outcome(&self) -> Outcome {
        match self {
            ServeError::BadRequest(_)
            | ServeError::MethodNotAllowed
            | ServeError::RangeNotSatisfiable(_) => Outcome::BadRequest,
            ServeError::NotFound | ServeError::NotHeldForUploader => Outcome::NotFound,
            ServeError::NotCached => Outcome::NotCached,
            ServeError::UpstreamDown => Outcome::Unavailable,
            ServeError::BadUpstreamData | ServeError::Storage => Outcome::Error,
        }
    }

    /// The response.
    pub fn into_response(self, down: DownPolicy) -> Response<Body> {
        let (status, phrase) = match &self {
            ServeError::BadRequest(why) => (StatusCode::BAD_REQUEST, *why),
            ServeError::NotFound => (StatusCode::NOT_FOUND, "not found"),
            ServeError::NotCached => (StatusCode::GATEWAY_TIMEOUT, "not cached here"),
            ServeError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD"),
            ServeError::NotHeldForUploader => (
                StatusCode::NOT_FOUND,
                "not held here (upstreams unavailable)",
            ),
            ServeError::UpstreamDown if down.status == 404 => {
                (StatusCode::NOT_FOUND, "not found (upstream unavailable)")
            }
            ServeError::UpstreamDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream unavailable, retry later",
            ),
            ServeError::BadUpstreamData => {
                (StatusCode::BAD_GATEWAY, "upstream data failed verification")
            }
            ServeError::Storage => (StatusCode::INTERNAL_SERVER_ERROR, "cache storage error"),
            ServeError::RangeNotSatisfiable(_) => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable")
            }
        };
        let mut b = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
        match &self {
            ServeError::UpstreamDown if status == StatusCode::SERVICE_UNAVAILABLE => {
                b = b.header(header::RETRY_AFTER, down.retry_after.as_secs().max(1));
            }
            ServeError::MethodNotAllowed => b = b.header(header::ALLOW, "GET, HEAD"),
            ServeError::RangeNotSatisfiable(size) => {
                b = b.header(header::CONTENT_RANGE, format!("bytes */{size}"))
            }
            _ => {}
        }
        let text = format!("{phrase}\n");
        b.header(header::CONTENT_LENGTH, text.len())
            .body(body::small(text))
            .expect("static headers are valid")
    }
}
