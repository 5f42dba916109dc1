//! A one-shot plain-HTTP probe: GET a path, expect 2xx before a deadline. Used by
//! `nixgate health`, by the mDNS peer liveness check and by `nixgate discover`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use thiserror::Error;
use url::Url;

use crate::redact::redact_text;

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("{0} is not a valid request URL")]
    Url(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Connect(String),
    #[error("answered {0}")]
    Status(http::StatusCode),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
}

/// GETs `path` under `base`; returns the time to the response headers.
pub async fn get_ok(base: &Url, path: &str, deadline: Duration) -> Result<Duration, ProbeError> {
    get(base, path, deadline).await.map(|(took, _)| took)
}

/// GETs `path` under `base` and reads the body (at most `max` bytes) before `deadline`.
pub async fn get_bytes(
    base: &Url,
    path: &str,
    deadline: Duration,
    max: usize,
) -> Result<Bytes, ProbeError> {
    use http_body_util::{BodyExt, Limited};
    tokio::time::timeout(deadline, async {
        let (_, resp) = get(base, path, deadline).await?;
        Limited::new(resp.into_body(), max)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(
                |e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
                    Some(_) => ProbeError::TooLarge(max),
                    None => ProbeError::Connect(format!("reading the body: {e}")),
                },
            )
    })
    .await
    .map_err(|_| ProbeError::Timeout(deadline))?
}

/// GETs `path` under `base` and returns the values of response headers `names`, in order
/// (`None`: absent or not text).
pub async fn get_headers(
    base: &Url,
    path: &str,
    deadline: Duration,
    names: &[&str],
) -> Result<Vec<Option<String>>, ProbeError> {
    let (_, resp) = get(base, path, deadline).await?;
    let value = |name: &&str| {
        let v = resp.headers().get(*name)?;
        v.to_str().ok().map(str::to_owned)
    };
    Ok(names.iter().map(value).collect())
}

async fn get(
    base: &Url,
    path: &str,
    deadline: Duration,
) -> Result<(Duration, http::Response<hyper::body::Incoming>), ProbeError> {
    let url = base
        .join(path.trim_start_matches('/'))
        .map_err(|_| ProbeError::Url(redact_text(&format!("{base}{path}"))))?;
    let uri: http::Uri = url
        .as_str()
        .parse()
        .map_err(|_| ProbeError::Url(crate::redact::redact(&url)))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let start = Instant::now();
    let resp = tokio::time::timeout(deadline, client.get(uri))
        .await
        .map_err(|_| ProbeError::Timeout(deadline))?
        .map_err(|e| ProbeError::Connect(error_chain(&e)))?;
    let took = start.elapsed();
    if resp.status().is_success() {
        Ok((took, resp))
    } else {
        Err(ProbeError::Status(resp.status()))
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
