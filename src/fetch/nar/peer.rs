//! Peers as a NAR source: each peer whose digest may hold the NAR, over HTTP, only-if-cached,
//! when the upstreams and the swarm failed. Only when the signed NarHash is known and nixgate
//! can decompress the file to check it; fetched by hash under the peer's own base.

use std::sync::Arc;

use url::Url;

use super::super::{Fetcher, Remote};
use super::plan::Plan;
use super::source::NarSource;
use crate::upstream::Upstream;

/// The peers that may hold the NAR.
pub(super) struct Peers;

impl NarSource for Peers {
    fn remotes(&self, f: &Fetcher, plan: &Plan) -> Vec<(Remote, Url)> {
        if !plan.nar_hash_checked() {
            return Vec::new();
        }
        let rel = plan.rel();
        let peers = f.peers.candidates(&plan.digest_key()).into_iter();
        let at = |p: Arc<Upstream>| {
            let url = p.base.join(&rel).ok()?;
            Some((Remote::Peer(p), url))
        };
        peers.filter_map(at).collect()
    }
}
