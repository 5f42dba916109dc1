//! The Nix binary-cache protocol as pure types: no I/O here (see `docs/PROTOCOL.md` §1 for
//! sources).

pub mod compression;
pub mod hash;
pub mod narinfo;
pub mod nix32;
pub mod served;
pub mod signature;
pub mod store_path;

#[cfg(test)]
pub(crate) mod proptests;

/// The store directory nixgate serves (`StoreDir` in `nix-cache-info`).
pub const STORE_DIR: &str = "/nix/store";

/// The body of `/nix-cache-info`. Nix errors out on a cache without one, and keeps it 7 days.
pub fn cache_info(priority: u32) -> String {
    format!("StoreDir: {STORE_DIR}\nWantMassQuery: 1\nPriority: {priority}\n")
}
