//! What the benchmarks on the local cluster share (`benches/reaction`, `benches/fidelity`): the
//! operator under test as a process with its CPU time and metrics, the bench's namespaces
//! (deleted however a run ends), polling with a deadline, and where results go. Unlike the test
//! helpers these return errors, so a run that fails mid-way still cleans up and says why.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::time::{Instant, sleep};

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Label on the benches' namespaces, to find what a killed run left behind.
pub const BENCH_LABEL: &str = "asyncpool.dev/bench";

/// How the operator reads its sidecars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    Watch,
    Poll,
}

impl ReadMode {
    pub fn name(self) -> &'static str {
        match self {
            ReadMode::Watch => "watch",
            ReadMode::Poll => "poll",
        }
    }

    /// The operator's flag; polling keeps the default `--poll-interval` (500 ms).
    pub fn flag(self) -> &'static str {
        match self {
            ReadMode::Watch => "--watch-sidecars=true",
            ReadMode::Poll => "--watch-sidecars=false",
        }
    }
}

/// Where `bench` writes its logs and raw data: `target/<bench>` (or under `CARGO_TARGET_DIR`).
pub fn output_dir(bench: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target"))
        .join(bench)
}

/// [`crate::poll_until`] with the benches' error type.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    check: F,
) -> BenchResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    Ok(crate::poll_until(what, limit, every, check).await?)
}

/// Namespaces this run created, deleted at the end however the run ends.
#[derive(Clone)]
pub struct Namespaces {
    bench: &'static str,
    created: Arc<Mutex<Vec<String>>>,
}

impl Namespaces {
    /// Namespaces labelled as `bench`'s.
    pub fn new(bench: &'static str) -> Self {
        Self {
            bench,
            created: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        self.created.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub async fn create(&self, client: &Client, prefix: &str) -> BenchResult<String> {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {BENCH_LABEL: self.bench}}
        }))?;
        namespaces
            .create(&PostParams::default(), &namespace)
            .await?;
        self.lock().push(name.clone());
        Ok(name)
    }

    /// Deletes one namespace; the controller-manager then collects everything in it.
    pub async fn delete(&self, client: &Client, name: &str) {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        if let Err(error) = namespaces.delete(name, &DeleteParams::default()).await {
            eprintln!("could not delete namespace {name}: {error}");
        }
        self.lock().retain(|n| n != name);
    }

    pub async fn delete_all(&self, client: &Client) {
        let names = self.lock().clone();
        for name in names {
            self.delete(client, &name).await;
        }
    }
}

/// Says which bench namespaces an earlier, killed run left behind (they may belong to a run
/// that is still going, so they are not deleted here).
pub async fn warn_about_leftovers(client: &Client, bench: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let selector = format!("{BENCH_LABEL}={bench}");
    if let Ok(list) = namespaces
        .list_metadata(&ListParams::default().labels(&selector))
        .await
    {
        let names: Vec<String> = list.items.iter().map(|n| n.name_any()).collect();
        if !names.is_empty() {
            eprintln!(
                "note: namespaces from another or an interrupted bench run exist: {} \
                 (kubectl delete ns -l {selector})",
                names.join(" ")
            );
        }
    }
}

/// The operator under test as a process, scoped to one namespace, with its `/metrics`.
pub struct Operator {
    /// Killed when dropped.
    child: tokio::process::Child,
    port: u16,
    log: PathBuf,
}

impl Operator {
    pub async fn start(
        kubeconfig: &Path,
        namespace: &str,
        mode: ReadMode,
        log: PathBuf,
    ) -> BenchResult<Self> {
        Self::start_with(kubeconfig, namespace, mode, log, &[]).await
    }

    /// [`Operator::start`] with more flags.
    pub async fn start_with(
        kubeconfig: &Path,
        namespace: &str,
        mode: ReadMode,
        log: PathBuf,
        flags: &[String],
    ) -> BenchResult<Self> {
        let binary = crate::binary("asyncpool-operator");
        Self::start_binary(&binary, kubeconfig, namespace, mode, log, flags).await
    }

    /// [`Operator::start_with`] from another build of the operator (a benchmark that compares
    /// two builds side by side on one fleet).
    pub async fn start_binary(
        binary: &Path,
        kubeconfig: &Path,
        namespace: &str,
        mode: ReadMode,
        log: PathBuf,
        flags: &[String],
    ) -> BenchResult<Self> {
        let port = crate::free_loopback_port()?;
        let file = std::fs::File::create(&log)?;
        let mut command = tokio::process::Command::new(binary);
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
            .args(flags)
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
        crate::http::get(
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

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
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
    /// How many series of `name` have labels that contain `labels`.
    pub fn series(&self, name: &str, labels: &str) -> usize {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once('{'))
            .filter(|(metric, rest)| *metric == name && rest.contains(labels))
            .count()
    }

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

    /// The cumulative bucket counts of histogram `name` (without `_bucket`) whose labels
    /// contain `labels`, by upper bound, ascending (`+Inf` last).
    fn buckets(&self, name: &str, labels: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, rest) = series.split_once('{')?;
                if metric != bucket || !rest.contains(labels) {
                    return None;
                }
                let le = rest.split_once("le=\"")?.1.split_once('"')?.0;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, value.parse().ok()?))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }

    /// What histogram `name` observed between `before` and `self`.
    pub fn histogram_since(&self, before: &Metrics, name: &str, labels: &str) -> Observed {
        let earlier = before.buckets(name, labels);
        Observed(
            self.buckets(name, labels)
                .into_iter()
                .map(|(le, count)| {
                    let then = earlier
                        .iter()
                        .find(|(bound, _)| *bound == le)
                        .map_or(0.0, |(_, c)| *c);
                    (le, count - then)
                })
                .collect(),
        )
    }
}

/// A histogram's observations over a stretch of time: cumulative counts by upper bound,
/// ascending, `+Inf` last.
#[derive(Debug, Clone, Default)]
pub struct Observed(Vec<(f64, f64)>);

impl Observed {
    /// Adds another stretch's observations of the same histogram.
    pub fn add(&mut self, other: &Observed) {
        if self.0.is_empty() {
            self.0 = other.0.clone();
            return;
        }
        for (bucket, (_, count)) in self.0.iter_mut().zip(&other.0) {
            bucket.1 += count;
        }
    }

    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, count)| *count)
    }

    /// Quantile `q` (0..=1), interpolated within its bucket as Prometheus'
    /// `histogram_quantile` does (the highest finite bound when it falls past it); `None`
    /// without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, count) in &self.0 {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let within = count - below;
                let share = if within > 0.0 {
                    (rank - below) / within
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * share);
            }
            (lower, below) = (le, count);
        }
        Some(lower)
    }
}

/// A pool of the benchmarks that time reactions: between `min` and `max` workers of 10
/// concurrent requests, each targeted at 10, read from sidecars in `report` mode, with the
/// shortest windows the API allows (a 1 s panic window makes a step in the load a decision at
/// the next reconcile, so what is measured is the pipeline, not the smoothing).
pub fn reaction_pool(
    name: &str,
    min: i32,
    max: i32,
) -> BenchResult<asyncpool::crd::AsyncWorkerPool> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "asyncpool.dev/v1alpha1",
        "kind": "AsyncWorkerPool",
        "metadata": {"name": name},
        "spec": {
            "minReplicas": min,
            "maxReplicas": max,
            "concurrency": 10,
            "queue": {"source": "report", "targetPerWorker": 10},
            "scaling": {
                "tolerancePercent": 0,
                "panicWindow": "1s",
                "stableWindow": "4s",
                "scaleDownDelay": "3s",
                "metricsTimeout": "2s"
            },
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}
            }
        }
    }))?)
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    fn histogram(counts: [u64; 4]) -> Metrics {
        let bounds = ["0.01", "0.1", "1.0", "+Inf"];
        let mut text = String::from("# TYPE x histogram\n");
        for (le, count) in bounds.iter().zip(counts) {
            text.push_str(&format!("x_bucket{{stage=\"a\",le=\"{le}\"}} {count}\n"));
            text.push_str(&format!("x_bucket{{stage=\"b\",le=\"{le}\"}} 1000\n"));
        }
        Metrics(text)
    }

    #[test]
    fn quantiles_come_from_what_was_observed_between_two_scrapes() {
        let before = histogram([5, 5, 5, 5]);
        // Since then: 10 under 10 ms, 10 between 10 and 100 ms, none later.
        let after = histogram([15, 25, 25, 25]);
        let observed = after.histogram_since(&before, "x", "stage=\"a\"");
        assert_eq!(observed.count(), 20.0);
        assert_eq!(observed.quantile(0.5), Some(0.01));
        let p75 = observed.quantile(0.75).unwrap();
        assert!((p75 - 0.055).abs() < 1e-9, "{p75}");
        let none = before.histogram_since(&before, "x", "stage=\"a\"");
        assert_eq!(none.quantile(0.5), None);
        // Two stretches add up.
        let mut both = observed.clone();
        both.add(&observed);
        assert_eq!(both.count(), 40.0);
        assert_eq!(both.quantile(0.5), Some(0.01));
    }

    #[test]
    fn a_quantile_past_the_last_bound_is_that_bound() {
        let before = histogram([0, 0, 0, 0]);
        let after = histogram([0, 0, 1, 4]);
        let observed = after.histogram_since(&before, "x", "stage=\"a\"");
        assert_eq!(observed.quantile(0.99), Some(1.0));
    }
}
