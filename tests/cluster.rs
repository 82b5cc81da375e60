//! The local cluster itself works: scheduler, controller-manager and kwok turn a Deployment into
//! Running pods with 127.x addresses, and deleting a namespace garbage-collects what it held.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use support::{TestNamespace, client, eventually};

#[tokio::test]
async fn deployment_pods_run_with_loopback_ips_and_namespace_deletion_collects_them() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "cluster").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example/web:1"}]}
            }
        }
    }))
    .expect("deployment object");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let ips = eventually("3 Running pods with IPs", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            let ips: Vec<String> = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                .collect();
            (ips.len() == 3).then_some(ips)
        }
    })
    .await;
    for ip in &ips {
        assert!(
            ip.starts_with("127."),
            "pod IP {ip} is not in the loopback range"
        );
    }
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "pod IPs are not distinct: {ips:?}");

    let ready = eventually(
        "Deployment reports 3 ready",
        Duration::from_secs(30),
        || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get("web").await.ok()?;
                let ready = d.status?.ready_replicas?;
                (ready == 3).then_some(ready)
            }
        },
    )
    .await;
    assert_eq!(ready, 3);

    let name = ns.name.clone();
    drop(ns);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually(
        "namespace and its pods are gone",
        Duration::from_secs(90),
        || {
            let namespaces = namespaces.clone();
            let name = name.clone();
            async move {
                namespaces
                    .get_opt(&name)
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    let leftover = Api::<Pod>::namespaced(client.clone(), &name)
        .list(&ListParams::default())
        .await
        .expect("list pods");
    assert!(
        leftover.items.is_empty(),
        "pods survived namespace deletion"
    );
}
