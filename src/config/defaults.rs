//! The default of every setting, each a named function whose doc comment says why it is what
//! it is.

use std::path::PathBuf;

use crate::nix::signature::CACHE_NIXOS_ORG_KEY;
use crate::store::check_writable;

/// The appliance listens on every address, IPv6 and IPv4, on the port runners expect.
pub(super) fn default_listen() -> String {
    "[::]:8080".into()
}
/// The BitTorrent port peers expect, on every address.
pub(super) fn default_torrent_listen() -> String {
    "[::]:6881".into()
}
/// NARs below this are quick from any upstream; switching sources is not worth it.
pub(super) fn default_accelerate_size() -> String {
    "32MiB".into()
}
/// An upstream slower than this (bytes per second, measured after 2 s) makes a large NAR that a
/// peer holds switch to the swarm: about a 100 Mbit/s link's worth.
pub(super) fn default_accelerate_below() -> String {
    "10MiB".into()
}
/// Each live torrent holds a file descriptor and ~16 KB: 512 cost about 8 MB and half of a
/// common `ulimit -n` of 1024.
pub(super) fn default_torrent_hot_set() -> usize {
    512
}
/// One status sample per 10 s: 360 samples are the last hour (the day ring takes every 30th).
pub(super) fn default_status_interval() -> String {
    "10s".into()
}
/// A fleet or office LAN rarely has more appliances; each peer costs a digest (up to 4 MiB)
/// and a probe every few seconds, so a LAN host announcing thousands cannot exhaust memory.
pub(super) fn default_max_peers() -> usize {
    64
}
/// Hashing a cached NAR into a torrent reads it whole on the blocking pool that also serves
/// cached files; two at once keep one core free for serving on a small appliance.
pub(super) fn default_hash_concurrency() -> usize {
    2
}
/// 10 GiB holds the closures of a typical CI farm's hot set without filling a small volume.
pub(super) fn default_max_cache_size() -> String {
    "10GiB".into()
}
/// Uploads are CI's own builds: 10 GiB holds many closures' worth of them; beyond it the
/// operator decides what goes (uploads are never evicted silently).
pub(super) fn default_upload_max_size() -> String {
    "10GiB".into()
}
/// NARs wait here between their PUT and their narinfo's (seconds, for `nix copy`); 1 GiB
/// covers several large NARs uploaded in parallel.
pub(super) fn default_upload_staging_size() -> String {
    "1GiB".into()
}
/// A NAR whose narinfo has not come within an hour was abandoned by its runner.
pub(super) fn default_upload_staging_age() -> String {
    "1h".into()
}
/// The public Nix cache; the default a runner would use without nixgate.
pub(super) fn default_upstreams() -> Vec<String> {
    vec!["https://cache.nixos.org".into()]
}
/// No credentials unless the operator names a file: unlike Nix (`/etc/nix/netrc`), an
/// appliance must not pick up a host's netrc and send its secrets upstream by surprise.
pub(super) fn default_netrc_file() -> Option<PathBuf> {
    None
}
/// The key cache.nixos.org signs with.
pub(super) fn default_trusted_keys() -> Vec<String> {
    vec![CACHE_NIXOS_ORG_KEY.into()]
}
/// Below cache.nixos.org's 40, so runners that list both prefer the appliance.
pub(super) fn default_priority() -> u32 {
    30
}
/// Upstream 404s are remembered briefly: long enough to absorb a burst of identical misses
/// from many runners, short enough that a path pushed upstream a minute later is found.
pub(super) fn default_negative_ttl() -> String {
    "30s".into()
}
/// 503 makes Nix retry (and, with `fallback = true`, move on); a 404 would be cached an hour.
pub(super) fn default_upstream_down_status() -> u16 {
    503
}
/// Nix master honours Retry-After as a minimum delay between its 5 retries.
pub(super) fn default_retry_after() -> String {
    "5s".into()
}
/// An upstream that cannot complete a TCP+TLS handshake in 5 s is treated as down.
pub(super) fn default_connect_timeout() -> String {
    "5s".into()
}
/// Time from request sent to response headers; generous for a CDN under load.
pub(super) fn default_first_byte_timeout() -> String {
    "20s".into()
}
/// A body that delivers no bytes for this long is abandoned (Nix's own limit is 300 s).
pub(super) fn default_stall_timeout() -> String {
    "30s".into()
}
/// A narinfo is under 64 KiB: 1-2 ms from a LAN nginx, well under a second from a CDN; 10 s
/// allows a slow one and bounds a drip-fed one (every runner of that path waits on it).
pub(super) fn default_narinfo_timeout() -> String {
    "10s".into()
}
/// 4 KiB/s is a floor no working link falls under (Nix's own `lowSpeedLimit` idea); over a
/// 30 s window a source must send 120 KiB, so a drip of a byte every few seconds is cut.
pub(super) fn default_min_transfer_rate() -> String {
    "4KiB".into()
}
/// A client that accepts no bytes for 30 s is stalled, not slow: Nix's own transfer timeout
/// is far longer, and a busy runner still reads something every few seconds.
pub(super) fn default_send_timeout() -> String {
    "30s".into()
}
/// 4096 connections are ~16 per runner for 256 runners (Nix opens up to 25 while substituting
/// but few stay busy), and cost a few tens of MiB at most; with the reserve and the cache's
/// files it fits a raised `ulimit -n` of 8192 or more.
pub(super) fn default_max_connections() -> usize {
    4096
}
/// One address rarely needs more than ten Nix clients' worth (25 each); a single LAN host
/// cannot take more than a sixteenth of the default global limit.
pub(super) fn default_max_connections_per_ip() -> usize {
    256
}
/// mDNS is on, except inside Kubernetes (where `KUBERNETES_SERVICE_HOST` is set): multicast
/// does not cross the pod network there.
pub(super) fn default_mdns() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_none()
}

/// `/var/cache/nixgate` when it is (or can be made) writable, else the XDG cache dir.
pub(super) fn default_cache_dir() -> PathBuf {
    let system = PathBuf::from("/var/cache/nixgate");
    if check_writable(&system).is_ok() {
        return system;
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("nixgate")
}
