//! mDNS / DNS-SD (RFC 6762, RFC 6763) on office LANs: announce this appliance as
//! `_nixgate._tcp.local.` and keep the appliances that announce the same type in the peer set
//! (origin `mdns`). `nixgate discover` uses the same browse to print a nix.conf line.
//!
//! TXT record: `v=1`, `id=<peer id>`, `path=/`, and `bt=<torrent port>` when BitTorrent is on.
//! A loopback listen address is never announced (nobody else could reach it).
//!
//! A peer leaves the set when it says goodbye, when its records expire, or when it stops
//! answering: every [`LIVENESS_INTERVAL`] each announced appliance's `/nix-cache-info` is
//! probed; one that does not answer within [`PROBE_TIMEOUT`] leaves the set at once, and
//! mdns-sd is asked to verify its records (RFC 6762 §10.4), which flushes them when nothing
//! answers on the LAN either. A killed appliance is gone within about 6 s; one that comes back
//! rejoins at the next probe. Our own record (same `id`) is never a peer.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use mdns_sd::{IfKind, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};
use serde::Serialize;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{Origin, PeerSet};
use crate::upstream::probe;

/// The DNS-SD service type of nixgate appliances.
pub const SERVICE_TYPE: &str = "_nixgate._tcp.local.";
/// How often announced appliances are probed.
pub const LIVENESS_INTERVAL: Duration = Duration::from_secs(5);
/// How long a probe of `/nix-cache-info` may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The TXT `v=` this release speaks.
const TXT_VERSION: &str = "1";

#[derive(Debug, Error)]
pub enum MdnsError {
    #[error("mDNS: {0}")]
    Daemon(#[from] mdns_sd::Error),
}

/// What this appliance announces.
#[derive(Debug, Clone)]
pub struct Announcement {
    /// The stable peer id (see [`super::load_or_create_id`]).
    pub id: String,
    /// The HTTP address actually bound.
    pub listen: SocketAddr,
    /// The BitTorrent port, when BitTorrent is on.
    pub bt_port: Option<u16>,
}

impl Announcement {
    /// `nixgate-<hostname>-<id prefix>`, at most 63 bytes (RFC 6763 §4.1.1).
    pub fn instance_name(&self) -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let id = &self.id[..self.id.len().min(8)];
        if host.is_empty() {
            format!("nixgate-{id}")
        } else {
            format!("nixgate-{host}-{id}")
        }
    }

    /// The record to register; `None` for a loopback listen address.
    pub fn service_info(&self) -> Result<Option<ServiceInfo>, MdnsError> {
        let ip = self.listen.ip();
        if ip.is_loopback() {
            return Ok(None);
        }
        let bt = self.bt_port.map(|p| p.to_string());
        let mut txt = vec![("v", TXT_VERSION), ("id", self.id.as_str()), ("path", "/")];
        if let Some(bt) = &bt {
            txt.push(("bt", bt));
        }
        let host = format!("nixgate-{}.local.", &self.id[..self.id.len().min(12)]);
        let name = self.instance_name();
        let port = self.listen.port();
        let info = if ip.is_unspecified() {
            let mut info = ServiceInfo::new(SERVICE_TYPE, &name, &host, (), port, &txt[..])?
                .enable_addr_auto();
            if ip.is_ipv4() {
                info.set_interfaces(vec![IfKind::IPv4]);
            }
            info
        } else {
            ServiceInfo::new(SERVICE_TYPE, &name, &host, ip, port, &txt[..])?
        };
        Ok(Some(info))
    }
}

/// One announced appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    /// The DNS-SD instance full name.
    pub instance: String,
    pub id: Option<String>,
    pub port: u16,
    /// Announced addresses, IPv4 first.
    pub addresses: Vec<IpAddr>,
    pub txt: BTreeMap<String, String>,
}

impl Found {
    /// `None` unless the record is complete and speaks `v=1`.
    pub fn from_resolved(r: &ResolvedService) -> Option<Found> {
        if !r.is_valid() || r.get_property_val_str("v") != Some(TXT_VERSION) {
            return None;
        }
        let txt: BTreeMap<String, String> = r
            .get_properties()
            .iter()
            .map(|p| (p.key().to_ascii_lowercase(), p.val_str().to_owned()))
            .collect();
        let mut addresses: Vec<IpAddr> = r.get_addresses().iter().map(|a| a.to_ip_addr()).collect();
        addresses.sort_by_key(|a| (a.is_ipv6(), *a));
        Some(Found {
            instance: r.get_fullname().to_owned(),
            id: txt.get("id").cloned(),
            port: r.get_port(),
            addresses,
            txt,
        })
    }

    /// Base URLs to try, IPv4 first. Loopback addresses and link-local IPv6 ones (a URL for
    /// Nix cannot carry the interface they need) are left out.
    pub fn urls(&self) -> Vec<Url> {
        let path = self.txt.get("path").map_or("/", String::as_str);
        let path = if path.starts_with('/') { path } else { "/" };
        self.addresses
            .iter()
            .filter(|ip| !ip.is_loopback())
            .filter(|ip| match ip {
                IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
                IpAddr::V4(_) => true,
            })
            .filter_map(|ip| {
                Url::parse(&format!("http://{}{path}", SocketAddr::new(*ip, self.port))).ok()
            })
            .collect()
    }
}

/// The fastest of `urls` to answer `/nix-cache-info`, with its latency.
pub async fn fastest(urls: &[Url]) -> Option<(Url, Duration)> {
    let probes = urls.iter().map(|u| async move {
        probe::get_ok(u, "/nix-cache-info", PROBE_TIMEOUT)
            .await
            .ok()
            .map(|d| (u.clone(), d))
    });
    join_all(probes)
        .await
        .into_iter()
        .flatten()
        .min_by_key(|(_, d)| *d)
}

fn daemon() -> Result<ServiceDaemon, MdnsError> {
    let d = ServiceDaemon::new()?;
    // mDNS on loopback would only ever find this host, and we never announce loopback.
    d.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?;
    Ok(d)
}

/// An announced appliance and the URL it currently answers on.
struct Member {
    found: Found,
    live: Option<Url>,
}

/// Announces `me` and feeds the peer set until `shutdown`; then withdraws the announcement
/// (a goodbye packet) before returning.
pub async fn run(
    set: Arc<PeerSet>,
    me: Announcement,
    shutdown: CancellationToken,
) -> Result<(), MdnsError> {
    let daemon = daemon()?;
    let registered = match me.service_info()? {
        Some(info) => {
            let name = info.get_fullname().to_owned();
            daemon.register(info)?;
            tracing::info!(instance = %name, id = %me.id, "announcing over mDNS");
            Some(name)
        }
        None => {
            tracing::warn!(listen = %me.listen, "not announcing over mDNS: the listen address is loopback");
            None
        }
    };
    let events = daemon.browse(SERVICE_TYPE)?;
    let mut members: HashMap<String, Member> = HashMap::new();
    let mut tick = tokio::time::interval(LIVENESS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = events.recv_async() => match ev {
                Ok(ServiceEvent::ServiceResolved(r)) => {
                    let Some(found) = Found::from_resolved(&r) else { continue };
                    if found.id.as_deref() == Some(me.id.as_str()) {
                        continue; // our own record
                    }
                    let live = fastest(&found.urls()).await.map(|(u, _)| u);
                    tracing::info!(instance = %found.instance, url = ?live.as_ref().map(Url::as_str), "mDNS: appliance found");
                    members.insert(found.instance.clone(), Member { found, live });
                    publish(&set, &members);
                }
                Ok(ServiceEvent::ServiceRemoved(_, name)) => {
                    if members.remove(&name).is_some() {
                        tracing::info!(instance = %name, "mDNS: appliance left");
                        publish(&set, &members);
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!("mDNS daemon stopped; keeping the peers found so far");
                    shutdown.cancelled().await;
                    break;
                }
            },
            _ = tick.tick() => {
                if check_liveness(&daemon, &mut members).await {
                    publish(&set, &members);
                }
            }
        }
    }
    if let Some(name) = registered {
        if let Ok(rx) = daemon.unregister(&name) {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx.recv_async()).await;
            tracing::info!(instance = %name, "mDNS announcement withdrawn");
        }
    }
    if let Ok(rx) = daemon.shutdown() {
        let _ = tokio::time::timeout(Duration::from_secs(2), rx.recv_async()).await;
    }
    Ok(())
}

/// Probes every member; returns whether any changed. A member that stopped answering is
/// verified over mDNS, so that its records go away if the host is gone.
async fn check_liveness(daemon: &ServiceDaemon, members: &mut HashMap<String, Member>) -> bool {
    let probes = members.iter().map(|(name, m)| async move {
        (name.clone(), fastest(&m.found.urls()).await.map(|(u, _)| u))
    });
    let mut changed = false;
    for (name, live) in join_all(probes).await {
        let Some(m) = members.get_mut(&name) else {
            continue;
        };
        if m.live == live {
            continue;
        }
        changed = true;
        if live.is_none() {
            tracing::info!(instance = %name, "mDNS: appliance stopped answering; verifying its records");
            let _ = daemon.verify(name.clone(), Duration::from_secs(2));
        }
        m.live = live;
    }
    changed
}

fn publish(set: &PeerSet, members: &HashMap<String, Member>) {
    let mut urls: Vec<Url> = members.values().filter_map(|m| m.live.clone()).collect();
    urls.sort();
    urls.dedup();
    set.replace(Origin::Mdns, urls);
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn me(listen: &str) -> Announcement {
        Announcement {
            id: "0123456789abcdef0123456789abcdef".into(),
            listen: listen.parse().unwrap(),
            bt_port: Some(6881),
        }
    }

    #[test]
    fn announcement_record() {
        assert!(me("127.0.0.1:8080").service_info().unwrap().is_none());
        assert!(me("[::1]:8080").service_info().unwrap().is_none());
        let info = me("10.1.2.3:8080").service_info().unwrap().unwrap();
        assert_eq!(info.get_type(), SERVICE_TYPE);
        assert_eq!(info.get_port(), 8080);
        assert_eq!(info.get_property_val_str("v"), Some("1"));
        assert_eq!(info.get_property_val_str("bt"), Some("6881"));
        assert_eq!(info.get_property_val_str("path"), Some("/"));
        assert_eq!(
            info.get_property_val_str("id"),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert!(me("[::]:8080")
            .service_info()
            .unwrap()
            .unwrap()
            .is_addr_auto());
        let name = me("[::]:8080").instance_name();
        assert!(name.starts_with("nixgate-") && name.ends_with("-01234567") && name.len() <= 63);
    }

    #[test]
    fn urls_skip_loopback_and_link_local() {
        let f = Found {
            instance: "x._nixgate._tcp.local.".into(),
            id: None,
            port: 8080,
            addresses: vec![
                "10.0.0.2".parse().unwrap(),
                "127.0.0.1".parse().unwrap(),
                "fe80::1".parse().unwrap(),
                "fd00::2".parse().unwrap(),
            ],
            txt: BTreeMap::new(),
        };
        let urls: Vec<String> = f.urls().iter().map(|u| u.to_string()).collect();
        assert_eq!(urls, ["http://10.0.0.2:8080/", "http://[fd00::2]:8080/"]);
    }
}
