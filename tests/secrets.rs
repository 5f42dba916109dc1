//! Secrets never leave: an appliance (the real binary) configured with every kind of secret —
//! userinfo on `--upstream` and `--peer`, a netrc password, an upload token, a signing key —
//! serves real traffic (a `nix copy` from it, a `nix copy --to` it with the token, the status
//! page, `/_status/v1`, `/metrics`, `/_p2p/v1/peers`, `nixgate status`), and `check-config`
//! and bad configurations are run with them; no secret appears in any output or log line
//! (stderr at debug for nixgate, info for the rest).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const UPSTREAM_PW: &str = "upstream-pw-4b1e";
const PEER_PW: &str = "peer-pw-9d07";
const NETRC_PW: &str = "netrc-pw-33c8";
const TOKEN: &str = "upload-token-e71f";

/// What was seen: (where, text).
type Seen = Vec<(String, String)>;

fn output(what: &str, out: &std::process::Output, seen: &mut Seen) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    seen.push((what.to_owned(), text));
}

/// Waits for the "nixgate serving" line in the log file and returns the port.
async fn port_from_log(log: &std::path::Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(p) = text.lines().find_map(serving_port) {
            return p;
        }
        assert!(Instant::now() < deadline, "nixgate did not serve:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `check-config` with the secrets, and configurations it refuses, each with a secret.
fn configs(cache: &std::path::Path, flags: &[String], seen: &mut Seen) {
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--cache-dir")
        .arg(cache)
        .args(flags)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("upstream             http://***@127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.contains("peer                 http://***@127.0.0.1:"),
        "{text}"
    );
    output("check-config", &out, seen);
    for bad in [
        ["--upstream", &format!("ftp://ci:{UPSTREAM_PW}@127.0.0.1/")],
        ["--peer", &format!("http://p:{PEER_PW}@127.0.0.1/?q=1")],
        [
            "--tracker",
            &format!("wss://t:{UPSTREAM_PW}@127.0.0.1/announce"),
        ],
    ] {
        let out = Command::new(BIN)
            .arg("check-config")
            .arg("--cache-dir")
            .arg(cache)
            .args(flags)
            .args(bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(bad[0]),
            "{out:?}"
        );
        output(&format!("check-config {}", bad[0]), &out, seen);
        let out = Command::new(BIN)
            .arg("serve")
            .arg("--cache-dir")
            .arg(cache)
            .args(flags)
            .args(bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "serve {bad:?} started");
        output(&format!("serve {}", bad[0]), &out, seen);
    }
}

/// Pulls, pushes, and reads every page of the appliance at `base`.
async fn traffic(base: &str, f: &Fixture, work: &std::path::Path, seen: &mut Seen) {
    let out = nix_copy(base, &f.public_key, &f.top, &work.join("client")).await;
    assert_ok(&out);
    output("nix copy --from", &out, seen);
    let built = build_unique("secrets", 2000);
    let runner_netrc = netrc(&work.join("runner"), TOKEN);
    let out = nix_push(base, Some(&runner_netrc), &built, work).await;
    assert_ok(&out);
    output("nix copy --to", &out, seen);
    for path in ["/", "/_status/v1", "/metrics", "/_p2p/v1/peers"] {
        let g = get(&format!("{base}{path}"), &[]).await;
        assert_eq!(g.status, 200, "{path}");
        seen.push((path.to_owned(), g.body));
    }
    let peers = get(&format!("{base}/_p2p/v1/peers"), &[]).await.body;
    assert!(
        peers.contains("***@127.0.0.1"),
        "the peer is listed: {peers}"
    );
    for format in ["text", "json"] {
        let out = Command::new(BIN)
            .args(["status", "--url", base, "--format", format])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        output(&format!("nixgate status --format {format}"), &out, seen);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_reaches_logs_pages_metrics_or_config_output() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let peer = Appliance::start(&work.join("peer"), &[up.url()], &f.public_key, |_| {}).await;
    let netrc_file = work.join("netrc");
    std::fs::write(
        &netrc_file,
        format!("machine 127.0.0.1 login ci password {NETRC_PW}\n"),
    )
    .unwrap();
    let token_file = work.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (signing_key, _) = key_pair(&work.join("keys"), "secrets-test-1");
    let key_secret = std::fs::read_to_string(&signing_key).unwrap();
    let key_secret = key_secret.trim().split_once(':').unwrap().1.to_owned();
    let with = |url: String, user: &str, pw: &str| {
        url.replacen("http://", &format!("http://{user}:{pw}@"), 1)
    };
    let path = |p: &std::path::Path| p.display().to_string();
    let flags: Vec<String> = [
        "--upstream",
        &with(up.url(), "ci", UPSTREAM_PW),
        "--peer",
        &with(peer.url(), "p", PEER_PW),
        "--netrc-file",
        &path(&netrc_file),
        "--upload-token-file",
        &path(&token_file),
        "--signing-key-file",
        &path(&signing_key),
        "--trusted-public-key",
        &f.public_key,
    ]
    .map(str::to_owned)
    .to_vec();

    let mut seen = Seen::new();
    configs(&work.join("cc"), &flags, &mut seen);

    let log = work.join("serve.log");
    let mut child = serve_command(&work.join("cache"), "info,nixgate=debug", &flags)
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{}", port_from_log(&log).await);
    traffic(&base, f, work, &mut seen).await;
    sigterm(&child);
    let status = exit_within(&mut child, Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("peer added") && logged.contains("***@127.0.0.1"),
        "{logged}"
    );
    seen.push(("serve's stderr".into(), logged));
    peer.stop().await;

    for (what, text) in &seen {
        for secret in [UPSTREAM_PW, PEER_PW, NETRC_PW, TOKEN, &key_secret] {
            assert!(!text.contains(secret), "{what} shows {secret}:\n{text}");
        }
    }
    eprintln!("{} outputs checked for 5 secrets", seen.len());
}
