//! Pure builders of a pool's status and its conditions, in the standard `metav1.Condition`
//! shape so that `kubectl wait --for=condition=Ready awp/NAME` works.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const SCALING: &str = "Scaling";
pub const METRICS_AVAILABLE: &str = "MetricsAvailable";
pub const DEGRADED: &str = "Degraded";
pub const PAUSED: &str = "Paused";

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

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
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
