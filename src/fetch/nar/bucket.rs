//! The object store as a NAR source (`--object-store`): asked after the fleet and before the
//! upstreams. Untrusted like a peer: only when the signed NarHash is known and nixgate can
//! decompress the file to check it; fetched by FileHash under the bucket's own prefix
//! (`nar/<FileHash>.nar<ext>`, `Plan::rel`), never by a narinfo's URL; an object that failed
//! a check lately is not asked for again (`Bucket::is_refused`); its 404 is never final.

use url::Url;

use super::super::{Fetcher, Remote};
use super::plan::Plan;
use super::source::NarSource;

/// The bucket, if one is configured.
pub(super) struct Bucket;

impl NarSource for Bucket {
    fn remotes(&self, f: &Fetcher, plan: &Plan) -> Vec<(Remote, Url)> {
        let Some(b) = f.bucket.as_ref().filter(|_| plan.nar_hash_checked()) else {
            return Vec::new();
        };
        let rel = plan.rel();
        if b.is_refused(&b.keys.under(&rel)) {
            return Vec::new();
        }
        match b.at.base.join(&rel) {
            Ok(url) => vec![(Remote::Bucket(b.clone()), url)],
            Err(_) => Vec::new(),
        }
    }
}

impl Fetcher {
    /// After a download of `plan`'s NAR was verified and committed: its path is queued for
    /// the bucket (never waits; a full queue drops it). One that came from the bucket is
    /// found there by the writer's HEAD and not written again.
    pub(super) fn write_behind(&self, plan: &Plan) {
        if let (Some((writes, _)), Some(h)) = (&self.writes, plan.narinfo) {
            writes.enqueue(h);
        }
    }
}
