//! A source that breaks mid-way (a fleet member killed, an upstream connection reset, a
//! stalled peer) does not fail the download: it continues from another source at the byte
//! where the first stopped, so the clients already tailing it get a whole file. Upstreams
//! are asked for the rest with `Range: bytes=N-` (one that ignores the range sends the whole
//! file, and the first N bytes are dropped); when every upstream fails, the swarm continues,
//! but only when the NarHash check covers the whole file. The checks run over the whole
//! file, whatever sent each part.

use http::Method;

use super::super::{Broke, Fetcher, Remote, Verdict};
use super::copy::Feed;
use super::plan::Plan;
use super::source::{Body, NarSource, Opened};
use super::upstream::Upstreams;
use crate::upstream::{UpstreamBody, UpstreamError};

/// How many times one download may continue from another source.
const MAX_RESUMES: u32 = 3;

impl Fetcher {
    /// Continues `feed` at byte `written` from another source after its source failed with
    /// `error`; whether one took over.
    pub(super) async fn resume(
        &self,
        plan: &Plan,
        feed: &mut Feed,
        written: u64,
        nar_checked: bool,
        error: &Broke,
    ) -> bool {
        // nixgate's own file from an owner: another encoder's bytes would not continue it.
        if feed.resumes >= MAX_RESUMES || plan.served {
            return false;
        }
        feed.resumes += 1;
        let broken = feed.from.source().as_str();
        let next = match self.open_from(plan, written).await {
            Some((from, body)) => Opened {
                from,
                body: Body::Http(body),
            },
            None if nar_checked => match self.open_swarm(plan, written).await {
                Some(swarm) => swarm,
                None => return false,
            },
            None => return false,
        };
        let continued = next.from.source().as_str();
        tracing::warn!(file_hash = %plan.fh, offset = written, broken, error = %error, continued, "NAR source broke mid-way; continuing from another");
        self.metrics.resumed(next.from.source());
        feed.replace(next, written, &self.metrics);
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

    /// The first upstream that sends the NAR from byte `offset` on (`Range`), with a length
    /// that fits the file.
    async fn open_from(&self, plan: &Plan, offset: u64) -> Option<(Remote, UpstreamBody)> {
        let remotes = Upstreams.remotes(self, plan);
        let mut verdict = Verdict::default();
        self.ask_in_order(plan, remotes, Method::GET, offset, &mut verdict)
            .await
    }
}
