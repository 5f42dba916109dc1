//! Zero-copy NAR hits (issue 16): cached NARs leave by `sendfile` on keep-alive connections
//! that go on serving every other request through hyper. Byte-identical bodies and heads
//! against the files and against hyper's own answer, ranges and a 416, HEAD, narinfo + NAR +
//! nix-cache-info mixed on one connection (two pipelined in one write), a client gone
//! mid-file, a reader stalled past the send timeout, and real `nix copy` of a closure.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ZERO_COPY: &str = "nixgate_zero_copy_responses_total";

/// An appliance holding the fixture's closure, NARs and narinfos (fetched by hyper's miss
/// path), and the NAR URL and bytes of `blobs[0]`.
async fn warm(
    f: &'static Fixture,
    dir: &std::path::Path,
    extra: impl FnOnce(&mut nixgate::config::ServeArgs),
) -> (Upstream, Appliance, String, Vec<u8>) {
    let (up, a) = holding_appliance(f, dir, &[&f.top, &f.big], extra).await;
    let nar = format!("/{}", f.nar_url(&f.blobs[0]));
    let ni = format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.blobs[0]));
    assert_eq!(get(&ni, &[]).await.status, 200);
    assert_eq!(get(&format!("{}{nar}", a.url()), &[]).await.status, 200);
    let bytes = std::fs::read(f.cache.join(&nar[1..])).unwrap();
    (up, a, nar, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_keep_alive_connection_mixes_zero_copy_hits_and_hyper() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, a, nar, expected) = warm(f, work.path(), |_| {}).await;
    let size = expected.len();
    let ni = format!("/{}.narinfo", Fixture::hash(&f.blobs[0]));
    let before = a.metric(ZERO_COPY).await;
    let mut c = Raw::open(a.addr).await;

    let whole = c.get(&nar, "").await;
    assert_eq!(whole.status(), 200);
    assert!(whole.body == expected, "whole file differs");
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let part = c.get(&nar, "Range: bytes=100-199\r\n").await;
    assert_eq!(part.status(), 206);
    assert!(part.body == expected[100..200]);
    let range = format!("bytes 100-199/{size}");
    assert_eq!(part.header("content-range"), Some(range.as_str()));
    let tail = c.get(&nar, "Range: bytes=-10\r\n").await;
    assert!(tail.body == expected[size - 10..]);
    // 416 is hyper's answer, on the same connection.
    let past = c.get(&nar, "Range: bytes=99999999-\r\n").await;
    assert_eq!(past.status(), 416);
    let star = format!("bytes */{size}");
    assert_eq!(past.header("content-range"), Some(star.as_str()));
    c.send(&format!("HEAD {nar} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .await;
    let head = c.read(true).await;
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.header("content-length"),
        Some(size.to_string().as_str())
    );

    let info = c.get("/nix-cache-info", "").await;
    assert!(String::from_utf8_lossy(&info.body).contains("StoreDir: /nix/store"));
    let narinfo = c.get(&ni, "").await;
    assert_eq!(narinfo.body, f.narinfo(&f.blobs[0]).as_bytes());
    // Two requests in one write: a narinfo (hyper), then the NAR (zero-copy), then more.
    c.send(&format!(
        "GET {ni} HTTP/1.1\r\nHost: t\r\n\r\nGET {nar} HTTP/1.1\r\nHost: t\r\n\r\nGET {nar} HTTP/1.1\r\nHost: t\r\nRange: bytes=0-0\r\n\r\n"
    ))
    .await;
    assert_eq!(c.read(false).await.body, narinfo.body);
    assert!(c.read(false).await.body == expected);
    assert!(c.read(false).await.body == expected[..1]);
    assert!(c.get(&nar, "").await.body == expected);
    // Whole, two ranges, HEAD, the pipelined NAR and range, and the last GET.
    assert_eq!(a.metric(ZERO_COPY).await - before, 7);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_copy_heads_equal_hyper_heads_byte_for_byte() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, a, nar, expected) = warm(f, work.path(), |_| {}).await;
    for (method, extra) in [
        ("GET", ""),
        ("GET", "Range: bytes=5-20\r\n"),
        ("GET", "Range: bytes=-7\r\n"),
        ("HEAD", ""),
        ("HEAD", "Range: bytes=5-20\r\n"),
    ] {
        let head_only = method == "HEAD";
        let before = a.metric(ZERO_COPY).await;
        let mut fast = Raw::open(a.addr).await;
        fast.send(&format!(
            "{method} {nar} HTTP/1.1\r\nHost: t\r\n{extra}\r\n"
        ))
        .await;
        let fast = fast.read(head_only).await;
        assert_eq!(a.metric(ZERO_COPY).await, before + 1, "{method} {extra}");
        // An empty chunked body: hyper takes the connection and answers the same request.
        let mut slow = Raw::open(a.addr).await;
        slow.send(&format!(
            "{method} {nar} HTTP/1.1\r\nHost: t\r\n{extra}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ))
        .await;
        let slow = slow.read(head_only).await;
        assert_eq!(a.metric(ZERO_COPY).await, before + 1, "hyper answered");
        assert_eq!(fast.dateless(), slow.dateless(), "{method} {extra}");
        assert!(fast.body == slow.body);
        assert!(head_only || fast.status() == 206 || fast.body == expected);
    }
    a.stop().await;
}

/// A connection with a 4 KiB receive buffer that asks for `path` and does not read yet.
async fn unread(to: SocketAddr, path: &str) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    let mut c = s.connect(to).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_gone_mid_file_and_a_stalled_reader_end_cleanly() {
    let f = fixture().await;
    let (cache, path) = big_path_cache(f, "zero-copy", false).await;
    let up = Upstream::start(&cache).await;
    let work = tempfile::tempdir().unwrap();
    let a = Appliance::start(&work.path().join("c"), &[up.url()], &f.public_key, |s| {
        s.send_timeout = Some("1s".into());
    })
    .await;
    let ni = std::fs::read_to_string(cache.join(format!("{}.narinfo", Fixture::hash(&path))));
    let url = ni
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let nar = format!("/{url}");
    let expected = std::fs::read(cache.join(&url)).unwrap();
    assert_eq!(
        get(
            &format!("{}/{}.narinfo", a.url(), Fixture::hash(&path)),
            &[]
        )
        .await
        .status,
        200
    );
    assert!(get(&format!("{}{nar}", a.url()), &[]).await.bytes == expected[..]);
    let before = a.metric(ZERO_COPY).await;

    // Gone after a few KB: its response ends with an error, nothing else notices.
    let mut gone = unread(a.addr, &nar).await;
    let mut some = [0u8; 4096];
    gone.read_exact(&mut some).await.unwrap();
    drop(gone);
    // Stalled: accepts nothing more once the buffers are full; dropped after the timeout.
    let mut stalled = unread(a.addr, &nar).await;
    let mut c = Raw::open(a.addr).await;
    for _ in 0..3 {
        assert!(
            c.get(&nar, "").await.body == expected,
            "others are served meanwhile"
        );
    }
    wait_until(Duration::from_secs(10), "a send timeout", || async {
        a.metric("nixgate_send_timeouts_total").await >= 1
    })
    .await;
    let mut sink = vec![0u8; 1 << 20];
    let mut got = 0usize;
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stalled connection was closed");
    assert!(
        got < expected.len(),
        "the stalled reader did not get the whole file"
    );
    assert!(
        c.get(&nar, "").await.body == expected,
        "the keep-alive connection still serves"
    );
    assert_eq!(a.metric(ZERO_COPY).await - before, 6);
    assert_eq!(
        a.metric("nixgate_client_connections{slot=\"regular\"}")
            .await,
        2,
        "only the keep-alive connection and the metrics request's own are open"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nix_copy_of_a_cached_closure_takes_the_zero_copy_path() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, a) = holding_appliance(f, work.path(), &[&f.top], |_| {}).await;
    let mut paths: Vec<&str> = f.blobs.iter().map(String::as_str).collect();
    paths.push(&f.top);
    assert_ok(&nix_copy_paths(&a.url(), &f.public_key, &paths, &work.path().join("w")).await);
    let before = a.metric(ZERO_COPY).await;
    let out = nix_copy_paths(&a.url(), &f.public_key, &paths, &work.path().join("c")).await;
    assert_ok(&out);
    for p in paths.iter().chain([&f.dep.as_str()]) {
        assert!(substituted(&work.path().join("c"), p), "{p}");
    }
    // top, dep and the five blobs: every NAR of the closure left by sendfile.
    assert!(a.metric(ZERO_COPY).await - before >= 7);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_closes_idle_connections_and_finishes_a_zero_copy_response() {
    let f = fixture().await;
    let (cache, path) = big_path_cache(f, "zero-copy", false).await;
    let up = Upstream::start(&cache).await;
    let work = tempfile::tempdir().unwrap();
    let a = Appliance::start(&work.path().join("c"), &[up.url()], &f.public_key, |_| {}).await;
    let ni = std::fs::read_to_string(cache.join(format!("{}.narinfo", Fixture::hash(&path))));
    let url = ni
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let expected = std::fs::read(cache.join(&url)).unwrap();
    assert!(get(&format!("{}/{url}", a.url()), &[]).await.bytes == expected[..]);

    let mut idle = Raw::open(a.addr).await;
    assert_eq!(idle.get("/nix-cache-info", "").await.status(), 200);
    let mut busy = unread(a.addr, &format!("/{url}")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.shutdown.cancel();
    // The idle keep-alive connection is closed at once.
    let mut b = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(2), idle.s.read(&mut b)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection still open"
    );
    // The response under way is finished, then its connection closes.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), busy.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the response under way did not end");
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(
        got[end..] == expected[..],
        "the response under way was cut short"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_1_0_and_connection_close_keep_hypers_keep_alive_rules() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, a, nar, expected) = warm(f, work.path(), |_| {}).await;
    let before = a.metric(ZERO_COPY).await;
    // HTTP/1.0 asking for keep-alive: hyper answers (as 1.0, keep-alive) and the loop goes on.
    let mut c = Raw::open(a.addr).await;
    c.send(&format!(
        "GET {nar} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    ))
    .await;
    let old = c.read(false).await;
    assert!(old.head.starts_with("HTTP/1.0 200") && old.body == expected);
    assert_eq!(old.header("connection"), Some("keep-alive"));
    assert!(
        c.get(&nar, "").await.body == expected,
        "zero-copy after hyper"
    );
    // `Connection: close` (and plain HTTP/1.0): answered by hyper, then the connection ends.
    for req in [
        format!("GET {nar} HTTP/1.1\r\nConnection: close\r\n\r\n"),
        format!("GET {nar} HTTP/1.0\r\n\r\n"),
    ] {
        let mut c = Raw::open(a.addr).await;
        c.send(&req).await;
        assert!(c.read(false).await.body == expected);
        let mut b = [0u8; 1];
        let end = tokio::time::timeout(Duration::from_secs(2), c.s.read(&mut b)).await;
        assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "{req}: still open");
    }
    assert_eq!(a.metric(ZERO_COPY).await - before, 1);
    a.stop().await;
}
