//! Wiring: builds the store, the upstream client and the fetcher from a [`Config`], and runs
//! the HTTP server on an already-bound listener (so tests run the whole appliance on :0).

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::DownPolicy;
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::upstream::{Upstream, UpstreamClient};

/// Shared state of a running appliance.
pub struct App {
    pub store: Arc<Store>,
    pub fetcher: Arc<Fetcher>,
    pub metrics: Arc<Metrics>,
    pub cache_info: Bytes,
    pub down_policy: DownPolicy,
}

impl App {
    /// Opens the cache (rebuilding its index) and sets everything up.
    pub fn new(config: &Config) -> Result<Arc<Self>, StoreError> {
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(Store::open(
            &config.cache_dir,
            config.max_cache_size,
            metrics.clone(),
        )?);
        let upstreams = config
            .upstreams
            .iter()
            .cloned()
            .map(Upstream::new)
            .collect();
        let fetcher = Arc::new(Fetcher::new(
            store.clone(),
            upstreams,
            UpstreamClient::new(config.timeouts),
            config.trusted_keys.clone(),
            metrics.clone(),
            config.negative_ttl,
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
        }))
    }
}

/// Runs the appliance on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let app = App::new(&config)?;
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        cache_dir = %config.cache_dir.display(),
        max_cache_size = config.max_cache_size,
        upstreams = ?config.upstreams.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
        "nixgate serving"
    );
    crate::http::server::serve(listener, app, shutdown).await;
    Ok(())
}
