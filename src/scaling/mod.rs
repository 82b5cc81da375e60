//! The scaling policy: how many replicas a pool should run, from its pods' queue readings and
//! the pool's own history. Pure: no I/O, no clock (time is passed in), no randomness, no kube
//! types, so it can be unit-tested, simulated and fuzzed. The algorithm and every knob are
//! described in `docs/scaling.md`.
//!
//! The operator keeps one [`Scaler`] per pool and calls [`Scaler::decide`] each round with
//! the pool's [`Policy`] and an [`Observation`]; the [`Decision`] says the replicas to set and
//! why, in words.

mod policy;
mod rates;
mod scaler;
mod supervision;
mod victims;
mod window;

#[cfg(test)]
mod tests;

pub use policy::{MAX_WINDOW, Policy, PolicyError};
pub use rates::RateEstimate;
pub use scaler::{
    Decision, DecisionKind, ExternalReading, MetricsState, Mode, Observation, PodReading, Scaler,
};
pub use supervision::{Supervision, jitter_for};
pub use victims::{Candidate, choose_victims};
