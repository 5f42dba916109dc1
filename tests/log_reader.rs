//! Shutdown never waits on the log reader: the real binary, its stderr a pipe whose reader
//! is gone (closed after the first lines, as `nixgate serve 2>&1 | head -3`) or never reads
//! (a full 64 KiB pipe), logs at debug under traffic, drops (and counts) lines instead of
//! blocking, and still exits 0 on SIGTERM within the drain time.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Stdio};
use std::time::Duration;

use common::*;

/// `http::server::DRAIN_DEADLINE`: what SIGTERM may take at most.
const DRAIN: Duration = Duration::from_secs(20);

/// Starts `serve` at debug with stderr piped; returns it, its base URL and the unread rest of
/// stderr once the "nixgate serving" line was read.
fn start(cache: &std::path::Path) -> (Child, String, BufReader<ChildStderr>) {
    // Nothing listens on port 9 of loopback: misses fail fast, and nothing leaves the host.
    let mut child = serve_command(cache, "debug", &["--upstream", "http://127.0.0.1:9"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning nixgate");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let port = loop {
        line.clear();
        let n = err.read_line(&mut line).expect("reading stderr");
        assert!(n > 0, "nixgate exited before serving");
        if let Some(p) = serving_port(&line) {
            break p;
        }
    };
    (child, format!("http://127.0.0.1:{port}"), err)
}

/// Sends requests that each log a ~4 KiB debug line (the refused path is in the span) until
/// the appliance reports dropped log lines; fails if serving blocks on the log meanwhile.
async fn log_until_dropped(base: &str) -> u64 {
    tokio::time::timeout(Duration::from_secs(60), requests_until_dropped(base))
        .await
        .expect("requests hung: serving waits on the log reader")
}

async fn requests_until_dropped(base: &str) -> u64 {
    let long = format!("{base}/{}", "x".repeat(4000));
    for _ in 0..200 {
        for _ in 0..20 {
            assert_eq!(get(&long, &[]).await.status, 404);
        }
        let dropped = metric(base, "nixgate_log_lines_dropped_total").await;
        if dropped > 0 {
            return dropped;
        }
    }
    panic!("no log line was dropped after 4000 requests of 4 KiB lines");
}

async fn sigterm_exits_zero_within_drain(mut child: Child) {
    sigterm(&child);
    let status = exit_within(&mut child, DRAIN)
        .await
        .expect("nixgate did not exit within the drain time after SIGTERM");
    assert!(status.success(), "exit after SIGTERM: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_when_the_log_reader_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (child, base, err) = start(dir.path());
    drop(err); // the reader closes its end: every later write is EPIPE
    let dropped = log_until_dropped(&base).await;
    eprintln!("{dropped} log lines dropped on a closed pipe");
    sigterm_exits_zero_within_drain(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_when_the_log_pipe_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let (child, base, err) = start(dir.path());
    // `err` stays open and unread until the end: the pipe fills, then the queue.
    let dropped = log_until_dropped(&base).await;
    eprintln!("{dropped} log lines dropped on a full pipe");
    // The appliance still serves while its log reader is stuck.
    assert_eq!(get(&format!("{base}/healthz"), &[]).await.status, 200);
    sigterm_exits_zero_within_drain(child).await;
    drop(err);
}
