//! Narinfos that came from peers. A trusted signature covers the store path, NarHash, NarSize
//! and references, not FileHash/FileSize: those are the peer's word. So a peer's narinfo is
//! checked against what the cache already holds for its FileHash before it is stored, is
//! marked (in memory) as that peer's, is replaced by an upstream's as soon as an upstream
//! answers again, and is forgotten, its peer put on probation, when the NAR it names does not
//! match its NarHash.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use url::Url;

use super::narinfo::{parse_stored, Asked, Miss, NarinfoSource, Rejected, Upstreams};
use super::verify::{NarCheck, VerifyError};
use super::{Fetcher, Verdict};
use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;
use crate::nix::store_path::StorePathHash;

/// Why a narinfo contradicts what the cache holds for its FileHash.
#[derive(Debug, thiserror::Error)]
pub enum Contradiction {
    #[error("its FileHash is the NAR of {0}")]
    OtherPath(String),
    #[error("the cached NAR its FileHash names does not match: {0}")]
    Nar(#[from] VerifyError),
    #[error("unparsable narinfo")]
    Unparsable,
    #[error("cannot read the cached NAR: {0}")]
    Io(String),
}

impl Contradiction {
    fn io(e: impl std::fmt::Display) -> Self {
        Contradiction::Io(e.to_string())
    }
}

/// How often a peer's narinfo is asked of the upstreams again, at most.
const REVALIDATE_EVERY: Duration = Duration::from_secs(2);
/// How long a hit waits for the upstreams' narinfo before serving the peer's.
const REVALIDATE_WAIT: Duration = Duration::from_secs(1);
/// Marks kept, at most (narinfos from peers only arrive while every upstream fails).
const MAX_MARKS: u64 = 100_000;

/// Which stored narinfos came from which peer.
pub struct Provenance {
    marks: moka::sync::Cache<StorePathHash, Mark>,
}

#[derive(Clone)]
struct Mark {
    peer: Url,
    /// When the upstreams were last asked for it.
    checked: Instant,
}

impl Default for Provenance {
    fn default() -> Self {
        Provenance {
            marks: moka::sync::Cache::new(MAX_MARKS),
        }
    }
}

impl Provenance {
    pub(super) fn mark(&self, h: StorePathHash, peer: &Url) {
        let mark = Mark {
            peer: peer.clone(),
            checked: Instant::now(),
        };
        self.marks.insert(h, mark);
    }
}

impl Fetcher {
    /// Checks a narinfo's NarHash/NarSize against what the cache holds for its (unsigned)
    /// FileHash: another narinfo naming the same file, else the NAR file itself
    /// (decompressed). Whoever sent the narinfo chose the FileHash, upstreams included.
    ///
    /// `upstream`: the narinfo came from a configured upstream. Another narinfo it contradicts
    /// may have been planted by a peer or fleet member to block it, so that one is forgotten
    /// instead, and the NAR decides (if it is cached now, else when it is fetched).
    pub(super) async fn vet_narinfo(
        &self,
        fh: Sha256,
        stored: &str,
        upstream: bool,
    ) -> Result<(), Rejected> {
        let (_, ni) = parse_stored(&Bytes::copy_from_slice(stored.as_bytes()))
            .ok_or(Contradiction::Unparsable)?;
        let claim = (ni.nar_hash, ni.nar_size);
        for other in self.store.narinfos_of(&fh).await {
            if let Some((_, o)) = parse_stored(&other) {
                if (o.nar_hash, o.nar_size) == claim {
                    return Ok(());
                }
                if !upstream {
                    return Err(Contradiction::OtherPath(o.store_path).into());
                }
                tracing::warn!(file_hash = %fh, other = %o.store_path, "an upstream narinfo contradicts a cached one for the same file; forgetting the cached one");
                self.store.forget_narinfo(&o.base.hash);
                self.provenance.marks.remove(&o.base.hash);
                break;
            }
        }
        let compression = Compression::from_field(ni.compression.as_deref());
        let cached = self.store.nar(&fh, compression.extension()).await;
        let Some(hit) = cached.map_err(Contradiction::io)? else {
            return Ok(()); // checked against NarHash when it is fetched
        };
        let Ok(mut check) = NarCheck::signed(compression, claim.0, claim.1) else {
            return Ok(()); // cannot decode it: such NARs are never fetched (plan.rs)
        };
        let read = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut f = hit.reader();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match f.read(&mut buf).map_err(Contradiction::io)? {
                    0 => break,
                    n => check.update(&buf[..n])?,
                }
            }
            Ok::<_, Contradiction>(check.finish()?)
        });
        Ok(read.await.map_err(Contradiction::io)??)
    }

    /// For a cached narinfo of `h` that a peer supplied: the upstreams are asked for theirs
    /// (at most every [`REVALIDATE_EVERY`]; an upstream whose circuit is open is skipped at
    /// no cost), and the first trusted one replaces the peer's. A hit waits for that at most
    /// [`REVALIDATE_WAIT`] (then the peer's is served and the upstreams' answer lands later).
    pub(super) async fn revalidated(self: &Arc<Self>, h: StorePathHash) -> Option<Bytes> {
        let mark = self.provenance.marks.get(&h)?;
        if mark.checked.elapsed() < REVALIDATE_EVERY {
            return None;
        }
        self.provenance.mark(h, &mark.peer);
        let this = self.clone();
        let asked = tokio::spawn(async move { this.narinfo_from_upstreams(h).await });
        tokio::time::timeout(REVALIDATE_WAIT, asked)
            .await
            .ok()?
            .ok()?
    }

    async fn narinfo_from_upstreams(&self, h: StorePathHash) -> Option<Bytes> {
        let miss = Miss {
            h,
            owners: Vec::new(),
        };
        let mut verdict = Verdict::default();
        for remote in Upstreams.remotes(self, &miss, &verdict) {
            let Asked::Taken(saved) = self.narinfo_from(&remote, h, &mut verdict).await else {
                continue;
            };
            self.provenance.marks.remove(&h);
            tracing::info!(%remote, hash = %h, "peer's narinfo replaced by the upstream's");
            return Some(saved);
        }
        None
    }

    /// The NAR named by the narinfo of `h` did not match its NarHash: that narinfo is
    /// forgotten (the NAR may well be another path's, and stays), and the peer that supplied
    /// it, if one did, is put on probation.
    pub(super) fn narinfo_refuted(&self, h: StorePathHash, why: &str) {
        self.store.forget_narinfo(&h);
        let Some(mark) = self.provenance.marks.remove(&h) else {
            tracing::warn!(hash = %h, reason = %why, "NAR does not match its narinfo; narinfo forgotten");
            return;
        };
        for p in self.peers.peers().iter().filter(|p| p.base == mark.peer) {
            p.breaker.probation(crate::peers::PROBATION);
        }
        tracing::warn!(hash = %h, peer = %mark.peer, reason = %why, "NAR does not match the peer's narinfo; narinfo forgotten, peer on probation");
    }
}
