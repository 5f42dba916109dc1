//! The object-store tier (`--object-store s3://bucket/prefix?endpoint=…&region=…`): an
//! S3-compatible bucket below the local disk, shared by sites and clusters, so each unique
//! byte leaves the upstream once for the organisation (docs/OBJECT_STORE.md).
//!
//! Protocol types without I/O: `url.rs` (the validated URL), `keys.rs` (validated hashes →
//! keys in the standard binary-cache layout), `credentials.rs` (`AWS_*` or the credentials
//! file). `client.rs` signs (`rusty-s3`) and sends bodies, `multipart.rs` uploads large
//! files in parts, `writer.rs` is the write-behind queue, `probe.rs` closes the circuit in the
//! background (requests never probe it). Reads are `fetch::Remote::Bucket`,
//! untrusted like a peer: a narinfo source (`fetch/narinfo/source.rs`) and a NAR tier
//! (`fetch/nar/bucket.rs`: materialised and checked, then served as a hit).

pub mod client;
pub mod credentials;
pub mod keys;
mod multipart;
pub mod probe;
pub mod url;
pub mod writer;

pub use client::{Bucket, ObjError};
pub use url::{ObjectStoreUrl, UrlError};
pub use writer::WriteBehind;

/// What `--object-store` resolved to: the validated URL and the credentials (from the
/// environment or the credentials file; `Debug` hides the secret). `None`: none are
/// configured, requests are anonymous (a bucket that allows them; a warning at start).
#[derive(Debug, Clone)]
pub struct ObjectStoreSettings {
    pub url: ObjectStoreUrl,
    pub credentials: Option<rusty_s3::Credentials>,
}
