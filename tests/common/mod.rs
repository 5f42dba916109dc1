//! Test harness: a signed binary cache written by real `nix copy`, an in-process upstream
//! that serves it (counting requests; stoppable, throttled, tamperable), the appliance on
//! 127.0.0.1:0, and the real Nix client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const NIX_CONFIG: &str = "experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\nnarinfo-cache-negative-ttl = 0";

/// The store paths and signed cache every test uses.
pub struct Fixture {
    pub dir: PathBuf,
    pub cache: PathBuf,
    pub public_key: String,
    /// `top` references `dep`; `blob-*` are ~400 KB of incompressible data each.
    pub top: String,
    pub dep: String,
    pub blobs: Vec<String>,
    /// ~3 MB incompressible.
    pub big: String,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.env("NIX_CONFIG", NIX_CONFIG).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e}. The tests need Debian's nix-bin: run ci/test.sh, which installs it")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

const EXPR: &str = r#"
let mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" script ]; };
    dep = mk "nixgate-test-dep" "mkdir -p $out; echo dependency > $out/dep";
    top = mk "nixgate-test-top" "mkdir -p $out; echo ${dep} > $out/ref; echo top > $out/top";
    blob = i: mk "nixgate-test-blob-${toString i}" "head -c 400000 /dev/urandom > $out";
    big = mk "nixgate-test-big" "head -c 3000000 /dev/urandom > $out";
in { inherit dep top big; blob0 = blob 0; blob1 = blob 1; blob2 = blob 2; blob3 = blob 3; blob4 = blob 4; }
"#;

fn build_fixture() -> Fixture {
    let dir = std::env::temp_dir().join(format!("nixgate-fixture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("t.nix"), EXPR).unwrap();
    let sk =
        run(Command::new("nix").args(["key", "generate-secret", "--key-name", "nixgate-test-1"]));
    std::fs::write(dir.join("sk"), &sk).unwrap();
    let public_key = run(Command::new("sh").arg("-c").arg(format!(
        "nix key convert-secret-to-public < {}",
        dir.join("sk").display()
    )));
    let attr = |a: &str| {
        run(Command::new("nix-build")
            .arg(dir.join("t.nix"))
            .args(["--no-out-link", "-A", a]))
    };
    let (dep, top, big) = (attr("dep"), attr("top"), attr("big"));
    let blobs: Vec<String> = (0..5).map(|i| attr(&format!("blob{i}"))).collect();
    let cache = dir.join("cache");
    let to = format!(
        "file://{}?secret-key={}&compression=xz",
        cache.display(),
        dir.join("sk").display()
    );
    let mut copy = Command::new("nix");
    copy.args(["copy", "--to", &to, &top, &big]).args(&blobs);
    run(&mut copy);
    Fixture {
        dir,
        cache,
        public_key,
        top,
        dep,
        blobs,
        big,
    }
}

/// The shared fixture (built once per test binary).
pub async fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    tokio::task::spawn_blocking(|| F.get_or_init(build_fixture))
        .await
        .unwrap()
}

impl Fixture {
    /// The 32-char hash part of a store path.
    pub fn hash(path: &str) -> &str {
        &path["/nix/store/".len()..][..32]
    }
    /// The narinfo text of a path.
    pub fn narinfo(&self, path: &str) -> String {
        std::fs::read_to_string(self.cache.join(format!("{}.narinfo", Self::hash(path)))).unwrap()
    }
    /// The NAR URL (relative) of a path, from its narinfo.
    pub fn nar_url(&self, path: &str) -> String {
        self.narinfo(path)
            .lines()
            .find_map(|l| l.strip_prefix("URL: "))
            .unwrap()
            .to_owned()
    }
}

/// An upstream binary cache served from a directory.
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<HashMap<String, u64>>>,
    pub total: Arc<AtomicU64>,
    /// Bytes per second for NAR bodies (0: unlimited).
    pub rate: Arc<AtomicU64>,
    /// Replacement bodies by path.
    pub overrides: Arc<Mutex<HashMap<String, Bytes>>>,
    pub fail_5xx: Arc<AtomicBool>,
    /// Milliseconds before the response headers of a `nar/` request (a slow first byte).
    pub nar_delay_ms: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Upstream {
    pub async fn start(root: &Path) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream {
            addr: listener.local_addr().unwrap(),
            requests: Default::default(),
            total: Default::default(),
            rate: Default::default(),
            overrides: Default::default(),
            fail_5xx: Default::default(),
            nar_delay_ms: Default::default(),
            stop: CancellationToken::new(),
        };
        let (root, reqs, total, rate, ov, fail, stop) = (
            root.to_owned(),
            up.requests.clone(),
            up.total.clone(),
            up.rate.clone(),
            up.overrides.clone(),
            up.fail_5xx.clone(),
            up.stop.clone(),
        );
        let delay = up.nar_delay_ms.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! { _ = stop.cancelled() => return, r = listener.accept() => r.unwrap().0 };
                let (root, reqs, total, rate, ov, fail, stop) = (
                    root.clone(),
                    reqs.clone(),
                    total.clone(),
                    rate.clone(),
                    ov.clone(),
                    fail.clone(),
                    stop.clone(),
                );
                let delay = delay.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let path = req.uri().path().trim_start_matches('/').to_owned();
                            *reqs.lock().unwrap().entry(path.clone()).or_default() += 1;
                            total.fetch_add(1, Ordering::SeqCst);
                            let body =
                                ov.lock().unwrap().get(&path).cloned().or_else(|| {
                                    std::fs::read(root.join(&path)).ok().map(Bytes::from)
                                });
                            let (fail, rate) =
                                (fail.load(Ordering::SeqCst), rate.load(Ordering::SeqCst));
                            let wait = if path.starts_with("nar/") {
                                delay.load(Ordering::SeqCst)
                            } else {
                                0
                            };
                            async move {
                                tokio::time::sleep(Duration::from_millis(wait)).await;
                                Ok::<_, std::convert::Infallible>(respond(fail, rate, body))
                            }
                        },
                    );
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    tokio::select! { _ = stop.cancelled() => {}, _ = conn => {} }
                });
            }
        });
        up
    }

    /// Stops serving: the port refuses connections and open connections are closed.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self, path: &str) -> u64 {
        self.requests
            .lock()
            .unwrap()
            .get(path.trim_start_matches('/'))
            .copied()
            .unwrap_or(0)
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn respond(fail: bool, rate: u64, body: Option<Bytes>) -> hyper::Response<TestBody> {
    let b = hyper::Response::builder();
    if fail {
        return b
            .status(500)
            .body(Full::new(Bytes::from("boom")).boxed())
            .unwrap();
    }
    let Some(body) = body else {
        return b.status(404).body(Full::new(Bytes::new()).boxed()).unwrap();
    };
    let b = b.header("content-length", body.len());
    if rate == 0 {
        return b.body(Full::new(body).boxed()).unwrap();
    }
    let chunk = 16 * 1024;
    let delay = Duration::from_secs_f64(chunk as f64 / rate as f64);
    let s = futures_util::stream::unfold(0usize, move |pos| {
        let body = body.clone();
        async move {
            if pos >= body.len() {
                return None;
            }
            tokio::time::sleep(delay).await;
            let end = (pos + chunk).min(body.len());
            Some((Ok(Frame::data(body.slice(pos..end))), end))
        }
    });
    b.body(BodyExt::boxed(StreamBody::new(s))).unwrap()
}

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

/// A response, or how the body failed.
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
    pub bytes: Bytes,
    pub body_error: Option<String>,
}

/// Sends a request with a fresh connection and reads the whole body.
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Got {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(http_body_util::Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let (bytes, body_error) = match body.collect().await {
        Ok(c) => (c.to_bytes(), None),
        Err(e) => (Bytes::new(), Some(format!("{e:?}"))),
    };
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
        body_error,
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Got {
    request("GET", url, headers).await
}

/// Runs real `nix copy --from <appliance>` of `path` into a fresh store under `dest`.
pub async fn nix_copy(
    appliance_url: &str,
    key: &str,
    path: &str,
    dest: &Path,
) -> std::process::Output {
    let xdg = dest.join("xdg");
    let mut cmd = tokio::process::Command::new("nix");
    cmd.env("NIX_CONFIG", NIX_CONFIG)
        .env("XDG_CACHE_HOME", &xdg)
        .args(["copy", "--from", appliance_url, "--to"])
        .arg(dest.join("root"))
        .args(["--option", "trusted-public-keys", key, path]);
    let out = cmd
        .output()
        .await
        .expect("nix is installed (ci/test.sh installs nix-bin)");
    out
}

/// Asserts that a `nix copy` succeeded, showing Nix's stderr when it did not.
pub fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "nix copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// True when `path` is a valid (registered, complete) path of the store under `dest`.
pub fn substituted(dest: &Path, path: &str) -> bool {
    Command::new("nix")
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["path-info", "--store"])
        .arg(dest.join("root"))
        .arg(path)
        .output()
        .expect("nix is installed")
        .status
        .success()
}

/// Files under `dir/sub`, recursively.
pub fn files(dir: &Path, sub: &str) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), out)
                } else {
                    out.push(e.path())
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join(sub), &mut out);
    out
}

/// An upstream over the fixture cache that answers every request with 500.
pub async fn failing_upstream(f: &Fixture) -> Upstream {
    let up = Upstream::start(&f.cache).await;
    up.fail_5xx.store(true, Ordering::SeqCst);
    up
}

/// One row of `/_p2p/v1/peers`.
#[derive(Debug)]
pub struct PeerRow {
    pub url: String,
    pub origin: String,
    pub state: String,
    pub digest: bool,
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
