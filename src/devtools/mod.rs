//! Tools for the local cluster (scripts/cluster), shared by the end-to-end tests, the demo and
//! the benchmarks: kwok pods have addresses but no containers, so these run the worker side
//! (sidecars, optionally a real app) as local processes on the pods' 127.x addresses.

pub mod fleet;
pub mod http;
pub mod redis;

/// A TCP port that was free a moment ago on 127.0.0.1, for a process about to listen on it.
pub fn free_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
