//! What a NAR download is after: its candidate URLs, its expected size and compression, the
//! signed NarHash/NarSize when a narinfo told them, and the checks its bytes must pass.

use std::sync::Arc;

use bytes::Bytes;

use url::Url;

use super::super::narinfo::parse_stored;
use super::super::tap::Tap;
use super::super::verify::{FileCheck, FileExpect, NarCheck, VerifyError};
use super::super::{FetchError, Fetcher};
use crate::fetch::PeerPolicy;
use crate::metrics::Untrusted;
use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;
use crate::nix::store_path::StorePathHash;
use crate::store::digest::{nar_key, served_key};
use crate::upstream::Upstream;

/// Where to fetch a NAR from and what it must look like.
pub(super) struct Plan {
    /// The FileHash: the NAR is `<fh>.nar<ext>`.
    pub fh: Sha256,
    pub ext: &'static str,
    /// Upstream URLs to try in order, with the index of the upstream each belongs to.
    pub candidates: Vec<(usize, Url)>,
    pub size: Option<u64>,
    /// The most the file may take when `size` is unknown (see `FileExpect::max_size`).
    pub max_size: Option<u64>,
    pub compression: Option<Compression>,
    /// The signed NarHash and NarSize, when a narinfo told them (checked for every source
    /// whose compression nixgate can decode).
    pub nar: Option<(Sha256, u64)>,
    /// The key whose fleet owner fetches this NAR: the store path hash of the narinfo that
    /// names it (so the member that fetched the narinfo, and knows its sizes and hashes, also
    /// fetches the NAR), or the FileHash when no narinfo is held.
    pub owner_key: String,
    /// The fleet members to ask first, best first (empty when we fetch it ourselves).
    pub owners: Vec<Arc<Upstream>>,
    /// We fetch it ourselves (a fleet request, or we own it): such downloads coalesce with
    /// each other, apart from ours that wait on an owner, so members that briefly disagree
    /// on the owner cannot wait on each other.
    pub ourselves: bool,
    /// The store path whose narinfo told them (forgotten when the NAR does not match).
    pub narinfo: Option<StorePathHash>,
    /// That store path as `<hash>-<name>`, for the log.
    pub path: Option<String>,
    /// The file is nixgate's own of the NAR (`--serve-compression`), from a fleet owner that
    /// serves the same ([`super::owned`]): no FileHash names it, so the signed NarHash and
    /// NarSize decide alone, and only owners (then the previous owner, only-if-cached) are asked.
    pub served: bool,
}

/// Which download of a NAR a key names: one we fetch ourselves, one that waits on an owner,
/// or nixgate's own file streamed from an owner. Kept apart so that a fleet request joins only
/// a download we do ourselves, and a reader of one representation never gets the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    Ourselves,
    Owner,
    OwnerServed,
}

/// Whether `e` says the decompressed NAR contradicts the narinfo (NarHash/NarSize): the
/// bytes may be right for their FileHash and the narinfo wrong.
pub(super) fn is_nar_mismatch(e: &FetchError) -> bool {
    matches!(e, FetchError::Verification(v) if v.refutes_narinfo())
}

impl Plan {
    /// The key of its download among those under way.
    pub fn key(&self) -> (Sha256, Via) {
        let via = match (self.served, self.ourselves) {
            (true, _) => Via::OwnerServed,
            (false, true) => Via::Ourselves,
            (false, false) => Via::Owner,
        };
        (self.fh, via)
    }

    /// The check of the decompressed NAR: its header always, the signed NarHash/NarSize when
    /// the narinfo gave them. An error when nixgate cannot decompress the NAR's compression
    /// (then it is neither stored nor served). Without a narinfo or a compression-naming
    /// extension (`.nar`), the file is taken as uncompressed.
    pub fn nar_check(&self) -> Result<NarCheck, VerifyError> {
        self.nar_check_tapped(None)
    }

    /// [`Self::nar_check`] with a tap making nixgate's own file (`fetch/tap.rs`).
    pub fn nar_check_tapped(&self, tap: Option<Tap>) -> Result<NarCheck, VerifyError> {
        let check = NarCheck::tapped(self.compression.unwrap_or(Compression::None), self.nar, tap)?;
        match self.served {
            true => check.limit_window(super::super::encode::PEER_WINDOW_LOG_MAX),
            false => Ok(check),
        }
    }

    /// Whether the bytes will be checked against the signed NarHash: peers and the swarm may
    /// send (or continue) the file only then.
    pub fn nar_hash_checked(&self) -> bool {
        self.nar.is_some()
            && super::super::decode::supports(self.compression.unwrap_or(Compression::None))
    }

    /// The NAR's path relative to a cache's base URL.
    pub fn rel(&self) -> String {
        format!("nar/{}.nar{}", self.fh.to_nix32(), self.ext)
    }

    /// The NAR's key in peers' digests.
    pub fn digest_key(&self) -> String {
        match self.served {
            true => served_key(&self.fh.to_nix32(), self.ext),
            false => nar_key(&self.fh.to_nix32()),
        }
    }
}

/// The checks for one source: the file (its FileHash, a content address) and the
/// decompressed NAR (its header; the signed NarHash when known).
pub(super) struct Checks {
    file: FileCheck,
    nar: NarCheck,
}

impl Checks {
    pub fn new(plan: &Plan, nar: NarCheck) -> Self {
        Checks {
            file: FileCheck::new(FileExpect {
                file_hash: (!plan.served).then_some(plan.fh),
                file_size: plan.size,
                max_size: plan.max_size,
                compression: plan.compression,
            }),
            nar,
        }
    }

    pub fn written(&self) -> u64 {
        self.file.written
    }

    /// Whether the decompressed NAR is checked against the signed NarHash (so that bytes
    /// from peers or the swarm may continue the file).
    pub fn nar_checked(&self) -> bool {
        self.nar.checks_nar_hash()
    }

    /// Whether the bytes so far decompress to a whole NAR header: nothing is released to a
    /// client before, so a body that is no NAR never reaches one.
    pub fn header_seen(&self) -> bool {
        self.nar.header_seen()
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), VerifyError> {
        self.file.update(chunk)?;
        self.nar.update(chunk)
    }

    /// [`Self::update`], on the blocking pool when the NAR check feeds a tap: decoding,
    /// hashing and encoding a batch costs ~25 CPU s per GB of NAR (docs/ZSTD.md, Status), about
    /// 100 ms per 1 MiB of xz, too long to hold a tokio worker (a narinfo hit waits behind
    /// it). At most one such batch per core at a time (`slots`): more threads only contend
    /// for the cores. Without a tap, as before, inline. The checks come back with the result.
    pub async fn check(
        mut self,
        chunk: &Bytes,
        slots: &tokio::sync::Semaphore,
    ) -> (Self, Result<(), VerifyError>) {
        if !self.nar.has_tap() {
            let res = self.update(chunk);
            return (self, res);
        }
        let _slot = slots.acquire().await.expect("never closed");
        let chunk = chunk.clone();
        let job = tokio::task::spawn_blocking(move || {
            let res = self.update(&chunk);
            (self, res)
        });
        match job.await {
            Ok(done) => done,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// The file's size once every check passed, and the tap (if any), to be committed.
    pub fn finish(self) -> Result<(u64, Option<Tap>), VerifyError> {
        let n = self.file.finish()?;
        let tap = self.nar.finish_tapped()?;
        Ok((n, tap))
    }
}

impl Fetcher {
    /// Refuses, before any byte is fetched, a NAR whose compression nixgate cannot decompress
    /// to check (counted and logged: an operator sees which cache writes what).
    pub(super) fn checkable(&self, plan: &Plan) -> Result<(), FetchError> {
        match plan.nar_check() {
            Ok(_) => Ok(()),
            Err(e) => {
                self.metrics.untrusted(Untrusted::Compression);
                tracing::warn!(file_hash = %plan.fh, error = %e, "refusing a NAR nixgate cannot check against its NarHash");
                Err(e.into())
            }
        }
    }

    /// A check that refused a source's bytes, as the fetch's error; a body that is no NAR at
    /// all is counted as untrusted too (an unrelated page, an error body).
    pub(super) fn refused(&self, e: VerifyError) -> FetchError {
        if e == VerifyError::NotANar {
            self.metrics.untrusted(Untrusted::NotANar);
        }
        e.into()
    }

    /// Candidate URLs: the one a cached narinfo recorded, then each upstream's standard
    /// `nar/<FileHash>.nar<ext>` (any of them will do: the bytes are checked against the hash).
    pub(super) async fn plan(&self, fh: Sha256, ext: &'static str, fleet: bool) -> Plan {
        let mut plan = Plan {
            fh,
            ext,
            candidates: Vec::new(),
            size: None,
            max_size: None,
            compression: Compression::from_extension(ext),
            nar: None,
            owner_key: fh.to_nix32(),
            owners: Vec::new(),
            ourselves: true,
            narinfo: None,
            path: None,
            served: false,
        };
        for stored in self.store.narinfos_of(&fh).await {
            let Some((url, ni)) = parse_stored(&stored) else {
                continue;
            };
            let c = Compression::from_field(ni.compression.as_deref());
            if c.extension() != ext {
                continue;
            }
            // The recorded URL is asked as the upstream with its origin, and only then: a
            // cache written before the URL rules (or by hand) may record any URL.
            let origin = url.origin();
            if let Some(i) = self
                .upstreams
                .iter()
                .position(|u| u.base.origin() == origin)
            {
                plan.candidates.push((i, url));
            }
            plan.size = ni.file_size;
            plan.compression = Some(c);
            plan.nar = Some((ni.nar_hash, ni.nar_size));
            plan.owner_key = ni.base.hash.to_string();
            plan.narinfo = Some(ni.base.hash);
            plan.path = Some(ni.base.to_string());
            break;
        }
        if !fleet {
            plan.owners = self.peers.owners(&plan.owner_key);
            plan.ourselves = plan.owners.is_empty();
        }
        let rel = plan.rel();
        for (i, up) in self.upstreams.iter().enumerate() {
            let url = up
                .base
                .join(&rel)
                .expect("nix32 and extensions are URL-safe");
            if !plan.candidates.iter().any(|(_, c)| *c == url) {
                plan.candidates.push((i, url));
            }
        }
        plan
    }

    /// Whether an upstream download may switch to the swarm: http-first, BitTorrent on, a
    /// large NAR (by the narinfo) that a peer's digest says it holds.
    pub(super) fn accelerable(&self, plan: &Plan) -> bool {
        self.tuning.policy == PeerPolicy::HttpFirst
            && !plan.served
            && self.torrent().is_some()
            && plan.size.is_some_and(|s| s >= self.tuning.accelerate_size)
            && self.peers.probable_holders(&plan.digest_key()) > 0
    }
}
