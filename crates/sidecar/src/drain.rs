//! Graceful drain, the Gunicorn graceful stop in pod form. On SIGTERM or `POST /drain`:
//! readiness goes false at once (so the endpoint is removed), new requests are still served for
//! `--drain-grace` (removal takes a moment to propagate to every proxy in the cluster), then new
//! ones are refused; what was admitted or queued completes. On SIGTERM the process then exits;
//! after `POST /drain` it stays, idle and reporting `draining: true`, until the pod is deleted.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::limiter::Limiter;
use crate::source::Source;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// Not ready, still admitting new requests.
    Grace,
    /// Not ready, refusing new requests, finishing the admitted and queued ones.
    Closed,
}

#[derive(Debug)]
pub struct Drain {
    phase: watch::Sender<Phase>,
    started: OnceLock<Instant>,
    grace: Duration,
    limiter: Arc<Limiter>,
    source: Source,
}

impl Drain {
    pub fn new(grace: Duration, limiter: Arc<Limiter>, source: Source) -> Self {
        Drain {
            phase: watch::channel(Phase::Serving).0,
            started: OnceLock::new(),
            grace,
            limiter,
            source,
        }
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn is_draining(&self) -> bool {
        self.phase() != Phase::Serving
    }

    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Starts the drain unless one is under way; true when this call started it.
    pub fn start(self: &Arc<Self>, why: &'static str) -> bool {
        if self.started.set(Instant::now()).is_err() {
            return false;
        }
        tracing::info!(why, grace = ?self.grace, "drain started: not ready, still serving during the grace");
        self.phase.send_replace(Phase::Grace);
        let drain = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(drain.grace).await;
            drain.limiter.close();
            drain.phase.send_replace(Phase::Closed);
            tracing::info!("drain grace over: refusing new requests, finishing admitted ones");
        });
        true
    }

    /// True once new requests are refused and nothing admitted, queued or reported is left.
    pub fn is_drained(&self) -> bool {
        self.phase() == Phase::Closed && self.limiter.is_idle() && self.source.is_idle()
    }

    /// Waits until drained or `deadline`; true when drained in time.
    pub async fn wait_drained(&self, deadline: tokio::time::Instant) -> bool {
        let mut phase = self.subscribe();
        let mut limiter = self.limiter.subscribe();
        let mut source = self.source.subscribe();
        loop {
            if self.is_drained() {
                return true;
            }
            tokio::select! {
                _ = phase.changed() => {}
                _ = limiter.changed() => {}
                _ = source.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return self.is_drained(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn grace_then_closed_then_drained() {
        let limiter = Arc::new(Limiter::new(1, 10));
        let drain = Arc::new(Drain::new(
            Duration::from_millis(100),
            Arc::clone(&limiter),
            Source::Proxy(Arc::clone(&limiter)),
        ));
        let running = limiter.arrive().unwrap().admitted().now_or_never().unwrap();
        assert!(drain.start("test"));
        assert!(!drain.start("again"));
        assert_eq!(drain.phase(), Phase::Grace);
        // Still admitting during the grace.
        let queued = limiter.arrive().unwrap();
        let mut phase = drain.subscribe();
        tokio::time::timeout(
            Duration::from_secs(5),
            phase.wait_for(|p| *p == Phase::Closed),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(limiter.arrive().is_err());
        assert!(!drain.is_drained());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let finisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(running);
            let permit = queued.admitted().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(permit);
        });
        assert!(drain.wait_drained(deadline).await);
        finisher.await.unwrap();
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let limiter = Arc::new(Limiter::new(1, 10));
        let drain = Arc::new(Drain::new(
            Duration::ZERO,
            Arc::clone(&limiter),
            Source::Proxy(Arc::clone(&limiter)),
        ));
        let _stuck = limiter.arrive().unwrap();
        drain.start("test");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        assert!(!drain.wait_drained(deadline).await);
    }
}
