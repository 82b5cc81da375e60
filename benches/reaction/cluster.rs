//! The cluster side: kubeconfig, client, CRD, the bench's namespaces and its pools.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use asyncpool::crd::AsyncWorkerPool;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use tokio::time::{Instant, sleep};

use crate::{BENCH_LABEL, BenchResult};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the bench writes its logs and raw data.
pub fn output_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("reaction")
}

/// An explicit test cluster, or the local one (`scripts/cluster up` reuses a running one).
pub fn kubeconfig_path() -> BenchResult<PathBuf> {
    if let Some(path) = std::env::var_os("ASYNCPOOL_TEST_KUBECONFIG") {
        return Ok(PathBuf::from(path));
    }
    let status = std::process::Command::new(repo_root().join("scripts/cluster"))
        .arg("up")
        .status()?;
    if !status.success() {
        return Err("scripts/cluster up failed".into());
    }
    let state = std::env::var_os("ASYNCPOOL_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/asyncpool-cluster"));
    Ok(state.join("kubeconfig"))
}

pub async fn client(kubeconfig: &Path) -> BenchResult<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Polls `check` every `every` until it gives `Some`, or fails after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: F,
) -> BenchResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}").into());
        }
        sleep(every).await;
    }
}

/// Server-side applies the CRD generated from the Rust types and waits until it is Established.
pub async fn install_crd(client: &Client) -> BenchResult<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = asyncpool::crd::crd();
    let name = crd.metadata.name.clone().ok_or("the CRD has no name")?;
    crds.patch(
        &name,
        &PatchParams::apply("asyncpool-bench").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    eventually(
        "the CRD Established",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let crd = crds.get(&name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await
}

/// Namespaces this run created, deleted at the end however the run ends.
#[derive(Clone, Default)]
pub struct Namespaces(Arc<Mutex<Vec<String>>>);

impl Namespaces {
    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub async fn create(&self, client: &Client, prefix: &str) -> BenchResult<String> {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {BENCH_LABEL: "reaction"}}
        }))?;
        namespaces
            .create(&PostParams::default(), &namespace)
            .await?;
        self.lock().push(name.clone());
        Ok(name)
    }

    /// Deletes one namespace; the controller-manager then collects everything in it.
    pub async fn delete(&self, client: &Client, name: &str) {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        if let Err(error) = namespaces.delete(name, &DeleteParams::default()).await {
            eprintln!("could not delete namespace {name}: {error}");
        }
        self.lock().retain(|n| n != name);
    }

    pub async fn delete_all(&self, client: &Client) {
        let names = self.lock().clone();
        for name in names {
            self.delete(client, &name).await;
        }
    }
}

/// Says which bench namespaces an earlier, killed run left behind (they may belong to a run
/// that is still going, so they are not deleted here).
pub async fn warn_about_leftovers(client: &Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let selector = format!("{BENCH_LABEL}=reaction");
    if let Ok(list) = namespaces
        .list_metadata(&ListParams::default().labels(&selector))
        .await
    {
        let names: Vec<String> = list.items.iter().map(|n| n.name_any()).collect();
        if !names.is_empty() {
            eprintln!(
                "note: namespaces from another or an interrupted bench run exist: {} \
                 (kubectl delete ns -l {selector})",
                names.join(" ")
            );
        }
    }
}

pub fn pool_object(name: &str) -> BenchResult<AsyncWorkerPool> {
    // The shortest windows the API allows: a 1 s panic window makes a step in the load a
    // decision at the next reconcile, so what is measured is the pipeline, not the smoothing.
    Ok(serde_json::from_value(json!({
        "apiVersion": "asyncpool.dev/v1alpha1",
        "kind": "AsyncWorkerPool",
        "metadata": {"name": name},
        "spec": {
            "minReplicas": 1,
            "maxReplicas": 10,
            "concurrency": 10,
            "queue": {"source": "report", "targetPerWorker": 10},
            "scaling": {
                "tolerancePercent": 0,
                "panicWindow": "1s",
                "stableWindow": "4s",
                "scaleDownDelay": "3s",
                "metricsTimeout": "2s"
            },
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}
            }
        }
    }))?)
}
