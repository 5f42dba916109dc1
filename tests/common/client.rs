//! Clients of the appliance: raw HTTP requests, the real Nix client (`nix copy`, `nix
//! path-info`) into throw-away stores, and a look at the files in a cache directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use http_body_util::BodyExt;

use super::fixture::NIX_CONFIG;

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
    try_request(method, url, headers)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Like [`request`]; `Err` when no response headers came (e.g. the server died first).
pub async fn try_request(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<Got, String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(http_body_util::Empty::new()).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let (bytes, body_error) = match body.collect().await {
        Ok(c) => (c.to_bytes(), None),
        Err(e) => (Bytes::new(), Some(format!("{e:?}"))),
    };
    Ok(Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
        body_error,
    })
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
    nix_copy_paths(appliance_url, key, &[path], dest).await
}

/// Runs real `nix copy --from <appliance>` of `paths` (and their closures) into a fresh store
/// under `dest`.
pub async fn nix_copy_paths(
    appliance_url: &str,
    key: &str,
    paths: &[&str],
    dest: &Path,
) -> std::process::Output {
    let xdg = dest.join("xdg");
    let mut cmd = tokio::process::Command::new("nix");
    cmd.env("NIX_CONFIG", NIX_CONFIG)
        .env("XDG_CACHE_HOME", &xdg)
        .args(["copy", "--from", appliance_url, "--to"])
        .arg(dest.join("root"))
        .args(["--option", "trusted-public-keys", key])
        .args(paths);
    cmd.output()
        .await
        .expect("nix is installed (ci/test.sh installs nix-bin)")
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
