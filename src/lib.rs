//! nixgate: a verifying, coalescing, disk-LRU Nix binary-cache appliance.
#![deny(unsafe_code)]

pub mod nix;
