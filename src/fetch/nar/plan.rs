//! What a NAR download is after: its candidate URLs, its expected size and compression, the
//! signed NarHash/NarSize when a narinfo told them, and the checks its bytes must pass.

use std::sync::Arc;

use url::Url;

use super::super::narinfo::parse_stored;
use super::super::verify::{FileCheck, FileExpect, NarCheck};
use super::super::{FetchError, Fetcher};
use crate::fetch::PeerPolicy;
use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;
use crate::nix::store_path::StorePathHash;
use crate::store::digest::nar_key;
use crate::upstream::Upstream;

/// Where to fetch a NAR from and what it must look like.
pub(super) struct Plan {
    /// The FileHash: the NAR is `<fh>.nar<ext>`.
    pub fh: Sha256,
    pub ext: &'static str,
    /// Upstream URLs to try in order, with the index of the upstream each belongs to.
    pub candidates: Vec<(usize, Url)>,
    pub size: Option<u64>,
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
}

/// Starts the message of a verification failure of the decompressed NAR (NarHash/NarSize):
/// the bytes may be right for their FileHash and the narinfo wrong.
const NAR_MISMATCH: &str = "against the narinfo's NarHash: ";

/// Whether `e` is a failure of the NarHash/NarSize check (see [`NAR_MISMATCH`]).
pub(super) fn is_nar_mismatch(e: &FetchError) -> bool {
    matches!(e, FetchError::Verification(m) if m.starts_with(NAR_MISMATCH))
}

fn nar_mismatch(e: FetchError) -> FetchError {
    match e {
        FetchError::Verification(m) => FetchError::Verification(format!("{NAR_MISMATCH}{m}")),
        e => e,
    }
}

impl Plan {
    /// The check of the decompressed NAR against the signed NarHash/NarSize, when the narinfo
    /// gave them and nixgate can decompress this compression (needed for bytes from peers).
    pub fn nar_check(&self) -> Option<NarCheck> {
        let (nar_hash, nar_size) = self.nar?;
        NarCheck::new(self.compression?, nar_hash, nar_size)
    }

    /// The NAR's path relative to a cache's base URL.
    pub fn rel(&self) -> String {
        format!("nar/{}.nar{}", self.fh.to_nix32(), self.ext)
    }

    /// The NAR's key in peers' digests.
    pub fn digest_key(&self) -> String {
        nar_key(&self.fh.to_nix32())
    }
}

/// The checks for one source: the file always; the decompressed NAR when it can be decoded.
pub(super) struct Checks {
    file: FileCheck,
    nar: Option<NarCheck>,
}

impl Checks {
    pub fn new(plan: &Plan, nar: Option<NarCheck>) -> Self {
        Checks {
            file: FileCheck::new(FileExpect {
                file_hash: plan.fh,
                file_size: plan.size,
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
        self.nar.is_some()
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), FetchError> {
        self.file.update(chunk)?;
        match &mut self.nar {
            Some(n) => n.update(chunk).map_err(nar_mismatch),
            None => Ok(()),
        }
    }

    pub fn finish(self) -> Result<u64, FetchError> {
        let n = self.file.finish()?;
        if let Some(nar) = self.nar {
            nar.finish().map_err(nar_mismatch)?;
        }
        Ok(n)
    }
}

impl Fetcher {
    /// Candidate URLs: the one a cached narinfo recorded, then each upstream's standard
    /// `nar/<FileHash>.nar<ext>` (any of them will do: the bytes are checked against the hash).
    pub(super) async fn plan(&self, fh: Sha256, ext: &'static str, fleet: bool) -> Plan {
        let mut plan = Plan {
            fh,
            ext,
            candidates: Vec::new(),
            size: None,
            compression: Compression::from_extension(ext),
            nar: None,
            owner_key: fh.to_nix32(),
            owners: Vec::new(),
            ourselves: true,
            narinfo: None,
        };
        for stored in self.store.narinfos_of(&fh).await {
            let Some((url, ni)) = parse_stored(&stored) else {
                continue;
            };
            let c = Compression::from_field(ni.compression.as_deref());
            if c.extension() != ext {
                continue;
            }
            // Breaker accounting goes to the upstream with the same origin (else the first).
            let i = self
                .upstreams
                .iter()
                .position(|u| u.base.origin() == url.origin())
                .unwrap_or(0);
            plan.candidates.push((i, url));
            plan.size = ni.file_size;
            plan.compression = Some(c);
            plan.nar = Some((ni.nar_hash, ni.nar_size));
            plan.owner_key = ni.base.hash.to_string();
            plan.narinfo = Some(ni.base.hash);
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
            && self.torrent().is_some()
            && plan.size.is_some_and(|s| s >= self.tuning.accelerate_size)
            && self.peers.probable_holders(&plan.digest_key()) > 0
    }
}
