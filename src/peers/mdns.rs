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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use mdns_sd::{ResolvedService, ServiceDaemon, ServiceEvent};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::announce::Announcement;
use super::service::{daemon, fastest};
pub use super::service::{Found, MdnsError, LIVENESS_INTERVAL, PROBE_TIMEOUT, SERVICE_TYPE};
use super::{Origin, PeerSet};

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
    // Probes of newly resolved records run beside the loop and report here: a record whose
    // addresses hang never holds up other events.
    let (probed_tx, mut probed) = tokio::sync::mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(LIVENESS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = events.recv_async() => match ev {
                Ok(ServiceEvent::ServiceResolved(r)) => {
                    resolved(&r, &me, set.max_peers(), &mut members, &probed_tx);
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
            Some((name, live)) = probed.recv() => {
                if let Some(m) = members.get_mut(&name) {
                    if m.live != live {
                        tracing::info!(instance = %name, url = ?live.as_ref().map(Url::as_str), "mDNS: appliance found");
                        m.live = live;
                        publish(&set, &members);
                    }
                }
            }
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

/// A resolved record: kept (at most `max` members; when full, one that does not answer makes
/// room) when it is another appliance with an acceptable address, and probed in the
/// background; the probe's answer arrives on `probed`.
fn resolved(
    r: &ResolvedService,
    me: &Announcement,
    max: usize,
    members: &mut HashMap<String, Member>,
    probed: &tokio::sync::mpsc::UnboundedSender<(String, Option<Url>)>,
) {
    let Some(found) = Found::from_resolved(r) else {
        return;
    };
    let urls = found.urls();
    if found.id.as_deref() == Some(me.id.as_str()) || urls.is_empty() {
        return; // our own record, or no address we may call
    }
    let name = found.instance.clone();
    if !members.contains_key(&name) && members.len() >= max {
        let idle = members.iter().find(|(_, m)| m.live.is_none());
        let Some(idle) = idle.map(|(n, _)| n.clone()) else {
            tracing::debug!(instance = %name, max, "mDNS: peer set full; appliance ignored");
            return;
        };
        members.remove(&idle);
    }
    let live = members.get(&name).and_then(|m| m.live.clone());
    members.insert(name.clone(), Member { found, live });
    let tx = probed.clone();
    tokio::spawn(async move {
        let live = fastest(&urls).await.map(|(u, _)| u);
        let _ = tx.send((name, live));
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::addr;
    use std::collections::BTreeMap;

    #[test]
    fn urls_only_for_other_hosts_on_our_subnets() {
        let net = |ip: &str| addr::Subnet {
            ip: ip.parse().unwrap(),
            prefix: 8,
        };
        let own = [net("10.0.0.1"), net("fd00::1")];
        let mut f = Found {
            instance: "x._nixgate._tcp.local.".into(),
            id: None,
            port: 8080,
            addresses: [
                "10.0.0.2",
                "127.0.0.1",
                "0.0.0.0",
                "::ffff:127.0.0.1",
                "10.0.0.1",
            ]
            .into_iter()
            .chain(["fe80::1", "fd00::2", "192.168.9.9", "::"])
            .map(|a| a.parse().unwrap())
            .collect(),
            txt: BTreeMap::new(),
        };
        let urls: Vec<String> = f.urls_on(&own).iter().map(|u| u.to_string()).collect();
        assert_eq!(urls, ["http://10.0.0.2:8080/", "http://[fd00::2]:8080/"]);
        f.port = 0;
        assert!(f.urls_on(&own).is_empty());
    }
}
