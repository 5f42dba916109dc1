//! nixgate: a verifying, coalescing, disk-LRU Nix binary-cache appliance.
#![deny(unsafe_code)]

pub mod nix;
pub mod config;
pub mod units;
pub mod metrics;
pub mod store;
