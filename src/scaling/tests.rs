//! Table tests, scenarios and properties of the scaling policy as a whole.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use asyncpool_contract::queue::{QueueSnapshot, Scope};

fn secs(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds)
}

fn snapshot(queued: u64, in_flight: u64) -> QueueSnapshot {
    QueueSnapshot::of_pod(queued, in_flight)
}

fn pod(name: &str, load: u64) -> PodReading {
    PodReading {
        name: name.into(),
        snapshot: Some(snapshot(0, load)),
        age: Duration::ZERO,
        unread: false,
        ready: true,
    }
}

fn silent(name: &str) -> PodReading {
    PodReading {
        name: name.into(),
        snapshot: None,
        age: Duration::ZERO,
        unread: false,
        ready: true,
    }
}

/// `replicas` ready pods sharing `load` as evenly as whole requests allow.
fn pool(replicas: u32, load: u64) -> Vec<PodReading> {
    let n = u64::from(replicas);
    (0..n)
        .map(|i| pod(&format!("p{i}"), load / n + u64::from(i < load % n)))
        .collect()
}

fn observe(now: f64, current_replicas: u32, pods: Vec<PodReading>) -> Observation {
    Observation {
        now: secs(now),
        current_replicas,
        pods,
        external: ExternalReading::NotConfigured,
    }
}

/// The defaults, but for a target of 10 per worker and a 60 s scale-down delay, round figures
/// that the tables below are written in.
fn policy(max_replicas: u32) -> Policy {
    Policy {
        max_replicas,
        target_per_worker: 10.0,
        scale_down_delay: Duration::from_secs(60),
        ..Policy::default()
    }
}

/// A pool whose Deployment follows every decision at once, its load spread over its pods.
struct Pool {
    policy: Policy,
    scaler: Scaler,
    replicas: u32,
    now: f64,
}

impl Pool {
    fn new(policy: Policy, replicas: u32) -> Self {
        Self {
            policy,
            scaler: Scaler::new(Duration::ZERO, replicas),
            replicas,
            now: 0.0,
        }
    }

    fn step(&mut self, load: u64) -> Decision {
        self.step_with(load, |pods| pods)
    }

    fn step_with(
        &mut self,
        load: u64,
        edit: impl FnOnce(Vec<PodReading>) -> Vec<PodReading>,
    ) -> Decision {
        self.now += 1.0;
        let pods = edit(pool(self.replicas, load));
        let decision = self
            .scaler
            .decide(&self.policy, &observe(self.now, self.replicas, pods));
        self.replicas = decision.replicas;
        decision
    }

    /// One decision per second for `seconds` seconds at a constant load.
    fn run(&mut self, seconds: u32, load: u64) -> Vec<Decision> {
        (0..seconds).map(|_| self.step(load)).collect()
    }
}

// ---------------------------------------------------------------- table tests, rule by rule

#[test]
fn steady_load_at_target_holds() {
    let mut pool = Pool::new(policy(10), 4);
    for decision in pool.run(180, 40) {
        assert_eq!(decision.replicas, 4);
        assert_eq!(decision.kind, DecisionKind::Hold);
        assert!(!decision.changed);
        assert_eq!(decision.metrics, MetricsState::Available);
    }
}

#[test]
fn the_reason_states_the_figures() {
    let mut scaler = Scaler::new(Duration::ZERO, 5);
    let decision = scaler.decide(&policy(10), &observe(0.0, 5, pool(5, 57)));
    assert_eq!(decision.replicas, 6);
    assert_eq!(
        decision.reason,
        "load 57 (60 s mean) / 10 per worker = 5.7 workers → 6; scaling up 5 → 6"
    );
    assert_eq!(decision.kind, DecisionKind::ScaleUp);
    assert_eq!(decision.kind.as_str(), "scale_up");
    assert_eq!(decision.load, 57.0);
    assert_eq!(decision.observed_load, Some(57.0));
    assert!(decision.changed);
}

#[test]
fn tolerance_holds_off_small_scale_downs_but_not_scale_ups() {
    // Up: any excess adds a worker (one too few makes requests wait).
    let mut scaler = Scaler::new(Duration::ZERO, 10);
    let up = scaler.decide(&policy(20), &observe(0.0, 10, pool(10, 105)));
    assert_eq!((up.replicas, up.kind), (11, DecisionKind::ScaleUp));
    let mut scaler = Scaler::new(Duration::ZERO, 10);
    let held = scaler.decide(&policy(20), &observe(0.0, 10, pool(10, 100)));
    assert_eq!((held.replicas, held.kind), (10, DecisionKind::Hold));

    // Down: 10 % under target (9 whole workers) holds for good, 15 % under scales down.
    let mut pool_a = Pool::new(policy(20), 10);
    pool_a.run(60, 100);
    let calm = pool_a.run(300, 90);
    assert!(calm.iter().all(|d| d.replicas == 10));
    assert!(
        calm.iter().any(|d| d.reason.contains("within 10 % of 10")),
        "{}",
        calm[calm.len() - 1].reason
    );
    let mut pool_b = Pool::new(policy(20), 10);
    pool_b.run(60, 100);
    assert_eq!(pool_b.run(300, 85).last().map(|d| d.replicas), Some(9));
}

#[test]
fn steady_growth_scales_up_in_stable_mode() {
    let mut scaler = Scaler::new(Duration::ZERO, 2);
    let decision = scaler.decide(&policy(10), &observe(0.0, 2, pool(2, 30)));
    assert_eq!(decision.replicas, 3);
    assert_eq!(decision.mode, Mode::Stable);
    assert_eq!(decision.mode.as_str(), "stable");
}

#[test]
fn a_burst_enters_panic_and_is_met_within_the_panic_window() {
    let mut pool = Pool::new(policy(20), 2);
    pool.run(60, 20);
    let burst = pool.run(6, 200);
    // Reaction on the first decision after the burst, in panic.
    assert!(burst[0].replicas > 2, "{:?}", burst[0]);
    assert_eq!(burst[0].mode, Mode::Panic);
    assert!(
        burst[0]
            .reason
            .starts_with("panic: the 6 s load needs ≥ 2 × the 2 ready workers"),
        "{}",
        burst[0].reason
    );
    // The full size within the panic window.
    assert_eq!(burst.last().map(|d| d.replicas), Some(20));
    assert!(burst.windows(2).all(|w| w[1].replicas >= w[0].replicas));
}

#[test]
fn panic_holds_the_burst_for_a_panic_window_then_what_lasts_decides() {
    let mut policy = policy(20);
    policy.scale_down_delay = Duration::ZERO; // isolate panic from stabilization
    let mut pool = Pool::new(policy, 2);
    pool.run(60, 20);
    let burst = pool.run(10, 200); // over the threshold on its first seconds only
    assert_eq!(burst.last().map(|d| d.replicas), Some(20));
    let calm = pool.run(120, 20);
    // Panic ends a panic window after the last second over the threshold, and the burst's
    // size holds through it.
    let in_panic: Vec<_> = calm.iter().take_while(|d| d.mode == Mode::Panic).collect();
    assert!(in_panic.len() <= 6, "{}", in_panic.len());
    assert!(in_panic.iter().all(|d| d.replicas == 20));
    // Then what lasts decides: the stable mean still holds the burst's minute, so the pool
    // comes down as it empties, not at once and not a minute later.
    let stable: Vec<_> = calm.iter().skip(in_panic.len()).collect();
    assert!(stable.iter().all(|d| d.mode == Mode::Stable));
    let first_down = calm
        .iter()
        .position(|d| d.replicas < 20)
        .unwrap_or(usize::MAX);
    assert!(first_down <= 10, "first scale-down after {first_down} s");
    assert!(calm.windows(2).all(|w| w[1].replicas <= w[0].replicas));
    assert_eq!(calm.last().map(|d| d.replicas), Some(2));
}

#[test]
fn a_dip_shorter_than_the_stabilization_window_does_nothing() {
    let mut pool = Pool::new(policy(20), 10);
    pool.run(120, 100);
    let dip = pool.run(40, 10);
    assert!(dip.iter().all(|d| d.replicas == 10));
    assert!(dip.iter().any(|d| d.kind == DecisionKind::Stabilizing));
    assert!(dip.iter().any(|d| {
        d.reason
            .contains("the highest recommendation in the last 60 s is 10")
    }));
    assert!(pool.run(60, 100).iter().all(|d| d.replicas == 10));
}

#[test]
fn scale_down_follows_the_highest_recommendation_of_the_delay() {
    let mut pool = Pool::new(policy(20), 10);
    pool.run(120, 100);
    let calm = pool.run(180, 0);
    let first_down = calm
        .iter()
        .position(|d| d.replicas < 10)
        .unwrap_or(usize::MAX);
    // Recommendations fall below 10 about 7 s into the calm (stable mean ≤ 90), and the
    // highest of the last 60 s holds until those 60 s are all below 10.
    assert!(
        (60..=70).contains(&first_down),
        "first scale-down after {first_down} s"
    );
    assert_eq!(calm.last().map(|d| d.replicas), Some(1));
    assert!(calm.windows(2).all(|w| w[1].replicas <= w[0].replicas));
}

#[test]
fn a_gap_in_decisions_neither_drops_the_peak_nor_cuts_the_delay_short() {
    // Short windows as the cluster tests use them; decisions stop for almost 5 s (a reconcile
    // held up by a slow API server) while the load falls from 500 to 0.
    let policy = Policy {
        max_replicas: 6,
        target_per_worker: 10.0,
        stable_window: Duration::from_secs(4),
        panic_window: Duration::from_secs(1),
        scale_down_delay: Duration::from_secs(3),
        ..Policy::default()
    };
    let mut scaler = Scaler::new(Duration::ZERO, 6);
    let mut replicas = 6;
    let mut decide = |now: f64, load: u64, replicas: &mut u32| {
        let decision = scaler.decide(&policy, &observe(now, *replicas, pool(*replicas, load)));
        *replicas = decision.replicas;
        decision
    };
    for tenth in 0..110 {
        decide(f64::from(tenth) / 10.0 + 0.2, 500, &mut replicas);
    }
    assert_eq!(replicas, 6);
    // The first decision after the gap sees the load at 0.
    let calm = 15.9;
    let mut first_down = None;
    for tenth in 0..200 {
        let now = calm + f64::from(tenth) / 10.0;
        let decision = decide(now, 0, &mut replicas);
        if decision.replicas < 6 && first_down.is_none() {
            first_down = Some(now - calm);
        }
    }
    // The held seconds keep the stable mean up until they leave the 4 s window, and the
    // recommendations then wait out the 3 s delay, as they would have without the gap.
    let first_down = first_down.expect("the pool scaled down");
    assert!(
        first_down >= 3.0,
        "scaled down {first_down:.1} s after the calm"
    );
    assert_eq!(replicas, 1);
}

#[test]
fn scale_up_grows_at_most_tenfold_per_second_however_often_decisions_come() {
    let policy = policy(1000);
    let mut scaler = Scaler::new(Duration::ZERO, 1);
    let mut replicas = 1;
    let mut seen = vec![];
    for tenth in 0..30 {
        let now = f64::from(tenth) / 10.0;
        let d = scaler.decide(&policy, &observe(now, replicas, vec![pod("a", 100_000)]));
        replicas = d.replicas;
        seen.push((now, replicas));
    }
    for (now, replicas) in seen {
        let expected = match now {
            t if t < 1.0 => 10,
            t if t < 2.0 => 100,
            _ => 1000,
        };
        assert_eq!(replicas, expected, "at {now} s");
    }
}

#[test]
fn small_pools_grow_by_at_least_four_per_second() {
    let mut scaler = Scaler::new(Duration::ZERO, 0);
    let policy = Policy {
        min_replicas: 0,
        max_replicas: 50,
        max_scale_up_rate: 2.0,
        ..Policy::default()
    };
    let obs = Observation {
        external: ExternalReading::Reading(snapshot(400, 0)),
        ..observe(0.0, 0, vec![])
    };
    assert_eq!(scaler.decide(&policy, &obs).replicas, 4);
}

#[test]
fn scale_down_halves_at_most_once_per_second_however_often_decisions_come() {
    let policy = Policy {
        max_replicas: 64,
        stable_window: secs(2.0),
        panic_window: secs(1.0),
        scale_down_delay: Duration::ZERO,
        ..Policy::default()
    };
    let mut scaler = Scaler::new(Duration::ZERO, 64);
    let mut replicas = 64;
    let mut seen = vec![];
    for tenth in 0..100 {
        let now = f64::from(tenth) / 10.0;
        let load = if now < 3.0 { 640 } else { 0 };
        let d = scaler.decide(&policy, &observe(now, replicas, pool(replicas, load)));
        replicas = d.replicas;
        seen.push((now, replicas));
    }
    for (now, replicas) in &seen {
        // Each size is at least half the largest size of the second before.
        let floor = seen
            .iter()
            .filter(|(then, _)| then < now && now - then < 1.0 - 1e-9)
            .map(|(_, r)| r / 2)
            .max()
            .unwrap_or(0);
        assert!(*replicas >= floor, "at {now} s: {replicas} < {floor}");
    }
    assert_eq!(seen.last().map(|(_, r)| *r), Some(1));
}

#[test]
fn min_and_max_always_apply() {
    let bounded = Policy {
        min_replicas: 2,
        max_replicas: 20,
        ..Policy::default()
    };
    // Above max, even with load that fits and a fresh scaler that would not scale down.
    let mut scaler = Scaler::new(Duration::ZERO, 30);
    let d = scaler.decide(&bounded, &observe(0.0, 30, pool(30, 300)));
    assert_eq!((d.replicas, d.kind), (20, DecisionKind::Clamped));
    assert!(
        d.reason.contains("capped at the maximum 20"),
        "{}",
        d.reason
    );
    // Below min, with nothing to read.
    let mut scaler = Scaler::new(Duration::ZERO, 0);
    let d = scaler.decide(&bounded, &observe(0.0, 0, vec![]));
    assert_eq!((d.replicas, d.kind), (2, DecisionKind::Clamped));
    assert!(d.reason.contains("raised to the minimum 2"), "{}", d.reason);
    // Load beyond max.
    let mut scaler = Scaler::new(Duration::ZERO, 19);
    let d = scaler.decide(&bounded, &observe(0.0, 19, pool(19, 1000)));
    assert_eq!((d.replicas, d.kind), (20, DecisionKind::Clamped));
}

#[test]
fn partial_data_never_scales_down() {
    let mut pool = Pool::new(policy(20), 10);
    pool.run(120, 100);
    // The load vanishes but one pod stops answering: no scale-down, however long.
    let partial = (0..300)
        .map(|_| {
            pool.step_with(0, |mut pods| {
                pods[3] = silent("p3");
                pods
            })
        })
        .collect::<Vec<_>>();
    assert!(partial.iter().all(|d| d.replicas == 10));
    assert_eq!(partial[0].metrics, MetricsState::Partial { missing: 1 });
    assert_eq!(partial[0].metrics.as_str(), "partial");
    let last = partial.last().map(|d| (d.kind, d.reason.clone()));
    assert_eq!(
        last.as_ref().map(|(kind, _)| *kind),
        Some(DecisionKind::MissingData)
    );
    assert!(
        last.is_some_and(|(_, reason)| reason.contains("1 of 10 sources gave no reading")),
        "{partial:?}"
    );
    // Once every pod answers again, scale-down waits for a full window of complete data.
    let recovered = pool.run(120, 0);
    let first_down = recovered.iter().position(|d| d.replicas < 10);
    assert_eq!(first_down, Some(59), "{:?}", &recovered[55..62]);
    assert_eq!(recovered[0].kind, DecisionKind::Stabilizing);
}

#[test]
fn partial_data_may_scale_up_on_the_load_it_has() {
    let mut scaler = Scaler::new(Duration::ZERO, 4);
    scaler.decide(&policy(20), &observe(0.0, 4, pool(4, 40)));
    let pods = vec![pod("p0", 60), pod("p1", 60), pod("p2", 60), silent("p3")];
    let d = scaler.decide(&policy(20), &observe(1.0, 4, pods));
    assert_eq!(d.metrics, MetricsState::Partial { missing: 1 });
    assert_eq!(d.observed_load, Some(180.0));
    assert_eq!((d.replicas, d.kind), (18, DecisionKind::ScaleUp));
}

#[test]
fn silence_holds_then_falls_back_and_never_lowers() {
    let with_fallback = Policy {
        fallback_replicas: Some(6),
        ..policy(20)
    };
    let silent_pods = || vec![silent("a"), silent("b"), silent("c")];

    let mut scaler = Scaler::new(secs(100.0), 3);
    // Seen ready and silent for the first time: starting, but the grace runs from here.
    let d = scaler.decide(&with_fallback, &observe(100.0, 3, silent_pods()));
    assert_eq!((d.replicas, d.kind), (3, DecisionKind::MissingData));
    assert_eq!(
        d.metrics,
        MetricsState::Awaiting {
            since: secs(100.0),
            starting: 3
        }
    );
    assert!(
        d.reason.contains("fallback to 6 after 10 s"),
        "{}",
        d.reason
    );
    let d = scaler.decide(&with_fallback, &observe(109.0, 3, silent_pods()));
    assert_eq!(d.replicas, 3);
    assert_eq!(d.metrics, MetricsState::Missing { since: secs(100.0) });
    let d = scaler.decide(&with_fallback, &observe(110.0, 3, silent_pods()));
    assert_eq!((d.replicas, d.kind), (6, DecisionKind::Fallback));
    assert_eq!(d.observed_load, None);
    assert!(d.reason.contains("fallback to 6"), "{}", d.reason);

    // A pool larger than the fallback keeps its size.
    let mut scaler = Scaler::new(Duration::ZERO, 8);
    scaler.decide(&with_fallback, &observe(0.0, 8, silent_pods()));
    let d = scaler.decide(&with_fallback, &observe(60.0, 8, silent_pods()));
    assert_eq!((d.replicas, d.kind), (8, DecisionKind::Fallback));
    assert!(d.reason.contains("never scales down"), "{}", d.reason);

    // Without a fallback the size holds.
    let mut scaler = Scaler::new(Duration::ZERO, 3);
    scaler.decide(&policy(20), &observe(0.0, 3, silent_pods()));
    let d = scaler.decide(&policy(20), &observe(60.0, 3, silent_pods()));
    assert_eq!((d.replicas, d.kind), (3, DecisionKind::MissingData));
    assert!(
        d.reason.contains("no fallback is configured"),
        "{}",
        d.reason
    );
}

#[test]
fn recovery_after_silence_resumes_and_scales_down_only_after_a_full_window() {
    let policy = Policy {
        fallback_replicas: Some(6),
        ..policy(20)
    };
    let mut pool = Pool::new(policy, 2);
    pool.run(60, 20);
    let silence = (0..30)
        .map(|_| pool.step_with(20, |pods| pods.iter().map(|p| silent(&p.name)).collect()))
        .collect::<Vec<_>>();
    assert_eq!(silence.last().map(|d| d.replicas), Some(6));
    let recovered = pool.run(200, 20);
    assert_eq!(recovered[0].metrics, MetricsState::Available);
    assert_eq!(recovered[0].replicas, 6);
    let first_down = recovered.iter().position(|d| d.replicas < 6);
    assert_eq!(first_down, Some(59));
    assert_eq!(recovered.last().map(|d| d.replicas), Some(2));
}

#[test]
fn paused_holds_whatever_the_load_and_the_bounds() {
    let paused = Policy {
        paused: true,
        ..policy(20)
    };
    let mut scaler = Scaler::new(Duration::ZERO, 30);
    let d = scaler.decide(&paused, &observe(0.0, 30, pool(30, 5000)));
    assert_eq!((d.replicas, d.kind), (30, DecisionKind::Paused));
    assert_eq!(d.reason, "paused: holding 30");
    assert_eq!(d.load, 5000.0);
    assert!(!d.changed);
}

#[test]
fn an_invalid_policy_holds_and_says_why() {
    let invalid = Policy {
        target_per_worker: f64::NAN,
        ..Policy::default()
    };
    let mut scaler = Scaler::new(Duration::ZERO, 3);
    let d = scaler.decide(&invalid, &observe(0.0, 3, pool(3, 500)));
    assert_eq!((d.replicas, d.kind), (3, DecisionKind::InvalidPolicy));
    assert!(d.reason.contains("target_per_worker"), "{}", d.reason);
    // Fixed: scale-up at once, scale-down only after a full window.
    let d = scaler.decide(&Policy::default(), &observe(1.0, 3, pool(3, 500)));
    assert_eq!(d.replicas, 10);
}

#[test]
fn validate_refuses_each_bad_field_in_words() {
    type Edit = fn(&mut Policy);
    let cases: [(&str, Edit, &str); 16] = [
        (
            "max zero",
            |p| p.max_replicas = 0,
            "max_replicas must be at least 1",
        ),
        (
            "min above max",
            |p| p.min_replicas = 11,
            "min_replicas (11) is above max_replicas (10)",
        ),
        (
            "no concurrency",
            |p| p.concurrency = 0,
            "concurrency must be at least 1",
        ),
        (
            "zero target",
            |p| p.target_per_worker = 0.0,
            "target_per_worker must be a finite number above 0, got 0",
        ),
        (
            "infinite target",
            |p| p.target_per_worker = f64::INFINITY,
            "target_per_worker",
        ),
        (
            "threshold of 1",
            |p| p.panic_threshold = 1.0,
            "panic_threshold must be a finite number above 1",
        ),
        (
            "up rate of 1",
            |p| p.max_scale_up_rate = 1.0,
            "max_scale_up_rate",
        ),
        (
            "NaN down rate",
            |p| p.max_scale_down_rate = f64::NAN,
            "max_scale_down_rate",
        ),
        (
            "negative tolerance",
            |p| p.tolerance = -0.1,
            "tolerance must be a finite number in [0, 1)",
        ),
        ("tolerance of 1", |p| p.tolerance = 1.0, "tolerance"),
        (
            "zero stable window",
            |p| p.stable_window = Duration::ZERO,
            "stable_window must be between 1s and 1h, got 0ns",
        ),
        (
            "huge delay",
            |p| p.scale_down_delay = Duration::MAX,
            "scale_down_delay must be at most 1h",
        ),
        (
            "huge grace",
            |p| p.missing_data_grace = secs(3601.0),
            "missing_data_grace",
        ),
        (
            "tiny panic window",
            |p| p.panic_window = secs(0.5),
            "panic_window must be between 1s and 1h",
        ),
        (
            "panic longer than stable",
            |p| p.panic_window = secs(120.0),
            "panic_window (120s) is longer than stable_window (60s)",
        ),
        (
            "fallback above max",
            |p| p.fallback_replicas = Some(11),
            "fallback_replicas (11) is outside min_replicas..=max_replicas (1..=10)",
        ),
    ];
    assert_eq!(Policy::default().validate(), Ok(()));
    for (name, edit, message) in cases {
        let mut policy = Policy::default();
        edit(&mut policy);
        let error = policy.validate().expect_err(name).to_string();
        assert!(error.contains(message), "{name}: {error}");
    }
}

#[test]
fn pool_scoped_readings_count_once() {
    let shared = |name: &str, queued| {
        let mut s = snapshot(queued, 0);
        s.scope = Scope::Pool;
        PodReading {
            name: name.into(),
            snapshot: Some(s),
            age: Duration::ZERO,
            unread: false,
            ready: true,
        }
    };
    let mut scaler = Scaler::new(Duration::ZERO, 3);
    let pods = vec![shared("a", 50), shared("b", 52), shared("c", 50)];
    let d = scaler.decide(&policy(20), &observe(0.0, 3, pods));
    assert_eq!(d.observed_load, Some(52.0));
    // Mixed with pod-scoped readings, and an external reading of the same queue.
    let mut pool_obs = observe(1.0, 3, vec![pod("a", 10), shared("b", 50)]);
    pool_obs.external = ExternalReading::Reading(snapshot(70, 0));
    let d = scaler.decide(&policy(20), &pool_obs);
    assert_eq!(d.observed_load, Some(80.0));
}

#[test]
fn draining_pods_carry_load_but_are_not_capacity() {
    let draining = |name: &str, load| {
        let mut reading = pod(name, load);
        if let Some(s) = reading.snapshot.as_mut() {
            s.draining = true;
        }
        reading
    };
    // 40 of load needs 4 workers: 2 × the 2 that are not draining is panic; 2 × 4 is not.
    let mut scaler = Scaler::new(Duration::ZERO, 4);
    let pods = vec![
        pod("a", 10),
        pod("b", 10),
        draining("c", 10),
        draining("d", 10),
    ];
    let d = scaler.decide(&policy(20), &observe(0.0, 4, pods));
    assert_eq!((d.observed_load, d.mode), (Some(40.0), Mode::Panic));
    let mut scaler = Scaler::new(Duration::ZERO, 4);
    let d = scaler.decide(&policy(20), &observe(0.0, 4, pool(4, 40)));
    assert_eq!((d.observed_load, d.mode), (Some(40.0), Mode::Stable));
}

#[test]
fn silent_pods_that_are_not_ready_are_not_missing_data() {
    let starting = PodReading {
        ready: false,
        ..silent("new")
    };
    let mut scaler = Scaler::new(Duration::ZERO, 3);
    let pods = vec![pod("a", 10), pod("b", 10), starting.clone()];
    let d = scaler.decide(&policy(20), &observe(0.0, 3, pods));
    assert_eq!(d.metrics, MetricsState::Available);
    // When nobody answers at all, the load is unknown: decided as missing data, but with
    // nothing ready there is no silent worker, so the pool only awaits its readings.
    let d = scaler.decide(&policy(20), &observe(1.0, 3, vec![starting]));
    assert_eq!(
        d.metrics,
        MetricsState::Awaiting {
            since: secs(1.0),
            starting: 0
        }
    );
    assert_eq!(d.kind, DecisionKind::MissingData);
}

#[test]
fn pods_whose_readers_have_not_read_yet_are_awaited_not_missing() {
    // After an operator restart every reader is connecting: the pool awaits its first
    // readings (no warning), for up to FIRST_READ_PATIENCE, and decides as on missing data.
    let with_fallback = Policy {
        fallback_replicas: Some(6),
        ..policy(20)
    };
    let unread = |name: &str| PodReading {
        age: Duration::ZERO,
        unread: true,
        ..silent(name)
    };
    let mut scaler = Scaler::new(Duration::ZERO, 3);
    let mut round =
        |now: f64, pods: Vec<PodReading>| scaler.decide(&with_fallback, &observe(now, 3, pods));
    let awaiting = |starting| MetricsState::Awaiting {
        since: Duration::ZERO,
        starting,
    };
    let d = round(0.0, vec![unread("a"), unread("b"), unread("c")]);
    assert_eq!((d.metrics, d.replicas), (awaiting(3), 3));
    let d = round(9.0, vec![unread("a"), unread("b"), unread("c")]);
    assert_eq!((d.metrics, d.replicas), (awaiting(3), 3));
    // Missing data's rules still hold: the fallback after its grace, counted from the start.
    let d = round(10.0, vec![unread("a"), unread("b"), unread("c")]);
    assert_eq!(
        (d.metrics, d.replicas, d.kind),
        (awaiting(3), 6, DecisionKind::Fallback)
    );
    // A reader that tried and failed makes its pod missing once the first-reading grace is over.
    let d = round(11.0, vec![unread("a"), unread("b"), silent("c")]);
    assert_eq!(
        d.metrics,
        MetricsState::Missing {
            since: Duration::ZERO
        }
    );
    // Never read at all: patience runs out too.
    let mut scaler = Scaler::new(Duration::ZERO, 3);
    let patience = scaler::FIRST_READ_PATIENCE.as_secs_f64();
    let d = scaler.decide(&policy(20), &observe(0.0, 3, vec![unread("a")]));
    assert!(matches!(d.metrics, MetricsState::Awaiting { .. }));
    let d = scaler.decide(&policy(20), &observe(patience - 0.5, 3, vec![unread("a")]));
    assert!(matches!(d.metrics, MetricsState::Awaiting { .. }));
    let d = scaler.decide(&policy(20), &observe(patience, 3, vec![unread("a")]));
    assert_eq!(
        d.metrics,
        MetricsState::Missing {
            since: Duration::ZERO
        }
    );
    // One answer ends the wait for the pool: the others count as they are.
    let mut scaler = Scaler::new(Duration::ZERO, 3);
    let d = scaler.decide(
        &policy(20),
        &observe(0.0, 3, vec![pod("a", 5), unread("b")]),
    );
    assert_eq!(d.metrics, MetricsState::Available);
}

#[test]
fn a_pod_just_turned_ready_is_starting_until_its_first_reading_is_overdue() {
    let mut scaler = Scaler::new(Duration::ZERO, 3);
    let mut round = |now: f64, new: PodReading| {
        let pods = vec![pod("a", 10), pod("b", 10), new];
        scaler.decide(&policy(20), &observe(now, 3, pods)).metrics
    };
    // Ready at 10 s, not yet read: its reader is still connecting, no gap in the data.
    assert_eq!(
        round(
            0.0,
            PodReading {
                ready: false,
                ..silent("new")
            }
        ),
        MetricsState::Available
    );
    assert_eq!(round(10.0, silent("new")), MetricsState::Available);
    assert_eq!(round(14.9, silent("new")), MetricsState::Available);
    // Still silent once the grace is over: missing.
    assert_eq!(
        round(15.0, silent("new")),
        MetricsState::Partial { missing: 1 }
    );
    // A pod that has answered once and falls silent is missing at once.
    assert_eq!(round(16.0, pod("late", 1)), MetricsState::Available);
    assert_eq!(
        round(17.0, silent("late")),
        MetricsState::Partial { missing: 1 }
    );
}

#[test]
fn counters_that_overflow_when_summed_do_not_break_the_policy() {
    // Each pod's figures are valid; their sum is not finite.
    let huge = |name: &str, busy: f64, arrived: u64| {
        let mut reading = pod(name, 1);
        if let Some(s) = reading.snapshot.as_mut() {
            s.busy_seconds_total = busy;
            s.arrived_total = arrived;
            s.completed_total = arrived;
        }
        reading
    };
    let mut scaler = Scaler::new(Duration::ZERO, 2);
    // The busy counters leap as the arrivals stop, so the last service time measured is the
    // overflowing one, and then no arrivals times it stand for a whole window.
    for second in 0..150u32 {
        let busy = if second < 40 { 0.0 } else { 1e308 };
        let arrived = u64::from(second.min(40)) * 10;
        let pods = vec![huge("a", busy, arrived), huge("b", busy, arrived)];
        let d = scaler.decide(&policy(20), &observe(f64::from(second), 2, pods));
        assert!((1..=20).contains(&d.replicas), "{d:?}");
    }
}

#[test]
fn garbage_snapshots_are_missing_data_not_zero() {
    let mut garbage = pod("b", 0);
    if let Some(s) = garbage.snapshot.as_mut() {
        s.version = 99;
    }
    let mut out_of_range = pod("c", 0);
    if let Some(s) = out_of_range.snapshot.as_mut() {
        s.busy_seconds_total = f64::NAN;
    }
    let mut scaler = Scaler::new(Duration::ZERO, 3);
    let pods = vec![pod("a", 10), garbage, out_of_range];
    let d = scaler.decide(&policy(20), &observe(0.0, 3, pods));
    assert_eq!(d.metrics, MetricsState::Partial { missing: 2 });
    assert_eq!(d.observed_load, Some(10.0));
}

#[test]
fn scale_from_zero_needs_an_external_reading() {
    let to_zero = Policy {
        min_replicas: 0,
        fallback_replicas: Some(1),
        ..policy(20)
    };
    let mut scaler = Scaler::new(Duration::ZERO, 0);
    let d = scaler.decide(&to_zero, &observe(0.0, 0, vec![]));
    assert_eq!((d.replicas, d.metrics), (0, MetricsState::NoSource));
    assert!(
        d.reason.contains("needs an external reading"),
        "{}",
        d.reason
    );
    // No source is not a failure: no fallback, however long.
    let d = scaler.decide(&to_zero, &observe(100.0, 0, vec![]));
    assert_eq!((d.replicas, d.kind), (0, DecisionKind::Hold));

    let mut obs = observe(101.0, 0, vec![]);
    obs.external = ExternalReading::Reading(snapshot(3, 0));
    let d = scaler.decide(&to_zero, &obs);
    assert_eq!((d.replicas, d.kind), (1, DecisionKind::ScaleUp));

    // An external source that fails is missing data, and its fallback applies.
    let mut scaler = Scaler::new(Duration::ZERO, 0);
    let mut obs = observe(0.0, 0, vec![]);
    obs.external = ExternalReading::Missing;
    assert_eq!(scaler.decide(&to_zero, &obs).replicas, 0);
    obs.now = secs(10.0);
    let d = scaler.decide(&to_zero, &obs);
    assert_eq!((d.replicas, d.kind), (1, DecisionKind::Fallback));
}

#[test]
fn an_idle_pool_scales_to_zero_after_the_window() {
    let to_zero = Policy {
        min_replicas: 0,
        ..policy(20)
    };
    let mut pool = Pool::new(to_zero, 2);
    let idle = pool.run(150, 0);
    // 2 → 1 once the window is full (at most halving per second), then 1 → 0.
    let at_zero = idle.iter().position(|d| d.replicas == 0);
    assert_eq!(at_zero, Some(60));
    assert!(idle.iter().skip(60).all(|d| d.replicas == 0));
}

#[test]
fn a_restarted_operator_does_not_scale_down_before_a_full_window() {
    // The pool ran at 10; the operator restarts and the load has meanwhile gone.
    let mut pool = Pool::new(policy(20), 10);
    let after = pool.run(120, 0);
    assert!(after[..59].iter().all(|d| d.replicas == 10));
    // The size found at start is honoured as a recommendation for one stabilization window...
    assert!(
        after[0]
            .reason
            .contains("the highest recommendation in the last 60 s is 10"),
        "{}",
        after[0].reason
    );
    assert_eq!(after[0].kind, DecisionKind::Stabilizing);
    assert_eq!(after[59].replicas, 5);

    // ...and, without stabilization, a full stable window of data is still needed.
    let no_delay = Policy {
        scale_down_delay: Duration::ZERO,
        ..policy(20)
    };
    let mut pool = Pool::new(no_delay, 10);
    let after = pool.run(120, 0);
    assert!(after[..59].iter().all(|d| d.replicas == 10));
    assert!(
        after[0]
            .reason
            .contains("no scale-down before 60 s of complete data (1 s so far)"),
        "{}",
        after[0].reason
    );
    assert_eq!(after[59].replicas, 5);
}

#[test]
fn time_that_runs_backwards_is_taken_as_no_time_passing() {
    let mut scaler = Scaler::new(secs(100.0), 2);
    scaler.decide(&policy(20), &observe(100.0, 2, pool(2, 20)));
    let d = scaler.decide(&policy(20), &observe(50.0, 2, pool(2, 20)));
    assert_eq!((d.replicas, d.kind), (2, DecisionKind::Hold));
}

// ---------------------------------------------------------------- rate-aware sizing

/// A pool with room to spare in which every request takes exactly `service` seconds, so in
/// flight = the arrivals of the last `service` seconds. Pod p0 reports all counters and load,
/// the others report an idle pod. Returns (second, decision) pairs.
fn run_fluid(
    policy: &Policy,
    service: usize,
    arrivals: impl Fn(u64) -> u64,
    seconds: u64,
    replicas: u32,
) -> Vec<(u64, Decision)> {
    let mut scaler = Scaler::new(Duration::ZERO, replicas);
    let mut replicas = replicas;
    let (mut history, mut arrived, mut busy) = (Vec::new(), 0u64, 0.0);
    let mut out = Vec::new();
    for t in 0..seconds {
        history.push(arrivals(t));
        arrived += arrivals(t);
        let in_flight: u64 = history[history.len().saturating_sub(service)..]
            .iter()
            .sum();
        busy += in_flight as f64;
        let mut pods = pool(replicas, 0);
        if let Some(s) = pods.first_mut().and_then(|p| p.snapshot.as_mut()) {
            s.in_flight = in_flight;
            s.arrived_total = arrived;
            s.completed_total = arrived - in_flight;
            s.busy_seconds_total = busy;
        }
        let d = scaler.decide(policy, &observe(t as f64, replicas, pods));
        replicas = d.replicas;
        out.push((t, d));
    }
    out
}

#[test]
fn rising_arrivals_are_met_before_the_load_builds() {
    // LLM-like calls of 30 s: 1 request/s keeps 30 in flight (3 workers); at t = 120 the
    // arrival rate triples, and the pool will need 9 workers once 90 are in flight at t = 150.
    let arrivals = |t| if t < 120 { 1 } else { 3 };
    let time_to_nine = |rate_aware| {
        let policy = Policy {
            rate_aware,
            ..policy(20)
        };
        let run = run_fluid(&policy, 30, arrivals, 240, 3);
        assert!(run.iter().all(|(_, d)| d.replicas <= 9), "never overshoots");
        run.iter()
            .find(|(_, d)| d.replicas >= 9)
            .map(|(t, d)| (*t, d.reason.clone()))
    };
    let (aware, reason) = time_to_nine(true).unwrap_or_default();
    let (blind, _) = time_to_nine(false).unwrap_or_default();
    assert!((121..=127).contains(&aware), "rate-aware at {aware}");
    assert!(
        reason.contains("arrivals 3/s × 30 s service keep 90 busy"),
        "{reason}"
    );
    // Queue-only sizing cannot ask for 9 before more than 80 are in flight (t > 145).
    assert!(blind >= 145, "queue-only at {blind}");
}

#[test]
fn a_backlog_is_met_at_once_and_let_go_once_drained() {
    // 40 arrivals/s of 1 s keep 40 busy: 4 workers. A backlog of 300 stands for 3 s (the
    // queue a burst leaves while new workers start), then is gone.
    let policy = policy(50);
    let mut scaler = Scaler::new(Duration::ZERO, 4);
    let mut replicas = 4;
    let mut decisions = Vec::new();
    for t in 0..120u64 {
        let mut pods = pool(replicas, 0);
        if let Some(s) = pods.first_mut().and_then(|p| p.snapshot.as_mut()) {
            s.in_flight = 40;
            s.queued = if (60..63).contains(&t) { 300 } else { 0 };
            s.arrived_total = 40 * t;
            s.completed_total = 40 * t;
            s.busy_seconds_total = 40.0 * t as f64;
        }
        let d = scaler.decide(&policy, &observe(t as f64, replicas, pods));
        replicas = d.replicas;
        decisions.push(d);
    }
    assert!(decisions[..60].iter().all(|d| d.replicas == 4));
    // Met on its first second, in panic.
    assert!(decisions[60].replicas > 4 && decisions[60].mode == Mode::Panic);
    // Not a lasting need: the size comes back once the present load's panic window is over
    // (at most halving each second), not after the scale-down delay or a stable window.
    let back = decisions[63..]
        .iter()
        .position(|d| d.replicas <= 5)
        .map(|i| i + 63)
        .unwrap_or(usize::MAX);
    let after: Vec<_> = decisions[60..]
        .iter()
        .map(|d| (d.replicas, d.reason.clone()))
        .collect();
    assert!(back <= 63 + 6 + 5, "back at t = {back}: {after:#?}");
    assert_eq!(decisions.last().map(|d| d.replicas), Some(4));
}

#[test]
fn the_wobble_of_a_steady_rate_moves_nothing() {
    // Arrivals wobble between 30 and 50 a second around 40: the stable mean holds the size.
    let arrivals = |t: u64| {
        if t.is_multiple_of(3) {
            30
        } else if t % 3 == 1 {
            50
        } else {
            40
        }
    };
    let run = run_fluid(&policy(20), 1, arrivals, 300, 4);
    // (In the first minute the scaler has little history and no scale-down is allowed.)
    let changes = run[71..].iter().filter(|(_, d)| d.changed).count();
    let changed: Vec<_> = run
        .iter()
        .filter(|(_, d)| d.changed)
        .map(|(t, d)| (t, &d.reason))
        .collect();
    assert_eq!(changes, 0, "{changed:?}");
}

#[test]
fn the_rate_term_never_scales_below_what_the_queue_says() {
    // Arrivals stop while 100 requests are still in flight: the queue term holds the size.
    let arrivals = |t| if t < 30 { 10 } else { 0 };
    let policy = policy(20);
    let run = run_fluid(&policy, 10, arrivals, 35, 10);
    let last = &run[run.len() - 1].1;
    assert_eq!(last.replicas, 10);
    assert!(
        last.rates.is_some_and(|r| r.load < 60.0),
        "{:?}",
        last.rates
    );
}

#[test]
fn the_rate_term_uses_the_target_or_the_concurrency_whichever_is_lower() {
    // 100 in flight at steady state. Target 20 would allow 5 workers, but with a
    // concurrency of 10 their queues would grow without end: the rate term asks for 10.
    let policy = Policy {
        target_per_worker: 20.0,
        concurrency: 10,
        ..policy(20)
    };
    let run = run_fluid(&policy, 10, |_| 10, 30, 5);
    let last = &run[run.len() - 1].1;
    assert_eq!(last.replicas, 10, "{}", last.reason);
}

// ---------------------------------------------------------------- a long scenario

#[test]
fn burst_then_calm_timeline() {
    // 20 of load for a minute, a burst of 150 for a minute, then 20 again.
    let load = |t: u32| if (60..120).contains(&t) { 150 } else { 20 };
    let mut pool = Pool::new(policy(20), 2);
    let timeline: Vec<(u32, Decision)> = (0..360).map(|t| (t, pool.step(load(t)))).collect();
    let replicas = |t: u32| timeline[t as usize].1.replicas;
    let changes: Vec<(u32, u32)> = timeline
        .iter()
        .filter(|(_, d)| d.changed)
        .map(|(t, d)| (*t, d.replicas))
        .collect();

    // Quiet first minute.
    assert!((0..60).all(|t| replicas(t) == 2), "{changes:?}");
    // Reaction on the burst's first second, full size within the panic window.
    assert!(replicas(60) > 2, "{changes:?}");
    assert!((65..120).all(|t| replicas(t) == 15), "{changes:?}");
    // Calm from t = 120: held until the highest recommendation of the last 60 s drops, about
    // 7 s of calm (stable mean ≤ 90 % of 150) + 60 s of stabilization.
    let first_down = changes.iter().find(|(t, _)| *t >= 120).map(|(t, _)| *t);
    assert!(
        first_down.is_some_and(|t| (183..=190).contains(&t)),
        "{changes:?}"
    );
    assert!((120..183).all(|t| replicas(t) == 15), "{changes:?}");
    // Back to 2 by the end, never below; monotone on the way down.
    assert_eq!(replicas(359), 2, "{changes:?}");
    assert!((120..359).all(|t| replicas(t) >= 2 && replicas(t + 1) <= replicas(t)));
    // Few changes: up in a handful of steps, down in a gentle slope.
    assert!(changes.len() < 25, "{changes:?}");
}

// ---------------------------------------------------------------- properties

/// One pod's part in one round.
#[derive(Debug, Clone)]
struct PodStep {
    /// `None`: no usable answer.
    reading: Option<ReadingStep>,
    ready: bool,
}

#[derive(Debug, Clone)]
struct ReadingStep {
    queued: u64,
    in_flight: u64,
    arrive: u64,
    complete: u64,
    busy: u32,
    restarted: bool,
    draining: bool,
    pool_scope: bool,
}

#[derive(Debug, Clone)]
struct Round {
    after_ms: u64,
    /// `None`: the Deployment follows the last decision; `Some`: someone set this size.
    set_replicas: Option<u32>,
    pods: Vec<PodStep>,
}

fn reading_step() -> impl Strategy<Value = ReadingStep> {
    (
        0..300u64,
        0..60u64,
        0..40u64,
        0..40u64,
        0..100u32,
        prop::bool::weighted(0.03),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(queued, in_flight, arrive, complete, busy, restarted, draining, pool_scope)| {
                ReadingStep {
                    queued,
                    in_flight,
                    arrive,
                    complete,
                    busy,
                    restarted,
                    draining,
                    pool_scope,
                }
            },
        )
}

fn pod_step() -> impl Strategy<Value = PodStep> {
    (
        prop::option::weighted(0.85, reading_step()),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(reading, ready)| PodStep { reading, ready })
}

fn round() -> impl Strategy<Value = Round> {
    (
        100..4000u64,
        prop::option::weighted(0.1, 0..40u32),
        prop::collection::vec(pod_step(), 0..6),
    )
        .prop_map(|(after_ms, set_replicas, pods)| Round {
            after_ms,
            set_replicas,
            pods,
        })
}

fn rounds(max: usize) -> impl Strategy<Value = Vec<Round>> {
    prop::collection::vec(round(), 1..max)
}

fn valid_policy() -> impl Strategy<Value = Policy> {
    (
        (0..4u32, 1..30u32, 1..20u32, 1.0..30.0f64),
        (6..120u64, 1..6u64, 1.1..4.0f64, 0.0..0.5f64),
        (1.5..20.0f64, 1.1..5.0f64, 0..120u64, 0..30u64),
        (prop::option::of(0..30u32), any::<bool>()),
    )
        .prop_map(
            |(
                (min, span, concurrency, target),
                (stable, panic, threshold, tolerance),
                (up, down, delay, grace),
                (fallback, rate_aware),
            )| {
                let max = min + span;
                Policy {
                    min_replicas: min,
                    max_replicas: max,
                    concurrency,
                    target_per_worker: target,
                    stable_window: Duration::from_secs(stable),
                    panic_window: Duration::from_secs(panic),
                    panic_threshold: threshold,
                    tolerance,
                    max_scale_up_rate: up,
                    max_scale_down_rate: down,
                    scale_down_delay: Duration::from_secs(delay),
                    fallback_replicas: fallback.map(|f| f.clamp(min, max)),
                    missing_data_grace: Duration::from_secs(grace),
                    rate_aware,
                    paused: false,
                }
            },
        )
}

/// Turns rounds into observations, keeping each pod's counters monotonic (except restarts).
struct Feed {
    now: Duration,
    counters: Vec<(u64, u64, f64)>,
}

impl Feed {
    fn new() -> Self {
        Self {
            now: Duration::from_secs(1000),
            counters: Vec::new(),
        }
    }

    fn observe(&mut self, round: &Round, current_replicas: u32) -> Observation {
        self.now += Duration::from_millis(round.after_ms);
        if self.counters.len() < round.pods.len() {
            self.counters.resize(round.pods.len(), (0, 0, 0.0));
        }
        let pods = round
            .pods
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let snapshot = step.reading.as_ref().map(|r| {
                    let c = &mut self.counters[i];
                    if r.restarted {
                        *c = (0, 0, 0.0);
                    }
                    c.0 += r.arrive;
                    c.1 = (c.1 + r.complete).min(c.0);
                    c.2 += f64::from(r.busy);
                    QueueSnapshot {
                        arrived_total: c.0,
                        completed_total: c.1,
                        busy_seconds_total: c.2,
                        draining: r.draining,
                        scope: if r.pool_scope {
                            Scope::Pool
                        } else {
                            Scope::Pod
                        },
                        ..snapshot(r.queued, r.in_flight)
                    }
                });
                PodReading {
                    name: format!("p{i}").into(),
                    snapshot,
                    age: Duration::ZERO,
                    unread: false,
                    ready: step.ready,
                }
            })
            .collect();
        Observation {
            now: self.now,
            current_replicas,
            pods,
            external: ExternalReading::NotConfigured,
        }
    }
}

/// Feeds `rounds` to `scaler`; returns the decisions and the size the Deployment ends at.
fn drive(
    scaler: &mut Scaler,
    policy: &Policy,
    feed: &mut Feed,
    rounds: &[Round],
    start: u32,
) -> (Vec<(Observation, Decision)>, u32) {
    let mut replicas = start;
    let mut out = Vec::new();
    for round in rounds {
        let current = round.set_replicas.unwrap_or(replicas);
        let obs = feed.observe(round, current);
        let decision = scaler.decide(policy, &obs);
        replicas = decision.replicas;
        out.push((obs, decision));
    }
    (out, replicas)
}

proptest! {
    #[test]
    fn decisions_stay_within_min_and_max(
        policy in valid_policy(), rounds in rounds(60), start in 0..40u32,
    ) {
        let mut scaler = Scaler::new(Duration::from_secs(1000), start);
        let (decisions, _) = drive(&mut scaler, &policy, &mut Feed::new(), &rounds, start);
        for (obs, d) in decisions {
            prop_assert!(
                (policy.min_replicas..=policy.max_replicas).contains(&d.replicas),
                "{} outside bounds at {:?}: {}", d.replicas, obs.now, d.reason
            );
            prop_assert_eq!(d.changed, d.replicas != obs.current_replicas);
        }
    }

    #[test]
    fn decisions_are_deterministic(
        policy in valid_policy(), rounds in rounds(60), start in 0..40u32,
    ) {
        let run = || {
            let mut scaler = Scaler::new(Duration::from_secs(1000), start);
            drive(&mut scaler, &policy, &mut Feed::new(), &rounds, start).0
        };
        prop_assert_eq!(run(), run());
    }

    #[test]
    fn missing_data_never_lowers_the_size(
        policy in valid_policy(), rounds in rounds(60), start in 0..40u32, pick in any::<usize>(),
        all in any::<bool>(),
    ) {
        let mut scaler = Scaler::new(Duration::from_secs(1000), start);
        let mut feed = Feed::new();
        let (history, last) = rounds.split_at(rounds.len() - 1);
        let (_, replicas) = drive(&mut scaler, &policy, &mut feed, history, start);
        let mut obs = feed.observe(&last[0], last[0].set_replicas.unwrap_or(replicas));
        if obs.pods.is_empty() {
            obs.pods.push(pod("lost", 0));
        }
        // Every pod answers once, so that the silence below is missing data rather than a
        // new pod's reader still connecting.
        let mut answering = obs.clone();
        for pod in &mut answering.pods {
            pod.snapshot.get_or_insert_with(|| snapshot(0, 0));
        }
        obs.current_replicas = scaler.decide(&policy, &answering).replicas;
        let n = obs.pods.len();
        for (i, pod) in obs.pods.iter_mut().enumerate() {
            if all || i == pick % n {
                pod.snapshot = None;
                pod.ready = true;
            }
        }
        let d = scaler.decide(&policy, &obs);
        let floor = obs.current_replicas.min(policy.max_replicas);
        prop_assert!(d.replicas >= floor, "{} < {}: {}", d.replicas, floor, d.reason);
    }

    #[test]
    fn more_load_never_lowers_the_size(
        policy in valid_policy(), rounds in rounds(60), start in 0..40u32, pick in any::<usize>(),
        extra in 1..500u64,
    ) {
        let mut scaler = Scaler::new(Duration::from_secs(1000), start);
        let mut feed = Feed::new();
        let (history, last) = rounds.split_at(rounds.len() - 1);
        let (_, replicas) = drive(&mut scaler, &policy, &mut feed, history, start);
        let obs = feed.observe(&last[0], last[0].set_replicas.unwrap_or(replicas));
        let mut heavier = obs.clone();
        let answering: Vec<_> = heavier.pods.iter_mut().filter_map(|p| p.snapshot.as_mut()).collect();
        let n = answering.len();
        prop_assume!(n > 0);
        if let Some(s) = answering.into_iter().nth(pick % n) {
            s.queued += extra;
        }
        let light = scaler.clone().decide(&policy, &obs);
        let heavy = scaler.decide(&policy, &heavier);
        prop_assert!(
            heavy.replicas >= light.replicas,
            "{} < {}\nlight: {}\nheavy: {}", heavy.replicas, light.replicas, light.reason, heavy.reason
        );
    }

    #[test]
    fn a_fresh_scaler_does_not_scale_down_within_its_first_window(
        policy in valid_policy(), rounds in rounds(40), start in 0..40u32,
    ) {
        let mut scaler = Scaler::new(Duration::from_secs(1000), start);
        let mut feed = Feed::new();
        let mut replicas = start;
        for round in &rounds {
            let obs = feed.observe(round, replicas);
            if obs.now - Duration::from_secs(1000) >= policy.stable_window {
                break;
            }
            let d = scaler.decide(&policy, &obs);
            let floor = replicas.min(policy.max_replicas);
            prop_assert!(d.replicas >= floor, "{} < {} at {:?}: {}", d.replicas, floor, obs.now, d.reason);
            replicas = d.replicas;
        }
    }

    #[test]
    fn nothing_panics_on_any_input(
        numbers in prop::collection::vec(any::<f64>(), 6),
        counts in prop::collection::vec(any::<u32>(), 4),
        windows in prop::collection::vec(any::<u64>(), 4),
        flags in prop::collection::vec(any::<bool>(), 3),
        snapshots in prop::collection::vec(
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<f64>(), any::<bool>(), any::<bool>()),
            0..4,
        ),
        times in prop::collection::vec(any::<u64>(), 1..8),
    ) {
        let policy = Policy {
            min_replicas: counts[0],
            max_replicas: counts[1],
            concurrency: counts[2],
            target_per_worker: numbers[0],
            stable_window: Duration::from_millis(windows[0]),
            panic_window: Duration::from_millis(windows[1]),
            panic_threshold: numbers[1],
            tolerance: numbers[2],
            max_scale_up_rate: numbers[3],
            max_scale_down_rate: numbers[4],
            scale_down_delay: Duration::from_millis(windows[2]),
            fallback_replicas: flags[0].then_some(counts[3]),
            missing_data_grace: Duration::from_millis(windows[3]),
            rate_aware: flags[1],
            paused: flags[2],
        };
        // The same bounds with sane floats, so the pipeline past validate() runs too.
        let sane = Policy {
            target_per_worker: numbers[0].abs().clamp(1e-300, 1e300),
            min_replicas: 0,
            max_replicas: u32::MAX,
            concurrency: counts[2].max(1),
            fallback_replicas: None,
            ..Policy::default()
        };
        let mut scaler = Scaler::new(Duration::from_millis(times[0]), counts[0]);
        for (i, t) in times.iter().enumerate() {
            let pods = snapshots.iter().enumerate().map(|(j, s)| PodReading {
                name: format!("p{j}").into(),
                snapshot: Some(QueueSnapshot {
                    queued: s.0,
                    in_flight: s.1,
                    arrived_total: s.2,
                    completed_total: s.3.min(s.2),
                    busy_seconds_total: s.4,
                    draining: s.5,
                    ..snapshot(0, 0)
                }),
                age: Duration::ZERO,
                unread: false,
                ready: s.6,
            }).collect();
            let obs = Observation {
                now: Duration::from_millis(*t),
                current_replicas: counts[i % 4],
                pods,
                external: ExternalReading::NotConfigured,
            };
            let _ = scaler.decide(&policy, &obs);
            let _ = scaler.decide(&sane, &obs);
        }
    }
}

/// 60 arrivals/s of 0.5 s each (30 busy) spread evenly over the pool's
/// pods, each pod reporting its own counters. `pods_at(t)` names the pods listed at second t: a
/// pod first listed starts its counters at zero and takes its share from the next second.
/// `leader_at` starts a new scaler at that second, as a new leader would. Returns the decisions.
fn run_counted_pool(
    policy: &Policy,
    pods_at: impl Fn(u64) -> Vec<String>,
    leader_at: Option<u64>,
    seconds: u64,
) -> Vec<(u64, Decision)> {
    let mut scaler = Scaler::new(Duration::ZERO, 3);
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    let mut out = Vec::new();
    for t in 0..seconds {
        if leader_at == Some(t) {
            scaler = Scaler::new(secs(t as f64), 3);
        }
        let names = pods_at(t);
        let taking = names.iter().filter(|n| counts.contains_key(*n)).count() as u64;
        let pods = names
            .iter()
            .map(|name| {
                let known = counts.contains_key(name);
                let count = counts.entry(name.clone()).or_default();
                if known {
                    *count += 60 / taking;
                }
                let mut s = snapshot(0, if known { 30 / taking } else { 0 });
                s.arrived_total = *count;
                s.completed_total = *count;
                s.busy_seconds_total = *count as f64 * 0.5;
                PodReading {
                    name: name.as_str().into(),
                    snapshot: Some(s),
                    age: Duration::ZERO,
                    unread: false,
                    ready: true,
                }
            })
            .collect();
        let d = scaler.decide(policy, &observe(t as f64, 3, pods));
        out.push((t, d));
    }
    out
}

#[test]
fn recycled_workers_and_a_new_leader_do_not_dip_the_rate() {
    // 30 busy at 14 per worker need 2.1 workers, so 3, and a rate that reads 30 % low 2; a
    // short scale-down delay shows any round in which it does.
    let policy = Policy {
        scale_down_delay: Duration::from_secs(1),
        target_per_worker: 14.0,
        concurrency: 20,
        ..policy(20)
    };
    // Every 10 s one worker retires and its replacement is listed the same second.
    let recycled = |t: u64| -> Vec<String> {
        let generation = t / 10;
        (0..3)
            .map(|slot| {
                let replaced = generation / 3 + u64::from(slot < generation % 3);
                format!("w{slot}-{replaced}")
            })
            .collect()
    };
    for leader_at in [None, Some(95)] {
        let run = run_counted_pool(&policy, recycled, leader_at, 180);
        let low: Vec<_> = run[70..]
            .iter()
            .filter(|(_, d)| d.replicas < 3)
            .map(|(t, d)| (t, d.replicas, &d.reason))
            .collect();
        assert!(low.is_empty(), "new leader at {leader_at:?}: {low:#?}");
    }
}

// ---------------------------------------------------------------- rest

/// A pool whose load holds for a while at a time: (load, arrivals a second, seconds).
fn plateaus() -> impl Strategy<Value = Vec<(u64, u64, u32)>> {
    prop::collection::vec(
        (0u64..200, prop_oneof![Just(0u64), 1u64..40], 1u32..120),
        1..8,
    )
}

/// The pods of a pool at `replicas` carrying `load`, each with its app's counters: every
/// pod's share of the arrivals is added to its totals (served at once, 0.5 s each).
fn counted_pods(
    replicas: u32,
    load: u64,
    arrivals: u64,
    totals: &mut std::collections::HashMap<String, u64>,
) -> Vec<PodReading> {
    let n = u64::from(replicas.max(1));
    pool(replicas, load)
        .into_iter()
        .enumerate()
        .map(|(i, mut pod)| {
            let share = arrivals / n + u64::from((i as u64) < arrivals % n);
            let total = totals.entry(pod.name.to_string()).or_default();
            *total += share;
            if let Some(snapshot) = pod.snapshot.as_mut() {
                snapshot.arrived_total = *total;
                snapshot.completed_total = *total;
                snapshot.busy_seconds_total = *total as f64 * 0.5;
            }
            pod
        })
        .collect()
}

/// Runs `plateaus` second by second on two scalers: one decides every second, the other skips
/// every second in which it is at rest and its readings are those of its last decision (as the
/// decision rounds do), telling it until when they held when it decides again. Returns both
/// sizes at every second, and how many seconds the second one skipped.
fn with_and_without_rest(
    policy: &Policy,
    plateaus: &[(u64, u64, u32)],
    start: u32,
) -> (Vec<u32>, Vec<u32>, usize) {
    let mut every = (
        Scaler::new(Duration::ZERO, start),
        start,
        Default::default(),
    );
    let mut resting = (
        Scaler::new(Duration::ZERO, start),
        start,
        Default::default(),
    );
    let mut last_seen: Option<Vec<PodReading>> = None;
    let mut unchanged_until = None;
    let (mut sizes_every, mut sizes_resting, mut skipped) = (Vec::new(), Vec::new(), 0);
    let mut second = 0u64;
    for &(load, arrivals, seconds) in plateaus {
        for _ in 0..seconds {
            second += 1;
            let now = Duration::from_secs(second);
            let (scaler, replicas, totals) = &mut every;
            let pods = counted_pods(*replicas, load, arrivals, totals);
            *replicas = scaler
                .decide(policy, &observe(now.as_secs_f64(), *replicas, pods))
                .replicas;
            sizes_every.push(*replicas);

            let (scaler, replicas, totals) = &mut resting;
            let pods = counted_pods(*replicas, load, arrivals, totals);
            if scaler.at_rest() && last_seen.as_ref() == Some(&pods) {
                unchanged_until = Some(now);
                skipped += 1;
            } else {
                if let Some(until) = unchanged_until.take() {
                    scaler.rested_until(until);
                }
                last_seen = Some(pods.clone());
                *replicas = scaler
                    .decide(policy, &observe(now.as_secs_f64(), *replicas, pods))
                    .replicas;
            }
            sizes_resting.push(*replicas);
        }
    }
    (sizes_every, sizes_resting, skipped)
}

#[test]
fn a_pool_at_rest_decides_as_if_every_second_were_decided() {
    let policy = Policy {
        scale_down_delay: Duration::from_secs(30),
        ..policy(40)
    };
    // Steady, a burst, calm with the counters still, traffic whose arrivals (80/s at 0.5 s
    // each) need more workers than its queue shows, idle.
    let plateaus = [
        (40, 0, 180),
        (300, 60, 90),
        (20, 0, 240),
        (5, 80, 120),
        (0, 0, 200),
    ];
    let (every, resting, skipped) = with_and_without_rest(&policy, &plateaus, 4);
    assert_eq!(every, resting);
    // Most of the 380 s of the steady and idle stretches are skipped (each rests once its
    // windows have levelled); traffic, whose counters move, never rests.
    assert!(skipped > 380 / 2, "skipped {skipped} of {} s", every.len());
    assert!(every.windows(2).any(|w| w[1] < w[0]), "no scale-down seen");
}

proptest! {
    #[test]
    fn resting_never_changes_a_decision(
        policy in valid_policy(), plateaus in plateaus(), start in 1..20u32,
    ) {
        let (every, resting, _) = with_and_without_rest(&policy, &plateaus, start);
        prop_assert_eq!(every, resting);
    }
}
