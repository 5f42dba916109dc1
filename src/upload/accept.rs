//! `PUT /<hash>.narinfo`: the narinfo of an upload is taken only when it is for the path its
//! URL names, carries FileHash/FileSize, names a staged NAR that matches them and decompresses
//! to its NarHash/NarSize, and is signed by a trusted key (or signed here with the signing
//! key). It never replaces a path the cache holds from an upstream, nor a different upload.
//! A NAR the cache or another upload holds is read from the store's hit, never by path.

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use hyper::body::Body;

use super::{body, storage, UploadError, Uploader};
use crate::fetch::verify::NarCheck;
use crate::fetch::FetchError;
use crate::metrics::UploadOutcome;
use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;
use crate::nix::narinfo::{NarInfo, MAX_NARINFO_BYTES};
use crate::nix::store_path::StorePathHash;
use crate::nix::STORE_DIR;
use crate::store::uploads::{Admission, HeldError};

fn rejected(why: impl std::fmt::Display) -> UploadError {
    UploadError::Rejected(why.to_string())
}

/// What is served for a path before an upload of it.
enum Existing {
    Absent,
    /// Served (its narinfo, if it parses).
    Present(Option<Box<NarInfo>>),
    /// The upstreams could not be asked.
    Unknown(FetchError),
}

/// Whether an upload may go ahead ([`Uploader::conflicts`]).
enum Go {
    /// The same upload is held or served already: done.
    Done(UploadOutcome),
    /// Nothing stands in its way.
    Ahead,
    /// The upstreams could not be asked: only a narinfo that carries a trusted signature of
    /// its own may be taken.
    Unasked(FetchError),
}

/// The largest NarSize an upload may claim per byte of its file: a bigger ratio is refused
/// before anything is decompressed (a decompression bomb would otherwise hash for hours).
const MAX_RATIO: u64 = 256;

/// A parsed upload narinfo with what it names.
struct Claim {
    ni: NarInfo,
    fh: Sha256,
    file_size: u64,
    compression: Compression,
}

/// Parses the body and checks its shape: the right path, FileHash/FileSize, a compression
/// nixgate can decompress (to check NarHash).
fn parse(h: &StorePathHash, body: &[u8]) -> Result<Claim, UploadError> {
    let text = std::str::from_utf8(body).map_err(|_| rejected("narinfo is not UTF-8"))?;
    let ni = NarInfo::parse(text, STORE_DIR).map_err(rejected)?;
    if ni.base.hash != *h {
        return Err(rejected(format!(
            "narinfo is for {}, not {h}",
            ni.store_path
        )));
    }
    let (Some(fh), Some(file_size)) = (ni.file_hash, ni.file_size) else {
        return Err(rejected("narinfo lacks FileHash/FileSize"));
    };
    if ni.nar_size > file_size.saturating_mul(MAX_RATIO).max(1 << 20) {
        return Err(rejected(format!(
            "NarSize {} is over {MAX_RATIO} times FileSize {file_size}",
            ni.nar_size
        )));
    }
    let compression = Compression::from_field(ni.compression.as_deref());
    if NarCheck::signed(compression, ni.nar_hash, ni.nar_size).is_err() {
        return Err(rejected(
            "nixgate cannot decompress this Compression to check NarHash",
        ));
    }
    Ok(Claim {
        ni,
        fh,
        file_size,
        compression,
    })
}

/// Checks a staged file against FileSize and NarHash/NarSize (FileHash was checked when it
/// was staged). Blocking I/O.
fn check_staged(path: &Path, c: &Claim) -> Result<(), UploadError> {
    let file = std::fs::File::open(path).map_err(storage)?;
    let size = file.metadata().map_err(storage)?.len();
    check_nar(file, size, c)
}

/// Checks a NAR of `size` bytes read from `file` against FileSize and NarHash/NarSize.
/// Blocking I/O.
fn check_nar(mut file: impl Read, size: u64, c: &Claim) -> Result<(), UploadError> {
    if size != c.file_size {
        return Err(rejected(format!(
            "NAR has {size} bytes, FileSize says {}",
            c.file_size
        )));
    }
    let mut check = NarCheck::signed(c.compression, c.ni.nar_hash, c.ni.nar_size)
        .expect("parse checked the compression");
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(storage)?;
        if n == 0 {
            break;
        }
        check.update(&buf[..n]).map_err(rejected)?;
    }
    check.finish().map_err(rejected)
}

impl Uploader {
    /// `PUT /<h>.narinfo`; `fleet`: a replica from another member (never signed here).
    pub async fn put_narinfo<B>(
        &self,
        h: StorePathHash,
        fleet: bool,
        mut body: B,
    ) -> Result<UploadOutcome, UploadError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let limit = MAX_NARINFO_BYTES as u64;
        let bytes = body::to_memory(&mut body, limit, self.settings.body_stall).await?;
        let mut claim = parse(&h, &bytes)?;
        let unknown = match self.conflicts(&h, &claim, fleet).await? {
            Go::Done(done) => {
                self.drop_staged(&claim).await;
                return Ok(done);
            }
            Go::Ahead => None,
            Go::Unasked(why) => Some(why),
        };
        self.vouch(&mut claim.ni, fleet, unknown)?;
        let (fh, ext) = (claim.fh, claim.compression.extension());
        claim.ni.url = format!("nar/{}.nar{ext}", fh.to_nix32());
        let text = Bytes::from(claim.ni.to_string());
        if let Err(e) = self.hold(h, claim, text.clone()).await {
            // Another runner pushed the same path meanwhile: done all the same.
            if self.store.uploads().narinfo(&h).await.as_deref() == Some(&text[..]) {
                return Ok(UploadOutcome::Stored);
            }
            return Err(e);
        }
        if !fleet {
            // The member that took the runner's upload writes it to the bucket (once).
            self.fetcher.to_bucket(h);
            let replicated = self.replicate(h, fh, ext, text).await;
            for _ in 0..replicated {
                self.metrics.upload(UploadOutcome::Replicated);
            }
        }
        Ok(UploadOutcome::Stored)
    }

    /// Whether `h` may be uploaded with these contents. The same upload again is done
    /// (`Some`). Otherwise the path must not be served already (held uploads, the cache, the
    /// fleet's owner, the upstreams: [`Uploader::existing`]) with other contents: an upload
    /// never replaces a path an upstream signs. The same contents (same fingerprint: store
    /// path, NarHash, NarSize, References) are done, except for a fleet replica, which is
    /// pinned.
    async fn conflicts(
        &self,
        h: &StorePathHash,
        c: &Claim,
        fleet: bool,
    ) -> Result<Go, UploadError> {
        let same = |ni: &NarInfo| ni.fingerprint(STORE_DIR) == c.ni.fingerprint(STORE_DIR);
        if let Some(held) = self.store.uploads().narinfo(h).await {
            let held = std::str::from_utf8(&held)
                .ok()
                .and_then(|t| NarInfo::parse(t, STORE_DIR).ok());
            return match held.is_some_and(|ni| same(&ni) && ni.file_hash == Some(c.fh)) {
                true => Ok(Go::Done(UploadOutcome::Stored)),
                false => Err(UploadError::Conflict(format!(
                    "{h} was uploaded with other contents"
                ))),
            };
        }
        match self.existing(h, fleet).await {
            Existing::Absent => Ok(Go::Ahead),
            Existing::Unknown(why) => Ok(Go::Unasked(why)),
            Existing::Present(Some(ni)) if same(&ni) => match fleet {
                true => Ok(Go::Ahead),
                false => Ok(Go::Done(UploadOutcome::Stored)),
            },
            Existing::Present(_) => Err(UploadError::Conflict(format!(
                "{h} is served already (by an upstream, the cache or the fleet) with other \
                 contents; an upload never replaces it"
            ))),
        }
    }

    /// The narinfo of `h` that would be served without this upload, asked as a GET would
    /// (a fleet replica asks no other member).
    async fn existing(&self, h: &StorePathHash, fleet: bool) -> Existing {
        let ask = crate::fetch::Ask {
            only_if_cached: false,
            fleet,
        };
        match self.fetcher.narinfo(*h, ask).await {
            Ok((bytes, _)) => Existing::Present(
                std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|t| NarInfo::parse(t, STORE_DIR).ok())
                    .map(Box::new),
            ),
            Err(FetchError::NotFound) => Existing::Absent,
            Err(e) => Existing::Unknown(e),
        }
    }

    /// Requires a trusted signature, or adds the appliance's: never for a fleet replica, nor
    /// when the upstreams could not be asked (`unknown`: they may sign this path).
    fn vouch(
        &self,
        ni: &mut NarInfo,
        fleet: bool,
        unknown: Option<FetchError>,
    ) -> Result<(), UploadError> {
        let fp = ni.fingerprint(STORE_DIR);
        if self.keys.verifies_any(&fp, &ni.sigs) {
            return Ok(());
        }
        if let Some(why) = unknown {
            return Err(UploadError::Unavailable(why));
        }
        match &self.settings.signing_key {
            Some(k) if !fleet => {
                ni.sigs.push(k.0.sign(&fp));
                Ok(())
            }
            _ => Err(UploadError::Untrusted),
        }
    }

    /// Checks the staged NAR and moves it, with the narinfo `text`, into the held uploads.
    /// Nix does not upload a NAR the appliance already answers HEAD for: one the LRU cache
    /// holds is linked (or, evicted since it was opened, copied) from its hit into staging,
    /// so an eviction cannot take it, and checked like an uploaded one.
    async fn hold(&self, h: StorePathHash, c: Claim, text: Bytes) -> Result<(), UploadError> {
        let ext = c.compression.extension();
        let staged = self.staging.take(&c.fh, ext).map(|s| s.path);
        let (cached, held) = match staged {
            Some(_) => (None, None),
            None => (
                self.store.nar(&c.fh, ext).await.map_err(storage)?,
                self.store
                    .uploads()
                    .nar(&c.fh, ext)
                    .await
                    .map_err(storage)?,
            ),
        };
        let (store, link) = (self.store.clone(), self.staging.temp());
        tokio::task::spawn_blocking(move || {
            let staged = staged.or_else(|| {
                cached?.link_into(link.path()).ok()?;
                Some(link.keep())
            });
            match staged {
                Some(path) => {
                    let res = check_staged(&path, &c)
                        .and_then(|()| admit(&store, h, &c, &text, Some(&path)));
                    let _ = std::fs::remove_file(&path); // gone when admitted
                    res
                }
                None => match held {
                    // Another upload holds this NAR: checked against this narinfo too.
                    Some(held) => check_nar(held.reader(), held.len(), &c)
                        .and_then(|()| admit(&store, h, &c, &text, None)),
                    None => Err(rejected(format!(
                        "NAR {}.nar{ext} was not uploaded first (or waited past \
                         --upload-staging-age)",
                        c.fh.to_nix32()
                    ))),
                },
            }
        })
        .await
        .map_err(storage)?
    }

    /// Drops a staged NAR that is not needed (its path is held already).
    async fn drop_staged(&self, c: &Claim) {
        if let Some(s) = self.staging.take(&c.fh, c.compression.extension()) {
            let _ = tokio::fs::remove_file(s.path).await;
        }
    }
}

fn admit(
    store: &crate::store::Store,
    h: StorePathHash,
    c: &Claim,
    text: &[u8],
    staged: Option<&Path>,
) -> Result<(), UploadError> {
    let admission = Admission {
        hash: h,
        file_hash: c.fh,
        ext: c.compression.extension(),
        narinfo: text,
        staged,
        nar_size: c.file_size,
    };
    store.uploads().admit(admission).map_err(|e| match e {
        HeldError::Full { .. } => UploadError::Full(e.to_string()),
        HeldError::Exists(_) => UploadError::Conflict(e.to_string()),
        HeldError::Store(e) => storage(e),
    })
}
