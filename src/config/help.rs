//! `serve --help` and `check-config --help` group their flags under headings, from one table
//! (flag ids are [`ServeArgs`](super::ServeArgs) field names); a unit test checks that every
//! flag has a group.

use clap::{CommandFactory, FromArgMatches};

use super::Cli;

/// Each heading and the flags under it, in the order `--help` shows them.
pub const GROUPS: &[(&str, &[&str])] = &[
    (
        "Listening and logging",
        &["config", "listen", "log_format", "status_interval"],
    ),
    (
        "Cache",
        &[
            "cache_dir",
            "max_cache_size",
            "priority",
            "negative_ttl",
            "serve_compression",
        ],
    ),
    (
        "Upstreams",
        &[
            "upstreams",
            "netrc_file",
            "ca_file",
            "trusted_public_keys",
            "upstream_down_status",
            "retry_after",
            "connect_timeout",
            "first_byte_timeout",
            "stall_timeout",
            "narinfo_timeout",
            "min_transfer_rate",
        ],
    ),
    ("Object store (shared tier)", &["object_store"]),
    (
        "Limits (runners)",
        &["send_timeout", "max_connections", "max_connections_per_ip"],
    ),
    (
        "Peers and fleet",
        &[
            "peers",
            "peers_dns",
            "peer_policy",
            "max_peers",
            "no_mdns",
            "no_fleet",
            "fleet_mdns",
        ],
    ),
    (
        "BitTorrent",
        &[
            "no_torrent",
            "torrent_listen",
            "trackers",
            "accelerate_size",
            "accelerate_below",
            "torrent_hot_set",
            "hash_concurrency",
            "torrent_upload_limit",
        ],
    ),
    (
        "Uploads (nix copy --to)",
        &[
            "upload_token_file",
            "signing_key_file",
            "upload_max_size",
            "upload_staging_size",
            "upload_staging_age",
        ],
    ),
];

/// The command line with the headings applied to `serve` and `check-config`.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    for sub in ["serve", "check-config"] {
        cmd = cmd.mut_subcommand(sub, |mut c| {
            for (heading, ids) in GROUPS {
                for id in *ids {
                    c = c.mut_arg(*id, |a| a.help_heading(*heading));
                }
            }
            c
        });
    }
    cmd
}

/// Parses the process's arguments (exits with clap's usage on an error, like `Cli::parse`).
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_serve_flag_has_a_group() {
        let cmd = command();
        let serve = cmd.find_subcommand("serve").unwrap();
        for a in serve.get_arguments() {
            let id = a.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            assert!(a.get_help_heading().is_some(), "--{id} has no heading");
        }
    }
}
