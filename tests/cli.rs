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
    let work = tempfile::tempdir().unwrap();
    let key = "test-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let a = Appliance::options(&work.path().join("cache"), key)
        .start()
        .await;
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
    // The appliance (no upstream) answered that it cannot have the path.
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
