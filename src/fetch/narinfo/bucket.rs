//! The object store as a narinfo source (`--object-store`): asked after the fleet and before
//! the upstreams, for `<prefix>/<hash>.narinfo`. Untrusted like a peer: the narinfo goes
//! through the same `Fetcher::narinfo_from` as every other (a trusted signature for the path
//! asked, FileHash present, its `URL` ignored, vetted against what the cache holds); its 404
//! and its failures never decide 404 against 503 (`Verdict` counts upstreams only).

use super::super::{Fetcher, Remote, Verdict};
use super::source::{Miss, NarinfoSource};

/// The bucket, if one is configured.
pub(in crate::fetch) struct Bucket;

impl NarinfoSource for Bucket {
    fn remotes(&self, f: &Fetcher, _: &Miss, _: &Verdict) -> Vec<Remote> {
        f.bucket.iter().cloned().map(Remote::Bucket).collect()
    }
}
