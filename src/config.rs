//! Configuration: command-line flags, `NIXGATE_*` environment variables and an optional TOML
//! file, resolved with the precedence flag > env > file > default, then validated once.
//!
//! Every setting has a named default below whose doc comment says why it is what it is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use thiserror::Error;
use url::Url;

use crate::nix::signature::{KeyError, PublicKey, TrustedKeys, CACHE_NIXOS_ORG_KEY};
use crate::units::{parse_duration, parse_size, UnitError};

/// The appliance listens on every address, IPv6 and IPv4, on the port runners expect.
fn default_listen() -> String {
    "[::]:8080".into()
}
/// The BitTorrent port peers expect, on every address.
fn default_torrent_listen() -> String {
    "[::]:6881".into()
}
/// NARs below this are quick from any upstream; switching sources is not worth it.
fn default_accelerate_size() -> String {
    "32MiB".into()
}
/// An upstream slower than this (bytes per second, measured after 2 s) makes a large NAR that a
/// peer holds switch to the swarm: about a 100 Mbit/s link's worth.
fn default_accelerate_below() -> String {
    "10MiB".into()
}
/// 10 GiB holds the closures of a typical CI farm's hot set without filling a small volume.
fn default_max_cache_size() -> String {
    "10GiB".into()
}
/// The public Nix cache; the default a runner would use without nixgate.
fn default_upstreams() -> Vec<String> {
    vec!["https://cache.nixos.org".into()]
}
/// The key cache.nixos.org signs with.
fn default_trusted_keys() -> Vec<String> {
    vec![CACHE_NIXOS_ORG_KEY.into()]
}
/// Below cache.nixos.org's 40, so runners that list both prefer the appliance.
fn default_priority() -> u32 {
    30
}
/// Upstream 404s are remembered briefly: long enough to absorb a burst of identical misses
/// from many runners, short enough that a path pushed upstream a minute later is found.
fn default_negative_ttl() -> String {
    "30s".into()
}
/// 503 makes Nix retry (and, with `fallback = true`, move on); a 404 would be cached an hour.
fn default_upstream_down_status() -> u16 {
    503
}
/// Nix master honours Retry-After as a minimum delay between its 5 retries.
fn default_retry_after() -> String {
    "5s".into()
}
/// An upstream that cannot complete a TCP+TLS handshake in 5 s is treated as down.
fn default_connect_timeout() -> String {
    "5s".into()
}
/// Time from request sent to response headers; generous for a CDN under load.
fn default_first_byte_timeout() -> String {
    "20s".into()
}
/// A body that delivers no bytes for this long is abandoned (Nix's own limit is 300 s).
fn default_stall_timeout() -> String {
    "30s".into()
}

/// nixgate — a Nix binary-cache appliance for CI networks and office LANs.
///
/// Point your runners' `substituters` at it; it fetches from upstream caches, verifies every
/// narinfo signature and every NAR hash, and keeps a disk LRU cache.
#[derive(Debug, Parser)]
#[command(name = "nixgate", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance.
    Serve(ServeArgs),
    /// Validate the configuration (flags, NIXGATE_* env, --config file) and exit.
    ///
    /// Exits 0 and prints the resolved settings when they are usable, non-zero with the
    /// reason otherwise (a malformed key, an unparseable size, an unwritable cache dir, …).
    CheckConfig(ServeArgs),
    /// Find nixgate appliances on the local network over mDNS and print them for nix.conf.
    ///
    /// Browses `_nixgate._tcp.local.` for --timeout, keeps the appliances that answer
    /// /nix-cache-info, and prints them fastest first, e.g.
    /// `extra-substituters = http://192.168.1.20:8080`. Exits 1 when none answers.
    Discover(DiscoverArgs),
    /// Probe a running appliance's /healthz (for container HEALTHCHECKs; no curl needed).
    Health {
        /// The appliance's base URL.
        #[arg(
            long,
            default_value = "http://127.0.0.1:8080",
            env = "NIXGATE_HEALTH_URL"
        )]
        url: String,
    },
}

/// Flags of `discover`.
#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// How long to listen for announcements, e.g. 3s, 500ms.
    #[arg(long, default_value = "3s", value_parser = parse_duration_arg)]
    pub timeout: Duration,
    /// Output: a nix.conf line, one URL per line, or JSON with addresses, TXT and latency.
    #[arg(long, value_enum, default_value_t = DiscoverFormat::NixConf)]
    pub format: DiscoverFormat,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// Output format of `discover`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiscoverFormat {
    /// `extra-substituters = URL URL…`
    NixConf,
    /// One URL per line.
    Url,
    /// A JSON array, fastest first.
    Json,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Flags of `serve` and `check-config`. Each also reads `NIXGATE_<FLAG>` and a key of the same
/// name in the `--config` TOML file; a flag beats the env var, which beats the file.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flag names, e.g.
    /// `max-cache-size = "50GiB"`, `upstream = ["https://…"]`).
    #[arg(long, env = "NIXGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address for runners' HTTP requests [default: [::]:8080].
    #[arg(long, env = "NIXGATE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// Directory of the disk cache [default: /var/cache/nixgate if writable, else
    /// $XDG_CACHE_HOME/nixgate].
    #[arg(long, env = "NIXGATE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Size cap of the disk cache; least recently used entries are evicted beyond it
    /// (e.g. 50GiB, 500MiB) [default: 10GiB].
    #[arg(long, env = "NIXGATE_MAX_CACHE_SIZE", value_name = "SIZE")]
    pub max_cache_size: Option<String>,

    /// Upstream binary cache, repeatable, tried in order
    /// [default: https://cache.nixos.org].
    #[arg(
        long = "upstream",
        env = "NIXGATE_UPSTREAM",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub upstreams: Vec<String>,

    /// Key whose signatures make a narinfo trusted, as NAME:BASE64 (repeatable; same format
    /// as nix.conf `trusted-public-keys`) [default: the cache.nixos.org-1 key].
    #[arg(
        long = "trusted-public-key",
        env = "NIXGATE_TRUSTED_PUBLIC_KEY",
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub trusted_public_keys: Vec<String>,

    /// `Priority` advertised in /nix-cache-info (lower is preferred by Nix) [default: 30].
    #[arg(long, env = "NIXGATE_PRIORITY", value_name = "N")]
    pub priority: Option<u32>,

    /// How long an upstream 404 is remembered [default: 30s].
    #[arg(long, env = "NIXGATE_NEGATIVE_TTL", value_name = "DURATION")]
    pub negative_ttl: Option<String>,

    /// Status answered for a miss while every upstream is failing: 503 (Nix retries) or 404
    /// [default: 503].
    #[arg(long, env = "NIXGATE_UPSTREAM_DOWN_STATUS", value_name = "503|404")]
    pub upstream_down_status: Option<u16>,

    /// `Retry-After` sent with that 503 [default: 5s].
    #[arg(long, env = "NIXGATE_RETRY_AFTER", value_name = "DURATION")]
    pub retry_after: Option<String>,

    /// Upstream TCP+TLS connect timeout [default: 5s].
    #[arg(long, env = "NIXGATE_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<String>,

    /// Upstream time to response headers [default: 20s].
    #[arg(long, env = "NIXGATE_FIRST_BYTE_TIMEOUT", value_name = "DURATION")]
    pub first_byte_timeout: Option<String>,

    /// Abandon an upstream body that sends nothing for this long [default: 30s].
    #[arg(long, env = "NIXGATE_STALL_TIMEOUT", value_name = "DURATION")]
    pub stall_timeout: Option<String>,

    /// Log format [default: human]. The level is set with RUST_LOG (default `info`).
    #[arg(long, env = "NIXGATE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Peer appliance, e.g. http://10.0.0.7:8080 (repeatable): asked when every upstream
    /// fails, and per --peer-policy. Peers are asked with `Cache-Control: only-if-cached`, and
    /// everything they send is verified against the trusted keys and the signed NarHash.
    #[arg(
        long = "peer",
        env = "NIXGATE_PEER",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub peers: Vec<String>,

    /// DNS name whose addresses are peer appliances, re-resolved every 30 s (e.g. a
    /// Kubernetes headless Service: nixgate-peers.ci.svc:8080) [default port: 8080].
    #[arg(long, env = "NIXGATE_PEERS_DNS", value_name = "NAME[:PORT]")]
    pub peers_dns: Option<String>,

    /// Disable BitTorrent between appliances (seeding cached NARs to peers, and fetching from
    /// peers' swarm when every upstream fails).
    #[arg(long, env = "NIXGATE_NO_TORRENT", value_parser = BoolishValueParser::new())]
    pub no_torrent: bool,

    /// TCP address BitTorrent listens on; peers learn the port from the torrent route
    /// [default: [::]:6881]. DHT, local peer discovery and UPnP are never used.
    #[arg(long, env = "NIXGATE_TORRENT_LISTEN", value_name = "ADDR")]
    pub torrent_listen: Option<String>,

    /// BitTorrent tracker announce URL (repeatable; http, https or udp), e.g. a site
    /// opentracker; added to every torrent this appliance seeds or fetches.
    #[arg(
        long = "tracker",
        env = "NIXGATE_TRACKER",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub trackers: Vec<String>,

    /// Which source a NAR miss tries first when a peer holds it: `http-first` (upstreams
    /// first; a large NAR switches to the swarm when the upstream is slow, see
    /// --accelerate-below) or `peers-first` (the LAN swarm first, saving egress) [default:
    /// http-first].
    #[arg(long, env = "NIXGATE_PEER_POLICY", value_enum)]
    pub peer_policy: Option<PeerPolicy>,

    /// With http-first: NARs at least this large may switch to the swarm [default: 32MiB].
    #[arg(long, env = "NIXGATE_ACCELERATE_SIZE", value_name = "SIZE")]
    pub accelerate_size: Option<String>,

    /// With http-first: switch when the upstream delivers less than this per second, measured
    /// 2 s into the download [default: 10MiB].
    #[arg(long, env = "NIXGATE_ACCELERATE_BELOW", value_name = "SIZE")]
    pub accelerate_below: Option<String>,

    /// Most torrents seeded at once; the least recently asked beyond it stop until asked
    /// again (each live torrent holds a file descriptor and ~16 KB) [default: 512].
    #[arg(long, env = "NIXGATE_TORRENT_HOT_SET", value_name = "N")]
    pub torrent_hot_set: Option<usize>,

    /// Cap on BitTorrent upload, per second, e.g. 20MiB [default: no cap].
    #[arg(long, env = "NIXGATE_TORRENT_UPLOAD_LIMIT", value_name = "SIZE")]
    pub torrent_upload_limit: Option<String>,

    /// Do not announce this appliance over mDNS (`_nixgate._tcp.local.`) nor browse the LAN
    /// for sibling appliances. [default: mDNS on, except inside Kubernetes (where
    /// KUBERNETES_SERVICE_HOST is set), where multicast does not cross the pod network].
    /// `--no-mdns=false` turns it on anywhere.
    #[arg(
        long,
        env = "NIXGATE_NO_MDNS",
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub no_mdns: Option<bool>,
}

/// The `--config` file: the same settings, kebab-case keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub listen: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub max_cache_size: Option<String>,
    #[serde(alias = "upstreams")]
    pub upstream: Option<Vec<String>>,
    #[serde(alias = "trusted-public-keys")]
    pub trusted_public_key: Option<Vec<String>>,
    pub priority: Option<u32>,
    pub negative_ttl: Option<String>,
    pub upstream_down_status: Option<u16>,
    pub retry_after: Option<String>,
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub stall_timeout: Option<String>,
    pub log_format: Option<LogFormat>,
    #[serde(alias = "peers")]
    pub peer: Option<Vec<String>>,
    pub peers_dns: Option<String>,
    pub no_torrent: Option<bool>,
    pub torrent_listen: Option<String>,
    #[serde(alias = "trackers")]
    pub tracker: Option<Vec<String>>,
    pub no_mdns: Option<bool>,
    pub peer_policy: Option<PeerPolicy>,
    pub accelerate_size: Option<String>,
    pub accelerate_below: Option<String>,
    pub torrent_upload_limit: Option<String>,
    pub torrent_hot_set: Option<usize>,
}

/// Which source a NAR miss tries first when a peer holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerPolicy {
    /// Upstreams first; large NARs switch to the swarm when the upstream is slow.
    #[default]
    HttpFirst,
    /// The swarm of LAN peers first, then upstreams.
    PeersFirst,
}

/// When and how peers are preferred.
#[derive(Debug, Clone, Copy)]
pub struct PeerTuning {
    pub policy: PeerPolicy,
    pub accelerate_size: u64,
    pub accelerate_below: u64,
    pub upload_limit: Option<u64>,
    pub hot_set: usize,
}

/// Upstream timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub stall: Duration,
}

/// The resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub cache_dir: PathBuf,
    pub max_cache_size: u64,
    pub upstreams: Vec<Url>,
    pub trusted_keys: TrustedKeys,
    pub priority: u32,
    pub negative_ttl: Duration,
    pub upstream_down_status: u16,
    pub retry_after: Duration,
    pub timeouts: Timeouts,
    pub log_format: LogFormat,
    pub peers: Vec<Url>,
    pub peers_dns: Option<DnsPeers>,
    pub torrent: bool,
    pub torrent_listen: SocketAddr,
    pub trackers: Vec<Url>,
    pub tuning: PeerTuning,
    pub mdns: bool,
}

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

/// A setting that cannot be used, with the setting's name in the message.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("--listen {0:?} is not an address like [::]:8080 or 0.0.0.0:8080")]
    Listen(String),
    #[error("--{flag}: {source}")]
    Unit {
        flag: &'static str,
        source: UnitError,
    },
    #[error("--max-cache-size must be at least 1MiB")]
    CacheTooSmall,
    #[error("--upstream {url:?}: {reason}")]
    Upstream { url: String, reason: String },
    #[error("--trusted-public-key: {0}")]
    Key(#[from] KeyError),
    #[error("no --trusted-public-key given: nothing could ever be verified")]
    NoKeys,
    #[error("--upstream-down-status must be 503 or 404, not {0}")]
    DownStatus(u16),
    #[error("--peer {url:?}: {reason}")]
    Peer { url: String, reason: String },
    #[error("--peers-dns {0:?} is not NAME or NAME:PORT")]
    PeersDns(String),
    #[error("--torrent-listen {0:?} is not an address like [::]:6881 or 0.0.0.0:6881")]
    TorrentListen(String),
    #[error(
        "--tracker needs a fixed --torrent-listen port (not 0): trackers hand it out to peers"
    )]
    TrackerNeedsPort,
    #[error("--tracker {url:?}: {reason}")]
    Tracker { url: String, reason: String },
    #[error("--cache-dir {path}: {reason}")]
    CacheDir { path: PathBuf, reason: String },
}

fn unit<T>(flag: &'static str, r: Result<T, UnitError>) -> Result<T, ConfigError> {
    r.map_err(|source| ConfigError::Unit { flag, source })
}

/// Splits list values that came as one string (`"a b"` as in nix.conf, or `a,b` in env).
fn flatten(list: Vec<String>) -> Vec<String> {
    list.iter()
        .flat_map(|s| s.split([' ', ',', '\n', '\t']))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn pick_list(
    cli: Vec<String>,
    file: Option<Vec<String>>,
    default: fn() -> Vec<String>,
) -> Vec<String> {
    let cli = flatten(cli);
    if !cli.is_empty() {
        return cli;
    }
    file.map(flatten).unwrap_or_else(default)
}

fn parse_upstream(s: &str) -> Result<Url, ConfigError> {
    let err = |reason: &str| ConfigError::Upstream {
        url: s.to_owned(),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(s).map_err(|e| err(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(err("only http:// and https:// upstreams are supported"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err("must not have a query or fragment"));
    }
    // Nix resolves narinfo URLs against the cache URL with a trailing slash.
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

/// A peer appliance's base URL: http(s), no query, trailing slash.
fn parse_peer(s: &str) -> Result<Url, ConfigError> {
    parse_upstream(s).map_err(|e| match e {
        ConfigError::Upstream { url, reason } => ConfigError::Peer { url, reason },
        other => other,
    })
}

fn parse_peers_dns(s: &str) -> Result<DnsPeers, ConfigError> {
    let bad = || ConfigError::PeersDns(s.to_owned());
    let (name, port) = match s.rsplit_once(':') {
        Some((n, p)) => (n, p.parse::<u16>().map_err(|_| bad())?),
        None => (s, 8080),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if port == 0 || name.len() > 253 || !name.trim_end_matches('.').split('.').all(label_ok) {
        return Err(bad());
    }
    Ok(DnsPeers {
        name: name.to_owned(),
        port,
    })
}

fn parse_tracker(s: &str) -> Result<Url, ConfigError> {
    let err = |reason: String| ConfigError::Tracker {
        url: s.to_owned(),
        reason,
    };
    let url = Url::parse(s).map_err(|e| err(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https" | "udp") || url.host().is_none() {
        return Err(err(
            "trackers are http://, https:// or udp://HOST:PORT".into()
        ));
    }
    Ok(url)
}

/// `/var/cache/nixgate` when it is (or can be made) writable, else the XDG cache dir.
fn default_cache_dir() -> PathBuf {
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

/// Creates `dir` if needed and proves a file can be written in it.
pub fn check_writable(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create: {e}"))?;
    let probe = dir.join(format!(".nixgate-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"ok").map_err(|e| format!("not writable: {e}"))?;
    std::fs::remove_file(&probe).map_err(|e| format!("cannot remove files: {e}"))
}

impl ServeArgs {
    /// Reads the `--config` file, if any.
    fn file(&self) -> Result<FileConfig, ConfigError> {
        let Some(path) = &self.config else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
            path: path.clone(),
            message: e.message().to_owned(),
        })
    }

    /// Resolves flags, env and file into a validated [`Config`] (creating the cache dir).
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let f = self.file()?;
        let listen_s = self.listen.or(f.listen).unwrap_or_else(default_listen);
        let listen = listen_s
            .parse()
            .map_err(|_| ConfigError::Listen(listen_s.clone()))?;
        let size_s = self
            .max_cache_size
            .or(f.max_cache_size)
            .unwrap_or_else(default_max_cache_size);
        let max_cache_size = unit("max-cache-size", parse_size(&size_s))?;
        if max_cache_size < 1 << 20 {
            return Err(ConfigError::CacheTooSmall);
        }
        let upstreams = pick_list(self.upstreams, f.upstream, default_upstreams)
            .iter()
            .map(|s| parse_upstream(s))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = pick_list(
            self.trusted_public_keys,
            f.trusted_public_key,
            default_trusted_keys,
        )
        .iter()
        .map(|k| k.parse::<PublicKey>())
        .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(ConfigError::NoKeys);
        }
        let dur = |flag, v: Option<String>, fv: Option<String>, d: fn() -> String| {
            unit(flag, parse_duration(&v.or(fv).unwrap_or_else(d)))
        };
        let upstream_down_status = self
            .upstream_down_status
            .or(f.upstream_down_status)
            .unwrap_or_else(default_upstream_down_status);
        if !matches!(upstream_down_status, 503 | 404) {
            return Err(ConfigError::DownStatus(upstream_down_status));
        }
        let cache_dir = self
            .cache_dir
            .or(f.cache_dir)
            .unwrap_or_else(default_cache_dir);
        check_writable(&cache_dir).map_err(|reason| ConfigError::CacheDir {
            path: cache_dir.clone(),
            reason,
        })?;
        let peers = pick_list(self.peers, f.peer, Vec::new)
            .iter()
            .map(|s| parse_peer(s))
            .collect::<Result<Vec<_>, _>>()?;
        let peers_dns = self
            .peers_dns
            .or(f.peers_dns)
            .filter(|s| !s.is_empty())
            .map(|s| parse_peers_dns(&s))
            .transpose()?;
        let torrent_s = self
            .torrent_listen
            .or(f.torrent_listen)
            .unwrap_or_else(default_torrent_listen);
        let torrent_listen: SocketAddr = torrent_s
            .parse()
            .map_err(|_| ConfigError::TorrentListen(torrent_s.clone()))?;
        let trackers = pick_list(self.trackers, f.tracker, Vec::new)
            .iter()
            .map(|s| parse_tracker(s))
            .collect::<Result<Vec<_>, _>>()?;
        if !trackers.is_empty() && torrent_listen.port() == 0 {
            return Err(ConfigError::TrackerNeedsPort);
        }
        let size = |flag, v: Option<String>, fv: Option<String>, d: fn() -> String| {
            unit(flag, parse_size(&v.or(fv).unwrap_or_else(d)))
        };
        let tuning = PeerTuning {
            policy: self.peer_policy.or(f.peer_policy).unwrap_or_default(),
            accelerate_size: size(
                "accelerate-size",
                self.accelerate_size,
                f.accelerate_size,
                default_accelerate_size,
            )?,
            accelerate_below: size(
                "accelerate-below",
                self.accelerate_below,
                f.accelerate_below,
                default_accelerate_below,
            )?,
            upload_limit: self
                .torrent_upload_limit
                .or(f.torrent_upload_limit)
                .map(|s| unit("torrent-upload-limit", parse_size(&s)))
                .transpose()?,
            hot_set: self
                .torrent_hot_set
                .or(f.torrent_hot_set)
                .unwrap_or(512)
                .max(1),
        };
        Ok(Config {
            listen,
            cache_dir,
            max_cache_size,
            upstreams,
            trusted_keys: TrustedKeys::new(keys),
            priority: self
                .priority
                .or(f.priority)
                .unwrap_or_else(default_priority),
            negative_ttl: dur(
                "negative-ttl",
                self.negative_ttl,
                f.negative_ttl,
                default_negative_ttl,
            )?,
            upstream_down_status,
            retry_after: dur(
                "retry-after",
                self.retry_after,
                f.retry_after,
                default_retry_after,
            )?,
            timeouts: Timeouts {
                connect: dur(
                    "connect-timeout",
                    self.connect_timeout,
                    f.connect_timeout,
                    default_connect_timeout,
                )?,
                first_byte: dur(
                    "first-byte-timeout",
                    self.first_byte_timeout,
                    f.first_byte_timeout,
                    default_first_byte_timeout,
                )?,
                stall: dur(
                    "stall-timeout",
                    self.stall_timeout,
                    f.stall_timeout,
                    default_stall_timeout,
                )?,
            },
            log_format: self.log_format.or(f.log_format).unwrap_or(LogFormat::Human),
            peers,
            peers_dns,
            // Flags and env can only switch these off; the file can too.
            torrent: !(self.no_torrent || f.no_torrent.unwrap_or(false)),
            torrent_listen,
            trackers,
            tuning,
            mdns: match self.no_mdns.or(f.no_mdns) {
                Some(no) => !no,
                None => std::env::var_os("KUBERNETES_SERVICE_HOST").is_none(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cache: &Path) -> ServeArgs {
        ServeArgs {
            cache_dir: Some(cache.to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_follow_the_interface_contract() {
        let dir = tempfile::tempdir().unwrap();
        let c = args(dir.path()).resolve().unwrap();
        assert_eq!(c.listen.to_string(), "[::]:8080");
        assert_eq!(c.max_cache_size, 10 << 30);
        assert_eq!(c.upstreams[0].as_str(), "https://cache.nixos.org/");
        assert_eq!(c.trusted_keys.keys()[0].to_string(), CACHE_NIXOS_ORG_KEY);
        assert!(c.torrent && c.mdns);
    }

    #[test]
    fn flag_beats_file_and_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nixgate.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9999\"\nmax-cache-size = \"2GiB\"\nupstream = [\"http://127.0.0.1:1/a\"]\nno-mdns = true\n",
        )
        .unwrap();
        let mut a = args(dir.path());
        a.config = Some(file);
        a.max_cache_size = Some("500MiB".into());
        let c = a.resolve().unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9999");
        assert_eq!(c.max_cache_size, 500 << 20);
        assert_eq!(c.upstreams[0].as_str(), "http://127.0.0.1:1/a/");
        assert!(!c.mdns);
    }

    #[test]
    fn no_mdns_flag_forms() {
        let parse = |argv: &[&str]| match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => a.no_mdns,
            _ => unreachable!(),
        };
        assert_eq!(parse(&["nixgate", "serve"]), None);
        assert_eq!(
            parse(&["nixgate", "serve", "--no-mdns", "--listen", "[::]:1"]),
            Some(true)
        );
        assert_eq!(parse(&["nixgate", "serve", "--no-mdns=false"]), Some(false));
        assert_eq!(parse(&["nixgate", "serve", "--no-mdns=0"]), Some(false));
        // An explicit `false` (flag or env) beats `no-mdns = true` in the file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nixgate.toml");
        std::fs::write(&file, "no-mdns = true\n").unwrap();
        let mut a = args(dir.path());
        a.config = Some(file);
        a.no_mdns = Some(false);
        assert!(a.resolve().unwrap().mdns);
    }

    #[test]
    fn clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.torrent_listen = Some("127.0.0.1:0".into());
        a.trackers = vec!["http://127.0.0.1:6969/announce".into()];
        assert!(matches!(a.resolve(), Err(ConfigError::TrackerNeedsPort)));

        let mut a = args(dir.path());
        a.max_cache_size = Some("10 GB".into());
        let e = a.resolve().unwrap_err().to_string();
        assert!(e.contains("--max-cache-size") && e.contains("10 GB"), "{e}");

        let mut a = args(dir.path());
        a.trusted_public_keys = vec!["cache.nixos.org-1:notbase64!".into()];
        assert!(matches!(
            a.resolve(),
            Err(ConfigError::Key(KeyError::Base64(_)))
        ));

        let mut a = args(dir.path());
        a.upstreams = vec!["ftp://127.0.0.1/".into()];
        assert!(matches!(a.resolve(), Err(ConfigError::Upstream { .. })));

        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "max-cach-size = \"1GiB\"\n").unwrap();
        let mut a = args(dir.path());
        a.config = Some(file);
        let e = a.resolve().unwrap_err().to_string();
        assert!(e.contains("max-cach-size"), "{e}");
    }

    #[test]
    fn lists_split_like_nix_conf() {
        assert_eq!(
            flatten(vec!["a b,c".into(), "d".into()]),
            ["a", "b", "c", "d"]
        );
    }

    #[test]
    fn peers_and_torrent_settings() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nixgate.toml");
        std::fs::write(
            &file,
            "peer = [\"http://10.0.0.7:8080\"]\npeers-dns = \"nixgate-peers.ci.svc\"\n\
             tracker = [\"udp://127.0.0.1:6969/announce\"]\ntorrent-listen = \"0.0.0.0:7000\"\n",
        )
        .unwrap();
        let mut a = args(dir.path());
        a.config = Some(file);
        let c = a.resolve().unwrap();
        assert_eq!(c.peers[0].as_str(), "http://10.0.0.7:8080/");
        assert_eq!(
            c.peers_dns,
            Some(DnsPeers {
                name: "nixgate-peers.ci.svc".into(),
                port: 8080
            })
        );
        assert_eq!(c.torrent_listen.port(), 7000);
        assert_eq!(c.trackers.len(), 1);

        let d = args(dir.path()).resolve().unwrap();
        assert!(d.peers.is_empty() && d.peers_dns.is_none() && d.trackers.is_empty());
        assert_eq!(d.torrent_listen.to_string(), "[::]:6881");

        assert_eq!(parse_peers_dns("peers.local:9000").unwrap().port, 9000);
        for bad in ["", "a..b", "peers:0", "peers:x", "bad name", "http://x"] {
            assert!(parse_peers_dns(bad).is_err(), "{bad:?}");
        }
        for bad in ["ftp://x/", "/relative", "http://x/?q=1"] {
            assert!(
                matches!(parse_peer(bad), Err(ConfigError::Peer { .. })),
                "{bad:?}"
            );
        }
        assert!(parse_tracker("wss://x/announce").is_err());
    }
}
