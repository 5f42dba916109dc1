//! A download that also makes nixgate's own file of its NAR (issue 22, docs/ZSTD.md §4):
//! whether it taps (`--serve-compression`, a signed NarHash to check, a compression nixgate
//! decodes and does not serve already, a runner that decodes the served file asked for the
//! path, room in the cache), the second temp file and the tail that `<F>.nar.zst` readers
//! follow, and its commit once the download verified.

use std::fs::File;
use std::sync::Arc;

use tokio::sync::watch;

use super::super::decode;
use super::super::tap::Tap;
use super::super::Ask;
use super::super::Fetcher;
use super::plan::Plan;
use super::relay::Relay;
use super::{Download, Progress, Reader, Via};
use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;

/// The tail of nixgate's own file as a download makes it: a read handle on its temp file
/// (valid after the rename) and its progress (`Running` while encoding, `Done` once
/// committed, `Failed` when the download or the tap failed).
#[derive(Clone)]
pub struct Tail {
    pub file: Arc<File>,
    pub progress: watch::Receiver<Progress>,
}

impl Download {
    /// A reader of nixgate's own file as this download makes it; `None` when it makes none,
    /// or the tap failed already.
    pub fn served_reader(&self) -> Option<Reader> {
        let tail = self.served.as_ref()?;
        if matches!(*tail.progress.borrow(), Progress::Failed(_)) {
            return None;
        }
        // Its own relay, never switched: the tap's file is the only way its bytes go.
        let relay = Arc::new(Relay::new());
        let rest = relay.subscribe()?;
        let download = Download {
            file: tail.file.clone(),
            progress: tail.progress.clone(),
            size: None,
            relay,
            served: None,
        };
        Some(Reader { download, rest })
    }
}

impl Fetcher {
    /// The tail of nixgate's own file of NAR `fh` as a download under way makes it (ours,
    /// or for a runner's request also one waiting on an owner, or nixgate's own file
    /// streamed from an owner), if one does.
    pub(in crate::fetch) fn tail_under_way(&self, fh: Sha256, ask: Ask) -> Option<Reader> {
        let mut vias = vec![Via::Ourselves];
        if !ask.fleet {
            vias.extend([Via::OwnerServed, Via::Owner]);
        }
        vias.into_iter().find_map(|via| {
            let download = self.nars.get(&(fh, via))?;
            match via {
                Via::OwnerServed => {
                    let rest = download.relay.subscribe()?;
                    Some(Reader { download, rest })
                }
                _ => download.served_reader(),
            }
        })
    }

    /// Whether a download of a NAR whose file is `size` bytes may make nixgate's own file
    /// beside it: the pair must not crowd the cache (`served::CAP_SHARE`).
    pub(in crate::fetch) fn tap_fits(&self, size: u64) -> bool {
        size.saturating_mul(2) <= self.store.max_bytes() / super::super::served::CAP_SHARE
    }

    /// Whether the disk, too, has room for a NAR's pair of files of `size` bytes each: a
    /// quarter of the free space, as of the cap. Checked before a cold narinfo names
    /// nixgate's file, whose readers are aborted when the disk fills mid-way (a failed tap is
    /// not switched to a live transcode, `fetch/live.rs`).
    pub(in crate::fetch) fn disk_fits(&self, size: u64) -> bool {
        let share = super::super::served::CAP_SHARE;
        let free = self.store.disk_free();
        free.is_none_or(|free| size.saturating_mul(2) <= free / share)
    }

    /// The tap for the download of `plan` and its tail, when the download should make
    /// nixgate's own file (see the module's comment); `None` otherwise, or when the store
    /// cannot take the second file (the post-commit transcode remains).
    /// `other_writer`: nixgate's own file is being streamed from an owner already (looked
    /// up before the download map's lock is taken, under which this runs).
    pub(super) fn tap(self: &Arc<Self>, plan: &Plan, other_writer: bool) -> Option<(Tap, Tail)> {
        let as_ = self.serve?;
        let (_, nar_size) = plan.nar?;
        let c = plan.compression.unwrap_or(Compression::None);
        let wanted = self.signed.contains_key(&plan.fh);
        if !wanted || !decode::supports(c) || c.extension() == as_.extension() {
            return None;
        }
        if !self.tap_fits(plan.size.unwrap_or(nar_size))
            || self.store.holds_served(&plan.fh, as_.extension())
            || other_writer
        {
            return None;
        }
        let file = self
            .store
            .begin_served(plan.fh, as_.extension(), plan.size)
            .ok()?;
        let read = File::open(file.path()).map_err(|e| file.failed(e)).ok()?;
        let (tx, rx) = watch::channel(Progress::Running(0));
        let tap = Tap::new(as_, file, nar_size, tx, self.metrics.clone());
        let tap = tap
            .inspect_err(|e| tracing::warn!(file_hash = %plan.fh, error = %e, "cannot start the transcode tap"))
            .ok()?;
        let tail = Tail {
            file: Arc::new(read),
            progress: rx,
        };
        Some((tap, tail))
    }

    /// The download verified: the tap's file is finished and committed on the blocking pool
    /// (fsync, rename), then its readers get their last byte. A failure aborts them only.
    pub(super) async fn commit_tap(&self, plan: &Plan, tap: Tap) {
        let done = tokio::task::spawn_blocking(move || tap.finish()).await;
        match done {
            Ok(Ok(bytes)) => {
                tracing::debug!(file_hash = %plan.fh, bytes, "NAR transcoded as it was fetched")
            }
            Ok(Err(e)) => {
                tracing::warn!(file_hash = %plan.fh, error = %e, "transcode not stored; the upstream's file is served meanwhile")
            }
            Err(e) => {
                tracing::error!(file_hash = %plan.fh, error = %e, "transcode commit panicked")
            }
        }
    }
}
