//! Arrival rate and mean service time from the sidecars' monotonic counters: the inputs of
//! Little's law. Counters survive a missed read, so a rate is right even across a gap.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use asyncpool_contract::queue::{QueueSnapshot, Scope};

/// Rates measured over less than this are mostly noise (a handful of arrivals), so not used.
const MIN_RATE_SPAN: Duration = Duration::from_secs(1);

/// Arrivals and completions within this fraction of each other (plus one request of slack for
/// small counts) count as balanced: the only rounds in which the service time is measured.
const BALANCE_TOLERANCE: f64 = 0.1;

/// The pool's arrival rate and service time, and the load they imply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateEstimate {
    /// Requests arriving per second, summed over the pods that have a counter history.
    pub arrivals_per_second: f64,
    /// Mean seconds a request spends in the app, pooled over those pods.
    pub mean_service_seconds: f64,
    /// Requests in the app at once that this arrival rate keeps up in steady state:
    /// arrivals per second × service seconds (Little's law).
    pub load: f64,
}

/// The counters of one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counters {
    at: Duration,
    arrived: u64,
    completed: u64,
    busy_seconds: f64,
}

impl Counters {
    fn read(at: Duration, snapshot: &QueueSnapshot) -> Self {
        Self {
            at,
            arrived: snapshot.arrived_total,
            completed: snapshot.completed_total,
            busy_seconds: snapshot.busy_seconds_total,
        }
    }

    /// A count that went backwards means the sidecar restarted; a delta across that is junk.
    /// Busy seconds are not a sign of it: a sidecar computes them in floating point from the
    /// running requests' start times, so they may step back by a rounding error.
    fn went_back_from(&self, earlier: &Counters) -> bool {
        self.arrived < earlier.arrived || self.completed < earlier.completed
    }
}

/// Per-pod counter history, about one panic window long, one reading per second.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct RateTracker {
    pods: BTreeMap<String, VecDeque<Counters>>,
    /// The service time measured in the last balanced round, used until the next one.
    last_service_seconds: Option<f64>,
}

impl RateTracker {
    /// Folds in this round's readings (`None` = no usable reading from that pod) and returns
    /// the pool's rates measured over about `span`. Only pod-scoped readings have rates: a
    /// pool-wide source has no per-pod counters to add up. Pods absent from `pods` are
    /// forgotten; a pod that missed one read keeps its history.
    pub(super) fn update<'a>(
        &mut self,
        now: Duration,
        span: Duration,
        pods: impl IntoIterator<Item = (&'a str, Option<&'a QueueSnapshot>)>,
    ) -> Option<RateEstimate> {
        let mut present = BTreeSet::new();
        let mut arrivals_per_second = 0.0;
        let mut busy_seconds = 0.0;
        let mut arrived = 0u64;
        let mut completed = 0u64;
        let mut measured_pods = 0usize;
        for (name, snapshot) in pods {
            present.insert(name);
            let Some(snapshot) = snapshot.filter(|s| s.scope == Scope::Pod) else {
                continue;
            };
            let reading = Counters::read(now, snapshot);
            let history = self.pods.entry(name.to_owned()).or_default();
            if history
                .back()
                .is_some_and(|last| reading.went_back_from(last))
            {
                history.clear();
            }
            // The anchor is the newest reading at least `span` old, so rates cover the span.
            if let Some(start) = now.checked_sub(span) {
                while history.get(1).is_some_and(|next| next.at <= start) {
                    history.pop_front();
                }
            }
            if let Some(anchor) = history.front() {
                let elapsed = now.saturating_sub(anchor.at);
                if elapsed >= MIN_RATE_SPAN {
                    let pod_arrived = reading.arrived.saturating_sub(anchor.arrived);
                    arrivals_per_second += pod_arrived as f64 / elapsed.as_secs_f64();
                    arrived = arrived.saturating_add(pod_arrived);
                    busy_seconds += (reading.busy_seconds - anchor.busy_seconds).max(0.0);
                    completed = completed
                        .saturating_add(reading.completed.saturating_sub(anchor.completed));
                    measured_pods += 1;
                }
            }
            if history
                .back()
                .is_none_or(|last| last.at.as_secs() != now.as_secs())
            {
                history.push_back(reading);
            }
        }
        self.pods.retain(|name, _| present.contains(name.as_str()));

        if measured_pods == 0 {
            return None;
        }
        // busySecondsTotal also counts the time of requests still running, so busy / completed
        // is the service time only while in-flight work neither grows nor shrinks. On a ramp
        // (1 → 3 arrivals/s at 30 s each) it would read up to 3× too long and triple the pool;
        // the last balanced value is kept instead, and the queue term covers the rest. Dividing
        // by the larger count errs short, never long, within the balance tolerance.
        let (larger, smaller) = (arrived.max(completed), arrived.min(completed));
        let balanced = (larger - smaller) as f64 <= BALANCE_TOLERANCE * larger as f64 + 1.0;
        let service_seconds = busy_seconds / larger as f64;
        // Counters near f64::MAX may sum to infinity: that is no service time.
        if completed > 0 && balanced && service_seconds.is_finite() {
            self.last_service_seconds = Some(service_seconds);
        }
        let mean_service_seconds = self.last_service_seconds?;
        Some(RateEstimate {
            arrivals_per_second,
            mean_service_seconds,
            load: arrivals_per_second * mean_service_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use asyncpool_contract::queue::CONTRACT_VERSION;

    fn snapshot(arrived: u64, completed: u64, busy_seconds: f64) -> QueueSnapshot {
        QueueSnapshot {
            version: CONTRACT_VERSION,
            queued: 0,
            in_flight: 0,
            capacity: 10,
            arrived_total: arrived,
            completed_total: completed,
            busy_seconds_total: busy_seconds,
            oldest_in_flight_seconds: 0.0,
            draining: false,
            scope: Scope::Pod,
        }
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    const SPAN: Duration = Duration::from_secs(6);

    #[test]
    fn little_law_from_counter_deltas() {
        let mut rates = RateTracker::default();
        // 20 arrivals/s, each served in 0.5 s: 10 requests in the app at once.
        let mut estimate = None;
        for t in 0..=10u64 {
            let s = snapshot(20 * t, 20 * t, 10.0 * t as f64);
            estimate = rates.update(secs(t), SPAN, [("a", Some(&s))]);
        }
        let estimate = estimate.unwrap();
        assert!((estimate.arrivals_per_second - 20.0).abs() < 1e-9);
        assert!((estimate.mean_service_seconds - 0.5).abs() < 1e-9);
        assert!((estimate.load - 10.0).abs() < 1e-9);
    }

    #[test]
    fn no_rate_before_a_second_of_history() {
        let mut rates = RateTracker::default();
        let s = snapshot(0, 0, 0.0);
        assert_eq!(rates.update(secs(0), SPAN, [("a", Some(&s))]), None);
        let s = snapshot(5, 5, 1.0);
        let half = Duration::from_millis(500);
        assert_eq!(rates.update(half, SPAN, [("a", Some(&s))]), None);
    }

    #[test]
    fn pods_rates_add_up_and_service_time_is_pooled() {
        let mut rates = RateTracker::default();
        let (a0, b0) = (snapshot(0, 0, 0.0), snapshot(0, 0, 0.0));
        rates.update(secs(0), SPAN, [("a", Some(&a0)), ("b", Some(&b0))]);
        // a: 10 arrivals at 1 s each; b: 30 arrivals at 1/3 s each, over 2 s.
        let (a1, b1) = (snapshot(20, 20, 20.0), snapshot(60, 60, 20.0));
        let e = rates
            .update(secs(2), SPAN, [("a", Some(&a1)), ("b", Some(&b1))])
            .unwrap();
        assert!((e.arrivals_per_second - 40.0).abs() < 1e-9);
        assert!((e.mean_service_seconds - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_counter_reset_skips_that_pod_this_round() {
        let mut rates = RateTracker::default();
        let (a0, b0) = (snapshot(100, 100, 50.0), snapshot(0, 0, 0.0));
        rates.update(secs(0), SPAN, [("a", Some(&a0)), ("b", Some(&b0))]);
        // a restarted: its counters start over. Only b is measured.
        let (a1, b1) = (snapshot(3, 3, 1.0), snapshot(10, 10, 5.0));
        let e = rates
            .update(secs(2), SPAN, [("a", Some(&a1)), ("b", Some(&b1))])
            .unwrap();
        assert!((e.arrivals_per_second - 5.0).abs() < 1e-9);
        // Next round a is measured again from its new baseline.
        let (a2, b2) = (snapshot(13, 13, 6.0), snapshot(20, 20, 10.0));
        let e = rates
            .update(secs(4), SPAN, [("a", Some(&a2)), ("b", Some(&b2))])
            .unwrap();
        assert!((e.arrivals_per_second - 10.0).abs() < 1e-9);
    }

    #[test]
    fn busy_seconds_stepping_back_by_a_rounding_error_is_no_restart() {
        let mut rates = RateTracker::default();
        rates.update(secs(0), SPAN, [("a", Some(&snapshot(0, 0, 0.0)))]);
        rates.update(secs(1), SPAN, [("a", Some(&snapshot(10, 10, 5.000_001)))]);
        let e = rates.update(secs(2), SPAN, [("a", Some(&snapshot(20, 20, 5.0)))]);
        assert!(
            e.is_some_and(|e| (e.arrivals_per_second - 10.0).abs() < 1e-9),
            "{e:?}"
        );
    }

    #[test]
    fn nothing_completed_reuses_the_last_service_time() {
        let mut rates = RateTracker::default();
        rates.update(secs(0), SPAN, [("a", Some(&snapshot(0, 0, 0.0)))]);
        let e = rates
            .update(secs(10), SPAN, [("a", Some(&snapshot(20, 20, 60.0)))])
            .unwrap();
        assert!((e.mean_service_seconds - 3.0).abs() < 1e-9);
        // 10 arrivals/s and none completed since: still sized with 3 s each.
        let e = rates
            .update(secs(20), SPAN, [("a", Some(&snapshot(120, 20, 110.0)))])
            .unwrap();
        assert!((e.mean_service_seconds - 3.0).abs() < 1e-9);
        assert!((e.load - 30.0).abs() < 1e-9);
    }

    #[test]
    fn a_ramp_does_not_inflate_the_service_time() {
        let mut rates = RateTracker::default();
        // 1 arrival/s at 30 s each, then 3/s: completions lag for 30 s while in flight grows.
        let mut arrivals = vec![];
        let (mut arrived, mut busy) = (0u64, 0.0);
        for t in 0..200u64 {
            let per_second = if t < 120 { 1 } else { 3 };
            arrivals.push(per_second);
            arrived += per_second;
            let window = &arrivals[arrivals.len().saturating_sub(30)..];
            let in_flight: u64 = window.iter().sum();
            busy += in_flight as f64;
            let completed = arrived - in_flight;
            let s = snapshot(arrived, completed, busy);
            let e = rates.update(secs(t), SPAN, [("a", Some(&s))]);
            // Within 15 % below (the balance tolerance lets a little ramp in), never above.
            if t >= 40 {
                let e = e.unwrap();
                assert!(e.mean_service_seconds <= 30.0 + 1e-9, "t={t}: {e:?}");
                assert!(e.mean_service_seconds > 25.5, "t={t}: {e:?}");
            }
            if t >= 126 {
                let load = e.unwrap().load;
                assert!(load <= 90.0 + 1e-9 && load > 76.5, "t={t}: {e:?}");
            }
        }
    }

    #[test]
    fn no_service_time_ever_measured_means_no_estimate() {
        let mut rates = RateTracker::default();
        rates.update(secs(0), SPAN, [("a", Some(&snapshot(0, 0, 0.0)))]);
        let s = snapshot(50, 0, 20.0);
        assert_eq!(rates.update(secs(3), SPAN, [("a", Some(&s))]), None);
    }

    #[test]
    fn rates_span_about_one_window_and_forget_departed_pods() {
        let mut rates = RateTracker::default();
        // 1 arrival/s for 30 s, then 10/s: after one span the rate is all new.
        let mut arrived = 0;
        for t in 0..=40u64 {
            arrived += if t <= 30 { 1 } else { 10 };
            let s = snapshot(arrived, arrived, arrived as f64 * 0.1);
            let e = rates.update(secs(t), SPAN, [("a", Some(&s))]);
            if t >= 37 {
                assert!((e.unwrap().arrivals_per_second - 10.0).abs() < 1e-9);
            }
        }
        assert!(rates.pods["a"].len() <= 8);
        // A pod that misses a read keeps its history; one that is gone loses it.
        rates.update(secs(41), SPAN, [("a", None)]);
        assert!(rates.pods.contains_key("a"));
        rates.update(secs(42), SPAN, std::iter::empty());
        assert!(rates.pods.is_empty());
    }

    #[test]
    fn pool_scoped_readings_have_no_rate() {
        let mut rates = RateTracker::default();
        let mut s = snapshot(0, 0, 0.0);
        s.scope = Scope::Pool;
        rates.update(secs(0), SPAN, [("a", Some(&s))]);
        s.arrived_total = 100;
        s.completed_total = 100;
        assert_eq!(rates.update(secs(5), SPAN, [("a", Some(&s))]), None);
    }
}
