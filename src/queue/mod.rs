//! Reading worker queues: the sidecar contract and, on the operator side, the clients that poll
//! and watch it.

pub mod contract;
pub mod external;
pub mod reader;
pub mod redis;
