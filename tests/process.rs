//! The real binary: `kill -9` in the middle of downloads and a clean restart, SIGTERM,
//! and `check-config` errors.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_nixgate");

fn spawn(cache: &std::path::Path, port: u16, up: &str, key: &str) -> std::process::Child {
    Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            up,
            "--trusted-public-key",
            key,
        ])
        .arg("--cache-dir")
        .arg(cache)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_ready(port: u16) {
    // The port is bound before the cache is opened (and tmp/ emptied): wait for an HTTP
    // answer, which comes only once the appliance serves.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let what = format!("nixgate to serve on {port}");
    wait_until(Duration::from_secs(10), &what, || async {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return false;
        };
        let mut answer = Vec::new();
        let asked = async {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await?;
            s.read_to_end(&mut answer).await
        };
        tokio::time::timeout(Duration::from_secs(2), asked)
            .await
            .is_ok()
            && answer.starts_with(b"HTTP/1.1 200 ")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_download_then_clean_restart() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    up.rate
        .store(1_000_000, std::sync::atomic::Ordering::SeqCst);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    // Held for the whole test: the restart binds the same port again.
    let held = hold_port();
    let port = held.port;
    let mut child = spawn(&cache, port, &up.url(), &f.public_key);
    wait_ready(port).await;
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        get(&format!("{base}/{}.narinfo", Fixture::hash(&f.big)), &[])
            .await
            .status,
        200
    );
    let nar = f.nar_url(&f.big);
    let url = format!("{base}/{nar}");
    let download = tokio::spawn(async move { try_request("GET", &url, &[]).await });
    // Wait until part of the NAR is on disk, then kill -9.
    wait_until(Duration::from_secs(10), "the download to start", || async {
        files(&cache, "tmp")
            .iter()
            .any(|p| p.metadata().map_or(0, |m| m.len()) > 0)
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Killed before or after the response headers went out: either way, never complete.
    match download.await.unwrap() {
        Ok(got) => assert!(
            got.body_error.is_some(),
            "a killed download looked complete"
        ),
        Err(no_headers) => eprintln!("killed before the headers: {no_headers}"),
    }
    assert!(
        !files(&cache, "tmp").is_empty(),
        "the partial file is where we expect it"
    );
    assert!(
        files(&cache, "nar").is_empty(),
        "no partial NAR in the store"
    );

    // Restart: temp files gone, the narinfo survived, the NAR is fetched whole.
    up.rate.store(0, std::sync::atomic::Ordering::SeqCst);
    let mut child = spawn(&cache, port, &up.url(), &f.public_key);
    wait_ready(port).await;
    assert!(
        files(&cache, "tmp").is_empty(),
        "leftover temp files not removed"
    );
    let expected = std::fs::read(f.cache.join(&nar)).unwrap();
    let g = get(&format!("{base}/{nar}"), &[]).await;
    assert_eq!(g.status, 200);
    assert!(g.bytes == expected[..]);
    let out = nix_copy(&base, &f.public_key, &f.big, &work.path().join("c")).await;
    assert_ok(&out);

    // SIGTERM: graceful exit with status 0.
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
}

fn check_config(args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--cache-dir")
        .arg(dir.path())
        .args(args)
        .env_remove("NIXGATE_UPSTREAM")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_config_reports_bad_settings() {
    let (ok, out) = check_config(&["--upstream", "http://127.0.0.1:1"]);
    assert!(ok, "{out}");
    assert!(out.contains("configuration OK"));
    for (args, needle) in [
        (&["--max-cache-size", "10 gigs"][..], "10 gigs"),
        (
            &["--trusted-public-key", "cache.nixos.org-1:nope!"][..],
            "trusted-public-key",
        ),
        (&["--upstream", "ftp://127.0.0.1/"][..], "--upstream"),
        (&["--listen", "nowhere"][..], "--listen"),
        (&["--upstream-down-status", "500"][..], "503 or 404"),
    ] {
        let (ok, out) = check_config(args);
        assert!(!ok, "{args:?} accepted");
        assert!(out.contains(needle), "{args:?}: {out}");
    }
    // An unwritable cache dir (a path under a regular file).
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--cache-dir"])
        .arg(file.path().join("sub"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cache-dir"));
    // Env vars are read, and a flag beats them.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--cache-dir"])
        .arg(dir.path())
        .env("NIXGATE_MAX_CACHE_SIZE", "2GiB")
        .env("NIXGATE_PRIORITY", "7")
        .args(["--priority", "9"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&(2u64 << 30).to_string()) && text.contains("priority             9"),
        "{text}"
    );
}
