//! The real local cluster the end-to-end tests run against (started by `scripts/cluster up`, or
//! attached through `ASYNCPOOL_TEST_KUBECONFIG` / `KUBECONFIG`) and one temporary namespace per test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use asyncpool::crd::AsyncWorkerPool;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub const K8S_VERSION: &str = "v1.36.3";

use crate::cache_dir;
pub use crate::{free_port, repo_root};

/// The stdout of a command that must succeed; otherwise fails the test with both streams.
pub fn succeeded(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The kubectl built by `scripts/cluster`.
pub fn kubectl_path() -> PathBuf {
    cache_dir()
        .join(format!("k8s-{K8S_VERSION}"))
        .join("kubectl")
}

/// The kubeconfig of the test cluster: an explicit one, or the local cluster (started on demand;
/// `scripts/cluster up` reuses a running one).
pub fn kubeconfig_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(path) = std::env::var_os("ASYNCPOOL_TEST_KUBECONFIG") {
            return PathBuf::from(path);
        }
        let status = Command::new(repo_root().join("scripts/cluster"))
            .arg("up")
            .status()
            .expect("run scripts/cluster up");
        assert!(status.success(), "scripts/cluster up failed");
        state_dir().join("kubeconfig")
    })
}

/// Where the local cluster keeps its state (`$ASYNCPOOL_CLUSTER_DIR`, as `scripts/cluster`).
pub fn state_dir() -> PathBuf {
    std::env::var_os("ASYNCPOOL_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/asyncpool-cluster"))
}

/// A client of the test cluster; fails the test if there is none.
pub async fn client() -> Client {
    try_client(kubeconfig_path())
        .await
        .unwrap_or_else(|error| panic!("no client for the test cluster: {error}"))
}

/// The test cluster's client configuration, for building a client of one's own.
pub async fn config() -> Config {
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path()).expect("read the test kubeconfig");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the test kubeconfig holds a configuration")
}

/// A client for `kubeconfig`, or why there is none.
pub async fn try_client(
    kubeconfig: &Path,
) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Runs kubectl against the test cluster.
pub fn kubectl(args: &[&str]) -> Output {
    Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .expect("run kubectl")
}

/// Runs kubectl with `stdin` as its standard input.
pub fn kubectl_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("kubectl output")
}

/// The helm version `scripts/cluster` builds (and `scripts/gen-deploy` renders with): Helm 4.
pub const HELM_VERSION: &str = "v4.3.2";
/// The Helm 3 that `scripts/cluster` builds beside it, since many clusters are still run with it.
pub const HELM3_VERSION: &str = "v3.21.4";

/// The helm 4 built by `scripts/cluster build`.
pub fn helm_path() -> PathBuf {
    helm_path_of(HELM_VERSION)
}

/// The helm of `version` built by `scripts/cluster build`.
pub fn helm_path_of(version: &str) -> PathBuf {
    cache_dir().join(format!("helm-{version}")).join("helm")
}

/// Runs helm against the test cluster. Commands that need no cluster (`template`, `lint`) can
/// run `helm_path()` directly and so not start one.
pub fn helm(args: &[&str]) -> Output {
    Command::new(helm_path())
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .expect("run helm")
}

/// Polls `check` until it returns `Some`, or fails the test after `limit` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    crate::poll_until(what, limit, Duration::from_millis(50), check)
        .await
        .unwrap_or_else(|timeout| panic!("{timeout}"))
}

/// Installs the CRD generated from the Rust types and waits until it is Established, listed in
/// discovery and published in the OpenAPI document.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = asyncpool::crd::crd();
    let name = crd.metadata.name.clone().expect("crd name");
    crds.patch(
        &name,
        &PatchParams::apply("asyncpool-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    eventually("CRD Established", Duration::from_secs(30), || {
        let crds = crds.clone();
        let name = name.clone();
        async move {
            let crd = crds.get(&name).await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        }
    })
    .await;
    // Discovery (what kubectl resolves `awp` with) catches up with an Established CRD shortly after.
    eventually(
        "AsyncWorkerPool in discovery",
        Duration::from_secs(30),
        || async {
            let out = kubectl(&["api-resources", "--api-group=asyncpool.dev", "-o", "name"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("asyncworkerpools")
                .then_some(())
        },
    )
    .await;
    // The aggregated OpenAPI v3 document (what `kubectl explain` reads) is rebuilt after the CRD
    // turns Established, on its own schedule: wait until it carries the pool's schema.
    eventually(
        "AsyncWorkerPool schema in OpenAPI v3",
        Duration::from_secs(60),
        || async {
            let out = kubectl(&["get", "--raw", "/openapi/v3/apis/asyncpool.dev/v1alpha1"]);
            (out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .contains("dev.asyncpool.v1alpha1.AsyncWorkerPool"))
            .then_some(())
        },
    )
    .await;
}

/// A namespace that lives as long as the test: created with a unique name, deleted on drop
/// (the controller-manager then garbage-collects everything in it).
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        Self::with_labels(client, prefix, &[]).await
    }

    /// A namespace with extra labels (e.g. a Pod Security level to enforce).
    pub async fn with_labels(client: &Client, prefix: &str, extra: &[(&str, &str)]) -> Self {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let mut labels = serde_json::json!({"asyncpool.dev/test": "true"});
        for (key, value) in extra {
            labels[*key] = serde_json::json!(value);
        }
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels}
        }))
        .expect("namespace object");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await; kubectl deletes without needing this test's runtime.
        let _ = kubectl(&[
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

/// Sidecars in report mode for the pods of `pool`, whose load the test sets.
pub fn fleet(client: &Client, namespace: &str, pool: &str) -> crate::fleet::Fleet {
    fleet_of(client, namespace, pool, crate::fleet::WorkerKind::Report)
}

/// Sidecars of `kind` for the pool's Running pods.
pub fn fleet_of(
    client: &Client,
    namespace: &str,
    pool: &str,
    kind: crate::fleet::WorkerKind,
) -> crate::fleet::Fleet {
    let config = crate::fleet::FleetConfig {
        sidecar_binary: crate::binary("asyncpool-sidecar"),
        kind,
        log_dir: None,
    };
    crate::fleet::Fleet::start(client, namespace, pool, config)
}

/// A pool for kwok pods with windows short enough for a test (1 s panic window, 4 s stable
/// window, 3 s scale-down delay, 2 s metrics timeout), its sidecars in report mode, with `extra`
/// merged into its spec.
pub fn test_pool(name: &str, extra: serde_json::Value) -> AsyncWorkerPool {
    let mut spec = serde_json::json!({
        "minReplicas": 1,
        "maxReplicas": 6,
        "concurrency": 10,
        "queue": {"source": "report", "targetPerWorker": 10},
        "scaling": {"stableWindow": "4s", "panicWindow": "1s", "scaleDownDelay": "3s", "metricsTimeout": "2s"},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}
        }
    });
    crate::merge_patch(&mut spec, &extra);
    serde_json::from_value(serde_json::json!({
        "apiVersion": "asyncpool.dev/v1alpha1",
        "kind": "AsyncWorkerPool",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("pool object")
}

/// The operator's Events about `pool` in `namespace`: (reason, how many times it happened).
pub async fn operator_events(client: &Client, namespace: &str, pool: &str) -> Vec<(String, i32)> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let Ok(list) = events.list(&ListParams::default()).await else {
        return Vec::new();
    };
    list.items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pool))
        .filter(|e| e.reporting_controller.as_deref() == Some("asyncpool-operator"))
        .map(|e| {
            let count = e.series.as_ref().map_or(1, |s| s.count);
            (e.reason.clone().unwrap_or_default(), count)
        })
        .collect()
}
