//! What a NAR source is: [`NarSource`], one place a NAR may come from, whose `open` returns
//! one shape ([`Opened`]: who sends, as a [`Remote`], and the byte stream, [`Body`]); and the
//! one loop that asks remotes in order, checks each answer's length against FileSize and
//! blames a liar ([`Fetcher::ask_in_order`]). The order of the sources is `policy.rs`.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::Method;
use url::Url;

use super::super::verify::VerifyError;
use super::super::{Broke, Fetcher, Remote, Verdict};
use super::plan::Plan;
use crate::torrent::TorrentBody;
use crate::upstream::{Answer, UpstreamBody};

/// One place a NAR may come from. Adding one: a file beside `peer.rs` with a unit struct
/// that implements this, and one line in `Fetcher::order` (`policy.rs`).
pub(super) trait NarSource: Sync {
    /// The remotes to ask, in order, each with the NAR's URL there. A source that is not an
    /// operator-configured upstream must fetch by hash (`Plan::rel` under its own base, never
    /// a narinfo's URL) and offer nothing unless `Plan::nar_hash_checked()`.
    fn remotes(&self, f: &Fetcher, plan: &Plan) -> Vec<(Remote, Url)>;

    /// Opens the NAR: by default from the first of [`NarSource::remotes`] that sends it
    /// ([`Fetcher::ask_in_order`]). Failures are noted in `verdict`.
    fn open<'a>(
        &'a self,
        f: &'a Fetcher,
        plan: &'a Plan,
        verdict: &'a mut Verdict,
    ) -> BoxFuture<'a, Option<Opened>> {
        Box::pin(async move {
            let remotes = self.remotes(f, plan);
            let (from, body) = f
                .ask_in_order(plan, remotes, Method::GET, 0, verdict)
                .await?;
            Some(Opened {
                from,
                body: Body::Http(body),
            })
        })
    }
}

/// A download's byte stream: an HTTP body or a torrent read back in order.
pub(super) enum Body {
    Http(UpstreamBody),
    Torrent(TorrentBody),
}

impl Body {
    pub async fn batch(&mut self, max: usize) -> Result<Option<Bytes>, Broke> {
        match self {
            Body::Http(b) => Ok(b.batch(max).await?),
            Body::Torrent(t) => Ok(t.batch(max).await?),
        }
    }
}

/// An opened source: who sends, and the stream.
pub(super) struct Opened {
    pub from: Remote,
    pub body: Body,
}

impl Fetcher {
    /// Asks `remotes` in order for the NAR from byte `offset` on; the first that answers with
    /// a body that fits the file. An answer whose length contradicts FileSize is refused
    /// (counted, its sender on probation: [`Remote::refused`]); a resume's (`offset` > 0) is
    /// only skipped. An owner's 404 ends the list (we ask the upstream ourselves: a NAR whose
    /// narinfo we hold should exist). Failures are noted in `verdict`.
    pub(super) async fn ask_in_order(
        &self,
        plan: &Plan,
        remotes: Vec<(Remote, Url)>,
        method: Method,
        offset: u64,
        verdict: &mut Verdict,
    ) -> Option<(Remote, UpstreamBody)> {
        for (remote, url) in remotes {
            let asked = remote.ask(&self.client, &self.metrics, method.clone(), &url, offset);
            let mut body = match asked.await {
                Ok(Answer::Found(body)) => body,
                Ok(Answer::NotFound) if remote.absent_is_final() => return None,
                Ok(Answer::NotFound) => continue,
                Err(e) => {
                    if e.is_skip() {
                        tracing::debug!(%remote, url = %url, "circuit open; trying the next");
                    } else {
                        tracing::info!(%remote, url = %url, offset, error = %e, "NAR source failed; trying the next");
                    }
                    verdict.unavailable(&remote, e);
                    continue;
                }
            };
            let start = body.range_start.unwrap_or(0);
            let total = body.content_length.map(|len| start + len);
            if let Some((got, want)) = total.zip(plan.size).filter(|(g, w)| g != w) {
                tracing::warn!(%remote, url = %url, got, want, "NAR length differs from FileSize");
                if offset == 0 {
                    remote.refused(&self.metrics);
                    verdict.failed(&remote, VerifyError::Length { got, want });
                }
                continue;
            }
            if let Some((got, max)) = total.zip(plan.max_size).filter(|(g, m)| g > m) {
                tracing::warn!(%remote, url = %url, got, max, "NAR length over what its NarSize allows");
                remote.refused(&self.metrics);
                verdict.failed(&remote, VerifyError::OverBound(max));
                continue;
            }
            if start > offset || body.skip(offset - start).await.is_err() {
                tracing::warn!(%remote, url = %url, offset, start, "answer to a resume does not fit the file; skipped");
                continue;
            }
            tracing::debug!(%remote, file_hash = %plan.fh, "NAR source opened");
            return Some((remote, body));
        }
        None
    }
}
