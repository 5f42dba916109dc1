//! The upstreams as a NAR source: the plan's candidate URLs in order (the URL a narinfo from
//! that upstream recorded, on its own origin, then each upstream's standard location). With
//! `http-first` acceleration ([`Raced`]), an upstream whose first byte is late for a large
//! NAR a peer holds is raced by the swarm; whichever answers first is used (the other
//! request is dropped).

use futures_util::future::BoxFuture;
use http::Method;
use url::Url;

use super::super::{FetchError, Fetcher, Remote, Verdict};
use super::plan::Plan;
use super::source::{NarSource, Opened};
use super::ACCELERATE_AFTER;
use crate::upstream::UpstreamBody;

/// The configured upstreams, in order.
pub(super) struct Upstreams;

impl NarSource for Upstreams {
    fn remotes(&self, f: &Fetcher, plan: &Plan) -> Vec<(Remote, Url)> {
        let remote = |i: usize| Remote::Upstream(f.upstreams[i].clone());
        let urls = plan.candidates.iter();
        urls.map(|(i, url)| (remote(*i), url.clone())).collect()
    }
}

/// The upstreams, raced by the swarm once [`ACCELERATE_AFTER`] passed without an answer.
pub(super) struct Raced;

impl NarSource for Raced {
    fn remotes(&self, f: &Fetcher, plan: &Plan) -> Vec<(Remote, Url)> {
        Upstreams.remotes(f, plan)
    }

    fn open<'a>(
        &'a self,
        f: &'a Fetcher,
        plan: &'a Plan,
        verdict: &'a mut Verdict,
    ) -> BoxFuture<'a, Option<Opened>> {
        Box::pin(async move {
            let first = Upstreams.open(f, plan, verdict);
            tokio::pin!(first);
            tokio::select! {
                r = &mut first => return r,
                _ = tokio::time::sleep(ACCELERATE_AFTER) => {}
            }
            tracing::info!(file_hash = %plan.fh, "upstream first byte late: asking the swarm too");
            tokio::select! {
                r = &mut first => r,
                Some(swarm) = f.open_swarm(plan, 0) => Some(swarm),
            }
        })
    }
}

impl Fetcher {
    /// The first upstream that answers `method` for the NAR, for what only upstreams serve
    /// (passthroughs, HEAD); the upstreams' failure, else not found.
    pub(super) async fn open_upstream(
        &self,
        plan: &Plan,
        method: Method,
    ) -> Result<UpstreamBody, FetchError> {
        let mut verdict = Verdict::default();
        let remotes = Upstreams.remotes(self, plan);
        match self
            .ask_in_order(plan, remotes, method, 0, &mut verdict)
            .await
        {
            Some((_, body)) => Ok(body),
            None => Err(verdict.into_error()),
        }
    }
}
