//! NARs larger than the whole cache: streamed from the first upstream to the one client that
//! asked, verified on the way, never stored. The last chunk is held back until the file
//! verified, so a bad file never reaches the client complete.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::super::{FetchError, Fetcher};
use super::plan::{Checks, Plan};
use super::{NarSource, WRITE_BATCH};
use crate::metrics::Source;
use crate::upstream::UpstreamBody;

impl Fetcher {
    fn count_rejected<T>(&self, r: Result<T, FetchError>) -> Result<T, FetchError> {
        if r.is_err() {
            self.metrics.verification_failure(Source::Upstream);
        }
        r
    }

    /// Opens the first upstream that has the NAR and streams it through a channel.
    pub(super) async fn passthrough(self: &Arc<Self>, plan: Plan) -> Result<NarSource, FetchError> {
        let (_, body) = self.open_first(&plan).await?;
        let (tx, rx) = mpsc::channel(4);
        let size = plan.size;
        let this = self.clone();
        tokio::spawn(async move { this.relay(plan, body, tx).await });
        Ok(NarSource::Passthrough { chunks: rx, size })
    }

    /// Copies `body` into `tx`, one chunk behind, and sends the last one only once verified.
    async fn relay(
        &self,
        plan: Plan,
        mut body: UpstreamBody,
        tx: mpsc::Sender<Result<Bytes, FetchError>>,
    ) {
        let mut verifier = Checks::new(&plan, None);
        let mut held: Option<Bytes> = None;
        let end = loop {
            match body.batch(WRITE_BATCH).await {
                Ok(Some(c)) => {
                    if let Err(e) = self.count_rejected(verifier.update(&c)) {
                        break Err(e);
                    }
                    if let Some(prev) = held.replace(c) {
                        if tx.send(Ok(prev)).await.is_err() {
                            return; // the client went away; nobody else wants it
                        }
                    }
                }
                Ok(None) => break self.count_rejected(verifier.finish()),
                Err(e) => break Err(FetchError::Unavailable(e.to_string())),
            }
        };
        let last = match end {
            Ok(n) => {
                self.metrics.fetched(Source::Upstream, n);
                held.map(Ok)
            }
            Err(e) => Some(Err(e)),
        };
        if let Some(last) = last {
            let _ = tx.send(last).await;
        }
    }
}
