//! The digest of what the cache holds, for peers (`/_p2p/v1/digest`).

use super::Store;
use crate::peers::digest::{nar_key, narinfo_key, Holdings};

impl Store {
    /// A digest of what the cache holds, for peers (`/_p2p/v1/digest`).
    pub fn holdings(&self) -> Holdings {
        let (narinfos, nars) = self.index().keys();
        let mut h = Holdings::with_capacity(narinfos.len() + nars.len());
        for n in narinfos {
            h.insert(&narinfo_key(&n.to_string()));
        }
        for fh in nars {
            h.insert(&nar_key(&fh.to_nix32()));
        }
        h
    }
}
