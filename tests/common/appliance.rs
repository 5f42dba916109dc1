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
use super::wait::wait_until;

/// A running appliance.
pub struct Appliance {
    pub addr: SocketAddr,
    pub cache_dir: PathBuf,
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Named options for [`Appliance::options`]: what differs between tests' appliances. The
/// settings are applied as they are given (so a `with` closure may borrow).
pub struct Options {
    args: nixgate::config::ServeArgs,
    cache_dir: PathBuf,
    listener: Option<std::net::TcpListener>,
    peer_id: Option<String>,
}

impl Options {
    /// Adds an upstream (asked in the order added).
    pub fn upstream(self, url: impl Into<String>) -> Self {
        self.upstreams(&[url.into()])
    }

    /// Adds upstreams (asked in order).
    pub fn upstreams(mut self, urls: &[String]) -> Self {
        let list = self.args.upstreams.get_or_insert_with(Vec::new);
        list.extend_from_slice(urls);
        self
    }

    /// Serves on this bound listener (default: a fresh one on 127.0.0.1:0). Bind every
    /// member's listener first when members must name each other as `--peer`.
    pub fn listener(mut self, l: std::net::TcpListener) -> Self {
        self.listener = Some(l);
        self
    }

    /// Fixes the peer id (`<cache-dir>/peer-id`), so fleet ownership is the same every run.
    pub fn peer_id(mut self, id: &str) -> Self {
        self.peer_id = Some(id.to_owned());
        self
    }

    /// Changes settings (after the test defaults and what was given before).
    pub fn with(mut self, f: impl FnOnce(&mut nixgate::config::ServeArgs)) -> Self {
        f(&mut self.args);
        self
    }

    /// Starts nixgate in-process with these options.
    pub async fn start(self) -> Appliance {
        if let Some(id) = &self.peer_id {
            fix_peer_id(&self.cache_dir, id);
        }
        let config = self.args.resolve().expect("test config is valid");
        let std_listener = match self.listener {
            Some(l) => l,
            None => std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        };
        std_listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(std_listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task =
            tokio::spawn(async move { nixgate::app::run(config, listener, token).await.unwrap() });
        Appliance {
            addr,
            cache_dir: self.cache_dir,
            shutdown,
            task,
        }
    }
}

/// Fixes the peer id of the appliance that will use `cache_dir` (in-process or a child), as
/// an operator may: a new cache directory holding only `peer-id` is taken.
pub fn fix_peer_id(cache_dir: &Path, id: &str) {
    std::fs::create_dir_all(cache_dir).unwrap();
    std::fs::write(cache_dir.join("peer-id"), format!("{id}\n")).unwrap();
}

impl Appliance {
    /// Options for an appliance caching in `cache_dir` and trusting `key`; then
    /// `.upstream(url)`, `.with(|s| ...)`, ... and `.start().await`.
    pub fn options(cache_dir: &Path, key: &str) -> Options {
        let args = nixgate::config::ServeArgs {
            cache_dir: Some(cache_dir.to_owned()),
            upstreams: Some(Vec::new()),
            trusted_public_keys: Some(vec![key.to_owned()]),
            connect_timeout: Some("1s".into()),
            first_byte_timeout: Some("3s".into()),
            stall_timeout: Some("3s".into()),
            // Tests that want BitTorrent turn it on with a port of their own.
            no_torrent: true,
            ..Default::default()
        };
        Options {
            args,
            cache_dir: cache_dir.to_owned(),
            listener: None,
            peer_id: None,
        }
    }

    /// Starts nixgate in-process on 127.0.0.1:0 (shorthand for [`Appliance::options`]).
    pub async fn start(
        cache_dir: &Path,
        upstreams: &[String],
        key: &str,
        extra: impl FnOnce(&mut nixgate::config::ServeArgs),
    ) -> Appliance {
        Self::options(cache_dir, key)
            .upstreams(upstreams)
            .with(extra)
            .start()
            .await
    }

    /// Starts nixgate with default settings in front of `up`, caching in `dir`.
    pub async fn start_default(dir: &Path, up: &Upstream, key: &str) -> Appliance {
        Self::options(dir, key).upstream(up.url()).start().await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// The value of a metric line (exact name with labels).
    ///
    /// `name{a="x"}` sums every series of `name` whose labels include `a="x"` (so a family
    /// that gained a label, such as `upstream` on `nixgate_upstream_requests_total`, reads as
    /// before); it panics when no series matches.
    pub async fn metric(&self, line: &str) -> u64 {
        let text = get(&format!("{}/metrics", self.url()), &[]).await.body;
        let (name, want) = split_series(line);
        let mut found = None;
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = l.rsplit_once(' ') else {
                continue;
            };
            let (n, labels) = split_series(series);
            if n == name && want.iter().all(|w| labels.contains(w)) {
                let v: f64 = value.parse().unwrap();
                *found.get_or_insert(0) += v as u64;
            }
        }
        found.unwrap_or_else(|| panic!("metric {line} missing"))
    }
}

/// `name{a="x",b="y"}` as the name and its `a="x"` label pairs.
fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, rest)) => {
            let labels = rest.trim_end_matches('}');
            (name, labels.split(',').filter(|l| !l.is_empty()).collect())
        }
        None => (series, Vec::new()),
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
    /// What it serves runners as (`zstd`, `none`), once a probe learned it.
    pub serves: Option<String>,
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
                serves: p["serves"].as_str().map(str::to_owned),
            }
        })
        .collect()
}

/// Waits until `a` has fetched every peer's digest (they decide which peers are asked).
pub async fn wait_for_digests(a: &Appliance) {
    wait_until(Duration::from_secs(5), "every peer's digest", || async {
        peer_rows(a).await.iter().all(|p| p.digest)
    })
    .await;
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

/// A loopback port held for a child process: bound with `SO_REUSEADDR` and not listening,
/// so nothing else is given the port (no other bind, no outgoing connection's local port)
/// while a program that binds with `SO_REUSEADDR` too (`nixgate serve` through tokio,
/// aria2c, opentracker) can listen on it. Keep it until the child is done.
pub struct HeldPort {
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

impl HeldPort {
    /// The port, held for the rest of the test process (for a setting of an in-process
    /// appliance, which binds it later on its own).
    pub fn keep(self) -> u16 {
        let port = self.port;
        std::mem::forget(self);
        port
    }
}

/// Holds a fresh loopback port (see [`HeldPort`]).
pub fn hold_port() -> HeldPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    HeldPort {
        port,
        _socket: socket,
    }
}

/// A bound loopback listener for an in-process appliance ([`Options::listener`]): its port
/// is known before it starts, and it is never released in between.
pub fn bound_listener() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
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
