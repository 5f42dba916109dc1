//! Narinfo misses: ask each upstream in order, accept only a narinfo whose signature verifies
//! against a trusted key, rewrite its URL to nixgate's own NAR name, store it.
//!
//! What is stored (see `store`): `<absolute upstream NAR URL>\n<narinfo as served>`.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use thiserror::Error;
use url::Url;

use super::{Ask, FetchError, Fetcher};
use crate::metrics::Source;
use crate::nix::compression::Compression;
use crate::nix::narinfo::{NarInfo, NarInfoError, MAX_NARINFO_BYTES};
use crate::nix::store_path::StorePathHash;
use crate::nix::STORE_DIR;
use crate::upstream::{Answer, Upstream, UpstreamError};

/// Why an upstream narinfo was refused (it is then treated as absent, and counted).
#[derive(Debug, Error)]
pub enum Rejected {
    #[error("malformed: {0}")]
    Malformed(#[from] NarInfoError),
    #[error("is for store path {0}, not the requested hash")]
    WrongPath(String),
    #[error("no signature by a trusted key")]
    Untrusted,
    #[error("lacks FileHash/FileSize, so the NAR could not be verified")]
    Unverifiable,
    #[error("URL {0:?} cannot be resolved")]
    Url(String),
}

/// The served part of a stored narinfo file (after the upstream-URL line).
pub fn served_part(stored: &Bytes) -> Bytes {
    let start = stored.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    stored.slice(start..)
}

/// The upstream NAR URL recorded in a stored narinfo file.
pub fn upstream_url(stored: &[u8]) -> Option<Url> {
    let line = stored.split(|&b| b == b'\n').next()?;
    Url::parse(std::str::from_utf8(line).ok()?).ok()
}

/// Decodes a stored narinfo file into its upstream NAR URL and the narinfo as served.
pub fn parse_stored(stored: &Bytes) -> Option<(Url, NarInfo)> {
    let served = served_part(stored);
    let ni = NarInfo::parse(std::str::from_utf8(&served).ok()?, STORE_DIR).ok()?;
    Some((upstream_url(stored)?, ni))
}

/// Checks a narinfo (from an upstream or a peer) and builds the file to store; its NAR URL is
/// resolved against `nar_base` (an upstream's base, where the NAR is refetched after eviction).
pub(super) fn accept(
    h: &StorePathHash,
    nar_base: &Url,
    body: &[u8],
    keys: &crate::nix::signature::TrustedKeys,
) -> Result<(crate::nix::hash::Sha256, String), Rejected> {
    let text = std::str::from_utf8(body).map_err(|_| NarInfoError::Utf8)?;
    let mut ni = NarInfo::parse(text, STORE_DIR)?;
    if ni.base.hash != *h {
        return Err(Rejected::WrongPath(ni.store_path));
    }
    if !keys.verifies_any(&ni.fingerprint(STORE_DIR), &ni.sigs) {
        return Err(Rejected::Untrusted);
    }
    let (Some(fh), Some(_)) = (ni.file_hash, ni.file_size) else {
        return Err(Rejected::Unverifiable);
    };
    let nar_url = nar_base
        .join(&ni.url)
        .map_err(|_| Rejected::Url(ni.url.clone()))?;
    let ext = Compression::from_field(ni.compression.as_deref()).extension();
    ni.url = format!("nar/{}.nar{ext}", fh.to_nix32());
    Ok((fh, format!("{nar_url}\n{ni}")))
}

/// How a narinfo is asked for.
#[derive(Clone, Copy)]
pub(super) enum Via {
    Upstream,
    /// Only-if-cached, from a peer (fallback).
    Peer,
    /// From the fleet member that owns it.
    Fleet,
}

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

    async fn fetch_narinfo(
        self: Arc<Self>,
        h: StorePathHash,
        owners: Vec<Arc<Upstream>>,
    ) -> Result<Bytes, FetchError> {
        let key = h.to_string();
        if let Some(answer) = self.narinfo_from_members(h, owners, Via::Fleet).await {
            return answer;
        }
        // We own it: the member that owned it before us may hold it already.
        let successor = self.peers.successor(&key).into_iter().collect();
        if let Some(answer) = self.narinfo_from_members(h, successor, Via::Peer).await {
            return answer;
        }
        let mut failure = None;
        for up in &self.upstreams {
            let body = match self.get_narinfo(up, h, Via::Upstream).await {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(upstream = %up.base, hash = %h, error = %e, "narinfo fetch failed");
                    failure = Some(FetchError::unavailable(up, &e));
                    continue;
                }
            };
            match accept(&h, &up.base, &body, &self.keys) {
                Ok((fh, stored)) => return self.save(h, fh, stored, Source::Upstream).await,
                Err(why) => {
                    self.metrics.verification_failure(Source::Upstream);
                    tracing::warn!(upstream = %up.base, hash = %h, reason = %why, "rejected upstream narinfo");
                }
            }
        }
        match failure {
            Some(e) => match self.narinfo_from_peers(h).await {
                Some(stored) => Ok(stored),
                None => Err(e),
            },
            None => {
                self.remember_not_found(format!("{h}.narinfo"));
                Err(FetchError::NotFound)
            }
        }
    }

    /// The narinfo body from `src` (`None`: not there), asked as `via` says.
    pub(super) async fn get_narinfo(
        &self,
        src: &Upstream,
        h: StorePathHash,
        via: Via,
    ) -> Result<Option<Bytes>, UpstreamError> {
        let url = src
            .base
            .join(&format!("{h}.narinfo"))
            .expect("hash is URL-safe");
        let answer = match via {
            Via::Upstream => {
                self.client
                    .request(src, Method::GET, &url, &self.metrics)
                    .await
            }
            Via::Peer => self.client.peer_request(src, Method::GET, &url).await,
            Via::Fleet => self.client.fleet_request(src, Method::GET, &url).await,
        };
        match answer? {
            Answer::Found(b) => b.read_all(MAX_NARINFO_BYTES).await.map(Some),
            Answer::NotFound => Ok(None),
        }
    }

    /// Asks fleet `members` for `h` in order, as the upstream would be asked: a narinfo is
    /// taken only with a trusted signature for the right path; a member that sends anything
    /// else is counted and put on probation, and the next is asked. An owner's 404 (`via`
    /// fleet) is taken as the upstream's (it asked them); a successor's (`via` peer,
    /// only-if-cached) only means it does not hold it. `None`: nobody had an answer.
    async fn narinfo_from_members(
        &self,
        h: StorePathHash,
        members: Vec<Arc<Upstream>>,
        via: Via,
    ) -> Option<Result<Bytes, FetchError>> {
        for owner in members {
            let body = match self.get_narinfo(&owner, h, via).await {
                Ok(Some(b)) => b,
                Ok(None) if matches!(via, Via::Peer) => continue,
                Ok(None) => {
                    self.remember_not_found(format!("{h}.narinfo"));
                    return Some(Err(FetchError::NotFound));
                }
                Err(e) => {
                    tracing::info!(owner = %owner.base, hash = %h, error = %e, "fleet owner failed; trying the next");
                    continue;
                }
            };
            let nar_base = self.upstreams.first().map_or(&owner.base, |u| &u.base);
            match accept(&h, nar_base, &body, &self.keys) {
                // Its FileHash is not under the signature: vetted against what the cache
                // holds, like a peer's (provenance.rs); its NAR is checked against NarHash.
                Ok((fh, stored)) => match self.vet_peer_narinfo(fh, &stored).await {
                    Ok(()) => return Some(self.save(h, fh, stored, Source::Fleet).await),
                    Err(why) => {
                        self.metrics.verification_failure(Source::Fleet);
                        owner.breaker.probation(crate::peers::PROBATION);
                        tracing::warn!(owner = %owner.base, hash = %h, reason = %why, "fleet narinfo contradicts the cache; member on probation");
                    }
                },
                Err(why) => {
                    self.metrics.verification_failure(Source::Fleet);
                    owner.breaker.probation(crate::peers::PROBATION);
                    tracing::warn!(owner = %owner.base, hash = %h, reason = %why, "rejected fleet narinfo; member on probation");
                }
            }
        }
        None
    }

    /// Every upstream failed: ask the peers (only-if-cached). A narinfo is taken only with a
    /// trusted signature; a peer that sends anything else is counted and put on probation.
    async fn narinfo_from_peers(&self, h: StorePathHash) -> Option<Bytes> {
        let key = crate::store::digest::narinfo_key(&h.to_string());
        for peer in self.peers.candidates(&key) {
            let body = match self.get_narinfo(&peer, h, Via::Peer).await {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(peer = %peer.base, hash = %h, error = %e, "peer narinfo fetch failed");
                    continue;
                }
            };
            // Refetches after eviction go to the first upstream's standard location.
            let nar_base = self.upstreams.first().map_or(&peer.base, |u| &u.base);
            match accept(&h, nar_base, &body, &self.keys) {
                // Vetted against the cache, stored and marked as the peer's (provenance.rs).
                Ok((fh, stored)) => match self.keep_peer_narinfo(&peer, h, fh, stored).await {
                    Some(saved) => return saved,
                    None => continue,
                },
                Err(why) => {
                    self.metrics.verification_failure(Source::Peer);
                    peer.breaker.probation(crate::peers::PROBATION);
                    tracing::warn!(peer = %peer.base, hash = %h, reason = %why, "rejected peer narinfo; peer on probation");
                }
            }
        }
        None
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
        .map_err(|e| FetchError::Storage(e.to_string()))
        .and_then(|r| r.map_err(|e| FetchError::Storage(e.to_string())));
        // A full or broken disk degrades: the verified narinfo is served, just not cached.
        if let Err(e) = stored_ok {
            tracing::warn!(error = %e, hash = %h, "cannot store narinfo; serving it uncached");
        }
        self.metrics.fetched(source, stored.len() as u64);
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::narinfo::tests::{VECTOR, VECTOR_PUBLIC_KEY};
    use crate::nix::signature::TrustedKeys;

    fn up() -> Url {
        Url::parse("http://127.0.0.1:9/cache/").unwrap()
    }

    #[test]
    fn rewrites_url_and_keeps_signature() {
        let keys = TrustedKeys::new(vec![VECTOR_PUBLIC_KEY.parse().unwrap()]);
        let h = "6dyjazmc27x71a77v1pcbi549rpk5wh6".parse().unwrap();
        let (fh, stored) = accept(&h, &up(), VECTOR.as_bytes(), &keys).unwrap();
        assert_eq!(
            fh.to_nix32(),
            "1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j"
        );
        let stored = Bytes::from(stored);
        assert_eq!(
            upstream_url(&stored).unwrap().as_str(),
            "http://127.0.0.1:9/cache/nar/1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j.nar.xz"
        );
        // The served text is the upstream one, byte for byte, but for the relative URL.
        assert_eq!(served_part(&stored), VECTOR.as_bytes());
    }

    #[test]
    fn refuses_untrusted_mismatched_and_unverifiable() {
        let keys = TrustedKeys::new(vec![VECTOR_PUBLIC_KEY.parse().unwrap()]);
        let other = TrustedKeys::new(vec![crate::nix::signature::CACHE_NIXOS_ORG_KEY
            .parse()
            .unwrap()]);
        let h = "6dyjazmc27x71a77v1pcbi549rpk5wh6".parse().unwrap();
        assert!(matches!(
            accept(&h, &up(), VECTOR.as_bytes(), &other),
            Err(Rejected::Untrusted)
        ));
        let wrong = "026h72wxqd39cbm2fdqc8zpwg9zm41c8".parse().unwrap();
        assert!(matches!(
            accept(&wrong, &up(), VECTOR.as_bytes(), &keys),
            Err(Rejected::WrongPath(_))
        ));
        let no_fh = VECTOR.replace(
            "FileHash: sha256:1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j\n",
            "",
        );
        assert!(matches!(
            accept(&h, &up(), no_fh.as_bytes(), &keys),
            Err(Rejected::Unverifiable)
        ));
        let forged = VECTOR.replace("NarSize: 536", "NarSize: 999");
        assert!(matches!(
            accept(&h, &up(), forged.as_bytes(), &keys),
            Err(Rejected::Untrusted)
        ));
    }
}
