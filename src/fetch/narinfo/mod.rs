//! Narinfo misses: ask each source in order (`source.rs`: the fleet's owners, the object
//! store, the upstreams, then peers when an upstream failed; `walk.rs` walks them, the
//! bucket hedged with the upstreams), accept only a narinfo whose signature
//! verifies against a trusted key (`accept.rs`), rewrite its URL to nixgate's own NAR name,
//! store it.
//!
//! What is stored (see `store`): `<absolute upstream NAR URL>\n<narinfo as served>`.

use std::sync::Arc;

use bytes::Bytes;

use super::{Ask, FetchError, Fetcher};
use crate::metrics::Source;
use crate::nix::store_path::StorePathHash;

mod accept;
mod source;
mod walk;

pub(super) use accept::{accept, Accepted, NarAt};
pub use accept::{parse_stored, served_part, upstream_url, Rejected};
pub(super) use source::{Asked, Miss, NarinfoSource, Upstreams};

impl Fetcher {
    /// The narinfo for `h` as served, from cache or (unless `only_if_cached`) upstream.
    /// The boolean is true on a cache hit.
    pub async fn narinfo(
        self: &Arc<Self>,
        h: StorePathHash,
        ask: Ask,
    ) -> Result<(Bytes, bool), FetchError> {
        // Uploaded paths are held apart from the cache, and served first (no upstream has them).
        if let Some(b) = self.store.uploads().narinfo(&h).await {
            return Ok((b, true));
        }
        // A narinfo read from disk is checked once: damaged files are dropped and refetched.
        let valid = |stored: &Bytes, fh: &crate::nix::hash::Sha256| {
            parse_stored(stored)
                .is_some_and(|(_, ni)| ni.base.hash == h && ni.file_hash == Some(*fh))
        };
        if let Some((_, stored)) = self.store.narinfo(&h, valid).await {
            // A peer's narinfo gives way to an upstream's once one answers (provenance.rs).
            if let Some(fresh) = self.revalidated(h).await {
                return Ok((served_part(&fresh), false));
            }
            return Ok((served_part(&stored), true));
        }
        if ask.only_if_cached {
            return Err(FetchError::NotFound);
        }
        let key = format!("{h}.narinfo");
        if self.is_negative(&key) {
            return Err(FetchError::NotFound);
        }
        // A fleet request, or a key we own, is fetched by us; such fetches coalesce apart
        // from ours that wait on an owner, so members that briefly disagree on the owner
        // cannot wait on each other.
        let owners = if ask.fleet {
            Vec::new()
        } else {
            self.peers.owners(&h.to_string())
        };
        let this = self.clone();
        let (res, joined) = self
            .narinfos
            .run((h, owners.is_empty()), move || async move {
                this.fetch_narinfo(h, owners).await
            })
            .await;
        if joined {
            self.metrics.coalesced();
        }
        res.map(|stored| (served_part(&stored), false))
    }

    pub(super) async fn save(
        &self,
        h: StorePathHash,
        fh: crate::nix::hash::Sha256,
        stored: String,
        source: Source,
    ) -> Result<Bytes, FetchError> {
        let stored = Bytes::from(stored);
        let (store, b) = (self.store.clone(), stored.clone());
        let stored_ok = tokio::task::spawn_blocking(move || {
            let mut w = store.begin_narinfo(h, fh)?;
            w.write_all(&b)?;
            w.commit()
        })
        .await
        .map_err(FetchError::storage)
        .and_then(|r| r.map_err(FetchError::storage));
        // A full or broken disk degrades: the verified narinfo is served, just not cached.
        if let Err(e) = stored_ok {
            tracing::warn!(error = %e, hash = %h, "cannot store narinfo; serving it uncached");
        }
        self.metrics.fetched(source, stored.len() as u64);
        Ok(stored)
    }
}
