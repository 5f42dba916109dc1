//! nixgate: a verifying, coalescing, disk-LRU Nix binary-cache appliance.
//!
//! Layout: `nix/` pure protocol types; `store/` the disk cache and its LRU index;
//! `upstream/` the HTTP client with timeouts and circuit breakers; `fetch/` the source policy,
//! verification and coalescing; `http/` routes, handlers and bodies; `upload/` uploads from runners (`PUT`, held apart from the LRU);
//! `status/` the operator's view (history rings, `/_status/v1`, `nixgate status`); `app` the wiring.
#![deny(unsafe_code)]

pub mod app;
pub mod coalesce;
pub mod config;
pub mod fetch;
pub mod http;
pub mod metrics;
pub mod nix;
pub mod objstore;
pub mod peers;
pub mod redact;
pub mod status;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod torrent;
pub mod units;
pub mod upload;
pub mod upstream;
pub mod warm;
