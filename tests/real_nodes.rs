//! Pools on the local cluster's real nodes (`ASYNCPOOL_REAL_NODES`, `scripts/real-node`): the
//! workers run the test app's and the sidecar's real images under a real kubelet, containerd and
//! runc, in a namespace that enforces Pod Security `restricted`; readiness comes from the
//! kubelet's probes of the sidecar; traffic goes through the pool's Service and kube-proxy. The
//! promise under test: taking workers away under a steady load loses no request and cuts no
//! stream, even streams longer than the drain's grace.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncpool_testkit::cluster::eventually;
use asyncpool_testkit::helm::{RELEASE, Release};
use asyncpool_testkit::real_node;
use asyncpool_testkit::real_pool::{RealPools, assert_nothing_lost};
use kube::api::ListParams;
use serde_json::json;

#[tokio::test]
async fn scale_down_through_the_service_loses_no_request_and_cuts_no_stream() {
    let s = RealPools::setup("rn-drain").await;
    let _operator = s.operator().await;
    s.create_pool("web", 3, json!({"drainTimeout": "20s"}))
        .await;
    // Readiness comes from the kubelet probing each sidecar's /readyz, which needs the app.
    s.wait_ready("web", 3, Duration::from_secs(90)).await;

    let load = s.service_load("web", 40, 1.0).await;
    eventually("the load flowing", Duration::from_secs(10), || async {
        (load.so_far().succeeded >= 40).then_some(())
    })
    .await;
    // Two of three workers go while requests and streams keep arriving through kube-proxy.
    s.resize("web", 1).await;
    s.wait_ready("web", 1, Duration::from_secs(60)).await;
    // Load on the one left, so that what was routed late to a leaving worker has shown.
    let after = load.so_far().sent + 80;
    eventually(
        "two more seconds of load",
        Duration::from_secs(10),
        || async { (load.so_far().sent >= after).then_some(()) },
    )
    .await;
    let report = load.stop().await;
    assert_nothing_lost(&report, 200);
}

#[tokio::test]
async fn a_hung_worker_is_replaced_without_losing_the_load() {
    let s = RealPools::setup("rn-hung").await;
    let _operator = s.operator().await;
    // The hung worker's drain ends at its timeout, which must leave a stream that starts at the
    // end of the 5 s grace its 8 s: 15 s.
    s.create_pool(
        "api",
        2,
        json!({"workerTimeout": "5s", "drainTimeout": "15s"}),
    )
    .await;
    s.wait_ready("api", 2, Duration::from_secs(90)).await;
    let workers = s.workers("api").await.expect("pods");
    let first = workers.first().expect("a worker").clone();
    let (hung, ip) = (first.name, first.ip.expect("pod IP"));

    let load = s.service_load("api", 30, 0.5).await;
    // One request that never finishes in time, sent to one worker directly: its oldest
    // in-flight request passes the pool's workerTimeout and the worker counts as hung.
    let stuck_target = format!("{ip}:8080").parse().expect("pod address");
    let stuck = tokio::spawn(asyncpool_testkit::http::send(
        stuck_target,
        "GET",
        "/sleep?s=600",
        &[],
        bytes::Bytes::new(),
    ));
    eventually(
        "the hung worker replaced by a fresh one",
        Duration::from_secs(60),
        || async {
            let workers = s.workers("api").await?;
            let fresh = workers
                .iter()
                .filter(|w| w.ready && !w.deleting && w.name != hung)
                .count();
            (fresh == 2 && workers.iter().all(|w| w.name != hung)).then_some(())
        },
    )
    .await;
    let report = load.stop().await;
    // The stuck request itself is what the hung worker's drain timeout gives up on.
    let stuck = stuck.await.expect("stuck request task");
    assert!(
        stuck.as_ref().map_or(true, |reply| reply.status != 200),
        "the stuck request cannot have completed: {stuck:?}"
    );
    assert_nothing_lost(&report, 200);
}

#[tokio::test]
async fn a_worker_that_crash_loops_is_replaced_while_the_pool_serves() {
    let s = RealPools::setup("rn-crash").await;
    let _operator = s.operator().await;
    s.create_pool("api", 3, json!({})).await;
    s.wait_ready("api", 3, Duration::from_secs(90)).await;
    let victim = s.workers("api").await.expect("pods")[0].name.clone();
    let load = s.service_load("api", 30, 0.0).await;
    eventually("the load flowing", Duration::from_secs(10), || async {
        (load.so_far().succeeded >= 30).then_some(())
    })
    .await;

    // Its app is killed whenever it runs, as an app that dies on a bad node or a poisoned
    // input would be, until the operator has replaced the worker. Only the first kill can
    // find requests in the app: later ones come as the restarted app is still importing.
    let replaced = Arc::new(AtomicBool::new(false));
    let killer = {
        let (victim, replaced) = (victim.clone(), replaced.clone());
        std::thread::spawn(move || {
            let mut kills = 0u32;
            while !replaced.load(Ordering::SeqCst) {
                for pid in real_node::app_processes(&victim) {
                    let killed = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status()
                        .is_ok_and(|status| status.success());
                    kills += u32::from(killed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            kills
        })
    };
    let reasons = Mutex::new(BTreeSet::new());
    eventually(
        "the crash-looping worker replaced by a fresh one",
        Duration::from_secs(180),
        || async {
            let pool = s.pools.get("api").await.ok()?;
            if let Some(degraded) = pool.status.and_then(|status| {
                status
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Degraded")
            }) {
                reasons.lock().expect("reasons").insert(degraded.reason);
            }
            let workers = s.workers("api").await?;
            let fresh = workers
                .iter()
                .filter(|w| w.ready && !w.deleting && w.name != victim)
                .count();
            (fresh == 3 && workers.iter().all(|w| w.name != victim)).then_some(())
        },
    )
    .await;
    replaced.store(true, Ordering::SeqCst);
    let kills = killer.join().expect("the killer thread");
    eventually("enough load to tell", Duration::from_secs(30), || async {
        (load.so_far().sent >= 300).then_some(())
    })
    .await;
    let report = load.stop().await;
    let reasons = reasons.into_inner().expect("reasons");
    println!("{kills} kills; Degraded reasons seen: {reasons:?}; {report}");
    assert!(
        kills >= 2,
        "the app was killed {kills} times: no crash loop"
    );
    assert!(
        reasons.contains("WorkerCrashLooping") && !reasons.contains("CrashLooping"),
        "one worker crash-looping among serving ones is its own trouble: {reasons:?}"
    );
    // What a crash can lose is what was in its app then: short requests at 10 a second per
    // worker keep well under one worker's concurrency (10) there.
    assert!(report.sent >= 300, "too few requests to tell: {report}");
    assert!(report.lost - report.unreachable <= 10, "{report}");
    // What kube-proxy sent the worker while its app was down got the sidecar's 503 "app
    // unavailable" (nothing reached the app: safe to retry), until the kubelet's third failed
    // readiness probe, a second apart, took it out of the endpoints: its share of the load for
    // a few seconds, once, as later kills came before the restarted app was ready.
    assert!(report.unreachable <= 60, "{report}");
}

#[tokio::test]
async fn the_operator_runs_from_its_image_installed_with_the_chart() {
    let s = RealPools::setup("rn-chart").await;
    let n = s.ns.name.as_str();
    // One operator pod on a real node, from the image scripts/images built, reading the workers'
    // sidecars over the pod network and the API server through the `kubernetes` Service.
    let watch = format!("watchNamespace={n}");
    let _release = Release::install(
        n,
        &[
            &watch,
            "replicaCount=1",
            "image.pullPolicy=Never",
            "nodeSelector.asyncpool\\.dev/node=real",
            "tolerations[0].key=asyncpool.dev/real-node",
            "tolerations[0].operator=Exists",
            "tolerations[0].effect=NoSchedule",
        ],
    );
    eventually(
        "the operator pod Ready on a real node",
        Duration::from_secs(90),
        || async {
            let list = s
                .pods
                .list(&ListParams::default().labels(&format!(
                    "app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
                )))
                .await
                .ok()?;
            list.items.iter().any(real_node::pod_ready).then_some(())
        },
    )
    .await;

    // A pool that scales on what its sidecars report: 1 worker at rest, 3 under the load.
    s.create_pool_scaling("chat", 1, 3).await;
    s.wait_ready("chat", 1, Duration::from_secs(90)).await;
    let load = s.service_load_of("chat", 40, "/sleep?s=0.5").await;
    s.wait_ready("chat", 3, Duration::from_secs(90)).await;
    let report = load.stop().await;
    println!("{report}");
    assert_eq!(report.lost, 0, "{report}");
    // The status follows: its figures are written at most every 2 s (the status throttle).
    eventually(
        "the pool's status at 3 replicas",
        Duration::from_secs(15),
        || async {
            let status = s.pools.get("chat").await.ok()?.status?;
            (status.replicas == 3 && status.ready_replicas == 3).then_some(())
        },
    )
    .await;
}

/// Burst → scale-up → quiet → scale-down, again and again, under a continuous load with streams
/// longer than the drain's grace. `ASYNCPOOL_SCALE_CYCLES` sets the count (3 here; 20 in
/// `benches/faults.sh`).
#[tokio::test]
async fn scale_cycles_lose_no_request_and_cut_no_stream() {
    let cycles: u32 = std::env::var("ASYNCPOOL_SCALE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let s = RealPools::setup("rn-cycles").await;
    let _operator = s.operator().await;
    s.create(
        "burst",
        json!({"minReplicas": 1, "maxReplicas": 4, "queue": {"source": "proxy", "targetPerWorker": 5},
               "supervision": {"drainTimeout": "20s"}}),
    )
    .await;
    s.wait_ready("burst", 1, Duration::from_secs(90)).await;
    // At rest ~4 requests in the app (one worker); a burst adds ~15 (four workers).
    let base = s
        .load_through_service("burst", 4, "/sleep?s=0.5", 0.25)
        .await;
    let mut times = Vec::new();
    for cycle in 1..=cycles {
        let began = std::time::Instant::now();
        let burst = s.service_load_of("burst", 30, "/sleep?s=0.5").await;
        s.wait_staying("burst", 4, Duration::from_secs(60)).await;
        let up = began.elapsed();
        let burst = burst.stop().await;
        assert_eq!(burst.lost, 0, "cycle {cycle}, burst: {burst}");
        let quiet = std::time::Instant::now();
        s.wait_staying("burst", 1, Duration::from_secs(60)).await;
        let down = quiet.elapsed();
        println!(
            "cycle {cycle}: up in {:.1} s, down in {:.1} s; burst {burst}",
            up.as_secs_f64(),
            down.as_secs_f64()
        );
        times.push((up, down));
    }
    // Fast cycles end before the steady load has sent enough to tell; let it run on to that.
    let enough = u64::from(cycles) * 20;
    eventually(
        "enough steady load to tell",
        Duration::from_secs(60),
        || async { (base.so_far().sent >= enough).then_some(()) },
    )
    .await;
    let report = base.stop().await;
    assert_nothing_lost(&report, enough);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    println!(
        "{cycles} cycles: median up {:.1} s, median down {:.1} s",
        median(times.iter().map(|t| t.0).collect()),
        median(times.iter().map(|t| t.1).collect())
    );
}
