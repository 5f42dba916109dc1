//! The appliance under test: nixgate started in-process on 127.0.0.1 (port 0 or a given one),
//! its metrics and peer set, and an appliance that already holds some paths.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::client::{assert_ok, get, nix_copy};
use super::fixture::Fixture;
use super::upstream::Upstream;

/// A running appliance.
pub struct Appliance {
    pub addr: SocketAddr,
    pub cache_dir: PathBuf,
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Appliance {
    /// Starts nixgate in-process on 127.0.0.1:0.
    pub async fn start(
        cache_dir: &Path,
        upstreams: &[String],
        key: &str,
        extra: impl FnOnce(&mut nixgate::config::ServeArgs),
    ) -> Appliance {
        Self::start_on(cache_dir, 0, upstreams, key, extra).await
    }

    /// Starts nixgate in-process on 127.0.0.1:`port`.
    pub async fn start_on(
        cache_dir: &Path,
        port: u16,
        upstreams: &[String],
        key: &str,
        extra: impl FnOnce(&mut nixgate::config::ServeArgs),
    ) -> Appliance {
        let mut args = nixgate::config::ServeArgs {
            cache_dir: Some(cache_dir.to_owned()),
            upstreams: Some(upstreams.to_vec()),
            trusted_public_keys: Some(vec![key.to_owned()]),
            connect_timeout: Some("1s".into()),
            first_byte_timeout: Some("3s".into()),
            stall_timeout: Some("3s".into()),
            // Tests that want BitTorrent turn it on with a port of their own.
            no_torrent: true,
            ..Default::default()
        };
        extra(&mut args);
        let config = args.resolve().expect("test config is valid");
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task =
            tokio::spawn(async move { nixgate::app::run(config, listener, token).await.unwrap() });
        Appliance {
            addr,
            cache_dir: cache_dir.to_owned(),
            shutdown,
            task,
        }
    }

    /// Starts nixgate with default settings in front of `up`, caching in `dir`.
    pub async fn start_default(dir: &Path, up: &Upstream, key: &str) -> Appliance {
        Self::start(dir, &[up.url()], key, |_| {}).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// The value of a metric line (exact name with labels).
    pub async fn metric(&self, line: &str) -> u64 {
        let text = get(&format!("{}/metrics", self.url()), &[]).await.body;
        text.lines()
            .find_map(|l| l.strip_prefix(line).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("metric {line} missing"))
    }
}

/// One row of `/_p2p/v1/peers`.
#[derive(Debug)]
pub struct PeerRow {
    pub url: String,
    pub origin: String,
    pub state: String,
    pub digest: bool,
    /// A live fleet member that owns a share of the keys.
    pub owner: bool,
    /// Its fleet id, once a probe learned it.
    pub id: Option<String>,
}

/// The peer set an appliance reports.
pub async fn peer_rows(a: &Appliance) -> Vec<PeerRow> {
    let got = get(&format!("{}/_p2p/v1/peers", a.url()), &[]).await;
    assert_eq!(got.status, 200);
    let v: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap().to_owned();
            PeerRow {
                url: s("url"),
                origin: s("origin"),
                state: s("state"),
                digest: p["digest"] == true,
                owner: p["owner"] == true,
                id: p["id"].as_str().map(str::to_owned),
            }
        })
        .collect()
}

/// Waits until `a` has fetched every peer's digest (they decide which peers are asked).
pub async fn wait_for_digests(a: &Appliance) {
    for _ in 0..100 {
        if peer_rows(a).await.iter().all(|p| p.digest) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("digests not fetched");
}

/// A working upstream and an appliance in front of it (settings changed by `extra`) that
/// already holds `paths`, fetched with real `nix copy`.
pub async fn holding_appliance(
    f: &Fixture,
    dir: &Path,
    paths: &[&String],
    extra: impl FnOnce(&mut nixgate::config::ServeArgs),
) -> (Upstream, Appliance) {
    let up = Upstream::start(&f.cache).await;
    let a = Appliance::start(&dir.join("holder"), &[up.url()], &f.public_key, extra).await;
    for p in paths {
        assert_ok(&nix_copy(&a.url(), &f.public_key, p, &dir.join("warm")).await);
    }
    (up, a)
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An appliance with `peers` as fallback peers (`--no-fleet`: asked only when every upstream
/// fails, and for BitTorrent; tests/fleet.rs covers configured peers as one fleet).
pub async fn with_peers(dir: &Path, up: &Upstream, key: &str, peers: Vec<String>) -> Appliance {
    Appliance::start(dir, &[up.url()], key, move |a| {
        a.peers = Some(peers);
        a.no_fleet = true;
    })
    .await
}

/// A working upstream and an appliance in front of it that already holds `paths`.
pub async fn holding_peer(f: &Fixture, dir: &Path, paths: &[&String]) -> (Upstream, Appliance) {
    holding_appliance(f, dir, paths, |_| {}).await
}

/// A member as a real `nixgate serve` process (so it can be killed with SIGKILL): upstream
/// `up`, trusting `key`, the members listening on `peers` as `--peer`, then `extra` arguments.
pub fn spawn_member(
    cache: &Path,
    port: u16,
    up: &str,
    key: &str,
    peers: &[u16],
    extra: &[&std::ffi::OsStr],
) -> std::process::Child {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nixgate"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--upstream",
            up,
            "--trusted-public-key",
            key,
            "--no-torrent",
        ])
        .arg("--cache-dir")
        .arg(cache)
        .args(extra);
    for p in peers {
        cmd.args(["--peer", &format!("http://127.0.0.1:{p}")]);
    }
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}
