//! The simulator as a whole: figures computed by hand on a tiny trace, the same result for the
//! same seed, the baselines behaving as their upstream rules say, and the command line refusing
//! bad input with the line it is on and writing nothing.

use std::path::Path;
use std::process::{Command, Output};

use asyncpool::manifest::load_pool;
use asyncpool::simulate::generate::Generator;
use asyncpool::simulate::report::{Comparison, PolicyReport};
use asyncpool::simulate::trace::{Request, Trace};
use asyncpool::simulate::world::StartupDelay;
use asyncpool::simulate::{Options, PolicyKind, compare};

fn pool(spec: &str) -> asyncpool::crd::AsyncWorkerPool {
    let manifest = format!(
        "apiVersion: asyncpool.dev/v1alpha1\nkind: AsyncWorkerPool\nmetadata: {{name: sim}}\n\
         spec:\n{spec}  template: {{spec: {{containers: [{{name: app, image: app}}]}}}}\n"
    );
    load_pool(&manifest, None).expect("valid pool")
}

fn run(spec: &str, trace: &Trace, options: &Options) -> Comparison {
    compare(&pool(spec), trace, options, &mut |_, _| {}).expect("simulates")
}

fn policy<'a>(comparison: &'a Comparison, name: &str) -> &'a PolicyReport {
    comparison
        .policies
        .iter()
        .find(|p| p.policy == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn a_tiny_trace_gives_the_figures_worked_out_by_hand() {
    // One worker (min = max = 1) running one request at a time, a queue of 2, a queue timeout of
    // 1.2 s. Requests (arrival, service):
    //   r0 (0, 2):    runs 0 → 2, waits 0.
    //   r1 (1, 1):    queued at 1 (queue [r1]), runs 2 → 3, waits 1.0.
    //   r2 (1.5, 1):  queued at 1.5 (queue [r1, r2]), still queued at 1.5 + 1.2 = 2.7: timed
    //                 out, its wait 1.2.
    //   r3 (1.6, 1):  the queue holds 2: refused.
    // Waits of admitted requests: 0, 1.0, 1.2 → p50 (nearest rank 2 of 3) 1.0, p99 and max
    // 1.2, mean 2.2 / 3. The run ends with the last request done at 3 (the trace's own end of
    // work is 2.6), so the one worker costs 3 pod-seconds. The clairvoyant bound needs exactly
    // the one worker over the trace's 2.6 s: 2.6.
    let trace = Trace::new(vec![
        Request {
            arrival: 0.0,
            service: 2.0,
        },
        Request {
            arrival: 1.0,
            service: 1.0,
        },
        Request {
            arrival: 1.5,
            service: 1.0,
        },
        Request {
            arrival: 1.6,
            service: 1.0,
        },
    ])
    .expect("trace");
    let spec = "  minReplicas: 1\n  maxReplicas: 1\n  concurrency: 1\n  queue: {maxQueue: 2, queueTimeout: 1200ms}\n";
    let comparison = run(spec, &trace, &Options::default());
    for name in ["asyncpool", "hpa-keda", "knative", "fixed"] {
        let p = policy(&comparison, name);
        assert_eq!(
            (p.served, p.timed_out, p.refused, p.cut),
            (2, 1, 1, 0),
            "{name}"
        );
        let w = p.wait_seconds;
        assert!(
            close(w.p50, 1.0) && close(w.p99, 1.2) && close(w.max, 1.2),
            "{name}: {w:?}"
        );
        assert!(close(w.mean, 2.2 / 3.0), "{name}: {w:?}");
        assert!(close(p.pod_seconds, 3.0), "{name}: {}", p.pod_seconds);
        assert_eq!((p.scale_events, p.peak_replicas), (0, 1), "{name}");
    }
    let bound = policy(&comparison, "clairvoyant");
    assert!(close(bound.pod_seconds, 2.6), "{}", bound.pod_seconds);
}

#[test]
fn the_same_seed_gives_the_same_result_and_another_seed_another() {
    let generator = Generator::parse("flash-crowd", None).expect("preset");
    let spec = "  minReplicas: 1\n  maxReplicas: 30\n  concurrency: 10\n";
    let options = |seed| Options {
        seed,
        startup: StartupDelay::Uniform { min: 3.0, max: 8.0 },
        ..Options::default()
    };
    let once = run(spec, &generator.generate(4).unwrap(), &options(4)).to_json();
    let again = run(spec, &generator.generate(4).unwrap(), &options(4)).to_json();
    let other = run(spec, &generator.generate(5).unwrap(), &options(5)).to_json();
    assert_eq!(once, again);
    assert_ne!(once, other);
}

/// A step: 2 arrivals a second of 1 s each, then 150 a second from t = 100 to t = 400, then
/// 2 again; on a pool of concurrency 10 (the default target then is 7 per worker).
fn step() -> Trace {
    let mut requests = Vec::new();
    let mut t = 0.0;
    while t < 800.0 {
        let per_second = if (100.0..400.0).contains(&t) {
            150.0
        } else {
            2.0
        };
        requests.push(Request {
            arrival: t,
            service: 1.0,
        });
        t += 1.0 / per_second;
    }
    Trace::new(requests).expect("trace")
}

const STEP_POOL: &str = "  minReplicas: 1\n  maxReplicas: 40\n  concurrency: 10\n";

#[test]
fn the_hpa_with_keda_acts_only_on_its_syncs_and_takes_several_to_follow_a_step() {
    let options = Options {
        policies: vec![PolicyKind::HpaKeda],
        ..Options::default()
    };
    let comparison = run(STEP_POOL, &step(), &options);
    let changes = &policy(&comparison, "hpa-keda").timeline.replicas[1..];
    assert!(!changes.is_empty());
    // Every change falls on the HPA's 15 s sync grid.
    let phase = changes[0].0 % 15.0;
    for (at, _) in changes {
        let off = (at - phase) % 15.0;
        assert!(
            off < 1e-6 || 15.0 - off < 1e-6,
            "change at {at} s is off the sync grid"
        );
    }
    // The step needs about 150 / 7 = 22 workers; from 1 the legacy limit allows ×2 (at least
    // 4) per sync: 4, 8, 16, 22: at least three syncs, 30 s, after the first one.
    let first_up = changes[0].0;
    assert!((100.0..115.0 + 1e-6).contains(&first_up), "{first_up}");
    let peak = changes.iter().map(|(_, r)| *r).max().unwrap_or(0);
    let reached = changes
        .iter()
        .find(|(_, r)| *r == peak)
        .map_or(0.0, |(t, _)| *t);
    assert!(reached - first_up >= 30.0, "reached {peak} at {reached}");
    assert!(changes[0].1 <= 4, "{:?}", changes[0]);
    // Scale-down stabilization: a proposal holds for 300 s. The step's proposals (150 busy / 7
    // per worker ≈ 22) keep the pool at 20 or more until 300 s after the step ends (less one
    // sync for the grid's phase), however quiet it is after the step.
    let held = changes
        .iter()
        .filter(|(at, _)| (400.0..400.0 + 300.0 - 15.0).contains(at))
        .all(|(_, r)| *r >= 20);
    assert!(held, "{changes:?}");
    assert_eq!(changes.last().map(|(_, r)| *r), Some(1), "{changes:?}");
}

#[test]
fn knative_panics_within_a_tick_of_a_doubled_load_and_never_scales_down_in_panic() {
    let options = Options {
        policies: vec![PolicyKind::Knative, PolicyKind::Asyncpool],
        ..Options::default()
    };
    let comparison = run(STEP_POOL, &step(), &options);
    let knative = &policy(&comparison, "knative").timeline.replicas;
    // The load far more than doubles at t = 100: the first tick whose panic window holds it
    // (a 1 s scrape, a 2 s tick) scales up, by far more than the stable window would.
    let first_up = knative
        .iter()
        .find(|(t, _)| *t >= 100.0)
        .expect("knative scales up");
    assert!(first_up.0 <= 100.0 + 1.0 + 2.0 + 1e-6, "{first_up:?}");
    // In panic it never scales down; it leaves panic 60 s after the last tick over the
    // threshold, which during the step is its first seconds.
    let during = knative.iter().filter(|(t, _)| (100.0..160.0).contains(t));
    let sizes: Vec<u32> = during.map(|(_, r)| *r).collect();
    assert!(sizes.windows(2).all(|w| w[1] >= w[0]), "{sizes:?}");
    // asyncpool meets the same step within a second.
    let ours = policy(&comparison, "asyncpool");
    assert!(
        ours.first_scale_up_seconds
            .is_some_and(|t| (100.0..101.0).contains(&t))
    );
}

#[test]
fn a_pool_that_cannot_serve_ends_its_run_with_the_requests_unserved() {
    // Paused at zero on a shared Redis queue: nothing ever pulls the jobs.
    let spec = "  minReplicas: 0\n  maxReplicas: 4\n  concurrency: 10\n  paused: true\n  \
                queue: {source: redis, redis: {url: 'redis://queue:6379', key: jobs}}\n";
    let trace = Trace::new(vec![Request {
        arrival: 1.0,
        service: 1.0,
    }])
    .unwrap();
    let options = Options {
        policies: vec![PolicyKind::Asyncpool],
        ..Options::default()
    };
    let comparison = run(spec, &trace, &options);
    let ours = policy(&comparison, "asyncpool");
    assert_eq!((ours.served, ours.refused), (0, 1));
    assert_eq!(ours.pod_seconds, 0.0);
}

#[test]
fn every_policy_serves_a_steady_load_within_its_bounds() {
    let generator = Generator::parse("steady:rate=30,duration=5m", Some("exp:500ms")).unwrap();
    let comparison = run(
        "  minReplicas: 2\n  maxReplicas: 6\n  concurrency: 10\n",
        &generator.generate(1).unwrap(),
        &Options::default(),
    );
    for p in &comparison.policies {
        assert!(p.peak_replicas <= 6, "{}: {}", p.policy, p.peak_replicas);
        assert!(
            p.mean_replicas >= 2.0 - 1e-9,
            "{}: {}",
            p.policy,
            p.mean_replicas
        );
        assert_eq!(p.refused + p.timed_out + p.cut, 0, "{}", p.policy);
    }
    // No policy beats the bound.
    let bound = policy(&comparison, "clairvoyant").pod_seconds;
    assert!(
        comparison
            .policies
            .iter()
            .all(|p| p.pod_seconds >= bound - 1e-6)
    );
}

// --- the command line -------------------------------------------------------------------------

fn command(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-asyncpool"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("run kubectl-asyncpool")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_command_compares_every_policy_and_writes_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("run.svg");
    let output = command(&[
        "simulate",
        "-f",
        "samples/chat-api.yaml",
        "--generate",
        "steady:rate=20,duration=2m",
        "-o",
        "json",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let names: Vec<&str> = json["policies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["policy"].as_str())
        .collect();
    assert_eq!(
        names,
        ["asyncpool", "hpa-keda", "knative", "fixed", "clairvoyant"]
    );
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("hpa-keda"));
    let table = command(&[
        "simulate",
        "-f",
        "samples/chat-api.yaml",
        "--trace",
        "benches/traces/azure-llm-2023-code.csv",
        "--policies",
        "asyncpool,knative",
    ]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("8819 requests") && text.contains("knative"),
        "{text}"
    );
}

#[test]
fn bad_input_names_its_line_exits_non_zero_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("plot.svg");
    let cases: [(&str, &str); 7] = [
        (
            "arrival_s,service_s\n0,1\n1e12,1\n",
            "line 3: arrival 1000000000000 s is more than 31 days",
        ),
        (
            "arrival_s,service_s\n0,1e6\n",
            "line 2: service time 1000000 s is longer than a day",
        ),
        (
            "arrival_s,service_s\n0,1\n1,x\n",
            "line 3: service_s \"x\" is not a number",
        ),
        (
            "arrival_s,service_s\n0,1\n2,1\n1,1\n",
            "line 4: arrival 1 s is earlier",
        ),
        ("arrival_s,service_s\n0,NaN\n", "line 2: service time NaN"),
        ("arrival_s,service_s\n0,-1\n", "line 2: service time -1"),
        ("arrival_s,service_s\n", "the trace has no requests"),
    ];
    for (text, expected) in cases {
        let trace = dir.path().join("trace.csv");
        std::fs::write(&trace, text).unwrap();
        let output = command(&[
            "simulate",
            "-f",
            "samples/chat-api.yaml",
            "--trace",
            trace.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ]);
        assert!(!output.status.success(), "{text:?} was accepted");
        assert!(
            stderr(&output).contains(expected),
            "{text:?}: {}",
            stderr(&output)
        );
        assert!(output.stdout.is_empty());
        assert!(!plot.exists() && !Path::new(&format!("{}.partial", plot.display())).exists());
    }
    // A flag that would be ignored is refused rather than silently dropped.
    let output = command(&[
        "simulate",
        "-f",
        "samples/chat-api.yaml",
        "--trace",
        "benches/traces/azure-llm-2023-code.csv",
        "--service",
        "1s",
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--service applies to --generate only"));
}

#[test]
fn an_invalid_pool_gets_the_api_servers_message() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("pool.yaml");
    std::fs::write(
        &manifest,
        std::fs::read_to_string("samples/chat-api.yaml")
            .unwrap()
            .replace("minReplicas: 1", "minReplicas: 30"),
    )
    .unwrap();
    let output = command(&[
        "simulate",
        "-f",
        manifest.to_str().unwrap(),
        "--generate",
        "flash-crowd",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("spec: Invalid value: minReplicas must not be greater than maxReplicas"),
        "{message}"
    );
}
