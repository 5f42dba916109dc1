//! Wiring: builds the store, the upstream client and the fetcher from a [`Config`], and runs
//! the HTTP server on an already-bound listener (so tests run the whole appliance on :0).

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::DownPolicy;
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::nix::hash::Sha256;
use crate::peers::PeerSet;
use crate::store::{Store, StoreError};

/// Shared state of a running appliance.
pub struct App {
    pub store: Arc<Store>,
    pub fetcher: Arc<Fetcher>,
    pub metrics: Arc<Metrics>,
    pub cache_info: Bytes,
    pub down_policy: DownPolicy,
    pub peers: Arc<PeerSet>,
    /// The last `/_p2p/v1/digest` body and when it was built.
    pub digest: std::sync::Mutex<Option<(std::time::Instant, Bytes)>>,
}

impl App {
    /// Opens the cache (rebuilding its index) and sets everything up. `own_port` is the HTTP
    /// port actually bound, so that this appliance never lists itself as a peer. `on_gone` is
    /// told every NAR that leaves the cache (the torrent engine stops seeding it).
    pub fn new(
        config: &Config,
        own_port: u16,
        on_gone: Option<UnboundedSender<Sha256>>,
    ) -> Result<Arc<Self>, StoreError> {
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(Store::open(
            &config.cache_dir,
            config.max_cache_size,
            metrics.clone(),
            on_gone,
        )?);
        let peers = Arc::new(PeerSet::new(own_port, config.peers.clone()));
        let fetcher = Arc::new(Fetcher::new(
            config,
            store.clone(),
            metrics.clone(),
            peers.clone(),
        ));
        Ok(Arc::new(App {
            store,
            fetcher,
            metrics,
            cache_info: Bytes::from(crate::nix::cache_info(config.priority)),
            down_policy: DownPolicy {
                status: config.upstream_down_status,
                retry_after: config.retry_after,
            },
            peers,
            digest: Default::default(),
        }))
    }
}

/// Starts the BitTorrent engine and hands it to the fetcher; `gone` tells it of evicted NARs.
async fn start_torrent(
    config: &Config,
    app: &App,
    gone: tokio::sync::mpsc::UnboundedReceiver<Sha256>,
    shutdown: &CancellationToken,
) {
    let engine = crate::torrent::Engine::start(
        crate::torrent::EngineConfig {
            listen: config.torrent_listen,
            trackers: config.trackers.clone(),
            download_dir: config.cache_dir.join("tmp").join("bt"),
            stall: config.timeouts.stall,
            upload_limit: config.tuning.upload_limit,
            hot_set: config.tuning.hot_set,
        },
        app.store.clone(),
        gone,
        app.metrics.clone(),
        shutdown.clone(),
    )
    .await;
    match engine {
        Ok(e) => app.fetcher.set_torrent(e),
        // HTTP caching is the appliance's job; BitTorrent is an extra. Say so loudly.
        Err(e) => {
            tracing::error!(error = %e, listen = %config.torrent_listen, "BitTorrent is off: cannot start it")
        }
    }
}

/// Runs the appliance on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let port = listener.local_addr().map_or(0, |a| a.port());
    // The torrent engine learns of evicted NARs from the store, which exists before it.
    let (gone_tx, gone_rx) = tokio::sync::mpsc::unbounded_channel();
    let app = App::new(&config, port, config.torrent.then_some(gone_tx))?;
    if config.torrent {
        start_torrent(&config, &app, gone_rx, &shutdown).await;
    }
    let mdns = match listener.local_addr() {
        // A loopback appliance is not on the LAN: it neither announces nor browses.
        Ok(listen) if config.mdns && !listen.ip().is_loopback() => {
            let me = crate::peers::mdns::Announcement {
                id: crate::peers::load_or_create_id(&config.cache_dir).map_err(|source| {
                    StoreError::Io {
                        path: config.cache_dir.join("peer-id"),
                        source,
                    }
                })?,
                listen,
                bt_port: app.fetcher.torrent().map(|e| e.port()),
            };
            let (set, token) = (app.peers.clone(), shutdown.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = crate::peers::mdns::run(set, me, token).await {
                    tracing::warn!(error = %e, "mDNS is off: cannot start it");
                }
            }))
        }
        Ok(listen) if config.mdns => {
            tracing::info!(%listen, "mDNS off: the listen address is loopback, not on a LAN");
            None
        }
        _ => None,
    };
    tokio::spawn(crate::peers::digest::run(
        app.peers.clone(),
        shutdown.clone(),
    ));
    if let Some(dns) = config.peers_dns.clone() {
        tokio::spawn(crate::peers::dns::run(
            app.peers.clone(),
            dns,
            shutdown.clone(),
        ));
    }
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        cache_dir = %config.cache_dir.display(),
        max_cache_size = config.max_cache_size,
        upstreams = ?config.upstreams.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
        peers = ?config.peers.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
        peers_dns = ?config.peers_dns.as_ref().map(|d| d.to_string()),
        mdns = config.mdns,
        "nixgate serving"
    );
    crate::http::server::serve(listener, app, shutdown).await;
    if let Some(task) = mdns {
        // The goodbye packet goes out before the process exits.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), task).await;
    }
    Ok(())
}
