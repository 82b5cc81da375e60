//! Which workers go when a pool shrinks. Kubernetes removes NotReady pods first and then those
//! with the lowest `controller.kubernetes.io/pod-deletion-cost`; the operator marks the chosen
//! victims right before lowering the replica count, so the least busy workers go and the drain
//! on their way out is short.

/// One worker as victim choice sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: std::sync::Arc<str>,
    pub ready: bool,
    /// Queued + in flight; `None` when the sidecar did not report (assumed busy).
    pub load: Option<u64>,
}

/// The `count` workers to remove first: not ready ones, then the least loaded, then those
/// without data (they may be busy). Ties go by name so the choice is deterministic.
pub fn choose_victims(candidates: &[Candidate], count: usize) -> Vec<String> {
    let mut ordered: Vec<&Candidate> = candidates.iter().collect();
    ordered.sort_by(|a, b| {
        let key = |c: &Candidate| (c.ready, c.load.is_none(), c.load.unwrap_or(0));
        key(a).cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
    });
    ordered
        .into_iter()
        .take(count)
        .map(|c| c.name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, ready: bool, load: Option<u64>) -> Candidate {
        Candidate {
            name: name.into(),
            ready,
            load,
        }
    }

    #[test]
    fn not_ready_then_least_loaded_then_silent() {
        let pods = [
            c("busy", true, Some(30)),
            c("silent", true, None),
            c("idle", true, Some(0)),
            c("starting", false, None),
            c("light", true, Some(4)),
        ];
        assert_eq!(choose_victims(&pods, 3), ["starting", "idle", "light"]);
        assert_eq!(
            choose_victims(&pods, 5),
            ["starting", "idle", "light", "busy", "silent"]
        );
        assert!(choose_victims(&pods, 0).is_empty());
        assert_eq!(choose_victims(&pods, 9).len(), 5);
    }
}
