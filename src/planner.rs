//! Planning, step 3 of a reconcile: from what was observed and read to the size the pool should
//! have and the workers to remove first. Pure (no I/O, the clock passed in), so every path is
//! unit-tested here; reconcile gathers the inputs and carries the plan out.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::crd::AsyncWorkerPool;
use crate::pool::{EffectiveSpec, initial_replicas};
use crate::queue::reader::{Current, Unavailable};
use crate::scaling::{
    Candidate, Decision, ExternalReading, Observation, PodReading, Scaler, Supervision,
    choose_victims,
};
use asyncpool_contract::queue::QueueSnapshot;

/// What the operator remembers about a pool between reconciles (lost on restart by design:
/// a fresh scaler seeded with the current size does not scale down until it has a window of
/// history, so a restart causes no flapping).
pub(crate) struct PoolMemory {
    pub(crate) scaler: Scaler,
    /// When the status was last handed to the status desk (reconcile's throttle of figure-only
    /// changes).
    pub(crate) last_status_submitted: Option<Instant>,
    /// The worker being recycled, and why.
    pub(crate) recycling: Option<(String, String)>,
    /// The Deployment size that carries that recycling's extra worker. The scaler sees one
    /// worker less only while the Deployment is at this size: a write that failed, or has not
    /// shown in the cache yet, leaves it elsewhere, and taking one off that size would have the
    /// scaler act on a pool smaller than it is (its scale-down delay skipped).
    pub(crate) surge: Option<i32>,
    /// The last plan was at rest, with the cluster showing it (see `reconcile::decision_round`).
    pub(crate) rest: Option<Rest>,
    /// The `kubectl scale` request the last plan acted on. The status says so once written,
    /// but a reconcile may come before that write shows: acting on the request again would
    /// reset the scaler and lose the recommendations made since.
    pub(crate) handled_request: Option<i32>,
}

/// A pool at rest: what its plan was made from, and until when rounds found all of it unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rest {
    pub(crate) stamp: RestStamp,
    pub(crate) unchanged_until: Option<Duration>,
}

/// The versions of everything a plan is made from: the pool object, its Deployment and
/// Service, its pods in the index and its sidecars' readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RestStamp {
    pub(crate) pool: Option<String>,
    pub(crate) deployment: Option<String>,
    pub(crate) service: Option<String>,
    pub(crate) pods: u64,
    pub(crate) readings: u64,
}

/// [`RestStamp`]'s fields as read this round, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sources<'a> {
    pub(crate) pool: Option<&'a str>,
    pub(crate) deployment: Option<&'a str>,
    pub(crate) service: Option<&'a str>,
    pub(crate) pods: u64,
    pub(crate) readings: u64,
}

impl RestStamp {
    pub(crate) fn of(sources: Sources) -> Self {
        Self {
            pool: sources.pool.map(str::to_owned),
            deployment: sources.deployment.map(str::to_owned),
            service: sources.service.map(str::to_owned),
            pods: sources.pods,
            readings: sources.readings,
        }
    }

    pub(crate) fn matches(&self, sources: Sources) -> bool {
        self.pool.as_deref() == sources.pool
            && self.deployment.as_deref() == sources.deployment
            && self.service.as_deref() == sources.service
            && self.pods == sources.pods
            && self.readings == sources.readings
    }
}

/// One worker pod as reconcile sees it.
#[derive(Debug, Clone)]
pub(crate) struct WorkerPod {
    /// Shared with the pod index, the readers and the scaler's histories.
    pub(crate) name: Arc<str>,
    pub(crate) ip: Option<IpAddr>,
    pub(crate) ready: bool,
    pub(crate) crash_looping: bool,
    /// The Deployment revision the pod was made from (its `pod-template-hash` label).
    pub(crate) template: Option<Arc<str>>,
}

/// Step 3's result.
pub(crate) struct Plan {
    pub(crate) replicas: i32,
    pub(crate) decision: Option<Decision>,
    pub(crate) handled_request: Option<i32>,
    pub(crate) degraded: Option<String>,
    /// Whether the crash-looping workers are a template's that cannot stay up (size held).
    pub(crate) template_crash_loops: bool,
    /// Workers to remove first when the size drops (marked with the lowest deletion cost).
    pub(crate) victims: Vec<String>,
    /// What the scale event says instead of the scaler's reason (recycling).
    pub(crate) note: Option<String>,
    /// How the operator's own read of the queue went, when it read it (see `own_queue_reading`).
    pub(crate) own_read: Option<Result<(), String>>,
    /// The same plan would come out at any later time, as long as the pool, its objects, its
    /// pods and its readings stay as they are: the scaler is at rest, nothing is recycled or
    /// crash-looping, and the operator reads no queue itself (that read moves on its own).
    pub(crate) at_rest: bool,
}

/// What a reconcile knows when it plans: the pool, what the cluster holds for it, what its
/// sidecars (or the operator itself) read, and the time on the operator's clock.
pub(crate) struct PlanInput<'a> {
    pub(crate) pool: &'a AsyncWorkerPool,
    pub(crate) effective: &'a EffectiveSpec,
    /// The Deployment's `spec.replicas`, when the Deployment exists.
    pub(crate) deployment_replicas: Option<i32>,
    pub(crate) pods: &'a [WorkerPod],
    /// Each pod's latest sidecar reading, in the order of `pods`; why not where data is
    /// missing.
    pub(crate) readings: Vec<Result<Current, Unavailable>>,
    /// The pool's pods being deleted that may still serve (their sidecars drain), and their
    /// readings in the same order: what they still serve is load, never capacity.
    pub(crate) draining: &'a [WorkerPod],
    pub(crate) draining_readings: Vec<Result<Current, Unavailable>>,
    /// The operator's own read of a Redis queue, when it made one (no worker ready).
    pub(crate) own_reading: Option<Result<QueueSnapshot, String>>,
    pub(crate) now: Duration,
}

/// The size the pool should have now, and who goes if it shrinks: `kubectl scale` requests
/// first, then the scaler's decision, held while paused or crash-looping, and one step of worker
/// recycling. Pure: `memory` is the pool's memory, created on first use.
pub(crate) fn plan(input: PlanInput, memory: &mut Option<PoolMemory>) -> Plan {
    let PlanInput {
        pool,
        effective,
        deployment_replicas,
        pods: workers,
        readings,
        draining,
        draining_readings,
        own_reading,
        now,
    } = input;
    let policy = &effective.policy;
    let clamp = |n: i32| n.clamp(pool.spec.min_replicas, pool.spec.max_replicas);
    let current = deployment_replicas.unwrap_or_else(|| initial_replicas(&pool.spec));
    let handled = pool
        .status
        .as_ref()
        .and_then(|s| s.handled_replicas_request);
    let request = pool.spec.replicas;
    let own_read = own_reading
        .as_ref()
        .map(|reading| reading.as_ref().map(|_| ()).map_err(Clone::clone));
    let crashes = CrashLoops::of(workers);
    let degraded = crashes.describe();
    let pod_reading = |(pod, reading): (&WorkerPod, Result<Current, Unavailable>)| PodReading {
        name: pod.name.clone(),
        unread: reading == Err(Unavailable::NotReadYet),
        age: reading
            .as_ref()
            .map_or(Duration::ZERO, |current| current.age),
        snapshot: reading.ok().map(|current| current.snapshot),
        ready: pod.ready,
    };
    let mut pods: Vec<PodReading> = workers.iter().zip(readings).map(pod_reading).collect();
    let candidates: Vec<Candidate> = pods
        .iter()
        .map(|p| Candidate {
            name: p.name.clone(),
            ready: p.ready,
            load: p.snapshot.as_ref().map(|s| s.load()),
        })
        .collect();
    let workers_read = pods.len();
    // A draining pod is no worker (never a victim, never recycled, no capacity), but what it
    // still serves is load: a proxy that has not dropped it yet sends it requests that the
    // workers would take otherwise. Left out, that load would look gone while the control plane
    // is slow to remove endpoints, and the pool would shrink under it. Only its answers count:
    // its silence (it has exited) is not missing data, nor a source of a pool at zero.
    pods.extend(
        draining
            .iter()
            .zip(draining_readings)
            .filter(|(_, reading)| reading.is_ok())
            .map(pod_reading)
            .map(|pod| PodReading {
                ready: false,
                ..pod
            }),
    );
    let entry = memory.get_or_insert_with(|| PoolMemory {
        scaler: Scaler::new(now, u32::try_from(current).unwrap_or(0)),
        last_status_submitted: None,
        recycling: None,
        surge: None,
        rest: None,
        handled_request: handled,
    });
    // Rounds left the pool alone while it rested: its readings, counters included, held still.
    if let Some(until) = entry.rest.take().and_then(|rest| rest.unchanged_until) {
        entry.scaler.rested_until(until);
    }
    // A recycled worker that is gone (or going) ends its recycling.
    if let Some((pod, _)) = &entry.recycling
        && !workers.iter().any(|p| *p.name == **pod)
    {
        entry.recycling = None;
        entry.surge = None;
    }

    // `kubectl scale` while autoscaling: move there at once and carry on from that size. A
    // request pinned while paused was handled then.
    let unhandled = request != handled && request != entry.handled_request;
    entry.handled_request = request;
    if let Some(requested) = request
        && unhandled
        && !pool.spec.paused
    {
        let replicas = clamp(requested);
        entry.scaler = Scaler::new(now, u32::try_from(replicas).unwrap_or(0));
        entry.recycling = None;
        entry.surge = None;
        return Plan {
            replicas,
            decision: None,
            handled_request: request,
            degraded,
            template_crash_loops: crashes.template_wide,
            victims: shrink_victims(current, replicas, &candidates, None),
            note: None,
            own_read,
            at_rest: false,
        };
    }

    // The surge worker of a recycling is not the scaler's: it sees the size it chose.
    let scaler_current = current - i32::from(entry.surge == Some(current) && current > 0);
    let observation = Observation {
        now,
        current_replicas: u32::try_from(scaler_current).unwrap_or(0),
        pods,
        external: match own_reading {
            None => ExternalReading::NotConfigured,
            Some(Ok(snapshot)) => ExternalReading::Reading(snapshot),
            Some(Err(_)) => ExternalReading::Missing,
        },
    };
    let decision = entry.scaler.decide(policy, &observation);

    let mut replicas = i32::try_from(decision.replicas).unwrap_or(i32::MAX);
    let mut retiring = None;
    let mut note = None;
    if pool.spec.paused {
        // A paused pool recycles nothing; an extra worker it holds is its size now.
        entry.recycling = None;
        entry.surge = None;
        replicas = request.map_or(current, clamp);
        if replicas != current {
            note = Some(format!(
                "paused: pinned at {replicas} through the scale subresource"
            ));
        }
    } else if crashes.template_wide {
        // A template that cannot stay up only makes more crashing workers: hold the size.
        replicas = replicas.min(current);
    } else {
        let step = recycle_step(
            entry,
            &effective.supervision,
            &observation.pods[..workers_read],
            workers,
            crashes.alone.first().copied(),
            replicas,
            current,
        );
        replicas = step.replicas;
        retiring = step.retiring;
        note = step.note;
    }
    let at_rest = entry.scaler.at_rest()
        && !pool.spec.paused
        && entry.recycling.is_none()
        && degraded.is_none()
        && own_read.is_none()
        && note.is_none()
        && replicas == current;
    Plan {
        replicas,
        decision: Some(decision),
        handled_request: request,
        degraded,
        template_crash_loops: crashes.template_wide,
        victims: shrink_victims(current, replicas, &candidates, retiring.as_deref()),
        note,
        own_read,
        at_rest,
    }
}

/// The workers that crash-loop, told apart by whether their template serves elsewhere. A
/// template none of whose workers is up cannot boot, and more of it only makes more crashing
/// workers (Gunicorn halts on a boot failure for the same reason). A worker that crash-loops
/// while others of its template serve has trouble of its own (a bad node, a poisoned input, a
/// leak): the pool must still grow with its load, and the worker is replaced like a worn one.
struct CrashLoops<'a> {
    alone: Vec<&'a str>,
    template_wide: bool,
    all: Vec<&'a str>,
}

impl<'a> CrashLoops<'a> {
    fn of(workers: &'a [WorkerPod]) -> Self {
        let serving: Vec<&str> = workers
            .iter()
            .filter(|p| p.ready && !p.crash_looping)
            .filter_map(|p| p.template.as_deref())
            .collect();
        let crashing: Vec<&WorkerPod> = workers.iter().filter(|p| p.crash_looping).collect();
        let (alone, wide): (Vec<&WorkerPod>, Vec<&WorkerPod>) = crashing
            .iter()
            .partition(|p| p.template.as_deref().is_some_and(|t| serving.contains(&t)));
        Self {
            alone: alone.iter().map(|p| &*p.name).collect(),
            template_wide: !wide.is_empty(),
            all: crashing.iter().map(|p| &*p.name).collect(),
        }
    }

    /// The Degraded condition's message, `None` when nothing crash-loops.
    fn describe(&self) -> Option<String> {
        if self.all.is_empty() {
            return None;
        }
        let names = self.all.join(", ");
        Some(if self.template_wide {
            format!("crash-looping workers: {names}; scale-up is held")
        } else {
            format!(
                "crash-looping workers: {names}; replaced one at a time, as others of their \
                 template serve"
            )
        })
    }
}

struct RecycleStep {
    replicas: i32,
    retiring: Option<String>,
    note: Option<String>,
}

/// One step of recycling a hung, worn-out or crash-looping worker, one at a time and surge
/// first: run one worker above the decision until every other worker is ready, then drop back
/// with the old worker as the one to go (its sidecar drains it on the way out).
fn recycle_step(
    memory: &mut PoolMemory,
    supervision: &Supervision,
    readings: &[PodReading],
    pods: &[WorkerPod],
    crash_looping: Option<&str>,
    decided: i32,
    current: i32,
) -> RecycleStep {
    let hold = RecycleStep {
        replicas: decided,
        retiring: None,
        note: None,
    };
    match memory.recycling.clone() {
        Some((pod, why)) => {
            let ready_others = pods.iter().filter(|p| p.ready && *p.name != *pod).count();
            if ready_others >= usize::try_from(decided).unwrap_or(0) {
                memory.surge = None;
                RecycleStep {
                    replicas: decided,
                    retiring: Some(pod.clone()),
                    note: Some(format!("retiring {pod}: {why}")),
                }
            } else {
                memory.surge = Some(decided + 1);
                RecycleStep {
                    replicas: decided + 1,
                    ..hold
                }
            }
        }
        None => {
            // Only a settled pool recycles: every worker present and ready.
            let settled = decided == current
                && pods.len() == usize::try_from(current).unwrap_or(0)
                && pods.iter().all(|p| p.ready);
            let due = readings.iter().find_map(|r| {
                let why = supervision.due(&r.name, r.snapshot.as_ref()?)?;
                Some((r.name.to_string(), why))
            });
            // A crash-looping worker is never ready, so the pool is never settled while it is
            // there: it goes first, and does not wait for that.
            let crashed = crash_looping.map(|pod| (pod.to_owned(), "crash-looping".to_owned()));
            match crashed.or(due.filter(|_| settled)) {
                Some((pod, why)) if decided > 0 => {
                    memory.recycling = Some((pod, why.clone()));
                    memory.surge = Some(decided + 1);
                    RecycleStep {
                        replicas: decided + 1,
                        retiring: None,
                        note: Some(format!("one extra worker first: {why}")),
                    }
                }
                _ => hold,
            }
        }
    }
}

/// Who goes when the size drops from `current` to `replicas`: a worker being retired first,
/// then the least busy.
fn shrink_victims(
    current: i32,
    replicas: i32,
    candidates: &[Candidate],
    retiring: Option<&str>,
) -> Vec<String> {
    let count = usize::try_from(current - replicas).unwrap_or(0);
    if count == 0 {
        return Vec::new();
    }
    let mut victims: Vec<String> = retiring.map(str::to_owned).into_iter().collect();
    let others: Vec<Candidate> = candidates
        .iter()
        .filter(|c| Some(&*c.name) != retiring)
        .cloned()
        .collect();
    victims.extend(choose_victims(&others, count.saturating_sub(victims.len())));
    victims
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::MetricsState;

    fn memory() -> PoolMemory {
        PoolMemory {
            scaler: Scaler::new(Duration::ZERO, 2),
            last_status_submitted: None,
            recycling: None,
            surge: None,
            rest: None,
            handled_request: None,
        }
    }

    fn pod(name: &str, ready: bool) -> WorkerPod {
        WorkerPod {
            name: name.into(),
            ip: None,
            ready,
            crash_looping: false,
            template: Some("t1".into()),
        }
    }

    fn reading(name: &str, completed: u64) -> PodReading {
        PodReading {
            name: name.into(),
            snapshot: Some(QueueSnapshot {
                arrived_total: completed + 1,
                completed_total: completed,
                ..QueueSnapshot::of_pod(0, 1)
            }),
            age: Duration::ZERO,
            unread: false,
            ready: true,
        }
    }

    fn max_requests(limit: u64) -> Supervision {
        Supervision {
            max_requests: Some(limit),
            ..Supervision::default()
        }
    }

    fn pool_with(extra: &str) -> (AsyncWorkerPool, EffectiveSpec) {
        let yaml = format!(
            r#"
apiVersion: asyncpool.dev/v1alpha1
kind: AsyncWorkerPool
metadata: {{name: chat, namespace: team}}
spec:
  minReplicas: 1
  maxReplicas: 8
  concurrency: 10
  template: {{spec: {{containers: [{{name: app, image: chat:1}}]}}}}
{extra}"#
        );
        let pool: AsyncWorkerPool = crate::manifest::load_pool(&yaml, None).expect("a valid pool");
        let effective = EffectiveSpec::from_spec(&pool.spec, pool.spec.paused).expect("usable");
        (pool, effective)
    }

    /// Plans for three ready workers of `pool`, each reading `load` in flight.
    fn plan_three(
        pool: &AsyncWorkerPool,
        effective: &EffectiveSpec,
        load: u64,
        memory: &mut Option<PoolMemory>,
    ) -> Plan {
        let workers = [pod("a", true), pod("b", true), pod("c", true)];
        plan(
            PlanInput {
                pool,
                effective,
                deployment_replicas: Some(3),
                pods: &workers,
                readings: vec![Ok(Current::just_read(QueueSnapshot::of_pod(0, load))); 3],
                draining: &[],
                draining_readings: Vec::new(),
                own_reading: None,
                now: Duration::from_secs(100),
            },
            memory,
        )
    }

    #[test]
    fn the_first_plan_starts_the_pools_memory_at_its_size() {
        let (pool, effective) = pool_with("");
        let mut memory = None;
        let planned = plan_three(&pool, &effective, 5, &mut memory);
        assert!(memory.is_some(), "no memory kept for the pool");
        // A fresh scaler holds: it has no history to shrink on.
        assert_eq!(planned.replicas, 3);
        assert!(planned.decision.is_some());
        assert!(planned.victims.is_empty());
    }

    #[test]
    fn what_a_draining_pod_still_serves_is_load_but_it_is_no_worker() {
        let (pool, effective) = pool_with("");
        let workers = [pod("a", true), pod("b", true), pod("c", true)];
        // Still routed to by a proxy that has not dropped it, and reporting its drain.
        let draining = [pod("d", true), pod("e", true)];
        let mut serving = QueueSnapshot::of_pod(10, 10);
        serving.draining = true;
        let planned = plan(
            PlanInput {
                pool: &pool,
                effective: &effective,
                deployment_replicas: Some(3),
                pods: &workers,
                readings: vec![Ok(Current::just_read(QueueSnapshot::of_pod(0, 2))); 3],
                draining: &draining,
                // One drained and gone already: not missing data.
                draining_readings: vec![
                    Ok(Current::just_read(serving)),
                    Err(Unavailable::Failed("connection refused".into())),
                ],
                own_reading: None,
                now: Duration::from_secs(100),
            },
            &mut None,
        );
        let decision = planned.decision.expect("a decision");
        assert_eq!(decision.observed_load, Some(3.0 * 2.0 + 20.0));
        assert_eq!(decision.metrics, MetricsState::Available);
        // The load needs more than the three workers: the draining pod is no capacity.
        assert!(decision.replicas > 3, "{}", decision.reason);
        assert!(planned.victims.is_empty());

        // A pool with no worker left but one that has exited and is not gone yet: nothing to
        // read, not a silent source (which would bring the fallback size after a while).
        let planned = plan(
            PlanInput {
                pool: &pool,
                effective: &effective,
                deployment_replicas: Some(0),
                pods: &[],
                readings: Vec::new(),
                draining: &draining[..1],
                draining_readings: vec![Err(Unavailable::Failed("connection refused".into()))],
                own_reading: None,
                now: Duration::from_secs(100),
            },
            &mut None,
        );
        let decision = planned.decision.expect("a decision");
        assert_eq!(decision.metrics, MetricsState::NoSource);
    }

    #[test]
    fn kubectl_scale_moves_the_pool_at_once_and_is_handled_once() {
        let (pool, effective) = pool_with("  replicas: 1");
        let mut memory = None;
        let planned = plan_three(&pool, &effective, 5, &mut memory);
        assert_eq!(planned.replicas, 1);
        assert_eq!(planned.handled_request, Some(1));
        assert!(
            planned.decision.is_none(),
            "the scaler decided over a request"
        );
        assert_eq!(planned.victims.len(), 2, "{:?}", planned.victims);
        // Once handled (the status says so), the scaler decides again.
        let mut handled = pool.clone();
        handled.status = Some(crate::crd::AsyncWorkerPoolStatus {
            handled_replicas_request: Some(1),
            ..Default::default()
        });
        let again = plan_three(&handled, &effective, 5, &mut memory);
        assert!(again.decision.is_some());
    }

    #[test]
    fn a_paused_pool_holds_or_pins_to_the_request() {
        let (paused, effective) = pool_with("  paused: true");
        let mut memory = None;
        // Whatever the load, the size holds.
        let held = plan_three(&paused, &effective, 30, &mut memory);
        assert_eq!(held.replicas, 3);
        assert_eq!(held.note, None);
        let (pinned, effective) = pool_with("  paused: true\n  replicas: 5");
        let moved = plan_three(&pinned, &effective, 0, &mut memory);
        assert_eq!(moved.replicas, 5);
        assert!(
            moved
                .note
                .as_deref()
                .is_some_and(|n| n.contains("pinned at 5"))
        );
    }

    /// The status that says a request was handled is written after the plan; a reconcile may
    /// come before it shows (the unpause right after a pin, a second event).
    #[test]
    fn a_request_is_handled_once_while_its_status_is_not_written_yet() {
        let (pinned, effective) = pool_with("  paused: true\n  replicas: 3");
        let mut memory = None;
        let moved = plan_three(&pinned, &effective, 30, &mut memory);
        assert_eq!(moved.handled_request, Some(3));
        // Unpaused, the same request, the status not showing it handled yet.
        let (unpaused, effective) = pool_with("  replicas: 3");
        let after = plan_three(&unpaused, &effective, 30, &mut memory);
        assert!(
            after.decision.is_some(),
            "the pinned request was acted on again, resetting the scaler"
        );
        // Autoscaling on, a request handled, and reconciled again before its status shows.
        let (requested, effective) = pool_with("  replicas: 2");
        let first = plan_three(&requested, &effective, 30, &mut memory);
        assert!(first.decision.is_none());
        assert_eq!(first.replicas, 2);
        let again = plan_three(&requested, &effective, 30, &mut memory);
        assert!(again.decision.is_some(), "the request was handled twice");
    }

    /// Plans a pool of three at `deployment_replicas` under `load` queued at each of a and b.
    fn plan_with_crashing_c(
        workers: &[WorkerPod],
        deployment_replicas: i32,
        load: u64,
        memory: &mut Option<PoolMemory>,
    ) -> Plan {
        let (pool, effective) = pool_with("");
        let readings = workers
            .iter()
            .map(|w| match w.crash_looping {
                false => Ok(Current::just_read(QueueSnapshot::of_pod(load, 5))),
                true => Err(Unavailable::Failed("crash-looping".into())),
            })
            .collect();
        plan(
            PlanInput {
                pool: &pool,
                effective: &effective,
                deployment_replicas: Some(deployment_replicas),
                pods: workers,
                readings,
                draining: &[],
                draining_readings: Vec::new(),
                own_reading: None,
                now: Duration::from_secs(100),
            },
            memory,
        )
    }

    #[test]
    fn a_template_with_no_worker_up_holds_scale_up() {
        // The rollout's new template crash-loops; the old one serves. More of the new one would
        // only crash too.
        let mut workers = [pod("a", true), pod("b", true), pod("c", false)];
        workers[2].crash_looping = true;
        workers[2].template = Some("t2".into());
        let planned = plan_with_crashing_c(&workers, 3, 200, &mut None);
        assert!(planned.decision.as_ref().is_some_and(|d| d.replicas > 3));
        assert_eq!(planned.replicas, 3);
        assert!(
            planned
                .degraded
                .as_deref()
                .is_some_and(|d| d.contains("c; scale-up is held")),
            "{:?}",
            planned.degraded
        );
    }

    #[test]
    fn one_worker_crash_looping_among_serving_ones_neither_holds_the_pool_nor_stays() {
        let mut workers = [pod("a", true), pod("b", true), pod("c", false)];
        workers[2].crash_looping = true;
        let mut memory = None;
        // Under load the pool grows as the load asks.
        let grown = plan_with_crashing_c(&workers, 3, 200, &mut memory);
        let wanted = grown.decision.as_ref().map(|d| d.replicas).unwrap_or(0);
        assert!(wanted > 3 && grown.replicas >= i32::try_from(wanted).unwrap_or(0));
        assert!(
            grown
                .degraded
                .as_deref()
                .is_some_and(|d| d.contains("replaced")),
            "{:?}",
            grown.degraded
        );

        // At rest (the scaler keeps three), c is replaced surge first, then retired.
        let mut memory = None;
        let surge = plan_with_crashing_c(&workers, 3, 0, &mut memory);
        assert_eq!(surge.replicas, 4, "{:?}", surge.note);
        assert!(surge.victims.is_empty());
        let fresh = [
            workers[0].clone(),
            workers[1].clone(),
            workers[2].clone(),
            pod("d", true),
        ];
        let retire = plan_with_crashing_c(&fresh, 4, 0, &mut memory);
        assert_eq!(retire.replicas, 3);
        assert_eq!(retire.victims, vec!["c".to_owned()]);
    }

    #[test]
    fn recycling_surges_first_then_retires_the_worn_worker() {
        let rules = max_requests(100);
        let mut memory = memory();
        let readings = [reading("a", 150), reading("b", 3)];
        let pods = [pod("a", true), pod("b", true)];

        let surge = recycle_step(&mut memory, &rules, &readings, &pods, None, 2, 2);
        assert_eq!(surge.replicas, 3);
        assert_eq!(memory.surge, Some(3));
        assert_eq!(memory.recycling.as_ref().map(|r| r.0.as_str()), Some("a"));

        // The extra worker is not ready yet: keep the surge.
        let waiting = [pod("a", true), pod("b", true), pod("c", false)];
        let hold = recycle_step(&mut memory, &rules, &readings, &waiting, None, 2, 3);
        assert_eq!((hold.replicas, hold.retiring), (3, None));

        // It is ready: drop back with the worn worker as the one to go.
        let settled = [pod("a", true), pod("b", true), pod("c", true)];
        let retire = recycle_step(&mut memory, &rules, &readings, &settled, None, 2, 3);
        assert_eq!(retire.replicas, 2);
        assert_eq!(retire.retiring.as_deref(), Some("a"));
        assert_eq!(memory.surge, None);
        let candidates: Vec<Candidate> = ["a", "b", "c"]
            .iter()
            .map(|n| Candidate {
                name: (*n).into(),
                ready: true,
                load: Some(0),
            })
            .collect();
        assert_eq!(shrink_victims(3, 2, &candidates, Some("a")), ["a"]);
    }

    /// The surge's write may fail, or the next plan may come before the cache shows it: the
    /// scaler must then see the pool at its real size, not one less, or a size held by its
    /// scale-down delay drops (with a worker retired) under the same load.
    #[test]
    fn a_surge_that_does_not_show_leaves_the_scalers_size_alone() {
        let (pool, effective) =
            pool_with("  supervision: {maxRequests: 100, maxRequestsJitter: 0}");
        let workers = [pod("a", true), pod("b", true), pod("c", true)];
        let worn = |completed| {
            Ok(Current::just_read(QueueSnapshot {
                arrived_total: completed,
                completed_total: completed,
                ..QueueSnapshot::of_pod(0, 0)
            }))
        };
        let plan_at = |deployment_replicas, seconds, memory: &mut Option<PoolMemory>| {
            plan(
                PlanInput {
                    pool: &pool,
                    effective: &effective,
                    deployment_replicas: Some(deployment_replicas),
                    pods: &workers,
                    readings: vec![worn(150), worn(3), worn(3)],
                    draining: &[],
                    draining_readings: Vec::new(),
                    own_reading: None,
                    now: Duration::from_secs(seconds),
                },
                memory,
            )
        };
        // Idle, but the scale-down delay holds three: a is worn out, so one extra first.
        let mut memory = None;
        let surge = plan_at(3, 100, &mut memory);
        assert_eq!(surge.replicas, 4, "{:?}", surge.note);
        // The Deployment still shows three: the surge is asked for again, nobody retires.
        let again = plan_at(3, 101, &mut memory);
        assert_eq!(again.replicas, 4, "{:?} {:?}", again.note, again.decision);
        assert!(again.victims.is_empty(), "{:?}", again.victims);
        // Once it shows, the scaler sees its three (the fourth worker is not ready yet).
        let shown = plan_at(4, 102, &mut memory);
        assert_eq!(shown.decision.map(|d| d.replicas), Some(3));
        assert_eq!(shown.replicas, 4);
    }

    /// Paused mid-recycling: the recycling and its surge are forgotten, or a pool pinned at the
    /// surge's size would, once unpaused, show the scaler one worker less than it has.
    #[test]
    fn a_pause_ends_a_recycling_and_its_surge() {
        let supervised = "  supervision: {maxRequests: 100, maxRequestsJitter: 0}";
        let (pool, effective) = pool_with(supervised);
        let mut memory = None;
        let workers = [pod("a", true), pod("b", true), pod("c", true)];
        let worn = Ok(Current::just_read(QueueSnapshot {
            arrived_total: 150,
            completed_total: 150,
            ..QueueSnapshot::of_pod(0, 0)
        }));
        let fresh = Ok(Current::just_read(QueueSnapshot::of_pod(0, 0)));
        let surge = plan(
            PlanInput {
                pool: &pool,
                effective: &effective,
                deployment_replicas: Some(3),
                pods: &workers,
                readings: vec![worn, fresh.clone(), fresh],
                draining: &[],
                draining_readings: Vec::new(),
                own_reading: None,
                now: Duration::from_secs(100),
            },
            &mut memory,
        );
        assert_eq!(surge.replicas, 4);
        let (paused, effective) = pool_with(&format!("{supervised}\n  paused: true"));
        let held = plan_three(&paused, &effective, 0, &mut memory);
        assert_eq!(held.replicas, 3, "a paused pool holds the size it has");
        let kept = memory.as_ref().expect("a memory");
        assert_eq!((&kept.recycling, kept.surge), (&None, None));
    }

    #[test]
    fn an_unsettled_pool_does_not_start_recycling() {
        let rules = max_requests(100);
        let readings = [reading("a", 150), reading("b", 3)];
        // Scaling in progress, or a worker not ready: no recycling now.
        for (pods, decided, current) in [
            (vec![pod("a", true), pod("b", true)], 3, 2),
            (vec![pod("a", true), pod("b", false)], 2, 2),
            (vec![pod("a", true)], 2, 2),
        ] {
            let mut memory = memory();
            let step = recycle_step(
                &mut memory,
                &rules,
                &readings,
                &pods,
                None,
                decided,
                current,
            );
            assert_eq!(step.replicas, decided);
            assert!(memory.recycling.is_none());
        }
        // Nothing is due: nothing happens.
        let mut memory = memory();
        let fresh = [reading("a", 1), reading("b", 3)];
        let step = recycle_step(
            &mut memory,
            &rules,
            &fresh,
            &[pod("a", true), pod("b", true)],
            None,
            2,
            2,
        );
        assert_eq!((step.replicas, step.note), (2, None));
    }

    #[test]
    fn victims_cover_exactly_the_drop() {
        let candidates: Vec<Candidate> = [("a", 9), ("b", 0), ("c", 4)]
            .iter()
            .map(|(n, l)| Candidate {
                name: (*n).into(),
                ready: true,
                load: Some(*l),
            })
            .collect();
        assert!(shrink_victims(3, 3, &candidates, None).is_empty());
        assert!(shrink_victims(2, 3, &candidates, None).is_empty());
        assert_eq!(shrink_victims(3, 1, &candidates, None), ["b", "c"]);
        assert_eq!(shrink_victims(3, 1, &candidates, Some("a")), ["a", "b"]);
    }
}
