//! `redis` source: the pool's queue as Redis holds it (see [`crate::queue::redis`]), polled in
//! the background. The queue is shared by every pod, so the figures are pool-wide
//! ([`Scope::Pool`](crate::queue::contract::Scope)). A Redis that cannot be read makes the
//! snapshot an error, never zeros.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::queue::contract::QueueSnapshot;
use crate::queue::redis::{self, Reading, RedisError, RedisReader, RedisTarget};

/// How often Redis is read. LLEN and XINFO GROUPS are O(1)-ish, so even many pods polling at
/// this rate are cheap for Redis, and a change reaches the watch stream within this period.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A reading older than this is stale (the poller is stuck): missing data.
const MAX_AGE: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct Latest {
    at: Instant,
    reading: Result<Reading, RedisError>,
}

/// Polls Redis in the background and keeps the latest reading.
#[derive(Debug)]
pub struct RedisSource {
    /// Taken by the one `run` loop.
    reader: tokio::sync::Mutex<RedisReader>,
    capacity: u64,
    latest: Mutex<Option<Latest>>,
    changed: watch::Sender<u64>,
}

impl RedisSource {
    pub fn new(target: RedisTarget, capacity: u64) -> Result<Self, RedisError> {
        Ok(RedisSource {
            reader: tokio::sync::Mutex::new(RedisReader::new(target)?),
            capacity,
            latest: Mutex::new(None),
            changed: watch::channel(0).0,
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Polls until the task is dropped, reconnecting after any error.
    pub async fn run(&self) {
        let mut reader = self.reader.lock().await;
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let reading = reader.read().await;
            self.store(reading);
        }
    }

    fn store(&self, reading: Result<Reading, RedisError>) {
        let changed = {
            let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
            let changed = latest.as_ref().is_none_or(|l| l.reading != reading);
            match (latest.as_ref(), &reading) {
                (Some(Latest { reading: Ok(_), .. }) | None, Err(error)) => {
                    tracing::warn!(%error, "cannot read the queue from redis")
                }
                (
                    Some(Latest {
                        reading: Err(_), ..
                    }),
                    Ok(_),
                ) => tracing::info!("reading redis again"),
                _ => {}
            }
            *latest = Some(Latest {
                at: Instant::now(),
                reading,
            });
            changed
        };
        if changed {
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// The latest reading as a snapshot, or why there is none.
    pub fn snapshot(&self) -> Result<QueueSnapshot, String> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let latest = latest.as_ref().ok_or("redis not read yet")?;
        if latest.at.elapsed() > MAX_AGE {
            return Err("redis reading is stale".into());
        }
        let reading = latest.reading.clone().map_err(|e| e.to_string())?;
        Ok(redis::snapshot(reading, self.capacity))
    }
}
