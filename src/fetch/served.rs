//! Serving runners nixgate's own file of a NAR (`--serve-compression`, docs/ZSTD.md): the
//! narinfo a client gets, the background transcode (coalesced per NAR) once a runner that
//! decodes nixgate's file asked for the path and its NAR is held, and a request for the served file that the cache does not hold (evicted, or named by a
//! narinfo a runner kept): the upstream's NAR is fetched (verified as always), transcoded,
//! then served, so a URL nixgate handed out never 404s while an upstream has the path.
//!
//! Who gets what: a client whose User-Agent names a Nix that decodes the served compression
//! ([`accepts_zstd`]), once the file exists; everyone else (old Nix, curl, peers and fleet
//! members, which send `nixgate/…`) gets the narinfo as today, byte for byte.

use std::sync::Arc;

use bytes::Bytes;

use super::nar::NarSource;
use super::narinfo::parse_stored;
use super::transcode::{transcode, Signed, TranscodeError};
use super::{Ask, FetchError, Fetcher};
use crate::metrics::NarinfoAs;
use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;
use crate::nix::narinfo::NarInfo;
use crate::nix::served::{accepts_zstd, Served};
use crate::nix::store_path::StorePathHash;

/// The signed facts of a narinfo, and its FileHash.
pub(super) fn signed_of(ni: &NarInfo) -> Option<(Sha256, Signed)> {
    let signed = Signed {
        compression: Compression::from_field(ni.compression.as_deref()),
        nar_hash: ni.nar_hash,
        nar_size: ni.nar_size,
    };
    Some((ni.file_hash?, signed))
}

/// nixgate's own file is made only when the NAR and it (about twice the NAR's file) take at
/// most this share of `--max-cache-size`: 1/4.
pub(super) const CAP_SHARE: u64 = 4;

impl Fetcher {
    /// What nixgate serves runners its NARs as, if not the upstream's compression (also
    /// `/nix-cache-info`'s capability header for fleet members, `peers::fleet`).
    pub fn serves(&self) -> Option<Served> {
        self.serve
    }

    /// The narinfo to send a client with this User-Agent, given the narinfo of `h` as fetched
    /// (and verified): naming nixgate's own file when the client decodes it and it is held, or
    /// the NAR is not held at all (cold: its download will make the file as it goes,
    /// `tap.rs`); else the narinfo unchanged (and, for a client that would have been served
    /// it, the transcode of the held NAR is started in the background). The rendering is
    /// made once per stored narinfo (`rendered.rs`).
    pub fn narinfo_for(
        self: &Arc<Self>,
        h: StorePathHash,
        b: Bytes,
        user_agent: Option<&str>,
    ) -> Bytes {
        let (b, as_) = self.narinfo_as(h, b, user_agent);
        self.metrics.transcode.narinfo(as_);
        b
    }

    /// [`Self::narinfo_for`], and what the answer names.
    fn narinfo_as(
        self: &Arc<Self>,
        h: StorePathHash,
        b: Bytes,
        user_agent: Option<&str>,
    ) -> (Bytes, NarinfoAs) {
        let Some(as_) = self.serves() else {
            return (b, NarinfoAs::Upstream);
        };
        let decodes = match as_ {
            Served::Zstd => accepts_zstd(user_agent),
            Served::None => user_agent.is_some_and(|ua| ua.contains("Nix/")),
        };
        if !decodes {
            return match user_agent.is_some_and(|ua| ua.contains("Nix/")) {
                true => (b, NarinfoAs::UpstreamOldNix),
                false => (b, NarinfoAs::Upstream),
            };
        }
        let Some(r) = self.rendered.get(h, &b) else {
            return (b, NarinfoAs::Upstream);
        };
        let (fh, signed) = (r.fh, r.signed);
        // Not on every request (a moka insert, or even a read, per request cost the rate):
        // once a minute per narinfo; the request for our file (`served_miss`) finds the facts
        // in the store if they expired in between.
        if self.rendered.signed_due(&r) {
            self.signed.insert(fh, signed);
        }
        let rendered = match as_ {
            Served::Zstd => NarinfoAs::Zstd,
            Served::None => NarinfoAs::None,
        };
        if self.store.holds_served(&fh, as_.extension()) {
            return (r.text.clone(), rendered);
        }
        let held = self
            .store
            .nar_unchecked(&fh, signed.compression.extension())
            .is_some()
            || self.store.uploads().holds(&r.hash).is_some();
        if !held && self.tap_fits(r.size) && self.disk_fits(r.size) {
            return (r.text.clone(), rendered);
        }
        self.transcode_soon(fh, signed);
        (b, NarinfoAs::Upstream)
    }

    /// Starts the transcode of NAR `fh` in the background (joined if one is under way).
    pub(super) fn transcode_soon(self: &Arc<Self>, fh: Sha256, signed: Signed) {
        if self.serves().is_none() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.transcode(fh, signed).await {
                tracing::warn!(file_hash = %fh, error = %e, "transcode failed; the upstream's file is served meanwhile");
            }
        });
    }

    /// Makes nixgate's own file of NAR `fh` from the held NAR, once however many ask.
    pub(super) async fn transcode(
        self: &Arc<Self>,
        fh: Sha256,
        signed: Signed,
    ) -> Result<(), Arc<TranscodeError>> {
        let Some(as_) = self.serves() else {
            return Ok(());
        };
        if self.store.holds_served(&fh, as_.extension()) {
            return Ok(());
        }
        let this = self.clone();
        let make = move || async move {
            let res = this.transcode_once(fh, signed, as_).await;
            if !matches!(res, Ok(false)) {
                this.metrics.transcode.ended(res.is_ok());
            }
            res.map(drop).map_err(Arc::new)
        };
        self.transcodes.run(fh, make).await.0
    }

    /// The transcode itself; `false` when the NAR is not held (not fetched yet, evicted, or
    /// relayed uncached): nothing to do until its download commits.
    async fn transcode_once(
        &self,
        fh: Sha256,
        signed: Signed,
        as_: Served,
    ) -> Result<bool, TranscodeError> {
        let from = signed.compression.extension();
        let Ok(Some(hit)) = self.cached(fh, from).await else {
            return Ok(false);
        };
        // The pair (the upstream's file and ours, about as large) must not crowd the cache, nor
        // push out the very NAR it is made from: a NAR this large keeps only its own file.
        if hit.len().saturating_mul(2) > self.store.max_bytes() / CAP_SHARE {
            tracing::debug!(file_hash = %fh, bytes = hit.len(), "NAR too large beside the cap to keep a second file; serving the upstream's");
            self.metrics.transcode.skipped();
            return Ok(false);
        }
        let file = self
            .store
            .begin_served(fh, as_.extension(), Some(hit.len()))?;
        let metrics = self.metrics.clone();
        let job = tokio::task::spawn_blocking(move || {
            let t = transcode(hit.reader(), signed, as_, file)?;
            t.file.commit()?;
            metrics
                .transcode
                .transcoded(t.nar_bytes, t.out_bytes, t.cpu);
            tracing::debug!(file_hash = %fh, nar_bytes = t.nar_bytes, bytes = t.out_bytes, decode_cpu_s = t.cpu.decode.as_secs_f64(), encode_cpu_s = t.cpu.encode.as_secs_f64(), "NAR transcoded");
            Ok(true)
        });
        job.await
            .map_err(|e| TranscodeError::Encode(std::io::Error::other(e)))?
    }

    /// A request for nixgate's own file `<fh>.nar<ext>` that the cache does not hold: a
    /// member streams it from the key's owner when that owner serves the same (`owned.rs`);
    /// else, when the upstream's NAR is not held either, its download (joined or started)
    /// makes the file as it goes and the runner tails it; else the held NAR is transcoded,
    /// then served. When the cache cannot store, the file is made live for this runner
    /// (`live.rs`). `None` when `ext` names no file of nixgate's for `fh` (the upstream's own).
    ///
    /// A member's request (`ask.fleet`) gets the tail of a download that makes the file, or
    /// the file; else a 404 at once (no narinfo of it held here, the upstream's file held
    /// but not ours yet, or a download that makes none): the member then asks for the
    /// upstream's file and transcodes it itself, rather than wait here past its first-byte
    /// bound. The transcode starts here meanwhile, for the next member.
    pub(super) async fn served_miss(
        self: &Arc<Self>,
        fh: Sha256,
        ext: &'static str,
        ask: Ask,
    ) -> Result<Option<NarSource>, FetchError> {
        let Some(as_) = self.serves().filter(|s| s.extension() == ext) else {
            return Ok(None);
        };
        let Some(signed) = self.signed_facts(&fh).await else {
            return match ask.fleet {
                true => Err(FetchError::NotFound),
                false => Ok(None),
            };
        };
        let from = signed.compression.extension();
        if from == ext {
            return Ok(None);
        }
        // A download of the upstream's file under way that makes ours: its tail (no second
        // writer of the same file).
        if let Some(tail) = self.tail_under_way(fh, ask) {
            return Ok(Some(NarSource::Download(tail)));
        }
        let held = self.cached(fh, from).await?.is_some();
        // The owner's file, unless we hold the upstream's: then it is transcoded here, rather
        // than have an owner that may not hold it fetch it from the upstream once more.
        if !ask.fleet && !held {
            if let Some(reader) = self.from_owner(fh, as_, signed).await {
                return Ok(Some(NarSource::Download(reader)));
            }
        }
        if !held {
            if let Some(source) = self.via_download(fh, as_, signed, ask).await? {
                return Ok(Some(source));
            }
        } else if ask.fleet {
            self.transcode_soon(fh, signed);
            return Err(FetchError::NotFound);
        }
        self.served_or_live(fh, signed, ext).await.map(Some)
    }

    /// The upstream's file fetched (or its download joined) for nixgate's own: the tail of
    /// its tap; a live transcode when the cache cannot store it; a peer's own file when the
    /// upstreams are down. `None` once the NAR is held (the caller transcodes it). A member's
    /// request gets a 404 rather than wait (see [`Self::served_miss`]).
    async fn via_download(
        self: &Arc<Self>,
        fh: Sha256,
        as_: Served,
        signed: Signed,
        ask: Ask,
    ) -> Result<Option<NarSource>, FetchError> {
        // A download started from here taps (`nar/tapped.rs`).
        self.signed.insert(fh, signed);
        let source = match Box::pin(self.nar(fh, signed.compression.extension(), ask)).await {
            Ok((source, _)) => source,
            Err(e @ FetchError::Unavailable { .. }) if !ask.fleet => {
                // The upstreams are down: a peer may hold our file of it (a fleet member
                // keeps only that one of the NARs it does not own).
                let reader = self.from_peers(fh, as_, signed).await;
                return reader.map(|r| Some(NarSource::Download(r))).ok_or(e);
            }
            Err(e) => return Err(e),
        };
        match source {
            // Held after all (committed meanwhile, or from the bucket): a member is not kept
            // waiting for the transcode.
            NarSource::Cached(_) if ask.fleet => {
                self.transcode_soon(fh, signed);
                Err(FetchError::NotFound)
            }
            NarSource::Cached(_) => Ok(None),
            NarSource::Download(r) => {
                if let Some(tail) = r.download.served_reader() {
                    return Ok(Some(NarSource::Download(tail)));
                }
                if ask.fleet {
                    return Err(FetchError::NotFound);
                }
                self.untapped(fh, signed, r).await
            }
            NarSource::Passthrough { .. } if ask.fleet => Err(FetchError::NotFound),
            NarSource::Passthrough { chunks, .. } => self.live(fh, signed, chunks).map(Some),
        }
    }

    /// Whether a GET of `<fh>.nar<ext>`, not held, would be served nixgate's own file (its
    /// signed facts known, `ext` naming it): a HEAD then answers that it exists, size unknown,
    /// without a fetch (the upstream has no such name).
    pub(super) async fn serves_unheld(&self, fh: &Sha256, ext: &str, ask: Ask) -> bool {
        if self.serves().is_none_or(|s| s.extension() != ext) || ask.fleet {
            return false;
        }
        let signed = self.signed_facts(fh).await;
        signed.is_some_and(|s| {
            s.compression.extension() != ext && super::decode::supports(s.compression)
        })
    }

    /// The signed facts of NAR `fh`: from a narinfo served lately, or one the cache holds.
    async fn signed_facts(&self, fh: &Sha256) -> Option<Signed> {
        if let Some(s) = self.signed.get(fh) {
            return Some(s);
        }
        let stored = self.store.narinfos_of(fh).await;
        let mut all = stored.iter().filter_map(parse_stored);
        all.find_map(|(_, ni)| signed_of(&ni).filter(|(f, _)| f == fh))
            .map(|(_, s)| s)
    }

    /// After a download of NAR `fh` was verified and committed: its transcode, when a runner
    /// that decodes nixgate's own file asked for its narinfo lately (so paths only peers,
    /// old clients or plain HTTP clients want cost no CPU or disk; an upload is transcoded
    /// when such a runner first asks for it).
    pub(super) fn downloaded(self: &Arc<Self>, fh: Sha256) {
        let Some(signed) = self.signed.get(&fh) else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let from = signed.compression.extension();
            // Relayed uncached (no room) is no file to transcode.
            if let Ok(Some(_)) = this.cached(fh, from).await {
                this.transcode_soon(fh, signed);
            }
        });
    }
}
