//! The fault suite: one pool of real workers (the test app behind the real sidecar, on the local
//! cluster's real nodes) under a steady open-loop load through its Service, with two operator
//! replicas (leader election on), while the cluster breaks in turn: sidecars go silent and then
//! answer garbage, the operator loses the pod network, the API server and etcd stop, the leader
//! is killed mid-scale-up and mid-scale-down, a bad template crash-loops, workers recycle at
//! their max-requests. For each fault it counts every request's outcome, the smallest size the
//! pool had while the fault lasted, how long the pool took to reach the right size after it, and
//! the operator's API writes (from the API server's audit log: the operator authenticates as its
//! own service account with the RBAC the chart ships).
//!
//! Every fault is short here (the test command runs this); `benches/faults.sh` runs them as long
//! as the reliability promises state them (`ASYNCPOOL_FAULTS=full`) and prints the table that
//! docs/reliability.md quotes.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use asyncpool_testkit::audit;
use asyncpool_testkit::cluster::eventually;
use asyncpool_testkit::identity;
use asyncpool_testkit::load::{Load, LoadReport, Outcome};
use asyncpool_testkit::operator::OperatorProcess;
use asyncpool_testkit::real_pool::{RealPools, ReplicaHistory, Worker};
use asyncpool_testkit::repo_root;
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio::time::{Instant, sleep};

const POOL: &str = "api";
/// Each request holds a worker for half a second; with 0.5 streams a second of 8 s among them,
/// the base load keeps ~12.5 requests in the app: 3 workers at 5 each, in the middle of the
/// band where 3 is right (10 to 15). +21/s brings ~23 (5 workers), +40/s more than 6 can take.
const SLOW_PATH: &str = "/sleep?s=0.5";
const BASE_RATE: u32 = 20;
const BASE_STREAMS: f64 = 0.5;
const TARGET_PER_WORKER: u32 = 5;
const AT_REST: i32 = 3;
const GROWN_RATE: u32 = 21;
const GROWN: i32 = 5;
const BURST_RATE: u32 = 40;
const MAX: i32 = 6;

/// How long each fault lasts.
struct Durations {
    silent: Duration,
    garbage: Duration,
    network_cut: Duration,
    api_server_down: Duration,
    etcd_down: Duration,
    crash_loop: Duration,
    recycling: Duration,
    /// The operator's lease duration and renewal: a killed leader's lease runs out after it.
    lease: (&'static str, &'static str),
}

impl Durations {
    fn from_env() -> Self {
        if std::env::var("ASYNCPOOL_FAULTS").as_deref() == Ok("full") {
            Self {
                silent: Duration::from_secs(20),
                garbage: Duration::from_secs(20),
                network_cut: Duration::from_secs(20),
                api_server_down: Duration::from_secs(30),
                etcd_down: Duration::from_secs(30),
                crash_loop: Duration::from_secs(60),
                recycling: Duration::from_secs(60),
                lease: ("15s", "5s"),
            }
        } else {
            Self {
                silent: Duration::from_secs(5),
                garbage: Duration::from_secs(6),
                network_cut: Duration::from_secs(6),
                api_server_down: Duration::from_secs(8),
                etcd_down: Duration::from_secs(8),
                crash_loop: Duration::from_secs(15),
                recycling: Duration::from_secs(25),
                lease: ("6s", "2s"),
            }
        }
    }
}

/// One line of the table.
struct Row {
    fault: &'static str,
    /// When the fault's phase began and ended: the base load's requests sent meanwhile count.
    window: (Instant, Instant),
    /// The extra load started for the phase, all of it.
    extra: Vec<Outcome>,
    /// Filled in once every request has ended.
    load: LoadReport,
    /// The smallest `spec.replicas` while the fault lasted, and what the load needed.
    smallest: Option<i32>,
    needed: i32,
    /// From the end of the fault to the right size (ready), when the fault moved it.
    recovery: Option<Duration>,
    /// The operator's API writes while the phase lasted, by resource.
    writes: BTreeMap<String, usize>,
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.load;
        write!(
            f,
            "| {} | {} / {} / {} / {} | {} / {} / {} | {} (needs {}) | {} | {} ({}) |",
            self.fault,
            l.sent,
            l.succeeded,
            l.refused,
            l.lost,
            l.streams_sent,
            l.streams_whole,
            l.streams_cut,
            self.smallest.map_or("-".into(), |s| s.to_string()),
            self.needed,
            self.recovery
                .map_or("-".into(), |r| format!("{:.1} s", r.as_secs_f64())),
            self.writes.values().sum::<usize>(),
            self.writes
                .iter()
                .map(|(resource, n)| format!("{resource} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        )
    }
}

/// An iptables rule that exists as long as the value, in a node's network namespace or the host's.
struct Rule {
    netns: Option<String>,
    table: &'static str,
    chain: &'static str,
    spec: Vec<String>,
}

impl Rule {
    fn insert(
        netns: Option<&str>,
        table: &'static str,
        chain: &'static str,
        spec: &[&str],
    ) -> Self {
        let rule = Self {
            netns: netns.map(str::to_owned),
            table,
            chain,
            spec: spec.iter().map(|s| s.to_string()).collect(),
        };
        let out = rule.iptables("-I").expect("run iptables");
        assert!(
            out.status.success(),
            "iptables -I {chain} {spec:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        rule
    }

    fn iptables(&self, action: &str) -> std::io::Result<std::process::Output> {
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, "iptables"]);
                c
            }
            None => Command::new("iptables"),
        };
        command
            .args(["-w", "-t", self.table, action, self.chain])
            .args(&self.spec)
            .output()
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let _ = self.iptables("-D");
    }
}

/// The network namespace and address of real node `real-node-I`.
fn node_of(worker: &Worker) -> (String, String) {
    let node = worker.node.as_deref().expect("worker scheduled");
    let index = node.strip_prefix("real-node-").expect("a real node");
    (
        format!("asyncpool-node-{index}"),
        format!("10.88.{index}.2"),
    )
}

/// tests/apps/garbage_admin.py in a node's network namespace, counting the connections it
/// answered with garbage.
struct GarbageAdmin {
    /// Killed on drop.
    _child: tokio::process::Child,
    answered: Arc<AtomicU64>,
}

impl GarbageAdmin {
    async fn start(netns: &str, address: &str, port: u16) -> Self {
        let script = repo_root().join("tests/apps/garbage_admin.py");
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", netns, "python3", "-u"])
            .arg(script)
            .args([address, &port.to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the garbage admin port");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        assert!(
            matches!(first, Ok(Ok(Some(ref l))) if l == "listening"),
            "garbage admin port did not start: {first:?}"
        );
        let answered = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&answered);
        tokio::spawn(async move {
            while let Ok(Some(_)) = lines.next_line().await {
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        Self {
            _child: child,
            answered,
        }
    }
}

/// The pool's operators: the leader and its standby, replaced as they are killed.
struct Operators<'a> {
    pools: &'a RealPools,
    kubeconfig: std::path::PathBuf,
    lease: (&'static str, &'static str),
    running: Vec<OperatorProcess>,
    started: usize,
}

impl Operators<'_> {
    async fn add(&mut self) {
        self.started += 1;
        let identity = format!("replica-{}", self.started);
        let (duration, renew) = self.lease;
        let operator = self
            .pools
            .operator_as(
                &self.kubeconfig,
                &identity,
                &["--lease-duration", duration, "--lease-renew", renew],
            )
            .await;
        self.running.push(operator);
    }

    /// The index of the replica that holds the lease.
    async fn leader(&self) -> usize {
        eventually("a leader", Duration::from_secs(60), || async {
            for (i, operator) in self.running.iter().enumerate() {
                if operator
                    .metrics()
                    .await
                    .is_some_and(|m| m.lines().any(|l| l == "asyncpool_leader 1"))
                {
                    return Some(i);
                }
            }
            None
        })
        .await
    }

    /// Restarts the replicas that exited, as their pod's kubelet would.
    async fn revive(&mut self) {
        let before = self.running.len();
        self.running.retain_mut(|operator| !operator.has_exited());
        for _ in self.running.len()..before {
            self.add().await;
        }
    }

    /// SIGKILLs the leader and starts a new standby, so that two replicas run again.
    async fn kill_leader(&mut self) {
        let leader = self.leader().await;
        let mut killed = self.running.remove(leader);
        killed.kill();
        self.add().await;
    }
}

struct Suite<'a> {
    pools: &'a RealPools,
    history: ReplicaHistory,
    base: Load,
    operator_user: String,
    rows: Vec<Row>,
}

/// What a fault's row needs from when it began.
struct Phase {
    began: Instant,
    writes: BTreeMap<String, usize>,
}

impl Suite<'_> {
    fn begin(&self) -> Phase {
        Phase {
            began: Instant::now(),
            writes: self.writes(),
        }
    }

    /// The operator's writes so far, by resource (`deployments`, `asyncworkerpools/status`,
    /// `pods`, `events`, `leases`, ...).
    fn writes(&self) -> BTreeMap<String, usize> {
        let mut writes = BTreeMap::new();
        for request in audit::requests_by(&self.operator_user) {
            if request.is_write() {
                let resource = match &request.subresource {
                    Some(sub) => format!("{}/{sub}", request.resource),
                    None => request.resource.clone(),
                };
                *writes.entry(resource).or_default() += 1;
            }
        }
        writes
    }

    /// Waits for the pool at `want` Ready workers staying, and says how long that took since
    /// `since`.
    async fn right_size(&self, want: i32, since: Instant, limit: Duration) -> Duration {
        self.pools.wait_staying(POOL, want, limit).await;
        since.elapsed()
    }

    fn end(
        &mut self,
        fault: &'static str,
        phase: Phase,
        extra: Vec<Outcome>,
        needed: i32,
        recovery: Option<Duration>,
    ) {
        let row = Row {
            fault,
            window: (phase.began, Instant::now()),
            load: LoadReport::of(&extra),
            extra,
            smallest: self.history.min_since(phase.began),
            needed,
            recovery,
            writes: self
                .writes()
                .into_iter()
                .map(|(resource, n)| {
                    let before = phase.writes.get(&resource).copied().unwrap_or(0);
                    (resource, n - before)
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        };
        // The load's columns are final once every request has ended (see the end of the test).
        println!("{row}");
        self.rows.push(row);
    }

    /// Extra load on top of the base, `rate` requests a second.
    async fn burst(&self, rate: u32) -> Load {
        self.pools.service_load_of(POOL, rate, SLOW_PATH).await
    }
}

#[tokio::test]
async fn the_pool_loses_no_request_through_faults() {
    let durations = Durations::from_env();
    let pools = RealPools::setup("faults").await;
    let _pod_logs = asyncpool_testkit::real_node::PodLogKeeper::start(&pools.ns.name);
    let account = "asyncpool-operator";
    let kubeconfig =
        identity::operator_service_account(&pools.client, &pools.ns.name, account).await;
    let operator_user = format!("system:serviceaccount:{}:{account}", pools.ns.name);
    let mut operators = Operators {
        pools: &pools,
        kubeconfig,
        lease: durations.lease,
        running: Vec::new(),
        started: 0,
    };
    operators.add().await;
    operators.add().await;
    operators.leader().await;

    pools
        .create(
            POOL,
            json!({
                "minReplicas": 2,
                "maxReplicas": MAX,
                "queue": {"source": "proxy", "targetPerWorker": TARGET_PER_WORKER},
                "supervision": {"drainTimeout": "20s"},
                // Quick windows, so that the suite is short; a scale-down delay as a user would
                // set one, so that a reading's blip is not a decision.
                "scaling": {"stableWindow": "4s", "panicWindow": "1s", "scaleDownDelay": "10s", "metricsTimeout": "2s"},
            }),
        )
        .await;
    pools.wait_ready(POOL, 2, Duration::from_secs(90)).await;
    let history = ReplicaHistory::start(&pools.deployments, POOL).await;
    let base = pools
        .load_through_service(POOL, BASE_RATE, SLOW_PATH, BASE_STREAMS)
        .await;
    let mut suite = Suite {
        pools: &pools,
        history,
        base,
        operator_user,
        rows: Vec::new(),
    };
    suite
        .right_size(AT_REST, Instant::now(), Duration::from_secs(90))
        .await;

    // --- A third of the sidecars go silent, then answer garbage, then come back -------------
    let phase = suite.begin();
    let workers = suite.pools.workers(POOL).await.expect("workers");
    let victim = workers.iter().find(|w| w.ready).expect("a ready worker");
    let victim_ip = victim.ip.clone().expect("pod IP");
    let (netns, node_address) = node_of(victim);
    // Every packet to its admin port dropped: the operator's readers see nothing at all. The
    // rule stays while the garbage answers, so that connections opened before cannot resume.
    let silent = Rule::insert(
        Some(&netns),
        "filter",
        "FORWARD",
        &[
            "-d", &victim_ip, "-p", "tcp", "--dport", "9090", "-j", "DROP",
        ],
    );
    sleep(durations.silent).await;
    let garbage_port = 19090;
    let garbage = GarbageAdmin::start(&netns, &node_address, garbage_port).await;
    // New connections to its admin port reach the garbage instead.
    let destination = format!("{node_address}:{garbage_port}");
    let redirect = Rule::insert(
        Some(&netns),
        "nat",
        "PREROUTING",
        &[
            "-d",
            &victim_ip,
            "-p",
            "tcp",
            "--dport",
            "9090",
            "-j",
            "DNAT",
            "--to-destination",
            &destination,
        ],
    );
    sleep(durations.garbage).await;
    drop((redirect, silent));
    let answered = garbage.answered.load(Ordering::Relaxed);
    drop(garbage);
    assert!(
        answered >= 2,
        "the operator met the garbage only {answered} times: the fault did not happen"
    );
    suite.end(
        "1 of 3 sidecars silent, then garbage",
        phase,
        Vec::new(),
        AT_REST,
        None,
    );

    // --- The operator cut off from the pods while the load grows -----------------------------
    let phase = suite.begin();
    let burst = suite.burst(GROWN_RATE).await;
    let ended = {
        let _cut = Rule::insert(
            None,
            "filter",
            "OUTPUT",
            &[
                "-d",
                "10.89.0.0/16",
                "-p",
                "tcp",
                "--dport",
                "9090",
                "-j",
                "DROP",
            ],
        );
        sleep(durations.network_cut).await;
        Instant::now()
    };
    let recovery = suite
        .right_size(GROWN, ended, Duration::from_secs(60))
        .await;
    let extra = burst.stop_with_outcomes().await.1;
    suite.end(
        "operator ↔ pods network cut (load grows)",
        phase,
        extra,
        AT_REST,
        Some(recovery),
    );
    suite
        .right_size(AT_REST, Instant::now(), Duration::from_secs(60))
        .await;

    // --- The API server, then etcd, stopped while the load grows -----------------------------
    for (component, down, fault) in [
        (
            "kube-apiserver",
            durations.api_server_down,
            "kube-apiserver stopped (load grows)",
        ),
        ("etcd", durations.etcd_down, "etcd stopped (load grows)"),
    ] {
        let phase = suite.begin();
        let burst = suite.burst(GROWN_RATE).await;
        cluster(&["stop", component]);
        sleep(down).await;
        cluster(&["start", component]);
        let ended = Instant::now();
        // A leader that could not renew its lease exits; its Deployment would restart it.
        operators.revive().await;
        let recovery = suite
            .right_size(GROWN, ended, Duration::from_secs(90))
            .await;
        let extra = burst.stop_with_outcomes().await.1;
        suite.end(fault, phase, extra, AT_REST, Some(recovery));
        suite
            .right_size(AT_REST, Instant::now(), Duration::from_secs(60))
            .await;
    }

    // --- The leader killed mid-scale-up, then mid-scale-down ----------------------------------
    let phase = suite.begin();
    let burst = suite.burst(BURST_RATE).await;
    wait_for_size(&suite.history, |size| size > AT_REST).await;
    let killed_at = Instant::now();
    let size_at_kill = suite.history.at(killed_at).expect("a size");
    operators.kill_leader().await;
    let recovery = suite
        .right_size(MAX, killed_at, Duration::from_secs(90))
        .await;
    let smallest = suite.history.min_since(killed_at);
    assert!(
        smallest >= Some(size_at_kill),
        "the new leader shrank the pool from {size_at_kill} to {smallest:?} under the same load"
    );
    let phase_down = Phase {
        began: Instant::now(),
        writes: suite.writes(),
    };
    let extra = burst.stop_with_outcomes().await.1;
    suite.end(
        "leader SIGKILLed mid-scale-up",
        phase,
        extra,
        AT_REST,
        Some(recovery),
    );
    wait_for_size(&suite.history, |size| size < MAX).await;
    let killed_at = Instant::now();
    operators.kill_leader().await;
    let recovery = suite
        .right_size(AT_REST, killed_at, Duration::from_secs(90))
        .await;
    suite.end(
        "leader SIGKILLed mid-scale-down",
        phase_down,
        Vec::new(),
        AT_REST,
        Some(recovery),
    );

    // --- A template whose worker cannot boot ---------------------------------------------------
    let phase = suite.begin();
    let mut broken = asyncpool_testkit::real_node::app_container();
    broken["args"] = json!([
        "no_such_module:app",
        "--host",
        "127.0.0.1",
        "--port",
        "8000"
    ]);
    suite.pools.set_app(POOL, broken).await;
    // The fault is on once the new template's worker has failed at least once.
    eventually(
        "a worker of the broken template restarting",
        Duration::from_secs(60),
        || async {
            let workers = suite.pools.workers(POOL).await?;
            workers.iter().any(|w| w.restarts > 0).then_some(())
        },
    )
    .await;
    sleep(durations.crash_loop).await;
    let serving = suite
        .pools
        .workers(POOL)
        .await
        .expect("workers")
        .iter()
        .filter(|w| w.ready && !w.deleting)
        .count();
    assert!(
        serving >= AT_REST as usize,
        "a template that cannot boot took serving workers away: {serving} left"
    );
    suite
        .pools
        .set_app(POOL, asyncpool_testkit::real_node::app_container())
        .await;
    let ended = Instant::now();
    let recovery = suite
        .right_size(AT_REST, ended, Duration::from_secs(90))
        .await;
    suite.end(
        "template crash-loops, then fixed",
        phase,
        Vec::new(),
        AT_REST,
        Some(recovery),
    );

    // --- Workers recycled at their max-requests (a leak's remedy) ------------------------------
    let phase = suite.begin();
    let before: Vec<String> = names(&suite.pools.workers(POOL).await.expect("workers"));
    // ~7 requests a second reach each worker: each recycles every ~15 s.
    suite
        .pools
        .patch_spec(
            POOL,
            json!({"supervision": {"maxRequests": 100, "maxRequestsJitter": 0}}),
        )
        .await;
    sleep(durations.recycling).await;
    suite
        .pools
        .patch_spec(POOL, json!({"supervision": {"maxRequests": null}}))
        .await;
    let ended = Instant::now();
    let recovery = suite
        .right_size(AT_REST, ended, Duration::from_secs(90))
        .await;
    let after = names(&suite.pools.workers(POOL).await.expect("workers"));
    let recycled = before.iter().filter(|n| !after.contains(n)).count();
    assert!(
        recycled >= 1,
        "no worker was recycled: {before:?} → {after:?}"
    );
    suite.end(
        "workers recycled at max-requests",
        phase,
        Vec::new(),
        AT_REST,
        Some(recovery),
    );

    let Suite { base, mut rows, .. } = suite;
    let (base, outcomes) = base.stop_with_outcomes().await;
    for row in &mut rows {
        let (began, ended) = row.window;
        let sent_meanwhile = outcomes
            .iter()
            .filter(|o| o.sent >= began && o.sent < ended);
        row.load = LoadReport::of(sent_meanwhile.chain(&row.extra));
    }
    println!(
        "| fault | requests sent / ok / 503 / lost | streams sent / whole / cut | smallest size | recovery | API writes |"
    );
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        println!("{row}");
    }
    println!("whole run: {base}");
    println!("the operators' leadership and scale decisions:");
    for line in decisions(&pools.ns.name) {
        println!("  {line}");
    }
    for row in &rows {
        assert_eq!(row.load.lost, 0, "{}: {}", row.fault, row.load);
        assert_eq!(row.load.streams_cut, 0, "{}: {}", row.fault, row.load);
        assert!(row.load.sent > 0, "{}: no load", row.fault);
        if let Some(smallest) = row.smallest {
            assert!(
                smallest >= row.needed,
                "{}: the pool went down to {smallest} while its load needed {}",
                row.fault,
                row.needed
            );
        }
    }
    assert_eq!(base.lost, 0, "{base}");
    assert_eq!(base.streams_cut, 0, "{base}");
    drop(operators);
}

fn names(workers: &[Worker]) -> Vec<String> {
    workers.iter().map(|w| w.name.clone()).collect()
}

/// Waits until the Deployment's size satisfies `wanted` (seen by the watch).
async fn wait_for_size(history: &ReplicaHistory, wanted: impl Fn(i32) -> bool) {
    eventually(
        "the pool to start resizing",
        Duration::from_secs(60),
        || async {
            history
                .values()
                .last()
                .copied()
                .filter(|size| wanted(*size))
        },
    )
    .await;
}

/// The operator replicas' leadership changes and scale decisions, in time order, from their
/// logs: when the suite fails, what they did and when (the logs themselves stay in
/// target/e2e-logs, which a CI run does not keep).
fn decisions(namespace: &str) -> Vec<String> {
    let prefix = format!("{namespace}-replica-");
    let mut lines = Vec::new();
    let logs = std::fs::read_dir(repo_root().join("target/e2e-logs"));
    for entry in logs.into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(replica) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".log"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines().map(without_colours) {
            let Some((at, _)) = line.split_once(' ') else {
                continue;
            };
            // A decision's line without its span: `from=… to=… reason=…`.
            let event = match line.split_once(&format!(" pool={POOL} from=")) {
                Some((_, decision)) if line.contains(" scaled ") => {
                    format!("scaled from={decision}")
                }
                _ if ["became leader", "operator stopped"]
                    .iter()
                    .any(|event| line.contains(event)) =>
                {
                    line[at.len()..].trim().to_owned()
                }
                _ => continue,
            };
            let event: String = event.chars().take(200).collect();
            lines.push(format!("{at} replica-{replica}: {event}"));
        }
    }
    // Each line starts with its RFC 3339 timestamp.
    lines.sort();
    lines
}

/// `line` without its ANSI colour codes.
fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// `scripts/cluster ARGS` (stopping and starting a control-plane component).
fn cluster(args: &[&str]) {
    let out = Command::new(repo_root().join("scripts/cluster"))
        .args(args)
        .output()
        .expect("run scripts/cluster");
    asyncpool_testkit::cluster::succeeded(out, &format!("scripts/cluster {}", args.join(" ")));
}
