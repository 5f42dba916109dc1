//! [`Config`], the resolved and validated settings, and [`ServeArgs::resolve`], which layers
//! flags and env over the file, fills in the defaults and checks each setting group in turn.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::defaults::*;
use super::parse::{each, parse_peer, parse_peers_dns, parse_tracker, parse_upstream, unit};
use super::{ConfigError, ServeArgs};
use crate::fetch::{FetchSettings, PeerTuning};
use crate::http::error::DownPolicy;
use crate::http::limits::ConnLimits;
use crate::nix::signature::{PublicKey, TrustedKeys};
use crate::peers::dns::DnsPeers;
use crate::peers::Membership;
use crate::store::check_writable;
use crate::telemetry::LogFormat;
use crate::torrent::EngineConfig;
use crate::units::{parse_duration, parse_size};
use crate::upload::{SecretFileError, SigningKey, UploadSettings, UploadToken};
use crate::upstream::netrc::Netrc;
use crate::upstream::Timeouts;

/// The resolved, validated configuration: each group in the type its subsystem takes, so
/// `app` only hands them over and `check-config` prints what the subsystems get.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--config`, if any.
    pub config_file: Option<PathBuf>,
    /// Address for runners' HTTP requests.
    pub listen: SocketAddr,
    /// The disk cache, proven writable.
    pub cache_dir: PathBuf,
    /// Size cap of the disk cache, in bytes.
    pub max_cache_size: u64,
    /// The fetcher's settings: upstreams (each ending in `/`, tried in order), trusted keys
    /// (never empty; the signing key's public key included), netrc credentials, the negative
    /// TTL, upstream timeouts and the peer tuning (`--peer-policy`, `--accelerate-*`,
    /// `--torrent-hot-set`, `--max-peers`, `--hash-concurrency`, `--torrent-upload-limit`).
    pub fetch: FetchSettings,
    /// `--netrc-file`, if any (its credentials are in `fetch.netrc`).
    pub netrc_file: Option<PathBuf>,
    /// `Priority` in /nix-cache-info.
    pub priority: u32,
    /// The answer for a miss while every upstream fails (503 or 404) and its `Retry-After`.
    pub down_policy: DownPolicy,
    /// Client connection bounds and the send timeout.
    pub connections: ConnLimits,
    pub log_format: LogFormat,
    /// Static peer appliances, each ending in `/`.
    pub peers: Vec<Url>,
    pub peers_dns: Option<DnsPeers>,
    /// BitTorrent on.
    pub torrent: bool,
    /// The BitTorrent engine's settings (used when `torrent` is on).
    pub engine: EngineConfig,
    /// Announce over and browse mDNS.
    pub mdns: bool,
    /// Who owns keys in the fleet.
    pub fleet: Membership,
    /// Interval of the status page's history samples.
    pub status_interval: Duration,
    /// Uploads from runners (off without `--upload-token-file`).
    pub uploads: UploadSettings,
    /// `--upload-token-file` and `--signing-key-file`, if any (what they hold is in `uploads`).
    pub upload_token_file: Option<PathBuf>,
    pub signing_key_file: Option<PathBuf>,
}

impl ServeArgs {
    /// Resolves flags, env and file into a validated [`Config`] (creating the cache dir).
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = self.file()?;
        let s = self.over_file(file);
        // Checked in this order, so the first bad setting is the one reported.
        let listen = address(&s.listen, default_listen, ConfigError::Listen)?;
        let max_cache_size = max_cache_size(&s)?;
        let upstreams = each(list(&s.upstreams, default_upstreams), parse_upstream)?;
        let (netrc_file, netrc) = netrc(&s)?;
        let uploads = uploads(&s)?;
        let mut trusted_keys = trusted_keys(&s)?;
        if let Some(k) = &uploads.signing_key {
            // What this appliance signed, it verified: a fleet member sharing the key takes it.
            trusted_keys.add(k.public());
        }
        let upstream_down_status = upstream_down_status(&s)?;
        let cache_dir = cache_dir(&s)?;
        let peers = each(list(&s.peers, Vec::new), parse_peer)?;
        let peers_dns = peers_dns(&s)?;
        let (torrent_listen, trackers) = torrent(&s)?;
        let tuning = tuning(&s)?;
        let timeouts = timeouts(&s)?;
        let engine = EngineConfig {
            listen: torrent_listen,
            trackers,
            download_dir: cache_dir.join("tmp").join("bt"),
            stall: timeouts.stall,
            upload_limit: tuning.upload_limit,
            hot_set: tuning.hot_set,
            hash_concurrency: tuning.hash_concurrency,
        };
        Ok(Config {
            config_file: s.config.clone(),
            listen,
            cache_dir,
            max_cache_size,
            fetch: FetchSettings {
                upstreams,
                keys: trusted_keys,
                netrc,
                egress: crate::upstream::Egress::from_env(s.ca_file.as_deref())
                    .map_err(ConfigError::CaFile)?,
                negative_ttl: duration("negative-ttl", &s.negative_ttl, default_negative_ttl)?,
                timeouts,
                tuning,
                serve: s.serve_compression.unwrap_or_default(),
                object_store: object_store(&s)?,
            },
            netrc_file,
            priority: s.priority.unwrap_or_else(default_priority),
            down_policy: DownPolicy {
                status: upstream_down_status,
                retry_after: duration("retry-after", &s.retry_after, default_retry_after)?,
            },
            connections: connections(&s)?,
            log_format: s.log_format.unwrap_or(LogFormat::Human),
            peers,
            peers_dns,
            // Flags, env and the file can only switch these off.
            torrent: !s.no_torrent,
            engine,
            mdns: s.no_mdns.map_or_else(default_mdns, |no| !no),
            fleet: Membership {
                configured: !s.no_fleet,
                mdns: s.fleet_mdns,
            },
            status_interval: status_interval(&s)?,
            uploads,
            upload_token_file: s.upload_token_file.clone(),
            signing_key_file: s.signing_key_file.clone(),
        })
    }
}

/// The status sample interval: at least 100 ms (a zero interval would spin).
fn status_interval(s: &ServeArgs) -> Result<Duration, ConfigError> {
    let d = duration(
        "status-interval",
        &s.status_interval,
        default_status_interval,
    )?;
    Ok(d.max(Duration::from_millis(100)))
}

/// A list setting, or its default when unset.
fn list(v: &Option<Vec<String>>, default: fn() -> Vec<String>) -> Vec<String> {
    v.clone().unwrap_or_else(default)
}

fn size(
    flag: &'static str,
    v: &Option<String>,
    default: fn() -> String,
) -> Result<u64, ConfigError> {
    unit(flag, parse_size(&v.clone().unwrap_or_else(default)))
}

fn duration(
    flag: &'static str,
    v: &Option<String>,
    default: fn() -> String,
) -> Result<Duration, ConfigError> {
    unit(flag, parse_duration(&v.clone().unwrap_or_else(default)))
}

fn address(
    v: &Option<String>,
    default: fn() -> String,
    err: fn(String) -> ConfigError,
) -> Result<SocketAddr, ConfigError> {
    let s = v.clone().unwrap_or_else(default);
    s.parse().map_err(|_| err(s))
}

fn max_cache_size(s: &ServeArgs) -> Result<u64, ConfigError> {
    let bytes = size("max-cache-size", &s.max_cache_size, default_max_cache_size)?;
    if bytes < 1 << 20 {
        return Err(ConfigError::CacheTooSmall);
    }
    Ok(bytes)
}

/// `--object-store`, validated, with its credentials (from the environment).
fn object_store(
    s: &ServeArgs,
) -> Result<Option<crate::objstore::ObjectStoreSettings>, ConfigError> {
    let Some(text) = s.object_store.as_deref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let url = text.parse()?;
    use crate::objstore::credentials::{load, CredentialsError};
    let credentials = match load(|k| std::env::var(k).ok()) {
        Ok(c) => Some(c),
        // None anywhere: anonymous requests (warned about); a broken file is an error.
        Err(CredentialsError::Missing { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(Some(crate::objstore::ObjectStoreSettings {
        url,
        credentials,
    }))
}

/// The `--netrc-file` path and its parsed credentials.
fn netrc(s: &ServeArgs) -> Result<(Option<PathBuf>, Netrc), ConfigError> {
    let Some(path) = s.netrc_file.clone().or_else(default_netrc_file) else {
        return Ok((None, Netrc::default()));
    };
    let netrc = Netrc::read(&path).map_err(|reason| ConfigError::Netrc {
        path: path.clone(),
        reason: reason.to_string(),
    })?;
    Ok((Some(path), netrc))
}

fn trusted_keys(s: &ServeArgs) -> Result<TrustedKeys, ConfigError> {
    let keys = each(list(&s.trusted_public_keys, default_trusted_keys), |k| {
        Ok(k.parse::<PublicKey>()?)
    })?;
    if keys.is_empty() {
        return Err(ConfigError::NoKeys);
    }
    Ok(TrustedKeys::new(keys))
}

/// The upload settings: the token and signing key files read, the limits parsed.
fn uploads(s: &ServeArgs) -> Result<UploadSettings, ConfigError> {
    let secret =
        |flag: &'static str, path: &PathBuf, reason: SecretFileError| ConfigError::SecretFile {
            flag,
            path: path.clone(),
            reason: reason.to_string(),
        };
    let token = s
        .upload_token_file
        .as_ref()
        .map(|p| UploadToken::read(p).map_err(|r| secret("upload-token-file", p, r)));
    let signing_key = s
        .signing_key_file
        .as_ref()
        .map(|p| SigningKey::read(p).map_err(|r| secret("signing-key-file", p, r)));
    Ok(UploadSettings {
        token: token.transpose()?,
        signing_key: signing_key.transpose()?,
        max_bytes: size(
            "upload-max-size",
            &s.upload_max_size,
            default_upload_max_size,
        )?,
        staging_bytes: size(
            "upload-staging-size",
            &s.upload_staging_size,
            default_upload_staging_size,
        )?,
        staging_age: duration(
            "upload-staging-age",
            &s.upload_staging_age,
            default_upload_staging_age,
        )?,
        body_stall: duration("stall-timeout", &s.stall_timeout, default_stall_timeout)?,
    })
}

fn upstream_down_status(s: &ServeArgs) -> Result<u16, ConfigError> {
    let status = s
        .upstream_down_status
        .unwrap_or_else(default_upstream_down_status);
    if !matches!(status, 503 | 404) {
        return Err(ConfigError::DownStatus(status));
    }
    Ok(status)
}

/// The cache dir, created and proven writable.
fn cache_dir(s: &ServeArgs) -> Result<PathBuf, ConfigError> {
    let path = s.cache_dir.clone().unwrap_or_else(default_cache_dir);
    check_writable(&path).map_err(|reason| ConfigError::CacheDir {
        path: path.clone(),
        reason,
    })?;
    Ok(path)
}

/// `--peers-dns`; an empty value means none.
fn peers_dns(s: &ServeArgs) -> Result<Option<DnsPeers>, ConfigError> {
    s.peers_dns
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(parse_peers_dns)
        .transpose()
}

/// The BitTorrent listen address and trackers; trackers need a fixed port to hand out.
fn torrent(s: &ServeArgs) -> Result<(SocketAddr, Vec<Url>), ConfigError> {
    let listen = address(
        &s.torrent_listen,
        default_torrent_listen,
        ConfigError::TorrentListen,
    )?;
    let trackers = each(list(&s.trackers, Vec::new), parse_tracker)?;
    if !trackers.is_empty() && listen.port() == 0 {
        return Err(ConfigError::TrackerNeedsPort);
    }
    Ok((listen, trackers))
}

fn tuning(s: &ServeArgs) -> Result<PeerTuning, ConfigError> {
    Ok(PeerTuning {
        policy: s.peer_policy.unwrap_or_default(),
        accelerate_size: size(
            "accelerate-size",
            &s.accelerate_size,
            default_accelerate_size,
        )?,
        accelerate_below: size(
            "accelerate-below",
            &s.accelerate_below,
            default_accelerate_below,
        )?,
        upload_limit: s
            .torrent_upload_limit
            .as_deref()
            .map(|v| unit("torrent-upload-limit", parse_size(v)))
            .transpose()?,
        hot_set: s
            .torrent_hot_set
            .unwrap_or_else(default_torrent_hot_set)
            .max(1),
        max_peers: s.max_peers.unwrap_or_else(default_max_peers),
        hash_concurrency: s
            .hash_concurrency
            .unwrap_or_else(default_hash_concurrency)
            .max(1),
    })
}

fn timeouts(s: &ServeArgs) -> Result<Timeouts, ConfigError> {
    Ok(Timeouts {
        connect: duration(
            "connect-timeout",
            &s.connect_timeout,
            default_connect_timeout,
        )?,
        first_byte: duration(
            "first-byte-timeout",
            &s.first_byte_timeout,
            default_first_byte_timeout,
        )?,
        stall: duration("stall-timeout", &s.stall_timeout, default_stall_timeout)?,
        narinfo: duration(
            "narinfo-timeout",
            &s.narinfo_timeout,
            default_narinfo_timeout,
        )?,
        min_rate: size(
            "min-transfer-rate",
            &s.min_transfer_rate,
            default_min_transfer_rate,
        )?,
    })
}

fn connections(s: &ServeArgs) -> Result<ConnLimits, ConfigError> {
    let max = s.max_connections.unwrap_or_else(default_max_connections);
    let per_ip = s
        .max_connections_per_ip
        .unwrap_or_else(default_max_connections_per_ip);
    if max == 0 {
        return Err(ConfigError::ZeroLimit("max-connections"));
    }
    if per_ip == 0 {
        return Err(ConfigError::ZeroLimit("max-connections-per-ip"));
    }
    let send_timeout = duration("send-timeout", &s.send_timeout, default_send_timeout)?;
    if send_timeout.is_zero() {
        return Err(ConfigError::ZeroLimit("send-timeout"));
    }
    Ok(ConnLimits {
        max,
        per_ip,
        send_timeout,
    })
}
