//! The worker side of a pool on the local cluster: for each Running kwok pod of a pool, real
//! processes listen on the pod's 127.x address, exactly where the operator reads them and where
//! a Service would send traffic. Either a sidecar in `report` mode whose load the caller sets,
//! a sidecar in `redis` mode reading the caller's Redis list, or a sidecar in `proxy` mode in
//! front of a real app process. Workers stop when their pod goes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::http;
use asyncpool_contract::pod::{ADMIN_PORT, POOL_LABEL, SERVE_PORT};

/// What runs for each pod.
#[derive(Debug, Clone)]
pub enum WorkerKind {
    /// A sidecar with `--source report`; the fleet reports the load the caller sets.
    Report,
    /// A sidecar with `--source redis` reading the list `key` at `url`; the load is whatever
    /// the caller puts in that list.
    Redis { url: String, key: String },
    /// A sidecar with `--source proxy` in front of an app started from `app`, where `{ip}` and
    /// `{port}` stand for the pod address and the app port.
    Proxy {
        app: Vec<String>,
        app_port: u16,
        concurrency: u32,
    },
}

impl WorkerKind {
    /// The demo's app (`tests/apps/slow_app.py` in `app_dir`) under uvicorn, behind a proxy
    /// sidecar: each request holds a slot for as long as its query asks.
    pub fn slow_app(python: &str, app_dir: &std::path::Path, concurrency: u32) -> Self {
        let app = [
            python,
            "-m",
            "uvicorn",
            "slow_app:app",
            "--app-dir",
            &app_dir.display().to_string(),
            "--host",
            "{ip}",
            "--port",
            "{port}",
            "--log-level",
            "warning",
        ];
        WorkerKind::Proxy {
            app: app.iter().map(|arg| (*arg).to_owned()).collect(),
            app_port: 8000,
            concurrency,
        }
    }
}

/// How the fleet is set up.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub sidecar_binary: PathBuf,
    pub kind: WorkerKind,
    /// Where worker output goes; discarded when `None`.
    pub log_dir: Option<PathBuf>,
}

/// What the fleet currently runs on the pods' addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetMode {
    /// Real workers.
    Workers,
    /// Nothing listens: reads are refused.
    Silent,
    /// A server on the admin port that answers every request with a 200 and garbage.
    Garbage,
}

enum Running {
    Processes(Vec<Child>),
    Garbage(JoinHandle<()>),
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            Running::Processes(children) => {
                for child in children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            Running::Garbage(task) => task.abort(),
        }
    }
}

struct Worker {
    ip: IpAddr,
    running: Running,
    /// What this worker's sidecar last accepted (report mode).
    reported: Option<Counters>,
}

/// A worker's figures as its app would count them: the current load and monotonic totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counters {
    load: u64,
    arrived: u64,
    completed: u64,
}

impl Counters {
    /// The figures after the load moves to `load` and at least `completed_floor` requests are done:
    /// a rise arrives, a fall completes, and a raised floor completes (and so arrived) the rest.
    fn next(self, load: u64, completed_floor: u64) -> Self {
        let mut next = self;
        if load > self.load {
            next.arrived += load - self.load;
        } else {
            next.completed += self.load - load;
        }
        if completed_floor > next.completed {
            next.arrived += completed_floor - next.completed;
            next.completed = completed_floor;
        }
        next.load = load;
        next
    }
}

struct State {
    mode: FleetMode,
    total_load: u64,
    /// Per-pod loads that replace the even spread for those pods.
    overrides: HashMap<String, u64>,
    /// Per-pod completed-requests totals to report (the app's own counters).
    completed: HashMap<String, u64>,
    workers: HashMap<String, Worker>,
    /// Workers of deleted pods stopping gracefully: their sidecar got SIGTERM and drains.
    stopping: HashMap<String, Worker>,
}

/// Workers for one pool, kept in step with its pods by a background task.
pub struct Fleet {
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Fleet {
    /// Starts following the pods of `pool` in `namespace`.
    pub fn start(client: &Client, namespace: &str, pool: &str, config: FleetConfig) -> Self {
        let state = Arc::new(Mutex::new(State {
            mode: FleetMode::Workers,
            total_load: 0,
            overrides: HashMap::new(),
            completed: HashMap::new(),
            workers: HashMap::new(),
            stopping: HashMap::new(),
        }));
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let selector = format!("{POOL_LABEL}={pool}");
        let task = tokio::spawn(follow(pods, selector, config, state.clone()));
        Self { state, task }
    }

    /// Sets the pool's total load (queued + in flight), spread evenly over the pods without an
    /// override (report mode).
    pub fn set_total_load(&self, load: u64) {
        lock(&self.state).total_load = load;
    }

    /// Gives one pod a load of its own, or returns it to the even spread (report mode).
    pub fn set_pod_load(&self, pod: &str, load: Option<u64>) {
        let mut state = lock(&self.state);
        match load {
            Some(load) => state.overrides.insert(pod.to_owned(), load),
            None => state.overrides.remove(pod),
        };
    }

    /// Makes one pod's sidecar report that its app completed `total` requests so far.
    pub fn set_pod_completed(&self, pod: &str, total: u64) {
        lock(&self.state).completed.insert(pod.to_owned(), total);
    }

    pub fn set_mode(&self, mode: FleetMode) {
        let mut state = lock(&self.state);
        if state.mode != mode {
            state.mode = mode;
            state.workers.clear();
            state.stopping.clear();
        }
    }

    /// Serving addresses of the running workers, by pod name.
    pub fn endpoints(&self) -> Vec<(String, SocketAddr)> {
        let state = lock(&self.state);
        let mut endpoints: Vec<(String, SocketAddr)> = state
            .workers
            .iter()
            .map(|(name, w)| (name.clone(), SocketAddr::new(w.ip, SERVE_PORT)))
            .collect();
        endpoints.sort();
        endpoints
    }

    /// How many pods have a worker running (and, in report mode, reported to).
    pub fn live(&self) -> usize {
        let state = lock(&self.state);
        state
            .workers
            .values()
            .filter(|w| w.reported.is_some() || !matches!(w.running, Running::Processes(_)))
            .count()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.task.abort();
        let mut state = lock(&self.state);
        state.workers.clear();
        state.stopping.clear();
    }
}

fn output(config: &FleetConfig, name: &str) -> (Stdio, Stdio) {
    let file = config
        .log_dir
        .as_ref()
        .and_then(|dir| std::fs::File::create(dir.join(format!("{name}.log"))).ok());
    match file.and_then(|f| Some((f.try_clone().ok()?, f))) {
        Some((out, err)) => (Stdio::from(out), Stdio::from(err)),
        None => (Stdio::null(), Stdio::null()),
    }
}

fn spawn(config: &FleetConfig, pod: &str, ip: IpAddr) -> std::io::Result<Vec<Child>> {
    let serve = SocketAddr::new(ip, SERVE_PORT).to_string();
    let admin = SocketAddr::new(ip, ADMIN_PORT).to_string();
    let mut children = Vec::new();
    let mut sidecar = Command::new(&config.sidecar_binary);
    sidecar.args(["--listen", &serve, "--admin-listen", &admin]);
    match &config.kind {
        WorkerKind::Report => {
            sidecar.args(["--source", "report"]);
        }
        WorkerKind::Redis { url, key } => {
            sidecar.args(["--source", "redis", "--redis-url", url, "--redis-key", key]);
        }
        WorkerKind::Proxy {
            app,
            app_port,
            concurrency,
        } => {
            let fill = |arg: &String| {
                arg.replace("{ip}", &ip.to_string())
                    .replace("{port}", &app_port.to_string())
            };
            let Some((program, args)) = app.split_first() else {
                return Err(std::io::Error::other("empty app command"));
            };
            let (out, err) = output(config, &format!("{pod}-app"));
            children.push(
                Command::new(fill(program))
                    .args(args.iter().map(fill))
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err)
                    .spawn()?,
            );
            sidecar.args([
                "--source",
                "proxy",
                "--upstream",
                &SocketAddr::new(ip, *app_port).to_string(),
            ]);
            sidecar.args(["--concurrency", &concurrency.to_string()]);
        }
    }
    let (out, err) = output(config, &format!("{pod}-sidecar"));
    children.push(
        sidecar
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?,
    );
    Ok(children)
}

async fn serve_garbage(ip: IpAddr) -> Option<JoinHandle<()>> {
    let listener = TcpListener::bind((ip, ADMIN_PORT)).await.ok()?;
    Some(tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 2048];
                let _ = socket.read(&mut buffer).await;
                let body = "{\"version\": 1, \"queued\": \"many\"}";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    }))
}

/// Reports a worker's figures to the sidecar on `ip`: the load split into in-flight work (up to
/// 10) and a queue, as a real worker would hold it, and the app's own totals; true when the
/// sidecar took it.
async fn report(ip: IpAddr, counters: Counters) -> bool {
    let in_flight = counters.load.min(10);
    let body = format!(
        "{{\"queued\": {}, \"inFlight\": {in_flight}, \"arrivedTotal\": {}, \"completedTotal\": {}}}",
        counters.load - in_flight,
        counters.arrived,
        counters.completed
    );
    matches!(
        http::post_json(SocketAddr::new(ip, ADMIN_PORT), "/report", body).await,
        Some((200, _))
    )
}

async fn follow(pods: Api<Pod>, selector: String, config: FleetConfig, state: Arc<Mutex<State>>) {
    loop {
        if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
            let running: HashMap<String, IpAddr> = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter_map(|p| {
                    Some((
                        p.name_any(),
                        p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?,
                    ))
                })
                .collect();
            let graceful: Vec<String> = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_some())
                .filter(|p| p.annotations().contains_key(GRACEFUL_STOP))
                .map(|p| p.name_any())
                .collect();
            let listed: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
            for stopped in stop_gracefully(&state, &graceful, &listed) {
                // The drain is over: the pod goes now, as a kubelet reports it.
                let _ = pods
                    .delete(&stopped, &DeleteParams::default().grace_period(0))
                    .await;
            }
            reconcile_workers(&config, &state, &running).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pod with this annotation is stopped the way a kubelet stops it: SIGTERM to the sidecar,
/// the app kept until the sidecar has drained and exited, then the pod deleted. kwok (see
/// `scripts/cluster`) deletes such a pod only at the end of its termination grace period.
pub const GRACEFUL_STOP: &str = "asyncpool.dev/local-graceful-stop";

/// Moves the workers of `graceful` (deleted pods to stop gracefully) to stopping and signals
/// their sidecars; returns the pods whose sidecar has exited. Workers whose pod is no longer
/// `listed` are killed.
fn stop_gracefully(state: &Mutex<State>, graceful: &[String], listed: &[String]) -> Vec<String> {
    let mut s = lock(state);
    for name in graceful {
        if let Some(mut worker) = s.workers.remove(name) {
            if let Running::Processes(children) = &mut worker.running
                && let Some(sidecar) = children.last()
            {
                let _ = Command::new("kill")
                    .args(["-TERM", &sidecar.id().to_string()])
                    .status();
            }
            s.stopping.insert(name.clone(), worker);
        }
    }
    s.stopping.retain(|name, _| listed.contains(name));
    let mut done = Vec::new();
    s.stopping.retain(|name, worker| {
        let exited = match &mut worker.running {
            Running::Processes(children) => children
                .last_mut()
                .is_none_or(|sidecar| !matches!(sidecar.try_wait(), Ok(None))),
            Running::Garbage(_) => true,
        };
        if exited {
            done.push(name.clone());
        }
        !exited
    });
    done
}

async fn reconcile_workers(
    config: &FleetConfig,
    state: &Mutex<State>,
    running: &HashMap<String, IpAddr>,
) {
    // Stop workers whose pod is gone or moved, before anything binds that address again.
    let (mode, missing) = {
        let mut s = lock(state);
        s.workers.retain(|name, w| running.get(name) == Some(&w.ip));
        let missing: Vec<(String, IpAddr)> = running
            .iter()
            .filter(|(name, _)| !s.workers.contains_key(*name))
            .map(|(n, ip)| (n.clone(), *ip))
            .collect();
        (s.mode, missing)
    };
    for (name, ip) in missing {
        let running = match mode {
            FleetMode::Workers => spawn(config, &name, ip).ok().map(Running::Processes),
            FleetMode::Garbage => serve_garbage(ip).await.map(Running::Garbage),
            FleetMode::Silent => None,
        };
        if let Some(running) = running {
            lock(state).workers.insert(
                name,
                Worker {
                    ip,
                    running,
                    reported: None,
                },
            );
        }
    }
    if mode == FleetMode::Workers && matches!(config.kind, WorkerKind::Report) {
        spread_load(state).await;
    }
}

/// Reports each pod's share of the total (or its override) where its figures changed.
async fn spread_load(state: &Mutex<State>) {
    let updates: Vec<(String, IpAddr, Counters)> = {
        let s = lock(state);
        let mut names: Vec<&String> = s.workers.keys().collect();
        names.sort();
        let spread: Vec<&&String> = names
            .iter()
            .filter(|n| !s.overrides.contains_key(**n))
            .collect();
        let count = spread.len() as u64;
        let mut shares: HashMap<&String, u64> = HashMap::new();
        for (index, name) in spread.iter().enumerate() {
            // `count` is at least 1 inside this loop; the first pods take the remainder.
            let share = s.total_load / count + u64::from((index as u64) < s.total_load % count);
            shares.insert(name, share);
        }
        for (name, load) in &s.overrides {
            shares.insert(name, *load);
        }
        s.workers
            .iter()
            .filter_map(|(name, worker)| {
                let load = *shares.get(name)?;
                let last = worker.reported.unwrap_or_default();
                let next = last.next(load, s.completed.get(name).copied().unwrap_or(0));
                (worker.reported != Some(next)).then(|| (name.clone(), worker.ip, next))
            })
            .collect()
    };
    for (name, ip, counters) in updates {
        if report(ip, counters).await
            && let Some(worker) = lock(state).workers.get_mut(&name)
        {
            worker.reported = Some(counters);
        }
    }
}
