//! One computation per key, however many callers ask at once (pingora's cache lock, in
//! miniature). The computation runs in its own task, so a caller that goes away (a client
//! disconnect) does not cancel it for the others.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Coalesces concurrent computations of `V` by key `K`.
pub struct Coalescer<K, V> {
    inflight: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
}

impl<K, V> Default for Coalescer<K, V> {
    fn default() -> Self {
        Coalescer {
            inflight: Arc::default(),
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Returns the value of the computation for `key`, starting `make()` only when none is
    /// under way. The second value is true when this call joined an existing computation.
    pub async fn run<F>(&self, key: K, make: impl FnOnce() -> F) -> (V, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (mut rx, joined) = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&key) {
                Some(rx) => (rx.clone(), true),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    let fut = make();
                    let inflight = self.inflight.clone();
                    tokio::spawn(async move {
                        let v = fut.await;
                        let _ = tx.send(Some(v));
                        inflight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&key);
                    });
                    (rx, false)
                }
            }
        };
        let v = rx
            .wait_for(Option::is_some)
            .await
            .expect("the task sends before dropping the sender")
            .clone()
            .expect("waited for Some");
        (v, joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn one_computation_for_concurrent_callers() {
        let c: Arc<Coalescer<u8, u32>> = Arc::default();
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (c, calls) = (c.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                c.run(1, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    7
                })
                .await
            }));
        }
        let mut joined = 0;
        for t in tasks {
            let (v, j) = t.await.unwrap();
            assert_eq!(v, 7);
            joined += u32::from(j);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 19);
    }

    #[tokio::test]
    async fn survives_the_first_caller_going_away() {
        let c: Arc<Coalescer<u8, u32>> = Arc::default();
        let first = {
            let c = c.clone();
            tokio::spawn(async move {
                c.run(1, || async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    9
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.abort();
        let (v, joined) = c.run(1, || async { 0 }).await;
        assert_eq!((v, joined), (9, true));
    }
}
