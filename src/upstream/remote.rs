//! [`Upstream`]: one remote cache (an upstream, a peer or a fleet member): its base URL, its
//! circuit breaker and its last failure. Its `Display` and `Debug` show the base URL with the
//! userinfo redacted, so a remote is safe in any log field.

use super::breaker::Breaker;
use super::UpstreamError;
use url::Url;

/// One configured upstream cache (or a peer or fleet member).
pub struct Upstream {
    /// Base URL, always ending in `/`. May carry userinfo: never display it; use
    /// [`Upstream::label`] or the `Display` of the `Upstream` instead.
    pub base: Url,
    /// `base` with its userinfo redacted (`https://***@host/`): what logs and pages show.
    label: String,
    pub breaker: Breaker,
    /// The last failure and when (for the status page).
    last_error: std::sync::Mutex<Option<(std::time::SystemTime, String)>>,
}

impl Upstream {
    /// A remote at `base` (ending in `/`), its breaker closed.
    pub fn new(base: Url) -> Self {
        Upstream {
            label: crate::redact::redact(&base),
            base,
            breaker: Breaker::default(),
            last_error: Default::default(),
        }
    }

    /// The base URL as it may be shown (userinfo redacted), e.g. `upstream = %up.label()`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Remembers `e` as the last failure (a skip while the circuit is open is not one).
    pub(super) fn note_error(&self, e: &UpstreamError) {
        if !matches!(e, UpstreamError::CircuitOpen) {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((std::time::SystemTime::now(), e.to_string()));
        }
    }

    /// The last failure and when it happened, if any.
    pub fn last_error(&self) -> Option<(std::time::SystemTime, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The redacted base URL ([`Upstream::label`]), so `%up` is safe in a tracing field.
impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.label)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}
