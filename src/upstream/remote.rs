//! [`Upstream`]: one remote cache (an upstream, a peer or a fleet member): its base URL, its
//! circuit breaker and its last failure. The userinfo of a configured URL
//! (`https://user:pass@host/`) is kept apart from `base`, so `base`, every URL joined onto it,
//! and the `Display` and `Debug` of an `Upstream` are safe in any log field or page.

use super::breaker::Breaker;
use super::UpstreamError;
use url::Url;

/// One configured upstream cache (or a peer or fleet member).
pub struct Upstream {
    /// Base URL, always ending in `/`, without userinfo (see [`Upstream::configured`]).
    pub base: Url,
    /// The configured URL with its userinfo redacted (`https://***@host/`): what logs and
    /// pages show, so an operator sees that credentials are configured, never which.
    label: String,
    /// The URL as configured, userinfo included: only for sending credentials.
    configured: Url,
    pub breaker: Breaker,
    /// The last failure and when (for the status page).
    last_error: std::sync::Mutex<Option<(std::time::SystemTime, String)>>,
}

impl Upstream {
    /// A remote at `configured` (ending in `/`), its breaker closed.
    pub fn new(configured: Url) -> Self {
        let label = crate::redact::redact(&configured);
        Upstream {
            breaker: Breaker::labelled(label.clone()),
            label,
            base: crate::redact::without_userinfo(&configured),
            configured,
            last_error: Default::default(),
        }
    }

    /// The same remote with a [`Breaker::background`] breaker (`threshold` failures open it
    /// for `open_for`; only a background prober closes it).
    pub fn probed_in_background(mut self, threshold: u32, open_for: std::time::Duration) -> Self {
        self.breaker = Breaker::background(self.label.clone(), threshold, open_for);
        self
    }

    /// The base URL as it may be shown (userinfo redacted), e.g. `upstream = %up.label()`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The URL as configured, userinfo included. Never display it: it is for a request layer
    /// that sends the userinfo as credentials to exactly this origin.
    pub fn configured(&self) -> &Url {
        &self.configured
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
