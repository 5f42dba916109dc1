//! Resolution of flags, env and file: precedence, defaults, and the errors that name the setting.

use std::path::Path;

use clap::Parser;

use super::parse::{flatten, parse_peer, parse_peers_dns, parse_tracker};
use super::*;
use crate::nix::signature::{KeyError, CACHE_NIXOS_ORG_KEY};

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
    assert_eq!(c.fetch.upstreams[0].as_str(), "https://cache.nixos.org/");
    assert_eq!(c.fetch.keys.keys()[0].to_string(), CACHE_NIXOS_ORG_KEY);
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
    assert_eq!(c.fetch.upstreams[0].as_str(), "http://127.0.0.1:1/a/");
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
    a.trackers = Some(vec!["http://127.0.0.1:6969/announce".into()]);
    assert!(matches!(a.resolve(), Err(ConfigError::TrackerNeedsPort)));

    let mut a = args(dir.path());
    a.max_cache_size = Some("10 gigs".into());
    let e = a.resolve().unwrap_err().to_string();
    assert!(
        e.contains("--max-cache-size") && e.contains("10 gigs"),
        "{e}"
    );

    let mut a = args(dir.path());
    a.trusted_public_keys = Some(vec!["cache.nixos.org-1:notbase64!".into()]);
    assert!(matches!(
        a.resolve(),
        Err(ConfigError::Key(KeyError::Base64(_)))
    ));

    let mut a = args(dir.path());
    a.upstreams = Some(vec!["ftp://127.0.0.1/".into()]);
    assert!(matches!(a.resolve(), Err(ConfigError::Upstream { .. })));

    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "max-cach-size = \"1GiB\"\n").unwrap();
    let mut a = args(dir.path());
    a.config = Some(file.clone());
    let e = a.resolve().unwrap_err().to_string();
    assert!(e.contains("max-cach-size"), "{e}");

    // A wrong type names the line and the key, never the value (it may hold a password).
    std::fs::write(
        &file,
        "upstream = [\"https://ci:s3cret@127.0.0.1/\"]\n\nmax-cache-size = 10\n",
    )
    .unwrap();
    let mut a = args(dir.path());
    a.config = Some(file.clone());
    let e = a.resolve().unwrap_err().to_string();
    assert!(e.contains("line 3 (key max-cache-size)"), "{e}");
    std::fs::write(&file, "priority = \"https://ci:s3cret@127.0.0.1/\"\n").unwrap();
    let mut a = args(dir.path());
    a.config = Some(file);
    let e = a.resolve().unwrap_err().to_string();
    assert!(
        e.contains("line 1 (key priority)") && !e.contains("s3cret"),
        "{e}"
    );
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
    assert_eq!(c.engine.listen.port(), 7000);
    assert_eq!(c.engine.trackers.len(), 1);

    let d = args(dir.path()).resolve().unwrap();
    assert!(d.peers.is_empty() && d.peers_dns.is_none() && d.engine.trackers.is_empty());
    assert_eq!(d.engine.listen.to_string(), "[::]:6881");

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

#[test]
fn file_keys_and_aliases_parse() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nixgate.toml");
    std::fs::write(
        &file,
        "upstreams = [\"http://u.example\"]\ntrusted-public-keys = []\npeers = []\n\
         trackers = []\nno-torrent = true\nlog-format = \"json\"\npeer-policy = \"peers-first\"\n",
    )
    .unwrap();
    let mut a = args(dir.path());
    a.config = Some(file.clone());
    // An explicitly empty key list in the file is kept, and refused.
    assert!(matches!(a.resolve(), Err(ConfigError::NoKeys)));

    std::fs::write(&file, "upstream = []\nno-torrent = true\n").unwrap();
    let mut a = args(dir.path());
    a.config = Some(file);
    // A blank flag list is unset, so the file's explicitly empty list wins over the default.
    a.upstreams = Some(vec![String::new()]);
    a.no_torrent = false;
    let c = a.resolve().unwrap();
    assert!(c.fetch.upstreams.is_empty() && !c.torrent);
}

#[test]
fn connection_limits_default_layer_and_refuse_zero() {
    let dir = tempfile::tempdir().unwrap();
    let c = args(dir.path()).resolve().unwrap();
    assert_eq!(
        (c.connections.max, c.connections.per_ip),
        (4096, 256),
        "defaults"
    );
    assert_eq!(
        c.connections.send_timeout,
        std::time::Duration::from_secs(30)
    );
    let file = dir.path().join("nixgate.toml");
    std::fs::write(
        &file,
        "max-connections = 100\nmax-connections-per-ip = 10\nsend-timeout = \"5s\"\n",
    )
    .unwrap();
    let mut a = args(dir.path());
    a.config = Some(file);
    a.max_connections_per_ip = Some(20);
    let c = a.resolve().unwrap();
    assert_eq!((c.connections.max, c.connections.per_ip), (100, 20));
    assert_eq!(
        c.connections.send_timeout,
        std::time::Duration::from_secs(5)
    );
    for bad in [
        ServeArgs {
            max_connections: Some(0),
            ..args(dir.path())
        },
        ServeArgs {
            send_timeout: Some("0s".into()),
            ..args(dir.path())
        },
    ] {
        assert!(matches!(bad.resolve(), Err(ConfigError::ZeroLimit(_))));
    }
}

#[test]
fn netrc_file_from_the_config_file_is_read_and_a_bad_one_named() {
    let dir = tempfile::tempdir().unwrap();
    let netrc = dir.path().join("netrc");
    std::fs::write(
        &netrc,
        "machine cache.example.com login ci password s3cret\n",
    )
    .unwrap();
    let file = dir.path().join("nixgate.toml");
    std::fs::write(
        &file,
        format!("netrc-file = {:?}\n", netrc.display().to_string()),
    )
    .unwrap();
    let mut a = args(dir.path());
    a.config = Some(file);
    let c = a.resolve().unwrap();
    assert_eq!(c.netrc_file.as_deref(), Some(netrc.as_path()));
    assert!(c.fetch.netrc.lookup("cache.example.com").is_some());
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "the Debug of Config hides it"
    );
    assert!(args(dir.path()).resolve().unwrap().fetch.netrc.is_empty());
    let mut a = args(dir.path());
    a.netrc_file = Some(dir.path().join("absent"));
    let e = a.resolve().unwrap_err().to_string();
    assert!(e.starts_with("--netrc-file"), "{e}");
}

#[test]
fn upload_settings_from_the_file_with_their_defaults_and_errors() {
    use crate::nix::narinfo::tests::{VECTOR_PUBLIC_KEY, VECTOR_SECRET_KEY};
    let dir = tempfile::tempdir().unwrap();
    let c = args(dir.path()).resolve().unwrap();
    assert!(c.uploads.token.is_none() && c.uploads.signing_key.is_none());
    assert_eq!(
        (
            c.uploads.max_bytes,
            c.uploads.staging_bytes,
            c.uploads.staging_age
        ),
        (10 << 30, 1 << 30, std::time::Duration::from_secs(3600))
    );
    let (token, key) = (dir.path().join("token"), dir.path().join("sk"));
    std::fs::write(&token, "t0ken\n").unwrap();
    std::fs::write(&key, VECTOR_SECRET_KEY).unwrap();
    let file = dir.path().join("nixgate.toml");
    let toml = format!(
        "upload-token-file = {token:?}\nsigning-key-file = {key:?}\nupload-max-size = \"2GiB\"\nupload-staging-size = \"100MiB\"\nupload-staging-age = \"10m\"\n"
    );
    std::fs::write(&file, toml).unwrap();
    let mut a = args(dir.path());
    a.config = Some(file);
    let c = a.resolve().unwrap();
    assert_eq!(c.uploads.token.unwrap().expose(), "t0ken");
    assert_eq!(
        (c.uploads.max_bytes, c.uploads.staging_bytes),
        (2 << 30, 100 << 20)
    );
    // The signing key's public key is trusted beside the default key.
    let keys: Vec<String> = c.fetch.keys.keys().iter().map(|k| k.to_string()).collect();
    assert_eq!(keys, [CACHE_NIXOS_ORG_KEY, VECTOR_PUBLIC_KEY]);
    std::fs::write(&key, "not-a-key").unwrap();
    let mut a = args(dir.path());
    a.signing_key_file = Some(key);
    let e = a.resolve().unwrap_err().to_string();
    assert!(e.starts_with("--signing-key-file"), "{e}");
}

/// The name `check-config` prints a flag's setting under: the long name, `no-X` as `X`.
fn setting_name(long: &str) -> &str {
    long.strip_prefix("no-").unwrap_or(long)
}

#[test]
fn check_config_prints_every_serve_flag() {
    use clap::CommandFactory;
    let dir = tempfile::tempdir().unwrap();
    let c = args(dir.path()).resolve().unwrap();
    let printed: Vec<&str> = c.effective().iter().map(|(name, _)| *name).collect();
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("a serve subcommand");
    let flags: Vec<&str> = serve
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| *l != "help")
        .collect();
    assert!(flags.len() > 30, "clap lists the flags of serve: {flags:?}");
    for long in &flags {
        assert!(
            printed.contains(&setting_name(long)),
            "--{long} has no line in check-config (as {:?})",
            setting_name(long)
        );
    }
    // And no line names something that is not a flag (a typo would hide a setting), but the
    // proxy environment variables upstream requests follow, marked "(env)".
    for name in printed.iter().filter(|n| !n.ends_with(" (env)")) {
        assert!(
            flags.iter().any(|l| setting_name(l) == *name),
            "check-config line {name:?} is not a flag"
        );
    }
}

#[test]
fn check_config_redacts_url_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(dir.path());
    a.upstreams = Some(vec!["https://ci:upw@cache.example/".into()]);
    a.peers = Some(vec!["http://p:ppw@10.0.0.7:8080".into()]);
    let text = a.resolve().unwrap().render_effective();
    assert!(text.contains("https://***@cache.example/"), "{text}");
    assert!(!text.contains("upw") && !text.contains("ppw"), "{text}");
    let mut a = args(dir.path());
    a.upstreams = Some(vec!["ftp://ci:upw@cache.example/".into()]);
    let e = a.resolve().unwrap_err().to_string();
    assert!(e.contains("--upstream") && !e.contains("upw"), "{e}");
}

#[test]
fn appliance_urls() {
    use super::parse_appliance_url as p;
    let ok = |given: &str, want: &str| assert_eq!(p(given).unwrap().as_str(), want, "{given}");
    ok("127.0.0.1:8080", "http://127.0.0.1:8080/");
    ok("10.0.0.5", "http://10.0.0.5:8080/");
    ok("nixgate.ci.svc:9000", "http://nixgate.ci.svc:9000/");
    ok("[::1]:8080", "http://[::1]:8080/");
    ok("http://127.0.0.1:8080", "http://127.0.0.1:8080/");
    ok("http://10.0.0.5", "http://10.0.0.5/");
    ok("https://127.0.0.1:8443/nix", "https://127.0.0.1:8443/nix/");
    for bad in [
        "",
        "ftp://h/",
        "http://",
        "h:8080?x=1",
        "http://h/#f",
        "h:port",
    ] {
        assert!(p(bad).is_err(), "{bad}");
    }
}

#[test]
fn object_store_url_errors_name_the_flag_and_never_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(dir.path());
    a.object_store = Some("s3://AKIAKEY:s3cr3t@bucket/ci".into());
    let e = a.resolve().unwrap_err().to_string();
    assert!(
        e.starts_with("--object-store") && !e.contains("s3cr3t"),
        "{e}"
    );
    let mut a = args(dir.path());
    a.object_store = Some("s3://bucket/ci?endpoint=ftp://h".into());
    let e = a.resolve().unwrap_err().to_string();
    assert!(e.contains("endpoint"), "{e}");
}
