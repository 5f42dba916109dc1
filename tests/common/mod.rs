//! Test harness shared by every integration test binary: the fixture (a signed binary cache
//! written by real `nix copy`), in-process upstreams, the appliance on 127.0.0.1:0, clients
//! (HTTP, the real Nix client and a current Nix in a chroot) and BitTorrent helpers. Each test binary compiles this module
//! on its own and uses only part of it, hence the `dead_code` and `unused_imports` allowances.
#![allow(dead_code, unused_imports)]

pub mod appliance;
pub mod binary;
pub mod client;
pub mod fixture;
pub mod fleet;
pub mod hostile;
pub mod nginx;
pub mod push;
pub mod raw;
pub mod seaweed;
pub mod served;
pub mod swarm;
pub mod switch;
pub mod tmpfs;
pub mod trixie;
pub mod upstream;
pub mod wait;

pub use appliance::*;
pub use binary::*;
pub use client::*;
pub use fixture::*;
pub use fleet::*;
pub use hostile::*;
pub use nginx::*;
pub use push::*;
pub use raw::*;
pub use seaweed::*;
pub use served::*;
pub use swarm::*;
pub use switch::*;
pub use tmpfs::*;
pub use trixie::*;
pub use upstream::*;
pub use wait::*;
