//! One computation per key, however many callers ask at once (pingora's cache lock, in
//! miniature). The computation runs in its own task, so a caller that goes away (a client
//! disconnect) does not cancel it for the others.
//!
//! [`Inflight`] is the primitive: a per-key map of cloneable handles, an entry living exactly
//! as long as its task. A NAR download's handle is its temp file and progress watch;
//! [`Coalescer`] is the same map whose handle is a watch of the final value (narinfos).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// Tasks under way by key, each with a handle that joiners clone.
pub struct Inflight<K, H> {
    map: Arc<Mutex<HashMap<K, H>>>,
}

impl<K, H> Default for Inflight<K, H> {
    fn default() -> Self {
        Inflight {
            map: Arc::default(),
        }
    }
}

impl<K, H> Inflight<K, H>
where
    K: Hash + Eq + Clone + Send + 'static,
    H: Clone + Send + 'static,
{
    fn lock(&self) -> MutexGuard<'_, HashMap<K, H>> {
        // The map only holds handles; a panic elsewhere cannot leave it inconsistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handle of the task under way for `key`, if any.
    pub fn get(&self, key: &K) -> Option<H> {
        self.lock().get(key).cloned()
    }

    /// Joins the task under way for `key`, or calls `start()` for a new handle and the task
    /// behind it, which is spawned; the entry is removed when the task ends. Starting happens
    /// under the map's lock, so two callers never both start. The flag is true when joined.
    pub fn join_or_start<F, E>(
        &self,
        key: K,
        start: impl FnOnce() -> Result<(H, F), E>,
    ) -> Result<(H, bool), E>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut map = self.lock();
        if let Some(h) = map.get(&key) {
            return Ok((h.clone(), true));
        }
        let (handle, task) = start()?;
        map.insert(key.clone(), handle.clone());
        let inflight = self.map.clone();
        tokio::spawn(async move {
            task.await;
            inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        });
        Ok((handle, false))
    }
}

/// Coalesces concurrent computations of `V` by key `K`: an [`Inflight`] whose handle is a
/// watch of the final value.
pub struct Coalescer<K, V> {
    inflight: Inflight<K, watch::Receiver<Option<V>>>,
}

impl<K, V> Default for Coalescer<K, V> {
    fn default() -> Self {
        Coalescer {
            inflight: Inflight::default(),
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
        let started = self.inflight.join_or_start(key, || {
            let (tx, rx) = watch::channel(None);
            let fut = make();
            let task = async move {
                let _ = tx.send(Some(fut.await));
            };
            Ok::<_, Infallible>((rx, task))
        });
        let Ok((mut rx, joined)) = started;
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

    /// NAR-style: the handle (here a shared counter of bytes) exists before the task runs,
    /// joiners clone it, and the entry goes away with the task.
    #[tokio::test]
    async fn joiners_share_the_handle_of_one_task() {
        let inflight: Inflight<u8, Arc<AtomicU32>> = Inflight::default();
        let (calls, (gate_tx, gate_rx)) = (Arc::new(AtomicU32::new(0)), watch::channel(false));
        let mut handles = Vec::new();
        for _ in 0..10 {
            let (calls, mut gate) = (calls.clone(), gate_rx.clone());
            let (h, joined) = inflight
                .join_or_start(1, || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let progress = Arc::new(AtomicU32::new(0));
                    let p = progress.clone();
                    let task = async move {
                        let _ = gate.wait_for(|open| *open).await;
                        p.store(42, Ordering::SeqCst);
                    };
                    Ok::<_, Infallible>((progress, task))
                })
                .unwrap();
            assert_eq!(joined, !handles.is_empty());
            handles.push(h);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(handles.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
        gate_tx.send_replace(true);
        while inflight.get(&1).is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(handles[9].load(Ordering::SeqCst), 42);
        let (_, joined) = inflight
            .join_or_start(1, || Ok::<_, Infallible>((handles[0].clone(), async {})))
            .unwrap();
        assert!(
            !joined,
            "a finished task's entry is gone: the next caller starts afresh"
        );
    }
}
