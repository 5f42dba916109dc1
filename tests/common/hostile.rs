//! A hostile server for trust tests: a peer, a fleet member (it sends `X-Nixgate-Id` on
//! `/nix-cache-info`, so appliances take it for one) or an internal service. It serves the
//! bodies a test gives it, by path, optionally drip-fed (one byte, then a pause), and counts
//! every request and the `Authorization` headers it received.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// How one path is answered.
#[derive(Clone)]
pub struct Reply {
    pub body: Bytes,
    /// A pause after each byte of the body (headers go out at once, with the full length).
    pub drip: Option<Duration>,
    /// The `Content-Length` announced, when it lies (the body's own length otherwise).
    pub length: Option<u64>,
}

/// What the server has seen.
#[derive(Default)]
pub struct Seen {
    /// Requests by path (without the leading `/`).
    pub requests: HashMap<String, u64>,
    /// `Authorization` header values received.
    pub authorizations: Vec<String>,
}

/// A running hostile server; stopped when dropped.
pub struct Hostile {
    pub addr: SocketAddr,
    pub replies: Arc<Mutex<HashMap<String, Reply>>>,
    pub seen: Arc<Mutex<Seen>>,
    /// What it claims to serve runners as (`X-Nixgate-Serves` on `/nix-cache-info`).
    pub serves: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Hostile {
    /// Starts on 127.0.0.1:0; with `member_id`, it claims to be a fleet member with that id.
    pub async fn start(member_id: Option<&str>) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h = Hostile {
            addr: listener.local_addr().unwrap(),
            replies: Default::default(),
            seen: Default::default(),
            serves: Default::default(),
            stop: CancellationToken::new(),
        };
        let (replies, seen, stop) = (h.replies.clone(), h.seen.clone(), h.stop.clone());
        let serves = h.serves.clone();
        let id = member_id.map(str::to_owned);
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => r.unwrap().0,
                };
                let (replies, seen, id) = (replies.clone(), seen.clone(), id.clone());
                let (stop, serves) = (stop.clone(), serves.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let serves = serves.lock().unwrap().clone();
                        let answer = answer(&req, &replies, &seen, id.as_deref(), serves);
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    tokio::select! { _ = stop.cancelled() => {}, _ = conn => {} }
                });
            }
        });
        h
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `body` at `path` (no leading `/`), drip-fed when `drip` is set.
    pub fn serve(&self, path: &str, body: impl Into<Bytes>, drip: Option<Duration>) {
        let reply = Reply {
            body: body.into(),
            drip,
            length: None,
        };
        self.replies.lock().unwrap().insert(path.to_owned(), reply);
    }

    /// Serves `body` at `path` announcing `length` bytes (a lie), then closes.
    pub fn serve_announcing(&self, path: &str, body: impl Into<Bytes>, length: u64) {
        let reply = Reply {
            body: body.into(),
            drip: None,
            length: Some(length),
        };
        self.replies.lock().unwrap().insert(path.to_owned(), reply);
    }

    /// Claims to serve runners as `what` (`zstd`), as an appliance of this version does.
    pub fn advertise_serves(&self, what: &str) {
        *self.serves.lock().unwrap() = Some(what.to_owned());
    }

    /// Requests for `path` so far.
    pub fn count(&self, path: &str) -> u64 {
        let seen = self.seen.lock().unwrap();
        seen.requests.get(path).copied().unwrap_or(0)
    }

    /// Every request so far.
    pub fn total(&self) -> u64 {
        self.seen.lock().unwrap().requests.values().sum()
    }
}

fn answer(
    req: &hyper::Request<hyper::body::Incoming>,
    replies: &Mutex<HashMap<String, Reply>>,
    seen: &Mutex<Seen>,
    id: Option<&str>,
    serves: Option<String>,
) -> hyper::Response<TestBody> {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    {
        let mut seen = seen.lock().unwrap();
        *seen.requests.entry(path.clone()).or_default() += 1;
        if let Some(a) = req.headers().get("authorization") {
            seen.authorizations
                .push(String::from_utf8_lossy(a.as_bytes()).into_owned());
        }
    }
    let b = hyper::Response::builder();
    if path == "nix-cache-info" {
        let mut b = b.header("content-type", "text/x-nix-cache-info");
        if let Some(id) = id {
            b = b.header("x-nixgate-id", id);
        }
        if let Some(serves) = serves {
            b = b.header("x-nixgate-serves", serves);
        }
        let info = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";
        return b.body(Full::new(Bytes::from(info)).boxed()).unwrap();
    }
    let Some(reply) = replies.lock().unwrap().get(&path).cloned() else {
        return b.status(404).body(Full::new(Bytes::new()).boxed()).unwrap();
    };
    let b = b.header(
        "content-length",
        reply.length.unwrap_or(reply.body.len() as u64),
    );
    if reply.length.is_some() {
        // The announced length is a lie: the connection ends short of it (a stream body, so
        // that hyper does not check the header against a known length).
        let first = futures_util::stream::iter([Ok(Frame::data(reply.body))]);
        let then_end = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(Frame::data(Bytes::new()))
        });
        let frames = futures_util::StreamExt::chain(first, then_end);
        return b.body(BodyExt::boxed(StreamBody::new(frames))).unwrap();
    }
    let Some(pause) = reply.drip else {
        return b.body(Full::new(reply.body).boxed()).unwrap();
    };
    let body = reply.body;
    let s = futures_util::stream::unfold(0usize, move |pos| {
        let body = body.clone();
        async move {
            if pos >= body.len() {
                return None;
            }
            if pos > 0 {
                tokio::time::sleep(pause).await;
            }
            Some((Ok(Frame::data(body.slice(pos..pos + 1))), pos + 1))
        }
    });
    b.body(BodyExt::boxed(StreamBody::new(s))).unwrap()
}

/// A fleet member id (32 hex digits) that, in a fleet of it and `own`, owns every key in
/// `owns` and none in `not`: asked of the ring itself (deterministic, no chance). A member
/// that does not own a key is `own`'s successor for it.
pub fn member_id(own: &str, owns: &[&str], not: &[&str]) -> String {
    let owner = |key: &str, id: &String| {
        let members = [(id.clone(), ())];
        !nixgate::peers::fleet::owners(key, own, &members).is_empty()
    };
    (0u32..)
        .map(|i| format!("{i:032x}"))
        .find(|id| {
            id != own && owns.iter().all(|k| owner(k, id)) && !not.iter().any(|k| owner(k, id))
        })
        .expect("some id has that share of the keys")
}

/// An appliance with the fixed id `own` in front of `upstream`, with `member` as its one
/// configured peer (a fleet member), returned once a probe learned the member's id.
pub async fn with_member(
    dir: &std::path::Path,
    upstream: &str,
    key: &str,
    member: &Hostile,
    own: &str,
    extra: impl FnOnce(&mut nixgate::config::ServeArgs),
) -> super::Appliance {
    let url = member.url();
    let a = super::Appliance::options(dir, key)
        .upstream(upstream)
        .peer_id(own)
        .with(|s| s.peers = Some(vec![url]))
        .with(extra)
        .start()
        .await;
    super::wait_until(Duration::from_secs(5), "the member's id", || async {
        super::peer_rows(&a).await.iter().any(|p| p.id.is_some())
    })
    .await;
    a
}
