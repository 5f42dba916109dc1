//! Fleet replication of uploads: an upload a runner pushed to this member is copied (NAR,
//! then narinfo, as Nix does) to the key's top rendezvous owners, so at least two members
//! hold it (this one and the owner, or the two owners) and every member finds it by asking
//! the owners (`fetch::narinfo`). The copies carry the fleet header (never copied on) and
//! this member's upload token; the receiving member checks everything again and takes them
//! only with a trusted signature (a fleet member is not trusted for content). A failed copy
//! is logged: the upload itself stands. The NAR is sent from the held upload's hit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::{UploadToken, Uploader};
use crate::nix::hash::Sha256;
use crate::nix::store_path::StorePathHash;
use crate::peers::fleet::FLEET_HEADER;
use crate::store::Hit;
use crate::upstream::Upstream;

/// How many members should hold an upload: this one's copy does not count unless it ranks.
pub const REPLICAS: usize = 2;
/// Longest a connect to a member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a copy to one member may take (copies run at once, and the runner's PUT waits
/// on them without a byte: Nix gives up on a transfer silent for 300 s).
const COPY_TIMEOUT: Duration = Duration::from_secs(120);

type ReqBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Why a copy to a member failed (logged: the upload itself stands).
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error("no upload token")]
    NoToken,
    #[error("the NAR is gone")]
    Gone,
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Url(#[from] url::ParseError),
    #[error("{0}")]
    Read(#[from] std::io::Error),
    #[error("{0}")]
    Request(#[from] http::Error),
    #[error("{0}")]
    Send(#[from] hyper_util::client::legacy::Error),
    #[error("answered {0}")]
    Status(http::StatusCode),
}

/// The HTTP client copies go out with, and the token they carry.
pub(super) struct Replicator {
    client: Client<HttpConnector, ReqBody>,
    token: Option<UploadToken>,
}

impl Replicator {
    pub fn new(token: Option<UploadToken>) -> Self {
        Replicator {
            client: Client::builder(TokioExecutor::new()).build(connector()),
            token,
        }
    }

    async fn put(&self, url: url::Url, body: ReqBody) -> Result<(), CopyError> {
        let token = self.token.as_ref().ok_or(CopyError::NoToken)?;
        let req = hyper::Request::put(url.as_str())
            .header(FLEET_HEADER, "1")
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.expose()),
            )
            .body(body)?;
        let resp = self.client.request(req).await?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(CopyError::Status(status))
        }
    }
}

/// Plain HTTP to members, giving up on a connect after a few seconds (a member that is gone
/// must not hold the runner's upload for the OS's connect timeout).
fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(CONNECT_TIMEOUT));
    c.set_nodelay(true);
    c
}

/// The held NAR as a request body, read from the open file.
fn hit_body(hit: Hit) -> ReqBody {
    let chunks = futures_util::stream::try_unfold(0u64, move |pos| {
        let hit = hit.clone();
        async move {
            if pos >= hit.len() {
                return Ok(None);
            }
            let len = (hit.len() - pos).min(1 << 16) as usize;
            let b = hit.read(pos, len).await?;
            let next = pos + b.len() as u64;
            Ok(Some((Frame::data(b), next)))
        }
    });
    BodyExt::boxed_unsync(StreamBody::new(chunks.boxed()))
}

impl Uploader {
    /// Copies the held upload of `h` (narinfo `text`, NAR `fh`/`ext`) to the members among
    /// the key's top [`REPLICAS`] owners; how many took it.
    pub(super) async fn replicate(
        &self,
        h: StorePathHash,
        fh: Sha256,
        ext: &str,
        text: Bytes,
    ) -> usize {
        let targets = self.peers.replicas(&h.to_string(), REPLICAS);
        // All at once: the runner's PUT waits on the slowest copy, not on their sum.
        let copies = targets.iter().map(|member| async {
            let copy = self.copy_to(member, h, fh, ext, text.clone());
            match tokio::time::timeout(COPY_TIMEOUT, copy).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::warn!(member = %member.label(), hash = %h, error = %e, "could not replicate an upload");
                    false
                }
                Err(_) => {
                    tracing::warn!(member = %member.label(), hash = %h, "replicating an upload timed out");
                    member.breaker.failure();
                    false
                }
            }
        });
        let done = futures_util::future::join_all(copies).await;
        done.into_iter().filter(|ok| *ok).count()
    }

    async fn copy_to(
        &self,
        member: &Arc<Upstream>,
        h: StorePathHash,
        fh: Sha256,
        ext: &str,
        text: Bytes,
    ) -> Result<(), CopyError> {
        let hit = self
            .store
            .uploads()
            .nar(&fh, ext)
            .await?
            .ok_or(CopyError::Gone)?;
        let nar = member
            .base
            .join(&format!("nar/{}.nar{ext}", fh.to_nix32()))?;
        let body = hit_body(hit);
        self.replicas.put(nar, body).await?;
        let narinfo = member.base.join(&format!("{h}.narinfo"))?;
        let body = Full::new(text)
            .map_err(|never| match never {})
            .boxed_unsync();
        self.replicas.put(narinfo, body).await
    }
}
