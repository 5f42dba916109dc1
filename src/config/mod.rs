//! Configuration: command-line flags, `NIXGATE_*` environment variables and an optional TOML
//! file, resolved with the precedence flag > env > file > default, then validated once.
//!
//! This file holds the command line (subcommands and their flags). Every setting of `serve` is
//! declared once, in [`ServeArgs`] (`settings.rs`); its named defaults, each saying why, are in
//! `defaults.rs`; resolution into a validated [`Config`] in `resolve.rs`, whose groups are the
//! types the subsystems take (they belong to the modules that use them and are re-exported
//! here); what `check-config` prints, read from those groups, in `effective.rs`.

mod defaults;
mod effective;
mod error;
pub mod help;
mod parse;
mod resolve;
mod settings;
#[cfg(test)]
mod tests;
mod warnings;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use url::Url;

pub use crate::fetch::{PeerPolicy, PeerTuning};
pub use crate::http::limits::ConnLimits;
pub use crate::peers::dns::DnsPeers;
pub use crate::store::check_writable;
pub use crate::telemetry::LogFormat;
pub use crate::upstream::Timeouts;
pub use error::ConfigError;
pub use resolve::Config;
pub use settings::ServeArgs;

use crate::units::parse_duration;

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
    /// Show a running appliance's hit ratio, egress saved, disk, upstreams and peers.
    ///
    /// Reads /_status/v1 (the data of the status page at /) from --url.
    Status(StatusArgs),
    /// Make an appliance fetch and cache the closures of store paths before runners ask.
    ///
    /// Walks each path's closure through the appliance's narinfos (`References:`), GETs every
    /// NAR through it (concurrently, --jobs at once), then asks it with `Cache-Control:
    /// only-if-cached` whether it holds everything. Exits 0 only when the whole closure is
    /// cached; otherwise lists the missing paths and exits 1. Progress on a terminal, one
    /// JSON object per line (per event) otherwise.
    Warm(WarmArgs),
    /// Print the public key of a Nix secret key file (`--signing-key-file`), for runners'
    /// `trusted-public-keys`.
    PublicKey {
        /// The secret key file (`NAME:BASE64`, as `nix key generate-secret` writes).
        #[arg(long, env = "NIXGATE_SIGNING_KEY_FILE", value_name = "FILE")]
        signing_key_file: std::path::PathBuf,
    },
    /// Probe a running appliance's /healthz (for container HEALTHCHECKs; no curl needed).
    Health {
        /// The appliance: a base URL or host:port (http, port 8080 when none is given).
        #[arg(
            long,
            default_value = "http://127.0.0.1:8080",
            env = "NIXGATE_HEALTH_URL",
            value_parser = parse_appliance_url
        )]
        url: Url,
    },
}

/// Flags of `warm`.
#[derive(Debug, Args)]
pub struct WarmArgs {
    /// The appliance: a base URL or host:port (http, port 8080 when none is given).
    /// `--appliance` is the old name of this flag.
    #[arg(
        long,
        visible_alias = "appliance",
        default_value = "http://127.0.0.1:8080",
        env = "NIXGATE_WARM_APPLIANCE",
        value_parser = parse_appliance_url
    )]
    pub url: Url,
    /// A file of store paths, one a line (blank lines and `#` comments skipped), e.g. the
    /// output of `nix path-info -r`; added to those given as arguments.
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<std::path::PathBuf>,
    /// Most paths fetched through the appliance at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Store paths whose closures to warm (`/nix/store/<hash>-<name>` or `<hash>-<name>`).
    #[arg(value_name = "STORE_PATH")]
    pub paths: Vec<String>,
}

/// Flags of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The appliance: a base URL or host:port (http, port 8080 when none is given).
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080",
        env = "NIXGATE_STATUS_URL",
        value_parser = parse_appliance_url
    )]
    pub url: Url,
    /// Output: a summary for people, or the /_status/v1 JSON as is.
    #[arg(short = 'o', long, visible_alias = "output", value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,
}

/// Output format of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    /// Hit ratio, egress saved, disk, upstreams and peers.
    Text,
    /// The /_status/v1 document, pretty-printed.
    Json,
}

/// Flags of `discover`.
#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// How long to listen for announcements, e.g. 3s, 500ms.
    #[arg(long, default_value = "3s", value_parser = parse_duration_arg)]
    pub timeout: Duration,
    /// Output: a nix.conf line, one URL per line, or JSON with addresses, TXT and latency
    /// (`[]` when none answered; the exit status is 1 then, whatever the format).
    #[arg(short = 'o', long, visible_alias = "output", value_enum, default_value_t = DiscoverFormat::NixConf)]
    pub format: DiscoverFormat,
}

fn parse_duration_arg(s: &str) -> Result<Duration, crate::units::UnitError> {
    parse_duration(s)
}

/// An appliance address that cannot be used by the client subcommands.
#[derive(Debug, thiserror::Error)]
#[error("appliance {given:?}: {why} (expected e.g. http://10.0.0.5:8080 or 10.0.0.5:8080)")]
pub struct BadApplianceUrl {
    given: String,
    why: String,
}

/// The appliance as the client subcommands (`status`, `health`, `warm`) take it: a base URL
/// (`http://host:port/prefix`, `https://…`) or a bare `host:port` / `host` (plain HTTP, port
/// 8080 when none is given, as runners reach it). The result's path ends in `/`.
pub fn parse_appliance_url(given: &str) -> Result<Url, BadApplianceUrl> {
    let bad = |why: &str| BadApplianceUrl {
        given: given.to_owned(),
        why: why.to_owned(),
    };
    let bare = !given.contains("://");
    let text = if bare {
        format!("http://{given}")
    } else {
        given.to_owned()
    };
    let mut url = Url::parse(&text).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http:// and https:// are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a base URL has no query or fragment"));
    }
    if bare && url.port().is_none() {
        let _ = url.set_port(Some(8080));
    }
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
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
