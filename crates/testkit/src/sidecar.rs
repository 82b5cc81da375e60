//! Shared harness of the sidecar's integration tests: real processes (the sidecar binary, a
//! uvicorn app, redis-server) on free loopback ports, readiness by polling, killed on drop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The venv's python, from ASYNCPOOL_PYTHON or the path scripts/test-deps uses.
pub fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("ASYNCPOOL_PYTHON") {
        return PathBuf::from(path);
    }
    let root = crate::repo_root().display().to_string();
    let hash = Command::new("sha256sum")
        .arg(format!("{root}/tests/apps/requirements.txt"))
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|out| out.chars().take(16).collect::<String>())
        .unwrap_or_default();
    let venv = crate::cache_dir().join(format!("venv-{hash}"));
    let candidate = venv.join("bin/python");
    assert!(
        candidate.exists() && venv.join(".complete").exists(),
        "no Python venv for the sidecar tests at {}: run `eval \"$(scripts/test-deps)\"` first \
         (or set ASYNCPOOL_PYTHON)",
        candidate.display()
    );
    candidate
}

pub use crate::{RefusingPort, free_port};

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child process killed and reaped on drop.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &'static str, command: &mut Command) -> Proc {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early: {status}", self.name);
        }
    }

    /// Waits until the process answers `GET path` on `addr` with 200, failing the test if it
    /// exits first or takes longer than `limit`.
    pub async fn wait_answering(&mut self, addr: SocketAddr, path: &str, limit: Duration) {
        let start = Instant::now();
        while get(addr, path).await.map(|r| r.status) != Ok(200) {
            self.assert_running();
            assert!(
                start.elapsed() < limit,
                "{} did not come up within {limit:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "{} did not exit within {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak and current resident memory in KiB, from /proc.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` every 10 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let check = || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    };
    crate::poll_until(what, timeout, Duration::from_millis(10), check)
        .await
        .unwrap_or_else(|timeout| panic!("{timeout}"));
}

pub use crate::http::Reply;

/// One request on a fresh connection (owns its arguments, so that it can be spawned).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
) -> impl Future<Output = Result<Reply, String>> + Send + 'static {
    let (method, path) = (method.to_string(), path.to_string());
    async move { request_with(addr, &method, &path, &[], body).await }
}

/// Bound on one exchange of the harness: a request that never completes is an error that names
/// it, never a test that hangs.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(60);

pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply, String> {
    tokio::time::timeout(
        EXCHANGE_LIMIT,
        crate::http::send(addr, method, path, headers, body),
    )
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "{method} {addr}{path}: no answer within {EXCHANGE_LIMIT:?}"
        ))
    })
}

pub fn get(
    addr: SocketAddr,
    path: &str,
) -> impl Future<Output = Result<Reply, String>> + Send + 'static {
    request(addr, "GET", path, Bytes::new())
}

/// Sends raw bytes and reads until the peer closes or `timeout`; returns what was read.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    out
}

/// The uvicorn app of tests/apps/slow_app.py.
pub struct App {
    pub addr: SocketAddr,
    pub proc: Proc,
}

impl App {
    pub async fn start() -> App {
        let port = free_port();
        let mut command = Command::new(python());
        command
            .args([
                "-m",
                "uvicorn",
                "slow_app:app",
                "--host",
                "127.0.0.1",
                "--log-level",
                "warning",
            ])
            .args(["--port", &port.to_string(), "--app-dir"])
            .arg(crate::repo_root().join("tests/apps"));
        let mut proc = Proc::spawn("uvicorn", &mut command);
        let addr = loopback(port);
        proc.wait_answering(addr, "/_stats", Duration::from_secs(30))
            .await;
        App { addr, proc }
    }

    pub async fn stats(&self) -> serde_json::Value {
        get(self.addr, "/_stats").await.expect("app stats").json()
    }
}

/// The sidecar binary on free loopback ports.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub proc: Proc,
}

impl Sidecar {
    /// Starts the sidecar with `args` (after --listen/--admin-listen) and waits for /livez.
    pub async fn start(args: &[&str]) -> Sidecar {
        Self::start_on("127.0.0.1".parse().expect("ip"), args, &[]).await
    }

    /// Starts the sidecar in front of `app` (`--upstream`), with `args` after that.
    pub async fn in_front_of(app: &App, args: &[&str]) -> Sidecar {
        let upstream = app.addr.to_string();
        let args: Vec<&str> = ["--upstream", upstream.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        Self::start(&args).await
    }

    pub async fn start_on(ip: std::net::IpAddr, args: &[&str], envs: &[(&str, &str)]) -> Sidecar {
        Self::start_wrapped(&[], ip, args, envs).await
    }

    /// As [`Sidecar::start_on`], run through `wrapper` (e.g. `ip netns exec NAME`), which must
    /// exec the sidecar in its own process so that the kill on drop reaches it. The ports are
    /// free on the host's loopback, so `ip` must be one that no process of the wrapper's network
    /// namespace listens on (any port, in a fresh namespace).
    pub async fn start_wrapped(
        wrapper: &[&str],
        ip: std::net::IpAddr,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Sidecar {
        let addr = SocketAddr::new(ip, free_port());
        let admin = SocketAddr::new(ip, free_port());
        let binary = crate::binary("asyncpool-sidecar");
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .args([
                "--listen",
                &addr.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .args(args)
            .envs(envs.iter().copied())
            .env("ASYNCPOOL_LOG", "warn");
        let mut proc = Proc::spawn("sidecar", &mut command);
        proc.wait_answering(admin, "/livez", Duration::from_secs(10))
            .await;
        Sidecar { addr, admin, proc }
    }

    pub async fn queue(&self) -> serde_json::Value {
        let reply = get(self.admin, "/queue").await.expect("GET /queue");
        assert_eq!(
            reply.status,
            200,
            "GET /queue: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let parsed = asyncpool_contract::queue::QueueSnapshot::parse(&reply.body);
        assert!(parsed.is_ok(), "GET /queue broke the contract: {parsed:?}");
        reply.json()
    }
}
