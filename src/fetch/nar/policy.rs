//! The source policy for a NAR's bytes, as data: [`Fetcher::order`] is the list of
//! [`NarSource`]s a miss asks, best first, and [`Fetcher::open_source`] walks it.
//!
//! The order: the key's fleet owners, then the member that owned it before us
//! ([`super::fleet`]); with `peers-first`, the swarm when a peer's digest says it holds the
//! NAR; the upstreams ([`super::upstream`]; with `http-first`, a late upstream raced by the
//! swarm); when they failed, the swarm ([`super::swarm`]), then a peer over HTTP
//! ([`super::peer`]). Only the upstreams' answer decides between 404 and 503 ([`Verdict`]).

use super::super::{FetchError, Fetcher, Verdict};
use super::plan::Plan;
use super::source::{NarSource, Opened};
use super::{fleet, peer, swarm, upstream};
use crate::fetch::PeerPolicy;

impl Fetcher {
    /// The sources of `plan`'s NAR, best first. `accelerable`: see [`Fetcher::accelerable`].
    fn order(&self, plan: &Plan, accelerable: bool) -> Vec<&'static dyn NarSource> {
        // nixgate's own file (`owned.rs`): from the owners when there are some (the download
        // fails over to the upstream's file otherwise); else, when the upstream's file could
        // not be had, from the peers that hold it (only-if-cached).
        if plan.served {
            return match plan.owners.is_empty() {
                true => vec![&fleet::Fleet, &peer::Peers],
                false => vec![&fleet::Fleet],
            };
        }
        let peers_first = self.tuning.policy == PeerPolicy::PeersFirst
            && self.peers.probable_holders(&plan.digest_key()) > 0;
        let mut order: Vec<&'static dyn NarSource> = vec![&fleet::Fleet];
        if peers_first {
            order.push(&swarm::Swarm);
        }
        order.push(match accelerable {
            true => &upstream::Raced,
            false => &upstream::Upstreams,
        });
        order.push(&swarm::Swarm);
        order.push(&peer::Peers);
        order
    }

    /// Where a NAR's bytes come from: the first source in [`Fetcher::order`] that opens it.
    /// Bytes from members, peers and the swarm are checked against the signed NarHash.
    pub(super) async fn open_source(
        &self,
        plan: &Plan,
        accelerable: bool,
    ) -> Result<Opened, FetchError> {
        let mut verdict = Verdict::default();
        for source in self.order(plan, accelerable) {
            if let Some(opened) = source.open(self, plan, &mut verdict).await {
                return Ok(opened);
            }
        }
        Err(verdict.into_error())
    }
}
