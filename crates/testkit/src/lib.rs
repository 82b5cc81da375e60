//! asyncpool's test kit (not published): what the end-to-end tests, the sidecar's process
//! tests, the demo and the benchmarks share.
//!
//! - [`cluster`]: the real local cluster of `scripts/cluster` (kubeconfig, kubectl, Helm, one
//!   namespace per test, the CRD), and [`operator`], the operator binary run against it;
//! - [`fleet`]: kwok pods have addresses but no containers, so the fleet runs the worker side
//!   (sidecars, optionally a real uvicorn app) as local processes on the pods' 127.x addresses;
//! - [`fake_sidecars`]: the sidecar contract of thousands of pods from one listener, for the
//!   scale benchmark, and [`deployments`]: Deployments followed with the arrival time of every
//!   change, for the benchmarks' reaction times;
//! - [`sidecar`]: the sidecar binary, a uvicorn app and child processes on loopback ports;
//! - [`redis`]: a real redis-server on a free port; [`http`]: a loopback HTTP client;
//! - [`identity`]: a ServiceAccount's kubeconfig, to run a process with that account's rights
//!   only, and [`audit`]: the API server's record of every call such a process made.

pub mod audit;
pub mod bench;
pub mod cluster;
pub mod deployments;
pub mod fake_sidecars;
pub mod fleet;
pub mod helm;
pub mod http;
pub mod identity;
pub mod load;
pub mod mock_api;
pub mod operator;
pub mod real_node;
pub mod real_pool;
pub mod redis;
pub mod sidecar;

use std::path::PathBuf;

use serde_json::Value;

/// RFC 7386 JSON merge patch: `patch`'s fields replace `target`'s, objects merge field by field,
/// a `null` removes the field.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1, for a process about to listen on it.
pub fn free_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A port that was free a moment ago on 127.0.0.1; fails the test if there is none.
pub fn free_port() -> u16 {
    free_loopback_port().expect("a free loopback port")
}

/// A loopback port held bound but not listening: a connection to it is refused, and no test
/// running beside can take it while it is held (a port only found free can be). Stands for an
/// app that is not up yet, or has gone.
pub struct RefusingPort {
    socket: tokio::net::TcpSocket,
    pub addr: std::net::SocketAddr,
}

impl RefusingPort {
    /// A fresh port.
    pub fn new() -> RefusingPort {
        RefusingPort::at(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// `addr` held again, e.g. right after the app listening on it went away.
    pub fn at(addr: std::net::SocketAddr) -> RefusingPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        // Connections the app accepted may linger in TIME_WAIT on the port.
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).expect("the port held");
        let addr = socket.local_addr().expect("the held port's address");
        RefusingPort { socket, addr }
    }

    /// The app comes up on the port: it listens from now on (with no moment in which the port
    /// was free). Needs a tokio runtime.
    pub fn listen(self) -> tokio::net::TcpListener {
        self.socket
            .listen(1024)
            .expect("listening on the held port")
    }
}

impl Default for RefusingPort {
    fn default() -> Self {
        RefusingPort::new()
    }
}

/// Polls `check` every `every` until it gives `Some`, or says it timed out after `limit`,
/// naming `what`. The test helpers turn the error into a failed test; the benchmarks return it.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    limit: std::time::Duration,
    every: std::time::Duration,
    mut check: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        tokio::time::sleep(every).await;
    }
}

/// Where the project's scripts cache what they build and install (`ASYNCPOOL_CACHE`, by default
/// `~/.cache/asyncpool`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("ASYNCPOOL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/asyncpool")
        })
}

/// The repository's root (the workspace's).
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// A binary of the workspace (`asyncpool-operator`, `asyncpool-sidecar`, ...) built in the same
/// profile as the test or benchmark that asks: cargo puts them beside the `deps/` folder that
/// holds the running executable. `cargo test --workspace` builds every member's binaries first;
/// a test run for one package alone needs `cargo build --workspace` before it.
pub fn binary(name: &str) -> PathBuf {
    let profile_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()));
    let path = profile_dir
        .map(|dir| dir.join(name))
        .filter(|path| path.is_file());
    path.unwrap_or_else(|| {
        panic!(
            "{name} is not built beside this test: run `cargo build --workspace` (with the \
             same profile) or `cargo test --workspace`"
        )
    })
}
