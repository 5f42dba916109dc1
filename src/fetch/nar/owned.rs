//! nixgate's own file of a NAR streamed from the fleet owner that made it (issue 22,
//! docs/ZSTD.md §7): the owner transcodes once for the whole fleet, and members stream its
//! `<F>.nar.zst` instead of fetching the upstream's xz and transcoding it again.
//!
//! A member asks only owners whose `/nix-cache-info` said they serve as it does
//! (`peers::fleet::SERVES_HEADER`); an owner of the previous version, or one with
//! `--serve-compression upstream`, is asked for the upstream's file as before. The owner's
//! bytes are trusted for nothing: no FileHash names nixgate's own file, so the download
//! checks the NAR header and the signed NarHash/NarSize from byte 0 (`Plan::served`), holds
//! back its end until they passed, and puts an owner whose bytes do not verify on probation.
//! Such a download is never continued from another source (another encoder's bytes would not
//! continue the stream); when the owners do not send the file (404, down, no room), the caller
//! fetches the upstream's file and transcodes it itself, as without a fleet.
//!
//! The same download serves the peer fallback: when the upstream's file cannot be had (the
//! upstreams down), peers whose digest lists nixgate's file (`served.zst/<F>`) are asked for
//! it only-if-cached, checked the same way.

use std::sync::Arc;

use super::super::transcode::Signed;
use super::super::Fetcher;
use super::plan::Plan;
use super::{NarSource, Reader};
use crate::nix::hash::Sha256;
use crate::nix::served::Served;

impl Fetcher {
    /// A reader of nixgate's own file of NAR `fh` (`as_`) as an owner sends it: a download
    /// joined or started. `None` when we own the NAR's key, no owner serves `as_`, no narinfo
    /// of it is held (its key, hence its owner, is unknown), the cache cannot take the file, or
    /// the owners did not send it.
    pub(in crate::fetch) async fn from_owner(
        self: &Arc<Self>,
        fh: Sha256,
        as_: Served,
        signed: Signed,
    ) -> Option<Reader> {
        let mut plan = self.plan(fh, signed.compression.extension(), false).await;
        // The key's owner itself must serve what we do: one that does not (a previous
        // version, `upstream`) is asked for the upstream's file, never the next owner, which
        // would fetch it from the upstream a second time for the fleet. The next owner, asked
        // when the first fails, only if it serves the same.
        let serves = |o: &Arc<crate::upstream::Upstream>| self.peers.serves(&o.base, as_.field());
        if !plan.owners.first().is_some_and(serves) || plan.narinfo.is_none() {
            return None;
        }
        plan.owners.retain(serves);
        self.served_download(plan, as_, signed).await
    }

    /// A reader of nixgate's own file of NAR `fh` from a peer that holds it (only-if-cached,
    /// by its digest): asked when the upstream's file could not be had (the upstreams down),
    /// since a fleet member keeps only this file of the NARs it does not own.
    pub(in crate::fetch) async fn from_peers(
        self: &Arc<Self>,
        fh: Sha256,
        as_: Served,
        signed: Signed,
    ) -> Option<Reader> {
        let mut plan = self.plan(fh, signed.compression.extension(), true).await;
        plan.owners.clear();
        self.served_download(plan, as_, signed).await
    }

    /// The download of nixgate's own file for `plan` (the upstream file's plan, turned to
    /// ours: no FileHash, no upstream candidates), joined or started, once its first bytes
    /// came; `None` when the cache cannot take it or no source sent it.
    async fn served_download(
        self: &Arc<Self>,
        mut plan: Plan,
        as_: Served,
        signed: Signed,
    ) -> Option<Reader> {
        let fh = plan.fh;
        let max = max_size(as_, signed.nar_size);
        // Asked again only after a minute when it failed (a retry takes the upstream file's
        // path); never for a file the cache would not keep (it would be relayed, after
        // evicting for it).
        if self.served_failed.contains_key(&fh) || !self.served_fits(max) {
            return None;
        }
        plan.max_size = Some(max);
        plan.ext = as_.extension();
        plan.compression = Some(as_.compression());
        plan.size = None;
        plan.candidates.clear();
        plan.nar = Some((signed.nar_hash, signed.nar_size));
        plan.served = true;
        let reader = match self.join(plan.key()) {
            Some(reader) => reader,
            None => self.start(plan).ok()?,
        };
        match self.first_bytes(reader).await {
            Ok((NarSource::Download(reader), _)) => Some(reader),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(file_hash = %fh, error = %e, "nixgate's own file of the NAR not sent by owners or peers");
                None
            }
        }
    }

    /// Whether nixgate's own file of at most `max` bytes may be kept: a quarter of the cap
    /// at most, as for the pair a tap makes (`served::CAP_SHARE`).
    fn served_fits(&self, max: u64) -> bool {
        max <= self.store.max_bytes() / super::super::served::CAP_SHARE
    }
}

/// The most nixgate's own file of a NAR of `nar_size` bytes may take: zstd's bound for one
/// frame, with room for a later version's frames (1 KiB each per 16 MiB, and 4 KiB), or the
/// NAR itself. A source that announces or sends more is refused.
fn max_size(as_: Served, nar_size: u64) -> u64 {
    match as_ {
        Served::Zstd => {
            let bound = zstd::zstd_safe::compress_bound(nar_size as usize) as u64;
            bound + nar_size / (16 << 10) + 4096
        }
        Served::None => nar_size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_holds_our_own_files_and_little_more() {
        let nar = crate::fetch::testdata::text_nar(10_000);
        let incompressible: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes())
            .collect();
        for data in [&nar[..], &incompressible[..], &b"nix-archive-1"[..]] {
            let n = data.len() as u64;
            let z = zstd::encode_all(data, 3).unwrap().len() as u64;
            assert!(z <= max_size(Served::Zstd, n), "{z} > bound for {n}");
            assert!(max_size(Served::Zstd, n) < n + n / 100 + 8192);
        }
        assert_eq!(max_size(Served::None, 1234), 1234);
    }
}
