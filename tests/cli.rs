//! The client subcommands as an operator types them: one `--url` that also takes `host:port`,
//! `-o json`, grouped `serve --help`, sizes in human units in `check-config`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_nixgate");
const MISSING: &str = "/nix/store/00000000000000000000000000000000-absent";

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("NIXGATE_UPSTREAM")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_subcommand_takes_host_port_as_url() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;
    let hostport = a.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        (
            run(&["health", "--url", &hostport]),
            run(&["status", "--url", &hostport, "-o", "json"]),
            run(&["warm", "--url", &hostport, MISSING]),
        )
    })
    .await
    .unwrap();
    let (health, status, warm) = out;
    assert!(health.status.success(), "health: {}", text(&health));
    assert!(status.status.success(), "status: {}", text(&status));
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(doc.get("totals").is_some(), "{doc}");
    // The appliance answered that its upstream does not have the path.
    let said = text(&warm);
    assert!(!warm.status.success(), "{said}");
    assert!(
        said.contains(&MISSING[11..43]) && !said.contains("connect"),
        "warm: {said}"
    );
    a.stop().await;

    for args in [
        &["health", "--url", "ftp://127.0.0.1/"][..],
        &["status", "--url", "127.0.0.1:port"][..],
        &["warm", "--url", "127.0.0.1:8080?x=1", "/nix/store/x"][..],
    ] {
        let o = run(args);
        assert!(!o.status.success(), "{args:?} accepted");
        assert!(
            text(&o).contains("expected e.g. http://"),
            "{args:?}: {}",
            text(&o)
        );
    }
}

#[test]
fn serve_help_groups_its_flags() {
    let o = run(&["serve", "--help"]);
    assert!(o.status.success());
    let help = text(&o);
    let headings = [
        "Listening and logging:",
        "Cache:",
        "Upstreams:",
        "Limits (runners):",
        "Peers and fleet:",
        "BitTorrent:",
        "Uploads (nix copy --to):",
    ];
    let mut at = Vec::new();
    for h in headings {
        let pos = help.lines().position(|l| l == h);
        assert!(pos.is_some(), "no heading {h:?} in:\n{help}");
        at.extend(pos);
    }
    // Each flag sits under its group.
    let line_of = |flag: &str| help.lines().position(|l| l.contains(flag)).unwrap();
    assert!(line_of("--max-cache-size") > at[1] && line_of("--max-cache-size") < at[2]);
    assert!(line_of("--upload-token-file") > at[6]);
}

#[test]
fn check_config_prints_sizes_in_human_units() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["check-config", "--max-cache-size", "1.5 GiB", "--cache-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim() == "max-cache-size       1.5 GiB (1610612736 bytes)"),
        "{out}"
    );
}

#[test]
fn check_config_warns_of_settings_that_cannot_work_as_meant() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-upload-token\n").unwrap();
    let o = Command::new(BIN)
        .args([
            "check-config",
            "--max-cache-size",
            "1000000TiB",
            "--cache-dir",
        ])
        .arg(dir.path().join("cache"))
        .arg("--upload-token-file")
        .arg(&token)
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "warnings are not errors: {out}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: uploads are on without --signing-key-file"),
        "{err}"
    );
    assert!(
        err.contains("warning: --max-cache-size 1000000.0 TiB is larger than the file system"),
        "{err}"
    );
    assert!(!out.contains("s3cr3t"), "{out}");
}

/// Starts `serve` with stderr in a file; returns the child and the file.
fn serve_logging_to_file(listen: &str, dir: &std::path::Path) -> (std::process::Child, PathBuf) {
    let log = dir.join("stderr");
    let child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            listen,
            "--upstream",
            "http://127.0.0.1:9",
        ])
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

#[tokio::test]
async fn a_busy_port_is_reported_as_busy_and_logs_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    // The IPv6 wildcard (the default) on a port an IPv4 socket holds: no IPv6 fallback story.
    let (mut busy, log) = serve_logging_to_file(&format!("[::]:{port}"), dir.path());
    let status = tokio::task::spawn_blocking(move || busy.wait().unwrap())
        .await
        .unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{said}");
    assert!(said.contains("the port is in use"), "{said}");
    assert!(!said.contains("IPv6"), "{said}");

    let (mut ok, log) = serve_logging_to_file("127.0.0.1:0", dir.path());
    wait_until(Duration::from_secs(10), "the start line", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("nixgate serving")
    })
    .await;
    ok.kill().unwrap();
    ok.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!said.contains('\u{1b}'), "ANSI codes in a file: {said:?}");
}

#[test]
fn check_config_refuses_a_foreign_cache_dir_as_serve_does() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), "not a cache").unwrap();
    let o = Command::new(BIN)
        .arg("check-config")
        .arg("--cache-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("not empty") || out.contains("use an empty directory"),
        "{out}"
    );
    assert!(dir.path().join("precious.txt").exists());
    assert!(
        !dir.path().join("VERSION").exists(),
        "check-config changed nothing"
    );
}

/// The log tells the story at INFO, with typed fields in JSON: the start, each upstream, and
/// one line per NAR fetched (its path, bytes, source and duration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_tell_the_story_with_typed_fields() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let dir = tempfile::tempdir().unwrap();
    let held = hold_port(); // held (SO_REUSEADDR) while the child binds it: no port race
    let port = held.port;
    let log = dir.path().join("stderr");
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--log-format",
            "json",
            "--no-torrent",
            "--upstream",
            &up.url(),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--trusted-public-key", &f.public_key])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(10), "nixgate to serve", || async {
        reqwest_free_get(&format!("{url}/healthz")).await
    })
    .await;
    let info = get(&format!("{url}/{}.narinfo", Fixture::hash(&f.top)), &[]).await;
    assert_eq!(info.status, 200);
    assert_eq!(
        get(&format!("{url}/{}", f.nar_url(&f.top)), &[])
            .await
            .status,
        200
    );
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    };
    wait_until(Duration::from_secs(10), "the fetch line", || async {
        lines().iter().any(|l| l["message"] == "NAR fetched")
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let all = lines();
    let find = |m: &str| {
        all.iter()
            .find(|l| l["message"] == m)
            .unwrap_or_else(|| panic!("no {m:?} in {all:?}"))
    };
    let start = find("nixgate serving");
    assert_eq!(start["upstreams"], 1, "{start}");
    assert_eq!(
        start["mdns"], false,
        "loopback: mDNS is off, and the start line says so"
    );
    assert!(find("upstream")["upstream"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    let fetched = find("NAR fetched");
    let name = f.top.rsplit('/').next().unwrap();
    assert_eq!(fetched["path"], name, "{fetched}");
    assert!(fetched["bytes"].as_u64().unwrap() > 0, "{fetched}");
    assert_eq!(fetched["source"], "upstream");
    assert!(
        fetched["ms"].is_u64() && fetched["cached"] == true,
        "{fetched}"
    );
}

/// True when `url` answers 200 (no client library beyond the tests' own).
async fn reqwest_free_get(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    let addr = format!("{}:{}", u.host_str().unwrap(), u.port().unwrap());
    tokio::net::TcpStream::connect(addr).await.is_ok() && get(url, &[]).await.status == 200
}
