//! Uploads from runners (`nix copy --to http://appliance`): `PUT /nar/<FileHash>.nar<ext>`
//! then `PUT /<hash>.narinfo`, each only with the upload token (`auth.rs`).
//!
//! Nothing unverified is kept: a NAR is staged (`staging.rs`) only when its bytes match the
//! FileHash of its URL; a narinfo is taken only when its staged NAR matches FileSize and
//! decompresses to NarHash/NarSize, and when it carries a signature by a trusted key, or the
//! appliance signs it with `--signing-key-file` (`accept.rs`). Accepted uploads are held in
//! `store::uploads`, apart from the LRU, and served by the GET routes like cached paths; in a
//! fleet they are copied to the key's rendezvous owners (`replicate.rs`).

mod accept;
mod auth;
mod body;
mod replicate;
mod settings;
mod staging;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use hyper::body::Body;
use thiserror::Error;
use tokio::io::AsyncWriteExt;

use crate::fetch::verify::{FileCheck, FileExpect};
use crate::metrics::{Metrics, UploadOutcome};
use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;
use crate::nix::signature::TrustedKeys;
use crate::peers::PeerSet;
use crate::store::Store;
pub use settings::{SecretFileError, SigningKey, UploadSettings, UploadToken};

/// Why an upload was refused; each maps to one status.
#[derive(Debug, Error)]
pub enum UploadError {
    #[error("uploads are off")]
    Off,
    #[error("missing or wrong upload token")]
    Unauthorized,
    #[error("{0}")]
    Rejected(String),
    #[error("no signature by a trusted key (and no --signing-key-file to sign it)")]
    Untrusted,
    #[error("{0}")]
    Conflict(String),
    #[error("larger than the {0} bytes allowed")]
    TooLarge(u64),
    #[error("{0}")]
    Full(String),
    #[error("the request body stalled")]
    Timeout,
    #[error("request body: {0}")]
    Body(String),
    #[error("storage: {0}")]
    Storage(String),
    /// An unsigned upload while the upstreams cannot be asked whether they sign the path.
    #[error(
        "cannot ask the upstreams whether they hold this path ({0}); an unsigned upload is \
         signed here only when no upstream does: retry later"
    )]
    Unavailable(crate::fetch::FetchError),
}

impl UploadError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            UploadError::Off => StatusCode::METHOD_NOT_ALLOWED,
            UploadError::Unauthorized => StatusCode::UNAUTHORIZED,
            UploadError::Rejected(_) | UploadError::Body(_) => StatusCode::BAD_REQUEST,
            UploadError::Untrusted => StatusCode::FORBIDDEN,
            UploadError::Conflict(_) => StatusCode::CONFLICT,
            UploadError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UploadError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            UploadError::Timeout => StatusCode::REQUEST_TIMEOUT,
            UploadError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            UploadError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The metrics outcome.
    pub fn outcome(&self) -> UploadOutcome {
        match self {
            UploadError::Off | UploadError::Rejected(_) | UploadError::Body(_) => {
                UploadOutcome::Rejected
            }
            UploadError::Unauthorized => UploadOutcome::Unauthorized,
            UploadError::Untrusted => UploadOutcome::Untrusted,
            UploadError::Conflict(_) => UploadOutcome::Conflict,
            UploadError::TooLarge(_) => UploadOutcome::TooLarge,
            UploadError::Full(_) => UploadOutcome::Full,
            UploadError::Timeout => UploadOutcome::Timeout,
            UploadError::Storage(_) | UploadError::Unavailable(_) => UploadOutcome::Error,
        }
    }
}

fn storage(e: impl std::fmt::Display) -> UploadError {
    UploadError::Storage(e.to_string())
}

/// Takes uploads: the token, the staging area, the keys, the held uploads and the fleet.
pub struct Uploader {
    settings: UploadSettings,
    store: Arc<Store>,
    keys: TrustedKeys,
    staging: staging::Staging,
    metrics: Arc<Metrics>,
    peers: Arc<PeerSet>,
    replicas: replicate::Replicator,
    /// Asks whether a path is served already (cache, fleet, upstreams) before an upload.
    fetcher: Arc<crate::fetch::Fetcher>,
}

impl Uploader {
    /// The uploader of a running appliance; `keys` are the trusted keys (with the signing
    /// key's public key, when there is one).
    pub fn new(
        settings: UploadSettings,
        store: Arc<Store>,
        keys: TrustedKeys,
        metrics: Arc<Metrics>,
        peers: Arc<PeerSet>,
        fetcher: Arc<crate::fetch::Fetcher>,
    ) -> Self {
        store.uploads().set_budget(settings.max_bytes);
        let staging = staging::Staging::new(
            store.uploads().staging_dir(),
            settings.staging_bytes,
            settings.staging_age,
            metrics.clone(),
        );
        Uploader {
            replicas: replicate::Replicator::new(settings.token.clone()),
            settings,
            store,
            keys,
            staging,
            metrics,
            peers,
            fetcher,
        }
    }

    /// Checks that uploads are on and `headers` carry the token.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), UploadError> {
        let token = self.settings.token.as_ref().ok_or(UploadError::Off)?;
        if auth::authorized(token, headers) {
            Ok(())
        } else {
            Err(UploadError::Unauthorized)
        }
    }

    /// Drops staged NARs past the age limit (also done on every upload).
    pub fn sweep(&self) {
        self.staging.sweep();
    }

    /// Records how an upload request ended.
    pub fn count(&self, outcome: UploadOutcome) {
        self.metrics.upload(outcome);
    }

    /// `PUT /nar/<fh>.nar<ext>`: streams the body to the staging area, checking it against
    /// `fh` (and the compression `ext` names); staged only when it matches.
    pub async fn put_nar<B>(
        &self,
        fh: Sha256,
        ext: &'static str,
        length: Option<u64>,
        mut body: B,
    ) -> Result<UploadOutcome, UploadError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let mut reserved = self.staging.reserve(length.unwrap_or(0))?;
        let tmp = self.staging.temp();
        let mut file = tokio::fs::File::create(tmp.path()).await.map_err(storage)?;
        let mut check = FileCheck::new(FileExpect {
            file_hash: Some(fh),
            file_size: length,
            max_size: None,
            compression: Compression::from_extension(ext),
        });
        let stall = self.settings.body_stall;
        while let Some(chunk) = body::next_chunk(&mut body, stall).await? {
            reserved.grow(check.written + chunk.len() as u64)?;
            check
                .update(&chunk)
                .map_err(|e| UploadError::Rejected(e.to_string()))?;
            file.write_all(&chunk).await.map_err(storage)?;
        }
        check
            .finish()
            .map_err(|e| UploadError::Rejected(format!("NAR does not match its URL: {e}")))?;
        file.sync_all().await.map_err(storage)?;
        self.staging.stage(fh, ext, tmp, reserved);
        Ok(UploadOutcome::Staged)
    }

    /// `PUT` of a `.ls` listing or a `log/`: read (bounded) and not kept; nixgate serves no
    /// listings or logs of uploaded paths.
    pub async fn put_ignored<B>(&self, mut body: B) -> Result<UploadOutcome, UploadError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let limit = crate::nix::narinfo::MAX_NARINFO_BYTES as u64 * 16;
        body::discard(&mut body, limit, self.settings.body_stall).await?;
        Ok(UploadOutcome::Ignored)
    }

    /// `DELETE /<hash>.narinfo`: the operator's way to free upload budget.
    pub async fn delete(
        &self,
        h: crate::nix::store_path::StorePathHash,
    ) -> Result<bool, UploadError> {
        let store = self.store.clone();
        let removed = tokio::task::spawn_blocking(move || store.uploads().remove(&h))
            .await
            .map_err(storage)?;
        if removed {
            self.fetcher.unpublish(h).await;
        }
        Ok(removed)
    }
}
