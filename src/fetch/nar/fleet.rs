//! The fleet as a NAR source: the members that own the NAR's key (see `peers::fleet`), in
//! rendezvous order, asked with `X-Nixgate-Fleet` (an owner fetches it from its upstream once
//! for the whole fleet; a down or slow one costs at most the fleet first-byte bound before
//! the next is asked; its 404 ends the fleet's turn and the upstream is asked), then the
//! member that owned it before us, only-if-cached (it may have just joined the fleet, or come
//! back), so it never fetches for us. Members are trusted for routing only: their bytes pass
//! the same checks as an upstream's plus the signed NarHash (`Plan::nar_check`), and a member
//! whose bytes do not verify is put on probation, leaving the owner rotation.

use url::Url;

use super::super::{Fetcher, Remote};
use super::plan::Plan;
use super::source::NarSource;

/// The key's owners, then its previous owner.
pub(super) struct Fleet;

impl NarSource for Fleet {
    fn remotes(&self, f: &Fetcher, plan: &Plan) -> Vec<(Remote, Url)> {
        let owners = plan.owners.iter().cloned().map(Remote::Owner);
        let successor = f.peers.successor(&plan.owner_key).map(Remote::Successor);
        let rel = plan.rel();
        let at = |r: Remote| Some((r.http()?.base.join(&rel).ok()?, r));
        let remotes = owners.chain(successor).filter_map(at);
        remotes.map(|(url, r)| (r, url)).collect()
    }
}
