//! Baseline: the Kubernetes HPA fed by KEDA, at their defaults, on the same queue metric (the
//! pool's load, queued plus in flight, with `targetPerWorker` as KEDA's target value).
//!
//! Every rule is read from the upstream code (KEDA main after v2.20.2, Kubernetes v1.37.2 and
//! v1.30.14, identical for these functions):
//! - KEDA leaves the HPA's `spec.behavior` nil unless the user sets one
//!   (kedacore/keda `controllers/keda/hpa.go`, `newHPAForScaledObject`), and the API server
//!   does not default a nil behavior (kubernetes `pkg/apis/autoscaling/v2/defaults.go`,
//!   `SetDefaults_HorizontalPodAutoscalerBehavior`): the HPA takes its legacy path.
//! - The trigger is an External metric with an AverageValue target; KEDA returns the raw total
//!   and the HPA divides (keda `pkg/scalers/scaler.go`, `GetMetricTargetType`).
//! - `useCachedMetrics` is false by default, so each HPA query reads the queue fresh (keda
//!   `pkg/scaling/scale_handler.go`, `GetScaledObjectMetrics`). KEDA's own 30 s polling loop only
//!   does 0 → min and, after `cooldownPeriod` (300 s) without activity, → 0
//!   (`pkg/scaling/executor/scale_scaledobjects.go`, `RequestScale`).
//! - The HPA's minReplicas is max(minReplicaCount, 1) (keda `GetHPAMinReplicas`).
//! - The HPA syncs every 15 s (kubernetes `pkg/controller/podautoscaler/config/v1alpha1/
//!   defaults.go`). At 0 replicas it does nothing ("ScalingDisabled").
//! - Proposal for an AverageValue External metric (`replica_calculator.go`,
//!   `GetExternalPerPodMetricReplicas`): ratio = usage / (target × status.replicas); within the
//!   0.1 tolerance (inclusive) the proposal is status.replicas, else ceil(usage / target).
//!   status.replicas counts pods not being deleted, ready or not.
//! - Legacy normalization (`horizontal.go`, `normalizeDesiredReplicas`): the proposal is raised
//!   to the highest proposal of the last 5 min (downscale stabilization, entries at the cutoff
//!   included), then capped at max(2 × spec.replicas, 4) and clamped to min/max.

use super::world::{Autoscaler, World};

/// `--horizontal-pod-autoscaler-sync-period`.
pub const HPA_SYNC: f64 = 15.0;
/// `--horizontal-pod-autoscaler-downscale-stabilization`.
const DOWNSCALE_STABILIZATION: f64 = 300.0;
/// `--horizontal-pod-autoscaler-tolerance`.
const TOLERANCE: f64 = 0.1;
/// `scaleUpLimitFactor`, `scaleUpLimitMinimum`.
const SCALE_UP_FACTOR: f64 = 2.0;
const SCALE_UP_MINIMUM: f64 = 4.0;
/// KEDA's `pollingInterval` and `cooldownPeriod` defaults.
pub const KEDA_POLL: f64 = 30.0;
const KEDA_COOLDOWN: f64 = 300.0;

pub struct HpaKeda {
    target: f64,
    /// The pool's minReplicas (KEDA's minReplicaCount).
    min: u32,
    max: u32,
    initial: u32,
    next_sync: f64,
    next_poll: f64,
    /// Raw proposals and when they were made, for the stabilization window.
    recommendations: Vec<(f64, u32)>,
    last_active: Option<f64>,
}

impl HpaKeda {
    /// `phase_sync` and `phase_poll` place the first HPA sync and KEDA poll (the loops run on
    /// their own clocks).
    pub fn new(
        target: f64,
        min: u32,
        max: u32,
        initial: u32,
        phase_sync: f64,
        phase_poll: f64,
    ) -> Self {
        Self {
            target,
            min,
            max,
            initial,
            next_sync: phase_sync,
            next_poll: phase_poll,
            recommendations: Vec::new(),
            last_active: None,
        }
    }

    fn hpa_min(&self) -> u32 {
        self.min.max(1)
    }

    /// One HPA sync; `None` leaves the size alone.
    fn sync(&mut self, now: f64, current: u32, status_replicas: u32, usage: f64) -> Option<u32> {
        if current == 0 {
            return None;
        }
        if current > self.max {
            return Some(self.max);
        }
        if current < self.hpa_min() {
            return Some(self.hpa_min());
        }
        let ratio = usage / (self.target * f64::from(status_replicas));
        let proposal = if (1.0 - TOLERANCE..=1.0 + TOLERANCE).contains(&ratio) {
            status_replicas
        } else {
            (usage / self.target).ceil().min(f64::from(u32::MAX)) as u32
        };
        let cutoff = now - DOWNSCALE_STABILIZATION;
        self.recommendations.retain(|(at, _)| *at >= cutoff);
        let stabilized = self
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .fold(proposal, u32::max);
        self.recommendations.push((now, proposal));
        let limit = (SCALE_UP_FACTOR * f64::from(current)).max(SCALE_UP_MINIMUM) as u32;
        let ceiling = self.max.min(limit);
        Some(stabilized.clamp(self.hpa_min(), ceiling.max(self.hpa_min())))
    }

    /// One KEDA poll: activation from zero and deactivation to zero.
    fn poll(&mut self, now: f64, current: u32, usage: f64) -> Option<u32> {
        if usage > 0.0 {
            self.last_active = Some(now);
            return (current == 0).then(|| self.hpa_min());
        }
        let cooled = self
            .last_active
            .is_none_or(|active| active + KEDA_COOLDOWN < now);
        if current > 0 && self.min == 0 && cooled {
            return Some(0);
        }
        (current < self.min).then_some(self.min)
    }
}

impl Autoscaler for HpaKeda {
    fn initial_replicas(&self) -> u32 {
        self.initial
    }

    fn next_look(&self, _changed_at: Option<f64>) -> f64 {
        self.next_sync.min(self.next_poll)
    }

    fn look(&mut self, world: &mut World) -> u32 {
        let now = world.now();
        let usage = world.total_load();
        let mut replicas = world.replicas();
        if now >= self.next_poll {
            self.next_poll += KEDA_POLL;
            if let Some(set) = self.poll(now, replicas, usage) {
                replicas = set;
            }
        }
        if now >= self.next_sync {
            self.next_sync += HPA_SYNC;
            let status_replicas = world.live_pods().count() as u32;
            if let Some(set) = self.sync(now, replicas, status_replicas, usage) {
                replicas = set;
            }
        }
        replicas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_stabilization_and_the_legacy_scale_up_limit() {
        // Target 10 a worker, min 1, max 50.
        let mut hpa = HpaKeda::new(10.0, 1, 50, 4, 0.0, 0.0);
        // 4 pods carrying 42: a ratio of 1.05, within the 10 % tolerance: stays.
        assert_eq!(hpa.sync(0.0, 4, 4, 42.0), Some(4));
        // 300 of load: ceil(300 / 10) = 30, but at most max(2 × 4, 4) = 8 this sync.
        assert_eq!(hpa.sync(15.0, 4, 4, 300.0), Some(8));
        assert_eq!(hpa.sync(30.0, 8, 8, 300.0), Some(16));
        assert_eq!(hpa.sync(45.0, 16, 16, 300.0), Some(30));
        // The load falls to 50: the proposal is 5, but the highest of the last 300 s is 30.
        assert_eq!(hpa.sync(60.0, 30, 30, 50.0), Some(30));
        assert_eq!(hpa.sync(345.0, 30, 30, 50.0), Some(30));
        // At 346 s the proposal of 30 made at 45 s is more than 300 s old.
        assert_eq!(hpa.sync(346.0, 30, 30, 50.0), Some(5));
        // At 0 replicas the HPA does nothing; KEDA's poll brings the pool to its minimum.
        assert_eq!(hpa.sync(400.0, 0, 0, 50.0), None);
        assert_eq!(hpa.poll(400.0, 0, 50.0), Some(1));
    }

    #[test]
    fn keda_scales_to_zero_only_after_the_cooldown() {
        let mut keda = HpaKeda::new(10.0, 0, 10, 1, 0.0, 0.0);
        assert_eq!(keda.poll(0.0, 1, 3.0), None);
        assert_eq!(keda.poll(30.0, 1, 0.0), None);
        assert_eq!(keda.poll(300.0, 1, 0.0), None);
        assert_eq!(keda.poll(301.0, 1, 0.0), Some(0));
    }
}
