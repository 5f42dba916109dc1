//! The object store's circuit closes again without runners: a bucket that hung opened it,
//! and once the bucket answers again the background prober (a signed
//! `GET <prefix>/nix-cache-info`) is the first to reach it, closes the circuit, and the
//! runner's next miss reads from the bucket again: nothing from the upstream. No runner
//! request is ever the probe. Outages themselves: `object_store_outage.rs`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy in front of the bucket that either hangs (answers each new connection's
/// request with response headers, then nothing) or forwards; it notes the first request
/// line of every connection it forwards.
struct Switch {
    addr: SocketAddr,
    hang: Arc<AtomicBool>,
    forwarded: Arc<Mutex<Vec<String>>>,
}

impl Switch {
    /// A switch in front of `to`, hanging.
    async fn start(to: SocketAddr) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hang = Arc::new(AtomicBool::new(true));
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let (h, fw) = (hang.clone(), forwarded.clone());
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(s, to, h.clone(), fw.clone()));
            }
        });
        Switch {
            addr,
            hang,
            forwarded,
        }
    }

    /// From now on new connections are forwarded.
    fn forward(&self) {
        self.hang.store(false, Ordering::SeqCst);
    }

    /// The first request line of each connection forwarded so far, in order.
    fn forwarded(&self) -> Vec<String> {
        self.forwarded.lock().unwrap().clone()
    }
}

async fn serve(
    mut s: TcpStream,
    to: SocketAddr,
    hang: Arc<AtomicBool>,
    forwarded: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = vec![0u8; 64 << 10];
    let Ok(n) = s.read(&mut buf).await else {
        return;
    };
    if hang.load(Ordering::SeqCst) {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let _ = s.write_all(head).await;
        return std::future::pending().await;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let line = head.lines().next().unwrap_or_default().to_owned();
    forwarded.lock().unwrap().push(line);
    let mut upstream = TcpStream::connect(to).await.unwrap();
    let _ = upstream.write_all(&buf[..n]).await;
    let _ = tokio::io::copy_bidirectional(&mut s, &mut upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_circuit_closes_in_the_background_and_the_next_miss_reads_the_bucket() {
    let f = fixture().await;
    let sw = Seaweed::start().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    // Site A fills the bucket with every path.
    let a = site(
        &work.path().join("a"),
        &up,
        &f.public_key,
        sw.url(BUCKET, "rec"),
    )
    .await;
    let paths = all_paths(f);
    assert_ok(&nix_copy_paths(&a.url(), &f.public_key, &paths, &work.path().join("ra")).await);
    drained(&a, 8).await;
    a.stop().await;
    // Site B reaches the same bucket through the switch, which hangs: its circuit opens.
    let seaweed: url::Url = sw.endpoint().parse().unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], seaweed.port().unwrap()));
    let switch = Switch::start(to).await;
    let via = format!(
        "s3://{BUCKET}/rec?endpoint=http://{}&region=us-east-1",
        switch.addr
    );
    let b = site(&work.path().join("b"), &up, &f.public_key, via).await;
    let circuit = "nixgate_object_store_circuit_state";
    assert_eq!(b.metric(circuit).await, 0);
    let first = [f.blobs[0].as_str()];
    assert_ok(&nix_copy_paths(&b.url(), &f.public_key, &first, &work.path().join("r1")).await);
    let open = || async { b.metric(circuit).await == 2 };
    wait_until(Duration::from_secs(20), "the circuit to open", open).await;
    // The bucket is back: only the prober may find out.
    switch.forward();
    let closed = || async { b.metric(circuit).await == 0 };
    wait_until(Duration::from_secs(30), "the prober to close it", closed).await;
    let forwarded = switch.forwarded();
    let probe = forwarded.first().map(String::as_str).unwrap_or_default();
    assert!(
        probe.starts_with("GET /") && probe.contains("/rec/nix-cache-info?"),
        "the first request to reach the bucket again was not the probe: {forwarded:?}"
    );
    // The runner's next miss reads from the bucket: the upstream is asked nothing.
    let asked = up.total.load(Ordering::SeqCst);
    let from_upstream = "nixgate_fetched_bytes_total{source=\"upstream\"}";
    let fetched = b.metric(from_upstream).await;
    let read = "nixgate_object_store_bytes_total{direction=\"read\"}";
    let was_read = b.metric(read).await;
    let second = [f.blobs[1].as_str()];
    assert_ok(&nix_copy_paths(&b.url(), &f.public_key, &second, &work.path().join("r2")).await);
    assert_eq!(
        up.total.load(Ordering::SeqCst),
        asked,
        "the upstream was asked"
    );
    assert_eq!(b.metric(from_upstream).await, fetched);
    let now_read = b.metric(read).await;
    assert!(
        now_read >= was_read + 400_000,
        "the blob came from the bucket ({was_read} -> {now_read} bytes read)"
    );
    b.stop().await;
}
