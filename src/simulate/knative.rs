//! Baseline: Knative Serving's KPA at its defaults, with the pool's `concurrency` as the
//! revision's `containerConcurrency`.
//!
//! Every rule is read from knative/serving (main after v1.20):
//! - Defaults (`pkg/autoscaler/config/config.go`): stable window 60 s, panic window 10 % of it,
//!   panic threshold 200 %, target utilization 70 %, max scale-up rate 1000, max scale-down
//!   rate 2, scale-to-zero grace 30 s, scale-down delay 0.
//! - Target per pod: containerConcurrency × 0.7 (`pkg/reconciler/autoscaling/resources/
//!   target.go`, `ResolveMetricTarget`).
//! - The metric: each queue-proxy reports its time-weighted mean concurrency over the last
//!   second, queued requests included (`knative/networking pkg/http/stats/request.go`); the
//!   autoscaler scrapes every second (`pkg/autoscaler/metrics/collector.go`) the revision's
//!   total (sampled above 3 pods and scaled up; here every ready pod is read, which removes the
//!   sampling noise and nothing else) into one-second buckets.
//! - Window means (`pkg/autoscaler/aggregation/bucketing.go`, `WindowAverage`): the sum of the
//!   buckets since the first write, at most one window, over their count; seconds without a
//!   write inside that span count as 0; no write for a whole window means no data.
//! - The decider runs every 2 s (`pkg/autoscaler/scaling/multiscaler.go`) and does
//!   (`pkg/autoscaler/scaling/autoscaler.go`, `Scale`): ready = max(1, ready pods);
//!   desired = ceil(mean / target) for each window, between floor(ready / 2) and
//!   ceil(1000 × ready); panic starts when ceil(panic mean / target) / ready ≥ 2, ends 60 s
//!   after the last tick over the threshold, and in panic the count never goes down.
//! - A decider made with more than one ready pod starts in panic at that size (`newAutoscaler`).
//! - Bounds and scale to zero (`pkg/reconciler/autoscaling/kpa/scaler.go`): the result is
//!   clamped to min-scale and max-scale (the pool's min and max); 0 is applied once the pool
//!   has asked for 0 for the 30 s grace (after the stable window has emptied).

use std::collections::VecDeque;

use super::world::{Autoscaler, World};

pub const TICK: f64 = 2.0;
pub const SCRAPE: f64 = 1.0;
const STABLE_WINDOW: u64 = 60;
const PANIC_WINDOW: u64 = 6;
const PANIC_THRESHOLD: f64 = 2.0;
const TARGET_UTILIZATION: f64 = 0.7;
const MAX_SCALE_UP_RATE: f64 = 1000.0;
const MAX_SCALE_DOWN_RATE: f64 = 2.0;
const SCALE_TO_ZERO_GRACE: f64 = 30.0;

/// Sums of samples per whole second, as `TimedFloat64Buckets` keeps them.
#[derive(Debug, Default)]
struct Buckets {
    /// (second, sum), oldest first, at most one stable window.
    sums: VecDeque<(u64, f64)>,
    first_write: Option<u64>,
}

impl Buckets {
    fn record(&mut self, now: f64, value: f64) {
        let second = now.floor() as u64;
        if let Some(&(last, _)) = self.sums.back()
            && second.saturating_sub(last) >= STABLE_WINDOW
        {
            // A window without writes starts the history over.
            self.sums.clear();
            self.first_write = None;
        }
        self.first_write.get_or_insert(second);
        match self.sums.back_mut() {
            Some((last, sum)) if *last == second => *sum += value,
            _ => self.sums.push_back((second, value)),
        }
        while self
            .sums
            .front()
            .is_some_and(|(s, _)| second - s >= STABLE_WINDOW)
        {
            self.sums.pop_front();
        }
    }

    /// The mean over the `window` seconds ending at `now`; `None` with no write in the window.
    fn mean(&self, now: f64, window: u64) -> Option<f64> {
        let now = now.floor() as u64;
        let (&(last_write, _), first) = (self.sums.back()?, self.first_write?);
        let gap = now.saturating_sub(last_write);
        if gap >= window {
            return None;
        }
        let start = now + 1 - window.min(now + 1);
        let total: f64 = self
            .sums
            .iter()
            .filter(|(s, _)| *s >= start)
            .map(|(_, sum)| sum)
            .sum();
        let span = last_write - first;
        let count = (span + 1).min(window - gap);
        Some(total / count as f64)
    }
}

pub struct Kpa {
    target: f64,
    min: u32,
    max: u32,
    initial: u32,
    next_tick: f64,
    next_scrape: f64,
    buckets: Buckets,
    panic_since: Option<f64>,
    max_panic_pods: u32,
    /// Since when the decider has asked for 0 (scale to zero waits for the grace).
    zero_since: Option<f64>,
    last_desired: u32,
}

impl Kpa {
    pub fn new(
        container_concurrency: u32,
        min: u32,
        max: u32,
        initial: u32,
        phase_tick: f64,
        phase_scrape: f64,
    ) -> Self {
        let starts_in_panic = initial > 1;
        Self {
            target: (f64::from(container_concurrency) * TARGET_UTILIZATION).max(0.01),
            min,
            max,
            initial,
            next_tick: phase_tick,
            next_scrape: phase_scrape,
            buckets: Buckets::default(),
            panic_since: starts_in_panic.then_some(0.0),
            max_panic_pods: if starts_in_panic { initial } else { 0 },
            zero_since: None,
            last_desired: initial,
        }
    }

    /// The decider's tick: desired pods, or `None` without data.
    fn decide(&mut self, now: f64, ready: usize) -> Option<u32> {
        let stable = self.buckets.mean(now, STABLE_WINDOW)?;
        let panic = self.buckets.mean(now, PANIC_WINDOW).unwrap_or(0.0);
        let ready = (ready as f64).max(1.0);
        let max_up = (MAX_SCALE_UP_RATE * ready).ceil();
        let max_down = (ready / MAX_SCALE_DOWN_RATE).floor();
        let stable_pods = (stable / self.target).ceil();
        let panic_pods = (panic / self.target).ceil();
        let desired_stable = stable_pods.max(max_down).min(max_up) as u32;
        let desired_panic = panic_pods.max(max_down).min(max_up) as u32;
        let over = panic_pods / ready >= PANIC_THRESHOLD;
        if over {
            self.panic_since = Some(now);
        } else if self
            .panic_since
            .is_some_and(|since| since + (STABLE_WINDOW as f64) < now)
        {
            self.panic_since = None;
            self.max_panic_pods = 0;
        }
        Some(if self.panic_since.is_some() {
            self.max_panic_pods = self.max_panic_pods.max(desired_stable.max(desired_panic));
            self.max_panic_pods
        } else {
            desired_stable
        })
    }

    /// min-scale, max-scale and the scale-to-zero grace.
    fn apply_bounds(&mut self, now: f64, desired: u32) -> u32 {
        if desired == 0 && self.min == 0 {
            let since = *self.zero_since.get_or_insert(now);
            if now - since < SCALE_TO_ZERO_GRACE {
                return self.last_desired.max(1);
            }
        } else {
            self.zero_since = None;
        }
        desired.clamp(self.min, self.max)
    }
}

impl Autoscaler for Kpa {
    fn initial_replicas(&self) -> u32 {
        self.initial
    }

    fn next_look(&self, _changed_at: Option<f64>) -> f64 {
        self.next_tick.min(self.next_scrape)
    }

    fn look(&mut self, world: &mut World) -> u32 {
        let now = world.now();
        if now >= self.next_scrape {
            self.next_scrape += SCRAPE;
            // No ready pod, nothing scraped (the activator would report at zero: the shared
            // queue's reading stands in for it).
            if world.ready_count() > 0 || world.total_load() > 0.0 {
                let total = world.take_average_load();
                self.buckets.record(now, total);
            }
        }
        let mut replicas = world.replicas();
        if now >= self.next_tick {
            self.next_tick += TICK;
            if let Some(desired) = self.decide(now, world.ready_count()) {
                replicas = self.apply_bounds(now, desired);
                self.last_desired = replicas;
            }
        }
        replicas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_starts_at_the_first_tick_that_asks_for_twice_the_ready_pods() {
        // Concurrency 10: a target of 7 per pod. 28 busy on 4 ready pods, then 56 (doubled)
        // from t = 60. The 6 s mean asks for twice the 4 pods (over 49) once 5 of its 6 seconds
        // are doubled: (28 + 5 × 56) / 6 = 51.3 at t = 64.
        let mut kpa = Kpa::new(10, 1, 100, 1, 0.0, 0.0);
        for t in 0..60 {
            kpa.buckets.record(f64::from(t), 28.0);
        }
        assert_eq!(kpa.decide(59.0, 4), Some(4));
        for t in 60..64 {
            kpa.buckets.record(f64::from(t), 56.0);
            // The stable mean creeps up (ceil(28.5 / 7) = 5), no panic yet.
            assert!(
                kpa.decide(f64::from(t), 4).is_some_and(|d| d < 8),
                "t = {t}"
            );
            assert!(kpa.panic_since.is_none(), "t = {t}");
        }
        kpa.buckets.record(64.0, 56.0);
        let desired = kpa.decide(64.0, 4);
        assert_eq!(kpa.panic_since, Some(64.0));
        assert_eq!(desired, Some(8));
        // In panic it never goes down, even when the load falls back at once.
        for t in 65..120 {
            kpa.buckets.record(f64::from(t), 28.0);
            assert_eq!(kpa.decide(f64::from(t), 8), Some(8), "t = {t}");
        }
        // 60 s after the last tick over the threshold it leaves panic and follows the stable
        // mean.
        kpa.buckets.record(125.0, 28.0);
        assert!(kpa.decide(125.0, 8).is_some_and(|d| d < 8));
        assert!(kpa.panic_since.is_none());
    }

    #[test]
    fn window_mean_counts_gaps_as_zero_and_grows_with_history() {
        let mut buckets = Buckets::default();
        buckets.record(10.2, 6.0);
        // One second of history: the mean is that second.
        assert_eq!(buckets.mean(10.5, 60), Some(6.0));
        buckets.record(12.0, 12.0);
        // Three seconds since the first write, one of them empty.
        assert_eq!(buckets.mean(12.0, 60), Some(6.0));
        // The six-second window ending at 16 holds seconds 11..=16 but data only to 12: two of
        // the four seconds at most since the last write count.
        assert_eq!(buckets.mean(16.0, 6), Some(12.0 / 2.0));
        assert_eq!(buckets.mean(18.0, 6), None);
        assert_eq!(buckets.mean(100.0, 60), None);
    }
}
