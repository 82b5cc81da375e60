//! Reaction time of the operator: from a sidecar's load change to the Deployment's new
//! `spec.replicas`, with sidecar watch streams and with polling, at 1 and at N pools, on the
//! real local cluster (`scripts/cluster`). It also checks the cost at rest: API writes while
//! nothing changes.
//!
//! ```sh
//! cargo bench --bench reaction -- --pools 1,100 --modes watch,poll --trials 30
//! ```
//!
//! One trial: a pool sits at 1 replica, its one worker reports load 0 and the operator has
//! settled. t0 is taken right before the bench POSTs load 25 to that worker's sidecar (desired
//! 1 → 3 at 10 per worker); t1 is when this process's own watch on Deployments sees the pool's
//! `spec.replicas` change. t1 − t0 therefore holds the sidecar publishing the change, the
//! operator reading it (a watch-stream line, or its next poll), the reconcile (its API reads,
//! the decision, the server-side apply), the API server committing the write, and the watch
//! event travelling back to this process. That last leg is measured on its own (the
//! calibration) and printed next to the results.
//!
//! The modes alternate in rounds (watch, poll, poll, watch, …), each round with a fresh
//! operator process, so that the noise of a shared machine falls on both modes alike.
//!
//! The worker side is a sidecar process in `report` mode per kwok pod, listening on the pod's
//! 127.x address, as `asyncpool_testkit::fleet` runs them. The bench keeps them in step with
//! one pod watch for the whole namespace rather than one `Fleet` per pool: each `Fleet` lists
//! its pods every 100 ms, which at 100 pools is 1,000 LISTs a second against the API server that
//! the operator under test shares two cores with.
//!
//! Under `cargo test --all-targets` (which runs bench targets without `--bench`) it only says
//! how to run it: a run takes many minutes and a whole cluster.

mod harness;
mod stats;
mod workers;
mod writes;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use kube::Client;
use tokio::time::{Instant, sleep};

use asyncpool_testkit::bench::{
    BenchResult, Namespaces, ReadMode as Mode, output_dir, warn_about_leftovers,
};
use asyncpool_testkit::cluster::{install_crd, kubeconfig_path, try_client};
use harness::{Bench, Calibration, RestFigures, RoundFigures, Trial};
use stats::{ms, summarize};
use writes::describe_writes;

/// This benchmark's name: its namespaces' label and its folder under `target/`.
const BENCH: &str = "reaction";
/// Load reported at rest and for a trial: 0 needs the minimum (1), 25 needs 3 at 10 per worker.
const TRIAL_LOAD: u64 = 25;
/// Load reported while the API writes at rest are counted: not zero, so that a status that
/// re-writes its load figure would show, and below one worker's target, so that nothing scales.
const REST_LOAD: u64 = 5;
/// Longest a trial waits for the Deployment to change before it counts as a timeout.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest any settling step may take before the bench gives up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

// --- arguments -------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Args {
    /// Set by `cargo bench`; without it (`cargo test --all-targets`) the bench does not run.
    bench: bool,
    pools: Vec<usize>,
    modes: Vec<Mode>,
    /// Trials per mode and pool count; at N pools at least N, so that each pool is used once.
    trials: usize,
    /// Rounds per mode: the modes alternate round by round.
    rounds: usize,
    /// Length of the window in which writes at rest are counted.
    rest: Duration,
    /// Write probes for the watch-latency calibration.
    calibration: usize,
    /// Time a pool is left alone after a reset before its next trial (see `Bench::quiet`).
    quiet: Duration,
}

const USAGE: &str = "usage: cargo bench --bench reaction -- [--pools 1,100] [--modes watch,poll] \
[--trials 30] [--rounds 3] [--quiet-seconds 10] [--rest-seconds 10] [--calibration 30]";

fn parse_list<T>(
    text: &str,
    item: impl Fn(&str) -> Result<T, String>,
    flag: &str,
) -> Result<Vec<T>, String> {
    let items = text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| item(s.trim()))
        .collect::<Result<Vec<T>, String>>()?;
    if items.is_empty() {
        return Err(format!("{flag} needs at least one value"));
    }
    Ok(items)
}

fn parse_count(text: &str, flag: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{flag} takes a positive whole number, not {text:?}"
        )),
    }
}

fn parse_args(raw: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        bench: false,
        pools: vec![1, 100],
        modes: vec![Mode::Watch, Mode::Poll],
        trials: 30,
        rounds: 3,
        rest: Duration::from_secs(10),
        calibration: 30,
        quiet: Duration::from_secs(10),
    };
    let mut raw = raw.into_iter();
    while let Some(arg) = raw.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        if flag == "--bench" {
            args.bench = true;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        const FLAGS: [&str; 7] = [
            "--pools",
            "--modes",
            "--trials",
            "--rounds",
            "--quiet-seconds",
            "--rest-seconds",
            "--calibration",
        ];
        if !FLAGS.contains(&flag.as_str()) {
            return Err(format!("unknown argument {flag:?}\n{USAGE}"));
        }
        let value = match inline.or_else(|| raw.next()) {
            Some(value) => value,
            None => return Err(format!("{flag} needs a value\n{USAGE}")),
        };
        match flag.as_str() {
            "--pools" => {
                args.pools = parse_list(&value, |s| parse_count(s, "--pools"), "--pools")?;
            }
            "--modes" => {
                args.modes = parse_list(
                    &value,
                    |s| match s {
                        "watch" => Ok(Mode::Watch),
                        "poll" => Ok(Mode::Poll),
                        other => Err(format!("--modes takes watch and poll, not {other:?}")),
                    },
                    "--modes",
                )?;
            }
            "--trials" => args.trials = parse_count(&value, "--trials")?,
            "--rounds" => args.rounds = parse_count(&value, "--rounds")?,
            "--rest-seconds" => {
                args.rest = Duration::from_secs(parse_count(&value, "--rest-seconds")? as u64);
            }
            "--calibration" => args.calibration = parse_count(&value, "--calibration")?,
            "--quiet-seconds" => {
                args.quiet = Duration::from_secs(parse_count(&value, "--quiet-seconds")? as u64);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

// --- the run ---------------------------------------------------------------------------------

struct Cell {
    mode: Mode,
    pools: usize,
    trials: Vec<Trial>,
    rounds: Vec<RoundFigures>,
}

/// The order of modes round by round: ABBA…, so that a drift in the machine's load over the
/// run does not favour the mode that goes first.
fn schedule(modes: &[Mode], rounds: usize) -> Vec<(usize, Mode)> {
    (0..rounds)
        .flat_map(|round| {
            let mut order = modes.to_vec();
            if round % 2 == 1 {
                order.reverse();
            }
            order.into_iter().map(move |mode| (round, mode))
        })
        .collect()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

async fn run_pool_count(
    args: &Args,
    client: &Client,
    kubeconfig: &Path,
    namespaces: &Namespaces,
    count: usize,
    csv: &mut String,
) -> BenchResult<(Vec<Cell>, Vec<RestFigures>, Calibration)> {
    println!("\n== {count} pool(s) ==");
    let started = Instant::now();
    let mut bench = Bench::setup(client, kubeconfig, namespaces, count).await?;
    println!(
        "namespace {}; logs in {}",
        bench.namespace,
        bench.logs.display()
    );

    let trials_per_mode = if count > 1 {
        args.trials.max(count)
    } else {
        args.trials
    };
    let order = schedule(&args.modes, args.rounds);
    let mut cells: Vec<Cell> = args
        .modes
        .iter()
        .map(|&mode| Cell {
            mode,
            pools: count,
            trials: Vec::new(),
            rounds: Vec::new(),
        })
        .collect();
    let mut rests = Vec::new();
    let mut calibration = Calibration::default();
    // Each mode walks the pools in its own order, so at N pools each pool is used once per mode.
    let mut next_pool: HashMap<&'static str, usize> = HashMap::new();

    for (round, mode) in order {
        let cell = cells
            .iter_mut()
            .find(|c| c.mode == mode)
            .ok_or("a mode without a cell")?;
        // The trials of a mode spread over its rounds; earlier rounds take the remainder.
        let done = cell.trials.len();
        let rounds_left = args.rounds - round;
        let this_round = (trials_per_mode - done).div_ceil(rounds_left);
        if this_round == 0 {
            continue;
        }
        let round_start = Instant::now();
        let operator = bench.operator(mode, round).await?;
        println!(
            "-- round {} {:5}: operator up and settled after {:.1} s (load average {}, {} sidecars)",
            round + 1,
            mode.name(),
            round_start.elapsed().as_secs_f64(),
            loadavg(),
            bench.workers.process_count()
        );
        if calibration.total.is_empty() {
            calibration = bench.calibrate(args.calibration).await?;
        }
        if round == 0 {
            let rest = bench.rest(&operator, mode, args.rest).await?;
            println!(
                "   at rest, {} s, every pool at load {REST_LOAD}: {}",
                rest.window.as_secs(),
                describe_writes(&rest.idle)
            );
            println!(
                "   after a burst, {} s, one pool holding load {TRIAL_LOAD} at 3 workers (its own objects): {}",
                rest.window.as_secs(),
                describe_writes(&rest.after_burst)
            );
            rests.push(rest);
        }
        let before = operator.metrics().await?;
        let cpu_before = operator.cpu();
        let trials_start = Instant::now();
        for _ in 0..this_round {
            let index = next_pool.entry(mode.name()).or_default();
            let pool = bench.names[*index % count].clone();
            *index += 1;
            bench.quiet(&pool, args.quiet).await;
            let ip = bench.wait_settled(&pool, mode).await?;
            // A random pause, so that t0 falls anywhere in the operator's poll and tick cycles.
            sleep(Duration::from_millis(300 + rand::random_range(0..1000))).await;
            let (change, report, t0) = bench.trial(&pool, ip).await?;
            let trial = Trial {
                mode,
                pools: count,
                round: round + 1,
                pool: pool.clone(),
                reaction: change.as_ref().map(|c| c.at - t0),
                report,
                replicas: change.as_ref().and_then(|c| c.replicas),
            };
            let n = cell.trials.len() + 1;
            match trial.reaction {
                Some(r) => println!(
                    "   {:5} {count:>3} pools  trial {n:>3}/{trials_per_mode}  {pool}  {:8.1} ms  → {}",
                    mode.name(),
                    ms(r),
                    trial.replicas.map_or("?".into(), |r| r.to_string())
                ),
                None => println!(
                    "   {:5} {count:>3} pools  trial {n:>3}/{trials_per_mode}  {pool}  no change within {} s",
                    mode.name(),
                    TRIAL_TIMEOUT.as_secs()
                ),
            }
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{:.3},{}",
                trial.mode.name(),
                trial.pools,
                trial.round,
                trial.pool,
                trial
                    .reaction
                    .map_or(String::new(), |r| format!("{:.3}", ms(r))),
                ms(trial.report),
                trial.replicas.map_or(String::new(), |r| r.to_string())
            );
            cell.trials.push(trial);
            bench.reset(&pool).await?;
        }
        let after = operator.metrics().await?;
        let reaction = "asyncpool_reaction_duration_seconds";
        let started = after.histogram_since(&before, reaction, "stage=\"started\"");
        let scaled = after.histogram_since(&before, reaction, "stage=\"scaled\"");
        println!(
            "   the operator's part: reading to reconcile started median {:.1} ms; to the Deployment written median {:.1} ms, p90 {:.1} ms ({} resizes)",
            started.quantile(0.5).unwrap_or(f64::NAN) * 1000.0,
            scaled.quantile(0.5).unwrap_or(f64::NAN) * 1000.0,
            scaled.quantile(0.9).unwrap_or(f64::NAN) * 1000.0,
            scaled.count(),
        );
        cell.rounds.push(RoundFigures {
            mode,
            reconciles: after.sum("asyncpool_reconciles_total", "")
                - before.sum("asyncpool_reconciles_total", ""),
            reconcile_seconds: after.sum("asyncpool_reconcile_duration_seconds_sum", "")
                - before.sum("asyncpool_reconcile_duration_seconds_sum", ""),
            watch_streams: after.sum(
                "asyncpool_sidecar_read_duration_seconds_count",
                "mode=\"watch\"",
            ),
            polls: after.sum(
                "asyncpool_sidecar_read_duration_seconds_count",
                "mode=\"poll\"",
            ),
            operator_cpu: operator
                .cpu()
                .zip(cpu_before)
                .map(|(a, b)| a.saturating_sub(b)),
            wall: trials_start.elapsed(),
        });
        operator.stop().await;
    }

    let namespace = bench.namespace.clone();
    drop(bench);
    namespaces.delete(client, &namespace).await;
    println!(
        "== {count} pool(s) done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok((cells, rests, calibration))
}

fn report(cells: &[Cell], rests: &[RestFigures], calibrations: &[(usize, Calibration)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Reaction time: sidecar load 0 → {TRIAL_LOAD} until the Deployment's spec.replicas changes (ms)\n"
    );
    let _ = writeln!(
        out,
        "| mode | pools | n | timeouts | median | p90 | p99 | min | max |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut medians: HashMap<(usize, &'static str), f64> = HashMap::new();
    for cell in cells {
        let values: Vec<f64> = cell
            .trials
            .iter()
            .filter_map(|t| t.reaction.map(ms))
            .collect();
        let timeouts = cell.trials.len() - values.len();
        match summarize(&values) {
            Some(s) => {
                medians.insert((cell.pools, cell.mode.name()), s.median);
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {timeouts} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    cell.mode.name(),
                    cell.pools,
                    s.n,
                    s.median,
                    s.p90,
                    s.p99,
                    s.min,
                    s.max
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {} | {} | 0 | {timeouts} | – | – | – | – | – |",
                    cell.mode.name(),
                    cell.pools
                );
            }
        }
    }
    let mut counts: Vec<usize> = cells.iter().map(|c| c.pools).collect();
    counts.dedup();
    for count in counts {
        if let (Some(poll), Some(watch)) = (
            medians.get(&(count, "poll")),
            medians.get(&(count, "watch")),
        ) {
            let _ = writeln!(
                out,
                "\nmedian poll / watch at {count} pool(s): {:.1}×",
                poll / watch
            );
        }
    }
    let _ = writeln!(out, "\n## First replica count seen after the change\n");
    for cell in cells {
        let mut seen: BTreeMap<i32, usize> = BTreeMap::new();
        for t in &cell.trials {
            if let Some(r) = t.replicas {
                *seen.entry(r).or_default() += 1;
            }
        }
        let text: Vec<String> = seen.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        let _ = writeln!(
            out,
            "- {} at {} pool(s): {}",
            cell.mode.name(),
            cell.pools,
            text.join(", ")
        );
    }
    let _ = writeln!(out, "\n## The operator during the trials\n");
    let _ = writeln!(
        out,
        "| mode | pools | round wall s | reconciles | mean reconcile ms | operator CPU s | CPU % | watch streams opened | polls |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for cell in cells {
        for r in &cell.rounds {
            let cpu = r.operator_cpu.map(|c| c.as_secs_f64());
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.1} | {} | {} | {:.0} | {:.0} |",
                r.mode.name(),
                cell.pools,
                r.wall.as_secs_f64(),
                r.reconciles,
                if r.reconciles > 0.0 {
                    1000.0 * r.reconcile_seconds / r.reconciles
                } else {
                    0.0
                },
                cpu.map_or("?".into(), |c| format!("{c:.1}")),
                cpu.map_or("?".into(), |c| format!(
                    "{:.0}",
                    100.0 * c / r.wall.as_secs_f64()
                )),
                r.watch_streams,
                r.polls
            );
        }
    }
    let _ = writeln!(out, "\n## API writes at rest\n");
    for r in rests {
        let cpu = r
            .idle_cpu
            .map_or("?".into(), |c| format!("{:.2} s", c.as_secs_f64()));
        let _ = writeln!(
            out,
            "- {} at {} pool(s), {} s, every pool at constant load {REST_LOAD}: {}; {:.0} reconciles ({:.1}/s), operator CPU {cpu}",
            r.mode.name(),
            r.pools,
            r.window.as_secs(),
            describe_writes(&r.idle),
            r.idle_reconciles,
            r.idle_reconciles / r.window.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "- {} at {} pool(s), {} s, one pool holding load {TRIAL_LOAD} at 3 workers right after scaling up (writes to its own objects): {}",
            r.mode.name(),
            r.pools,
            r.window.as_secs(),
            describe_writes(&r.after_burst)
        );
    }
    let _ = writeln!(
        out,
        "\n## Calibration: this process's own write → its watch event (ms)\n"
    );
    for (count, calibration) in calibrations {
        if let (Some(t), Some(a)) = (
            summarize(&calibration.total),
            summarize(&calibration.after_response),
        ) {
            let _ = writeln!(
                out,
                "- at {count} pool(s), n = {}: PATCH sent → event median {:.1}, p90 {:.1}, max {:.1}; PATCH answered → event median {:.1}, p90 {:.1}, max {:.1}",
                t.n, t.median, t.p90, t.max, a.median, a.p90, a.max
            );
        }
    }
    let reports: Vec<f64> = cells
        .iter()
        .flat_map(|c| c.trials.iter().map(|t| ms(t.report)))
        .collect();
    if let Some(s) = summarize(&reports) {
        let _ = writeln!(
            out,
            "- the POST of the load to the sidecar (inside t0 → t1): median {:.2} ms, max {:.2} ms",
            s.median, s.max
        );
    }
    out
}

async fn run(
    args: Args,
    client: Client,
    kubeconfig: PathBuf,
    namespaces: Namespaces,
) -> BenchResult<()> {
    install_crd(&client).await;
    warn_about_leftovers(&client, BENCH).await;
    std::fs::create_dir_all(output_dir(BENCH))?;
    let mut csv = String::from("mode,pools,round,pool,reaction_ms,report_ms,replicas\n");
    let mut cells = Vec::new();
    let mut rests = Vec::new();
    let mut calibrations = Vec::new();
    let started = Instant::now();
    for &count in &args.pools {
        let (c, r, cal) =
            run_pool_count(&args, &client, &kubeconfig, &namespaces, count, &mut csv).await?;
        cells.extend(c);
        rests.extend(r);
        calibrations.push((count, cal));
    }
    let csv_path = output_dir(BENCH).join("trials.csv");
    std::fs::write(&csv_path, &csv)?;
    print!("{}", report(&cells, &rests, &calibrations));
    println!(
        "\nraw trials: {}; total {:.0} s",
        csv_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn bench_main(args: Args) -> ExitCode {
    let kubeconfig = kubeconfig_path().to_path_buf();
    let client = match try_client(&kubeconfig).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("reaction: cannot use {}: {error}", kubeconfig.display());
            return ExitCode::FAILURE;
        }
    };
    println!(
        "reaction: pools {:?}, modes {:?}, trials {} (at N pools at least N), rounds {}, \
         quiet {} s after a pool's reset, kubeconfig {}",
        args.pools,
        args.modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
        args.trials,
        args.rounds,
        args.quiet.as_secs(),
        kubeconfig.display()
    );
    let namespaces = Namespaces::new(BENCH);
    // The run is a task so that an interrupt or a panic still leads to the cleanup below:
    // aborting it drops the operator and the sidecars (their processes are killed on drop).
    let mut work = tokio::spawn(run(args, client.clone(), kubeconfig, namespaces.clone()));
    let outcome: Result<(), String> = tokio::select! {
        joined = &mut work => match joined {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(error) => Err(format!("the run failed: {error}")),
        },
        _ = asyncpool::signal::terminate_or_interrupt() => {
            work.abort();
            let _ = work.await;
            Err("interrupted".into())
        }
    };
    namespaces.delete_all(&client).await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reaction: {error}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    if !args.bench {
        println!(
            "reaction: not run outside `cargo bench` (it needs the local cluster and takes minutes); {USAGE}"
        );
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the bench");
    runtime.block_on(bench_main(args))
}
