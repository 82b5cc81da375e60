//! The operator under test as a process, and its `/metrics`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::time::{Instant, sleep};

use crate::{BenchResult, Mode};

pub struct Operator {
    /// Killed when dropped.
    child: tokio::process::Child,
    port: u16,
    log: PathBuf,
}

pub fn free_port() -> BenchResult<u16> {
    Ok(asyncpool::devtools::free_loopback_port()?)
}

impl Operator {
    pub async fn start(
        kubeconfig: &Path,
        namespace: &str,
        mode: Mode,
        log: PathBuf,
    ) -> BenchResult<Self> {
        let port = free_port()?;
        let file = std::fs::File::create(&log)?;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_asyncpool-operator"));
        // The operator reads its settings from ASYNCPOOL_* too; the caller's must not leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ASYNCPOOL_") {
                command.env_remove(key);
            }
        }
        let child = command
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .args(["--namespace", namespace, "--leader-elect=false"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--sidecar-image", "asyncpool/sidecar:bench"])
            .arg(mode.flag())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()?;
        let mut operator = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = operator.get("/readyz").await {
                return Ok(operator);
            }
            if let Ok(Some(status)) = operator.child.try_wait() {
                return Err(format!(
                    "the operator exited ({status}); log {}",
                    operator.log.display()
                )
                .into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the operator is not ready after 60 s; log {}",
                    operator.log.display()
                )
                .into());
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        asyncpool::devtools::http::get(
            std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            path,
        )
        .await
    }

    pub async fn metrics(&self) -> BenchResult<Metrics> {
        match self.get("/metrics").await {
            Some((200, text)) => Ok(Metrics(text)),
            _ => Err("the operator does not answer /metrics".into()),
        }
    }

    /// User plus system CPU time the process has used so far.
    pub fn cpu(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()?)).ok()?;
        // Fields after the command name, which may itself hold spaces: state is field 3, utime
        // and stime are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Duration::from_millis(ticks * 10))
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The operator's `/metrics` text.
pub struct Metrics(String);

impl Metrics {
    /// Sum of the samples of `name` whose labels contain `labels` (empty: all of them).
    pub fn sum(&self, name: &str, labels: &str) -> f64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, rest) = match series.split_once('{') {
                    Some((metric, rest)) => (metric, rest),
                    None => (series, ""),
                };
                (metric == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
            })
            // An empty float sum is -0.0, which would print as "-0".
            .fold(0.0, |sum, value| sum + value)
    }
}
