//! Why a fetch produced nothing, typed by class and origin (as pingora's error type and
//! source): [`FetchError`] says whether it is absent (a real 404), unavailable (and from whom:
//! [`Origin`], and how: [`Broke`]), refused by a check ([`VerifyError`] names which), or the
//! local disk's fault. The fallback decisions (`fetch::nar`, `fetch::narinfo`, `upload`, the
//! HTTP status in `http/error.rs`) are `match`es on these, never on message text.

use thiserror::Error;

use super::verify::VerifyError;
use crate::torrent::SwarmError;
use crate::upstream::UpstreamError;

/// Why a fetch produced nothing. Cloneable: every coalesced waiter gets the same answer.
#[derive(Debug, Clone, Error)]
pub enum FetchError {
    /// Every upstream answered and none has it (a real 404).
    #[error("not found upstream")]
    NotFound,
    /// At least one source failed and none had it: answer 503, never a false 404.
    #[error("{from} unavailable: {error}")]
    Unavailable { from: Box<Origin>, error: Broke },
    /// The data came but did not verify; nothing was stored.
    #[error("verification failed: {0}")]
    Verification(#[from] VerifyError),
    /// The local disk failed (full, read-only, …). A message: the disk's failures decide
    /// nothing here (`store` has classified them already).
    #[error("cache storage: {0}")]
    Storage(String),
}

/// Who could not deliver.
#[derive(Debug, Clone)]
pub enum Origin {
    Upstream(url::Url),
    /// Every upstream that was asked (a passthrough continues from any of them).
    Upstreams,
    Peer(url::Url),
    Fleet(url::Url),
    Swarm,
    /// The object store, at its prefix's URL.
    Bucket(url::Url),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Upstream(u) => write!(f, "upstream {u}"),
            Origin::Upstreams => f.write_str("the upstreams"),
            Origin::Peer(u) => write!(f, "peer {u}"),
            Origin::Fleet(u) => write!(f, "fleet member {u}"),
            Origin::Swarm => f.write_str("the swarm"),
            Origin::Bucket(u) => write!(f, "object store {u}"),
        }
    }
}

/// How a source failed to deliver.
#[derive(Debug, Clone, Error)]
pub enum Broke {
    #[error(transparent)]
    Http(#[from] UpstreamError),
    #[error(transparent)]
    Swarm(#[from] SwarmError),
}

impl Broke {
    /// The source sent too little for too long (drip-fed or stalled).
    pub fn too_slow(&self) -> bool {
        matches!(
            self,
            Broke::Http(UpstreamError::TooSlow { .. } | UpstreamError::Stalled(_))
        )
    }
}

impl FetchError {
    /// `from` could not deliver: `error`.
    pub fn unavailable(from: Origin, error: impl Into<Broke>) -> Self {
        FetchError::Unavailable {
            from: Box::new(from),
            error: error.into(),
        }
    }

    /// The local disk failed.
    pub(crate) fn storage(e: impl std::fmt::Display) -> Self {
        FetchError::Storage(e.to_string())
    }
}
