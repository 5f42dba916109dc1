//! Test upstreams: an in-process binary cache over a directory that counts requests and can be
//! stopped, taken down and back, throttled, delayed, made to fail with 500, or made to serve replaced bodies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::fixture::Fixture;

/// An upstream binary cache served from a directory.
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<HashMap<String, u64>>>,
    pub total: Arc<AtomicU64>,
    /// Bytes per second for NAR bodies (0: unlimited).
    pub rate: Arc<AtomicU64>,
    /// Replacement bodies by path.
    pub overrides: Arc<Mutex<HashMap<String, Bytes>>>,
    pub fail_5xx: Arc<AtomicBool>,
    /// Milliseconds before the response headers of a `nar/` request (a slow first byte).
    pub nar_delay_ms: Arc<AtomicU64>,
    /// When not 0: the next `nar/` body breaks off (connection closed) after this many bytes.
    pub cut_next_nar_at: Arc<AtomicU64>,
    /// Answer `Range: bytes=N-` with a 200 and the whole file (as some servers do).
    pub ignore_ranges: Arc<AtomicBool>,
    /// Requests that carried a `Range` header.
    pub ranged: Arc<AtomicU64>,
    /// Down: each connection is closed unanswered (the socket stays bound, so the upstream
    /// comes back on the same address with no port race).
    pub down: Arc<AtomicBool>,
    stop: CancellationToken,
}

/// How one response is shaped: the test's knobs read at request time.
#[derive(Clone, Copy, Default)]
struct Shape {
    fail: bool,
    rate: u64,
    /// Start of the requested range (`Range: bytes=N-`), if honoured.
    from: Option<usize>,
    /// Break off after this many body bytes.
    cut: Option<usize>,
}

impl Upstream {
    pub async fn start(root: &Path) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream {
            addr: listener.local_addr().unwrap(),
            requests: Default::default(),
            total: Default::default(),
            rate: Default::default(),
            overrides: Default::default(),
            fail_5xx: Default::default(),
            nar_delay_ms: Default::default(),
            cut_next_nar_at: Default::default(),
            ignore_ranges: Default::default(),
            ranged: Default::default(),
            down: Default::default(),
            stop: CancellationToken::new(),
        };
        let (root, reqs, total, rate, ov, fail, stop) = (
            root.to_owned(),
            up.requests.clone(),
            up.total.clone(),
            up.rate.clone(),
            up.overrides.clone(),
            up.fail_5xx.clone(),
            up.stop.clone(),
        );
        let delay = up.nar_delay_ms.clone();
        let knobs = (
            up.cut_next_nar_at.clone(),
            up.ignore_ranges.clone(),
            up.ranged.clone(),
        );
        let down = up.down.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! { _ = stop.cancelled() => return, r = listener.accept() => r.unwrap().0 };
                if down.load(Ordering::SeqCst) {
                    continue;
                }
                let (root, reqs, total, rate, ov, fail, stop) = (
                    root.clone(),
                    reqs.clone(),
                    total.clone(),
                    rate.clone(),
                    ov.clone(),
                    fail.clone(),
                    stop.clone(),
                );
                let delay = delay.clone();
                let knobs = knobs.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let path = req.uri().path().trim_start_matches('/').to_owned();
                            *reqs.lock().unwrap().entry(path.clone()).or_default() += 1;
                            total.fetch_add(1, Ordering::SeqCst);
                            let body =
                                ov.lock().unwrap().get(&path).cloned().or_else(|| {
                                    std::fs::read(root.join(&path)).ok().map(Bytes::from)
                                });
                            let nar = path.starts_with("nar/");
                            let shape = shape(&req, nar, &fail, &rate, &knobs);
                            let wait = if nar { delay.load(Ordering::SeqCst) } else { 0 };
                            async move {
                                tokio::time::sleep(Duration::from_millis(wait)).await;
                                Ok::<_, std::convert::Infallible>(respond(shape, body))
                            }
                        },
                    );
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    tokio::select! { _ = stop.cancelled() => {}, _ = conn => {} }
                });
            }
        });
        up
    }

    /// Stops serving: the port refuses connections and open connections are closed.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self, path: &str) -> u64 {
        self.requests
            .lock()
            .unwrap()
            .get(path.trim_start_matches('/'))
            .copied()
            .unwrap_or(0)
    }

    /// Requests for NAR files (`nar/…`) so far. Narinfo lookups are not counted: nixgate may
    /// hedge a slow bucket's narinfo with the upstreams (docs/OBJECT_STORE.md).
    pub fn nar_requests(&self) -> u64 {
        let reqs = self.requests.lock().unwrap();
        let nars = reqs.iter().filter(|(p, _)| p.starts_with("nar/"));
        nars.map(|(_, n)| n).sum()
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

type Knobs = (Arc<AtomicU64>, Arc<AtomicBool>, Arc<AtomicU64>);

/// Reads the knobs for one request (taking a pending cut, for `nar/` bodies).
fn shape(
    req: &hyper::Request<hyper::body::Incoming>,
    nar: bool,
    fail: &AtomicBool,
    rate: &AtomicU64,
    (cut, ignore_ranges, ranged): &Knobs,
) -> Shape {
    let range = req.headers().get("range").and_then(|v| v.to_str().ok());
    let from = range.and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok());
    if range.is_some() {
        ranged.fetch_add(1, Ordering::SeqCst);
    }
    let cut = if nar {
        cut.swap(0, Ordering::SeqCst)
    } else {
        0
    };
    Shape {
        fail: fail.load(Ordering::SeqCst),
        rate: rate.load(Ordering::SeqCst),
        from: from.filter(|_| !ignore_ranges.load(Ordering::SeqCst)),
        cut: (cut > 0).then_some(cut as usize),
    }
}

fn respond(shape: Shape, body: Option<Bytes>) -> hyper::Response<TestBody> {
    let Shape {
        fail,
        rate,
        from,
        cut,
    } = shape;
    let mut b = hyper::Response::builder();
    if fail {
        return b
            .status(500)
            .body(Full::new(Bytes::from("boom")).boxed())
            .unwrap();
    }
    let Some(body) = body else {
        return b.status(404).body(Full::new(Bytes::new()).boxed()).unwrap();
    };
    let mut body = body;
    if let Some(from) = from.filter(|f| *f < body.len()) {
        let range = format!("bytes {from}-{}/{}", body.len() - 1, body.len());
        b = b.status(206).header("content-range", range);
        body = body.slice(from..);
    }
    let b = b.header("content-length", body.len());
    // A cut promises the length and sends fewer bytes: hyper closes the connection mid-body.
    let body = match cut {
        Some(cut) => body.slice(..cut.min(body.len() - 1)),
        None if rate == 0 => return b.body(Full::new(body).boxed()).unwrap(),
        None => body,
    };
    let rate = if rate == 0 { u64::MAX / 2 } else { rate };
    let chunk = 16 * 1024;
    let delay = Duration::from_secs_f64(chunk as f64 / rate as f64);
    let s = futures_util::stream::unfold(0usize, move |pos| {
        let body = body.clone();
        async move {
            if pos >= body.len() {
                return None;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let end = (pos + chunk).min(body.len());
            Some((Ok(Frame::data(body.slice(pos..end))), end))
        }
    });
    b.body(BodyExt::boxed(StreamBody::new(s))).unwrap()
}

/// An upstream over the fixture cache that answers every request with 500.
pub async fn failing_upstream(f: &Fixture) -> Upstream {
    let up = Upstream::start(&f.cache).await;
    up.fail_5xx.store(true, Ordering::SeqCst);
    up
}
