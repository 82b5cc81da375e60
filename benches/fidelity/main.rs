//! Fidelity of the simulator: one flash crowd replayed on the local cluster, through the real
//! operator, real sidecars and real uvicorn workers, and through the simulator with the same
//! pool, the same trace and the start-up delay the real pods took; then replicas over time from
//! both in one plot, and the queue wait and pod-seconds side by side.
//!
//! ```sh
//! benches/fidelity.sh                      # the default flash crowd, about six minutes
//! cargo bench --bench fidelity -- --shape 'step:base=3,peak=30,at=60s,for=90s,duration=4m' \
//!     --service lognormal:1s,0.3 --start-delay 5s --seed 1
//! ```
//!
//! The real side: the pool of `benches/fidelity/pool.yaml` whose pods kwok holds Pending for
//! `--start-delay` (annotation `asyncpool.dev/local-start-delay`), a fleet that runs uvicorn
//! (`tests/apps/slow_app.py`) behind the sidecar on each pod's address and stops a deleted pod
//! as a kubelet would (SIGTERM, drain, then delete; annotation
//! `asyncpool.dev/local-graceful-stop`), and a client that sends each request of the trace at
//! its time to a random serving pod, as kube-proxy would, asking the app to hold it for the
//! request's service time. A request's queue wait is its latency less its service time. The
//! Deployment's replicas and the pods' lives are sampled every 100 ms.
//!
//! Under `cargo test --all-targets` (which runs bench targets without `--bench`) it only says
//! how to run it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use asyncpool::crd::AsyncWorkerPool;
use asyncpool::manifest::load_pool;
use asyncpool::simulate::command::write_atomically;
use asyncpool::simulate::generate::Generator;
use asyncpool::simulate::plot::{Plot, Series, svg};
use asyncpool::simulate::report::{PLOT_BUCKETS, Waits, bucket_seconds};
use asyncpool::simulate::trace::Trace;
use asyncpool::simulate::world::StartupDelay;
use asyncpool::simulate::{Options, PolicyKind, compare};
use asyncpool_testkit::bench::{
    BenchResult, Namespaces, Operator, ReadMode, output_dir, poll_until,
};
use asyncpool_testkit::cluster::{install_crd, kubeconfig_path, try_client};
use asyncpool_testkit::fleet::{Fleet, FleetConfig, GRACEFUL_STOP, WorkerKind};
use asyncpool_testkit::http;
use asyncpool_testkit::repo_root;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use rand::Rng;
use tokio::time::Instant;

const POOL: &str = "benches/fidelity/pool.yaml";
const START_DELAY: &str = "asyncpool.dev/local-start-delay";

struct Args {
    shape: String,
    service: String,
    start_delay: String,
    seed: u64,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        shape: "step:base=3,peak=30,at=60s,for=90s,duration=4m".into(),
        service: "lognormal:1s,0.3".into(),
        start_delay: "5s".into(),
        seed: 1,
    };
    let mut bench = false;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--bench" => bench = true,
            "--shape" => parsed.shape = value("--shape")?,
            "--service" => parsed.service = value("--service")?,
            "--start-delay" => parsed.start_delay = value("--start-delay")?,
            "--seed" => {
                parsed.seed = value("--seed")?
                    .parse()
                    .map_err(|_| "--seed takes a number".to_owned())?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(bench.then_some(parsed))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("fidelity is a benchmark on the local cluster: benches/fidelity.sh");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("fidelity: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fidelity: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fidelity: {error}");
            ExitCode::FAILURE
        }
    }
}

/// What became of one request on the real cluster.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Answered 200 after this many seconds in total.
    Served(f64),
    Refused,
    Failed,
}

/// What the recorder saw, in seconds from the replay's start.
#[derive(Default)]
struct Recorded {
    replicas: Vec<(f64, u32)>,
    /// Pod name → (created, last seen).
    pods: BTreeMap<String, (f64, f64)>,
    /// Pod name → when it first served a request.
    serving_since: HashMap<String, f64>,
}

async fn run(args: &Args) -> BenchResult<()> {
    let kubeconfig = kubeconfig_path();
    let client = try_client(kubeconfig).await?;
    install_crd(&client).await;
    let python = std::env::var("ASYNCPOOL_PYTHON")
        .map_err(|_| "ASYNCPOOL_PYTHON is not set: eval \"$(scripts/test-deps)\" first")?;
    let namespaces = Namespaces::new("fidelity");
    let namespace = namespaces.create(&client, "fidelity").await?;
    let result = replay(args, &client, kubeconfig, &namespace, &python).await;
    namespaces.delete_all(&client).await;
    result
}

async fn replay(
    args: &Args,
    client: &Client,
    kubeconfig: &std::path::Path,
    namespace: &str,
    python: &str,
) -> BenchResult<()> {
    let dir = output_dir("fidelity");
    std::fs::create_dir_all(dir.join("workers"))?;
    let manifest = std::fs::read_to_string(repo_root().join(POOL))?;
    let mut pool: AsyncWorkerPool = load_pool(&manifest, None)?;
    let name = pool.name_any();
    let template = pool
        .spec
        .template
        .metadata
        .get_or_insert_with(Default::default);
    let annotations = template.annotations.get_or_insert_with(Default::default);
    annotations.insert(START_DELAY.into(), args.start_delay.clone());
    annotations.insert(GRACEFUL_STOP.into(), "true".into());
    let generator = Generator::parse(&args.shape, Some(&args.service))?;
    let trace = generator.generate(args.seed)?;

    let operator = Operator::start(
        kubeconfig,
        namespace,
        ReadMode::Watch,
        dir.join("operator.log"),
    )
    .await?;
    let pools: Api<AsyncWorkerPool> = Api::namespaced(client.clone(), namespace);
    pools.create(&PostParams::default(), &pool).await?;
    let app_dir = repo_root().join("tests/apps");
    let fleet = Arc::new(Fleet::start(
        client,
        namespace,
        &name,
        FleetConfig {
            sidecar_binary: asyncpool_testkit::binary("asyncpool-sidecar"),
            kind: WorkerKind::slow_app(python, &app_dir, u32::try_from(pool.spec.concurrency)?),
            log_dir: Some(dir.join("workers")),
        },
    ));
    println!(
        "fidelity: pool {namespace}/{name}, {} requests over {:.0} s, pods start in {}",
        trace.requests().len(),
        trace.end(),
        args.start_delay
    );
    // The replay starts once the first worker serves, as a pool at rest would.
    let serving = Arc::new(Mutex::new(HashSet::<SocketAddr>::new()));
    poll_until(
        "the first worker serves",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || {
            let fleet = fleet.clone();
            let serving = serving.clone();
            async move { refresh_serving(&fleet, &serving).await.then_some(()) }
        },
    )
    .await?;

    let started = Instant::now();
    let started_wall = SystemTime::now();
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let recorder = tokio::spawn(record(
        client.clone(),
        namespace.to_owned(),
        name.clone(),
        started,
        started_wall,
        fleet.clone(),
        serving.clone(),
        recorded.clone(),
    ));
    let outcomes = send(&trace, started, &serving).await;
    // Pod-seconds are counted over the simulator's span: the end of the trace's work, or the
    // last request's end, which is when `send` returns.
    recorder.abort();
    operator.stop().await;
    let recorded = std::mem::take(&mut *lock(&recorded));
    let horizon = trace
        .requests()
        .iter()
        .zip(&outcomes)
        .map(|(r, o)| match o {
            Outcome::Served(latency) => r.arrival + latency,
            _ => r.arrival,
        })
        .fold(trace.end(), f64::max);

    let startups: Vec<f64> = recorded
        .pods
        .iter()
        .filter(|(_, (created, _))| *created > 0.0)
        .filter_map(|(pod, (created, _))| Some(recorded.serving_since.get(pod)? - created))
        .collect();
    let startup = median(startups.clone()).unwrap_or(5.0);
    let options = Options {
        startup: StartupDelay::Fixed(startup),
        seed: args.seed,
        policies: vec![PolicyKind::Asyncpool],
        ..Options::default()
    };
    let simulated = compare(&pool, &trace, &options, &mut |_, _| {})?;
    let sim = &simulated.policies[0];

    let real = real_figures(&trace, &outcomes, &recorded, horizon);
    let mut report = String::new();
    let _ = writeln!(
        report,
        "# {} UTC; commit {}; {} cores",
        now_utc(),
        commit(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        report,
        "# cargo bench --bench fidelity -- --shape '{}' --service '{}' --start-delay {} --seed {}",
        args.shape, args.service, args.start_delay, args.seed
    );
    let _ = writeln!(
        report,
        "trace: {} requests, end of work {:.0} s; start-up measured on the real pods (creation → \
         first request served): median {:.2} s over {} pods (min {:.2}, max {:.2}); the \
         simulator ran with {:.2} s",
        trace.requests().len(),
        trace.end(),
        startup,
        startups.len(),
        startups.iter().copied().fold(f64::INFINITY, f64::min),
        startups.iter().copied().fold(0.0, f64::max),
        startup
    );
    let _ = writeln!(report);
    let _ = writeln!(
        report,
        "| | wait p50 | wait p99 | wait max | refused | failed | pod-seconds | peak replicas | scale events |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|---|---|---|");
    let _ = writeln!(
        report,
        "| real cluster | {:.3} s | {:.3} s | {:.3} s | {} | {} | {:.0} | {} | {} |",
        real.waits.p50,
        real.waits.p99,
        real.waits.max,
        real.refused,
        real.failed,
        real.pod_seconds,
        real.peak,
        recorded.replicas.len().saturating_sub(1)
    );
    let _ = writeln!(
        report,
        "| simulator | {:.3} s | {:.3} s | {:.3} s | {} | – | {:.0} | {} | {} |",
        sim.wait_seconds.p50,
        sim.wait_seconds.p99,
        sim.wait_seconds.max,
        sim.refused + sim.timed_out + sim.cut,
        sim.pod_seconds,
        sim.peak_replicas,
        sim.scale_events
    );
    let pod_ratio = sim.pod_seconds / real.pod_seconds;
    let p99_gap = (sim.wait_seconds.p99 - real.waits.p99).abs();
    let _ = writeln!(
        report,
        "\npod-seconds: simulator ÷ real = {pod_ratio:.3} (goal within 10 %: {}); p99 wait: \
         {:.3} s apart, simulator ÷ real = {:.3} (goal within 25 % or 200 ms: {})",
        if (pod_ratio - 1.0).abs() <= 0.10 {
            "met"
        } else {
            "missed"
        },
        p99_gap,
        sim.wait_seconds.p99 / real.waits.p99.max(f64::MIN_POSITIVE),
        if p99_gap <= 0.2 || p99_gap <= 0.25 * real.waits.p99 {
            "met"
        } else {
            "missed"
        }
    );
    print!("{report}");
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let plot = Plot {
        title: format!(
            "fidelity: {} requests, pods start in {startup:.1} s (real and simulated)",
            trace.requests().len()
        ),
        horizon: simulated.plot_horizon,
        arrivals: simulated.trace.arrivals.clone(),
        series: vec![
            Series {
                name: "real cluster".into(),
                replicas: recorded.replicas.clone(),
                max_wait: real.max_wait.clone(),
            },
            Series {
                name: "simulator".into(),
                replicas: sim.timeline.replicas.clone(),
                max_wait: sim.timeline.max_wait.clone(),
            },
        ],
    };
    let svg_path = dir.join(format!("run-{stamp}.svg"));
    write_atomically(&svg_path, svg(&plot).as_bytes())?;
    write_atomically(&dir.join(format!("run-{stamp}.md")), report.as_bytes())?;
    println!("saved: {} and run-{stamp}.md", svg_path.display());
    drop(fleet);
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo_root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Adds to `serving` the workers that answer through their sidecar and drops the ones that are
/// gone, as endpoints follow readiness; true when at least one serves.
async fn refresh_serving(fleet: &Fleet, serving: &Mutex<HashSet<SocketAddr>>) -> bool {
    let current: Vec<SocketAddr> = fleet.endpoints().into_iter().map(|(_, a)| a).collect();
    lock(serving).retain(|a| current.contains(a));
    for address in current {
        if !lock(serving).contains(&address)
            && matches!(http::get(address, "/hello").await, Some((200, _)))
        {
            lock(serving).insert(address);
        }
    }
    !lock(serving).is_empty()
}

/// Sends every request of `trace` at its time to a random serving worker; returns their fates.
async fn send(
    trace: &Trace,
    started: Instant,
    serving: &Mutex<HashSet<SocketAddr>>,
) -> Vec<Outcome> {
    let mut tasks = Vec::with_capacity(trace.requests().len());
    for request in trace.requests() {
        tokio::time::sleep_until(started + Duration::from_secs_f64(request.arrival)).await;
        let targets: Vec<SocketAddr> = lock(serving).iter().copied().collect();
        let target = match targets.len() {
            0 => None,
            n => Some(targets[rand::rng().random_range(0..n)]),
        };
        let path = format!("/sleep?s={:.4}", request.service);
        tasks.push(tokio::spawn(async move {
            let Some(target) = target else {
                return Outcome::Refused;
            };
            let begun = Instant::now();
            match http::exchange(target, "GET", &path, None, Duration::from_secs(120)).await {
                Some((200, _)) => Outcome::Served(begun.elapsed().as_secs_f64()),
                Some((503, _)) => Outcome::Refused,
                _ => Outcome::Failed,
            }
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.unwrap_or(Outcome::Failed));
    }
    outcomes
}

/// Samples the Deployment's replicas and the pods every 100 ms, and keeps the serving set of
/// the client in step with the fleet.
#[allow(clippy::too_many_arguments)]
async fn record(
    client: Client,
    namespace: String,
    pool: String,
    started: Instant,
    started_wall: SystemTime,
    fleet: Arc<Fleet>,
    serving: Arc<Mutex<HashSet<SocketAddr>>>,
    recorded: Arc<Mutex<Recorded>>,
) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let selector = format!("{}={pool}", asyncpool_contract::pod::POOL_LABEL);
    loop {
        let now = started.elapsed().as_secs_f64();
        if let Ok(Some(replicas)) = deployments
            .get_opt(&pool)
            .await
            .map(|d| d.and_then(|d| d.spec?.replicas))
        {
            let replicas = u32::try_from(replicas).unwrap_or(0);
            let mut r = lock(&recorded);
            if r.replicas.last().is_none_or(|(_, last)| *last != replicas) {
                let at = if r.replicas.is_empty() { 0.0 } else { now };
                r.replicas.push((at, replicas));
            }
        }
        if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
            let mut r = lock(&recorded);
            for pod in &list.items {
                let created = pod
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .and_then(|t| {
                        let wall = SystemTime::UNIX_EPOCH
                            + Duration::from_nanos(u64::try_from(t.0.as_nanosecond()).ok()?);
                        Some(match wall.duration_since(started_wall) {
                            Ok(after) => after.as_secs_f64(),
                            Err(before) => -before.duration().as_secs_f64(),
                        })
                    })
                    .unwrap_or(now);
                r.pods
                    .entry(pod.name_any())
                    .and_modify(|(_, seen)| *seen = now)
                    .or_insert((created, now));
            }
        }
        refresh_serving(&fleet, &serving).await;
        let serving_now = lock(&serving).clone();
        for (pod, address) in fleet.endpoints() {
            if serving_now.contains(&address) {
                lock(&recorded)
                    .serving_since
                    .entry(pod)
                    .or_insert(started.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct RealFigures {
    waits: Waits,
    refused: usize,
    failed: usize,
    pod_seconds: f64,
    peak: u32,
    max_wait: Vec<Option<f64>>,
}

fn real_figures(
    trace: &Trace,
    outcomes: &[Outcome],
    recorded: &Recorded,
    horizon: f64,
) -> RealFigures {
    let bucket = bucket_seconds(trace.end(), PLOT_BUCKETS);
    let mut max_wait = vec![None; PLOT_BUCKETS];
    let mut waits = Vec::new();
    let (mut refused, mut failed) = (0, 0);
    for (request, outcome) in trace.requests().iter().zip(outcomes) {
        match outcome {
            Outcome::Served(latency) => {
                let wait = (latency - request.service).max(0.0);
                waits.push(wait);
                let slot: &mut Option<f64> =
                    &mut max_wait[((request.arrival / bucket) as usize).min(PLOT_BUCKETS - 1)];
                *slot = Some(slot.map_or(wait, |w: f64| w.max(wait)));
            }
            Outcome::Refused => refused += 1,
            Outcome::Failed => failed += 1,
        }
    }
    let pod_seconds = recorded
        .pods
        .values()
        .map(|(created, seen)| (seen.min(horizon) - created.max(0.0)).max(0.0))
        .sum();
    RealFigures {
        waits: Waits::of(&mut waits),
        refused,
        failed,
        pod_seconds,
        peak: recorded.replicas.iter().map(|(_, r)| *r).max().unwrap_or(0),
        max_wait,
    }
}
