//! Worker supervision, as a Gunicorn master does it: a worker whose oldest request has run past
//! `workerTimeout` is hung, and one that served `maxRequests` (plus its own jitter) is worn out.
//! Either is recycled by the operator, one at a time and surge first.

use std::time::Duration;

use asyncpool_contract::queue::QueueSnapshot;

/// When a worker is due for recycling.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Supervision {
    pub worker_timeout: Option<Duration>,
    pub max_requests: Option<u64>,
    pub max_requests_jitter: u64,
}

/// A stable per-worker jitter in `0..=jitter` from the pod name (FNV-1a), so that workers started
/// together do not all recycle together and one worker's limit does not change between rounds.
pub fn jitter_for(pod: &str, jitter: u64) -> u64 {
    let hash = pod.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash % jitter.saturating_add(1)
}

impl Supervision {
    /// Why this worker should be recycled, in words; `None` when it is fine.
    pub fn due(&self, pod: &str, snapshot: &QueueSnapshot) -> Option<String> {
        if let Some(timeout) = self.worker_timeout
            && snapshot.oldest_in_flight_seconds > timeout.as_secs_f64()
        {
            return Some(format!(
                "worker {pod} is hung: its oldest request has run {:.0}s, past workerTimeout {}s",
                snapshot.oldest_in_flight_seconds,
                timeout.as_secs()
            ));
        }
        if let Some(max) = self.max_requests {
            let limit = max.saturating_add(jitter_for(pod, self.max_requests_jitter));
            if snapshot.completed_total >= limit {
                return Some(format!(
                    "worker {pod} is worn out: it served {} requests (its limit is {limit})",
                    snapshot.completed_total
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(completed: u64, oldest: f64) -> QueueSnapshot {
        QueueSnapshot {
            arrived_total: completed + 1,
            completed_total: completed,
            busy_seconds_total: 1.0,
            oldest_in_flight_seconds: oldest,
            ..QueueSnapshot::of_pod(0, 1)
        }
    }

    #[test]
    fn hung_and_worn_out_workers_are_due() {
        let rules = Supervision {
            worker_timeout: Some(Duration::from_secs(30)),
            max_requests: Some(1000),
            max_requests_jitter: 0,
        };
        assert_eq!(rules.due("a", &snapshot(10, 29.0)), None);
        assert!(
            rules
                .due("a", &snapshot(10, 31.0))
                .unwrap()
                .contains("hung")
        );
        assert!(
            rules
                .due("a", &snapshot(1000, 0.0))
                .unwrap()
                .contains("worn out")
        );
        assert_eq!(
            Supervision::default().due("a", &snapshot(u64::MAX / 4, 1e9)),
            None
        );
    }

    #[test]
    fn jitter_is_stable_bounded_and_spread() {
        assert_eq!(jitter_for("pod-a", 0), 0);
        assert_eq!(jitter_for("pod-a", 100), jitter_for("pod-a", 100));
        let values: std::collections::HashSet<u64> = (0..50)
            .map(|i| jitter_for(&format!("pod-{i}"), 100))
            .collect();
        assert!(values.iter().all(|v| *v <= 100));
        assert!(values.len() > 10, "jitter does not spread: {values:?}");
        let rules = Supervision {
            worker_timeout: None,
            max_requests: Some(100),
            max_requests_jitter: 50,
        };
        let limit = 100 + jitter_for("pod-x", 50);
        assert_eq!(rules.due("pod-x", &snapshot(limit - 1, 0.0)), None);
        assert!(rules.due("pod-x", &snapshot(limit, 0.0)).is_some());
    }
}
