//! Graceful drain, the Gunicorn graceful stop in pod form. On SIGTERM or `POST /drain`:
//! readiness goes false at once (so the endpoint is removed), new requests are still served
//! through the grace (removal takes a moment to reach every proxy in the cluster, longer when the
//! control plane is slow), then new ones are refused; what was admitted or queued completes. On
//! SIGTERM the process then exits; after `POST /drain` it stays, idle and reporting
//! `draining: true`, until the pod is deleted.
//!
//! The grace lasts `--drain-grace` at least, and then until no request has arrived for
//! `--drain-quiet`: requests that still arrive say that some proxy still routes to this pod, and
//! refusing them would fail them. It ends at the latest at half of `--drain-timeout`, so that
//! what was admitted keeps the other half to complete.

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

/// How long new requests are still served once a drain has started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grace {
    /// Served at least this long.
    pub least: Duration,
    /// Then until no request has arrived for this long; zero ends the grace at `least`.
    pub quiet: Duration,
    /// Never longer than this (nor shorter than `least`).
    pub most: Duration,
}

impl Grace {
    /// The grace for a drain of `timeout`: `least`, extended by `quiet`, up to half the timeout.
    pub fn within(timeout: Duration, least: Duration, quiet: Duration) -> Self {
        Grace {
            least,
            quiet,
            most: least.max(timeout / 2),
        }
    }
}

#[derive(Debug)]
pub struct Drain {
    phase: watch::Sender<Phase>,
    started: OnceLock<Instant>,
    grace: Grace,
    limiter: Arc<Limiter>,
    source: Source,
}

impl Drain {
    pub fn new(grace: Grace, limiter: Arc<Limiter>, source: Source) -> Self {
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
            let arrivals = drain.serve_through_grace().await;
            drain.limiter.close();
            drain.phase.send_replace(Phase::Closed);
            tracing::info!(
                arrivals,
                "drain grace over: refusing new requests, finishing admitted ones"
            );
        });
        true
    }

    /// Returns when the grace is over: `least` has passed and no request arrived for `quiet`,
    /// or `most` has passed. Says how many requests arrived meanwhile.
    async fn serve_through_grace(&self) -> u64 {
        let grace = self.grace;
        let started = tokio::time::Instant::now();
        let latest = started + grace.most.max(grace.least);
        // Subscribed before the first count, so that no arrival goes unseen.
        let mut changes = self.limiter.subscribe();
        let first = self.limiter.arrived_total();
        let mut counted = first;
        let mut ends = started + grace.least;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(ends) => return counted - first,
                // The drain holds the limiter, so its change channel never closes.
                Ok(()) = changes.changed() => {
                    let arrived = self.limiter.arrived_total();
                    if arrived != counted && !grace.quiet.is_zero() {
                        counted = arrived;
                        let quiet_from_now = tokio::time::Instant::now() + grace.quiet;
                        ends = ends.max(quiet_from_now.min(latest));
                    }
                }
            }
        }
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

    fn fixed(grace: Duration) -> Grace {
        Grace {
            least: grace,
            quiet: Duration::ZERO,
            most: grace,
        }
    }

    fn proxy_drain(limiter: &Arc<Limiter>, grace: Grace) -> Arc<Drain> {
        Arc::new(Drain::new(
            grace,
            Arc::clone(limiter),
            Source::Proxy(Arc::clone(limiter)),
        ))
    }

    /// A drain of `timeout` started now, whose grace is at least 1 s, quiet 500 ms.
    fn started(limiter: &Arc<Limiter>, timeout: Duration) -> (Arc<Drain>, tokio::time::Instant) {
        let grace = Grace::within(timeout, Duration::from_secs(1), Duration::from_millis(500));
        let drain = proxy_drain(limiter, grace);
        let since = tokio::time::Instant::now();
        drain.start("test");
        (drain, since)
    }

    /// Asserts that the grace of `drain`, started at `since`, ends `at` later (virtual time,
    /// to 10 ms).
    async fn assert_grace_ends(drain: &Drain, since: tokio::time::Instant, at: Duration) {
        let margin = Duration::from_millis(10);
        tokio::time::sleep_until(since + at - margin).await;
        assert_eq!(drain.phase(), Phase::Grace, "{at:?} - {margin:?}");
        tokio::time::sleep_until(since + at + margin).await;
        assert_eq!(drain.phase(), Phase::Closed, "{at:?} + {margin:?}");
    }

    /// One request every `every` until `until` after now, each done at once.
    fn arrivals(limiter: &Arc<Limiter>, every: Duration, until: Duration) {
        let limiter = Arc::clone(limiter);
        let end = tokio::time::Instant::now() + until;
        tokio::spawn(async move {
            while tokio::time::Instant::now() + every <= end {
                tokio::time::sleep(every).await;
                drop(limiter.arrive());
            }
        });
    }

    #[tokio::test]
    async fn grace_then_closed_then_drained() {
        let limiter = Arc::new(Limiter::new(1, 10));
        let drain = proxy_drain(&limiter, fixed(Duration::from_millis(100)));
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

    #[tokio::test(start_paused = true)]
    async fn without_arrivals_the_grace_ends_at_its_least() {
        let limiter = Arc::new(Limiter::new(1, 10));
        let (drain, since) = started(&limiter, Duration::from_secs(30));
        assert_grace_ends(&drain, since, Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn arrivals_keep_the_grace_open_until_they_stop_for_the_quiet() {
        let limiter = Arc::new(Limiter::new(1, 10));
        let (drain, since) = started(&limiter, Duration::from_secs(30));
        // The last one at 3 s: the grace is over at 3.5 s, not at its least (1 s).
        arrivals(&limiter, Duration::from_millis(200), Duration::from_secs(3));
        assert_grace_ends(&drain, since, Duration::from_millis(3500)).await;
        assert_eq!(limiter.arrived_total(), 15);
        assert_eq!(limiter.outcomes().refused_closed, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_never_outlasts_half_the_drain_timeout() {
        let limiter = Arc::new(Limiter::new(1, 10));
        let (drain, since) = started(&limiter, Duration::from_secs(6));
        arrivals(
            &limiter,
            Duration::from_millis(100),
            Duration::from_secs(20),
        );
        assert_grace_ends(&drain, since, Duration::from_secs(3)).await;
        // The next arrivals are refused.
        tokio::time::sleep_until(since + Duration::from_millis(3250)).await;
        assert_eq!(limiter.outcomes().refused_closed, 2);
    }

    #[test]
    fn the_least_grace_wins_over_half_a_short_drain_timeout() {
        let grace = Grace::within(
            Duration::from_secs(4),
            Duration::from_secs(3),
            Duration::from_secs(1),
        );
        assert_eq!(
            (grace.least, grace.most),
            (Duration::from_secs(3), Duration::from_secs(3))
        );
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let limiter = Arc::new(Limiter::new(1, 10));
        let drain = proxy_drain(&limiter, fixed(Duration::ZERO));
        let _stuck = limiter.arrive().unwrap();
        drain.start("test");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        assert!(!drain.wait_drained(deadline).await);
    }
}
