//! Soak load for `bench/soak.sh`: many concurrent keep-alive clients against one appliance.
//! `soak ADDR CACHE_DIR HITS SECONDS CLIENTS SLOW SLOW_PATH`.
//!
//! First the first HITS narinfos of CACHE_DIR (written by `gen_cache`) and their NARs are
//! fetched once, so they are hits. Then, for SECONDS, CLIENTS - SLOW well-behaved clients (16
//! source addresses 127.0.0.10-25, one keep-alive connection each, 0-200 ms think time) ask:
//! 90% a cached narinfo or NAR (a hit), 8% a path not yet cached (narinfo then NAR, fetched
//! from the upstream), 2% a narinfo the upstream does not have (404). SLOW clients (from
//! 127.0.1.1-8, 4 KiB receive buffers) ask for SLOW_PATH: half never read for 35 s (the
//! appliance should have dropped them after --send-timeout; checked, then they reconnect),
//! half read 4 KiB a second. Prints hit latency percentiles and the well-behaved clients'
//! errors.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

struct Plan {
    addr: SocketAddr,
    /// Cached request paths (narinfos and NARs).
    hits: Vec<String>,
    /// Uncached (narinfo, NAR) pairs, each asked once.
    misses: Vec<(String, String)>,
    next_miss: AtomicUsize,
    deadline: Instant,
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    errors: AtomicU64,
    slow_dropped: AtomicU64,
    slow_bytes: AtomicU64,
}

/// The (narinfo path, NAR path) of every narinfo in `dir`, in `narinfos.txt` order.
fn paths(dir: &Path) -> Vec<(String, String)> {
    let list = std::fs::read_to_string(dir.join("narinfos.txt")).unwrap();
    list.lines()
        .map(|ni| {
            let text = std::fs::read_to_string(dir.join(ni.trim_start_matches('/'))).unwrap();
            let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
            (ni.to_owned(), format!("/{url}"))
        })
        .collect()
}

async fn connect(
    addr: SocketAddr,
    src: Ipv4Addr,
    rcvbuf: Option<u32>,
) -> std::io::Result<tokio::net::TcpStream> {
    let s = TcpSocket::new_v4()?;
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n)?;
    }
    s.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    s.connect(addr).await
}

async fn client(addr: SocketAddr, src: Ipv4Addr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = connect(addr, src, None).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One GET on `s`; the status once the whole body is read.
async fn get(s: &mut SendRequest<Empty<Bytes>>, path: &str) -> anyhow::Result<u16> {
    s.ready().await?;
    let req = hyper::Request::get(path)
        .header("host", "nixgate")
        .body(Empty::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), async {
        let resp = s.send_request(req).await?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await?;
        anyhow::Ok(status)
    })
    .await??;
    Ok(resp)
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A well-behaved client; returns its hit latencies in microseconds.
async fn well_behaved(i: usize, plan: Arc<Plan>, tally: Arc<Tally>) -> Vec<u32> {
    let src = Ipv4Addr::new(127, 0, 0, 10 + (i % 16) as u8);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 0x2545_F491));
    let mut lat = Vec::new();
    let mut conn = None;
    while Instant::now() < plan.deadline {
        tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
        let s = match &mut conn {
            Some(s) => s,
            None => match client(plan.addr, src).await {
                Ok(s) => conn.insert(s),
                Err(_) => {
                    tally.errors.fetch_add(1, Relaxed);
                    continue;
                }
            },
        };
        let dice = rng.below(100);
        let started = Instant::now();
        let ok = if dice < 90 {
            let path = &plan.hits[rng.below(plan.hits.len() as u64) as usize];
            let ok = matches!(get(s, path).await, Ok(200));
            lat.push(started.elapsed().as_micros() as u32);
            ok
        } else if dice < 98 {
            let (ni, nar) = &plan.misses[plan.next_miss.fetch_add(1, Relaxed) % plan.misses.len()];
            matches!(get(s, ni).await, Ok(200)) && matches!(get(s, nar).await, Ok(200))
        } else {
            let absent = format!("/{:032}.narinfo", rng.below(u64::MAX));
            matches!(get(s, &absent).await, Ok(404))
        };
        tally.requests.fetch_add(1, Relaxed);
        if !ok {
            tally.errors.fetch_add(1, Relaxed);
            conn = None;
        }
    }
    lat
}

/// How long a stalled reader waits before checking that the appliance dropped it: the
/// default --send-timeout (30 s) and some.
const STALL_HOLD: Duration = Duration::from_secs(35);

/// Reads `c` to its end within `wait`: true when the appliance had closed it.
async fn ended(c: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    let mut buf = vec![0u8; 1 << 16];
    let drain = async {
        while let Ok(n) = c.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(wait, drain).await.is_ok()
}

/// A slow reader: asks for `path` and reads nothing for [`STALL_HOLD`] (`stall`; then checks
/// that the appliance dropped it) or 4 KiB a second, again and again until the deadline.
async fn slow(i: usize, path: Arc<String>, plan: Arc<Plan>, tally: Arc<Tally>) {
    let src = Ipv4Addr::new(127, 0, 1, 1 + (i % 8) as u8);
    let stall = i.is_multiple_of(2);
    let req = format!("GET {path} HTTP/1.1\r\nHost: nixgate\r\n\r\n");
    while Instant::now() < plan.deadline {
        let Ok(mut c) = connect(plan.addr, src, Some(4096)).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        if c.write_all(req.as_bytes()).await.is_err() {
            continue;
        }
        if stall {
            let left = plan.deadline.saturating_duration_since(Instant::now());
            if left < STALL_HOLD {
                tokio::time::sleep(left).await;
                return;
            }
            tokio::time::sleep(STALL_HOLD).await;
            if ended(&mut c, Duration::from_secs(3)).await {
                tally.slow_dropped.fetch_add(1, Relaxed);
            }
            continue;
        }
        let mut buf = vec![0u8; 4096];
        while Instant::now() < plan.deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => tally.slow_bytes.fetch_add(n as u64, Relaxed),
            };
        }
    }
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// Fetches every hit path once (64 at a time) so that they are cached.
async fn prime(addr: SocketAddr, hits: &[String]) {
    let chunks: Vec<Vec<String>> = hits
        .chunks(hits.len().div_ceil(64))
        .map(|c| c.to_vec())
        .collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                let mut s = client(addr, Ipv4Addr::LOCALHOST).await.unwrap();
                for p in c {
                    assert_eq!(get(&mut s, &p).await.unwrap(), 200, "priming {p}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = a[1].parse().unwrap();
    let all = paths(Path::new(&a[2]));
    let n_hits: usize = a[3].parse().unwrap();
    let seconds: u64 = a[4].parse().unwrap();
    let (clients, n_slow): (usize, usize) = (a[5].parse().unwrap(), a[6].parse().unwrap());
    let slow_path = Arc::new(a[7].clone());
    let hits: Vec<String> = all[..n_hits]
        .iter()
        .flat_map(|(ni, nar)| [ni.clone(), nar.clone()])
        .collect();
    let started = Instant::now();
    prime(addr, &hits).await;
    eprintln!("primed {} hit paths in {:?}", hits.len(), started.elapsed());
    let plan = Arc::new(Plan {
        addr,
        hits,
        misses: all[n_hits..].to_vec(),
        next_miss: AtomicUsize::new(0),
        deadline: Instant::now() + Duration::from_secs(seconds),
    });
    let tally = Arc::new(Tally::default());
    let slow_tasks: Vec<_> = (0..n_slow)
        .map(|i| tokio::spawn(slow(i, slow_path.clone(), plan.clone(), tally.clone())))
        .collect();
    let good: Vec<_> = (0..clients - n_slow)
        .map(|i| tokio::spawn(well_behaved(i, plan.clone(), tally.clone())))
        .collect();
    let mut lat = Vec::new();
    for t in good {
        lat.extend(t.await.unwrap());
    }
    for t in slow_tasks {
        let _ = t.await;
    }
    lat.sort_unstable();
    let req = tally.requests.load(Relaxed);
    println!(
        "well-behaved: {} clients, {req} requests ({:.0}/s), {} errors; {} paths fetched \
         from the upstream as misses (narinfo + NAR)",
        clients - n_slow,
        req as f64 / seconds as f64,
        tally.errors.load(Relaxed),
        plan.next_miss.load(Relaxed).min(plan.misses.len())
    );
    println!(
        "hit latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} hits)",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        pct(&lat, 1.0),
        lat.len()
    );
    println!(
        "slow readers: {n_slow} ({} stalled, {} at 4 KiB/s); stalled connections found \
         closed by the appliance after {STALL_HOLD:?}: {}; trickling ones read {} KiB",
        n_slow.div_ceil(2),
        n_slow / 2,
        tally.slow_dropped.load(Relaxed),
        tally.slow_bytes.load(Relaxed) >> 10
    );
}
