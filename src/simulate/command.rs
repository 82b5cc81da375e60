//! `kubectl asyncpool simulate`: the command's flags, and reading, running and writing in
//! that order, so that bad input stops it before anything is written.

use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args, ValueEnum};

use super::generate::Generator;
use super::plot::{Plot, svg};
use super::report::Comparison;
use super::trace::{TokenModel, Trace};
use super::world::{Balancer, StartupDelay};
use super::{Options, PolicyKind, compare};
use crate::manifest::load_pool;
use asyncpool_contract::duration::parse_duration;

/// Replay a load trace through a pool under asyncpool and under the HPA/KEDA and Knative at
/// their defaults, and compare the queue wait and the pod-seconds of each.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("load").required(true).args(["trace", "generate"])))]
pub struct SimulateArgs {
    /// The pool manifest, as applied with kubectl (`-` reads stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub filename: PathBuf,
    /// The pool to use when the file holds several.
    #[arg(long, value_name = "NAME")]
    pub pool: Option<String>,
    /// A trace: CSV `arrival_s,service_s`, or `TIMESTAMP,ContextTokens,GeneratedTokens`.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// A generated load instead of a trace: a preset (uvicorn-notes, flash-crowd, diurnal,
    /// on-off, heavy-tail, ramp) or `SHAPE:key=value,...` with SHAPE one of steady, step,
    /// ramp, diurnal, onoff, waves (see docs/simulate.md).
    #[arg(long, value_name = "SHAPE")]
    pub generate: Option<String>,
    /// Service time of generated requests: `1s`, `exp:MEAN`, `lognormal:MEDIAN,SIGMA`,
    /// `pareto:SCALE,ALPHA` or `uniform:MIN,MAX` (default: the preset's, or 1s).
    #[arg(long, value_name = "DIST", requires = "generate")]
    pub service: Option<String>,
    /// Token traces: fixed time per request.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = seconds)]
    pub token_overhead: f64,
    /// Token traces: time per prompt (context) token.
    #[arg(long, value_name = "DURATION", default_value = "100us", value_parser = seconds)]
    pub per_context_token: f64,
    /// Token traces: time per generated token.
    #[arg(long, value_name = "DURATION", default_value = "30ms", value_parser = seconds)]
    pub per_generated_token: f64,
    /// Time from a pod's creation to ready: `5s`, or a range `3s..8s` (uniform).
    #[arg(long, value_name = "DELAY", default_value = "5s", value_parser = startup_delay)]
    pub startup_delay: StartupDelay,
    /// How the Service spreads requests over ready pods.
    #[arg(long, value_enum, default_value = "random")]
    pub balancer: BalancerArg,
    /// Policies to compare, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "asyncpool,hpa-keda,knative,fixed,clairvoyant"
    )]
    pub policies: Vec<PolicyKind>,
    /// Size of the fixed pool (default: enough workers for the trace's peak).
    #[arg(long, value_name = "N")]
    pub fixed_replicas: Option<u32>,
    /// Seed of every random choice; the same seed gives the same result.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// What to print.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
    /// Also write an SVG plot of arrivals, replicas and queue wait over time.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Also print asyncpool's reason for every change of size (in JSON: `decisions`).
    #[arg(long)]
    pub explain: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BalancerArg {
    /// kube-proxy (iptables, nftables): a random ready pod.
    Random,
    /// kube-proxy IPVS `rr`.
    RoundRobin,
    /// Least loaded (Envoy least-request, Knative's activator).
    LeastLoaded,
}

impl From<BalancerArg> for Balancer {
    fn from(arg: BalancerArg) -> Self {
        match arg {
            BalancerArg::Random => Balancer::Random,
            BalancerArg::RoundRobin => Balancer::RoundRobin,
            BalancerArg::LeastLoaded => Balancer::LeastLoaded,
        }
    }
}

fn seconds(text: &str) -> Result<f64, String> {
    parse_duration(text).map(|d| d.as_secs_f64())
}

fn startup_delay(text: &str) -> Result<StartupDelay, String> {
    match text.split_once("..") {
        Some((min, max)) => {
            let (min, max) = (seconds(min)?, seconds(max)?);
            if min > max {
                return Err(format!("{text:?}: the first delay is above the second"));
            }
            Ok(StartupDelay::Uniform { min, max })
        }
        None => Ok(StartupDelay::Fixed(seconds(text)?)),
    }
}

/// Why the command failed; the message is what the user sees.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{path}: {error}")]
    Read { path: String, error: String },
    #[error("{0}")]
    Input(String),
    #[error("writing {path}: {error}")]
    Write { path: String, error: String },
}

fn read_error(path: &Path, error: impl ToString) -> CommandError {
    CommandError::Read {
        path: path.display().to_string(),
        error: error.to_string(),
    }
}

/// Runs the command; prints the result on `out` once everything has worked.
pub fn run(args: &SimulateArgs, out: &mut dyn Write) -> Result<(), CommandError> {
    let manifest = if args.filename == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| read_error(&args.filename, e))?
    } else {
        std::fs::read_to_string(&args.filename).map_err(|e| read_error(&args.filename, e))?
    };
    let pool =
        load_pool(&manifest, args.pool.as_deref()).map_err(|e| read_error(&args.filename, e))?;
    let trace = load_trace(args)?;
    let options = Options {
        startup: args.startup_delay,
        balancer: args.balancer.into(),
        seed: args.seed,
        policies: distinct(&args.policies),
        fixed_replicas: args.fixed_replicas,
        explain: args.explain,
    };
    let mut bar = Progress::new(!args.quiet && std::io::stderr().is_terminal());
    let comparison = compare(&pool, &trace, &options, &mut |policy, done| {
        bar.show(policy, done);
    })
    .map_err(|e| read_error(&args.filename, e))?;
    bar.clear();
    if let Some(path) = &args.plot {
        write_atomically(path, svg(&Plot::of(&comparison)).as_bytes())?;
    }
    print(&comparison, args.output, out)
}

/// The policies in the order given, each once.
fn distinct(policies: &[PolicyKind]) -> Vec<PolicyKind> {
    let mut seen = Vec::with_capacity(policies.len());
    for policy in policies {
        if !seen.contains(policy) {
            seen.push(*policy);
        }
    }
    seen
}

fn load_trace(args: &SimulateArgs) -> Result<Trace, CommandError> {
    if let Some(path) = &args.trace {
        if args.service.is_some() {
            // A trace carries its own service times; ignoring the flag would mislead.
            return Err(CommandError::Input(
                "--service applies to --generate only: a trace gives each request's service time"
                    .into(),
            ));
        }
        let file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
        let tokens = TokenModel {
            overhead: args.token_overhead,
            per_context_token: args.per_context_token,
            per_generated_token: args.per_generated_token,
        };
        return Trace::read(BufReader::new(file), &tokens).map_err(|e| read_error(path, e));
    }
    let shape = args.generate.as_deref().unwrap_or_default();
    let generator = Generator::parse(shape, args.service.as_deref())
        .map_err(|e| CommandError::Input(format!("--generate: {e}")))?;
    generator
        .generate(args.seed)
        .map_err(|e| CommandError::Input(format!("--generate {shape}: {e}")))
}

fn print(comparison: &Comparison, output: Output, out: &mut dyn Write) -> Result<(), CommandError> {
    let text = match output {
        Output::Table => comparison.to_table(),
        Output::Json => comparison.to_json() + "\n",
    };
    out.write_all(text.as_bytes())
        .map_err(|e| CommandError::Write {
            path: "stdout".into(),
            error: e.to_string(),
        })
}

/// Writes beside the target and renames, so a failure never leaves half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CommandError> {
    let fail = |error: std::io::Error| CommandError::Write {
        path: path.display().to_string(),
        error: error.to_string(),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let temporary = path.with_file_name(format!(".{}.partial", name.unwrap_or_default()));
    std::fs::write(&temporary, bytes).map_err(fail)?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        fail(e)
    })
}

/// A one-line progress bar on stderr, for terminals only.
struct Progress {
    enabled: bool,
    shown: Option<(String, u32)>,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            shown: None,
        }
    }

    fn show(&mut self, policy: &str, done: f64) {
        let percent = (done * 100.0).round() as u32;
        if !self.enabled
            || self
                .shown
                .as_ref()
                .is_some_and(|(p, shown)| p == policy && *shown == percent)
        {
            return;
        }
        let filled = (percent / 5) as usize;
        eprint!(
            "\r{policy:>12} [{}{}] {percent:>3}%",
            "#".repeat(filled),
            ".".repeat(20 - filled.min(20))
        );
        self.shown = Some((policy.to_owned(), percent));
    }

    fn clear(&mut self) {
        if self.enabled && self.shown.is_some() {
            eprint!("\r{}\r", " ".repeat(40));
        }
    }
}
