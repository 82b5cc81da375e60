//! The operator at cluster scale: N pools on the local cluster's kwok nodes, most of a few worker
//! pods and one in fifty with a hundred or three hundred (about ten pods a pool on average),
//! their sidecar contract served by one listener for every pod address
//! (`asyncpool_testkit::fake_sidecars`), and one operator process reading them all with watch
//! streams. For each pool count it measures:
//!
//! - start-up: from the operator's process start to ready (caches synced) and to every pool
//!   reconciled once, with the API requests made meanwhile (the API server's own counters);
//! - the cost at rest: CPU share of one core, RSS, reconciles, the watch lines the sidecars
//!   send, and API writes to Deployments and pools (which only the operator writes) while no
//!   load changes (5 in flight a pod; by default as traffic of 100 ms requests, so the counters
//!   move and each stream writes at the operator's pace, `--service-time 0` for an idle fleet),
//!   and how many pools the decision rounds leave alone then (`asyncpool_pools_at_rest`);
//! - reaction: a tenth of the pools change load at once (from 5 to 25 a pod at their minimum
//!   size, at 10 per worker; a pool's load is a total spread over its pods, so it settles at 2.5
//!   times its minimum); from that instant to each pool's Deployment showing its new
//!   `spec.replicas` (median, p99), and the Deployment writes per scaling decision. Each round
//!   starts from a settled fleet: the pods the round before created and removed are gone;
//! - the operator's peak RSS over the whole run;
//! - with `--floor-rounds N`, after the builds: the control plane's own part of a reaction on
//!   this machine, a tenth of the Deployments resized at once by a bare client (`Floor`), in
//!   each of the ways `--floor-modes` names, taking turns; `--operators none` measures only that.
//!
//! ```sh
//! benches/scale.sh                         # 100 and 1,000 pools
//! benches/scale.sh --pools 100 --rounds 2  # any arguments replace the defaults
//! benches/scale.sh --pools 1000 --rounds 2 --operators /tmp/a/asyncpool-operator,/tmp/b/asyncpool-operator
//!                                          # two builds, one after the other on one fleet
//! ```
//!
//! Under `cargo test --all-targets` it only says how to run it.

mod fleet;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use asyncpool::crd::AsyncWorkerPool;
use asyncpool_contract::duration::parse_duration;
use asyncpool_contract::queue::parse_watch_pace;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::time::{Instant, sleep};

use asyncpool_testkit::bench::{
    BenchResult, Metrics, Namespaces, Observed, Operator, ReadMode, output_dir, poll_until,
    reaction_pool, warn_about_leftovers,
};
use asyncpool_testkit::cluster::{
    config as cluster_config, install_crd, kubeconfig_path, try_client,
};
use asyncpool_testkit::deployments::Deployments;
use fleet::Fleet;

const BENCH: &str = "scale";
/// Load per pod of a pool at its minimum size, at rest (below a worker's target of 10: every
/// pool stays at its minimum) and, by default, while a pool changes (`--change-load`: 2.5 times
/// its minimum, under its maximum of three times). A pool's load is this times its minimum,
/// spread over its pods.
const REST_LOAD: u64 = 5;
const CHANGE_LOAD: u64 = 25;
/// Longest a pool may take to react before it counts as a timeout.
const REACTION_TIMEOUT: Duration = Duration::from_secs(30);

struct Args {
    bench: bool,
    pools: Vec<usize>,
    rounds: usize,
    rest: Duration,
    /// Every pool this size instead of the mix (more pools within the open-file limit: the
    /// operator holds a watch stream per pod).
    pods_per_pool: Option<i32>,
    /// Each request's time in the app: the fleet's load is traffic and its counters move
    /// (`None`: an idle fleet whose figures stand still).
    service: Option<Duration>,
    /// The operator's `--watch-pace`, when not its default.
    watch_pace: Option<String>,
    /// Load per pod at a changed pool's minimum size (a worker's target is 10): 25 makes it 2.5
    /// times its minimum, 12 a fifth larger.
    change_load: u64,
    /// The controller-manager's client QPS while the fleet is built (`scripts/cluster qps`); it
    /// runs at its default while the operator is measured. `None`: left as the cluster runs.
    build_qps: Option<String>,
    /// Builds of the operator measured one after the other on the same fleet, side by side
    /// (`--operators`); empty: the one built beside this benchmark.
    operators: Vec<PathBuf>,
    /// `--operators none`: no build measured, only the floor.
    no_operator: bool,
    /// Rounds of the control plane's floor after the builds (`--floor-rounds`, 0: none).
    floor_rounds: usize,
    /// How the floor's bare client resizes, each measured `floor_rounds` times, in turns
    /// (`--floor-modes merge/64,scale/4`).
    floor_modes: Vec<FloorMode>,
}

/// How the floor's bare client resizes a Deployment: through the Deployment itself or its
/// `/scale` subresource, and how many requests it keeps in flight at once.
#[derive(Clone, Copy)]
struct FloorMode {
    subresource: bool,
    in_flight: usize,
}

impl FloorMode {
    fn parse(text: &str) -> Result<Self, String> {
        let (how, in_flight) = text.trim().split_once('/').unwrap_or((text.trim(), "64"));
        let subresource = match how {
            "merge" => false,
            "scale" => true,
            _ => return Err(format!("a floor mode is merge or scale, not {how:?}")),
        };
        match in_flight.parse::<usize>() {
            Ok(in_flight) if in_flight > 0 => Ok(Self {
                subresource,
                in_flight,
            }),
            _ => Err(format!(
                "requests in flight are a positive number, not {in_flight:?}"
            )),
        }
    }
}

impl std::fmt::Display for FloorMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.subresource { "scale" } else { "merge" };
        write!(f, "{how}/{}", self.in_flight)
    }
}

const USAGE: &str = "usage: cargo bench --bench scale -- [--pools 100,1000] [--rounds 3] \
                     [--rest-seconds 30] [--pods-per-pool N] [--service-time 100ms|0] \
                     [--watch-pace 1s] [--change-load 25] [--operators BIN,BIN] \
                     [--floor-rounds 2] [--floor-modes merge/64,scale/64] [--operators none]";

fn parse_args(raw: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        bench: false,
        pools: vec![100, 1000],
        rounds: 3,
        rest: Duration::from_secs(30),
        pods_per_pool: None,
        service: Some(Duration::from_millis(100)),
        watch_pace: None,
        change_load: CHANGE_LOAD,
        build_qps: None,
        operators: Vec::new(),
        no_operator: false,
        floor_rounds: 0,
        floor_modes: vec![FloorMode {
            subresource: false,
            in_flight: 64,
        }],
    };
    let mut raw = raw.into_iter();
    while let Some(flag) = raw.next() {
        if flag == "--bench" {
            args.bench = true;
            continue;
        }
        let value = raw
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let count = |text: &str| match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{flag} takes positive whole numbers, not {text:?}")),
        };
        match flag.as_str() {
            "--pools" => {
                args.pools = value.split(',').map(count).collect::<Result<_, _>>()?;
            }
            "--rounds" => args.rounds = count(&value)?,
            "--floor-rounds" => {
                args.floor_rounds = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("{flag} takes a whole number, not {value:?}"))?;
            }
            "--rest-seconds" => args.rest = Duration::from_secs(count(&value)? as u64),
            "--pods-per-pool" => {
                let size = i32::try_from(count(&value)?).map_err(|e| e.to_string())?;
                args.pods_per_pool = Some(size);
            }
            "--service-time" => {
                let service = parse_duration(&value).map_err(|e| format!("{flag}: {e}"))?;
                args.service = (!service.is_zero()).then_some(service);
            }
            "--change-load" => {
                let load = count(&value)? as u64;
                if load <= REST_LOAD {
                    return Err(format!("{flag} must be above the rest load of {REST_LOAD}"));
                }
                args.change_load = load;
            }
            "--floor-modes" => {
                args.floor_modes = value
                    .split(',')
                    .map(FloorMode::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("{flag}: {e}"))?;
            }
            "--operators" if value == "none" => args.no_operator = true,
            "--operators" => {
                args.operators = value.split(',').map(PathBuf::from).collect();
                if let Some(missing) = args.operators.iter().find(|path| !path.is_file()) {
                    return Err(format!("{flag}: {} is not a file", missing.display()));
                }
            }
            "--watch-pace" => {
                parse_watch_pace(&value).map_err(|e| format!("{flag}: {e}"))?;
                args.watch_pace = Some(value);
            }
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// Pool `index`'s size (its minimum): most pools have 6 or 7 pods, one in a hundred 300 and one
/// in a hundred 100, about 10.4 pods a pool on average; or `every` pods each.
fn pool_size(index: usize, every: Option<i32>) -> i32 {
    match (every, index % 100) {
        (Some(size), _) => size,
        (None, 0) => 300,
        (None, 50) => 100,
        (None, i) => 6 + (i % 2) as i32,
    }
}

fn pool_name(index: usize) -> String {
    format!("p{index:04}")
}

fn pool_object(index: usize, size: i32) -> BenchResult<AsyncWorkerPool> {
    reaction_pool(&pool_name(index), size, size * 3)
}

/// The API server's request counters, summed by the labels that `keep` picks.
async fn api_requests(client: &Client) -> BenchResult<HashMap<String, f64>> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let mut sums = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        let (verb, resource, subresource) =
            (label("verb"), label("resource"), label("subresource"));
        *sums.entry("all".to_owned()).or_insert(0.0) += value;
        *sums
            .entry(format!(
                "{verb} {resource}{}",
                if subresource.is_empty() {
                    String::new()
                } else {
                    format!("/{subresource}")
                }
            ))
            .or_insert(0.0) += value;
    }
    Ok(sums)
}

fn delta(after: &HashMap<String, f64>, before: &HashMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

/// Writes that only the operator makes: Deployment specs, pools and their status.
fn operator_writes(after: &HashMap<String, f64>, before: &HashMap<String, f64>) -> (f64, f64) {
    let sum = |keys: &[&str]| keys.iter().map(|k| delta(after, before, k)).sum::<f64>();
    (
        sum(&[
            "PATCH deployments",
            "UPDATE deployments",
            "APPLY deployments",
        ]),
        sum(&[
            "PATCH asyncworkerpools/status",
            "UPDATE asyncworkerpools/status",
            "APPLY asyncworkerpools/status",
            "PATCH asyncworkerpools",
            "UPDATE asyncworkerpools",
        ]),
    )
}

/// Scaling decisions that change a pool's size (a reconcile decides every time; most decisions
/// hold).
fn resizes(metrics: &Metrics) -> f64 {
    metrics.sum("asyncpool_decisions_total", "kind=\"scale_up\"")
        + metrics.sum("asyncpool_decisions_total", "kind=\"scale_down\"")
}

/// Resident and peak resident memory of a process, in MiB.
fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn percentile(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0)
}

#[derive(Default)]
struct Row {
    /// Which build of the operator (its path, as given), when several are compared.
    operator: String,
    pools: usize,
    pods: usize,
    ready: Duration,
    all_read: Duration,
    startup_requests: f64,
    rest_cpu_percent: f64,
    /// Pools the decision rounds left alone (`asyncpool_pools_at_rest`) at the end of it.
    rest_pools_at_rest: f64,
    rest_rss: f64,
    rest_lines_per_s: f64,
    rest_reconciles_per_s: f64,
    rest_deployment_writes: f64,
    rest_status_writes: f64,
    reactions: Vec<Duration>,
    /// The operator's own part of the reactions (`asyncpool_reaction_duration_seconds`): from
    /// the reading that woke a pool to its reconcile starting, and to its Deployment written.
    operator_started: Observed,
    operator_scaled: Observed,
    timeouts: usize,
    deployment_writes_per_resize: f64,
    /// Time the operator's requests waited for its client's rate limit: during start-up, and
    /// during the reaction rounds.
    startup_client_wait: f64,
    change_client_wait: f64,
    peak_rss: f64,
}

/// Seconds the operator's API requests have waited for its rate limit so far.
const CLIENT_WAIT: &str = "asyncpool_api_client_wait_duration_seconds_sum";
/// The operator's reaction histogram, by stage.
const REACTION: &str = "asyncpool_reaction_duration_seconds";
/// The operator's API requests, from its rate limit to their response head.
const API_REQUEST: &str = "asyncpool_api_request_duration_seconds";

async fn run_count(
    client: &Client,
    kubeconfig: &Path,
    namespaces: &Namespaces,
    count: usize,
    args: &Args,
) -> BenchResult<Vec<Row>> {
    println!("\n== {count} pools ==");
    let namespace = namespaces.create(client, &format!("{count}")).await?;
    let logs = output_dir(BENCH).join(&namespace);
    std::fs::create_dir_all(&logs)?;
    let fleet = Fleet::start(client, &namespace, REST_LOAD, args.service).await?;
    let pools: Api<AsyncWorkerPool> = Api::namespaced(client.clone(), &namespace);
    let pool_size = |index| pool_size(index, args.pods_per_pool);
    let total: usize = (0..count).map(|i| pool_size(i) as usize).sum();
    println!(
        "namespace {namespace}: {count} pools, {total} worker pods; logs in {}",
        logs.display()
    );

    // The cluster as a platform team's would be when the operator (re)starts: pools, their
    // Deployments and every worker running. Built at the harness's client QPS, measured at a
    // real controller-manager's: at 200 it floods the API server with the scale-ups' pod
    // creations exactly when the operator's writes go out.
    if let Some(qps) = &args.build_qps {
        cluster_qps(qps)?;
    }
    let started = Instant::now();
    let mut creates = futures::stream::iter(0..count)
        .map(|i| {
            let pools = pools.clone();
            async move {
                pools
                    .create(&PostParams::default(), &pool_object(i, pool_size(i))?)
                    .await?;
                BenchResult::Ok(())
            }
        })
        .buffer_unordered(16);
    while let Some(created) = creates.next().await {
        created?;
    }
    let builder = Operator::start(
        kubeconfig,
        &namespace,
        ReadMode::Watch,
        logs.join("operator-build.log"),
    )
    .await?;
    poll_until(
        "every worker pod running and served",
        Duration::from_secs(3600),
        Duration::from_secs(2),
        || async { (fleet.pods() >= total).then_some(()) },
    )
    .await?;
    builder.stop().await;
    println!("built in {:.0} s", started.elapsed().as_secs_f64());
    if args.build_qps.is_some() {
        cluster_qps("default")?;
    }

    let mut rows = Vec::new();
    let builds = if args.no_operator {
        Vec::new()
    } else {
        operator_builds(&args.operators)
    };
    for (index, (label, binary)) in builds.iter().enumerate() {
        let run = Measured {
            client,
            kubeconfig,
            namespace: &namespace,
            fleet: &fleet,
            count,
            total,
            args,
            binary,
            log: if builds.len() == 1 {
                logs.join("operator.log")
            } else {
                logs.join(format!("operator-{}.log", index + 1))
            },
            // Each build changes tenths of the pools of its own.
            first_round: index * args.rounds,
        };
        if index > 0 {
            // The build before left pods terminating after its last round; their events would
            // be this one's start-up.
            settle(&fleet, total).await?;
        }
        let mut row = measure(run).await?;
        row.operator = label.clone();
        rows.push(row);
    }
    if args.floor_rounds > 0 {
        settle(&fleet, total).await?;
        let floor = Floor {
            namespace: &namespace,
            fleet: &fleet,
            count,
            total,
            args,
            // Tenths of the pools no build changed, as far as there are.
            first_round: builds.len() * args.rounds,
        };
        floor.measure().await?;
    }
    drop(fleet);
    namespaces.delete(client, &namespace).await;
    Ok(rows)
}

/// The control plane's own part of a reaction on this machine: a tenth of the pools' Deployments
/// resized at once by a bare client while no operator runs, from the first request to each new
/// size showing in the benchmark's watch (as the operator's reactions are timed). The client is
/// the operator's transport (one HTTP/2 connection, `asyncpool::api_client`) with no rate limit,
/// writing as each `FloorMode` says (by default as the operator does: a merge patch of the
/// Deployment, up to 64 at once); each pool goes to the size the operator gives it (2.5 times
/// its minimum at the default change load), which the controller-manager, the scheduler and kwok
/// then act on as they do on the operator's writes. Each round also says when the last write
/// was answered (the API server's throughput) and how long the watch took to show a write after
/// its answer (the watch's own delay).
struct Floor<'a> {
    namespace: &'a str,
    fleet: &'a Fleet,
    count: usize,
    total: usize,
    args: &'a Args,
    first_round: usize,
}

impl Floor<'_> {
    async fn measure(&self) -> BenchResult<()> {
        let client = asyncpool::api_client::Connection::new(cluster_config().await)?
            .builder()?
            .build();
        let api: Api<Deployment> = Api::namespaced(client.clone(), self.namespace);
        let mut deployments = Deployments::start(&client, self.namespace);
        let pool_size = |index| pool_size(index, self.args.pods_per_pool);
        let grown = |index| {
            let load = self.args.change_load * pool_size(index) as u64;
            let wanted = i32::try_from(load.div_ceil(10)).unwrap_or(i32::MAX);
            // The pools' maximum is three times their minimum (`pool_object`).
            wanted.min(pool_size(index) * 3)
        };
        let modes = &self.args.floor_modes;
        let mut reactions = vec![Vec::new(); modes.len()];
        let mut round_trips = vec![Vec::new(); modes.len()];
        // The modes take turns, so that drift in the machine's load falls on each alike.
        let turns = (0..self.args.floor_rounds).flat_map(|_| 0..modes.len());
        // A first round, not counted: the controller-manager and the scheduler were just
        // restarted at their default QPS and are still relisting the fleet.
        let turns = std::iter::once(None).chain(turns.map(Some));
        for (turn, m) in turns.enumerate() {
            let round = self.first_round + turn;
            let counted = m.is_some();
            let m = m.unwrap_or(0);
            let mode = modes[m];
            let (mut round_reactions, mut round_trips_now) = (Vec::new(), Vec::new());
            let sample: Vec<usize> = (0..self.count).filter(|i| i % 10 == round % 10).collect();
            deployments.drain();
            let t0 = Instant::now();
            let mut patches = futures::stream::iter(sample.iter().map(|&i| {
                let api = api.clone();
                async move {
                    let sent = Instant::now();
                    resize(&api, i, grown(i), mode.subresource).await?;
                    BenchResult::Ok((pool_name(i), sent, Instant::now()))
                }
            }))
            .buffer_unordered(mode.in_flight);
            let mut waiting: HashMap<String, i32> =
                sample.iter().map(|&i| (pool_name(i), grown(i))).collect();
            let deadline = t0 + REACTION_TIMEOUT;
            let mut sent = 0;
            // When each write's answer came, and when the watch showed it: the time from one
            // to the other is the watch's own delay.
            let (mut answered, mut shown) = (HashMap::new(), HashMap::new());
            while sent < sample.len() || !waiting.is_empty() {
                tokio::select! {
                    Some(answer) = patches.next(), if sent < sample.len() => {
                        let (name, at, answered_at) = answer?;
                        round_trips_now.push(answered_at.duration_since(at));
                        answered.insert(name, answered_at);
                        sent += 1;
                    }
                    change = deployments.next(deadline), if !waiting.is_empty() => {
                        let Some(change) = change else { break };
                        if waiting.get(&change.name).is_some_and(|to| change.replicas == Some(*to)) {
                            waiting.remove(&change.name);
                            round_reactions.push(change.at.duration_since(t0));
                            shown.insert(change.name.clone(), change.at);
                        }
                    }
                }
            }
            drop(patches);
            if !waiting.is_empty() {
                return Err(format!(
                    "floor round {round} ({mode}): {} Deployments never showed their size",
                    waiting.len()
                )
                .into());
            }
            round_reactions.sort();
            round_trips_now.sort();
            let all_answered = answered.values().max().map(|at| at.duration_since(t0));
            let mut watch_delays: Vec<Duration> = shown
                .iter()
                .filter_map(|(name, at)| Some(at.saturating_duration_since(*answered.get(name)?)))
                .collect();
            watch_delays.sort();
            println!(
                "floor round {round}, {mode}{}: new size in the watch median {} ms, p99 {} ms; request round trip median {} ms; every write answered after {} ms; watch after the answer median {} ms",
                if counted {
                    ""
                } else {
                    " (warm-up, not counted)"
                },
                fmt_ms(percentile(&round_reactions, 50.0)),
                fmt_ms(percentile(&round_reactions, 99.0)),
                fmt_ms(percentile(&round_trips_now, 50.0)),
                millis(all_answered.map(|d| d.as_secs_f64())),
                fmt_ms(percentile(&watch_delays, 50.0)),
            );
            if counted {
                reactions[m].extend(round_reactions);
                round_trips[m].extend(round_trips_now);
            }
            // Back, and settled, before the next round.
            for &i in &sample {
                resize(&api, i, pool_size(i), mode.subresource).await?;
            }
            settle(self.fleet, self.total).await?;
        }
        for ((mode, reactions), round_trips) in
            modes.iter().zip(&mut reactions).zip(&mut round_trips)
        {
            reactions.sort();
            round_trips.sort();
            println!(
                "control-plane floor, {mode} ({} rounds, no operator; a tenth of the pools' Deployments resized at once by a bare client over one HTTP/2 connection, {} at once, {}): new size in the watch median {} ms, p99 {} ms; request round trip median {} ms, p99 {} ms",
                self.args.floor_rounds,
                mode.in_flight,
                if mode.subresource {
                    "a merge patch of /scale"
                } else {
                    "a merge patch of the Deployment"
                },
                fmt_ms(percentile(reactions, 50.0)),
                fmt_ms(percentile(reactions, 99.0)),
                fmt_ms(percentile(round_trips, 50.0)),
                fmt_ms(percentile(round_trips, 99.0)),
            );
        }
        Ok(())
    }
}

/// Sets pool `index`'s Deployment to `replicas` with a merge patch, of the Deployment (as the
/// operator's resizes do) or of its `/scale` subresource.
async fn resize(
    api: &Api<Deployment>,
    index: usize,
    replicas: i32,
    subresource: bool,
) -> BenchResult<()> {
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    let (name, params, patch) = (
        pool_name(index),
        PatchParams::default(),
        Patch::Merge(&patch),
    );
    if subresource {
        api.patch_scale(&name, &params, &patch).await?;
    } else {
        api.patch(&name, &params, &patch).await?;
    }
    Ok(())
}

/// Milliseconds as the tables print them, "–" for none.
fn fmt_ms(ms: Option<f64>) -> String {
    ms.map_or("–".to_owned(), |ms| format!("{ms:.0}"))
}

/// Waits until the fleet holds exactly its `total` pods, none of them terminating.
async fn settle(fleet: &Fleet, total: usize) -> BenchResult<()> {
    poll_until(
        "the fleet back to its size, nothing terminating",
        Duration::from_secs(600),
        Duration::from_millis(500),
        || async { (fleet.present() == total && fleet.pods() == total).then_some(()) },
    )
    .await
}

/// The builds `--operators` names, each labelled by its path; by default the one beside this
/// benchmark.
fn operator_builds(paths: &[PathBuf]) -> Vec<(String, PathBuf)> {
    if paths.is_empty() {
        return vec![(
            "this build".to_owned(),
            asyncpool_testkit::binary("asyncpool-operator"),
        )];
    }
    paths
        .iter()
        .map(|path| (path.display().to_string(), path.clone()))
        .collect()
}

/// One build of the operator measured on a built fleet.
struct Measured<'a> {
    client: &'a Client,
    kubeconfig: &'a Path,
    namespace: &'a str,
    fleet: &'a Fleet,
    count: usize,
    total: usize,
    args: &'a Args,
    binary: &'a Path,
    log: PathBuf,
    /// The first reaction round's number: round `n` changes the pools whose index is `n`
    /// modulo 10.
    first_round: usize,
}

/// Start-up, the cost at rest and the reaction rounds of one operator process on the fleet.
async fn measure(run: Measured<'_>) -> BenchResult<Row> {
    let Measured {
        client,
        kubeconfig,
        namespace,
        fleet,
        count,
        total,
        args,
        binary,
        log,
        first_round,
    } = run;
    let pool_size = |index| pool_size(index, args.pods_per_pool);

    // Start-up.
    let before = api_requests(client).await?;
    let began = Instant::now();
    let flags: Vec<String> = args
        .watch_pace
        .iter()
        .map(|pace| format!("--watch-pace={pace}"))
        .collect();
    let operator =
        Operator::start_binary(binary, kubeconfig, namespace, ReadMode::Watch, log, &flags).await?;
    let ready = began.elapsed();
    // Observed: every pod's watch stream has sent its first line, and every pool has planned
    // with readings (its load figure is set).
    poll_until(
        "every pool read",
        Duration::from_secs(600),
        Duration::from_millis(100),
        || async {
            let metrics = operator.metrics().await.ok()?;
            let streams = metrics.sum(
                "asyncpool_sidecar_read_duration_seconds_count",
                "mode=\"watch\"",
            );
            (streams >= total as f64 && metrics.series("asyncpool_pool_load", "") >= count)
                .then_some(())
        },
    )
    .await?;
    let all_read = began.elapsed();
    let startup_client_wait = operator.metrics().await?.sum(CLIENT_WAIT, "");
    let after = api_requests(client).await?;
    let startup_requests = delta(&after, &before, "all");
    println!(
        "start-up: ready in {:.2} s, every pool read in {:.2} s, {startup_requests:.0} API requests (all clients)",
        ready.as_secs_f64(),
        all_read.as_secs_f64()
    );
    // Settled: three seconds in a row without a reconcile (the first readings' status writes
    // are done).
    let mut quiet = 0;
    let mut last = f64::NAN;
    let settling = Instant::now();
    while quiet < 3 && settling.elapsed() < Duration::from_secs(300) {
        sleep(Duration::from_secs(1)).await;
        let reconciles = operator
            .metrics()
            .await?
            .sum("asyncpool_reconciles_total", "");
        quiet = if reconciles == last { quiet + 1 } else { 0 };
        last = reconciles;
    }
    println!(
        "settled {:.1} s after every pool was read",
        settling.elapsed().as_secs_f64()
    );

    // At rest.
    sleep(Duration::from_secs(10)).await;
    let pid = operator.pid().ok_or("the operator has no pid")?;
    let (cpu0, metrics0, writes0, served0) = (
        operator.cpu(),
        operator.metrics().await?,
        api_requests(client).await?,
        fleet.served(),
    );
    let rest_began = Instant::now();
    sleep(args.rest).await;
    let rest_wall = rest_began.elapsed();
    let (cpu1, metrics1, writes1, served1) = (
        operator.cpu(),
        operator.metrics().await?,
        api_requests(client).await?,
        fleet.served(),
    );
    let rest_lines_per_s = (served1.lines - served0.lines) as f64 / rest_wall.as_secs_f64();
    let rest_polls_per_s = (served1.polls - served0.polls) as f64 / rest_wall.as_secs_f64();
    let rest_cpu_percent = match (cpu0, cpu1) {
        (Some(a), Some(b)) => (b - a).as_secs_f64() / rest_wall.as_secs_f64() * 100.0,
        _ => f64::NAN,
    };
    let (rest_deployment_writes, rest_status_writes) = operator_writes(&writes1, &writes0);
    let rest_reconciles_per_s = (metrics1.sum("asyncpool_reconciles_total", "")
        - metrics0.sum("asyncpool_reconciles_total", ""))
        / rest_wall.as_secs_f64();
    let (rest_rss, peak_so_far) = memory_mib(pid).unwrap_or((f64::NAN, f64::NAN));
    let rest_pools_at_rest = metrics1.sum("asyncpool_pools_at_rest", "");
    println!(
        "at rest: {rest_pools_at_rest:.0} pools left out of the decision rounds; CPU {rest_cpu_percent:.1} % of a core, RSS {rest_rss:.1} MiB (peak so far {peak_so_far:.1}), {rest_reconciles_per_s:.0} reconciles/s, \
         writes: {rest_deployment_writes:.0} Deployment, {rest_status_writes:.0} pool; \
         the sidecars sent {rest_lines_per_s:.0} watch lines/s and answered {rest_polls_per_s:.0} polls/s"
    );

    // Reaction: a tenth of the pools change at once, a different tenth each round.
    let mut deployments = Deployments::start(client, namespace);
    poll_until(
        "the Deployments followed",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || async {
            (0..count)
                .all(|i| deployments.replicas(&pool_name(i)) == Some(pool_size(i)))
                .then_some(())
        },
    )
    .await?;
    let mut reactions = Vec::new();
    let mut timeouts = 0;
    let (mut deployment_writes, mut resized, mut change_client_wait) = (0.0, 0.0, 0.0);
    let (mut operator_started, mut operator_scaled) = (Observed::default(), Observed::default());
    for round in first_round..first_round + args.rounds {
        let sample: Vec<usize> = (0..count).filter(|i| i % 10 == round % 10).collect();
        let before_writes = api_requests(client).await?;
        let before_metrics = operator.metrics().await?;
        deployments.drain();
        let t0 = Instant::now();
        for &i in &sample {
            fleet.set_pool_load(&pool_name(i), args.change_load * pool_size(i) as u64);
        }
        let mut waiting: HashMap<String, i32> = sample
            .iter()
            .map(|&i| (pool_name(i), pool_size(i)))
            .collect();
        let deadline = t0 + REACTION_TIMEOUT;
        while !waiting.is_empty() {
            let Some(change) = deployments.next(deadline).await else {
                break;
            };
            if waiting
                .get(&change.name)
                .is_some_and(|from| change.replicas != Some(*from))
            {
                waiting.remove(&change.name);
                reactions.push(change.at.duration_since(t0));
            }
        }
        timeouts += waiting.len();
        let after_metrics = operator.metrics().await?;
        let after_writes = api_requests(client).await?;
        deployment_writes += operator_writes(&after_writes, &before_writes).0;
        resized += resizes(&after_metrics) - resizes(&before_metrics);
        change_client_wait +=
            after_metrics.sum(CLIENT_WAIT, "") - before_metrics.sum(CLIENT_WAIT, "");
        let started = after_metrics.histogram_since(&before_metrics, REACTION, "stage=\"started\"");
        let scaled = after_metrics.histogram_since(&before_metrics, REACTION, "stage=\"scaled\"");
        let patches = after_metrics.histogram_since(&before_metrics, API_REQUEST, "verb=\"PATCH\"");
        println!(
            "round {round}, the operator's part: reading to reconcile started median {} ms, p99 {} ms ({} wakes); to the Deployment written median {} ms, p99 {} ms ({} resizes); its PATCH requests (resizes, status applies, victim marks) round trip median {} ms, p99 {} ms ({})",
            millis(started.quantile(0.5)),
            millis(started.quantile(0.99)),
            started.count(),
            millis(scaled.quantile(0.5)),
            millis(scaled.quantile(0.99)),
            scaled.count(),
            millis(patches.quantile(0.5)),
            millis(patches.quantile(0.99)),
            patches.count(),
        );
        operator_started.add(&started);
        operator_scaled.add(&scaled);
        // Back to rest, and settled, before the next round.
        for &i in &sample {
            fleet.set_pool_load(&pool_name(i), REST_LOAD * pool_size(i) as u64);
        }
        poll_until(
            "the changed pools back at their minimum",
            Duration::from_secs(300),
            Duration::from_millis(200),
            || async {
                sample
                    .iter()
                    .all(|&i| deployments.replicas(&pool_name(i)) == Some(pool_size(i)))
                    .then_some(())
            },
        )
        .await?;
        println!(
            "round {round}: {} pools changed, {} reacted in time",
            sample.len(),
            sample.len() - waiting.len()
        );
        // The round's pods created and removed again: the controller-manager works through a
        // thousand of them at its client QPS for a minute after the sizes are back, and the
        // next round measured meanwhile would measure that backlog, not a change from rest.
        let settling = Instant::now();
        settle(fleet, total).await?;
        println!(
            "round {round}: the fleet settled {:.0} s after the sizes were back",
            settling.elapsed().as_secs_f64()
        );
    }
    reactions.sort();
    let peak_rss = memory_mib(pid).map_or(f64::NAN, |m| m.1);
    operator.stop().await;
    Ok(Row {
        operator: String::new(),
        pools: count,
        pods: total,
        ready,
        all_read,
        startup_requests,
        rest_cpu_percent,
        rest_pools_at_rest,
        rest_rss,
        rest_lines_per_s,
        rest_reconciles_per_s,
        rest_deployment_writes,
        rest_status_writes,
        reactions,
        operator_started,
        operator_scaled,
        timeouts,
        deployment_writes_per_resize: if resized > 0.0 {
            deployment_writes / resized
        } else {
            f64::NAN
        },
        startup_client_wait,
        change_client_wait,
        peak_rss,
    })
}

/// Restarts the cluster's controller-manager and scheduler at client QPS `qps` (`default`: their
/// own).
fn cluster_qps(qps: &str) -> BenchResult<()> {
    let script = asyncpool_testkit::repo_root().join("scripts/cluster");
    let status = std::process::Command::new(script)
        .args(["qps", qps])
        .status()?;
    if !status.success() {
        return Err(format!("scripts/cluster qps {qps} failed").into());
    }
    Ok(())
}

/// Seconds as whole milliseconds, or a dash.
fn millis(seconds: Option<f64>) -> String {
    fmt_ms(seconds.map(|s| s * 1000.0))
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| operator | pools | pods | ready s | every pool read s | API requests at start | CPU at rest % (pools at rest) | RSS at rest MiB | peak RSS MiB | watch lines/s at rest | reconciles/s at rest | writes at rest (Deployment / pool) | reaction median ms | p99 ms | operator's part to reconcile start / to Deployment written, median ms | p99 ms | timeouts | Deployment writes per resize | client rate-limit wait s (start / changes) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {:.2} | {:.0} | {:.1} ({:.0}) | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} / {:.0} | {} | {} | {} / {} | {} / {} | {} | {:.2} | {:.2} / {:.2} |",
            r.operator,
            r.pools,
            r.pods,
            r.ready.as_secs_f64(),
            r.all_read.as_secs_f64(),
            r.startup_requests,
            r.rest_cpu_percent,
            r.rest_pools_at_rest,
            r.rest_rss,
            r.peak_rss,
            r.rest_lines_per_s,
            r.rest_reconciles_per_s,
            r.rest_deployment_writes,
            r.rest_status_writes,
            fmt_ms(percentile(&r.reactions, 50.0)),
            fmt_ms(percentile(&r.reactions, 99.0)),
            millis(r.operator_started.quantile(0.5)),
            millis(r.operator_scaled.quantile(0.5)),
            millis(r.operator_started.quantile(0.99)),
            millis(r.operator_scaled.quantile(0.99)),
            r.timeouts,
            r.deployment_writes_per_resize,
            r.startup_client_wait,
            r.change_client_wait,
        );
    }
    out
}

async fn run(args: Args) -> BenchResult<()> {
    let kubeconfig = kubeconfig_path();
    let client = try_client(kubeconfig).await?;
    install_crd(&client).await;
    warn_about_leftovers(&client, BENCH).await;
    let namespaces = Namespaces::new(BENCH);
    let mut rows = Vec::new();
    for &count in &args.pools {
        match run_count(&client, kubeconfig, &namespaces, count, &args).await {
            Ok(measured) => rows.extend(measured),
            Err(error) => {
                namespaces.delete_all(&client).await;
                return Err(error);
            }
        }
    }
    let traffic = match args.service {
        Some(service) => format!("traffic of {service:?} requests (counters move)"),
        None => "an idle fleet (figures stand still)".to_owned(),
    };
    let pace = args
        .watch_pace
        .as_deref()
        .unwrap_or("the operator's default");
    println!(
        "\n{traffic}; watch pace {pace}; changed pools to {} a pod at their minimum\n{}",
        args.change_load,
        table(&rows)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => Args {
            // benches/scale.sh starts the cluster at this QPS.
            build_qps: std::env::var("ASYNCPOOL_CLUSTER_API_QPS")
                .ok()
                .filter(|qps| !qps.is_empty()),
            ..args
        },
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    if !args.bench {
        println!("the scale benchmark needs the local cluster and many minutes: benches/scale.sh");
        return ExitCode::SUCCESS;
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("scale: {error}");
            ExitCode::FAILURE
        }
    }
}
