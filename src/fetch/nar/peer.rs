//! A NAR from one peer over HTTP (only-if-cached), when every upstream and the swarm failed.

use std::sync::Arc;

use http::Method;

use super::super::Fetcher;
use super::plan::Plan;
use crate::metrics::Source;
use crate::upstream::{Answer, Upstream, UpstreamBody};

impl Fetcher {
    /// Every upstream failed: the first peer that holds the NAR (only-if-cached). Only when the
    /// signed NarHash is known and nixgate can decompress the file to check it.
    pub(super) async fn open_peer(&self, plan: &Plan) -> Option<(Arc<Upstream>, UpstreamBody)> {
        if !plan.nar_hash_checked() {
            return None;
        }
        let rel = plan.rel();
        for peer in self.peers.candidates(&plan.digest_key()) {
            let Ok(url) = peer.base.join(&rel) else {
                continue;
            };
            match self.client.peer_request(&peer, Method::GET, &url).await {
                Ok(Answer::Found(body)) => {
                    if let (Some(got), Some(want)) = (body.content_length, plan.size) {
                        if got != want {
                            self.metrics.verification_failure(Source::Peer);
                            peer.breaker.probation(crate::peers::PROBATION);
                            tracing::warn!(peer = %peer.base, got, want, "peer NAR length differs from FileSize; peer on probation");
                            continue;
                        }
                    }
                    tracing::info!(peer = %peer.base, file_hash = %plan.fh, "NAR from peer");
                    return Some((peer, body));
                }
                Ok(Answer::NotFound) => {}
                Err(e) => {
                    tracing::debug!(peer = %peer.base, error = %e, "peer NAR fetch failed")
                }
            }
        }
        None
    }
}
