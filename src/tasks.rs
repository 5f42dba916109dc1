//! Background tasks with names and an owner (librqbit's `spawn_with_cancel`, in miniature):
//! each runs inside a span named after it, its error is logged once with that name, and the
//! appliance's `run` drains them all after the server stopped, so shutdown waits for them
//! (the mDNS goodbye, for one) instead of dropping them mid-step.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::Instrument;

/// What a task's end says: `()` or a `Result` whose error is worth a log line.
pub trait Outcome: Send + 'static {
    fn log(self);
}

impl Outcome for () {
    fn log(self) {
        tracing::debug!("task ended");
    }
}

impl<E: Display + Send + 'static> Outcome for Result<(), E> {
    fn log(self) {
        match self {
            Ok(()) => tracing::debug!("task ended"),
            Err(e) => tracing::warn!(error = %e, "task failed"),
        }
    }
}

/// The appliance's long-lived background tasks.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<()>,
}

impl Tasks {
    /// Runs `fut` as the task `name`; an `Err` is logged at warn inside the task's span.
    pub fn spawn<O: Outcome>(
        &mut self,
        name: &'static str,
        fut: impl Future<Output = O> + Send + 'static,
    ) {
        let span = tracing::info_span!("task", name);
        self.set
            .spawn(async move { fut.await.log() }.instrument(span));
    }

    /// Waits for every task to end (they watch the shutdown token), at most `deadline`;
    /// whatever is still running then is aborted.
    pub async fn drain(mut self, deadline: Duration) {
        let all = async { while self.set.join_next().await.is_some() {} };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(
                left = self.set.len(),
                "background tasks did not stop in time; aborting them"
            );
            self.set.abort_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn drain_waits_then_aborts() {
        let mut tasks = Tasks::default();
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        tasks.spawn("quick", async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            f.store(true, Ordering::SeqCst);
            Ok::<_, String>(())
        });
        tasks.spawn("failing", async { Err("boom") });
        tasks.spawn("stuck", std::future::pending::<Result<(), String>>());
        let start = std::time::Instant::now();
        tasks.drain(Duration::from_millis(200)).await;
        assert!(
            finished.load(Ordering::SeqCst),
            "the quick task ran to its end"
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the stuck one was aborted"
        );
    }
}
