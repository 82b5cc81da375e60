//! asyncpool: a Kubernetes operator that runs pools of async workers and scales them on the
//! queue length that a sidecar in each worker pod exposes.

pub mod api_client;
pub mod api_rate;
pub mod controller;
pub mod crd;
pub mod endpoints;
pub mod leader;
pub mod manifest;
pub mod metrics;
pub mod planner;
pub mod pool;
pub mod queue;
pub mod reconcile;
pub mod resources;
pub mod scaling;
pub mod signal;
pub mod simulate;
pub mod status;
