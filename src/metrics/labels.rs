//! The label enums of the metrics: each value's label text, and the list of all values (so
//! counters are arrays indexed by the enum and rendering walks every label).

macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($v:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($v),+ }
        impl $name {
            /// Every value, in label order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            /// How many values there are (array sizes).
            pub const COUNT: usize = Self::ALL.len();
            /// The label value.
            pub fn as_str(self) -> &'static str { match self { $($name::$v => $s),+ } }
        }
        impl LabelValue for $name {
            fn label(&self) -> &'static str { self.as_str() }
        }
    };
}

label_enum!(
    /// The route a request matched.
    Route {
        CacheInfo => "nix-cache-info", NarInfo => "narinfo", Nar => "nar", Listing => "ls",
        Log => "log", Realisation => "realisation", Health => "healthz", Ready => "readyz",
        Metrics => "metrics", Peers => "p2p-peers", Torrent => "p2p-torrent",
        Digest => "p2p-digest", Status => "status", Other => "other",
    }
);

impl Route {
    /// Whether a request to this route can end in `outcome` (series of the others are not
    /// exported unless one happened anyway).
    pub fn can_end(self, outcome: Outcome) -> bool {
        use Outcome::*;
        match self {
            // Content routes: looked up, fetched, refused, and (narinfo, nar) uploaded.
            Route::NarInfo | Route::Nar => true,
            Route::Listing | Route::Log | Route::Realisation => outcome != Stored,
            Route::CacheInfo | Route::Health | Route::Metrics | Route::Status => outcome == Hit,
            Route::Ready => matches!(outcome, Hit | Unavailable),
            Route::Peers | Route::Torrent | Route::Digest => {
                matches!(outcome, Hit | NotFound | BadRequest | Unavailable)
            }
            Route::Other => matches!(outcome, NotFound | BadRequest),
        }
    }
}

label_enum!(
    /// How a request ended.
    Outcome {
        Hit => "hit", Miss => "miss", NotFound => "not_found", NotCached => "not_cached",
        Unavailable => "unavailable", BadRequest => "bad_request", Error => "error",
        Stored => "stored",
    }
);

label_enum!(
    /// Where fetched bytes came from.
    Source {
        Upstream => "upstream", Peer => "peer", Torrent => "torrent", Fleet => "fleet",
        Bucket => "bucket",
    }
);

label_enum!(
    /// The class of an upstream answer.
    UpstreamStatus {
        Ok => "200", NotFound => "404", ClientError => "4xx", ServerError => "5xx",
        ConnectError => "connect_error", Timeout => "timeout", CircuitOpen => "circuit_open",
        AuthFailed => "auth_failed", Other => "other",
    }
);

label_enum!(
    /// Why the cache could not store a download (it was streamed through instead).
    StoreFailure {
        NoSpace => "no_space", CapReached => "cap_reached", Io => "io_error",
        Indexing => "indexing",
    }
);

label_enum!(
    /// The kind of slot a client connection holds (`--max-connections` or the reserve).
    ConnSlot { Regular => "regular", Reserve => "reserve" }
);

label_enum!(
    /// Why a client connection was closed on accept.
    Refusal { PerIp => "per_ip", Global => "global" }
);

label_enum!(
    /// Why data from a source was refused before any check of its content could pass: a
    /// narinfo `URL` outside the configured origins, a compression nixgate cannot check, a
    /// body that decompresses to no NAR, a source slower than the minimum progress.
    Untrusted {
        NarinfoUrl => "narinfo_url", Compression => "compression", NotANar => "not_a_nar",
        TooSlow => "too_slow",
    }
);

label_enum!(
    /// How an upload request (`PUT`) ended.
    UploadOutcome {
        Stored => "stored", Staged => "staged", Replicated => "replicated",
        Deleted => "deleted", Ignored => "ignored", Unauthorized => "unauthorized", Rejected => "rejected",
        Untrusted => "untrusted", Conflict => "conflict", TooLarge => "too_large",
        Full => "full", Timeout => "timeout", Error => "error",
    }
);

label_enum!(
    /// What went wrong with the object store (`--object-store`).
    ObjectStoreError {
        Connect => "connect", Timeout => "timeout", Server => "server", Denied => "denied",
        Refused => "refused", Local => "local", Other => "other",
    }
);

/// A label enum's value as it appears in the exposition.
pub(super) trait LabelValue {
    fn label(&self) -> &'static str;
}
