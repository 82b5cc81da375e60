//! Queues the operator reads itself: a pool whose queue is in Redis and that has no ready
//! worker (at zero replicas, or while its first worker starts) has no sidecar to report it, so
//! the operator polls the queue in the background, one poller per such pool, and wakes the
//! pool's reconcile when the reading changes. Reconcile only looks at the latest reading, so a
//! slow or unreachable Redis never holds up a reconcile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::queue::contract::QueueSnapshot;
use crate::queue::reader::PoolKey;
use crate::queue::redis::{RedisError, RedisPoller, RedisTarget};

struct Polling {
    target: RedisTarget,
    capacity: u64,
    poller: Arc<RedisPoller>,
    task: AbortHandle,
}

impl Drop for Polling {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The operator's own pollers, by pool.
pub struct ExternalQueues {
    polling: Mutex<HashMap<PoolKey, Polling>>,
    changes: mpsc::UnboundedSender<PoolKey>,
}

impl ExternalQueues {
    /// Pollers that announce every changed reading on `changes`.
    pub fn new(changes: mpsc::UnboundedSender<PoolKey>) -> Self {
        Self {
            polling: Mutex::default(),
            changes,
        }
    }

    /// The pool's queue as last read, from a poller that keeps running until [`Self::stop`].
    /// A poller just started has no reading yet: missing data until its first read, a moment
    /// later.
    pub fn reading(
        &self,
        pool: &PoolKey,
        target: &RedisTarget,
        capacity: u64,
    ) -> Result<QueueSnapshot, String> {
        let mut polling = self.polling.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = polling.get(pool)
            && current.target == *target
            && current.capacity == capacity
        {
            return current.poller.snapshot();
        }
        let started = self
            .start(pool, target, capacity)
            .map_err(|error| error.to_string())?;
        let snapshot = started.poller.snapshot();
        polling.insert(pool.clone(), started);
        snapshot
    }

    /// Stops reading the pool's queue (it has a ready worker again, or is gone).
    pub fn stop(&self, pool: &PoolKey) {
        let mut polling = self.polling.lock().unwrap_or_else(PoisonError::into_inner);
        polling.remove(pool);
    }

    fn start(
        &self,
        pool: &PoolKey,
        target: &RedisTarget,
        capacity: u64,
    ) -> Result<Polling, RedisError> {
        let poller = Arc::new(RedisPoller::new(target.clone(), capacity)?);
        let changes = self.changes.clone();
        let key = pool.clone();
        let running = Arc::clone(&poller);
        let span =
            tracing::info_span!("redis_queue", namespace = %pool.namespace, pool = %pool.name);
        let task = tokio::spawn(
            async move {
                let mut changed = running.subscribe();
                let announce = async {
                    while changed.changed().await.is_ok() {
                        if changes.send(key.clone()).is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    () = running.run() => {}
                    () = announce => {}
                }
            }
            .instrument(span),
        )
        .abort_handle();
        Ok(Polling {
            target: target.clone(),
            capacity,
            poller,
            task,
        })
    }
}
