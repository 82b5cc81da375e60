//! Real sidecar processes for the kwok pods of a pool: the harness starts
//! `asyncpool-sidecar --source report` on each Running pod's 127.x IP (where the operator reads
//! it, as it would in a real cluster), stops it when the pod goes, and spreads a total load the
//! test chooses across the live sidecars through their report endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the harness runs on each pod's IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetMode {
    /// Real sidecars.
    Sidecars,
    /// Nothing listens: reads time out or are refused.
    Silent,
    /// A server on the admin port that answers every request with a 200 and garbage.
    Garbage,
}

enum Worker {
    Sidecar(Child),
    Garbage(JoinHandle<()>),
}

impl Drop for Worker {
    fn drop(&mut self) {
        match self {
            Worker::Sidecar(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Worker::Garbage(task) => task.abort(),
        }
    }
}

struct State {
    mode: FleetMode,
    total_load: u64,
    /// pod name → (ip, what runs there, load last reported to it)
    workers: HashMap<String, (String, Worker, Option<u64>)>,
}

pub struct Fleet {
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

const ADMIN_PORT: u16 = 9090;

impl Fleet {
    /// Starts following the pods of `pool` in `namespace`.
    pub fn start(client: &Client, namespace: &str, pool: &str) -> Self {
        let state = Arc::new(Mutex::new(State {
            mode: FleetMode::Sidecars,
            total_load: 0,
            workers: HashMap::new(),
        }));
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let selector = format!("asyncpool.dev/pool={pool}");
        let task = tokio::spawn(follow(pods, selector, state.clone()));
        Self { state, task }
    }

    /// Sets the pool's total load (queued + in flight), spread evenly over the live sidecars.
    pub fn set_total_load(&self, load: u64) {
        self.state.lock().unwrap().total_load = load;
    }

    pub fn set_mode(&self, mode: FleetMode) {
        let mut state = self.state.lock().unwrap();
        if state.mode != mode {
            state.mode = mode;
            state.workers.clear();
        }
    }

    /// Pods with a sidecar (or stand-in) running and reported to.
    pub fn live(&self) -> usize {
        let state = self.state.lock().unwrap();
        state
            .workers
            .values()
            .filter(|(_, _, reported)| reported.is_some() || state.mode != FleetMode::Sidecars)
            .count()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(mut state) = self.state.lock() {
            state.workers.clear();
        }
    }
}

fn spawn_sidecar(ip: &str) -> std::io::Result<Child> {
    Command::new(env!("CARGO_BIN_EXE_asyncpool-sidecar"))
        .args([
            "--source",
            "report",
            "--listen",
            &format!("{ip}:8080"),
            "--admin-listen",
            &format!("{ip}:{ADMIN_PORT}"),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

async fn serve_garbage(ip: String) -> Option<JoinHandle<()>> {
    let listener = TcpListener::bind((ip.as_str(), ADMIN_PORT)).await.ok()?;
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

/// One `POST /report` with a raw HTTP/1.1 exchange; true on a 200.
pub async fn report(ip: &str, queued: u64, in_flight: u64) -> bool {
    let address: SocketAddr = match format!("{ip}:{ADMIN_PORT}").parse() {
        Ok(a) => a,
        Err(_) => return false,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        let body = format!("{{\"queued\": {queued}, \"inFlight\": {in_flight}}}");
        let request = format!(
            "POST /report HTTP/1.1\r\nhost: {ip}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        Some(answer.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn follow(pods: Api<Pod>, selector: String, state: Arc<Mutex<State>>) {
    loop {
        if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
            let running: HashMap<String, String> = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter_map(|p| Some((p.name_any(), p.status.as_ref()?.pod_ip.clone()?)))
                .collect();
            reconcile_workers(&state, &running).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn reconcile_workers(state: &Arc<Mutex<State>>, running: &HashMap<String, String>) {
    // Stop workers whose pod is gone or moved, before anything binds that IP again.
    let (mode, missing) = {
        let mut s = state.lock().unwrap();
        s.workers
            .retain(|name, (ip, _, _)| running.get(name) == Some(ip));
        let missing: Vec<(String, String)> = running
            .iter()
            .filter(|(name, _)| !s.workers.contains_key(*name))
            .map(|(n, ip)| (n.clone(), ip.clone()))
            .collect();
        (s.mode, missing)
    };
    for (name, ip) in missing {
        let worker = match mode {
            FleetMode::Sidecars => spawn_sidecar(&ip).ok().map(Worker::Sidecar),
            FleetMode::Garbage => serve_garbage(ip.clone()).await.map(Worker::Garbage),
            FleetMode::Silent => None,
        };
        if let Some(worker) = worker {
            state
                .lock()
                .unwrap()
                .workers
                .insert(name, (ip, worker, None));
        }
    }
    if mode != FleetMode::Sidecars {
        return;
    }
    // Spread the total load evenly; the first pods in name order take the remainder.
    let (targets, total) = {
        let s = state.lock().unwrap();
        let mut names: Vec<(String, String, Option<u64>)> = s
            .workers
            .iter()
            .map(|(n, (ip, _, last))| (n.clone(), ip.clone(), *last))
            .collect();
        names.sort();
        (names, s.total_load)
    };
    let count = targets.len() as u64;
    for (index, (name, ip, last)) in targets.into_iter().enumerate() {
        // `count` is at least 1 inside this loop.
        let share = total / count + u64::from((index as u64) < total % count);
        if last == Some(share) {
            continue;
        }
        // Split a share into in-flight work (up to 10) and a queue, as a real worker would hold it.
        let in_flight = share.min(10);
        if report(&ip, share - in_flight, in_flight).await
            && let Some(entry) = state.lock().unwrap().workers.get_mut(&name)
        {
            entry.2 = Some(share);
        }
    }
}
