//! Tools for the local cluster (scripts/cluster), shared by the end-to-end tests, the demo and
//! the benchmarks: kwok pods have addresses but no containers, so these run the worker side
//! (sidecars, optionally a real app) as local processes on the pods' 127.x addresses.

pub mod fleet;
pub mod http;
pub mod redis;
