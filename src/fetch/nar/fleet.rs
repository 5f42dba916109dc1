//! The fleet source of a NAR: the member that owns it (see `peers::fleet`) fetches it from
//! the upstream once for the whole fleet; we stream its answer into our own download. The
//! owner is trusted for routing only: its bytes pass the same FileHash/FileSize checks as an
//! upstream's, plus the signed NarHash, and a member whose bytes do not verify is put on
//! probation (and so leaves the owner rotation) like any lying peer.

use http::Method;

use super::super::Fetcher;
use super::plan::Plan;
use super::source::{Body, BytesFrom, Opened};
use crate::metrics::Source;
use crate::upstream::Answer;

impl Fetcher {
    /// The owner's answer, trying the owners in rendezvous order; `None` when we own the NAR,
    /// this is a fleet request, or no owner could send it (then the upstream is asked). A down
    /// or slow owner costs at most the fleet first-byte bound before the next is tried.
    pub(super) async fn open_owner(&self, plan: &Plan) -> Option<Opened<'_>> {
        for owner in plan.owners.clone() {
            let Ok(url) = owner.base.join(&plan.rel()) else {
                continue;
            };
            let answer = self.client.fleet_request(&owner, Method::GET, &url).await;
            match answer {
                Ok(Answer::Found(body)) => {
                    if let (Some(got), Some(want)) = (body.content_length, plan.size) {
                        if got != want {
                            self.metrics.verification_failure(Source::Fleet);
                            owner.breaker.probation(crate::peers::PROBATION);
                            tracing::warn!(owner = %owner.base, got, want, "fleet NAR length differs from FileSize; member on probation");
                            continue;
                        }
                    }
                    tracing::debug!(owner = %owner.base, file_hash = %plan.fh, "NAR from the fleet owner");
                    return Some((BytesFrom::Fleet(owner), Body::Http(body)));
                }
                // The owner found nothing upstream; ask the upstream ourselves (a NAR whose
                // narinfo we hold should exist; this costs one request and trusts nobody).
                Ok(Answer::NotFound) => return None,
                Err(e) => {
                    tracing::info!(owner = %owner.base, file_hash = %plan.fh, error = %e, "fleet owner failed; trying the next")
                }
            }
        }
        self.open_successor(plan).await
    }

    /// We own the NAR: the member that owned it before us (it may have just joined the
    /// fleet, or come back) may hold it; asked only-if-cached, so it never fetches for us.
    async fn open_successor(&self, plan: &Plan) -> Option<Opened<'_>> {
        let member = self.peers.successor(&plan.owner_key)?;
        let url = member.base.join(&plan.rel()).ok()?;
        match self.client.peer_request(&member, Method::GET, &url).await {
            Ok(Answer::Found(body)) if body.content_length == plan.size || plan.size.is_none() => {
                tracing::debug!(member = %member.base, file_hash = %plan.fh, "NAR from the previous owner");
                Some((BytesFrom::Fleet(member), Body::Http(body)))
            }
            _ => None,
        }
    }
}
