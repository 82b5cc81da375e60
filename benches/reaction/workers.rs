//! The worker side: a sidecar process in `report` mode on each kwok pod's 127.x address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use asyncpool_contract::pod::{ADMIN_PORT, POOL_LABEL, SERVE_PORT};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::sleep;

/// Reports `load` to the sidecar on `ip` as a real worker would hold it (up to 10 in flight,
/// the rest queued); true when the sidecar took it.
pub async fn report_load(ip: IpAddr, load: u64) -> bool {
    let in_flight = load.min(10);
    let body = format!(
        "{{\"queued\": {}, \"inFlight\": {in_flight}}}",
        load - in_flight
    );
    matches!(
        asyncpool_testkit::http::post_json(
            std::net::SocketAddr::new(ip, ADMIN_PORT),
            "/report",
            body
        )
        .await,
        Some((200, _))
    )
}

struct Worker {
    pool: String,
    ip: IpAddr,
    /// Killed when dropped.
    child: tokio::process::Child,
    /// Set once the sidecar took its first report: from then on it reports a load.
    alive: Arc<AtomicBool>,
    first_report: AbortHandle,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A late first report must not land on a sidecar that a new pod started on this address.
        self.first_report.abort();
    }
}

#[derive(Default)]
struct WorkerState {
    workers: HashMap<String, Worker>,
    /// Pods of each pool that are not being deleted, whatever their phase.
    pods: HashMap<String, usize>,
}

/// A sidecar in `report` mode for every Running pod of the namespace's pools, started on the
/// pod's address and stopped when the pod goes.
pub struct Workers {
    state: Arc<Mutex<WorkerState>>,
    task: JoinHandle<()>,
}

impl Workers {
    pub fn start(client: &Client, namespace: &str, sidecar: PathBuf, logs: PathBuf) -> Self {
        let state = Arc::new(Mutex::new(WorkerState::default()));
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let task = tokio::spawn(follow_pods(pods, sidecar, logs, state.clone()));
        Self { state, task }
    }

    fn lock(&self) -> MutexGuard<'_, WorkerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Addresses of the pool's sidecars that take reports.
    pub fn reporting(&self, pool: &str) -> Vec<IpAddr> {
        self.lock()
            .workers
            .values()
            .filter(|w| w.pool == pool && w.alive.load(Ordering::SeqCst))
            .map(|w| w.ip)
            .collect()
    }

    /// The pool's pods that are not being deleted.
    pub fn pods(&self, pool: &str) -> usize {
        self.lock().pods.get(pool).copied().unwrap_or(0)
    }

    /// Reports `load` to each of the pool's sidecars; true when all took it.
    pub async fn report_all(&self, pool: &str, load: u64) -> bool {
        let mut all = true;
        for ip in self.reporting(pool) {
            all &= report_load(ip, load).await;
        }
        all
    }

    /// Sidecar processes running.
    pub fn process_count(&self) -> usize {
        self.lock().workers.len()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.task.abort();
        self.lock().workers.clear();
    }
}

async fn follow_pods(
    pods: Api<Pod>,
    sidecar: PathBuf,
    logs: PathBuf,
    state: Arc<Mutex<WorkerState>>,
) {
    let (store, writer) = reflector::store();
    let events = watcher(pods, watcher::Config::default().labels(POOL_LABEL))
        .default_backoff()
        .reflect(writer);
    let mut events = pin!(events);
    // Also on a timer, to restart a sidecar that exited (e.g. its address was still in use).
    let mut every = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            event = events.next() => if event.is_none() { return },
            _ = every.tick() => {}
        }
        sync_workers(&store, &sidecar, &logs, &state);
    }
}

fn sync_workers(store: &Store<Pod>, sidecar: &Path, logs: &Path, state: &Mutex<WorkerState>) {
    let mut running: HashMap<String, (String, IpAddr)> = HashMap::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for pod in store.state() {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(pool) = pod.labels().get(POOL_LABEL).cloned() else {
            continue;
        };
        *counts.entry(pool.clone()).or_default() += 1;
        let status = pod.status.as_ref();
        let ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        if let (Some(ip), Some("Running")) = (ip, status.and_then(|s| s.phase.as_deref())) {
            running.insert(pod.name_any(), (pool, ip));
        }
    }
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    state.pods = counts;
    // Dropping a worker kills its process, before anything binds that address again.
    state.workers.retain(|name, worker| {
        running.get(name).is_some_and(|(_, ip)| *ip == worker.ip)
            && matches!(worker.child.try_wait(), Ok(None))
    });
    for (name, (pool, ip)) in running {
        if state.workers.contains_key(&name) {
            continue;
        }
        match spawn_sidecar(sidecar, logs, &name, ip) {
            Ok(child) => {
                let alive = Arc::new(AtomicBool::new(false));
                let first_report = tokio::spawn({
                    let alive = alive.clone();
                    async move {
                        // Until the first report, the sidecar answers "no report yet": missing
                        // data, which the operator never reads as zero.
                        loop {
                            if report_load(ip, 0).await {
                                alive.store(true, Ordering::SeqCst);
                                return;
                            }
                            sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
                .abort_handle();
                state.workers.insert(
                    name,
                    Worker {
                        pool,
                        ip,
                        child,
                        alive,
                        first_report,
                    },
                );
            }
            Err(error) => eprintln!("could not start a sidecar for {name}: {error}"),
        }
    }
}

fn spawn_sidecar(
    sidecar: &Path,
    logs: &Path,
    pod: &str,
    ip: IpAddr,
) -> std::io::Result<tokio::process::Child> {
    let log = std::fs::File::create(logs.join(format!("{pod}-sidecar.log")))?;
    tokio::process::Command::new(sidecar)
        .args(["--listen", &format!("{ip}:{SERVE_PORT}")])
        .args(["--admin-listen", &format!("{ip}:{ADMIN_PORT}")])
        .args(["--source", "report"])
        .env("ASYNCPOOL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
}

/// Whether a TCP connection to the sidecar's admin port on `ip` is established. In watch mode
/// that is the operator's watch stream (polls and reports are short-lived connections), so a
/// pod without one is being polled: the operator falls back to polling a pod whose sidecar did
/// not answer its first watch request, and retries the watch only 10 poll intervals later.
pub fn watch_stream_open(ip: IpAddr) -> bool {
    let IpAddr::V4(v4) = ip else {
        return false;
    };
    // /proc/net/tcp prints the address as the in-memory (network order) u32 in hex.
    let local = format!("{:08X}:{ADMIN_PORT:04X}", u32::from_ne_bytes(v4.octets()));
    const ESTABLISHED: &str = "01";
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|table| {
        table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&ESTABLISHED)
        })
    })
}
