//! The peer set: other nixgate appliances this one may ask when every upstream fails.
//!
//! Peers come from `--peer` (static), `--peers-dns` (a name re-resolved periodically, e.g.
//! a Kubernetes headless Service) and mDNS on the LAN ([`mdns`]); all feed this one set. Each peer is an [`Upstream`]
//! (base URL + circuit breaker), asked only with `Cache-Control: only-if-cached`, so a miss
//! can never bounce between appliances. A peer whose data fails verification is put on
//! probation (skipped) for [`PROBATION`]. This appliance's own address is never its peer.

pub mod addr;
pub mod announce;
pub mod digest;
pub mod discover;
pub mod dns;
pub mod fleet;
pub mod mdns;
pub mod membership;
#[cfg(test)]
mod proptests;
pub mod service;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use url::Url;

use crate::redact::Redacted;
use crate::store::digest::Holdings;
use crate::upstream::Upstream;

/// How long a peer that sent unverifiable data is skipped.
pub const PROBATION: Duration = Duration::from_secs(300);
/// The bound on the peer set unless [`PeerSet::with_max_peers`] says otherwise.
pub const DEFAULT_MAX_PEERS: usize = 64;

/// Where a peer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Static,
    Dns,
    Mdns,
}

struct Entry {
    peer: Arc<Upstream>,
    origin: Origin,
    since: SystemTime,
    /// The peer's last digest (`None`: not fetched yet, or the peer has none).
    holdings: Option<Arc<Holdings>>,
    /// Its peer id from the last membership probe (`None`: not answered yet, or the last
    /// probe failed). Only members with an id own keys.
    id: Option<String>,
    /// What it serves runners as (`zstd`, `none`) from the same probe's
    /// [`fleet::SERVES_HEADER`]; `None` for `upstream` or a previous version, which are
    /// asked for the upstream's file only.
    serves: Option<String>,
}

/// Which peers take part in fleet ownership (see [`fleet`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Membership {
    /// Configured peers (`--peer`, `--peers-dns`): the members of one deployment. On by
    /// default; `--no-fleet` makes them fallback-only.
    pub configured: bool,
    /// mDNS neighbours: only when the operator opted in (`--fleet-mdns`), since anyone on an
    /// office LAN can announce one.
    pub mdns: bool,
}

impl Entry {
    /// Whether it takes part in fleet ownership.
    fn in_fleet(&self, m: Membership) -> bool {
        match self.origin {
            Origin::Mdns => m.mdns,
            Origin::Static | Origin::Dns => m.configured,
        }
    }
}

/// One row of `/_p2p/v1/peers`.
#[derive(Debug, Serialize)]
pub struct PeerStatus {
    pub url: String,
    pub origin: Origin,
    /// `ok`, or `skipped` while its circuit is open (failures or probation).
    pub state: &'static str,
    pub since_unix: u64,
    /// Whether its digest of holdings is known (then only probable holders are asked).
    pub digest: bool,
    /// Whether it owns a share of the keys (a live fleet member, see [`fleet`]).
    pub owner: bool,
    /// Its peer id, once it answered a membership probe.
    pub id: Option<String>,
    /// What it serves runners as (`zstd`, `none`), from the same probe; `None` for
    /// `--serve-compression upstream` or a version before issue 22 (asked for the upstream's
    /// files only).
    pub serves: Option<String>,
}

/// The live peer set.
pub struct PeerSet {
    entries: RwLock<Vec<Entry>>,
    /// The port this appliance serves HTTP on: a local address with this port is itself.
    own_port: u16,
    /// This appliance's peer id (see [`load_or_create_id`]).
    own_id: String,
    /// Who owns keys.
    membership: Membership,
    /// `--max-peers`: peers beyond this are ignored (static ones are always kept).
    max_peers: usize,
}

impl PeerSet {
    pub fn new(own_port: u16, own_id: String, membership: Membership, statics: Vec<Url>) -> Self {
        let set = PeerSet {
            entries: RwLock::new(Vec::new()),
            own_port,
            own_id,
            membership,
            max_peers: DEFAULT_MAX_PEERS,
        };
        set.replace(Origin::Static, statics);
        set
    }

    /// Bounds the set to `max` peers: later ones (from DNS or mDNS) are ignored while it is
    /// full. Peers given with `--peer` are the operator's own and always kept.
    pub fn with_max_peers(mut self, max: usize) -> Self {
        self.max_peers = max;
        let entries = self.entries.get_mut().unwrap_or_else(|p| p.into_inner());
        let mut kept = entries
            .iter()
            .filter(|e| e.origin == Origin::Static)
            .count();
        entries.retain(|e| {
            let keep = e.origin == Origin::Static || kept < max;
            kept += usize::from(keep && e.origin != Origin::Static);
            keep
        });
        self
    }

    /// The bound on the set (`--max-peers`).
    pub fn max_peers(&self) -> usize {
        self.max_peers
    }

    /// Replaces the peers of one origin, keeping the state (breaker) of peers that stay.
    pub fn replace(&self, origin: Origin, urls: Vec<Url>) {
        // Compared as the set keeps them: `Upstream::base`, without userinfo.
        let urls: Vec<(Url, Url)> = urls
            .into_iter()
            .filter(|u| !self.is_self(u))
            .map(|u| (crate::redact::without_userinfo(&u), u))
            .collect();
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.retain(|e| {
            let keep = e.origin != origin || urls.iter().any(|(b, _)| *b == e.peer.base);
            if !keep {
                tracing::info!(peer = %e.peer, ?origin, "peer removed");
            }
            keep
        });
        for (bare, url) in urls {
            if entries.iter().any(|e| e.peer.base == bare) {
                continue; // already known (perhaps from another origin)
            }
            if origin != Origin::Static && entries.len() >= self.max_peers {
                tracing::warn!(peer = %Redacted(&url), ?origin, max_peers = self.max_peers, "peer set full; peer ignored");
                continue;
            }
            tracing::info!(peer = %Redacted(&url), ?origin, "peer added");
            entries.push(Entry {
                peer: Arc::new(Upstream::new(url)),
                origin,
                since: SystemTime::now(),
                holdings: None,
                id: None,
                serves: None,
            });
        }
    }

    /// The peers to ask, in a stable order.
    pub fn peers(&self) -> Vec<Arc<Upstream>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.iter().map(|e| e.peer.clone()).collect()
    }

    /// The peers that may hold `key` (see [`digest`]): those whose digest says so, and those
    /// whose digest is unknown. Order as in [`PeerSet::peers`].
    pub fn candidates(&self, key: &str) -> Vec<Arc<Upstream>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .filter(|e| e.holdings.as_ref().is_none_or(|h| h.contains(key)))
            .map(|e| e.peer.clone())
            .collect()
    }

    /// The peers whose digest says they probably hold `key` (peers without a digest are not
    /// counted: this decides whether to prefer peers at all).
    pub fn probable_holders(&self, key: &str) -> usize {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .filter(|e| !e.peer.breaker.is_open())
            .filter(|e| e.holdings.as_ref().is_some_and(|h| h.contains(key)))
            .count()
    }

    /// Records the digest fetched from the peer at `base` (`None`: it has none).
    pub fn set_holdings(&self, base: &Url, holdings: Option<Holdings>) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.iter_mut().find(|e| &e.peer.base == base) {
            e.holdings = holdings.map(Arc::new);
        }
    }

    /// This appliance's peer id.
    pub fn own_id(&self) -> &str {
        &self.own_id
    }

    /// The members that own `key` before this appliance, best first, at most
    /// [`fleet::OWNERS_TRIED`]; empty when this appliance owns it (or has no fleet). Members
    /// whose circuit is open (failing, or on probation for bad data) are left out.
    pub fn owners(&self, key: &str) -> Vec<Arc<Upstream>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let members = self.live_members(&entries);
        let mut owners: Vec<Arc<Upstream>> = fleet::owners(key, &self.own_id, &members)
            .into_iter()
            .map(|p| (*p).clone())
            .collect();
        owners.truncate(fleet::OWNERS_TRIED);
        owners
    }

    /// The live members among the top `n` owners of `key`, this appliance ranked with them
    /// (see [`fleet::top`]), that were configured (`--peer`, `--peers-dns`): an appliance
    /// found over mDNS is never sent uploads (nor the upload token). Empty without a fleet.
    pub fn replicas(&self, key: &str, n: usize) -> Vec<Arc<Upstream>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let members = self.live_members(&entries);
        let configured = |p: &Arc<Upstream>| {
            entries
                .iter()
                .any(|e| Arc::ptr_eq(&e.peer, p) && e.origin != Origin::Mdns)
        };
        let top = fleet::top(key, &self.own_id, &members, n);
        top.into_iter()
            .filter(|p| configured(p))
            .map(|p| (*p).clone())
            .collect()
    }

    /// The live member that owned `key` before this appliance joined (see
    /// [`fleet::successor`]); `None` without a fleet.
    pub fn successor(&self, key: &str) -> Option<Arc<Upstream>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let members = self.live_members(&entries);
        fleet::successor(key, &self.own_id, &members).map(|p| (*p).clone())
    }

    /// The live fleet members with their ids.
    fn live_members<'a>(&self, entries: &'a [Entry]) -> Vec<(String, &'a Arc<Upstream>)> {
        entries
            .iter()
            .filter(|e| e.in_fleet(self.membership) && !e.peer.breaker.is_open())
            .filter_map(|e| Some((e.id.clone()?, &e.peer)))
            .collect()
    }

    /// The peers that membership probes go to: the fleet members.
    pub fn fleet_members(&self) -> Vec<Arc<Upstream>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .filter(|e| e.in_fleet(self.membership))
            .map(|e| e.peer.clone())
            .collect()
    }

    /// Records the result of a membership probe of the peer at `base`: its id and what it
    /// serves runners as (`None`: the probe failed). A peer that claims our own id is not a
    /// member (it is us, or a copy of our cache dir).
    pub fn set_id(&self, base: &Url, id: Option<String>, serves: Option<String>) {
        let id = id.filter(|i| fleet::valid_id(i) && *i != self.own_id);
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.iter_mut().find(|e| &e.peer.base == base) {
            if e.id != id {
                tracing::info!(peer = %e.peer, id = ?id, "fleet membership changed");
            }
            e.id = id;
            e.serves = serves;
        }
    }

    /// Whether the member at `base` serves nixgate's own files as `field` (`zstd`, `none`),
    /// so that it can be asked for one (`fetch/nar/owned.rs`).
    pub fn serves(&self, base: &Url, field: &str) -> bool {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let e = entries.iter().find(|e| &e.peer.base == base);
        e.is_some_and(|e| e.serves.as_deref() == Some(field))
    }

    /// For the status route.
    pub fn status(&self) -> Vec<PeerStatus> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .map(|e| PeerStatus {
                url: e.peer.label().to_owned(),
                origin: e.origin,
                state: if e.peer.breaker.is_open() {
                    "skipped"
                } else {
                    "ok"
                },
                since_unix: e
                    .since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                digest: e.holdings.is_some(),
                owner: e.in_fleet(self.membership) && e.id.is_some() && !e.peer.breaker.is_open(),
                id: e.id.clone(),
                serves: e.serves.clone(),
            })
            .collect()
    }

    /// True when `url` points at this appliance: our port on one of our own addresses.
    fn is_self(&self, url: &Url) -> bool {
        let port = url.port_or_known_default();
        let Some(ip) = url.host().and_then(|h| match h {
            url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
            url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
            url::Host::Domain(_) => None,
        }) else {
            return false;
        };
        port == Some(self.own_port) && is_local_address(ip)
    }
}

/// Whether `ip` is an address of this host. Connecting a UDP socket sends nothing; the kernel
/// only picks a route, and for a local address the source it picks is that address.
pub fn is_local_address(ip: IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    let bind: SocketAddr = match ip {
        IpAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    UdpSocket::bind(bind)
        .and_then(|s| {
            s.connect((ip, 9))?;
            s.local_addr()
        })
        .is_ok_and(|local| local.ip() == ip)
}

/// This appliance's peer id (announced over mDNS as `id=`): 32 hex digits, made once from the
/// kernel's random source and kept in `<cache dir>/peer-id` so it survives restarts.
pub fn load_or_create_id(cache_dir: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let path = cache_dir.join("peer-id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(s.to_ascii_lowercase());
        }
    }
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = cache_dir.join("tmp").join("peer-id");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

/// The base URL of a peer at `addr`.
pub fn peer_url(addr: SocketAddr) -> Url {
    Url::parse(&format!("http://{addr}/")).expect("a socket address makes a valid URL")
}

#[cfg(test)]
mod tests;
