//! The live demo on the local cluster (run by scripts/demo): real uvicorn workers behind real
//! sidecars on the kwok pods of a pool (or, with `--service`, the pool's own pods on real nodes,
//! reached through its Service), a load generator that sends LLM-style requests (each waits
//! ~1 s) in phases, and a terminal view of the pool scaling up under the burst and back down
//! after it.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncpool::crd::AsyncWorkerPool;
use asyncpool_contract::pod::{ADMIN_PORT, POOL_LABEL, SERVE_PORT};
use asyncpool_contract::queue::QueueSnapshot;
use asyncpool_testkit::fleet::{Fleet, FleetConfig, WorkerKind};
use asyncpool_testkit::http;
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "asyncpool-demo",
    about = "Drive a pool on the local cluster and watch it scale"
)]
struct Args {
    /// Namespace of the pool.
    #[arg(long, default_value = "asyncpool-demo")]
    namespace: String,
    /// Name of the pool.
    #[arg(long, default_value = "chat")]
    pool: String,
    /// The pool's pods run for real (real nodes): send the load through the pool's Service and
    /// start no workers here.
    #[arg(long)]
    service: bool,
    /// Python with uvicorn installed (scripts/test-deps prints it); for workers started here.
    #[arg(long, env = "ASYNCPOOL_PYTHON", required_unless_present = "service")]
    python: Option<PathBuf>,
    /// Directory of the demo app (tests/apps); for workers started here.
    #[arg(long, required_unless_present = "service")]
    app_dir: Option<PathBuf>,
    /// The sidecar binary; for workers started here.
    #[arg(long, required_unless_present = "service")]
    sidecar: Option<PathBuf>,
    /// Seconds one request spends in the app (an LLM call, say).
    #[arg(long, default_value_t = 1.0)]
    request_seconds: f64,
    /// Multiplies every phase's length.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Where worker logs go.
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

/// One stretch of the load pattern.
struct Phase {
    name: &'static str,
    seconds: f64,
    requests_per_second: f64,
}

const PHASES: [Phase; 4] = [
    Phase {
        name: "warm-up",
        seconds: 10.0,
        requests_per_second: 5.0,
    },
    Phase {
        name: "busy",
        seconds: 30.0,
        requests_per_second: 20.0,
    },
    Phase {
        name: "burst",
        seconds: 30.0,
        requests_per_second: 60.0,
    },
    Phase {
        name: "calm",
        seconds: 50.0,
        requests_per_second: 2.0,
    },
];

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    latencies: Mutex<Vec<f64>>,
}

impl Tally {
    fn take(&self) -> (u64, u64, u64, u64, Vec<f64>) {
        let mut latencies =
            std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|e| e.into_inner()));
        latencies.sort_by(f64::total_cmp);
        (
            self.sent.swap(0, Ordering::Relaxed),
            self.ok.swap(0, Ordering::Relaxed),
            self.rejected.swap(0, Ordering::Relaxed),
            self.failed.swap(0, Ordering::Relaxed),
            latencies,
        )
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get(((last as f64) * p).round() as usize).copied()
}

/// Where the workers are: processes started here on kwok pods' addresses, or the pool's own pods
/// on real nodes behind its Service.
enum Workers {
    Local {
        fleet: Fleet,
        known: HashSet<SocketAddr>,
    },
    Real {
        client: kube::Client,
        namespace: String,
        pool: String,
        service: Option<SocketAddr>,
    },
}

impl Workers {
    /// Where the load goes, and the serving addresses of the workers that take it.
    async fn targets(&mut self) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        match self {
            Workers::Local { fleet, known } => {
                let ready = ready_endpoints(fleet, known).await;
                (ready.clone(), ready)
            }
            Workers::Real {
                client,
                namespace,
                pool,
                service,
            } => {
                let serving = ready_pods(&Api::namespaced(client.clone(), namespace), pool).await;
                // kube-proxy balances: one target, once the Service answers.
                if service.is_none()
                    && let Some(address) =
                        asyncpool_testkit::real_node::service_address(client, namespace, pool).await
                    && matches!(http::get(address, "/hello").await, Some((200, _)))
                {
                    *service = Some(address);
                }
                (service.iter().copied().collect(), serving)
            }
        }
    }
}

/// The serving addresses of the pool's Ready pods that are not on their way out.
async fn ready_pods(pods: &Api<Pod>, pool: &str) -> Vec<SocketAddr> {
    let Ok(list) = pods
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={pool}")))
        .await
    else {
        return Vec::new();
    };
    let mut ready: Vec<SocketAddr> = list
        .items
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| asyncpool_testkit::real_node::pod_ready(pod))
        .filter_map(|pod| pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
        .map(|ip| SocketAddr::new(ip, SERVE_PORT))
        .collect();
    ready.sort();
    ready
}

/// Endpoints whose app answers through the sidecar; the load goes only there, as a Service's
/// endpoints would hold only ready pods.
async fn ready_endpoints(fleet: &Fleet, known: &mut HashSet<SocketAddr>) -> Vec<SocketAddr> {
    let current: Vec<SocketAddr> = fleet.endpoints().into_iter().map(|(_, a)| a).collect();
    known.retain(|a| current.contains(a));
    for address in &current {
        if !known.contains(address) && matches!(http::get(*address, "/hello").await, Some((200, _)))
        {
            known.insert(*address);
        }
    }
    let mut ready: Vec<SocketAddr> = known.iter().copied().collect();
    ready.sort();
    ready
}

async fn pool_load(endpoints: &[SocketAddr]) -> (u64, u64) {
    let mut queued = 0;
    let mut in_flight = 0;
    for endpoint in endpoints {
        let admin = SocketAddr::new(endpoint.ip(), ADMIN_PORT);
        if let Some((200, body)) = http::get(admin, "/queue").await
            && let Ok(snapshot) = QueueSnapshot::parse(body.as_bytes())
        {
            queued += snapshot.queued;
            in_flight += snapshot.in_flight;
        }
    }
    (queued, in_flight)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = kube::Client::try_default().await?;
    let mut workers = match (&args.python, &args.app_dir, &args.sidecar) {
        (Some(python), Some(app_dir), Some(sidecar)) if !args.service => {
            let app_dir = app_dir.canonicalize()?;
            let config = FleetConfig {
                sidecar_binary: sidecar.clone(),
                kind: WorkerKind::slow_app(&python.display().to_string(), &app_dir, 10),
                log_dir: args.log_dir.clone(),
            };
            Workers::Local {
                fleet: Fleet::start(&client, &args.namespace, &args.pool, config),
                known: HashSet::new(),
            }
        }
        _ => Workers::Real {
            client: client.clone(),
            namespace: args.namespace.clone(),
            pool: args.pool.clone(),
            service: None,
        },
    };
    let pools: Api<AsyncWorkerPool> = Api::namespaced(client.clone(), &args.namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &args.namespace);
    let tally = Arc::new(Tally::default());
    let path = format!("/sleep?s={}", args.request_seconds);
    let tty = std::io::stdout().is_terminal();
    let mut history: Vec<i32> = Vec::new();
    let started = Instant::now();
    let mut next_request = Instant::now();
    let mut next_frame = Instant::now();
    let mut sent_total = 0u64;

    for phase in &PHASES {
        let phase_end = Instant::now() + Duration::from_secs_f64(phase.seconds * args.time_scale);
        let gap = Duration::from_secs_f64(1.0 / phase.requests_per_second);
        let (mut endpoints, _) = workers.targets().await;
        while Instant::now() < phase_end {
            // Open loop: requests leave on schedule whether or not earlier ones came back.
            while next_request <= Instant::now() {
                next_request += gap;
                if endpoints.is_empty() {
                    continue;
                }
                let target = endpoints[(sent_total as usize) % endpoints.len()];
                sent_total += 1;
                let tally = tally.clone();
                let path = path.clone();
                tally.sent.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let begun = Instant::now();
                    match http::exchange(target, "GET", &path, None, Duration::from_secs(60)).await
                    {
                        Some((200, _)) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            tally
                                .latencies
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(begun.elapsed().as_secs_f64());
                        }
                        Some((503, _)) => {
                            tally.rejected.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            if Instant::now() >= next_frame {
                next_frame += Duration::from_secs(1);
                let (targets, serving) = workers.targets().await;
                endpoints = targets;
                let (queued, in_flight) = pool_load(&serving).await;
                let replicas = deployments
                    .get_opt(&args.pool)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|d| d.spec?.replicas)
                    .unwrap_or(0);
                let status = pools
                    .get_opt(&args.pool)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|p| p.status)
                    .unwrap_or_default();
                let scaling = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Scaling")
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                history.push(replicas);
                let (sent, ok, rejected, failed, latencies) = tally.take();
                let p50 = percentile(&latencies, 0.5).map_or("-".into(), |v| format!("{v:.2}s"));
                let p95 = percentile(&latencies, 0.95).map_or("-".into(), |v| format!("{v:.2}s"));
                let spark: String = history
                    .iter()
                    .rev()
                    .take(60)
                    .rev()
                    .map(|r| {
                        ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█']
                            [(*r as usize).saturating_sub(1).min(7)]
                    })
                    .collect();
                let elapsed = started.elapsed().as_secs();
                let lines = [
                    format!(
                        "asyncpool demo: pool {}/{}   t={elapsed:>3}s   phase {} ({} req/s of {}s each)",
                        args.namespace,
                        args.pool,
                        phase.name,
                        phase.requests_per_second,
                        args.request_seconds
                    ),
                    format!(
                        "  workers   replicas {replicas}   ready {}   serving {}",
                        status.ready_replicas,
                        serving.len()
                    ),
                    format!(
                        "  load      {} = {queued} queued + {in_flight} in flight",
                        queued + in_flight
                    ),
                    format!(
                        "  requests  {sent} sent, {ok} ok, {rejected} rejected (503), {failed} failed; latency p50 {p50} p95 {p95}"
                    ),
                    format!("  replicas  {spark}"),
                    format!("  decision  {scaling}"),
                ];
                if tty {
                    println!("\x1b[2J\x1b[H{}", lines.join("\n"));
                } else {
                    println!(
                        "t={elapsed:>3}s {:<8} replicas={replicas} ready={} load={} ok={ok} 503={rejected} p50={p50} | {scaling}",
                        phase.name,
                        status.ready_replicas,
                        queued + in_flight
                    );
                }
                std::io::stdout().flush()?;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    println!(
        "demo finished: the pool grew for the burst and shrank after it ({} frames)",
        history.len()
    );
    Ok(())
}
