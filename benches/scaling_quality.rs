//! Scaling quality: how long requests wait and how many pod-seconds they cost under asyncpool,
//! the HPA driven by KEDA, Knative's KPA, a fixed pool sized for the peak, and the clairvoyant
//! bound, on the simulator (`src/simulate/`), for the benchmark's traces at two pod start-up
//! delays.
//!
//! ```sh
//! cargo bench --bench scaling_quality                       # all traces, 5 s and 30 s, 5 seeds
//! cargo bench --bench scaling_quality -- --plots docs/img/scaling --seeds 5
//! cargo bench --bench scaling_quality -- --pool my-pool.yaml --only flash-crowd,azure-llm
//! ```
//!
//! Traces: the generator presets (`src/simulate/generate.rs`, `PRESETS`) and the Azure LLM
//! code trace (`benches/traces/`, CC-BY 4.0, token model: 200 ms + 0.1 ms per prompt token +
//! 30 ms per generated token). Pool: `benches/scaling-pool.yaml` (concurrency 10, min 1, max 50,
//! every scaling setting at its default). Each figure is the median over the seeds (each seed
//! draws its own generated trace, start-up phases and Service choices; the Azure trace is the
//! same every time).
//!
//! The goals, per trace and start-up delay: asyncpool's p99 wait below both the HPA/KEDA's and
//! Knative's (or all zero), at pod-seconds no higher than the cheaper of the two and within
//! 1.5× of the clairvoyant bound. The last part times the Azure trace through all four
//! policies.
//!
//! Under `cargo test --all-targets` (which runs bench targets without `--bench`) it only says
//! how to run it.

use std::fmt::Write as _;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use asyncpool::manifest::load_pool;
use asyncpool::simulate::command::write_atomically;
use asyncpool::simulate::generate::{Generator, PRESETS};
use asyncpool::simulate::plot::{Plot, svg};
use asyncpool::simulate::report::{Comparison, PolicyReport};
use asyncpool::simulate::trace::{TokenModel, Trace};
use asyncpool::simulate::world::StartupDelay;
use asyncpool::simulate::{Options, PolicyKind, compare};

const AZURE: &str = "benches/traces/azure-llm-2023-code.csv";
const POOL: &str = "benches/scaling-pool.yaml";
const COMPARED: [&str; 5] = ["asyncpool", "hpa-keda", "knative", "fixed", "clairvoyant"];

struct Args {
    pool: PathBuf,
    plots: Option<PathBuf>,
    seeds: u64,
    startups: Vec<f64>,
    only: Option<String>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        pool: root().join(POOL),
        plots: None,
        seeds: 5,
        startups: vec![5.0, 30.0],
        only: None,
    };
    let mut bench = false;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--bench" => bench = true,
            "--pool" => parsed.pool = PathBuf::from(value("--pool")?),
            "--plots" => parsed.plots = Some(PathBuf::from(value("--plots")?)),
            "--seeds" => {
                parsed.seeds = value("--seeds")?
                    .parse()
                    .map_err(|_| "--seeds takes a number".to_owned())?;
            }
            "--startups" => {
                parsed.startups = value("--startups")?
                    .split(',')
                    .map(|s| s.trim_end_matches('s').parse::<f64>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| "--startups takes seconds, e.g. 5,30".to_owned())?;
            }
            "--only" => parsed.only = Some(value("--only")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(bench.then_some(parsed))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("scaling_quality is a benchmark: cargo bench --bench scaling_quality");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("scaling_quality: {error}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(all_met) => {
            if all_met {
                println!("\nevery goal met");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("scaling_quality: {error}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn azure() -> Result<Trace, String> {
    let file = std::fs::File::open(root().join(AZURE)).map_err(|e| format!("{AZURE}: {e}"))?;
    Trace::read(BufReader::new(file), &TokenModel::default()).map_err(|e| format!("{AZURE}: {e}"))
}

/// The trace named `name` for `seed`.
fn trace(name: &str, seed: u64) -> Result<Trace, String> {
    if name == "azure-llm" {
        return azure();
    }
    Generator::parse(name, None)
        .map_err(|e| e.to_string())?
        .generate(seed)
        .map_err(|e| e.to_string())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Medians over seeds of one policy's figures.
#[derive(Default, Clone, Copy)]
struct Figures {
    p99: f64,
    pod_seconds: f64,
    refused: f64,
}

fn run(args: &Args) -> Result<bool, String> {
    let manifest =
        std::fs::read_to_string(&args.pool).map_err(|e| format!("{}: {e}", args.pool.display()))?;
    let pool = load_pool(&manifest, None).map_err(|e| e.to_string())?;
    let mut names: Vec<&str> = PRESETS.iter().map(|(name, ..)| *name).collect();
    names.push("azure-llm");
    if let Some(only) = &args.only {
        names.retain(|n| only.split(',').any(|o| o == *n));
    }
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut all_met = true;
    for &startup in &args.startups {
        let mut table = String::new();
        let _ = writeln!(
            table,
            "\n### Start-up delay {startup} s (medians of {} seeds)\n",
            args.seeds
        );
        let _ = writeln!(
            table,
            "| trace | asyncpool p99 | HPA/KEDA p99 | Knative p99 | fixed p99 | asyncpool pod-s | \
             HPA/KEDA pod-s | Knative pod-s | fixed pod-s | bound pod-s | asyncpool ÷ bound | \
             refused (a/h/k) | goals |"
        );
        let _ = writeln!(
            table,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for name in &names {
            let mut per_policy: Vec<Vec<Figures>> = vec![Vec::new(); COMPARED.len()];
            for seed in 1..=args.seeds {
                let trace = trace(name, seed)?;
                let options = Options {
                    startup: StartupDelay::Fixed(startup),
                    seed,
                    ..Options::default()
                };
                let comparison =
                    compare(&pool, &trace, &options, &mut |_, _| {}).map_err(|e| e.to_string())?;
                for (slot, policy) in COMPARED.iter().enumerate() {
                    let report = find(&comparison, policy)?;
                    per_policy[slot].push(Figures {
                        p99: report.wait_seconds.p99,
                        pod_seconds: report.pod_seconds,
                        refused: (report.refused + report.timed_out + report.cut) as f64,
                    });
                }
                if seed == 1
                    && let Some(dir) = &args.plots
                {
                    let path = dir.join(format!("{name}-{startup}s.svg"));
                    write_atomically(&path, svg(&Plot::of(&comparison)).as_bytes())
                        .map_err(|e| e.to_string())?;
                }
            }
            let m: Vec<Figures> = per_policy
                .iter()
                .map(|runs| Figures {
                    p99: median(runs.iter().map(|f| f.p99).collect()),
                    pod_seconds: median(runs.iter().map(|f| f.pod_seconds).collect()),
                    refused: median(runs.iter().map(|f| f.refused).collect()),
                })
                .collect();
            let (ours, hpa, kpa, fixed, bound) = (m[0], m[1], m[2], m[3], m[4]);
            let waits_less = ours.p99 < hpa.p99.min(kpa.p99) || (ours.p99 == 0.0);
            let cheaper = ours.pod_seconds <= hpa.pod_seconds.min(kpa.pod_seconds);
            let near_bound = ours.pod_seconds <= 1.5 * bound.pod_seconds;
            let goals = [
                (waits_less, "p99"),
                (cheaper, "cost"),
                (near_bound, "≤1.5×"),
            ];
            let missed: Vec<&str> = goals
                .iter()
                .filter(|(ok, _)| !ok)
                .map(|(_, n)| *n)
                .collect();
            all_met &= missed.is_empty();
            let _ = writeln!(
                table,
                "| {name} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0}/{:.0}/{:.0} | {} |",
                secs(ours.p99),
                secs(hpa.p99),
                secs(kpa.p99),
                secs(fixed.p99),
                ours.pod_seconds,
                hpa.pod_seconds,
                kpa.pod_seconds,
                fixed.pod_seconds,
                bound.pod_seconds,
                ours.pod_seconds / bound.pod_seconds,
                ours.refused,
                hpa.refused,
                kpa.refused,
                if missed.is_empty() {
                    "met".to_owned()
                } else {
                    format!("missed: {}", missed.join(", "))
                }
            );
        }
        print!("{table}");
    }
    if args.only.is_none() {
        speed()?;
    }
    Ok(all_met)
}

fn find<'a>(comparison: &'a Comparison, policy: &str) -> Result<&'a PolicyReport, String> {
    comparison
        .policies
        .iter()
        .find(|p| p.policy == policy)
        .ok_or_else(|| format!("no {policy} in the run"))
}

fn secs(value: f64) -> String {
    if value < 10.0 {
        format!("{:.2} s", value)
    } else {
        format!("{value:.1} s")
    }
}

/// The Azure trace through all four policies, read and written as the command does, timed.
fn speed() -> Result<(), String> {
    let manifest =
        std::fs::read_to_string(root().join(POOL)).map_err(|e| format!("{POOL}: {e}"))?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let pool = load_pool(&manifest, None).map_err(|e| e.to_string())?;
        let trace = azure()?;
        let options = Options {
            policies: PolicyKind::ALL.to_vec(),
            ..Options::default()
        };
        let comparison =
            compare(&pool, &trace, &options, &mut |_, _| {}).map_err(|e| e.to_string())?;
        let _ = svg(&Plot::of(&comparison));
        times.push(started.elapsed().as_secs_f64());
    }
    println!(
        "\nspeed: the Azure trace ({} requests) through all four policies and the bound: median \
         {:.2} s of 5 runs (min {:.2} s, max {:.2} s)",
        azure()?.requests().len(),
        median(times.clone()),
        times.iter().copied().fold(f64::INFINITY, f64::min),
        times.iter().copied().fold(0.0, f64::max)
    );
    Ok(())
}
