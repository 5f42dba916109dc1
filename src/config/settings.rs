//! [`ServeArgs`]: every setting of `serve`, declared once. clap reads it from flags and
//! `NIXGATE_*` env vars, serde from the `--config` TOML file (keys as the flag names); the two
//! are layered flag > env > file, and [`ServeArgs::resolve`] fills in the defaults.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::Args;
use serde::Deserialize;

use super::parse::flatten;
use super::ConfigError;
use crate::fetch::{PeerPolicy, ServeCompression};
use crate::telemetry::LogFormat;

/// Flags of `serve` and `check-config`. Each also reads `NIXGATE_<FLAG>` and a key of the same
/// name in the `--config` TOML file; a flag beats the env var, which beats the file.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flag names, e.g.
    /// `max-cache-size = "50GiB"`, `upstream = ["https://…"]`).
    #[arg(long, env = "NIXGATE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
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
    #[serde(rename = "upstream", alias = "upstreams")]
    pub upstreams: Option<Vec<String>>,

    /// netrc file with credentials for upstream caches (`machine HOST login USER password
    /// SECRET`, as Nix's `netrc-file`): each upstream request to HOST carries them as Basic
    /// auth; peers and fleet members never get them [default: none].
    #[arg(long, env = "NIXGATE_NETRC_FILE", value_name = "FILE")]
    pub netrc_file: Option<PathBuf>,

    /// PEM file of extra CAs trusted for https upstreams, beside the built-in Mozilla roots
    /// (a TLS-inspecting proxy's CA, a private upstream's) [default: $SSL_CERT_FILE if set].
    /// Upstream requests honour HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY; peers and
    /// fleet members are always asked directly.
    #[arg(long, env = "NIXGATE_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// S3-compatible bucket below the local disk, shared by sites
    /// (`s3://BUCKET/PREFIX?endpoint=URL&region=R&style=path|virtual&part-size=SIZE`): a miss asks it
    /// before any upstream, and what is fetched is written to it in the background.
    /// Credentials only from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY(/AWS_SESSION_TOKEN) or
    /// the AWS_SHARED_CREDENTIALS_FILE (~/.aws/credentials) profile AWS_PROFILE, never in the
    /// URL; with none, requests are anonymous [default: none].
    #[arg(long, env = "NIXGATE_OBJECT_STORE", value_name = "URL")]
    pub object_store: Option<String>,

    /// Key whose signatures make a narinfo trusted, as NAME:BASE64 (repeatable; same format
    /// as nix.conf `trusted-public-keys`) [default: the cache.nixos.org-1 key].
    #[arg(
        long = "trusted-public-key",
        env = "NIXGATE_TRUSTED_PUBLIC_KEY",
        value_name = "KEY",
        value_delimiter = ','
    )]
    #[serde(rename = "trusted-public-key", alias = "trusted-public-keys")]
    pub trusted_public_keys: Option<Vec<String>>,

    /// `Priority` advertised in /nix-cache-info (lower is preferred by Nix) [default: 30].
    #[arg(long, env = "NIXGATE_PRIORITY", value_name = "N")]
    pub priority: Option<u32>,

    /// What runners get NARs as: `zstd` (recompressed once per NAR from the verified file;
    /// runners decode it 8-10x faster than xz), `none` (the plain NAR, for very fast LANs) or
    /// `upstream` (the upstream's files and narinfos, unchanged). Clients that are not a Nix
    /// able to decode it get the upstream's [default: zstd].
    #[arg(long, env = "NIXGATE_SERVE_COMPRESSION", value_enum)]
    pub serve_compression: Option<ServeCompression>,

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

    /// Abandon a narinfo from an upstream that is not complete this long after it was asked
    /// (headers and body); peers and fleet members get at most 3 s and 6 s [default: 10s].
    #[arg(long, env = "NIXGATE_NARINFO_TIMEOUT", value_name = "DURATION")]
    pub narinfo_timeout: Option<String>,

    /// Abandon a NAR source (upstream, fleet member, peer) that sends less than this many
    /// bytes per second, averaged over each --stall-timeout window; the download continues
    /// from the next source [default: 4KiB].
    #[arg(long, env = "NIXGATE_MIN_TRANSFER_RATE", value_name = "SIZE")]
    pub min_transfer_rate: Option<String>,

    /// Drop a client connection that accepts no response bytes for this long (a slow or
    /// stalled reader holds a connection, a file descriptor and maybe an evicted file)
    /// [default: 30s].
    #[arg(long, env = "NIXGATE_SEND_TIMEOUT", value_name = "DURATION")]
    pub send_timeout: Option<String>,

    /// Client connections open at once; beyond it a small reserve answers only /healthz,
    /// /readyz, /metrics and /nix-cache-info (others get 503), then connections are closed
    /// [default: 4096].
    #[arg(long, env = "NIXGATE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Connections one client address (an IPv6 /64) holds at once; more are closed at once
    /// [default: 256].
    #[arg(long, env = "NIXGATE_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

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
    #[serde(rename = "peer", alias = "peers")]
    pub peers: Option<Vec<String>>,

    /// DNS name whose addresses are peer appliances, re-resolved every 30 s (e.g. a
    /// Kubernetes headless Service: nixgate-peers.ci.svc:8080) [default port: 8080].
    #[arg(long, env = "NIXGATE_PEERS_DNS", value_name = "NAME[:PORT]")]
    pub peers_dns: Option<String>,

    /// Disable BitTorrent between appliances (seeding cached NARs to peers, and fetching from
    /// peers' swarm when every upstream fails).
    #[arg(long, env = "NIXGATE_NO_TORRENT", value_parser = BoolishValueParser::new())]
    #[serde(default)]
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
    #[serde(rename = "tracker", alias = "trackers")]
    pub trackers: Option<Vec<String>>,

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

    /// Most peers kept at once, from every source (`--peer`, `--peers-dns`, mDNS); further
    /// ones are ignored until some leave. Bounds memory (each holds a digest) [default: 64].
    #[arg(long, env = "NIXGATE_MAX_PEERS", value_name = "N")]
    pub max_peers: Option<usize>,

    /// Most cached NARs hashed at once into torrents for `/_p2p/v1/torrent`, so hashing never
    /// starves the threads that serve cached files [default: 2].
    #[arg(long, env = "NIXGATE_HASH_CONCURRENCY", value_name = "N")]
    pub hash_concurrency: Option<usize>,

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

    /// Configured peers (--peer, --peers-dns) are not one fleet: they are asked only when
    /// every upstream fails, and for BitTorrent, never as the owner of a key. For peers at
    /// other sites. [default: configured peers are a fleet: each narinfo and NAR is fetched
    /// from the upstream by one member, its rendezvous owner, for all of them].
    #[arg(long, env = "NIXGATE_NO_FLEET", value_parser = BoolishValueParser::new())]
    #[serde(default)]
    pub no_fleet: bool,

    /// Appliances found over mDNS join the fleet and own keys too. Off by default: anyone on
    /// an office LAN can announce an appliance (it is never trusted for content, but an owner
    /// decides whether a miss is found at all).
    #[arg(long, env = "NIXGATE_FLEET_MDNS", value_parser = BoolishValueParser::new())]
    #[serde(default)]
    pub fleet_mdns: bool,
    /// File holding the upload token: runners may `PUT` NARs and narinfos (`nix copy --to`)
    /// with it as the Basic password (any user, from Nix's netrc) or as `Authorization:
    /// Bearer TOKEN` [default: none, uploads off (405)].
    #[arg(long, env = "NIXGATE_UPLOAD_TOKEN_FILE", value_name = "FILE")]
    pub upload_token_file: Option<PathBuf>,

    /// Nix secret key file (`NAME:BASE64`, as `nix key generate-secret` writes): unsigned
    /// uploads are signed with it, and its public key (logged at start, or `nixgate
    /// public-key`) is trusted [default: none, an upload must carry a trusted signature].
    #[arg(long, env = "NIXGATE_SIGNING_KEY_FILE", value_name = "FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// Budget of uploaded paths (NARs and narinfos), apart from --max-cache-size: the LRU
    /// never evicts them; when it is full a new upload gets 507 [default: 10GiB].
    #[arg(long, env = "NIXGATE_UPLOAD_MAX_SIZE", value_name = "SIZE")]
    pub upload_max_size: Option<String>,

    /// Uploaded NARs waiting for their narinfo, in total; beyond it a NAR upload gets 413
    /// [default: 1GiB].
    #[arg(long, env = "NIXGATE_UPLOAD_STAGING_SIZE", value_name = "SIZE")]
    pub upload_staging_size: Option<String>,

    /// An uploaded NAR that no narinfo has named for this long is dropped [default: 1h].
    #[arg(long, env = "NIXGATE_UPLOAD_STAGING_AGE", value_name = "DURATION")]
    pub upload_staging_age: Option<String>,

    /// How often the status page's history takes a sample (hidden: tests make it quick)
    /// [default: 10s].
    #[arg(
        long,
        env = "NIXGATE_STATUS_INTERVAL",
        value_name = "DURATION",
        hide = true
    )]
    pub status_interval: Option<String>,
}

/// One layer of settings over a lower one: what the upper layer leaves unset comes from below.
trait Layer {
    fn over(self, lower: Self) -> Self;
}

impl<T> Layer for Option<T> {
    fn over(self, lower: Self) -> Self {
        self.or(lower)
    }
}

/// `--no-torrent` only ever switches off: any layer that says so wins.
impl Layer for bool {
    fn over(self, lower: Self) -> Self {
        self || lower
    }
}

/// Builds a `ServeArgs` whose every field is `$upper`'s layered over `$lower`'s. The struct
/// literal makes the compiler check that no field is forgotten.
macro_rules! layered {
    ($upper:ident over $lower:ident: $($field:ident),* $(,)?) => {
        ServeArgs { $($field: Layer::over($upper.$field, $lower.$field)),* }
    };
}

impl ServeArgs {
    /// These settings (flags and env) over `file`'s, field by field.
    pub(super) fn over_file(self, file: ServeArgs) -> ServeArgs {
        let cli = self.without_blank_lists();
        layered!(cli over file:
            config, listen, cache_dir, max_cache_size, upstreams, netrc_file, ca_file, object_store, trusted_public_keys, priority,
            negative_ttl, serve_compression, upstream_down_status, retry_after, connect_timeout, first_byte_timeout,
            stall_timeout, narinfo_timeout, min_transfer_rate, send_timeout, max_connections, max_connections_per_ip, log_format, peers, peers_dns, no_torrent, torrent_listen, trackers,
            peer_policy, accelerate_size, accelerate_below, torrent_hot_set, torrent_upload_limit,
            no_mdns, no_fleet, fleet_mdns, status_interval, max_peers, hash_concurrency,
            upload_token_file, signing_key_file, upload_max_size, upload_staging_size,
            upload_staging_age,
        )
    }

    /// A flag or env list with no item (`--upstream ''`, `NIXGATE_PEER=,`) is unset: clap
    /// cannot say "explicitly empty". Only the file can (`upstream = []`).
    fn without_blank_lists(mut self) -> ServeArgs {
        for list in [
            &mut self.upstreams,
            &mut self.trusted_public_keys,
            &mut self.peers,
            &mut self.trackers,
        ] {
            if list.as_ref().is_some_and(|l| flatten(l.clone()).is_empty()) {
                *list = None;
            }
        }
        self
    }

    /// Reads the `--config` file, if any (all unset when there is none).
    pub(super) fn file(&self) -> Result<ServeArgs, ConfigError> {
        let Some(path) = &self.config else {
            return Ok(ServeArgs::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
            path: path.clone(),
            at: e.span().map(|s| place(&text, s.start)).unwrap_or_default(),
            message: crate::redact::redact_all(e.message()),
        })
    }
}

/// ` line N (key K)` for a byte offset into a TOML file: the line, and the key that line sets
/// when it sets one. The value is never shown (it may be a URL with a password).
fn place(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default();
    let key = line.split_once('=').map(|(k, _)| k.trim()).filter(|k| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.\"".contains(c))
    });
    match key {
        Some(k) => format!(" line {line_no} (key {k})"),
        None => format!(" line {line_no}"),
    }
}
