//! Why a configuration cannot be used, each message naming the setting (as its flag).

use std::path::PathBuf;

use thiserror::Error;

use crate::nix::signature::KeyError;
use crate::units::UnitError;

/// A setting that cannot be used, with the setting's name in the message.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}{at}: {message}")]
    ParseFile {
        path: PathBuf,
        /// ` line N (key K)`, or empty when the parser gave no position.
        at: String,
        message: String,
    },
    #[error("--object-store: {0}")]
    ObjectStore(#[from] crate::objstore::UrlError),
    #[error("--object-store credentials: {0}")]
    ObjectStoreCredentials(#[from] crate::objstore::credentials::CredentialsError),
    #[error("--listen {0:?} is not an address like [::]:8080 or 0.0.0.0:8080")]
    Listen(String),
    #[error("--{flag}: {source}")]
    Unit {
        flag: &'static str,
        source: UnitError,
    },
    #[error("--max-cache-size must be at least 1MiB")]
    CacheTooSmall,
    #[error("--upstream {url:?}: {reason}")]
    Upstream { url: String, reason: String },
    #[error("--trusted-public-key: {0}")]
    Key(#[from] KeyError),
    #[error("no --trusted-public-key given: nothing could ever be verified")]
    NoKeys,
    #[error("--upstream-down-status must be 503 or 404, not {0}")]
    DownStatus(u16),
    #[error("--peer {url:?}: {reason}")]
    Peer { url: String, reason: String },
    #[error("--peers-dns {0:?} is not NAME or NAME:PORT")]
    PeersDns(String),
    #[error("--torrent-listen {0:?} is not an address like [::]:6881 or 0.0.0.0:6881")]
    TorrentListen(String),
    #[error(
        "--tracker needs a fixed --torrent-listen port (not 0): trackers hand it out to peers"
    )]
    TrackerNeedsPort,
    #[error("--tracker {url:?}: {reason}")]
    Tracker { url: String, reason: String },
    #[error("--{0} must not be 0")]
    ZeroLimit(&'static str),
    #[error("--netrc-file {path}: {reason}")]
    Netrc { path: PathBuf, reason: String },
    #[error("--{flag} {path}: {reason}")]
    SecretFile {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--cache-dir {path}: {reason}")]
    CacheDir {
        path: PathBuf,
        reason: crate::store::NotWritable,
    },
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("--ca-file {0}")]
    CaFile(crate::upstream::egress::CaFileError),
}
