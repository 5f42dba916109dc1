//! Runners that push (`nix copy --to` the appliance, with a netrc) and what they push: fresh
//! store paths built for one test, their NAR and narinfo as a binary cache would hold them
//! (for hand-made `PUT`s), and keys.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::appliance::Appliance;
use super::client::files;
use super::fixture::NIX_CONFIG;
use super::upstream::Upstream;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .env("NIX_CONFIG", NIX_CONFIG)
        .output()
        .expect("nix is installed");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Builds a path no cache holds: `bytes` of random data named `nixgate-upload-<tag>`.
pub fn build_unique(tag: &str, bytes: usize) -> String {
    run(Command::new("nix-build").args(["--no-out-link", "-E", &unique_expr(tag, bytes)]))
}

/// The Nix expression of [`build_unique`]: a derivation no store has built before.
pub fn unique_expr(tag: &str, bytes: usize) -> String {
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    format!(
        r#"derivation {{ name = "nixgate-upload-{tag}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" "echo {nonce} > /dev/null; head -c {bytes} /dev/urandom > $out" ]; }}"#
    )
}

/// Signs `path` in the local store with `secret_key` (as CI does before it pushes).
pub fn sign(path: &str, secret_key: &Path) {
    run(Command::new("nix")
        .args(["store", "sign", "--key-file"])
        .arg(secret_key)
        .arg(path));
}

/// A Nix key pair: the secret key file and the public key.
pub fn key_pair(dir: &Path, name: &str) -> (PathBuf, String) {
    std::fs::create_dir_all(dir).unwrap();
    let sk = run(Command::new("nix").args(["key", "generate-secret", "--key-name", name]));
    let file = dir.join(format!("{name}.sk"));
    std::fs::write(&file, &sk).unwrap();
    let public = run(Command::new("sh").arg("-c").arg(format!(
        "nix key convert-secret-to-public < {}",
        file.display()
    )));
    (file, public)
}

/// A netrc for the appliance on 127.0.0.1 with `token` as the password.
pub fn netrc(dir: &Path, token: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join(format!("netrc-{token}"));
    std::fs::write(
        &file,
        format!("machine 127.0.0.1 login ci password {token}\n"),
    )
    .unwrap();
    file
}

/// Real `nix copy --to <to> <path>` from the local store (its own Nix caches under `work`),
/// with `netrc` as Nix's `netrc-file` when given.
pub async fn nix_push(
    to: &str,
    netrc: Option<&Path>,
    path: &str,
    work: &Path,
) -> std::process::Output {
    let xdg = work.join(format!("xdg-push-{}", rand_suffix()));
    let mut cmd = tokio::process::Command::new("nix");
    cmd.env("NIX_CONFIG", NIX_CONFIG)
        .env("XDG_CACHE_HOME", &xdg)
        .args(["copy", "--to", to, path]);
    if let Some(n) = netrc {
        cmd.arg("--option").arg("netrc-file").arg(n);
    }
    cmd.output().await.expect("nix is installed")
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A path as a binary cache holds it: narinfo text, NAR URL (relative) and NAR bytes.
pub struct Pushed {
    pub hash: String,
    pub narinfo: String,
    pub nar_url: String,
    pub nar: Vec<u8>,
}

/// `path` written to a fresh `file://` cache (xz), signed with `secret_key` when given.
pub fn as_cache(path: &str, dir: &Path, secret_key: Option<&Path>) -> Pushed {
    let mut to = format!("file://{}?compression=xz", dir.display());
    if let Some(k) = secret_key {
        to.push_str(&format!("&secret-key={}", k.display()));
    }
    let xdg = dir.with_extension("xdg");
    run(Command::new("nix")
        .env("XDG_CACHE_HOME", &xdg)
        .args(["copy", "--to", &to, path]));
    let hash = path["/nix/store/".len()..][..32].to_owned();
    let narinfo = std::fs::read_to_string(dir.join(format!("{hash}.narinfo"))).unwrap();
    let nar_url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let nar = std::fs::read(dir.join(&nar_url)).unwrap();
    Pushed {
        hash,
        narinfo,
        nar_url,
        nar,
    }
}

/// A `narinfo` with `field`'s value replaced.
pub fn with_field(narinfo: &str, field: &str, value: &str) -> String {
    narinfo
        .lines()
        .map(|l| match l.strip_prefix(&format!("{field}: ")) {
            Some(_) => format!("{field}: {value}"),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The value of `field` in a narinfo.
pub fn field<'a>(narinfo: &'a str, field: &str) -> &'a str {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}: ")))
        .unwrap_or_else(|| panic!("no {field} in {narinfo}"))
}

/// A `PUT` (or other `method`) with a body; the status, headers and body text.
pub async fn send(
    method: &str,
    url: &str,
    auth: Option<&str>,
    body: Vec<u8>,
) -> (u16, http::HeaderMap, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// Uploads `p` (NAR, then narinfo `narinfo`) with `auth`; the two statuses.
pub async fn upload(base: &str, auth: &str, p: &Pushed, narinfo: &str) -> (u16, u16) {
    let nar = send(
        "PUT",
        &format!("{base}/{}", p.nar_url),
        Some(auth),
        p.nar.clone(),
    )
    .await;
    let info = send(
        "PUT",
        &format!("{base}/{}.narinfo", p.hash),
        Some(auth),
        narinfo.as_bytes().to_vec(),
    )
    .await;
    (nar.0, info.0)
}

/// The upload token of [`uploading`] appliances, and its `Authorization` header.
pub const TOKEN: &str = "upl0ad-t0ken";
pub const BEARER: &str = "Bearer upl0ad-t0ken";

/// An appliance in front of the fixture's upstream taking uploads with [`TOKEN`].
pub async fn uploading(
    dir: &Path,
    up: &Upstream,
    keys: &[&str],
    extra: impl FnOnce(&mut nixgate::config::ServeArgs),
) -> Appliance {
    std::fs::create_dir_all(dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    let first = keys[0].clone();
    Appliance::start(&dir.join("cache"), &[up.url()], &first, move |a| {
        a.upload_token_file = Some(token);
        a.trusted_public_keys = Some(keys);
        extra(a)
    })
    .await
}

pub fn held(a: &Appliance) -> usize {
    files(&a.cache_dir, "uploads/narinfo").len() + files(&a.cache_dir, "uploads/nar").len()
}

pub fn staged(a: &Appliance) -> usize {
    files(&a.cache_dir, "uploads/staging").len()
}
