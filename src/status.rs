//! Pure builders of a pool's status and its conditions, in the standard `metav1.Condition`
//! shape so that `kubectl wait --for=condition=Ready awp/NAME` works.

use crate::reconcile::LiveDeployment;

use crate::scaling::MetricsState;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const SCALING: &str = "Scaling";
pub const METRICS_AVAILABLE: &str = "MetricsAvailable";
pub const DEGRADED: &str = "Degraded";
pub const PAUSED: &str = "Paused";
/// kstatus' "the controller is still working on it" (Flux health checks, `kubectl wait`).
pub const RECONCILING: &str = "Reconciling";
/// kstatus' "the controller cannot make progress without a change from you": read as Failed.
pub const STALLED: &str = "Stalled";

/// `Ready=False` reasons that only a change to the pool or the cluster can clear.
/// Degraded, but the operator is fixing it: not a reason to stall.
const WORKER_CRASH_LOOPING: &str = "WorkerCrashLooping";
const AWAITING_READINGS: &str = "AwaitingReadings";
const STALLED_READY_REASONS: [&str; 3] = ["InvalidSpec", "InvalidTemplate", "NotOwned"];

/// One condition as reconcile judged it, before timestamps.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Judgement {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// What a pool's conditions are judged from: this reconcile's observation and plan, reduced to
/// the facts that matter.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts<'a> {
    pub ready_workers: usize,
    /// The size the plan wants.
    pub wanted: i32,
    /// The Deployment's `spec.replicas` before this reconcile, when it exists.
    pub current: Option<i32>,
    /// The scaler's reason and what it knew of the readings; `None` when the scale subresource
    /// set the size.
    pub decision: Option<(&'a str, MetricsState)>,
    /// How the operator's own read of a Redis queue went, when it read one (no worker ready).
    pub own_read: Option<Result<(), &'a str>>,
    /// Which workers crash-loop, when some do.
    pub crash_looping: Option<CrashLooping<'a>>,
    /// The API server's reason for refusing worker pods (the Deployment's ReplicaFailure).
    pub refused: Option<String>,
    pub paused: bool,
    pub rollout: Rollout,
}

/// Workers that crash-loop: a template that cannot stay up (`held`: nothing moves until it is
/// fixed), or workers that crash alone while others of their template serve (they are replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLooping<'a> {
    pub message: &'a str,
    pub held: bool,
}

/// Every condition of a pool that was planned for: Ready, Scaling, MetricsAvailable, Degraded,
/// Paused, and the kstatus pair derived from them.
pub fn judge(facts: &Facts) -> Vec<Judgement> {
    let wanted = usize::try_from(facts.wanted).unwrap_or(0);
    let ready = if facts.ready_workers > 0 || wanted == 0 {
        Judgement::new(
            READY,
            true,
            "WorkersReady",
            format!("{} of {wanted} workers ready", facts.ready_workers),
        )
    } else {
        Judgement::new(
            READY,
            false,
            "WaitingForWorkers",
            format!("0 of {wanted} workers ready"),
        )
    };
    let scaling = match (facts.decision, facts.current) {
        (Some((reason, _)), Some(current)) if facts.wanted != current => {
            let direction = if facts.wanted > current {
                "ScalingUp"
            } else {
                "ScalingDown"
            };
            Judgement::new(SCALING, true, direction, reason)
        }
        (None, _) => Judgement::new(
            SCALING,
            true,
            "ScaleRequested",
            format!("scale subresource asked for {} replicas", facts.wanted),
        ),
        (Some((reason, _)), _) => Judgement::new(SCALING, false, "Stable", reason),
    };
    let metrics = match (facts.own_read, facts.decision.map(|(_, m)| m)) {
        (Some(Ok(())), Some(MetricsState::Available)) => Judgement::new(
            METRICS_AVAILABLE,
            true,
            "QueueRead",
            "no worker is ready; the operator reads the Redis queue itself",
        ),
        (Some(Err(error)), _) => Judgement::new(
            METRICS_AVAILABLE,
            false,
            "QueueUnreadable",
            format!(
                "no worker is ready and the Redis queue cannot be read ({error}); holding the size (or fallbackReplicas)"
            ),
        ),
        (_, metrics) => worker_metrics(metrics),
    };
    let degraded = match (facts.crash_looping, &facts.refused) {
        (Some(crashing), _) => Judgement::new(
            DEGRADED,
            true,
            if crashing.held {
                "CrashLooping"
            } else {
                WORKER_CRASH_LOOPING
            },
            crashing.message.to_owned(),
        ),
        (None, Some(message)) => Judgement::new(
            DEGRADED,
            true,
            "PodsRefused",
            format!("the API server refuses changes to worker pods: {message}"),
        ),
        (None, None) => Judgement::new(DEGRADED, false, "Healthy", "no worker is crash-looping"),
    };
    let paused = if facts.paused {
        Judgement::new(
            PAUSED,
            true,
            "Paused",
            "spec.paused is set: the size is held",
        )
    } else {
        Judgement::new(PAUSED, false, "Autoscaling", "the pool follows its load")
    };
    let mut judgements = vec![ready, scaling, metrics, degraded, paused];
    let kstatus = kstatus_judgements(&judgements, &facts.rollout);
    judgements.extend(kstatus);
    judgements
}

/// The conditions of a pool the operator will not act on until something changes: Ready=False
/// with `reason` and the `message` that says what to fix, and the kstatus pair (Stalled).
pub fn refused(reason: &'static str, message: String) -> Vec<Judgement> {
    let mut judgements = vec![Judgement::new(READY, false, reason, message)];
    let kstatus = kstatus_judgements(&judgements, &Rollout::Done);
    judgements.extend(kstatus);
    judgements
}

/// MetricsAvailable when the workers' sidecars are the source.
fn worker_metrics(metrics: Option<MetricsState>) -> Judgement {
    match metrics {
        Some(MetricsState::Available) => Judgement::new(
            METRICS_AVAILABLE,
            true,
            "AllWorkersReport",
            "every worker reports its queue",
        ),
        Some(MetricsState::Partial { missing }) => Judgement::new(
            METRICS_AVAILABLE,
            true,
            "SomeWorkersSilent",
            format!("{missing} worker(s) do not report; they never cause a scale-down"),
        ),
        Some(MetricsState::Missing { .. }) => Judgement::new(
            METRICS_AVAILABLE,
            false,
            "NoReadings",
            "no worker answers /queue with valid data; holding the size (or fallbackReplicas)",
        ),
        Some(MetricsState::Awaiting { starting: 0, .. }) => Judgement::new(
            METRICS_AVAILABLE,
            false,
            AWAITING_READINGS,
            "no worker is ready to report its queue yet; holding the size",
        ),
        Some(MetricsState::Awaiting { starting, .. }) => Judgement::new(
            METRICS_AVAILABLE,
            false,
            AWAITING_READINGS,
            format!(
                "{starting} worker(s) started (or the operator did) and have not reported yet; \
                 holding the size"
            ),
        ),
        Some(MetricsState::NoSource) => Judgement::new(
            METRICS_AVAILABLE,
            false,
            "NoWorkers",
            "no worker pod is running yet to report its queue",
        ),
        None => Judgement::new(
            METRICS_AVAILABLE,
            false,
            "NotDecided",
            "no scaling decision this round",
        ),
    }
}

/// Where the Deployment's rollout of the pool's current template stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Rollout {
    Done,
    /// Pods of an older template still run beside the new ones.
    InProgress,
    /// The Deployment gave up waiting for the new pods (ProgressDeadlineExceeded: images that
    /// do not pull, pods that never schedule or never turn ready); its message says which.
    Stuck(String),
}

/// The rollout state of `deployment`, read as kstatus reads a Deployment. A scale alone is no
/// rollout: it bumps the generation, but every pod still runs the current template.
pub fn rollout_of(deployment: &LiveDeployment) -> Rollout {
    let status = deployment.status.as_ref();
    let deadline_exceeded = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|conditions| {
            conditions.iter().find(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
        });
    if let Some(condition) = deadline_exceeded {
        return Rollout::Stuck(condition.message.clone().unwrap_or_default());
    }
    let pods = status.and_then(|s| s.replicas).unwrap_or(0);
    let updated = status.and_then(|s| s.updated_replicas).unwrap_or(0);
    if pods > updated {
        Rollout::InProgress
    } else {
        Rollout::Done
    }
}

/// The `Reconciling` and `Stalled` conditions that kstatus (Flux, Argo's kstatus-based checks,
/// `kubectl wait`) reads, derived from the pool's own judgements so the two views never disagree:
/// stalled when the spec is unusable, the objects are not ours, a template crash-loops, workers
/// are refused, or the rollout stopped progressing; reconciling while workers are not ready yet or
/// pods of an older template remain.
pub fn kstatus_judgements(judgements: &[Judgement], rollout: &Rollout) -> [Judgement; 2] {
    let find = |type_: &str| judgements.iter().find(|j| j.type_ == type_);
    let ready = find(READY);
    let stuck = ready
        .filter(|j| !j.status && STALLED_READY_REASONS.contains(&j.reason))
        .or_else(|| find(DEGRADED).filter(|j| j.status && j.reason != WORKER_CRASH_LOOPING))
        .map(|cause| (cause.reason, cause.message.clone()))
        .or_else(|| match rollout {
            Rollout::Stuck(message) => Some((
                "RolloutStuck",
                format!("the workers' rollout stopped progressing: {message}"),
            )),
            _ => None,
        });
    if let Some((reason, message)) = stuck {
        return [
            Judgement::new(
                RECONCILING,
                false,
                reason,
                "stalled: see the Stalled condition",
            ),
            Judgement::new(STALLED, true, reason, message),
        ];
    }
    let stalled = Judgement::new(STALLED, false, "Progressing", "nothing blocks the pool");
    let reconciling = match ready {
        Some(j) if !j.status => Judgement::new(RECONCILING, true, j.reason, j.message.clone()),
        _ if *rollout == Rollout::InProgress => Judgement::new(
            RECONCILING,
            true,
            "RollingOut",
            "workers are being replaced with the new template",
        ),
        _ => Judgement::new(
            RECONCILING,
            false,
            "Reconciled",
            "the pool is as its spec asks",
        ),
    };
    [reconciling, stalled]
}

/// A problem the user must fix, worth a Warning Event when it appears.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    pub reason: &'static str,
    pub note: String,
}

/// `MetricsAvailable=False` reasons that mean the pool flies blind (held at its size).
const BLIND_REASONS: [&str; 2] = ["NoReadings", "QueueUnreadable"];

/// The problems in `judgements` that were not already reported in `previous` with the same
/// reason: stalls (what to fix is in the message) and missing readings. One Event per
/// appearance, not one per reconcile.
pub fn new_warnings(previous: &[Condition], judgements: &[Judgement]) -> Vec<Warning> {
    let was = |type_: &str, status: &str, reason: &str| {
        previous
            .iter()
            .any(|c| c.type_ == type_ && c.status == status && c.reason == reason)
    };
    judgements
        .iter()
        .filter(|j| {
            (j.type_ == STALLED && j.status && !was(STALLED, "True", j.reason))
                || (j.type_ == METRICS_AVAILABLE
                    && !j.status
                    && BLIND_REASONS.contains(&j.reason)
                    && !was(METRICS_AVAILABLE, "False", j.reason))
        })
        .map(|j| Warning {
            reason: j.reason,
            note: j.message.clone(),
        })
        .collect()
}

/// While a pool awaits its workers' first readings (`MetricsState::Awaiting`) it has learned
/// nothing new about its load: the conditions keep what the last readings said, so an operator
/// restart rewrites no status (the MetricsAvailable condition, and the Scaling message that
/// quotes the last decision). A pool that never had readings shows `AwaitingReadings`.
pub fn keep_last_readings(previous: &[Condition], conditions: &mut [Condition]) {
    for condition in conditions {
        let Some(before) = previous.iter().find(|c| c.type_ == condition.type_) else {
            continue;
        };
        let same_state = before.status == condition.status && before.reason == condition.reason;
        if condition.type_ == METRICS_AVAILABLE {
            let generation = condition.observed_generation;
            condition.clone_from(before);
            condition.observed_generation = generation;
        } else if condition.type_ == SCALING && same_state {
            condition.message.clone_from(&before.message);
        }
    }
}

/// Turns judgements into conditions, keeping `lastTransitionTime` of every condition whose
/// status did not change (so watchers can tell how long a pool has been in a state).
pub fn merge_conditions(
    previous: &[Condition],
    judgements: &[Judgement],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    judgements
        .iter()
        .map(|j| {
            let status = if j.status { "True" } else { "False" };
            let transition = previous
                .iter()
                .find(|c| c.type_ == j.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: j.type_.to_owned(),
                status: status.to_owned(),
                reason: j.reason.to_owned(),
                message: j.message.clone(),
                observed_generation: generation,
                last_transition_time: transition,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn held(message: &str) -> CrashLooping<'_> {
        CrashLooping {
            message,
            held: true,
        }
    }

    fn replaced(message: &str) -> CrashLooping<'_> {
        CrashLooping {
            message,
            held: false,
        }
    }

    /// A healthy pool at its size: one fact at a time is changed from here.
    fn steady() -> Facts<'static> {
        Facts {
            ready_workers: 3,
            wanted: 3,
            current: Some(3),
            decision: Some(("load 20 / 7 per worker = 3", MetricsState::Available)),
            own_read: None,
            crash_looping: None,
            refused: None,
            paused: false,
            rollout: Rollout::Done,
        }
    }

    /// The (status, reason) judged for `type_`.
    fn reason(facts: &Facts, type_: &str) -> (bool, &'static str) {
        let judged = judge(facts);
        let j = judged
            .iter()
            .find(|j| j.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} judged"));
        (j.status, j.reason)
    }

    #[test]
    fn every_condition_reason_is_judged_from_its_facts() {
        type Case = (
            &'static str,
            fn(&mut Facts<'static>),
            &'static str,
            bool,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            ("steady", |_| {}, READY, true, "WorkersReady"),
            (
                "no worker ready",
                |f| f.ready_workers = 0,
                READY,
                false,
                "WaitingForWorkers",
            ),
            (
                "meant to be at zero",
                |f| {
                    f.ready_workers = 0;
                    f.wanted = 0
                },
                READY,
                true,
                "WorkersReady",
            ),
            ("steady", |_| {}, SCALING, false, "Stable"),
            ("growing", |f| f.wanted = 5, SCALING, true, "ScalingUp"),
            ("shrinking", |f| f.wanted = 2, SCALING, true, "ScalingDown"),
            (
                "kubectl scale / paused",
                |f| f.decision = None,
                SCALING,
                true,
                "ScaleRequested",
            ),
            (
                "every worker reports",
                |_| {},
                METRICS_AVAILABLE,
                true,
                "AllWorkersReport",
            ),
            (
                "some silent",
                |f| f.decision = Some(("r", MetricsState::Partial { missing: 1 })),
                METRICS_AVAILABLE,
                true,
                "SomeWorkersSilent",
            ),
            (
                "none answers",
                |f| {
                    f.decision = Some((
                        "r",
                        MetricsState::Missing {
                            since: Duration::from_secs(12),
                        },
                    ))
                },
                METRICS_AVAILABLE,
                false,
                "NoReadings",
            ),
            (
                "every ready worker is starting",
                |f| {
                    f.decision = Some((
                        "r",
                        MetricsState::Awaiting {
                            since: Duration::from_secs(12),
                            starting: 3,
                        },
                    ))
                },
                METRICS_AVAILABLE,
                false,
                "AwaitingReadings",
            ),
            (
                "no worker yet",
                |f| f.decision = Some(("r", MetricsState::NoSource)),
                METRICS_AVAILABLE,
                false,
                "NoWorkers",
            ),
            (
                "no decision",
                |f| f.decision = None,
                METRICS_AVAILABLE,
                false,
                "NotDecided",
            ),
            (
                "Redis read by the operator",
                |f| f.own_read = Some(Ok(())),
                METRICS_AVAILABLE,
                true,
                "QueueRead",
            ),
            (
                "Redis unreadable",
                |f| f.own_read = Some(Err("connection refused")),
                METRICS_AVAILABLE,
                false,
                "QueueUnreadable",
            ),
            ("healthy", |_| {}, DEGRADED, false, "Healthy"),
            (
                "crash-looping",
                |f| f.crash_looping = Some(held("web-1 restarted 5 times")),
                DEGRADED,
                true,
                "CrashLooping",
            ),
            (
                "one worker crash-looping",
                |f| f.crash_looping = Some(replaced("web-1")),
                DEGRADED,
                true,
                "WorkerCrashLooping",
            ),
            (
                "refused",
                |f| f.refused = Some("FailedCreate: forbidden".into()),
                DEGRADED,
                true,
                "PodsRefused",
            ),
            (
                "both: the crash wins",
                |f| {
                    f.crash_looping = Some(held("x"));
                    f.refused = Some("y".into())
                },
                DEGRADED,
                true,
                "CrashLooping",
            ),
            ("autoscaling", |_| {}, PAUSED, false, "Autoscaling"),
            ("paused", |f| f.paused = true, PAUSED, true, "Paused"),
            ("steady", |_| {}, RECONCILING, false, "Reconciled"),
            (
                "rolling out",
                |f| f.rollout = Rollout::InProgress,
                RECONCILING,
                true,
                "RollingOut",
            ),
            (
                "waiting",
                |f| f.ready_workers = 0,
                RECONCILING,
                true,
                "WaitingForWorkers",
            ),
            ("steady", |_| {}, STALLED, false, "Progressing"),
            (
                "crash-looping",
                |f| f.crash_looping = Some(held("x")),
                STALLED,
                true,
                "CrashLooping",
            ),
            (
                "one worker crash-looping, being replaced",
                |f| f.crash_looping = Some(replaced("x")),
                STALLED,
                false,
                "Progressing",
            ),
            (
                "rollout stuck",
                |f| f.rollout = Rollout::Stuck("timed out".into()),
                STALLED,
                true,
                "RolloutStuck",
            ),
        ];
        for (name, change, type_, status, expected) in cases {
            let mut facts = steady();
            change(&mut facts);
            assert_eq!(reason(&facts, type_), (status, expected), "{name}: {type_}");
        }
    }

    #[test]
    fn a_refused_pool_is_not_ready_and_stalled_for_the_same_reason() {
        let judged = refused("NotOwned", "rename the pool".into());
        let find = |type_: &str| judged.iter().find(|j| j.type_ == type_).cloned();
        let ready = find(READY).expect("Ready");
        assert_eq!((ready.status, ready.reason), (false, "NotOwned"));
        let stalled = find(STALLED).expect("Stalled");
        assert_eq!((stalled.status, stalled.reason), (true, "NotOwned"));
        assert_eq!(stalled.message, "rename the pool");
        assert!(!find(RECONCILING).expect("Reconciling").status);
    }

    #[test]
    fn messages_carry_the_figures_and_the_causes() {
        let mut facts = steady();
        facts.ready_workers = 2;
        facts.wanted = 5;
        facts.refused = Some("FailedCreate: violates PodSecurity".into());
        let judged = judge(&facts);
        let message = |type_: &str| {
            judged
                .iter()
                .find(|j| j.type_ == type_)
                .map(|j| j.message.clone())
                .unwrap_or_default()
        };
        assert_eq!(message(READY), "2 of 5 workers ready");
        assert_eq!(message(SCALING), "load 20 / 7 per worker = 3");
        assert!(message(DEGRADED).contains("violates PodSecurity"));
        assert!(message(STALLED).contains("violates PodSecurity"));
        let types: Vec<&str> = judged.iter().map(|j| j.type_).collect();
        assert_eq!(
            types,
            [
                READY,
                SCALING,
                METRICS_AVAILABLE,
                DEGRADED,
                PAUSED,
                RECONCILING,
                STALLED
            ]
        );
    }

    fn verdict(judgements: &[Judgement], rolling_out: bool) -> (bool, bool, &'static str) {
        let rollout = if rolling_out {
            Rollout::InProgress
        } else {
            Rollout::Done
        };
        let [reconciling, stalled] = kstatus_judgements(judgements, &rollout);
        (reconciling.status, stalled.status, stalled.reason)
    }

    fn deployment(status: serde_json::Value) -> LiveDeployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "generation": 7},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": status,
        }))
        .expect("deployment")
    }

    #[test]
    fn a_scale_is_no_rollout_and_a_missed_deadline_stalls_the_pool() {
        // Scaled: the generation moved past observedGeneration, every pod runs the template.
        let scaled = deployment(
            serde_json::json!({"observedGeneration": 6, "replicas": 2, "updatedReplicas": 2}),
        );
        assert_eq!(rollout_of(&scaled), Rollout::Done);
        let rolling = deployment(
            serde_json::json!({"observedGeneration": 7, "replicas": 4, "updatedReplicas": 1}),
        );
        assert_eq!(rollout_of(&rolling), Rollout::InProgress);
        let stuck = deployment(serde_json::json!({
            "replicas": 4, "updatedReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                            "message": "ReplicaSet \"web-7d\" has timed out progressing."}]
        }));
        let Rollout::Stuck(message) = rollout_of(&stuck) else {
            panic!("a missed deadline is not stuck");
        };
        assert!(message.contains("timed out"));
        let ready = Judgement::new(READY, true, "WorkersReady", "3 of 3 workers ready");
        let [reconciling, stalled] = kstatus_judgements(&[ready], &Rollout::Stuck(message));
        assert!(!reconciling.status);
        assert!(stalled.status);
        assert_eq!(stalled.reason, "RolloutStuck");
        assert!(stalled.message.contains("timed out"), "{}", stalled.message);
    }

    #[test]
    fn kstatus_reads_unusable_pools_as_stalled_and_waiting_ones_as_reconciling() {
        let ready = Judgement::new(READY, true, "WorkersReady", "2 of 2 workers ready");
        let waiting = Judgement::new(READY, false, "WaitingForWorkers", "0 of 2 workers ready");
        let healthy = Judgement::new(DEGRADED, false, "Healthy", "fine");
        let crashing = Judgement::new(DEGRADED, true, "CrashLooping", "2 workers crash-loop");
        for reason in STALLED_READY_REASONS {
            let not_ready = Judgement::new(READY, false, reason, "fix it");
            assert_eq!(verdict(&[not_ready], false), (false, true, reason));
        }
        assert_eq!(
            verdict(&[ready.clone(), crashing.clone()], false),
            (false, true, "CrashLooping")
        );
        assert_eq!(
            verdict(&[waiting, crashing], false),
            (false, true, "CrashLooping")
        );
        let waiting = Judgement::new(READY, false, "WaitingForWorkers", "0 of 2 workers ready");
        assert!(verdict(&[waiting, healthy.clone()], false).0);
        assert_eq!(
            verdict(&[ready.clone(), healthy.clone()], true),
            (true, false, "Progressing")
        );
        assert_eq!(
            verdict(&[ready, healthy], false),
            (false, false, "Progressing")
        );
    }

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn a_problem_is_warned_about_once_when_it_appears() {
        let stalled = kstatus_judgements(
            &[Judgement::new(READY, false, "NotOwned", "rename the pool")],
            &Rollout::Done,
        );
        let blind = Judgement::new(METRICS_AVAILABLE, false, "NoReadings", "no worker answers");
        let mut judgements = stalled.to_vec();
        judgements.push(blind);
        let first = new_warnings(&[], &judgements);
        let reasons: Vec<_> = first.iter().map(|w| w.reason).collect();
        assert_eq!(reasons, ["NotOwned", "NoReadings"]);
        assert_eq!(first[0].note, "rename the pool");
        // Reported already: nothing new, until the reason changes.
        let now = merge_conditions(&[], &judgements, Some(1), &at(10));
        assert!(new_warnings(&now, &judgements).is_empty());
        let crashing = kstatus_judgements(
            &[Judgement::new(
                DEGRADED,
                true,
                "CrashLooping",
                "web-1 crash-loops",
            )],
            &Rollout::Done,
        );
        let again = new_warnings(&now, &crashing);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].reason, "CrashLooping");
        // Healthy pools and merely partial readings warn about nothing.
        let healthy = kstatus_judgements(
            &[Judgement::new(READY, true, "WorkersReady", "ok")],
            &Rollout::Done,
        );
        let partial = Judgement::new(METRICS_AVAILABLE, true, "SomeWorkersSilent", "1 silent");
        let mut quiet = healthy.to_vec();
        quiet.push(partial);
        assert!(new_warnings(&[], &quiet).is_empty());
        // Workers that have yet to report once are no problem either.
        let mut starting = steady();
        starting.decision = Some((
            "r",
            MetricsState::Awaiting {
                since: Duration::ZERO,
                starting: 3,
            },
        ));
        assert!(new_warnings(&[], &judge(&starting)).is_empty());
    }

    #[test]
    fn awaiting_first_readings_keeps_what_the_last_readings_said() {
        let before = merge_conditions(&[], &judge(&steady()), Some(1), &at(10));
        let mut starting = steady();
        starting.decision = Some((
            "waiting for the first readings; holding 3",
            MetricsState::Awaiting {
                since: Duration::ZERO,
                starting: 3,
            },
        ));
        let mut after = merge_conditions(&before, &judge(&starting), Some(1), &at(20));
        assert_ne!(
            after, before,
            "the judgements alone would rewrite the status"
        );
        keep_last_readings(&before, &mut after);
        assert_eq!(after, before);
        // A new generation is still acknowledged; a Scaling state of its own still shows.
        starting.wanted = 5;
        let mut moved = merge_conditions(&before, &judge(&starting), Some(2), &at(20));
        keep_last_readings(&before, &mut moved);
        let find = |conditions: &[Condition], type_: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == type_)
                .cloned()
                .unwrap()
        };
        let metrics = find(&moved, METRICS_AVAILABLE);
        assert_eq!(
            (metrics.reason.as_str(), metrics.observed_generation),
            ("AllWorkersReport", Some(2))
        );
        assert_eq!(find(&moved, SCALING).reason, "ScalingUp");
        // Never read before: it says so.
        let mut fresh = merge_conditions(&[], &judge(&starting), Some(1), &at(20));
        keep_last_readings(&[], &mut fresh);
        assert_eq!(find(&fresh, METRICS_AVAILABLE).reason, "AwaitingReadings");
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = merge_conditions(
            &[],
            &[Judgement::new(
                READY,
                false,
                "WaitingForWorkers",
                "0 of 1 ready",
            )],
            Some(1),
            &at(10),
        );
        assert_eq!(first[0].last_transition_time, at(10));
        let same = merge_conditions(
            &first,
            &[Judgement::new(READY, false, "WaitingForWorkers", "still")],
            Some(2),
            &at(20),
        );
        assert_eq!(same[0].last_transition_time, at(10));
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge_conditions(
            &same,
            &[Judgement::new(READY, true, "WorkersReady", "1 of 1 ready")],
            Some(2),
            &at(30),
        );
        assert_eq!(flipped[0].last_transition_time, at(30));
        assert_eq!(flipped[0].status, "True");
    }
}
