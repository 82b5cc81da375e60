//! The operator binary as a real process against the test cluster, scoped to one namespace so
//! that tests run side by side.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cluster::{eventually, kubeconfig_path};
use crate::{binary, free_port, repo_root};

pub struct OperatorProcess {
    child: Child,
    pub identity: String,
    pub http_port: u16,
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Starts the operator for `namespace` (pools, pods and its lease all live there) and waits
    /// until it answers `/livez`. `extra` flags come last (a flag given once by the operator's
    /// rules, such as `--sidecar-image`, replaces the default here).
    pub async fn start(namespace: &str, identity: &str, extra: &[&str]) -> Self {
        Self::start_with_kubeconfig(namespace, identity, extra, kubeconfig_path()).await
    }

    /// As `start`, authenticated by `kubeconfig` (a service account's token, for example).
    pub async fn start_with_kubeconfig(
        namespace: &str,
        identity: &str,
        extra: &[&str],
        kubeconfig: &Path,
    ) -> Self {
        let http_port = free_port();
        let logs = repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        let log = logs.join(format!("{namespace}-{identity}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary("asyncpool-operator"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,asyncpool=debug,kube=warn")
            .args([
                "--namespace",
                namespace,
                "--lease-namespace",
                namespace,
                "--identity",
                identity,
            ])
            .args(["--listen", &format!("127.0.0.1:{http_port}")])
            // kwok runs no image: a name that says so, unless the test runs real ones.
            .args(
                (!extra.contains(&"--sidecar-image"))
                    .then_some(["--sidecar-image", "asyncpool/sidecar:test"])
                    .into_iter()
                    .flatten(),
            )
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start the operator");
        let operator = Self {
            child,
            identity: identity.to_owned(),
            http_port,
            log,
        };
        let port = operator.http_port;
        eventually(
            "operator answers /livez",
            Duration::from_secs(20),
            || async move {
                http_get(port, "/livez")
                    .await
                    .filter(|(status, _)| *status == 200)
            },
        )
        .await;
        operator
    }

    /// `/metrics` text, if the operator answers.
    pub async fn metrics(&self) -> Option<String> {
        http_get(self.http_port, "/metrics")
            .await
            .map(|(_, body)| body)
    }

    /// Whether the process ended by itself.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process at once, as a node failure would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A GET on the operator's loopback port: (status, body).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    crate::http::get(std::net::SocketAddr::from(([127, 0, 0, 1], port)), path).await
}
