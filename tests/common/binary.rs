//! The real `nixgate` binary as a child process: `serve` on 127.0.0.1:0 with JSON logs (the
//! port it bound is read from its "nixgate serving" log line, so no port is guessed), SIGTERM,
//! and waiting for the exit with a deadline.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_nixgate");

/// `nixgate serve` on 127.0.0.1:0 with JSON logs at `rust_log`, BitTorrent and mDNS off,
/// `extra` flags after, stderr to `stderr`.
pub fn serve_command<S: AsRef<std::ffi::OsStr>>(
    cache: &std::path::Path,
    rust_log: &str,
    extra: &[S],
) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--no-torrent", "--no-mdns"])
        .arg("--cache-dir")
        .arg(cache)
        .args(extra)
        .env("RUST_LOG", rust_log)
        .env_remove("NIXGATE_UPSTREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// The port of a JSON "nixgate serving" log line (`"listen":"127.0.0.1:PORT"`).
pub fn serving_port(line: &str) -> Option<u16> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["message"] != "nixgate serving" {
        return None;
    }
    v["listen"].as_str()?.rsplit(':').next()?.parse().ok()
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &Child) {
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("running kill");
    assert!(sent.success(), "kill -TERM {}", child.id());
}

/// Waits for `child` to exit, at most `within`; `None` (and the child killed) when it did not.
pub async fn exit_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The value of an unlabelled counter in the appliance's /metrics.
pub async fn metric(base: &str, name: &str) -> u64 {
    let m = super::client::get(&format!("{base}/metrics"), &[])
        .await
        .body;
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{m}"))
}
