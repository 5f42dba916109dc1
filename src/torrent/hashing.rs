//! Hashing a cached NAR into its torrent for `/_p2p/v1/torrent`: once for all concurrent
//! requests (coalesced by FileHash), at most `--hash-concurrency` NARs at a time, on the
//! blocking pool; the result is kept in the engine's torrent cache.

use std::io::Read;
use std::sync::Arc;

use super::meta::{NarTorrent, PieceHasher};
use super::{Engine, TorrentEngineError};
use crate::nix::hash::Sha256;
use crate::store::Hit;

impl Engine {
    /// Hashes a cached NAR (read from its hit) into its torrent: once for all concurrent
    /// askers, and at most `hash_concurrency` NARs at a time.
    pub(super) async fn hash(
        &self,
        fh: Sha256,
        hit: Hit,
    ) -> Result<Arc<NarTorrent>, TorrentEngineError> {
        let (metas, slots, metrics) = (
            self.metas.clone(),
            self.hash_slots.clone(),
            self.metrics.clone(),
        );
        let (res, _) = self
            .hashing
            .run(fh, move || async move {
                if let Some(t) = metas.get(&fh) {
                    return Ok(t); // finished just before this call joined
                }
                let shared = |e| Arc::new(std::io::Error::other(e));
                let _slot = slots.acquire_owned().await.map_err(shared)?;
                let name = format!("{}.nar{}", fh.to_nix32(), hit.ext());
                let t = tokio::task::spawn_blocking(move || hash_file(hit, name))
                    .await
                    .map_err(|e| Arc::new(std::io::Error::other(e)))?
                    .map_err(Arc::new)?;
                metrics.torrent_hashed();
                let t = Arc::new(t);
                metas.insert(fh, t.clone());
                Ok(t)
            })
            .await;
        res.map_err(TorrentEngineError::Hashing)
    }
}

/// Hashes a cached NAR into its torrent.
fn hash_file(hit: Hit, name: String) -> std::io::Result<NarTorrent> {
    let size = hit.len();
    let mut f = hit.reader();
    let mut h = PieceHasher::new(name, size);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finish(size)
        .ok_or_else(|| std::io::Error::other("the cached NAR changed size while hashing"))
}
