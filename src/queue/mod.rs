//! Reading worker queues on the operator's side: the readers that watch every worker's sidecar,
//! and the pool's own reading of an external queue while no worker is ready. What is read (the
//! queue snapshot) and the Redis client are in the contract crate, `asyncpool_contract`.

pub mod external;
pub mod reader;
mod sidecar_http;
