//! The local cluster's real nodes (`scripts/real-node`): what a test needs to put a pool's workers
//! on them and reach them the way a client in the cluster would.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use crate::repo_root;

/// The test app (tests/apps on Python and uvicorn), built by `scripts/real-node images`.
pub const APP_IMAGE: &str = "asyncpool.local/test-app:1";
/// The label and taint that real nodes carry, so that only pods that ask land there.
pub const NODE_LABEL: (&str, &str) = ("asyncpool.dev/node", "real");
pub const TAINT_KEY: &str = "asyncpool.dev/real-node";

/// Whether the kubelet reports the pod Ready (its containers' readiness probes pass).
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The sidecar's and the operator's images as `scripts/images` names them.
pub fn product_image(name: &str) -> String {
    format!("ghcr.io/asyncpool/{name}:{}", env!("CARGO_PKG_VERSION"))
}

/// Imports the images the tests run (the test app, the operator's and sidecar's latest builds)
/// into every real node, once per test process, and returns the Ready real nodes' names. Fails
/// the test, saying how to get them, when the cluster has none.
pub async fn ready_nodes(client: &Client) -> Vec<String> {
    static IMAGES: OnceLock<()> = OnceLock::new();
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default().labels(&format!("{}={}", NODE_LABEL.0, NODE_LABEL.1)))
        .await
        .expect("list nodes");
    let ready: Vec<String> = list
        .items
        .into_iter()
        .filter(|node| {
            node.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|node| node.metadata.name)
        .collect();
    assert!(
        !ready.is_empty(),
        "the test cluster has no Ready real node: start it with ASYNCPOOL_REAL_NODES=1 scripts/cluster up \
         (scripts/test does)"
    );
    IMAGES.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/real-node"))
            .arg("images")
            .output()
            .expect("run scripts/real-node images");
        crate::cluster::succeeded(out, "scripts/real-node images");
    });
    ready
}

/// What a pod template needs to run on a real node under Pod Security `restricted`.
pub fn placement() -> Value {
    json!({
        "nodeSelector": {NODE_LABEL.0: NODE_LABEL.1},
        "tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
    })
}

/// The test app's container, as a pool's template lists it: uvicorn on the sidecar's default
/// upstream port, locked down as `restricted` requires.
pub fn app_container() -> Value {
    json!({
        "name": "app",
        "image": APP_IMAGE,
        "imagePullPolicy": "Never",
        "args": ["slow_app:app", "--host", "127.0.0.1", "--port", "8000", "--no-access-log"],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
    })
}

/// The address of a Service's first port: its ClusterIP, which the host routes through a real
/// node's kube-proxy.
pub async fn service_address(client: &Client, namespace: &str, name: &str) -> Option<SocketAddr> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let spec = services.get_opt(name).await.ok()??.spec?;
    let ip = spec.cluster_ip?.parse().ok()?;
    let port = u16::try_from(spec.ports?.first()?.port).ok()?;
    Some(SocketAddr::new(ip, port))
}

/// The host's process ids of a pod's app container on a real node: its uvicorn processes, told
/// apart by the `HOSTNAME` the kubelet gives every container of the pod. (Real nodes share the
/// host's kernel, so their containers' processes are the host's too.)
pub fn app_processes(pod: &str) -> Vec<i32> {
    let hostname = format!("HOSTNAME={pod}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let read =
                |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
            let cmdline = read("cmdline");
            let is_app = cmdline.split(|b| *b == 0).any(|arg| arg == b"slow_app:app");
            is_app
                && read("environ")
                    .split(|b| *b == 0)
                    .any(|var| var == hostname.as_bytes())
        })
        .collect()
}

/// Keeps a copy of the container logs of `namespace`'s pods on the real nodes in
/// `target/e2e-logs/<namespace>-pods/`, refreshed every half second while it lives: the kubelet
/// removes a pod's logs with the pod, and a fault's victims are gone by the time a suite fails.
pub struct PodLogKeeper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    copier: Option<std::thread::JoinHandle<()>>,
}

impl PodLogKeeper {
    pub fn start(namespace: &str) -> Self {
        let nodes = crate::cluster::state_dir().join("nodes");
        let into = repo_root()
            .join("target/e2e-logs")
            .join(format!("{namespace}-pods"));
        let prefix = format!("{namespace}_");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let copier = std::thread::spawn(move || {
            // A copier, not a synchronisation: it polls because the kubelet writes when it will.
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                copy_pod_logs(&nodes, &prefix, &into);
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            copy_pod_logs(&nodes, &prefix, &into);
        });
        Self {
            stop,
            copier: Some(copier),
        }
    }
}

impl Drop for PodLogKeeper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(copier) = self.copier.take() {
            let _ = copier.join();
        }
    }
}

/// `nodes/<i>/pods-logs/<namespace>_<pod>_<uid>/<container>/<n>.log` of the pods whose
/// directory starts with `prefix`, as `into/<pod>-<container>-<n>.log`, each copied again when it
/// grew.
fn copy_pod_logs(nodes: &std::path::Path, prefix: &str, into: &std::path::Path) {
    let entries = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .collect::<Vec<_>>()
    };
    let name = |path: &std::path::Path| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    for node in entries(nodes) {
        for pod_dir in entries(&node.join("pods-logs")) {
            let Some(pod) = name(&pod_dir)
                .strip_prefix(prefix)
                .and_then(|rest| rest.rsplit_once('_').map(|(pod, _uid)| pod.to_owned()))
            else {
                continue;
            };
            for container in entries(&pod_dir) {
                for log in entries(&container) {
                    let copy = into.join(format!("{pod}-{}-{}", name(&container), name(&log)));
                    let size =
                        |path: &std::path::Path| std::fs::metadata(path).map(|m| m.len()).ok();
                    if size(&log) != size(&copy) {
                        let _ = std::fs::create_dir_all(into);
                        let _ = std::fs::copy(&log, &copy);
                    }
                }
            }
        }
    }
}
