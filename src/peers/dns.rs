//! `--peers-dns NAME[:PORT]`: resolve a name into peer appliances every [`INTERVAL`].
//!
//! In Kubernetes, the chart's headless Service resolves to every replica's pod address. A
//! failed lookup keeps the previous peers (a DNS hiccup must not empty the set); an empty
//! answer empties it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{peer_url, Origin, PeerSet};

/// `--peers-dns`: a name to resolve into peer appliances, all on one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPeers {
    pub name: String,
    pub port: u16,
}

impl std::fmt::Display for DnsPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.port)
    }
}

pub const INTERVAL: Duration = Duration::from_secs(30);

/// Resolves once and updates the set; returns how many addresses the name had.
pub async fn refresh(set: &PeerSet, dns: &DnsPeers) -> std::io::Result<usize> {
    let addrs: BTreeSet<_> = tokio::net::lookup_host((dns.name.as_str(), dns.port))
        .await?
        .collect();
    let n = addrs.len();
    set.replace(Origin::Dns, addrs.into_iter().map(peer_url).collect());
    Ok(n)
}

/// Runs until `shutdown`.
pub async fn run(set: Arc<PeerSet>, dns: DnsPeers, shutdown: CancellationToken) {
    let mut last_ok = None;
    loop {
        match refresh(&set, &dns).await {
            Ok(n) => {
                if last_ok != Some(n) {
                    tracing::info!(name = %dns, addresses = n, "peers-dns resolved");
                }
                last_ok = Some(n);
            }
            Err(e) => {
                tracing::warn!(name = %dns, error = %e, "peers-dns lookup failed; keeping the previous peers");
                last_ok = None;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_a_name_into_peers() {
        let set = PeerSet::new(
            8080,
            "0".repeat(32),
            crate::peers::Membership::default(),
            vec![],
        );
        let dns = DnsPeers {
            name: "localhost".into(),
            port: 9999,
        };
        let n = refresh(&set, &dns).await.unwrap();
        assert!(n >= 1);
        assert!(set
            .peers()
            .iter()
            .all(|p| p.base.port() == Some(9999) && p.base.host_str().is_some()));
    }
}
