//! Waiting on a condition instead of sleeping a guessed time: a test states what it waits
//! for, polls it, and fails with that statement when the deadline passes.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled: short, since each poll is a cheap local request.
const POLL: Duration = Duration::from_millis(25);

/// Polls `f` until it returns true; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}
