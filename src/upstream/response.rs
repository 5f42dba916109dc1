//! What an upstream's response means: its class for the metrics (`classify`), and a body,
//! "not found" or an error for the caller (`answer`), with the breaker told either way.

use http::StatusCode;
use hyper::body::Incoming;

use super::{body, Answer, Asker, Upstream, UpstreamBody, UpstreamError};
use crate::metrics::UpstreamStatus;

/// The class of an answer; `authenticated`: credentials were sent with the request.
pub(super) fn classify(status: StatusCode, authenticated: bool) -> UpstreamStatus {
    match status.as_u16() {
        401 => UpstreamStatus::AuthFailed,
        403 if authenticated => UpstreamStatus::AuthFailed,
        200..=299 => UpstreamStatus::Ok,
        404 => UpstreamStatus::NotFound,
        400..=499 => UpstreamStatus::ClientError,
        500..=599 => UpstreamStatus::ServerError,
        _ => UpstreamStatus::Other,
    }
}

/// What a response (other than an auth failure) means: a body, "not found", or an error. A
/// redirect (3xx) is an error: it is never followed.
pub(super) fn answer(
    up: &Upstream,
    asker: Asker<'_>,
    resp: http::Response<Incoming>,
    progress: body::Progress,
    offset: u64,
) -> Result<Answer, UpstreamError> {
    let status = resp.status();
    if matches!(asker, Asker::Peer) && status == StatusCode::GATEWAY_TIMEOUT {
        up.breaker.success();
        return Ok(Answer::NotFound); // a peer's "not in my cache"
    }
    if status.is_server_error() {
        up.breaker.failure();
        return Err(UpstreamError::Status(status.as_u16()));
    }
    up.breaker.success();
    let mut range_start = None;
    match status.as_u16() {
        200 => {}
        206 if offset > 0 => {
            range_start =
                Some(body::content_range_start(resp.headers()).ok_or_else(|| {
                    UpstreamError::Body("206 without a usable Content-Range".into())
                })?);
        }
        // The bucket's 403 is wrong credentials or policy, worth an error and a metric.
        403 if matches!(asker, Asker::Bucket) => return Err(UpstreamError::Denied(403)),
        403 | 404 | 410 => return Ok(Answer::NotFound),
        s => return Err(UpstreamError::Status(s)),
    }
    let content_length = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let (parts, body) = resp.into_parts();
    Ok(Answer::Found(UpstreamBody {
        body,
        headers: parts.headers,
        progress,
        content_length,
        range_start,
        pending: None,
    }))
}
