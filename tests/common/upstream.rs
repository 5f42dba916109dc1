//! Test upstreams: an in-process binary cache over a directory that counts requests and can be
//! stopped, throttled, delayed, made to fail with 500, or made to serve replaced bodies.

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
    stop: CancellationToken,
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
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! { _ = stop.cancelled() => return, r = listener.accept() => r.unwrap().0 };
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
                            let (fail, rate) =
                                (fail.load(Ordering::SeqCst), rate.load(Ordering::SeqCst));
                            let wait = if path.starts_with("nar/") {
                                delay.load(Ordering::SeqCst)
                            } else {
                                0
                            };
                            async move {
                                tokio::time::sleep(Duration::from_millis(wait)).await;
                                Ok::<_, std::convert::Infallible>(respond(fail, rate, body))
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
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn respond(fail: bool, rate: u64, body: Option<Bytes>) -> hyper::Response<TestBody> {
    let b = hyper::Response::builder();
    if fail {
        return b
            .status(500)
            .body(Full::new(Bytes::from("boom")).boxed())
            .unwrap();
    }
    let Some(body) = body else {
        return b.status(404).body(Full::new(Bytes::new()).boxed()).unwrap();
    };
    let b = b.header("content-length", body.len());
    if rate == 0 {
        return b.body(Full::new(body).boxed()).unwrap();
    }
    let chunk = 16 * 1024;
    let delay = Duration::from_secs_f64(chunk as f64 / rate as f64);
    let s = futures_util::stream::unfold(0usize, move |pos| {
        let body = body.clone();
        async move {
            if pos >= body.len() {
                return None;
            }
            tokio::time::sleep(delay).await;
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
