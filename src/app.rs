//! Wiring: builds the store, the upstream client and the fetcher from a [`Config`], and runs
//! the HTTP server on an already-bound listener (so tests run the whole appliance on :0).

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::fetch::Fetcher;
use crate::http::state::App;
use crate::metrics::Metrics;
use crate::nix::hash::Sha256;
use crate::peers::PeerSet;
use crate::redact::redact;
use crate::store::{Store, StoreError};
use crate::tasks::Tasks;

/// How long start-up waits for the cache index before serving anyway.
const INDEX_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// Opens the cache (rebuilding its index in the background) and sets everything up. `own_port` is the HTTP
/// port actually bound, so that this appliance never lists itself as a peer. `on_gone` is
/// told every NAR that leaves the cache (the torrent engine stops seeding it).
pub fn build(
    config: &Config,
    own_port: u16,
    on_gone: Option<UnboundedSender<Sha256>>,
) -> Result<Arc<App>, StoreError> {
    let metrics = Arc::new(Metrics::default());
    let store = Store::open(
        &config.cache_dir,
        config.max_cache_size,
        metrics.clone(),
        on_gone,
    )?;
    // A small cache is indexed by now and behaves exactly as if indexed before serving; a
    // large one is served while its index is rebuilt (see `store::rebuild`).
    store.wait_indexed(INDEX_GRACE);
    let id =
        crate::peers::load_or_create_id(&config.cache_dir).map_err(|source| StoreError::Io {
            path: config.cache_dir.join("peer-id"),
            source,
        })?;
    let peers = Arc::new(
        PeerSet::new(own_port, id, config.fleet, config.peers.clone())
            .with_max_peers(config.fetch.tuning.max_peers),
    );
    let fetcher = Arc::new(Fetcher::new(
        config.fetch.clone(),
        store.clone(),
        metrics.clone(),
        peers.clone(),
    ));
    let uploader = Arc::new(crate::upload::Uploader::new(
        config.uploads.clone(),
        store.clone(),
        config.fetch.keys.clone(),
        metrics.clone(),
        peers.clone(),
        fetcher.clone(),
    ));
    Ok(Arc::new(App {
        store,
        fetcher,
        uploader,
        metrics,
        cache_info: Bytes::from(crate::nix::cache_info(config.priority)),
        down_policy: config.down_policy,
        peers,
        status: Arc::new(crate::status::Status::new(config.status_interval)),
        digest: Default::default(),
    }))
}

/// The write-behind workers to the object store (`objstore::writer`) and its circuit's
/// prober (`objstore::probe`), if one is configured.
fn start_object_store_writers(app: &App, shutdown: &CancellationToken, tasks: &mut Tasks) {
    let f = &app.fetcher;
    let (Some(bucket), Some((_, queue))) = (&f.bucket, &f.writes) else {
        return;
    };
    tracing::info!(bucket = %bucket.at, "object store tier on");
    for _ in 0..crate::objstore::writer::WORKERS {
        let run = crate::objstore::writer::run(
            bucket.clone(),
            app.store.clone(),
            app.metrics.clone(),
            queue.clone(),
            shutdown.clone(),
        );
        tasks.spawn("object-store-writer", run);
    }
    let probe = crate::objstore::probe::run(bucket.clone(), f.client.clone(), shutdown.clone());
    tasks.spawn("object-store-probe", probe);
}

/// Runs the appliance on `listener` until `shutdown` is cancelled, then drains the
/// background tasks.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let local = listener.local_addr().ok();
    // The torrent engine learns of evicted NARs from the store, which exists before it.
    let (gone_tx, gone_rx) = tokio::sync::mpsc::unbounded_channel();
    let app = build(
        &config,
        local.map_or(0, |a| a.port()),
        config.torrent.then_some(gone_tx),
    )?;
    if config.torrent {
        start_torrent(&config, &app, gone_rx, &shutdown).await;
    }
    let mut tasks = Tasks::default();
    let (status, metrics) = (app.status.clone(), app.metrics.clone());
    tasks.spawn(
        "status-history",
        crate::status::run(status, metrics, shutdown.clone()),
    );
    let f = &app.fetcher;
    // Every configured upstream's series exist from the start (0), not from its first request.
    for u in &f.upstreams {
        app.metrics
            .upstream_counters(&u.base.origin().ascii_serialization());
    }
    tasks.spawn(
        "circuit-heal",
        crate::upstream::heal::run(
            f.upstreams.clone(),
            f.client.clone(),
            app.metrics.clone(),
            shutdown.clone(),
        ),
    );
    start_peer_sources(&config, &app, local, &shutdown, &mut tasks)?;
    start_object_store_writers(&app, &shutdown, &mut tasks);
    let (uploader, token) = (app.uploader.clone(), shutdown.clone());
    tasks.spawn("upload-staging", async move {
        let every = std::time::Duration::from_secs(10);
        while tokio::time::timeout(every, token.cancelled())
            .await
            .is_err()
        {
            uploader.sweep();
        }
    });
    log_start(&config, local);
    crate::http::server::serve(listener, app, config.connections, shutdown).await;
    // The mDNS goodbye packet goes out before the process exits.
    tasks.drain(TASK_DRAIN).await;
    Ok(())
}

/// How long shutdown waits for background tasks once the server has stopped.
const TASK_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Starts BitTorrent. HTTP caching is the appliance's job; BitTorrent is an extra: when it
/// cannot start, say so loudly and go on without it.
async fn start_torrent(
    config: &Config,
    app: &App,
    gone: UnboundedReceiver<Sha256>,
    shutdown: &CancellationToken,
) {
    let engine = crate::torrent::Engine::start(
        config.engine.clone(),
        app.store.clone(),
        gone,
        app.metrics.clone(),
        shutdown.clone(),
    )
    .await;
    match engine {
        Ok(e) => app.fetcher.set_torrent(e),
        Err(e) => {
            tracing::error!(error = %e, listen = %config.engine.listen, "BitTorrent is off: cannot start it")
        }
    }
}

/// Starts the tasks that feed the peer set: digests always, `--peers-dns` when given, mDNS
/// when on and the listen address is on a LAN (a loopback appliance neither announces nor
/// browses).
fn start_peer_sources(
    config: &Config,
    app: &App,
    local: Option<std::net::SocketAddr>,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<(), StoreError> {
    let (set, token) = (app.peers.clone(), shutdown.clone());
    let metrics = app.metrics.clone();
    tasks.spawn(
        "peer-digests",
        crate::peers::digest::run(set, metrics, token),
    );
    let (set, token) = (app.peers.clone(), shutdown.clone());
    tasks.spawn(
        "fleet-membership",
        crate::peers::membership::run(set, token),
    );
    if let Some(dns) = config.peers_dns.clone() {
        let (set, token) = (app.peers.clone(), shutdown.clone());
        tasks.spawn("peers-dns", crate::peers::dns::run(set, dns, token));
    }
    match local {
        Some(listen) if config.mdns && !listen.ip().is_loopback() => {
            let me = crate::peers::announce::Announcement {
                id: app.peers.own_id().to_owned(),
                listen,
                bt_port: app.fetcher.torrent().map(|e| e.port()),
            };
            let (set, token) = (app.peers.clone(), shutdown.clone());
            tasks.spawn("mdns", crate::peers::mdns::run(set, me, token));
        }
        Some(listen) if config.mdns => {
            tracing::info!(%listen, "mDNS off: the listen address is loopback, not on a LAN");
        }
        _ => {}
    }
    Ok(())
}

fn log_start(config: &Config, local: Option<std::net::SocketAddr>) {
    let loopback = local.is_some_and(|a| a.ip().is_loopback());
    // One line, then one per list item, so every field stays a scalar (typed in JSON logs).
    tracing::info!(
        listen = %local.map(|a| a.to_string()).unwrap_or_default(),
        cache_dir = %config.cache_dir.display(),
        max_cache_size = %crate::units::human_bytes(config.max_cache_size),
        upstreams = config.fetch.upstreams.len(),
        peers = config.peers.len(),
        peers_dns = %config.peers_dns.as_ref().map_or("off".into(), |d| d.to_string()),
        mdns = config.mdns && !loopback,
        torrent = config.torrent,
        uploads = config.uploads.token.is_some(),
        "nixgate serving"
    );
    for (i, u) in config.fetch.upstreams.iter().enumerate() {
        tracing::info!(rank = i + 1, upstream = %redact(u), "upstream");
    }
    for p in &config.peers {
        tracing::info!(peer = %redact(p), "static peer (--peer)");
    }
    if let Some(k) = &config.uploads.signing_key {
        tracing::info!(public_key = %k.public(), "signing unsigned uploads; runners trust this public key");
    }
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
}
