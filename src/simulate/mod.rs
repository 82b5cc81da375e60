//! The simulator: replays a load trace through a pool under asyncpool's own scaling code and
//! under its peers' policies, and reports the queue wait and the pod-seconds of each, so a
//! user can ask "what would this pool have done with last Tuesday's traffic?" before
//! deploying. `docs/simulate.md` is the user's guide.
//!
//! - [`trace`] reads traces, [`generate`] makes them;
//! - [`world`] is the simulated pool (sidecar queues, a Service, start-up, drain) that every
//!   policy drives the same way;
//! - [`operator`] is asyncpool (the operator's `Scaler`, unchanged), [`hpa_keda`] and
//!   [`knative`] the baselines, each rule with its upstream source; a fixed pool is sized for
//!   the peak, and [`bound`] is the clairvoyant bound;
//! - [`report`] and [`plot`] turn runs into a table, JSON and an SVG.

pub mod bound;
pub mod command;
pub mod generate;
pub mod hpa_keda;
pub mod knative;
pub mod operator;
pub mod plot;
pub mod report;
pub mod trace;
pub mod world;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::crd::{AsyncWorkerPool, SourceKind};
use crate::pool::{EffectiveSpec, SpecError, initial_replicas};
use crate::resources::DRAIN_GRACE_SECONDS;
use asyncpool_contract::duration::parse_duration;
use bound::clairvoyant;
use report::{Comparison, Explained, PolicyReport, TraceSummary};
use trace::Trace;
use world::{Autoscaler, Balancer, Dispatch, StartupDelay, Workers, World};

/// The policies a run compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum PolicyKind {
    /// asyncpool's operator, as the pool's spec configures it.
    Asyncpool,
    /// The HPA driven by KEDA, at their defaults.
    HpaKeda,
    /// Knative's KPA, at its defaults.
    Knative,
    /// A fixed pool sized for the trace's peak.
    Fixed,
    /// The clairvoyant bound.
    Clairvoyant,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::Asyncpool,
        PolicyKind::HpaKeda,
        PolicyKind::Knative,
        PolicyKind::Fixed,
        PolicyKind::Clairvoyant,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Asyncpool => "asyncpool",
            PolicyKind::HpaKeda => "hpa-keda",
            PolicyKind::Knative => "knative",
            PolicyKind::Fixed => "fixed",
            PolicyKind::Clairvoyant => "clairvoyant",
        }
    }
}

/// How a run is set up, beyond the pool and the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub startup: StartupDelay,
    pub balancer: Balancer,
    pub seed: u64,
    pub policies: Vec<PolicyKind>,
    /// The fixed pool's size; sized for the peak when `None`.
    pub fixed_replicas: Option<u32>,
    /// Keep asyncpool's reason for every change of size.
    pub explain: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            startup: StartupDelay::Fixed(5.0),
            balancer: Balancer::Random,
            seed: 1,
            policies: PolicyKind::ALL.to_vec(),
            fixed_replicas: None,
            explain: false,
        }
    }
}

/// The simulated workers of `pool`.
pub fn workers_of(
    pool: &AsyncWorkerPool,
    effective: &EffectiveSpec,
    options: &Options,
) -> Result<Workers, SpecError> {
    let sidecar = &effective.sidecar;
    let queue_timeout = parse_duration(&sidecar.queue_timeout.0).map_err(|problem| SpecError {
        field: "queue.queueTimeout",
        problem,
    })?;
    let dispatch = match (pool.spec.queue.source, &pool.spec.queue.redis) {
        (SourceKind::Redis, Some(redis)) => Dispatch::Shared(redis.kind),
        _ => Dispatch::Service(options.balancer),
    };
    Ok(Workers {
        concurrency: sidecar.concurrency,
        max_queue: sidecar.max_queue,
        queue_timeout: queue_timeout.as_secs_f64(),
        drain_grace: DRAIN_GRACE_SECONDS as f64,
        drain_timeout: sidecar.drain_timeout.as_secs_f64(),
        dispatch,
        startup: options.startup,
    })
}

/// Runs `trace` through `pool` under each of `options.policies`. `progress` hears the policy
/// being run and the fraction of the trace done.
pub fn compare(
    pool: &AsyncWorkerPool,
    trace: &Trace,
    options: &Options,
    progress: &mut dyn FnMut(&str, f64),
) -> Result<Comparison, SpecError> {
    let spec = &pool.spec;
    let effective = EffectiveSpec::from_spec(spec, spec.paused)?;
    let workers = workers_of(pool, &effective, options)?;
    let policy = &effective.policy;
    let initial = u32::try_from(initial_replicas(spec)).unwrap_or(0);
    let end_of_work = trace.end();
    let bound = clairvoyant(
        trace.requests().iter().map(|r| (r.arrival, r.service)),
        workers.concurrency,
        policy.min_replicas,
        policy.max_replicas,
        // The shortest start-up keeps it a bound whatever start-ups the policies draw.
        options.startup.shortest(),
        end_of_work,
    );
    let fixed = options
        .fixed_replicas
        .unwrap_or(bound.peak_replicas)
        .clamp(policy.min_replicas, policy.max_replicas);
    // The periodic loops of the baselines run on clocks of their own: their phases are drawn
    // from the seed.
    let mut phases = ChaCha8Rng::seed_from_u64(options.seed ^ 0x7068_6173_6573);
    let mut phase = |period: f64| period * phases.random::<f64>();
    let (hpa_sync, keda_poll) = (phase(hpa_keda::HPA_SYNC), phase(hpa_keda::KEDA_POLL));
    let (kpa_tick, kpa_scrape) = (phase(knative::TICK), phase(knative::SCRAPE));
    let shared = match workers.dispatch {
        Dispatch::Shared(kind) => Some(kind),
        Dispatch::Service(_) => None,
    };

    let mut policies = Vec::new();
    for kind in &options.policies {
        let mut autoscaler: Box<dyn Autoscaler> = match kind {
            PolicyKind::Clairvoyant => {
                policies.push(PolicyReport::from_bound(trace, &bound, end_of_work));
                continue;
            }
            PolicyKind::Asyncpool => {
                Box::new(operator::Operator::new(policy.clone(), initial, shared))
            }
            PolicyKind::HpaKeda => Box::new(hpa_keda::HpaKeda::new(
                policy.target_per_worker,
                policy.min_replicas,
                policy.max_replicas,
                initial,
                hpa_sync,
                keda_poll,
            )),
            PolicyKind::Knative => Box::new(knative::Kpa::new(
                workers.concurrency,
                policy.min_replicas,
                policy.max_replicas,
                initial,
                kpa_tick,
                kpa_scrape,
            )),
            PolicyKind::Fixed => Box::new(Fixed(fixed)),
        };
        let world = World::new(workers.clone(), trace.requests(), end_of_work, options.seed);
        let name = kind.name();
        let run = world.run(autoscaler.as_mut(), &mut |done| progress(name, done));
        let mut report = PolicyReport::from_run(name, trace, &run, end_of_work);
        if options.explain {
            report.decisions = autoscaler
                .explanations()
                .into_iter()
                .map(|(at, reason)| Explained {
                    at_seconds: at,
                    reason,
                })
                .collect();
        }
        policies.push(report);
    }
    Ok(Comparison {
        pool: pool.metadata.name.clone().unwrap_or_default(),
        trace: TraceSummary::of(trace, bound.peak_demand, end_of_work),
        startup_delay: describe(options.startup),
        seed: options.seed,
        policies,
        plot_horizon: end_of_work,
    })
}

fn describe(startup: StartupDelay) -> String {
    match startup {
        StartupDelay::Fixed(seconds) => format!("{seconds} s"),
        StartupDelay::Uniform { min, max } => format!("{min}–{max} s"),
    }
}

/// A pool that never changes size.
struct Fixed(u32);

impl Autoscaler for Fixed {
    fn initial_replicas(&self) -> u32 {
        self.0
    }

    fn next_look(&self, _changed_at: Option<f64>) -> f64 {
        f64::INFINITY
    }

    fn look(&mut self, world: &mut World) -> u32 {
        world.replicas()
    }
}
