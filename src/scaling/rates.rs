//! Arrival rate and mean service time from the sidecars' monotonic counters: the inputs of
//! Little's law. Counters survive a missed read, so a rate is right even across a gap.

use std::borrow::Borrow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
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

/// A time since the scaler started, in whole nanoseconds: half a `Duration`'s size, and every
/// pod's history holds several (at ten thousand pods, a 40-byte reading rather than a 32-byte
/// one is a memory block of the next size for each history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp(u64);

impl Stamp {
    fn of(at: Duration) -> Self {
        Self(u64::try_from(at.as_nanos()).unwrap_or(u64::MAX))
    }

    fn since_start(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    fn whole_seconds(self) -> u64 {
        self.0 / 1_000_000_000
    }
}

/// The counters of one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counters {
    at: Stamp,
    arrived: u64,
    completed: u64,
    busy_seconds: f64,
}

impl Counters {
    fn read(at: Duration, snapshot: &QueueSnapshot) -> Self {
        Self {
            at: Stamp::of(at),
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

/// One pod's readings since it was first read (or since its sidecar restarted): one per second,
/// trimmed to the newest one at or before the window's start, plus the latest.
#[derive(Debug, Clone, PartialEq)]
struct History {
    readings: VecDeque<Counters>,
    latest: Counters,
    /// The last update that listed the pod (`RateTracker::updates`).
    listed_in: u64,
}

impl History {
    fn starting_at(reading: Counters, listed_in: u64) -> Self {
        Self {
            readings: VecDeque::from([reading]),
            latest: reading,
            listed_in,
        }
    }

    fn record(&mut self, mut reading: Counters) {
        // A poll after a paced line may be stamped a little earlier than it; never go back.
        reading.at = reading.at.max(self.latest.at);
        if self.latest.at.whole_seconds() != reading.at.whole_seconds() {
            self.readings.push_back(reading);
        }
        self.latest = reading;
    }

    /// Drops readings older than needed to cover a window starting at `start`.
    fn trim(&mut self, start: Duration) {
        while self
            .readings
            .get(1)
            .is_some_and(|next| next.at.since_start() <= start)
        {
            self.readings.pop_front();
        }
    }

    fn first_at(&self) -> Duration {
        self.readings
            .front()
            .map_or(self.latest.at, |first| first.at)
            .since_start()
    }

    /// Arrivals from `start` to `end` (or to the latest reading, if earlier). The stretches
    /// that straddle either end are counted pro rata: arrivals are assumed even within one
    /// second's stretch.
    fn arrivals_between(&self, start: Duration, end: Duration) -> f64 {
        let mut previous: Option<&Counters> = None;
        let mut arrivals = 0.0;
        for reading in self.readings.iter().chain([&self.latest]) {
            if let Some(earlier) = previous.filter(|earlier| reading.at > earlier.at) {
                let count = reading.arrived.saturating_sub(earlier.arrived) as f64;
                let (reading_at, earlier_at) = (reading.at.since_start(), earlier.at.since_start());
                let stretch = (reading_at - earlier_at).as_secs_f64();
                let inside = reading_at
                    .min(end)
                    .saturating_sub(start.max(earlier_at))
                    .as_secs_f64();
                arrivals += count * (inside / stretch).min(1.0);
            }
            previous = Some(reading);
        }
        arrivals
    }

    /// The counters have not moved since before `start`.
    fn still_since(&self, start: Duration) -> bool {
        let same = |r: &Counters| {
            r.arrived == self.latest.arrived
                && r.completed == self.latest.completed
                && r.busy_seconds == self.latest.busy_seconds
        };
        self.first_at() <= start && self.readings.iter().all(same)
    }

    /// Arrivals, completions and busy seconds from the oldest reading kept to the latest.
    fn deltas(&self) -> (u64, u64, f64) {
        let first = self.readings.front().unwrap_or(&self.latest);
        (
            self.latest.arrived.saturating_sub(first.arrived),
            self.latest.completed.saturating_sub(first.completed),
            (self.latest.busy_seconds - first.busy_seconds).max(0.0),
        )
    }
}

/// Per-pod counter histories over about one panic window. The arrival rate is what the whole
/// pool took in the window: a pod that retired or restarted within it still counts up to its
/// last reading, and a pod first read within it counts from then on (a new pod is read while
/// it starts, before it takes traffic). Summing per-pod rates instead loses the share of every
/// pod that joined or left, which read low after each scale step, recycle and restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct RateTracker {
    pods: BTreeMap<Arc<str>, History>,
    /// Histories of pods gone or restarted, kept while they overlap the window.
    ended: Vec<History>,
    /// The service time measured in the last balanced round, used until the next one.
    last_service_seconds: Option<f64>,
    /// Updates so far: a history not listed in the latest one is a pod that left.
    updates: u64,
}

impl RateTracker {
    /// No counter moved over the last `span` and no pod left within it: every later update on
    /// the same readings returns the same estimate.
    pub(super) fn is_still(&self, now: Duration, span: Duration) -> bool {
        let start = now.saturating_sub(span);
        self.ended.is_empty() && self.pods.values().all(|h| h.still_since(start))
    }

    /// Every pod's counters stood still from its latest reading until `until`.
    pub(super) fn hold_still_until(&mut self, until: Duration) {
        for history in self.pods.values_mut() {
            if until > history.latest.at.since_start() {
                history.record(Counters {
                    at: Stamp::of(until),
                    ..history.latest
                });
            }
        }
    }

    /// Folds in this round's readings (`None` = no usable reading from that pod; each with
    /// how long before `now` its figures were current) and returns the pool's rates measured
    /// over about `span` (over less while the tracker is younger). Only pod-scoped readings
    /// have rates: a pool-wide source has no per-pod counters to add up. A pod that missed one
    /// read keeps its history.
    pub(super) fn update<'a, Name>(
        &mut self,
        now: Duration,
        span: Duration,
        pods: impl IntoIterator<Item = (Name, Option<&'a QueueSnapshot>, Duration)>,
    ) -> Option<RateEstimate>
    where
        Name: Borrow<str> + Ord + Clone + Into<Arc<str>>,
    {
        // Every pod named this round, and where the window ends: where every pod read this
        // round has been heard up to. A paced stream's latest line is up to a pace old (the
        // fleet's lines arrive together, on the clock), and counting to `now` would read every
        // busy pool low by what is not heard yet, or guess it from a young pod's first
        // moments. With no pod read this round, the window ends now and the rate decays with
        // what is known.
        self.updates += 1;
        let this_update = self.updates;
        let mut end: Option<Duration> = None;
        for (name, snapshot, age) in pods {
            let Some(snapshot) = snapshot.filter(|s| s.scope == Scope::Pod) else {
                if let Some(history) = self.pods.get_mut(name.borrow()) {
                    history.listed_in = this_update;
                }
                continue;
            };
            let reading = Counters::read(now.saturating_sub(age), snapshot);
            let heard = match self.pods.get_mut(name.borrow()) {
                Some(history) if reading.went_back_from(&history.latest) => {
                    // The sidecar restarted since its last reading and counted from zero.
                    let restart = Counters {
                        at: history.latest.at,
                        arrived: 0,
                        completed: 0,
                        busy_seconds: 0.0,
                    };
                    let mut after = History::starting_at(restart, this_update);
                    after.record(reading);
                    let heard = after.latest.at.since_start();
                    self.ended.push(std::mem::replace(history, after));
                    heard
                }
                Some(history) => {
                    history.listed_in = this_update;
                    history.record(reading);
                    history.latest.at.since_start()
                }
                None => {
                    let history = History::starting_at(reading, this_update);
                    self.pods.insert(name.into(), history);
                    reading.at.since_start()
                }
            };
            end = Some(end.map_or(heard, |end| end.min(heard)));
        }
        // Usually nobody left (and an empty list allocates nothing).
        let gone: Vec<Arc<str>> = self
            .pods
            .iter()
            .filter(|(_, history)| history.listed_in != this_update)
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.ended.extend(self.pods.remove(&name));
        }

        let end = end.unwrap_or(now);
        let window_start = end.saturating_sub(span);
        self.ended
            .retain(|history| history.latest.at.since_start() > window_start);
        for history in self.pods.values_mut().chain(&mut self.ended) {
            history.trim(window_start);
        }
        let histories = || self.pods.values().chain(&self.ended);
        let oldest = histories().map(History::first_at).min()?;
        let start = window_start.max(oldest);
        let measured = end.saturating_sub(start);
        if measured < MIN_RATE_SPAN {
            return None;
        }
        let arrivals: f64 = histories().map(|h| h.arrivals_between(start, end)).sum();
        let arrivals_per_second = arrivals / measured.as_secs_f64();

        let (mut arrived, mut completed, mut busy_seconds) = (0u64, 0u64, 0.0);
        for (a, c, b) in histories().map(History::deltas) {
            arrived = arrived.saturating_add(a);
            completed = completed.saturating_add(c);
            busy_seconds += b;
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
    fn a_reading_fits_a_histories_block() {
        // Seven or eight readings a history (a panic window of 6 s, one a second): 32 bytes
        // each make a 256-byte block per pod, 40 a 320-byte one.
        assert!(std::mem::size_of::<Counters>() <= 32);
        let at = Duration::from_millis(2_500);
        assert_eq!(Stamp::of(at).since_start(), at);
        assert_eq!(Stamp::of(at).whole_seconds(), 2);
    }

    #[test]
    fn little_law_from_counter_deltas() {
        let mut rates = RateTracker::default();
        // 20 arrivals/s, each served in 0.5 s: 10 requests in the app at once.
        let mut estimate = None;
        for t in 0..=10u64 {
            let s = snapshot(20 * t, 20 * t, 10.0 * t as f64);
            estimate = rates.update(secs(t), SPAN, [("a", Some(&s), Duration::ZERO)]);
        }
        let estimate = estimate.unwrap();
        assert!((estimate.arrivals_per_second - 20.0).abs() < 1e-9);
        assert!((estimate.mean_service_seconds - 0.5).abs() < 1e-9);
        assert!((estimate.load - 10.0).abs() < 1e-9);
    }

    /// A paced stream writes a busy pod's counters on whole multiples of its pace on the clock
    /// (and once at once when the reader connects), out of step with the decisions. Each
    /// reading counts at its own time and the window ends at the latest one. Stamped with the
    /// decision's time instead, a pace of 2 s read 0 and then twice the rate on alternate
    /// seconds; with the window ending at the decision and the unheard part guessed from a
    /// young tracker's first 50 ms, a 1 s pace read 1.2 of 20/s: a new leader's first
    /// estimates told it to shrink a busy pool.
    #[test]
    fn paced_readings_count_at_their_own_time_from_the_first_estimate() {
        // Each pace under the default window, and under the shortest one, a second.
        let cases = [250u64, 700, 1_000, 1_500, 2_000]
            .map(|pace| (pace, SPAN))
            .into_iter()
            .chain([250u64, 700, 1_000].map(|pace| (pace, Duration::from_secs(1))));
        for (pace_ms, span) in cases {
            let pace = Duration::from_millis(pace_ms);
            // When the reader connects, and when the decisions come within each second.
            for (connect_ms, phase_ms) in [(0, 0), (50, 990), (300, 370), (600, 990), (950, 990)] {
                let connect = Duration::from_millis(connect_ms);
                let mut rates = RateTracker::default();
                let mut estimates = Vec::new();
                for t in 0..40u64 {
                    let now = secs(t) + Duration::from_millis(phase_ms);
                    if now < connect {
                        continue;
                    }
                    // The latest line by `now`: the first at connect, then on the clock.
                    let tick = pace * u32::try_from(now.as_millis() / pace.as_millis()).unwrap();
                    let line = tick.max(connect);
                    let x = line.as_secs_f64();
                    // 20 arrivals/s of 0.5 s each, counted when the line was written.
                    let arrived = (1_000.0 + 20.0 * x).round() as u64;
                    let s = snapshot(arrived, arrived, 10.0 * x);
                    let age = (now - line).min(pace);
                    let e = rates.update(now, span, [("a", Some(&s), age)]);
                    estimates.push((now, e.map(|e| e.arrivals_per_second)));
                }
                let first = estimates
                    .iter()
                    .position(|(_, e)| e.is_some())
                    .expect("an estimate");
                // A rate once a second has been heard since the first decision's reading (up
                // to a pace old), at the decision after that.
                let (first_decision, first_at) = (estimates[0].0, estimates[first].0);
                assert!(
                    first_at <= first_decision + pace + MIN_RATE_SPAN + secs(1),
                    "pace {pace:?}: first estimate at {first_at:?}: {estimates:.2?}"
                );
                for (now, e) in &estimates[first..] {
                    let e = e.unwrap_or_else(|| panic!("pace {pace:?}: no estimate at {now:?}"));
                    assert!(
                        e > 19.0 && e < 21.0,
                        "pace {pace:?}, window {span:?}, connected at {connect:?}: \
                         {e:.2} of 20/s at {now:?}: {estimates:.2?}"
                    );
                }
            }
        }
    }

    #[test]
    fn no_rate_before_a_second_of_history() {
        let mut rates = RateTracker::default();
        let s = snapshot(0, 0, 0.0);
        assert_eq!(
            rates.update(secs(0), SPAN, [("a", Some(&s), Duration::ZERO)]),
            None
        );
        let s = snapshot(5, 5, 1.0);
        let half = Duration::from_millis(500);
        assert_eq!(
            rates.update(half, SPAN, [("a", Some(&s), Duration::ZERO)]),
            None
        );
    }

    #[test]
    fn pods_rates_add_up_and_service_time_is_pooled() {
        let mut rates = RateTracker::default();
        let (a0, b0) = (snapshot(0, 0, 0.0), snapshot(0, 0, 0.0));
        rates.update(
            secs(0),
            SPAN,
            [
                ("a", Some(&a0), Duration::ZERO),
                ("b", Some(&b0), Duration::ZERO),
            ],
        );
        // a: 10 arrivals at 1 s each; b: 30 arrivals at 1/3 s each, over 2 s.
        let (a1, b1) = (snapshot(20, 20, 20.0), snapshot(60, 60, 20.0));
        let e = rates
            .update(
                secs(2),
                SPAN,
                [
                    ("a", Some(&a1), Duration::ZERO),
                    ("b", Some(&b1), Duration::ZERO),
                ],
            )
            .unwrap();
        assert!((e.arrivals_per_second - 40.0).abs() < 1e-9);
        assert!((e.mean_service_seconds - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_restarted_sidecar_counts_from_zero_since_its_last_reading() {
        let mut rates = RateTracker::default();
        let (a0, b0) = (snapshot(100, 100, 50.0), snapshot(0, 0, 0.0));
        rates.update(
            secs(0),
            SPAN,
            [
                ("a", Some(&a0), Duration::ZERO),
                ("b", Some(&b0), Duration::ZERO),
            ],
        );
        // a restarted: its counters start over, and its 3 arrivals came after its last reading.
        let (a1, b1) = (snapshot(3, 3, 1.0), snapshot(10, 10, 5.0));
        let e = rates
            .update(
                secs(2),
                SPAN,
                [
                    ("a", Some(&a1), Duration::ZERO),
                    ("b", Some(&b1), Duration::ZERO),
                ],
            )
            .unwrap();
        assert!((e.arrivals_per_second - 6.5).abs() < 1e-9, "{e:?}");
        let (a2, b2) = (snapshot(13, 13, 6.0), snapshot(20, 20, 10.0));
        let e = rates
            .update(
                secs(4),
                SPAN,
                [
                    ("a", Some(&a2), Duration::ZERO),
                    ("b", Some(&b2), Duration::ZERO),
                ],
            )
            .unwrap();
        assert!((e.arrivals_per_second - 33.0 / 4.0).abs() < 1e-9, "{e:?}");
        assert!((e.mean_service_seconds - 16.0 / 33.0).abs() < 1e-9, "{e:?}");
    }

    #[test]
    fn busy_seconds_stepping_back_by_a_rounding_error_is_no_restart() {
        let mut rates = RateTracker::default();
        rates.update(
            secs(0),
            SPAN,
            [("a", Some(&snapshot(0, 0, 0.0)), Duration::ZERO)],
        );
        rates.update(
            secs(1),
            SPAN,
            [("a", Some(&snapshot(10, 10, 5.000_001)), Duration::ZERO)],
        );
        let e = rates.update(
            secs(2),
            SPAN,
            [("a", Some(&snapshot(20, 20, 5.0)), Duration::ZERO)],
        );
        assert!(
            e.is_some_and(|e| (e.arrivals_per_second - 10.0).abs() < 1e-9),
            "{e:?}"
        );
    }

    #[test]
    fn nothing_completed_reuses_the_last_service_time() {
        let mut rates = RateTracker::default();
        rates.update(
            secs(0),
            SPAN,
            [("a", Some(&snapshot(0, 0, 0.0)), Duration::ZERO)],
        );
        let e = rates
            .update(
                secs(10),
                SPAN,
                [("a", Some(&snapshot(20, 20, 60.0)), Duration::ZERO)],
            )
            .unwrap();
        assert!((e.mean_service_seconds - 3.0).abs() < 1e-9);
        // 10 arrivals/s and none completed since: still sized with 3 s each.
        let e = rates
            .update(
                secs(20),
                SPAN,
                [("a", Some(&snapshot(120, 20, 110.0)), Duration::ZERO)],
            )
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
            let e = rates.update(secs(t), SPAN, [("a", Some(&s), Duration::ZERO)]);
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
        rates.update(
            secs(0),
            SPAN,
            [("a", Some(&snapshot(0, 0, 0.0)), Duration::ZERO)],
        );
        let s = snapshot(50, 0, 20.0);
        assert_eq!(
            rates.update(secs(3), SPAN, [("a", Some(&s), Duration::ZERO)]),
            None
        );
    }

    #[test]
    fn rates_span_about_one_window_and_forget_departed_pods() {
        let mut rates = RateTracker::default();
        // 1 arrival/s for 30 s, then 10/s: after one span the rate is all new.
        let mut arrived = 0;
        for t in 0..=40u64 {
            arrived += if t <= 30 { 1 } else { 10 };
            let s = snapshot(arrived, arrived, arrived as f64 * 0.1);
            let e = rates.update(secs(t), SPAN, [("a", Some(&s), Duration::ZERO)]);
            if t >= 37 {
                assert!((e.unwrap().arrivals_per_second - 10.0).abs() < 1e-9);
            }
        }
        assert!(rates.pods["a"].readings.len() <= 8);
        // A pod that misses a read keeps its history; one that is gone loses it.
        rates.update(secs(41), SPAN, [("a", None, Duration::ZERO)]);
        assert!(rates.pods.contains_key("a"));
        rates.update(secs(42), SPAN, std::iter::empty::<(&str, _, _)>());
        assert!(rates.pods.is_empty());
    }

    #[test]
    fn a_pod_gone_is_forgotten_whatever_else_the_round_names() {
        let read = |rates: &mut RateTracker, t: u64, pods: &[(&str, bool)]| {
            let s = snapshot(t, t, 0.0);
            let named: Vec<_> = pods
                .iter()
                .map(|(name, read)| (*name, read.then_some(&s), Duration::ZERO))
                .collect();
            rates.update(secs(t), SPAN, named);
        };
        let mut rates = RateTracker::default();
        read(&mut rates, 0, &[("a", true), ("c", true)]);
        // As many names as histories, in order, but b was never read and c is gone.
        read(&mut rates, 1, &[("a", true), ("b", false)]);
        assert_eq!(
            rates.pods.keys().map(|k| &**k).collect::<Vec<_>>(),
            ["a"],
            "c is gone"
        );
        // Out of order: d joins, and a is gone.
        read(&mut rates, 2, &[("e", true), ("d", true)]);
        read(&mut rates, 3, &[("e", true), ("d", true)]);
        assert_eq!(
            rates.pods.keys().map(|k| &**k).collect::<Vec<_>>(),
            ["d", "e"]
        );
        // Named twice (no index does that): a name counts once.
        read(&mut rates, 4, &[("d", true), ("d", true)]);
        assert_eq!(rates.pods.keys().map(|k| &**k).collect::<Vec<_>>(), ["d"]);
    }

    /// Drives three pods sharing `total` arrivals a second evenly (0.5 s each) for 20 s, then
    /// changes the set as `change` says, and returns the estimates of every round after it.
    fn across_a_change(
        total: u64,
        change: impl Fn(u64) -> Vec<&'static str>,
    ) -> Vec<(u64, Option<RateEstimate>)> {
        let mut rates = RateTracker::default();
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        let mut after = vec![];
        for t in 0..=40u64 {
            let serving = change(t);
            // A new pod is read before it takes traffic (it is listed while it starts).
            let taking = serving.iter().filter(|p| counts.contains_key(*p)).count();
            let mut readings = vec![];
            for pod in &serving {
                let count = match counts.get_mut(pod) {
                    Some(count) => {
                        *count += total / taking as u64;
                        *count
                    }
                    None => *counts.entry(pod).or_default(),
                };
                readings.push((*pod, snapshot(count, count, count as f64 * 0.5)));
            }
            let e = rates.update(
                secs(t),
                SPAN,
                readings.iter().map(|(p, s)| (*p, Some(s), Duration::ZERO)),
            );
            if t >= 20 {
                after.push((t, e));
            }
        }
        after
    }

    fn assert_steady(total: f64, estimates: &[(u64, Option<RateEstimate>)]) {
        for (t, e) in estimates {
            let e = e.unwrap_or_else(|| panic!("t={t}: no estimate"));
            let off = (e.arrivals_per_second - total).abs() / total;
            assert!(off <= 0.05, "t={t}: {e:?}, {total}/s arrive");
        }
    }

    #[test]
    fn a_worker_that_retires_takes_no_arrivals_with_it() {
        // c drains and goes at 20 s; a and b take its share from then on.
        let estimates = across_a_change(30, |t| {
            if t < 20 {
                vec!["a", "b", "c"]
            } else {
                vec!["a", "b"]
            }
        });
        assert_steady(30.0, &estimates);
    }

    #[test]
    fn a_worker_that_joins_is_counted_from_its_first_reading() {
        // c starts at 20 s with its counters at zero and takes a third from then on.
        let estimates = across_a_change(30, |t| {
            if t < 20 {
                vec!["a", "b"]
            } else {
                vec!["a", "b", "c"]
            }
        });
        assert_steady(30.0, &estimates);
    }

    #[test]
    fn a_replaced_worker_leaves_the_rate_whole() {
        // Recycling: c goes and d comes in the same round.
        let estimates = across_a_change(30, |t| {
            if t < 20 {
                vec!["a", "b", "c"]
            } else {
                vec!["a", "b", "d"]
            }
        });
        assert_steady(30.0, &estimates);
    }

    #[test]
    fn pool_scoped_readings_have_no_rate() {
        let mut rates = RateTracker::default();
        let mut s = snapshot(0, 0, 0.0);
        s.scope = Scope::Pool;
        rates.update(secs(0), SPAN, [("a", Some(&s), Duration::ZERO)]);
        s.arrived_total = 100;
        s.completed_total = 100;
        assert_eq!(
            rates.update(secs(5), SPAN, [("a", Some(&s), Duration::ZERO)]),
            None
        );
    }
}
