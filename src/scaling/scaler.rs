//! One pool's history and the decision pipeline:
//! read the sources → update the history → recommend (from the load, or from the silence when
//! nothing answers) → scale-down stabilization → warm-up gate → rate limits → min/max.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use asyncpool_contract::queue::{QueueSnapshot, Scope};

use super::policy::Policy;
use super::rates::{RateEstimate, RateTracker};
use super::window::LoadWindow;

/// Rate limits count per second, not per call: decisions may come on every sidecar change,
/// and a chatty pool must not compound ×10 ten times a second.
const RATE_PERIOD: Duration = Duration::from_secs(1);

/// Smallest growth allowed per second, so a pool of 0 or 1 is not held to ×rate of almost
/// nothing (the HPA's +4 pods).
const MIN_SCALE_UP_STEP: u32 = 4;

/// How far, in standard deviations of its Poisson noise, the short-window Little's-law load
/// must move from the stable-window mean before the pool follows it.
const RATE_NOISE_SIGMAS: f64 = 2.0;

/// How long a pod that has just turned ready may go without its first reading before it counts
/// as missing. Its reader connects when the pod gets an address and retries once per poll, so
/// the first answer can trail readiness by about a poll; a pool must not read every scale-up as
/// a gap in its data (that would hold off every scale-down for a stable window).
pub const FIRST_READING_GRACE: Duration = Duration::from_secs(5);

/// How long a ready pod whose reader has not finished a single read yet still counts as
/// starting rather than silent: an operator that just started opens a reader per pod, and at
/// thousands of pods the last ones connect tens of seconds later.
pub const FIRST_READ_PATIENCE: Duration = Duration::from_secs(120);

/// Averages of whole loads carry float noise (10.000000001); it must not add a worker.
const CEIL_SLACK: f64 = 1e-9;

/// One worker pod as the operator saw it this round.
#[derive(Debug, Clone, PartialEq)]
pub struct PodReading {
    /// Shared with the operator's other records of the pod: a clone costs no allocation.
    pub name: Arc<str>,
    /// The sidecar's answer; `None` when it did not answer, answered garbage or out-of-range
    /// values. Missing data is never read as zero. A snapshot that fails
    /// [`QueueSnapshot::validate`] counts as `None`.
    pub snapshot: Option<QueueSnapshot>,
    /// How long before the observation the snapshot's figures were last known current: a
    /// paced stream writes a busy pod's counters about once a second, not at every request.
    pub age: Duration,
    /// No read of the pod's sidecar has finished yet (its reader is connecting): a ready pod
    /// in that state is starting, not missing, for up to [`FIRST_READ_PATIENCE`].
    pub unread: bool,
    /// The pod's Ready condition. A silent pod that is not ready is starting or failing: it is
    /// not missing data while other sources answer, and it is not capacity.
    pub ready: bool,
}

/// A pool-wide reading that does not come through a pod, e.g. the operator reading a Redis
/// list itself. It is the only way to see load at zero replicas, so scaling from zero needs it.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ExternalReading {
    /// The pool's sources are its pods alone (proxy and report sources).
    #[default]
    NotConfigured,
    /// An external reading was expected and failed: missing data.
    Missing,
    /// Pool-wide figures, taken as one value whatever their `scope` says.
    Reading(QueueSnapshot),
}

/// Everything the policy needs from one round of observation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    /// Time since an arbitrary origin, the same for every call on one [`Scaler`]. A time earlier
    /// than the previous call's is taken as the previous call's.
    pub now: Duration,
    /// The Deployment's `spec.replicas`.
    pub current_replicas: u32,
    pub pods: Vec<PodReading>,
    pub external: ExternalReading,
}

/// Which window drives the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Following the stable-window load.
    Stable,
    /// A burst: the load there now counts too, until a panic window passes without a burst.
    Panic,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Stable => "stable",
            Mode::Panic => "panic",
        }
    }
}

/// How complete this round's data was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricsState {
    /// Every source answered.
    Available,
    /// Some sources answered; `missing` ready pods (or the external source) did not.
    Partial { missing: usize },
    /// No source has answered since `since`.
    Missing { since: Duration },
    /// No source has answered since `since`, but none is silent either: every ready pod (if
    /// any) is starting: just turned ready, or its reader has yet to finish a first read, as
    /// after an operator restart. Decided as `Missing`; reported as waiting, not as a problem.
    Awaiting { since: Duration, starting: usize },
    /// Nothing to read: no pods and no external source (a pool at zero, or pods not listed yet).
    NoSource,
}

impl MetricsState {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricsState::Available => "available",
            MetricsState::Partial { .. } => "partial",
            MetricsState::Missing { .. } => "missing",
            MetricsState::Awaiting { .. } => "awaiting",
            MetricsState::NoSource => "no_source",
        }
    }
}

/// What settled the decision: a bounded set, fit for a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// More replicas for more load.
    ScaleUp,
    /// Fewer replicas for less load.
    ScaleDown,
    /// The load fits the current size (within tolerance).
    Hold,
    /// The load asks for fewer replicas but a scale-down is held back: stabilization window,
    /// panic, or not yet a full stable window of complete data since start or since a gap.
    Stabilizing,
    /// min or max overrode what the load asked for.
    Clamped,
    /// Data is missing: no scale-down, and no fallback in force.
    MissingData,
    /// No source answered for longer than the grace: the fallback size is in force.
    Fallback,
    /// The pool is paused.
    Paused,
    /// The policy fails [`Policy::validate`]; the size holds.
    InvalidPolicy,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::ScaleUp => "scale_up",
            DecisionKind::ScaleDown => "scale_down",
            DecisionKind::Hold => "hold",
            DecisionKind::Stabilizing => "stabilizing",
            DecisionKind::Clamped => "clamped",
            DecisionKind::MissingData => "missing_data",
            DecisionKind::Fallback => "fallback",
            DecisionKind::Paused => "paused",
            DecisionKind::InvalidPolicy => "invalid_policy",
        }
    }
}

/// The outcome of one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The replicas to set.
    pub replicas: u32,
    /// Why, in words, with the figures used.
    pub reason: String,
    pub kind: DecisionKind,
    pub mode: Mode,
    pub metrics: MetricsState,
    /// The windowed load the decision was based on; when paused, the stable-window load; 0
    /// when no load was used (missing data, no source, invalid policy).
    pub load: f64,
    /// The pool's load in this round's readings, `None` when nothing answered. Pods that did
    /// not answer are not in it.
    pub observed_load: Option<f64>,
    /// Arrival rate and service time when the counters allow them (whether or not the
    /// policy is rate-aware).
    pub rates: Option<RateEstimate>,
    /// `replicas` differs from the current replicas.
    pub changed: bool,
}

/// One pool's scaling state. Same inputs in the same order give the same decisions: no clock,
/// no randomness, no I/O.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaler {
    last_now: Duration,
    loads: LoadWindow,
    rates: RateTracker,
    /// Little's-law load (arrivals × service time) per second, for its stable-window trend.
    rate_loads: LoadWindow,
    /// Highest lasting recommendation per second over `scale_down_delay`, for stabilization.
    recommendations: VecDeque<(Duration, u32)>,
    /// Highest recommendation for the present load per second over `panic_window`.
    present_recommendations: VecDeque<(Duration, u32)>,
    /// Sizes seen or decided during the last [`RATE_PERIOD`]: the base of the rate limits.
    sizes: VecDeque<(Duration, u32)>,
    /// The last time the panic window was over the threshold.
    burst_seen: Option<Duration>,
    /// Every round since then had complete data. Scale-down waits until that is a stable window
    /// ago, so the average it acts on holds no gap and no undercount.
    complete_since: Duration,
    /// No source has answered since then.
    silent_since: Option<Duration>,
    /// Ready pods that have not answered yet, and when each was first seen ready; `None` once
    /// a pod has answered. Pods no longer listed are forgotten.
    first_readings: HashMap<Arc<str>, Option<Duration>>,
    /// The last decision left the scaler at a fixed point (see [`Scaler::at_rest`]).
    at_rest: bool,
}

impl Scaler {
    /// A scaler for a pool found at `current_replicas`. It honours that size as a
    /// recommendation for one stabilization window and scales down only after a full stable
    /// window of data, so an operator restart causes no scale-down.
    pub fn new(now: Duration, current_replicas: u32) -> Self {
        Self {
            last_now: now,
            loads: LoadWindow::default(),
            rates: RateTracker::default(),
            rate_loads: LoadWindow::default(),
            recommendations: VecDeque::from([(now, current_replicas)]),
            present_recommendations: VecDeque::new(),
            sizes: VecDeque::new(),
            burst_seen: None,
            complete_since: now,
            silent_since: None,
            first_readings: HashMap::new(),
            at_rest: false,
        }
    }

    /// Whether the last decision left the scaler at a fixed point: it held the size (or held it
    /// at min or max) on complete data outside a panic, every window it averages is level, its
    /// recommendations are all one, no counter moved over the panic window, and no pod awaits
    /// its first reading. Then a decision at any later time on the same readings decides the
    /// same and records only what the seconds without a decision hold anyway (see
    /// `LoadWindow::record` and `remember`),
    /// so such decisions can be left out until a reading, the pods or the policy change.
    pub fn at_rest(&self) -> bool {
        self.at_rest
    }

    /// The readings stayed as the last decision saw them until `until`: decisions were left out
    /// while the scaler was at rest. Its counters held still over that time, so that a change
    /// after it counts within the second it came in, as if every second had been decided.
    pub fn rested_until(&mut self, until: Duration) {
        self.rates.hold_still_until(until);
    }

    fn settled(&self, now: Duration, policy: &Policy, rates: Option<RateEstimate>) -> bool {
        let level = |history: &VecDeque<(Duration, u32)>| {
            history
                .back()
                .is_none_or(|(_, newest)| history.iter().all(|(_, r)| r == newest))
        };
        self.burst_seen.is_none()
            && self.loads.is_flat()
            && (rates.is_none() || self.rate_loads.is_flat())
            && self.rates.is_still(now, policy.panic_window)
            && level(&self.recommendations)
            && level(&self.present_recommendations)
            && self.first_readings.values().all(Option::is_none)
    }

    /// Decides the pool's size for this round and records the round in the history.
    pub fn decide(&mut self, policy: &Policy, obs: &Observation) -> Decision {
        let now = obs.now.max(self.last_now);
        self.last_now = now;
        self.at_rest = false;
        let current = obs.current_replicas;
        let awaited = self.awaiting_first_reading(now, obs);
        let reading = Reading::of(obs, &awaited);
        let metrics = self.classify(now, &reading);

        if let Err(error) = policy.validate() {
            // An invalid policy's windows cannot bound the history, so none is kept; once fixed,
            // scale-down waits for a full window again.
            self.complete_since = now;
            self.loads.interrupt();
            self.rate_loads.interrupt();
            return Decision {
                replicas: current,
                reason: format!("invalid policy, holding {current}: {error}"),
                kind: DecisionKind::InvalidPolicy,
                mode: Mode::Stable,
                metrics,
                load: 0.0,
                observed_load: reading.load,
                rates: None,
                changed: false,
            };
        }

        // History is kept while paused too, so resuming acts on fresh data.
        match reading.load {
            Some(load) => self.loads.record(now, load, policy.stable_window),
            None => self.loads.interrupt(),
        }
        let rates = self.rates.update(
            now,
            policy.panic_window,
            obs.pods
                .iter()
                .map(|pod| (pod.name.clone(), usable(pod.snapshot.as_ref()), pod.age)),
        );
        match rates {
            Some(rates) => self
                .rate_loads
                .record(now, rates.load, policy.stable_window),
            None => self.rate_loads.interrupt(),
        }

        if policy.paused {
            self.burst_seen = None;
            remember(
                &mut self.recommendations,
                now,
                current,
                policy.scale_down_delay,
            );
            self.remember_sizes(now, current, current);
            return Decision {
                replicas: current,
                reason: format!("paused: holding {current}"),
                kind: DecisionKind::Paused,
                mode: Mode::Stable,
                metrics,
                load: self.loads.mean(now, policy.stable_window).unwrap_or(0.0),
                observed_load: reading.load,
                rates,
                changed: false,
            };
        }

        let proposal = match metrics {
            MetricsState::NoSource => Proposal {
                lasting: current,
                present: 0,
                kind: Some(DecisionKind::Hold),
                mode: self.mode_at(now, policy),
                load: 0.0,
                because: vec![if current == 0 {
                    "nothing to read at zero replicas (scaling from zero needs an external \
                     reading)"
                        .to_owned()
                } else {
                    "nothing to read: no pods listed and no external reading".to_owned()
                }],
            },
            MetricsState::Missing { since } | MetricsState::Awaiting { since, .. } => {
                self.recommend_when_silent(policy, now, current, since)
            }
            MetricsState::Available | MetricsState::Partial { .. } => {
                self.recommend_from_load(policy, now, current, &reading, metrics, rates)
            }
        };
        let outcome = self.settle(policy, now, current, proposal);
        // Held, or held at min or max: the same outcome for as long as nothing moves.
        self.at_rest = matches!(outcome.kind, DecisionKind::Hold | DecisionKind::Clamped)
            && outcome.replicas == current
            && outcome.mode == Mode::Stable
            && metrics == MetricsState::Available
            && self.settled(now, policy, rates);
        Decision {
            replicas: outcome.replicas,
            reason: outcome.reason,
            kind: outcome.kind,
            mode: outcome.mode,
            metrics,
            load: outcome.load,
            observed_load: reading.load,
            rates,
            changed: outcome.replicas != current,
        }
    }

    /// Ready pods that have not answered once and are still within [`FIRST_READING_GRACE`] of
    /// turning ready (or within [`FIRST_READ_PATIENCE`] while their reader has not finished a
    /// read): starting, not missing.
    fn awaiting_first_reading(&mut self, now: Duration, obs: &Observation) -> Vec<bool> {
        // Listed pods with an entry, counted as they are looked up.
        let mut kept = 0;
        let awaited = obs
            .pods
            .iter()
            .map(|pod| {
                // Garbage is an answer too: the reader got through.
                let answered = pod.snapshot.is_some();
                match self.first_readings.get_mut(&pod.name) {
                    Some(entry) => {
                        kept += 1;
                        if answered {
                            *entry = None;
                        }
                        entry.is_some_and(|ready| {
                            let waited = now.saturating_sub(ready);
                            waited < FIRST_READING_GRACE
                                || (pod.unread && waited < FIRST_READ_PATIENCE)
                        })
                    }
                    None if answered => {
                        kept += 1;
                        self.first_readings.insert(pod.name.clone(), None);
                        false
                    }
                    None if pod.ready => {
                        kept += 1;
                        self.first_readings.insert(pod.name.clone(), Some(now));
                        true
                    }
                    None => false,
                }
            })
            .collect();
        // Every entry is a listed pod's unless pods left (names are unique): the set of names
        // is made only then, not every second for every busy pool.
        if self.first_readings.len() > kept {
            let listed: HashSet<&str> = obs.pods.iter().map(|pod| &*pod.name).collect();
            self.first_readings
                .retain(|name, _| listed.contains(&**name));
        }
        awaited
    }

    fn classify(&mut self, now: Duration, reading: &Reading) -> MetricsState {
        let metrics = if reading.sources == 0 {
            MetricsState::NoSource
        } else if reading.load.is_none() {
            let since = *self.silent_since.get_or_insert(now);
            if reading.missing == 0 {
                MetricsState::Awaiting {
                    since,
                    starting: reading.starting,
                }
            } else {
                MetricsState::Missing { since }
            }
        } else if reading.missing > 0 {
            MetricsState::Partial {
                missing: reading.missing,
            }
        } else {
            MetricsState::Available
        };
        if !matches!(
            metrics,
            MetricsState::Missing { .. } | MetricsState::Awaiting { .. }
        ) {
            self.silent_since = None;
        }
        if metrics != MetricsState::Available {
            self.complete_since = now;
        }
        metrics
    }

    /// Panic lasts until a panic window passes without a burst.
    fn mode_at(&mut self, now: Duration, policy: &Policy) -> Mode {
        match self.burst_seen {
            Some(seen) if now < seen.saturating_add(policy.panic_window) => Mode::Panic,
            _ => {
                self.burst_seen = None;
                Mode::Stable
            }
        }
    }

    /// No source answers: hold, then the fallback once the grace is over. Never lower.
    fn recommend_when_silent(
        &mut self,
        policy: &Policy,
        now: Duration,
        current: u32,
        since: Duration,
    ) -> Proposal {
        let silent_for = now.saturating_sub(since);
        let grace = policy.missing_data_grace;
        let (recommendation, kind, clause) = match policy.fallback_replicas {
            _ if silent_for < grace => (
                current,
                DecisionKind::MissingData,
                match policy.fallback_replicas {
                    Some(fallback) => format!(
                        "no source answered for {}; fallback to {fallback} after {}",
                        Secs(silent_for),
                        Secs(grace)
                    ),
                    None => format!(
                        "no source answered for {} (no fallback configured)",
                        Secs(silent_for)
                    ),
                },
            ),
            Some(fallback) if fallback > current => (
                fallback,
                DecisionKind::Fallback,
                format!(
                    "no source answered for {}: fallback to {fallback}",
                    Secs(silent_for)
                ),
            ),
            Some(fallback) => (
                current,
                DecisionKind::Fallback,
                format!(
                    "no source answered for {}: fallback {fallback} is not above the current \
                     size, and missing data never scales down",
                    Secs(silent_for)
                ),
            ),
            None => (
                current,
                DecisionKind::MissingData,
                format!(
                    "no source answered for {} and no fallback is configured",
                    Secs(silent_for)
                ),
            ),
        };
        Proposal {
            lasting: recommendation,
            present: 0,
            kind: Some(kind),
            mode: self.mode_at(now, policy),
            load: 0.0,
            because: vec![clause],
        }
    }

    /// What the load needs for longer than a burst, in workers, and why. With the counters:
    /// arrivals × service time (Little's law), its stable-window mean unless the short window
    /// moved by more than its Poisson noise, so a real rise or fall is followed within a panic
    /// window and the wobble of a steady load is not; never below what a standing queue at full
    /// concurrency asks for. Without them: the larger of the stable and short window loads.
    fn lasting_need(
        &self,
        policy: &Policy,
        now: Duration,
        loads: [f64; 3],
        rates: Option<RateEstimate>,
        mode: Mode,
    ) -> (f64, String) {
        let [stable_load, short_mean, observed] = loads;
        let per_worker = policy.target_per_worker;
        let by_load = |load: f64, window: Duration| {
            (
                load / per_worker,
                format!(
                    "load {} ({} mean) / {} per worker = {} workers",
                    Num(load),
                    Secs(window),
                    Num(per_worker),
                    Num(load / per_worker)
                ),
            )
        };
        let Some(rates) = rates.filter(|_| policy.rate_aware) else {
            return if short_mean > stable_load {
                by_load(short_mean, policy.panic_window)
            } else {
                by_load(stable_load, policy.stable_window)
            };
        };
        let stable = self
            .rate_loads
            .trend(now, policy.stable_window)
            .unwrap_or(rates.load);
        let noise = RATE_NOISE_SIGMAS
            * (stable.max(rates.load) * rates.mean_service_seconds
                / policy.panic_window.as_secs_f64())
            .sqrt();
        let moved = (rates.load - stable).abs() > noise;
        let busy = if moved { rates.load } else { stable };
        let workers = busy / policy.rate_load_per_worker();
        // The estimate errs short by design; a queue that stands above full concurrency over
        // the stable window, the short one and now, outside a panic, says it erred (a burst's
        // backlog is the panic's to meet).
        let standing = stable_load.min(short_mean).min(observed);
        let queue_floor = standing / f64::from(policy.concurrency);
        if mode == Mode::Stable && queue_floor > workers {
            return (
                queue_floor,
                format!(
                    "load {} stands above the full concurrency of {} per worker ({} and {} \
                     means, and now) = {} workers",
                    Num(standing),
                    policy.concurrency,
                    Secs(policy.stable_window),
                    Secs(policy.panic_window),
                    Num(queue_floor)
                ),
            );
        }
        let clause = if moved {
            format!(
                "arrivals {}/s × {} s service keep {} busy / {} per worker = {} workers",
                Num(rates.arrivals_per_second),
                Num(rates.mean_service_seconds),
                Num(rates.load),
                Num(policy.rate_load_per_worker()),
                Num(workers)
            )
        } else {
            format!(
                "arrivals × service time keep {} busy ({} trend) / {} per worker = {} workers",
                Num(stable),
                Secs(policy.stable_window),
                Num(policy.rate_load_per_worker()),
                Num(workers)
            )
        };
        (workers, clause)
    }

    /// The load-based recommendation, in two parts. What lasts: arrivals × service time (Little's
    /// law) when the counters give them, else the stable-window load. What is there now: the
    /// short-window load, backlog included. A backlog built while workers start is met at once
    /// but is not a lasting need, so only the lasting part is held through the scale-down delay;
    /// the present part is held for a panic window. No scale-down on partial data.
    fn recommend_from_load(
        &mut self,
        policy: &Policy,
        now: Duration,
        current: u32,
        reading: &Reading,
        metrics: MetricsState,
        rates: Option<RateEstimate>,
    ) -> Proposal {
        let observed = reading.load.unwrap_or(0.0);
        let stable_load = self
            .loads
            .mean(now, policy.stable_window)
            .unwrap_or(observed);
        let short_mean = self
            .loads
            .mean(now, policy.panic_window)
            .unwrap_or(observed);
        let per_worker = policy.target_per_worker;
        let ready = reading.ready_workers.max(1);
        // A burst needs workers now: within the current second the window mean still averages
        // the level before a burst with the burst, so a burst is judged, and met, on the
        // present level when that is higher.
        let present_load = short_mean.max(observed);
        let burst = present_load / per_worker >= policy.panic_threshold * f64::from(ready);
        if burst {
            self.burst_seen = Some(now);
        }
        let mode = self.mode_at(now, policy);

        let (lasting, lasting_clause) = self.lasting_need(
            policy,
            now,
            [stable_load, short_mean, observed],
            rates,
            mode,
        );
        // In a panic the load there now counts, held for a panic window through the history
        // of recommendations (not through the window mean too, which would hold a drained
        // backlog twice). Short of a panic what lasts decides alone: a peak of a second, gone
        // before a new worker could start, adds none. Per worker as the rate term counts it
        // (never above a worker's concurrency), so entering a panic never asks for fewer
        // workers than the queue floor did.
        let present = match mode {
            Mode::Panic => observed / policy.rate_load_per_worker(),
            Mode::Stable => 0.0,
        };
        let (workers, sizing) = if present > lasting {
            let ago = now.saturating_sub(self.burst_seen.unwrap_or(now));
            let why = if ago.is_zero() {
                format!(
                    "panic: the {} load needs ≥ {} × the {ready} ready workers",
                    Secs(policy.panic_window),
                    Num(policy.panic_threshold)
                )
            } else {
                format!("panic since a burst {} ago", Secs(ago))
            };
            (
                present,
                format!(
                    "{why}: load {} now / {} per worker = {} workers, above what lasts \
                     ({lasting_clause})",
                    Num(observed),
                    Num(policy.rate_load_per_worker()),
                    Num(present)
                ),
            )
        } else {
            (lasting, lasting_clause)
        };

        // Tolerance holds off small scale-downs only: one worker too many costs a little, one
        // too few makes requests wait.
        let within_tolerance = current > 0
            && workers <= f64::from(current)
            && 1.0 - workers / f64::from(current) <= policy.tolerance;
        let mut because = Vec::new();
        let (mut lasting, mut present) = (whole_workers(lasting), whole_workers(present));
        if within_tolerance && lasting.max(present) != current {
            because.push(format!(
                "{sizing}, within {} % of {current}",
                Num(policy.tolerance * 100.0)
            ));
            lasting = current;
            present = present.min(current);
        } else {
            because.push(format!("{sizing} → {}", lasting.max(present)));
        }

        let mut kind = None;
        if lasting.max(present) < current
            && let MetricsState::Partial { missing } = metrics
        {
            because.push(format!(
                "{missing} of {} sources gave no reading: no scale-down on partial data",
                reading.sources
            ));
            lasting = current;
            kind = Some(DecisionKind::MissingData);
        }
        Proposal {
            lasting,
            present,
            kind,
            mode,
            load: if present > lasting {
                observed
            } else {
                stable_load
            },
            because,
        }
    }

    /// From a recommendation to the replicas to set: stabilization, warm-up gate, rate
    /// limits, min/max. Every path goes through here, so every path is bounded.
    fn settle(
        &mut self,
        policy: &Policy,
        now: Duration,
        current: u32,
        proposal: Proposal,
    ) -> Outcome {
        let Proposal {
            lasting,
            present,
            mut kind,
            mode,
            load,
            mut because,
        } = proposal;

        let delay = policy.scale_down_delay;
        let highest_lasting = remember(&mut self.recommendations, now, lasting, delay);
        let highest_present = remember(
            &mut self.present_recommendations,
            now,
            present,
            policy.panic_window,
        );
        let recommendation = lasting.max(present);
        let mut target = recommendation;
        let held = highest_lasting.max(highest_present);
        if target < current && held > target {
            target = held.min(current);
            because.push(if highest_present > highest_lasting {
                format!(
                    "the highest recommendation for the present load in the last {} is {highest_present}",
                    Secs(policy.panic_window)
                )
            } else {
                format!(
                    "the highest recommendation in the last {} is {highest_lasting}",
                    Secs(delay)
                )
            });
            if target == current {
                kind = Some(DecisionKind::Stabilizing);
            }
        }

        let complete_for = now.saturating_sub(self.complete_since);
        if target < current && complete_for < policy.stable_window {
            target = current;
            kind = Some(DecisionKind::Stabilizing);
            because.push(format!(
                "no scale-down before {} of complete data ({} so far)",
                Secs(policy.stable_window),
                Secs(complete_for)
            ));
        }

        if let Some((limited, clause)) = self.rate_limit(policy, now, current, target) {
            target = limited;
            because.push(clause);
        }

        // validate() guarantees min <= max, so clamp cannot panic here.
        let replicas = target.clamp(policy.min_replicas, policy.max_replicas);
        if replicas != target {
            kind = Some(DecisionKind::Clamped);
            because.push(if replicas > target {
                format!("raised to the minimum {replicas}")
            } else {
                format!("capped at the maximum {replicas}")
            });
        }
        self.remember_sizes(now, current, replicas);

        let kind = kind.unwrap_or(match replicas.cmp(&current) {
            Ordering::Greater => DecisionKind::ScaleUp,
            Ordering::Less => DecisionKind::ScaleDown,
            Ordering::Equal => DecisionKind::Hold,
        });
        because.push(match replicas.cmp(&current) {
            Ordering::Greater => format!("scaling up {current} → {replicas}"),
            Ordering::Less => format!("scaling down {current} → {replicas}"),
            Ordering::Equal => format!("holding {current}"),
        });
        Outcome {
            replicas,
            kind,
            mode,
            load,
            reason: because.join("; "),
        }
    }

    fn remember_sizes(&mut self, now: Duration, current: u32, decided: u32) {
        self.sizes.push_back((now, current));
        if decided != current {
            self.sizes.push_back((now, decided));
        }
    }

    /// Growth per second: at most ×`max_scale_up_rate`, at least +[`MIN_SCALE_UP_STEP`], from
    /// the smallest size of the last second. Shrink per second: at most ÷`max_scale_down_rate`
    /// from the largest. Returns the limited target and why, when the limit bit.
    fn rate_limit(
        &mut self,
        policy: &Policy,
        now: Duration,
        current: u32,
        target: u32,
    ) -> Option<(u32, String)> {
        while self
            .sizes
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) >= RATE_PERIOD)
        {
            self.sizes.pop_front();
        }
        let recent = self.sizes.iter().map(|(_, size)| *size);
        let smallest = recent.clone().fold(current, u32::min);
        let largest = recent.fold(current, u32::max);
        match target.cmp(&current) {
            Ordering::Greater => {
                let by_rate = to_count((f64::from(smallest) * policy.max_scale_up_rate).ceil());
                let ceiling = by_rate
                    .max(smallest.saturating_add(MIN_SCALE_UP_STEP))
                    .max(current);
                (target > ceiling).then(|| {
                    (
                        ceiling,
                        format!(
                            "limited to {ceiling}: at most ×{} (or +{MIN_SCALE_UP_STEP}) per \
                             second from {smallest}",
                            Num(policy.max_scale_up_rate)
                        ),
                    )
                })
            }
            Ordering::Less => {
                let floor = to_count((f64::from(largest) / policy.max_scale_down_rate).floor())
                    .min(current);
                (target < floor).then(|| {
                    (
                        floor,
                        format!(
                            "limited to {floor}: at most ÷{} per second from {largest}",
                            Num(policy.max_scale_down_rate)
                        ),
                    )
                })
            }
            Ordering::Equal => None,
        }
    }
}

/// Records `recommendation` made at `now` in `history` and returns the highest one within
/// `window`, this one included. One entry per second (its highest) keeps the history as long as
/// the window in seconds, however often decisions come. A second without a decision (the
/// operator was busy, or had no reason to look) holds the recommendation before it, so a gap in
/// decisions never cuts a delay short.
fn remember(
    history: &mut VecDeque<(Duration, u32)>,
    now: Duration,
    recommendation: u32,
    window: Duration,
) -> u32 {
    if let Some(&(last_at, held)) = history.back() {
        // Only the seconds the window can still see: the gap may be hours.
        let unseen = now.saturating_sub(window).saturating_sub(last_at).as_secs();
        let mut at = last_at.saturating_add(Duration::from_secs(unseen.max(1)));
        while at.as_secs() < now.as_secs() {
            if now.saturating_sub(at) < window {
                history.push_back((at, held));
            }
            at = at.saturating_add(Duration::from_secs(1));
        }
    }
    while history
        .front()
        .is_some_and(|(at, _)| now.saturating_sub(*at) >= window)
    {
        history.pop_front();
    }
    match history.back_mut() {
        Some((at, highest)) if at.as_secs() == now.as_secs() => {
            *highest = (*highest).max(recommendation);
        }
        _ => history.push_back((now, recommendation)),
    }
    history
        .iter()
        .map(|(_, recommendation)| *recommendation)
        .fold(recommendation, u32::max)
}

/// A recommendation before it settles.
struct Proposal {
    /// For what lasts: held through the scale-down delay.
    lasting: u32,
    /// For the load there now, backlog included: held for a panic window.
    present: u32,
    /// Set when something other than the load's direction explains the outcome.
    kind: Option<DecisionKind>,
    mode: Mode,
    load: f64,
    because: Vec<String>,
}

/// A settled decision, before the round's data is attached.
struct Outcome {
    replicas: u32,
    kind: DecisionKind,
    mode: Mode,
    load: f64,
    reason: String,
}

/// What this round's sources said, summed up.
struct Reading {
    /// Pod-scoped loads added up, plus the largest pool-scoped load; `None` if nothing answered.
    load: Option<f64>,
    /// Places there were to read: pods, and the external source when configured.
    sources: usize,
    /// Ready pods (and the external source) without a usable reading.
    missing: usize,
    /// Ready pods without a reading that are starting, not missing.
    starting: usize,
    /// Ready pods not known to be draining: the serving capacity, for the panic threshold.
    ready_workers: u32,
}

impl Reading {
    /// `awaited[i]`: pod `i` is ready and still within its grace for a first reading.
    fn of(obs: &Observation, awaited: &[bool]) -> Self {
        let mut pod_scoped = 0.0;
        let mut pool_scoped: Option<f64> = None;
        let mut add = |load: f64, scope: Scope| match scope {
            Scope::Pod => pod_scoped += load,
            // A shared queue is the same list seen from every pod: one value, never a sum.
            Scope::Pool => pool_scoped = Some(pool_scoped.map_or(load, |seen| seen.max(load))),
        };
        let mut answered = 0usize;
        let mut missing = 0usize;
        let mut starting = 0usize;
        let mut ready_workers = 0u32;
        for (index, pod) in obs.pods.iter().enumerate() {
            match usable(pod.snapshot.as_ref()) {
                Some(snapshot) => {
                    answered += 1;
                    // A draining pod's work still counts, but it is leaving: not capacity.
                    add(load_of(snapshot), snapshot.scope);
                    if pod.ready && !snapshot.draining {
                        ready_workers = ready_workers.saturating_add(1);
                    }
                }
                None if pod.ready => {
                    // Serving, so capacity; silent because its reader has yet to connect.
                    if awaited.get(index).copied().unwrap_or(false) {
                        starting += 1;
                    } else {
                        missing += 1;
                    }
                    ready_workers = ready_workers.saturating_add(1);
                }
                None => {}
            }
        }
        let mut sources = obs.pods.len();
        match &obs.external {
            ExternalReading::NotConfigured => {}
            ExternalReading::Missing => {
                sources += 1;
                missing += 1;
            }
            ExternalReading::Reading(snapshot) => {
                sources += 1;
                match usable(Some(snapshot)) {
                    Some(snapshot) => {
                        answered += 1;
                        add(load_of(snapshot), Scope::Pool);
                    }
                    None => missing += 1,
                }
            }
        }
        Self {
            load: (answered > 0).then(|| pod_scoped + pool_scoped.unwrap_or(0.0)),
            sources,
            missing,
            starting,
            ready_workers,
        }
    }
}

/// A snapshot the policy may use: one that passes the contract's range checks.
fn usable(snapshot: Option<&QueueSnapshot>) -> Option<&QueueSnapshot> {
    snapshot.filter(|snapshot| snapshot.validate().is_ok())
}

/// What waits plus what runs. In f64 so that no sum of pods can overflow.
fn load_of(snapshot: &QueueSnapshot) -> f64 {
    snapshot.queued as f64 + snapshot.in_flight as f64
}

/// Whole workers for a load counted in workers: any load needs at least one worker.
fn whole_workers(workers: f64) -> u32 {
    if workers.is_nan() || workers <= 0.0 {
        return 0;
    }
    to_count((workers - CEIL_SLACK).ceil()).max(1)
}

/// A float count to u32: `as` saturates (NaN becomes 0), which is the wanted behaviour.
fn to_count(value: f64) -> u32 {
    value as u32
}

/// A number for a reason: whole when it is, else one decimal.
struct Num(f64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if (self.0 - self.0.round()).abs() < 0.05 {
            write!(f, "{:.0}", self.0)
        } else {
            write!(f, "{:.1}", self.0)
        }
    }
}

/// A duration for a reason, in seconds.
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} s", Num(self.0.as_secs_f64()))
    }
}
