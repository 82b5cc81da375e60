//! GitOps health, judged by the GitOps tools' own code on real pools: Argo CD's health check
//! (deploy/gitops/argocd/health.lua, run by gopher-lua, the interpreter Argo CD embeds) and
//! kstatus (what Flux's health checks compute), both in scripts/tools/gitops-health (run through
//! scripts/tool, which builds it), fed pools
//! that the operator has brought into each state on the local cluster.

use asyncpool_testkit::cluster as support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use asyncpool::crd::AsyncWorkerPool;
use asyncpool_testkit::operator::OperatorProcess;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use support::{TestNamespace, client, eventually, install_crd, kubectl, repo_root};

const HEALTH_LUA: &str = "deploy/gitops/argocd/health.lua";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[derive(Debug, Clone, PartialEq)]
struct Verdicts {
    argo: (String, String),
    kstatus: (String, String),
}

/// Both verdicts for every pool in `namespace`, as `kubectl get -o json` hands them to the tools.
fn verdicts(namespace: &str) -> BTreeMap<String, Verdicts> {
    let list = kubectl(&["get", "asyncworkerpools", "-n", namespace, "-o", "json"]);
    assert!(list.status.success(), "kubectl get asyncworkerpools failed");
    judge(&list.stdout)
}

fn judge(list_json: &[u8]) -> BTreeMap<String, Verdicts> {
    // scripts/tool builds it once per source version (scripts/test builds it before the tests).
    let mut child = Command::new(repo_root().join("scripts/tool"))
        .arg("gitops-health")
        .arg(repo_root().join(HEALTH_LUA))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gitops-health");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(list_json).expect("write the list");
    }
    let out = child.wait_with_output().expect("gitops-health output");
    assert!(
        out.status.success(),
        "gitops-health failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("a JSON line");
            let pair = |key: &str| {
                (
                    v[key]["status"].as_str().unwrap_or_default().to_owned(),
                    v[key]["message"].as_str().unwrap_or_default().to_owned(),
                )
            };
            (
                v["name"].as_str().unwrap_or_default().to_owned(),
                Verdicts {
                    argo: pair("argo"),
                    kstatus: pair("kstatus"),
                },
            )
        })
        .collect()
}

fn pool(name: &str, spec: Value) -> AsyncWorkerPool {
    let mut full = json!({
        "minReplicas": 1,
        "maxReplicas": 3,
        "concurrency": 4,
        "queue": {"source": "report"},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}
        }
    });
    if let (Value::Object(full), Value::Object(extra)) = (&mut full, spec) {
        full.extend(extra);
    }
    serde_json::from_value(json!({
        "apiVersion": "asyncpool.dev/v1alpha1",
        "kind": "AsyncWorkerPool",
        "metadata": {"name": name},
        "spec": full,
    }))
    .expect("pool object")
}

#[test]
fn the_argo_cd_snippet_and_the_chart_docs_carry_the_health_script() {
    let script = read(HEALTH_LUA);
    let config: Value =
        serde_saphyr::from_str(&read("deploy/gitops/argocd/argocd-cm.yaml")).expect("YAML");
    assert_eq!(
        config["data"]["resource.customizations.health.asyncpool.dev_AsyncWorkerPool"]
            .as_str()
            .expect("the health key"),
        script
    );
    let chart_readme = read("charts/asyncpool/README.md");
    for line in script.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            chart_readme.contains(line),
            "charts/asyncpool/README.md lacks the health.lua line {line:?}"
        );
    }
}

fn documents(path: &str) -> Vec<Value> {
    let all: Vec<Value> =
        serde_saphyr::from_str_multiple(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    all.into_iter().filter(|d| !d.is_null()).collect()
}

/// The Kustomize bases the examples point at render (with the kubectl built for the tests).
fn assert_renders(path: &str) {
    let out = kubectl(&["kustomize", &repo_root().join(path).to_string_lossy()]);
    assert!(
        out.status.success(),
        "kubectl kustomize {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_flux_example_applies_the_crd_then_the_operator_then_the_pools() {
    let docs = documents("deploy/gitops/flux/asyncpool.yaml");
    let kustomization = |name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "Kustomization" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Kustomization {name}"))
    };
    let depends_on = |name: &str| -> Vec<String> {
        kustomization(name)["spec"]["dependsOn"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(depends_on("asyncpool-crds").is_empty());
    assert_eq!(depends_on("asyncpool-operator"), ["asyncpool-crds"]);
    assert_eq!(depends_on("pools"), ["asyncpool-operator"]);
    for name in ["asyncpool-crds", "asyncpool-operator", "pools"] {
        assert_eq!(
            kustomization(name)["spec"]["wait"],
            true,
            "{name} must wait for health"
        );
    }
    assert_eq!(kustomization("asyncpool-crds")["spec"]["prune"], false);
    for (name, path) in [("asyncpool-crds", "crds"), ("asyncpool-operator", "deploy")] {
        assert_eq!(kustomization(name)["spec"]["path"], format!("./{path}"));
        assert_renders(path);
    }
}

#[test]
fn the_argo_cd_example_syncs_the_crd_then_the_operator_then_the_pools() {
    let docs = documents("deploy/gitops/argocd/applications.yaml");
    let wave = |name: &str| -> (i64, String) {
        let app = docs
            .iter()
            .find(|d| d["kind"] == "Application" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Application {name}"));
        let wave = app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
            .as_str()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{name} has no sync wave"));
        (
            wave,
            app["spec"]["source"]["path"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let (crds, crds_path) = wave("asyncpool-crds");
    let (operator, operator_path) = wave("asyncpool-operator");
    let (pools, _) = wave("pools");
    assert!(
        crds < operator && operator < pools,
        "waves {crds}, {operator}, {pools}"
    );
    assert_renders(&crds_path);
    assert_renders(&operator_path);
}

#[test]
fn the_health_script_waits_for_the_operator_to_see_the_spec() {
    // States no live operator leaves for long: never reported, and a spec newer than the status.
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "asyncpool.dev/v1alpha1", "kind": "AsyncWorkerPool",
         "metadata": {"name": "new", "generation": 1}},
        {"apiVersion": "asyncpool.dev/v1alpha1", "kind": "AsyncWorkerPool",
         "metadata": {"name": "edited", "generation": 3},
         "status": {"observedGeneration": 2, "conditions": [
            {"type": "Ready", "status": "True", "reason": "WorkersReady", "message": "1 of 1 workers ready",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}
    ]});
    let verdicts = judge(list.to_string().as_bytes());
    assert_eq!(verdicts["new"].argo.0, "Progressing");
    assert_eq!(verdicts["edited"].argo.0, "Progressing");
    assert_eq!(verdicts["edited"].kstatus.0, "InProgress");
}

#[tokio::test]
async fn argo_cd_and_kstatus_read_real_pools_in_each_state() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "gitops").await;
    let pools: Api<AsyncWorkerPool> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let _operator = OperatorProcess::start(&ns.name, "solo", &["--leader-elect=false"]).await;

    // A Deployment of the pool's name that is not the pool's: it cannot make progress.
    let foreign: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "taken"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "taken"}},
            "template": {"metadata": {"labels": {"app": "taken"}},
                         "spec": {"containers": [{"name": "app", "image": "other:1"}]}}
        }
    }))
    .expect("deployment");
    deployments
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create the foreign Deployment");
    let starting_template = json!({
        "metadata": {"labels": {"app": "starting"},
                     // kwok holds these pods Pending for this long: workers that never turn ready.
                     "annotations": {"asyncpool.dev/local-start-delay": "1h"}},
        "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}
    });
    for object in [
        pool("healthy", json!({})),
        pool("starting", json!({"template": starting_template})),
        pool("taken", json!({})),
        pool("paused", json!({"paused": true})),
    ] {
        pools
            .create(&PostParams::default(), &object)
            .await
            .expect("create pool");
    }

    let want = [
        ("healthy", "Healthy", "Current"),
        ("starting", "Progressing", "InProgress"),
        ("taken", "Degraded", "Failed"),
        ("paused", "Suspended", "Current"),
    ];
    let seen = eventually(
        "every pool in its state for Argo CD and kstatus",
        Duration::from_secs(60),
        || async {
            let verdicts = verdicts(&ns.name);
            want.iter()
                .all(|(name, argo, kstatus)| {
                    verdicts
                        .get(*name)
                        .is_some_and(|v| v.argo.0 == *argo && v.kstatus.0 == *kstatus)
                })
                .then_some(verdicts)
        },
    )
    .await;
    // The failure says what to fix, in both tools.
    let taken = &seen["taken"];
    assert!(taken.argo.1.contains("not owned"), "{taken:?}");
    assert!(taken.kstatus.1.contains("not owned"), "{taken:?}");
    assert!(
        seen["starting"].argo.1.contains("0 of 1"),
        "{:?}",
        seen["starting"]
    );
    // And `kubectl describe` shows it as a Warning Event on the pool.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let not_owned_warnings = || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            let found: Vec<Event> = list
                .items
                .into_iter()
                .filter(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("NotOwned")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("taken")
                })
                .collect();
            (!found.is_empty()).then_some(found)
        }
    };
    let warnings = eventually(
        "a NotOwned Warning on the pool",
        Duration::from_secs(15),
        not_owned_warnings,
    )
    .await;
    assert!(
        warnings[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("not owned")),
        "{warnings:?}"
    );

    // Repair the pool: the Deployment in its way goes, and both tools turn to Healthy/Current.
    let deleted = kubectl(&[
        "delete",
        "deployment",
        "taken",
        "-n",
        &ns.name,
        "--wait=true",
    ]);
    assert!(deleted.status.success(), "delete the foreign Deployment");
    eventually(
        "the repaired pool Healthy and Current",
        // The operator looks again at a blocked pool every 30 s.
        Duration::from_secs(90),
        || async {
            let verdicts = verdicts(&ns.name);
            let taken = verdicts.get("taken")?;
            (taken.argo.0 == "Healthy" && taken.kstatus.0 == "Current").then_some(())
        },
    )
    .await;
    // The operator looked at the blocked pool again and again (each status write of its own
    // triggers a reconcile; the other pools' changes too): the Warning was given once, not once
    // per look.
    let warnings = not_owned_warnings().await.expect("the NotOwned Warning");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].series.is_none(),
        "the Warning repeated while the problem lasted: {warnings:?}"
    );
}
