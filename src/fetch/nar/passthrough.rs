//! NARs larger than the whole cache: streamed from the first upstream to the clients that
//! asked, verified on the way, never stored. The last chunk is held back until the file
//! verified, so a bad file never reaches a client complete.
//!
//! Concurrent requests share one upstream GET: clients that ask before its first chunk went
//! out join it (each gets every chunk, the slowest paces the rest, four chunks of buffer
//! each); a client that asks later starts its own, since the bytes already sent are gone.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::super::verify::VerifyError;
use super::super::{FetchError, Fetcher, Origin};
use super::plan::{is_nar_mismatch, Checks, Plan};
use super::unproven::Unproven;
use super::{NarSource, WRITE_BATCH};
use crate::metrics::Source;
use crate::upstream::UpstreamBody;

type Chunk = Result<Bytes, FetchError>;

/// How long a shared passthrough waits for one client to take a chunk before dropping it, so
/// a client that stops reading cannot stall the others.
const CLIENT_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// A shared passthrough: who still may join, and how opening the upstream went.
#[derive(Clone)]
pub struct Hub {
    /// The clients' channels; `None` once the first chunk went out (no more joiners).
    joiners: Arc<Mutex<Option<Vec<mpsc::Sender<Chunk>>>>>,
    /// `Some` once the upstream answered (or every one failed).
    opened: watch::Receiver<Option<Result<(), FetchError>>>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<mpsc::Sender<Chunk>>>> {
        self.joiners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a client; false when it is too late to join.
    fn join(&self, tx: mpsc::Sender<Chunk>) -> bool {
        match self.lock().as_mut() {
            Some(list) => {
                list.push(tx);
                true
            }
            None => false,
        }
    }

    /// Closes the hub to joiners; the clients that joined.
    fn close(&self) -> Vec<mpsc::Sender<Chunk>> {
        self.lock().take().unwrap_or_default()
    }
}

/// The clients of one passthrough once it is closed to joiners.
struct Fanout {
    hub: Hub,
    clients: Option<Vec<mpsc::Sender<Chunk>>>,
}

impl Fanout {
    /// Sends `item` to every client still there; false when none is left.
    async fn send(&mut self, item: Chunk) -> bool {
        let clients = self.clients.get_or_insert_with(|| self.hub.close());
        let mut kept = Vec::with_capacity(clients.len());
        for c in clients.drain(..) {
            // A client that stops reading is dropped (its transfer aborts), not waited for.
            let sent = tokio::time::timeout(CLIENT_STALL, c.send(item.clone())).await;
            if matches!(sent, Ok(Ok(()))) {
                kept.push(c);
            }
        }
        *clients = kept;
        !clients.is_empty()
    }
}

impl Fetcher {
    fn count_rejected<T>(&self, r: Result<T, VerifyError>) -> Result<T, FetchError> {
        r.map_err(|e| {
            self.metrics.verification_failure(Source::Upstream);
            self.refused(e)
        })
    }

    /// Joins the passthrough of this NAR that has not sent anything yet, or starts one.
    pub(super) async fn passthrough(self: &Arc<Self>, plan: Plan) -> Result<NarSource, FetchError> {
        let (tx, rx) = mpsc::channel(4);
        let (fh, ext, size) = (plan.fh, plan.ext, plan.size);
        let mut mine = Some(tx);
        let (hub, joined) = self
            .passthroughs
            .join_or_start(fh, || {
                let (opened_tx, opened) = watch::channel(None);
                let joiners = Arc::new(Mutex::new(Some(vec![mine.take().expect("once")])));
                let hub = Hub { joiners, opened };
                let this = self.clone();
                let task = this.relay_shared(plan, hub.clone(), opened_tx);
                Ok::<_, std::convert::Infallible>((hub, task))
            })
            .unwrap_or_else(|e| match e {});
        if let Some(tx) = mine {
            if !hub.join(tx) {
                return self.passthrough_alone(fh, ext).await; // too late to share
            }
        }
        if joined {
            self.metrics.coalesced();
        }
        let mut opened = hub.opened.clone();
        let outcome = opened.wait_for(Option::is_some).await.map(|o| o.clone());
        match outcome {
            Ok(Some(Err(e))) => Err(e),
            Ok(_) => Ok(NarSource::Passthrough { chunks: rx, size }),
            Err(_) => Err(FetchError::Storage("passthrough task ended".into())),
        }
    }

    /// The upstream's file `<fh>.nar<ext>` streamed through uncached (joined or started as
    /// [`Self::passthrough`]), for a live transcode of it (`fetch/live.rs`).
    pub(in crate::fetch) async fn stream_upstream(
        self: &Arc<Self>,
        fh: crate::nix::hash::Sha256,
        ext: &'static str,
    ) -> Result<mpsc::Receiver<Chunk>, FetchError> {
        let plan = self.plan(fh, ext, false).await;
        self.checkable(&plan)?;
        match self.passthrough(plan).await? {
            NarSource::Passthrough { chunks, .. } => Ok(chunks),
            _ => Err(FetchError::Storage("not a passthrough".into())),
        }
    }

    /// A passthrough of its own for a client that came too late to join one.
    async fn passthrough_alone(
        self: &Arc<Self>,
        fh: crate::nix::hash::Sha256,
        ext: &'static str,
    ) -> Result<NarSource, FetchError> {
        let plan = self.plan(fh, ext, true).await;
        let size = plan.size;
        let body = self.open_upstream(&plan, http::Method::GET).await?;
        let (tx, rx) = mpsc::channel(4);
        let (_, opened) = watch::channel(None);
        let hub = Hub {
            joiners: Arc::new(Mutex::new(Some(vec![tx]))),
            opened,
        };
        let this = self.clone();
        tokio::spawn(async move { this.relay(plan, body, hub).await });
        Ok(NarSource::Passthrough { chunks: rx, size })
    }

    /// Opens the first upstream that has the NAR, says how that went, and relays it.
    async fn relay_shared(
        self: Arc<Self>,
        plan: Plan,
        hub: Hub,
        opened: watch::Sender<Option<Result<(), FetchError>>>,
    ) {
        match self.open_upstream(&plan, http::Method::GET).await {
            Ok(body) => {
                opened.send_replace(Some(Ok(())));
                self.relay(plan, body, hub).await;
            }
            Err(e) => {
                hub.close();
                opened.send_replace(Some(Err(e)));
            }
        }
    }

    /// Copies `body` to the hub's clients, one chunk behind, and sends the last one only once
    /// verified; nothing before the bytes showed a NAR header.
    async fn relay(&self, plan: Plan, mut body: UpstreamBody, hub: Hub) {
        let mut out = Fanout { hub, clients: None };
        let mut verifier = match plan.nar_check() {
            Ok(nar) => Checks::new(&plan, nar),
            Err(e) => {
                out.send(Err(e.into())).await;
                return;
            }
        };
        let mut unproven = Unproven::default();
        let mut held: Option<Bytes> = None;
        let mut resumes = 0;
        let end = loop {
            match body.batch(WRITE_BATCH).await {
                Ok(Some(c)) => {
                    let checked = verifier.update(&c).and_then(|()| {
                        unproven.release(c, verifier.written(), verifier.header_seen())
                    });
                    let released = match self.count_rejected(checked) {
                        Ok(r) => r,
                        Err(e) => break Err(e),
                    };
                    for (chunk, _) in released {
                        if let Some(prev) = held.replace(chunk) {
                            if !out.send(Ok(prev)).await {
                                return; // every client went away; nobody else wants it
                            }
                        }
                    }
                }
                Ok(None) => break self.count_rejected(verifier.finish().map(|(n, _)| n)),
                Err(e) => {
                    let at = verifier.written();
                    match self.reopen(&plan, at, &mut resumes, &e).await {
                        Some(rest) => body = rest,
                        None => break Err(FetchError::unavailable(Origin::Upstreams, e)),
                    }
                }
            }
        };
        let last = match end {
            Ok(n) => {
                self.metrics.fetched(Source::Upstream, n);
                for (chunk, _) in unproven.release_all() {
                    if let Some(prev) = held.replace(chunk) {
                        if !out.send(Ok(prev)).await {
                            return;
                        }
                    }
                }
                held.map(Ok)
            }
            Err(e) => {
                if let (true, Some(h)) = (is_nar_mismatch(&e), plan.narinfo) {
                    self.narinfo_refuted(h, &e.to_string());
                }
                Some(Err(e))
            }
        };
        if let Some(last) = last {
            out.send(last).await;
        }
    }
}
