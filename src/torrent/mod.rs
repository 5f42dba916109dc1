//! BitTorrent between appliances (librqbit 9.1): seeds NARs from the cache and fetches NARs
//! from the peers that hold them.
//!
//! * DHT, local service discovery (BEP 14) and UPnP are off: peers come from the peer set
//!   (their `.torrent` route says their torrent port) and from `--tracker`s.
//! * Torrents are made on demand ([`meta`]): `GET /_p2p/v1/torrent/<FileHash>` hashes the cached
//!   NAR once (the result is kept in a bounded memory cache) and starts seeding it. At most
//!   `--torrent-hot-set` torrents are live, least recently asked dropped first, so 100k cached
//!   NARs cost neither 100k file descriptors nor 100k torrents in memory. Hashing and seeding
//!   read the store's [`crate::store::Hit`] (the open file; [`seed`]), never a path.
//! * A fetch downloads into `tmp/bt/<infohash>/` (emptied at start-up with the rest of
//!   `tmp/`) and is read back through librqbit's stream as pieces arrive; the fetch path
//!   verifies the bytes (FileHash, NarHash) as for any other source, and the torrent and its
//!   files are deleted when the read ends.

mod hashing;
pub mod meta;
#[cfg(test)]
mod proptests;
mod seed;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use librqbit::api::TorrentIdOrHash;
use librqbit::dht::Id20;
use librqbit::storage::StorageFactoryExt;
use librqbit::{
    AddTorrent, AddTorrentOptions, ListenerMode, ListenerOptions, ManagedTorrent, Session,
    SessionOptions,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt};
use tokio_util::sync::CancellationToken;
use url::Url;

use self::meta::NarTorrent;
use crate::metrics::Metrics;
use crate::nix::hash::Sha256;
use crate::store::{Hit, Store, StoreError};

/// The header of `/_p2p/v1/torrent/…` that tells a peer which TCP port this appliance seeds on.
pub const PORT_HEADER: &str = "x-nixgate-torrent-port";
/// Computed torrents kept in memory (piece hashes are ~20 KiB for a large NAR).
const META_CACHE: u64 = 10_000;

#[derive(Debug, Error)]
pub enum TorrentEngineError {
    #[error("BitTorrent session: {0:#}")]
    Session(anyhow::Error),
    #[error("torrent {0}: {1:#}")]
    Torrent(String, anyhow::Error),
    #[error("reading the cached NAR: {0}")]
    Io(#[from] std::io::Error),
    /// Hashing a cached NAR failed (shared by every asker, hence the `Arc`).
    #[error("hashing the cached NAR: {0}")]
    Hashing(Arc<std::io::Error>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub listen: SocketAddr,
    pub trackers: Vec<Url>,
    /// Where fetches download to (inside the store's `tmp/`).
    pub download_dir: PathBuf,
    /// How long a fetch may go without a byte before it is abandoned.
    pub stall: Duration,
    /// Upload cap in bytes per second.
    pub upload_limit: Option<u64>,
    /// Live seeding torrents, at most.
    pub hot_set: usize,
    /// Cached NARs hashed into torrents at once, at most; at least 1 (`config` clamps it).
    pub hash_concurrency: usize,
}

/// The running engine.
pub struct Engine {
    session: Arc<Session>,
    store: Arc<Store>,
    trackers: Vec<String>,
    port: u16,
    download_dir: PathBuf,
    stall: Duration,
    hot_set: usize,
    metrics: Arc<Metrics>,
    metas: moka::sync::Cache<Sha256, Arc<NarTorrent>>,
    /// Hashing under way: concurrent requests for one NAR share one hash.
    hashing: crate::coalesce::Coalescer<Sha256, Result<Arc<NarTorrent>, Arc<std::io::Error>>>,
    /// Bounds concurrent hashing, so the blocking pool keeps threads to serve cached files.
    hash_slots: Arc<tokio::sync::Semaphore>,
    /// Seeding torrents, most recently asked last.
    hot: Mutex<VecDeque<(Sha256, Id20)>>,
}

impl Engine {
    pub async fn start(
        config: EngineConfig,
        store: Arc<Store>,
        mut gone_rx: tokio::sync::mpsc::UnboundedReceiver<Sha256>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Engine>, TorrentEngineError> {
        std::fs::create_dir_all(&config.download_dir)?;
        let opts = SessionOptions {
            dht: None,
            disable_local_service_discovery: true,
            persistence: None,
            fastresume: false,
            listen: Some(ListenerOptions {
                mode: ListenerMode::TcpOnly,
                listen_addr: config.listen,
                announce_port: (config.listen.port() != 0).then_some(config.listen.port()),
                enable_upnp_port_forwarding: false,
                ..Default::default()
            }),
            trackers: config.trackers.iter().cloned().collect(),
            disable_trackers: config.trackers.is_empty(),
            cancellation_token: Some(shutdown.child_token()),
            ratelimits: librqbit::limits::LimitsConfig {
                upload_bps: config
                    .upload_limit
                    .and_then(|l| std::num::NonZeroU32::new(l.min(u32::MAX as u64) as u32)),
                download_bps: None,
            },
            ..Default::default()
        };
        let session = Session::new_with_opts(config.download_dir.clone(), opts)
            .await
            .map_err(TorrentEngineError::Session)?;
        let port = session
            .listen_addr()
            .map(|a| a.port())
            .unwrap_or(config.listen.port());
        tracing::info!(port, trackers = ?config.trackers.iter().map(crate::redact::redact).collect::<Vec<_>>(), "BitTorrent engine started (DHT, LSD, UPnP off)");
        let engine = Arc::new(Engine {
            session,
            store,
            trackers: config.trackers.iter().map(|u| u.to_string()).collect(),
            port,
            download_dir: config.download_dir,
            stall: config.stall,
            hot_set: config.hot_set,
            metrics,
            metas: moka::sync::Cache::new(META_CACHE),
            hashing: Default::default(),
            hash_slots: Arc::new(tokio::sync::Semaphore::new(config.hash_concurrency)),
            hot: Mutex::new(VecDeque::new()),
        });
        // An evicted NAR stops being seeded (librqbit would keep the unlinked file open).
        let weak = Arc::downgrade(&engine);
        tokio::spawn(async move {
            while let Some(fh) = gone_rx.recv().await {
                let Some(engine) = weak.upgrade() else { return };
                engine.forget(&fh).await;
            }
        });
        Ok(engine)
    }

    /// The TCP port peers connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `.torrent` of a NAR this appliance holds (announcing to our trackers), after making
    /// sure it is seeded; `None` when the NAR is not in the cache.
    pub async fn torrent_file(&self, fh: &Sha256) -> Result<Option<Bytes>, TorrentEngineError> {
        let Some(hit) = self.store.nar_by_hash(fh).await? else {
            return Ok(None);
        };
        let torrent = match self.metas.get(fh) {
            Some(t) => t,
            None => self.hash(*fh, hit.clone()).await?,
        };
        self.seed(fh, hit, &torrent).await?;
        Ok(Some(Bytes::from(torrent.to_file(&self.trackers))))
    }

    /// Adds the torrent of a cached NAR to the session (or marks it recently used), dropping
    /// the least recently used one beyond the hot set. It is read from `hit` ([`seed`]).
    async fn seed(
        &self,
        fh: &Sha256,
        hit: Hit,
        torrent: &NarTorrent,
    ) -> Result<(), TorrentEngineError> {
        {
            let mut hot = self.hot.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = hot.iter().position(|(h, _)| h == fh) {
                let e = hot.remove(i).expect("index just found");
                hot.push_back(e);
                return Ok(());
            }
        }
        let id = torrent.info_hash_hex();
        self.session
            .add_torrent(
                AddTorrent::from_bytes(torrent.to_file(&[])),
                Some(AddTorrentOptions {
                    overwrite: true,
                    storage_factory: Some(seed::SeedFactory(hit).boxed()),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| TorrentEngineError::Torrent(id.clone(), e))?;
        tracing::debug!(file_hash = %fh, info_hash = %id, "seeding");
        let evicted = {
            let mut hot = self.hot.lock().unwrap_or_else(|p| p.into_inner());
            // Two first requests for one NAR may both have added it (librqbit keeps one).
            if !hot.iter().any(|(h, _)| h == fh) {
                hot.push_back((*fh, Id20::new(torrent.info_hash())));
            }
            let out = (hot.len() > self.hot_set)
                .then(|| hot.pop_front())
                .flatten();
            self.metrics.set_torrents_seeding(hot.len() as u64);
            out
        };
        if let Some((_, ih)) = evicted {
            let _ = self.session.delete(TorrentIdOrHash::Hash(ih), false).await;
        }
        Ok(())
    }

    /// Stops seeding a NAR (it left the cache).
    pub async fn forget(&self, fh: &Sha256) {
        self.metas.invalidate(fh);
        let gone = {
            let mut hot = self.hot.lock().unwrap_or_else(|p| p.into_inner());
            let gone = hot
                .iter()
                .position(|(h, _)| h == fh)
                .and_then(|i| hot.remove(i));
            self.metrics.set_torrents_seeding(hot.len() as u64);
            gone
        };
        if let Some((_, ih)) = gone {
            let _ = self.session.delete(TorrentIdOrHash::Hash(ih), false).await;
        }
    }

    /// Starts downloading `torrent` from `peers` (plus whatever the trackers know) and returns
    /// a reader that yields the file's bytes in order as pieces complete.
    pub async fn fetch(
        self: &Arc<Self>,
        torrent: &NarTorrent,
        peers: Vec<SocketAddr>,
    ) -> Result<TorrentBody, TorrentEngineError> {
        let id = torrent.info_hash_hex();
        let dir = self.download_dir.join(&id);
        let handle = self
            .session
            .add_torrent(
                AddTorrent::from_bytes(torrent.to_file(&[])),
                Some(AddTorrentOptions {
                    overwrite: true,
                    output_folder: Some(dir.to_string_lossy().into_owned()),
                    initial_peers: Some(peers),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| TorrentEngineError::Torrent(id.clone(), e))?
            .into_handle()
            .ok_or_else(|| TorrentEngineError::Torrent(id.clone(), anyhow::anyhow!("list only")))?;
        let stream = match handle.clone().stream(0).await {
            Ok(s) => s,
            Err(e) => {
                self.drop_download(&handle, dir).await;
                return Err(TorrentEngineError::Torrent(id, e));
            }
        };
        Ok(TorrentBody {
            stream: Some(Box::new(stream)),
            handle,
            dir,
            engine: self.clone(),
            stall: self.stall,
            left: torrent.length,
            length: torrent.length,
        })
    }

    async fn drop_download(&self, handle: &Arc<ManagedTorrent>, dir: PathBuf) {
        let _ = self
            .session
            .delete(TorrentIdOrHash::Hash(handle.info_hash()), true)
            .await;
        let _ = tokio::fs::remove_dir_all(dir).await;
    }
}

/// librqbit's file stream (its type is not exported).
trait ReadSeek: AsyncRead + AsyncSeek + Send + Unpin {}
impl<T: AsyncRead + AsyncSeek + Send + Unpin> ReadSeek for T {}

/// How a torrent download's stream failed.
#[derive(Debug, Clone, Error)]
pub enum SwarmError {
    #[error("the torrent stream is closed")]
    Closed,
    #[error("seeking the torrent stream: {0}")]
    Seek(String),
    #[error("no piece from the swarm for {0:?}")]
    Stalled(Duration),
    #[error("torrent stream: {0}")]
    Read(String),
    #[error("torrent stream ended {0} bytes early")]
    Short(u64),
}

/// The bytes of a torrent download, in order.
pub struct TorrentBody {
    stream: Option<Box<dyn ReadSeek>>,
    handle: Arc<ManagedTorrent>,
    dir: PathBuf,
    engine: Arc<Engine>,
    stall: Duration,
    left: u64,
    length: u64,
}

impl TorrentBody {
    /// Continues from byte `offset` (the bytes before it came from elsewhere); pieces from
    /// there on are fetched first.
    pub async fn skip_to(&mut self, offset: u64) -> Result<(), SwarmError> {
        let stream = self.stream.as_mut().ok_or(SwarmError::Closed)?;
        stream
            .seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| SwarmError::Seek(e.to_string()))?;
        self.left = self.length.saturating_sub(offset);
        Ok(())
    }

    /// Up to `max` bytes; `None` at the end.
    pub async fn batch(&mut self, max: usize) -> Result<Option<Bytes>, SwarmError> {
        if self.left == 0 {
            return Ok(None);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        let mut buf = BytesMut::zeroed(max.min(self.left as usize));
        let n = tokio::time::timeout(self.stall, stream.read(&mut buf))
            .await
            .map_err(|_| SwarmError::Stalled(self.stall))?
            .map_err(|e| SwarmError::Read(e.to_string()))?;
        if n == 0 {
            return Err(SwarmError::Short(self.left));
        }
        buf.truncate(n);
        self.left -= n as u64;
        Ok(Some(buf.freeze()))
    }
}

impl Drop for TorrentBody {
    fn drop(&mut self) {
        // The download is either committed (the cache has its own copy) or abandoned: the
        // torrent and its files go either way.
        self.stream.take();
        let (engine, handle, dir) = (self.engine.clone(), self.handle.clone(), self.dir.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { engine.drop_download(&handle, dir).await });
        }
    }
}
