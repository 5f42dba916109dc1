//! `nixgate warm`: makes an appliance fetch and cache the closures of store paths before
//! runners ask for them. It walks each closure through the appliance's narinfos (their
//! `References:`), reads every NAR through the appliance (which caches what it serves),
//! a bounded number at once, and finally asks the appliance with `Cache-Control:
//! only-if-cached` whether it holds every narinfo and NAR: success means it does.

mod client;
mod report;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};

use crate::config::WarmArgs;
use crate::nix::narinfo::NarInfo;
use crate::nix::store_path::StorePathBase;
use crate::units::human_bytes;
pub use client::{ApplianceClient, WarmError};
use report::Report;

/// What is known about one path of the closure.
enum State {
    /// Asked, no answer yet.
    Pending,
    /// The appliance had no narinfo (or failed to give one): why.
    NoNarinfo(String),
    /// Its NAR's URL, relative to the appliance, its size, and why reading it failed.
    Nar {
        url: String,
        size: u64,
        failed: Option<String>,
    },
}

/// A message from a path's task to the walk.
enum Msg {
    Narinfo(StorePathBase, Result<Option<Box<NarInfo>>, WarmError>),
    Nar(StorePathBase, Result<u64, WarmError>, Duration),
}

/// Runs `nixgate warm`: `Ok` only when the whole closure is cached by the appliance.
pub async fn run(args: &WarmArgs) -> anyhow::Result<()> {
    let roots = roots(args)?;
    if roots.is_empty() {
        anyhow::bail!("no store paths given (as arguments or with --from-file)");
    }
    let client = Arc::new(ApplianceClient::new(args.url.clone()));
    let store_dir = client
        .store_dir()
        .await
        .map_err(|e| anyhow::anyhow!("{}nix-cache-info: {e}", client.base()))?;
    let mut report = Report::new(!std::io::stdout().is_terminal());
    let full = |b: &StorePathBase| format!("{store_dir}/{b}");
    let paths: Vec<String> = roots.iter().map(full).collect();
    report.event(
        "start",
        json!({"appliance": client.base().as_str(), "roots": paths}),
    );
    let states = walk(&client, &store_dir, roots, args.jobs.into(), &mut report).await;
    let cap = client.cache_cap().await;
    let missing: Vec<(String, String)> = verify(&client, &states, cap)
        .await
        .into_iter()
        .map(|(p, why)| (full(&p), why))
        .collect();
    for (p, why) in &missing {
        report.event("missing", json!({"path": p, "why": why}));
    }
    let bytes = report.bytes.load(std::sync::atomic::Ordering::Relaxed);
    let paths: Vec<&String> = missing.iter().map(|(p, _)| p).collect();
    let why: serde_json::Map<String, serde_json::Value> =
        missing.iter().map(|(p, w)| (p.clone(), json!(w))).collect();
    report.event(
        "done",
        json!({"paths": states.len(), "cached": states.len() - missing.len(),
               "missing": paths, "why": why, "bytes": bytes, "seconds": report.seconds()}),
    );
    report.end_line();
    if !missing.is_empty() {
        let lines: Vec<String> = missing.iter().map(|(p, w)| format!("{p}: {w}")).collect();
        anyhow::bail!(
            "{} of {} paths are not cached by {}:\n  {}",
            missing.len(),
            states.len(),
            client.base(),
            lines.join("\n  ")
        );
    }
    Ok(())
}

/// The root paths: the arguments, then the lines of `--from-file`.
fn roots(args: &WarmArgs) -> anyhow::Result<Vec<StorePathBase>> {
    let mut given = args.paths.clone();
    if let Some(f) = &args.from_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("--from-file {}: {e}", f.display()))?;
        given.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    given
        .iter()
        .map(|p| {
            let base = p.trim_end_matches('/').rsplit('/').next().unwrap_or(p);
            base.parse()
                .map_err(|e| anyhow::anyhow!("{p:?} is not a store path: {e}"))
        })
        .collect()
}

/// Walks the closure of `roots`, at most `jobs` paths at once, reading every NAR.
async fn walk(
    client: &Arc<ApplianceClient>,
    store_dir: &str,
    roots: Vec<StorePathBase>,
    jobs: usize,
    report: &mut Report,
) -> BTreeMap<StorePathBase, State> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(jobs));
    let mut states = BTreeMap::new();
    let mut running = 0usize;
    let progress = report.bytes.clone();
    let spawn = |p: StorePathBase, states: &mut BTreeMap<StorePathBase, State>| {
        // A path already known (a root that is also a reference) keeps its state.
        if let std::collections::btree_map::Entry::Vacant(e) = states.entry(p.clone()) {
            e.insert(State::Pending);
            let job = Job {
                client: client.clone(),
                store_dir: store_dir.to_owned(),
                slots: slots.clone(),
                tx: tx.clone(),
                progress: progress.clone(),
            };
            tokio::spawn(job.run(p));
            return 1;
        }
        0
    };
    for r in roots {
        running += spawn(r, &mut states);
    }
    report.total = states.len();
    let full = |b: &StorePathBase| format!("{store_dir}/{b}");
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while running > 0 {
        let msg = tokio::select! {
            m = rx.recv() => m.expect("a sender lives while jobs run"),
            _ = tick.tick() => { report.progress(); continue; }
        };
        report.total = states.len();
        match msg {
            Msg::Narinfo(p, Ok(Some(info))) => {
                report.expected_bytes += info.file_size.unwrap_or(info.nar_size);
                report.event(
                    "narinfo",
                    json!({"path": full(&p), "references": info.references.len(),
                    "nar_size": info.nar_size, "file_size": info.file_size}),
                );
                for r in &info.references {
                    running += spawn(r.clone(), &mut states);
                }
                report.total = states.len();
                let size = info.file_size.unwrap_or(info.nar_size);
                let (url, failed) = (info.url, None);
                states.insert(p, State::Nar { url, size, failed });
            }
            Msg::Narinfo(p, other) => {
                running -= 1;
                report.done += 1;
                let error = other.map_or_else(|e| e.to_string(), |_| "not found (404)".into());
                report.event(
                    "error",
                    json!({"path": full(&p), "stage": "narinfo", "error": error}),
                );
                states.insert(p, State::NoNarinfo(why_not(&error)));
            }
            Msg::Nar(p, r, took) => {
                running -= 1;
                if let (Err(e), Some(State::Nar { failed, .. })) = (&r, states.get_mut(&p)) {
                    *failed = Some(why_not(&e.to_string()));
                }
                nar_done(report, full(&p), r, took);
            }
        }
    }
    states
}

/// Reports a finished NAR read (its bytes, or why it failed).
fn nar_done(report: &mut Report, path: String, r: Result<u64, WarmError>, took: Duration) {
    report.done += 1;
    match r {
        Ok(bytes) => report.event(
            "nar",
            json!({"path": path, "bytes": bytes, "seconds": took.as_secs_f64()}),
        ),
        Err(error) => report.event(
            "error",
            json!({"path": path, "stage": "nar", "error": error.to_string()}),
        ),
    }
}

/// One path's work: its narinfo, then its NAR, holding one of the `--jobs` slots.
struct Job {
    client: Arc<ApplianceClient>,
    store_dir: String,
    slots: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Msg>,
    progress: Arc<std::sync::atomic::AtomicU64>,
}

impl Job {
    async fn run(self, p: StorePathBase) {
        let _slot = self.slots.acquire().await.expect("never closed");
        let info = match self.client.narinfo(&p.hash.to_string()).await {
            Ok(Some(text)) => NarInfo::parse(&text, &self.store_dir)
                .map(|i| Some(Box::new(i)))
                .map_err(WarmError::from),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        let url = match &info {
            Ok(Some(i)) => i.url.clone(),
            _ => return drop(self.tx.send(Msg::Narinfo(p, info))),
        };
        let _ = self.tx.send(Msg::Narinfo(p.clone(), info));
        let start = Instant::now();
        let r = self.client.nar(&url, &self.progress).await;
        let _ = self.tx.send(Msg::Nar(p, r, start.elapsed()));
    }
}

/// The paths whose narinfo or NAR the appliance does not hold (asked only-if-cached), each
/// with why. A NAR just read may still be being committed to the cache: those are asked again
/// shortly. `cap`: the appliance's cache cap, when its status said.
async fn verify(
    client: &ApplianceClient,
    states: &BTreeMap<StorePathBase, State>,
    cap: Option<u64>,
) -> Vec<(StorePathBase, String)> {
    let mut missing = Vec::new();
    for (p, state) in states {
        let (url, size, failed) = match state {
            State::Nar { url, size, failed } => (url, *size, failed),
            State::NoNarinfo(why) => {
                missing.push((p.clone(), why.clone()));
                continue;
            }
            State::Pending => {
                missing.push((p.clone(), "never answered".into()));
                continue;
            }
        };
        let narinfo = format!("{}.narinfo", p.hash);
        let mut held = false;
        for attempt in 0..10 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            held = matches!(client.cached(Method::GET, &narinfo).await, Ok(true))
                && matches!(client.cached(Method::HEAD, url).await, Ok(true));
            if held {
                break;
            }
        }
        if !held {
            let why = match (failed, cap) {
                (Some(why), _) => why.clone(),
                (None, Some(cap)) if size > cap => format!(
                    "larger than the appliance's cache cap ({} > {}): served, never kept",
                    human_bytes(size),
                    human_bytes(cap)
                ),
                (None, _) => "read in full but not kept: evicted, or the cache was full \
                              (see nixgate_cache_store_failures_total)"
                    .into(),
            };
            missing.push((p.clone(), why));
        }
    }
    missing
}

/// Why a path was not warmed, from the error of its narinfo or NAR request.
fn why_not(error: &str) -> String {
    if error.contains("404") {
        "not found upstream (404)".into()
    } else if error.contains("503") {
        "upstream unavailable (503, retried)".into()
    } else if error.contains("502") {
        "refused: the upstream's data failed verification (502)".into()
    } else {
        error.to_owned()
    }
}
