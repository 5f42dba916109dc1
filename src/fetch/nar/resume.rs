//! A source that breaks mid-way (a fleet member killed, an upstream connection reset, a
//! stalled peer) does not fail the download: it continues from another source at the byte
//! where the first stopped, so the clients already tailing it get a whole file. Upstreams
//! are asked for the rest with `Range: bytes=N-` (one that ignores the range sends the whole
//! file, and the first N bytes are dropped); when every upstream fails, the swarm continues,
//! but only when the NarHash check covers the whole file. The checks run over the whole
//! file, whatever sent each part.

use http::Method;

use super::super::Broke;
use super::super::Fetcher;
use super::copy::Feed;
use super::plan::Plan;
use super::source::{Body, BytesFrom};
use crate::upstream::{Answer, Upstream, UpstreamBody, UpstreamError};

/// How many times one download may continue from another source.
const MAX_RESUMES: u32 = 3;

impl Fetcher {
    /// Continues `feed` at byte `written` from another source after its source failed with
    /// `error`; whether one took over.
    pub(super) async fn resume<'a>(
        &'a self,
        plan: &Plan,
        feed: &mut Feed<'a>,
        written: u64,
        nar_checked: bool,
        error: &Broke,
    ) -> bool {
        if feed.resumes >= MAX_RESUMES {
            return false;
        }
        feed.resumes += 1;
        let broken = feed.from.source().as_str();
        let (from, body) = match self.open_from(plan, written).await {
            Some((up, body)) => (BytesFrom::Upstream(up), Body::Http(body)),
            None if nar_checked => {
                let Some(mut swarm) = self.open_torrent(plan).await else {
                    return false;
                };
                if swarm.body.skip_to(written).await.is_err() {
                    return false;
                }
                (BytesFrom::Torrent(swarm.holders), Body::Torrent(swarm.body))
            }
            None => return false,
        };
        tracing::warn!(file_hash = %plan.fh, offset = written, broken, error = %error, continued = from.source().as_str(), "NAR source broke mid-way; continuing from another");
        self.metrics.resumed(from.source());
        feed.replace(from, body, written, &self.metrics);
        true
    }

    /// The upstream body of a passthrough that broke at `offset`, continued from an upstream
    /// (passthroughs have no other source); `resumes` counts the continuations so far.
    pub(super) async fn reopen(
        &self,
        plan: &Plan,
        offset: u64,
        resumes: &mut u32,
        error: &UpstreamError,
    ) -> Option<UpstreamBody> {
        if *resumes >= MAX_RESUMES {
            return None;
        }
        *resumes += 1;
        let (_, body) = self.open_from(plan, offset).await?;
        tracing::warn!(file_hash = %plan.fh, offset, error = %error, "passthrough NAR broke mid-way; continuing from an upstream");
        self.metrics.resumed(crate::metrics::Source::Upstream);
        Some(body)
    }

    /// The first upstream that sends the NAR from byte `offset` on, with a plausible length.
    async fn open_from(&self, plan: &Plan, offset: u64) -> Option<(&Upstream, UpstreamBody)> {
        for (i, url) in &plan.candidates {
            let up = &self.upstreams[*i];
            let answer = self
                .client
                .request_from(up, Method::GET, url, offset, &self.metrics)
                .await;
            let mut body = match answer {
                Ok(Answer::Found(body)) => body,
                Ok(Answer::NotFound) => continue,
                Err(e) => {
                    tracing::info!(url = %url, offset, error = %e, "cannot resume the NAR from this upstream");
                    continue;
                }
            };
            let start = body.range_start.unwrap_or(0);
            let total = body.content_length.map(|len| start + len);
            if start > offset || plan.size.zip(total).is_some_and(|(want, got)| want != got) {
                tracing::warn!(url = %url, offset, start, "upstream's answer to a resume does not fit the file; skipped");
                continue;
            }
            if body.skip(offset - start).await.is_ok() {
                return Some((up, body));
            }
        }
        None
    }
}
