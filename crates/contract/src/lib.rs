//! What the asyncpool operator and the sidecar in every worker pod agree on, in one place so
//! that neither side can drift: the queue snapshot the sidecar serves and the operator reads,
//! the pod's ports and labels, the environment the operator injects and the sidecar parses,
//! the queue source kinds, Go-style durations, and the Redis reader both sides poll with.
//!
//! It depends on neither kube nor an HTTP stack, so the sidecar links only what it uses.

pub mod duration;
pub mod pod;
pub mod queue;
pub mod redis;
mod source;

pub use source::{RedisKind, SourceKind};
