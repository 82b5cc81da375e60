//! The knobs of the scaling policy, their defaults, and the checks across them.

use std::time::Duration;

/// The longest window any knob accepts. History is kept for the longest window, so this bounds
/// the memory one pool costs (one bucket per second).
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// The smallest window: load history is kept in one-second buckets.
const MIN_WINDOW: Duration = Duration::from_secs(1);

/// How one pool scales. Every field has a default that suits a typical async web pool; see
/// `docs/scaling.md` for why each default is what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Fewest replicas. 0 lets an idle pool scale to zero; waking it again needs a reading that
    /// does not come from a pod (see [`ExternalReading`](super::ExternalReading)).
    pub min_replicas: u32,
    /// Most replicas.
    pub max_replicas: u32,
    /// Requests one worker runs at once (the sidecar's admission limit).
    pub concurrency: u32,
    /// Load (queued + in flight) one worker should carry.
    pub target_per_worker: f64,
    /// Window of the load average and arrival-rate trend that steady scaling follows, and of
    /// complete data before any scale-down.
    pub stable_window: Duration,
    /// Short window of the load average that detects bursts.
    pub panic_window: Duration,
    /// Panic starts when the panic-window load needs this many times the ready workers (2.0 = 200 %).
    pub panic_threshold: f64,
    /// Relative scale-down ignored, so the pool does not chase noise. Scale-ups always happen.
    pub tolerance: f64,
    /// Growth factor allowed per second (and at least +4 pods per second).
    pub max_scale_up_rate: f64,
    /// Shrink factor allowed per second: 2.0 lets a pool at most halve each second.
    pub max_scale_down_rate: f64,
    /// Scale-down stabilization: a scale-down goes no lower than the highest recommendation
    /// made during this time, so a dip shorter than it does nothing.
    pub scale_down_delay: Duration,
    /// Replicas to run once no source has answered for `missing_data_grace`. Only ever raises
    /// the pool: missing data never causes a scale-down.
    pub fallback_replicas: Option<u32>,
    /// How long total silence may last before `fallback_replicas` applies.
    pub missing_data_grace: Duration,
    /// Also size the pool from arrival rate × service time (Little's law), so a growing
    /// arrival rate is met before the queue builds.
    pub rate_aware: bool,
    /// Hold the current size whatever the load.
    pub paused: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_replicas: 1,
            max_replicas: 10,
            concurrency: 10,
            target_per_worker: 7.0,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            tolerance: 0.1,
            max_scale_up_rate: 10.0,
            max_scale_down_rate: 2.0,
            scale_down_delay: Duration::from_secs(30),
            fallback_replicas: None,
            missing_data_grace: Duration::from_secs(10),
            rate_aware: true,
            paused: false,
        }
    }
}

/// Why a policy cannot be used. Messages name the field and the rule, for a person to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("max_replicas must be at least 1")]
    MaxReplicasZero,
    #[error("min_replicas ({min}) is above max_replicas ({max})")]
    MinAboveMax { min: u32, max: u32 },
    #[error("concurrency must be at least 1")]
    ConcurrencyZero,
    #[error("{name} must be a finite number {rule}, got {value}")]
    Number {
        name: &'static str,
        rule: &'static str,
        value: f64,
    },
    #[error("{name} must be {rule}, got {value:?}")]
    Window {
        name: &'static str,
        rule: &'static str,
        value: Duration,
    },
    #[error("panic_window ({panic:?}) is longer than stable_window ({stable:?})")]
    PanicWindowTooLong { panic: Duration, stable: Duration },
    #[error(
        "fallback_replicas ({fallback}) is outside min_replicas..=max_replicas ({min}..={max})"
    )]
    FallbackOutOfBounds { fallback: u32, min: u32, max: u32 },
}

impl Policy {
    /// Checks every field and the rules across fields. [`Scaler::decide`](super::Scaler::decide)
    /// holds the current size while this fails, so a bad policy never moves a pool.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_replicas == 0 {
            return Err(PolicyError::MaxReplicasZero);
        }
        if self.min_replicas > self.max_replicas {
            return Err(PolicyError::MinAboveMax {
                min: self.min_replicas,
                max: self.max_replicas,
            });
        }
        if self.concurrency == 0 {
            return Err(PolicyError::ConcurrencyZero);
        }
        let numbers = [
            ("target_per_worker", self.target_per_worker, 0.0, "above 0"),
            ("panic_threshold", self.panic_threshold, 1.0, "above 1"),
            ("max_scale_up_rate", self.max_scale_up_rate, 1.0, "above 1"),
            (
                "max_scale_down_rate",
                self.max_scale_down_rate,
                1.0,
                "above 1",
            ),
        ];
        for (name, value, floor, rule) in numbers {
            if !(value.is_finite() && value > floor) {
                return Err(PolicyError::Number { name, rule, value });
            }
        }
        if !(self.tolerance.is_finite() && (0.0..1.0).contains(&self.tolerance)) {
            return Err(PolicyError::Number {
                name: "tolerance",
                rule: "in [0, 1)",
                value: self.tolerance,
            });
        }
        let windows = [
            (
                "stable_window",
                self.stable_window,
                MIN_WINDOW,
                "between 1s and 1h",
            ),
            (
                "panic_window",
                self.panic_window,
                MIN_WINDOW,
                "between 1s and 1h",
            ),
            (
                "scale_down_delay",
                self.scale_down_delay,
                Duration::ZERO,
                "at most 1h",
            ),
            (
                "missing_data_grace",
                self.missing_data_grace,
                Duration::ZERO,
                "at most 1h",
            ),
        ];
        for (name, value, floor, rule) in windows {
            if !(floor..=MAX_WINDOW).contains(&value) {
                return Err(PolicyError::Window { name, rule, value });
            }
        }
        if self.panic_window > self.stable_window {
            return Err(PolicyError::PanicWindowTooLong {
                panic: self.panic_window,
                stable: self.stable_window,
            });
        }
        if let Some(fallback) = self.fallback_replicas
            && !(self.min_replicas..=self.max_replicas).contains(&fallback)
        {
            return Err(PolicyError::FallbackOutOfBounds {
                fallback,
                min: self.min_replicas,
                max: self.max_replicas,
            });
        }
        Ok(())
    }

    /// Load one worker can be given when sizing from rates: the target, but never more than
    /// the concurrency, because past it the queue grows without bound and waits never end.
    pub(super) fn rate_load_per_worker(&self) -> f64 {
        self.target_per_worker.min(f64::from(self.concurrency))
    }
}
