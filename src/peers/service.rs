//! The mDNS service nixgate appliances announce and browse: its type, the TXT version, a
//! resolved record checked into a [`Found`] (only addresses [`addr::check`] accepts), the
//! probe that picks the fastest answering address, and the daemon. Shared by the browse
//! loop (`mdns`), the announcement (`announce`) and `nixgate discover` (`discover`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::future::join_all;
use mdns_sd::{IfKind, ResolvedService, ServiceDaemon};
use serde::Serialize;
use thiserror::Error;
use url::Url;

use super::addr;
use crate::upstream::probe;

/// The DNS-SD service type of nixgate appliances.
pub const SERVICE_TYPE: &str = "_nixgate._tcp.local.";
/// How often announced appliances are probed.
pub const LIVENESS_INTERVAL: Duration = Duration::from_secs(5);
/// How long a probe of `/nix-cache-info` may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The TXT `v=` this release speaks.
pub(super) const TXT_VERSION: &str = "1";

#[derive(Debug, Error)]
pub enum MdnsError {
    #[error("mDNS: {0}")]
    Daemon(#[from] mdns_sd::Error),
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
    /// `None` unless the record is complete, speaks `v=1` and serves at `path=/` (a cache
    /// elsewhere on the host is not an appliance; an attacker-chosen path is not called).
    pub fn from_resolved(r: &ResolvedService) -> Option<Found> {
        if !r.is_valid() || r.get_property_val_str("v") != Some(TXT_VERSION) {
            return None;
        }
        if r.get_property_val_str("path").is_some_and(|p| p != "/") || r.get_port() == 0 {
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

    /// Base URLs to try, IPv4 first: only the addresses [`addr::check`] accepts against this
    /// host's interfaces, and none that is this host's.
    pub fn urls(&self) -> Vec<Url> {
        let mut urls = self.urls_on(&addr::own_subnets());
        urls.retain(|u| {
            !u.socket_addrs(|| None)
                .is_ok_and(|a| a.iter().any(|a| super::is_local_address(a.ip())))
        });
        urls
    }

    /// Base URLs to try given this host's subnets `own` (see [`addr::check`]). Link-local
    /// addresses are refused there too: a URL for Nix cannot carry their interface.
    pub fn urls_on(&self, own: &[addr::Subnet]) -> Vec<Url> {
        let mut ips: Vec<IpAddr> = (self.addresses.iter())
            .filter_map(|ip| match addr::check(*ip, self.port, own) {
                Ok(ip) => Some(ip),
                Err(why) => {
                    tracing::debug!(instance = %self.instance, %ip, reason = %why, "mDNS: announced address refused");
                    None
                }
            })
            .collect();
        ips.dedup();
        (ips.iter())
            .filter_map(|ip| {
                Url::parse(&format!("http://{}/", SocketAddr::new(*ip, self.port))).ok()
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

pub(super) fn daemon() -> Result<ServiceDaemon, MdnsError> {
    let d = ServiceDaemon::new()?;
    // mDNS on loopback would only ever find this host, and we never announce loopback.
    d.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?;
    Ok(d)
}
