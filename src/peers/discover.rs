//! `nixgate discover`: browse the LAN for appliances for a while, then probe what was found
//! and print the fastest (the same records and address checks as the peer set's mDNS).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use mdns_sd::ServiceEvent;
use serde::Serialize;

use super::service::{daemon, fastest, Found, MdnsError, SERVICE_TYPE};

/// An appliance found by [`discover`], with the URL that answered fastest.
#[derive(Debug, Serialize)]
pub struct Discovered {
    pub url: String,
    pub latency_ms: f64,
    #[serde(flatten)]
    pub found: Found,
}

/// Browses for `timeout`, then probes what was found. Returns the appliances that answered,
/// fastest first, and how many were announced in all.
pub async fn discover(timeout: Duration) -> Result<(Vec<Discovered>, usize), MdnsError> {
    let daemon = daemon()?;
    let events = daemon.browse(SERVICE_TYPE)?;
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            ev = events.recv_async() => match ev {
                Ok(ServiceEvent::ServiceResolved(r)) => {
                    if let Some(f) = Found::from_resolved(&r) {
                        found.insert(f.instance.clone(), f);
                    }
                }
                Ok(ServiceEvent::ServiceRemoved(_, name)) => {
                    found.remove(&name);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    if let Ok(rx) = daemon.shutdown() {
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await;
    }
    let announced = found.len();
    let probes = found.into_values().map(|f| async move {
        let (url, latency) = fastest(&f.urls()).await?;
        Some(Discovered {
            url: url.as_str().trim_end_matches('/').to_owned(),
            latency_ms: latency.as_secs_f64() * 1000.0,
            found: f,
        })
    });
    let mut answering: Vec<Discovered> = join_all(probes).await.into_iter().flatten().collect();
    answering.sort_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms));
    Ok((answering, announced))
}
