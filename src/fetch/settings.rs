//! What a [`Fetcher`](super::Fetcher) is built from: the upstreams and keys, the negative-cache
//! lifetime, the upstream timeouts, and when peers are preferred over upstreams
//! (`--peer-policy`, `--accelerate-*`, `--torrent-*`).

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::nix::signature::TrustedKeys;
use crate::upstream::netrc::Netrc;
use crate::upstream::Timeouts;

/// Which source a NAR miss tries first when a peer holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerPolicy {
    /// Upstreams first; large NARs switch to the swarm when the upstream is slow.
    #[default]
    HttpFirst,
    /// The swarm of LAN peers first, then upstreams.
    PeersFirst,
}

/// What runners get NARs as (`--serve-compression`, docs/ZSTD.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServeCompression {
    /// zstd, recompressed once per NAR from the verified file: runners decode 8-10x faster
    /// than xz, for ~7 CPU s per GB on the appliance and ~1.3x the bytes of xz.
    #[default]
    Zstd,
    /// The plain NAR: no decoding on runners, ~3.6x the bytes of xz (fast LANs).
    None,
    /// The upstream's own files and narinfos, unchanged.
    Upstream,
}

impl ServeCompression {
    /// The compression nixgate serves its own files in (`None`: the upstream's).
    pub fn served(self) -> Option<crate::nix::served::Served> {
        use crate::nix::served::Served;
        match self {
            ServeCompression::Zstd => Some(Served::Zstd),
            ServeCompression::None => Some(Served::None),
            ServeCompression::Upstream => None,
        }
    }

    /// Its value on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ServeCompression::Zstd => "zstd",
            ServeCompression::None => "none",
            ServeCompression::Upstream => "upstream",
        }
    }
}

/// When and how peers are preferred.
#[derive(Debug, Clone, Copy)]
pub struct PeerTuning {
    pub policy: PeerPolicy,
    /// With http-first, NARs at least this large may switch to the swarm.
    pub accelerate_size: u64,
    /// With http-first, switch when the upstream delivers less than this per second.
    pub accelerate_below: u64,
    /// BitTorrent upload cap per second.
    pub upload_limit: Option<u64>,
    /// Most torrents seeded at once.
    pub hot_set: usize,
    /// Most peers in the peer set (`--max-peers`).
    pub max_peers: usize,
    /// Most cached NARs hashed into torrents at once (`--hash-concurrency`).
    pub hash_concurrency: usize,
}

/// Everything [`Fetcher::new`](super::Fetcher::new) needs besides its shared handles.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Upstream caches in the order they are tried, each ending in `/`.
    pub upstreams: Vec<Url>,
    /// Keys whose signatures make a narinfo trusted.
    pub keys: TrustedKeys,
    /// Credentials per upstream host (`--netrc-file`).
    pub netrc: Netrc,
    /// Proxies and extra CAs for upstream requests (`--ca-file`, `HTTPS_PROXY`, …).
    pub egress: crate::upstream::Egress,
    /// How long an upstream 404 is remembered.
    pub negative_ttl: Duration,
    pub timeouts: Timeouts,
    pub tuning: PeerTuning,
    /// What runners get NARs as (`--serve-compression`).
    pub serve: ServeCompression,
    /// The object-store tier (`--object-store`), if any.
    pub object_store: Option<crate::objstore::ObjectStoreSettings>,
}
