//! The upload routes: `PUT` of a NAR, a narinfo (and `.ls`/`log/`, read and not kept) and
//! `DELETE` of a narinfo, each behind the upload token (see `upload/`). Off without a token:
//! 405 with `Allow: GET, HEAD`, as before uploads existed.

use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::{self, Body};
use super::error::ServeError;
use super::routes::Target;
use super::state::App;
use crate::metrics::{Outcome, UploadOutcome};
use crate::peers::fleet::FLEET_HEADER;
use crate::upload::UploadError;

type Handled = Result<(Outcome, Response<Body>), ServeError>;

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    let v = req.headers().get(header::CONTENT_LENGTH)?;
    v.to_str().ok()?.parse().ok()
}

/// Handles a `PUT` or `DELETE` (`req` is consumed: its body is the upload).
pub async fn handle(app: &Arc<App>, target: Target, req: Request<Incoming>) -> Handled {
    let up = &app.uploader;
    if let Err(e) = up.authorize(req.headers()) {
        if !matches!(e, UploadError::Off) {
            up.count(e.outcome());
        }
        return refused(e);
    }
    let fleet = req.headers().contains_key(FLEET_HEADER);
    let length = content_length(&req);
    let delete = req.method() == Method::DELETE;
    let path = req.uri().path().to_owned();
    let body = req.into_body();
    let done = match target {
        Target::Nar { file_hash, ext } if !delete => up.put_nar(file_hash, ext, length, body).await,
        Target::NarInfo(h) if !delete => up.put_narinfo(h, fleet, body).await,
        Target::NarInfo(h) => match up.delete(h).await {
            Ok(true) => Ok(UploadOutcome::Deleted),
            Ok(false) => return Err(ServeError::NotFound),
            Err(e) => Err(e),
        },
        Target::Listing(_) | Target::Log(_) if !delete => up.put_ignored(body).await,
        Target::Invalid(why) => return Err(ServeError::BadRequest(why)),
        _ => return Err(ServeError::MethodNotAllowed),
    };
    match done {
        Ok(outcome) => {
            up.count(outcome);
            // The path was validated by the router (hashes only); a NAR's staging is debug.
            match outcome {
                UploadOutcome::Staged | UploadOutcome::Ignored => {
                    tracing::debug!(%path, outcome = outcome.as_str(), fleet, "upload")
                }
                _ => tracing::info!(%path, outcome = outcome.as_str(), fleet, "upload"),
            }
            Ok((Outcome::Stored, text(StatusCode::OK, "ok")))
        }
        Err(e) => {
            tracing::info!(%path, error = %e, "upload refused");
            up.count(e.outcome());
            refused(e)
        }
    }
}

fn refused(e: UploadError) -> Handled {
    if matches!(e, UploadError::Off) {
        return Err(ServeError::MethodNotAllowed);
    }
    let status = e.status();
    let mut resp = text(status, &e.to_string());
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"nixgate\""),
        );
    }
    let outcome = match status.is_server_error() {
        true => Outcome::Error,
        false => Outcome::BadRequest,
    };
    Ok((outcome, resp))
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let text = format!("{msg}\n");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_LENGTH, text.len())
        .body(body::small(text))
        .expect("static headers are valid")
}
