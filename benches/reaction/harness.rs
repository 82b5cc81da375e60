//! One pool count: setup, settling, trials, resets, the cost at rest, the calibration.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::Duration;

use asyncpool::crd::AsyncWorkerPool;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until, timeout_at};

use asyncpool_testkit::bench::{
    BenchResult, Namespaces, Operator, output_dir, poll_until, reaction_pool,
};

use crate::stats::ms;
use crate::workers::{Workers, report_load, watch_stream_open};
use crate::writes::{KindWrites, writes_in};
use crate::{BENCH, Mode, REST_LOAD, SETTLE_TIMEOUT, TRIAL_LOAD, TRIAL_TIMEOUT};
use asyncpool_testkit::deployments::{Change, Deployments};

#[derive(Debug, Clone)]
pub struct Trial {
    pub mode: Mode,
    pub pools: usize,
    pub round: usize,
    pub pool: String,
    /// `None`: the Deployment did not change within the timeout.
    pub reaction: Option<Duration>,
    /// The POST to the sidecar, part of the reaction.
    pub report: Duration,
    pub replicas: Option<i32>,
}

pub struct RoundFigures {
    pub mode: Mode,
    pub reconciles: f64,
    pub reconcile_seconds: f64,
    /// Watch streams the operator opened (each counts its first line) and polls it made, since
    /// it started.
    pub watch_streams: f64,
    pub polls: f64,
    pub operator_cpu: Option<Duration>,
    pub wall: Duration,
}

pub struct RestFigures {
    pub mode: Mode,
    pub pools: usize,
    pub idle: Vec<(&'static str, KindWrites)>,
    pub idle_reconciles: f64,
    pub idle_cpu: Option<Duration>,
    pub after_burst: Vec<(&'static str, KindWrites)>,
    pub window: Duration,
}

/// Write → watch-event latencies of this process's own writes, in ms.
#[derive(Debug, Default)]
pub struct Calibration {
    /// From sending the PATCH.
    pub total: Vec<f64>,
    /// From its response.
    pub after_response: Vec<f64>,
}

pub struct Bench {
    client: Client,
    kubeconfig: PathBuf,
    pub namespace: String,
    pub names: Vec<String>,
    pools: Api<AsyncWorkerPool>,
    pub workers: Workers,
    deployments: Deployments,
    /// When each pool was last reset.
    reset_at: HashMap<String, Instant>,
    pub logs: PathBuf,
}

/// A pool's status as the settled state needs it: desired 1, load `load`, no pending scale
/// request, every worker reporting, and up to date with the spec.
fn settled_status(pool: &AsyncWorkerPool, load: u64) -> bool {
    let Some(status) = &pool.status else {
        return false;
    };
    status.desired_replicas == 1
        && status.load == Some(load as f64)
        && status.handled_replicas_request.is_none()
        && status.observed_generation == pool.metadata.generation
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "MetricsAvailable" && c.reason == "AllWorkersReport")
}

impl Bench {
    pub async fn setup(
        client: &Client,
        kubeconfig: &Path,
        namespaces: &Namespaces,
        count: usize,
    ) -> BenchResult<Self> {
        let namespace = namespaces
            .create(client, &format!("bench-reaction-{count}"))
            .await?;
        let logs = output_dir(BENCH).join("logs").join(&namespace);
        std::fs::create_dir_all(&logs)?;
        let pools: Api<AsyncWorkerPool> = Api::namespaced(client.clone(), &namespace);
        let names: Vec<String> = (0..count).map(|i| format!("p{i:03}")).collect();
        for name in &names {
            pools
                .create(&PostParams::default(), &reaction_pool(name, 1, 10)?)
                .await?;
        }
        let workers = Workers::start(
            client,
            &namespace,
            asyncpool_testkit::binary("asyncpool-sidecar"),
            logs.clone(),
        );
        let deployments = Deployments::start(client, &namespace);
        Ok(Self {
            client: client.clone(),
            kubeconfig: kubeconfig.to_owned(),
            namespace,
            names,
            pools,
            workers,
            deployments,
            reset_at: HashMap::new(),
            logs,
        })
    }

    /// Every pool at rest with load `load`: 1 replica, one pod whose sidecar reports, and the
    /// operator's status saying so.
    pub async fn wait_all_settled(&self, load: u64) -> BenchResult<()> {
        poll_until(
            &format!("all {} pools settled at load {load}", self.names.len()),
            SETTLE_TIMEOUT,
            Duration::from_millis(250),
            || async {
                let list = self.pools.list(&ListParams::default()).await.ok()?;
                let by_name: HashMap<String, &AsyncWorkerPool> =
                    list.items.iter().map(|p| (p.name_any(), p)).collect();
                self.names
                    .iter()
                    .all(|name| {
                        self.deployments.replicas(name) == Some(1)
                            && self.workers.pods(name) == 1
                            && self.workers.reporting(name).len() == 1
                            && by_name.get(name).is_some_and(|p| settled_status(p, load))
                    })
                    .then_some(())
            },
        )
        .await
    }

    /// One pool at rest with load 0 (see `wait_all_settled`) and, in watch mode, the operator's
    /// watch stream open on its sidecar; returns the sidecar's address.
    pub async fn wait_settled(&self, pool: &str, mode: Mode) -> BenchResult<IpAddr> {
        poll_until(
            &format!("pool {pool} settled"),
            SETTLE_TIMEOUT,
            Duration::from_millis(50),
            || async {
                if self.deployments.replicas(pool) != Some(1) || self.workers.pods(pool) != 1 {
                    return None;
                }
                let ip = match self.workers.reporting(pool).as_slice() {
                    [ip] => *ip,
                    _ => return None,
                };
                if mode == Mode::Watch && !watch_stream_open(ip) {
                    return None;
                }
                let object = self.pools.get(pool).await.ok()?;
                settled_status(&object, 0).then_some(ip)
            },
        )
        .await
    }

    /// Back to rest after a trial: load 0, then `kubectl scale` to 1 (the operator moves there
    /// at once and reseeds its scaler), then the request cleared so that the next reset is a
    /// change again.
    pub async fn reset(&mut self, pool: &str) -> BenchResult<()> {
        if !self.workers.report_all(pool, 0).await {
            return Err(format!("a sidecar of {pool} refused load 0").into());
        }
        // The operator must have seen load 0 before the scale request reseeds its scaler, or
        // the fresh scaler would scale up again on the stale 25.
        poll_until(
            &format!("{pool} status load 0"),
            SETTLE_TIMEOUT,
            Duration::from_millis(50),
            || async { (self.pools.get(pool).await.ok()?.status?.load == Some(0.0)).then_some(()) },
        )
        .await?;
        self.pools
            .patch_scale(
                pool,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 1}})),
            )
            .await?;
        poll_until(
            &format!("{pool} scaled back to 1"),
            SETTLE_TIMEOUT,
            Duration::from_millis(50),
            || async {
                let handled = self
                    .pools
                    .get(pool)
                    .await
                    .ok()?
                    .status?
                    .handled_replicas_request;
                (handled == Some(1) && self.deployments.replicas(pool) == Some(1)).then_some(())
            },
        )
        .await?;
        self.pools
            .patch(
                pool,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": null}})),
            )
            .await?;
        self.reset_at.insert(pool.to_owned(), Instant::now());
        Ok(())
    }

    /// Waits until `pool` has been left alone for `quiet` since its last reset, so that a trial
    /// starts from rest rather than from the aftermath of the previous one: after a size change
    /// the condition messages keep moving for about a stable window plus the scale-down delay,
    /// the operator writes its status every 2 s, and each write comes back on its pool watch as
    /// one more reconcile. Before the scaler counted the present load in its 1 s window (commit
    /// 4b7fa92), those extra samples in the current second could dilute a step and hold the
    /// pool until the next tick, a second later (docs/benchmarks.md).
    pub async fn quiet(&self, pool: &str, quiet: Duration) {
        if let Some(at) = self.reset_at.get(pool) {
            sleep_until(*at + quiet).await;
        }
    }

    /// One trial on `pool`; the pool must be settled.
    pub async fn trial(
        &mut self,
        pool: &str,
        ip: IpAddr,
    ) -> BenchResult<(Option<Change>, Duration, Instant)> {
        self.deployments.drain();
        let t0 = Instant::now();
        if !report_load(ip, TRIAL_LOAD).await {
            return Err(format!("the sidecar of {pool} refused load {TRIAL_LOAD}").into());
        }
        let report = t0.elapsed();
        let change = self
            .deployments
            .next_change(pool, 1, t0 + TRIAL_TIMEOUT)
            .await;
        Ok((change, report, t0))
    }

    pub async fn operator(&self, mode: Mode, round: usize) -> BenchResult<Operator> {
        let log = self
            .logs
            .join(format!("operator-{}-round{round}.log", mode.name()));
        let operator = Operator::start(&self.kubeconfig, &self.namespace, mode, log).await?;
        // Ready means caches synced; a fresh operator must also have read every sidecar and
        // decided every pool before a trial means anything.
        let pools = self.names.len() as f64;
        let label = format!("mode=\"{}\"", mode.name());
        poll_until(
            "the operator reading every sidecar",
            SETTLE_TIMEOUT,
            Duration::from_millis(200),
            || async {
                let metrics = operator.metrics().await.ok()?;
                let reads = metrics.sum("asyncpool_sidecar_read_duration_seconds_count", &label);
                // Every pool's load figure set: its readings reached a decision.
                let loads = metrics.series("asyncpool_pool_load", "") as f64;
                (reads >= pools && loads >= pools).then_some(())
            },
        )
        .await?;
        self.wait_all_settled(0).await?;
        Ok(operator)
    }

    /// Writes while nothing changes (every pool at a constant load), then writes while one pool
    /// holds a constant load right after it scaled up for it.
    pub async fn rest(
        &mut self,
        operator: &Operator,
        mode: Mode,
        window: Duration,
    ) -> BenchResult<RestFigures> {
        for name in &self.names {
            if !self.workers.report_all(name, REST_LOAD).await {
                return Err(format!("a sidecar of {name} refused load {REST_LOAD}").into());
            }
        }
        self.wait_all_settled(REST_LOAD).await?;
        // Past the stable window and the status interval, so that nothing from the change is
        // still on its way.
        sleep(Duration::from_secs(5)).await;
        let before = operator.metrics().await?;
        let cpu_before = operator.cpu();
        let idle = writes_in(&self.client, &self.namespace, window, None).await?;
        let after = operator.metrics().await?;
        let idle_cpu = operator
            .cpu()
            .zip(cpu_before)
            .map(|(a, b)| a.saturating_sub(b));
        let idle_reconciles = after.sum("asyncpool_reconciles_total", "")
            - before.sum("asyncpool_reconciles_total", "");
        for name in &self.names {
            self.workers.report_all(name, 0).await;
        }
        self.wait_all_settled(0).await?;
        // The condition messages quote the stable-window load, which takes a window to decay.
        sleep(Duration::from_secs(5)).await;

        // One pool scales up for load 25 and then keeps it: the load stays constant.
        let pool = self.names[0].clone();
        let ip = self.wait_settled(&pool, mode).await?;
        let (change, _, _) = self.trial(&pool, ip).await?;
        if change.is_none() {
            return Err(format!("{pool} did not scale up for the after-burst window").into());
        }
        poll_until(
            &format!("{pool} at 3 workers, all reporting"),
            SETTLE_TIMEOUT,
            Duration::from_millis(50),
            || async {
                (self.deployments.replicas(&pool) == Some(3)
                    && self.workers.reporting(&pool).len() == 3)
                    .then_some(())
            },
        )
        .await?;
        let after_burst = writes_in(&self.client, &self.namespace, window, Some(&pool)).await?;
        self.reset(&pool).await?;
        Ok(RestFigures {
            mode,
            pools: self.names.len(),
            idle,
            idle_reconciles,
            idle_cpu,
            after_burst,
            window,
        })
    }

    /// How long a write of this process takes to come back on its own watch: the part of t1
    /// that is not the operator's. Returns (write → event, write's response → event) in ms.
    pub async fn calibrate(&self, probes: usize) -> BenchResult<Calibration> {
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = "calibration";
        let map: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}, "data": {"n": "0"}}))?;
        maps.create(&PostParams::default(), &map).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
        let task = tokio::spawn({
            let maps = maps.clone();
            async move {
                let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                let events = watcher(maps, config).default_backoff();
                let mut events = pin!(events);
                while let Some(event) = events.next().await {
                    let at = Instant::now();
                    if let Ok(watcher::Event::Apply(m)) = event
                        && let Some(n) = m.data.and_then(|d| d.get("n").cloned())
                    {
                        let _ = tx.send((n, at));
                    }
                }
            }
        });
        // Let the watch start before the first probe.
        sleep(Duration::from_millis(500)).await;
        let mut total = Vec::new();
        let mut after_response = Vec::new();
        for i in 1..=probes {
            while rx.try_recv().is_ok() {}
            let n = i.to_string();
            let start = Instant::now();
            maps.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"n": n}})),
            )
            .await?;
            let answered = Instant::now();
            let deadline = start + Duration::from_secs(10);
            loop {
                match timeout_at(deadline, rx.recv()).await {
                    Ok(Some((seen, at))) if seen == n => {
                        total.push(ms(at - start));
                        after_response.push(ms(at.saturating_duration_since(answered)));
                        break;
                    }
                    Ok(Some(_)) => {}
                    _ => {
                        task.abort();
                        return Err("the calibration watch missed a write".into());
                    }
                }
            }
            sleep(Duration::from_millis(rand::random_range(50..150))).await;
        }
        task.abort();
        Ok(Calibration {
            total,
            after_response,
        })
    }
}
