//! The local cluster itself works: scheduler, controller-manager and kwok turn a Deployment into
//! Running pods with 127.x addresses, and deleting a namespace garbage-collects what it held;
//! pods that ask to start slowly or to stop gracefully (the fidelity benchmark's) do.

use asyncpool_testkit::cluster as support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
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

fn bare_pod(name: &str, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}
    }))
    .expect("pod object")
}

#[tokio::test]
async fn pods_start_after_their_start_delay_and_graceful_ones_outlive_their_deletion() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "cluster-stages").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    // Timestamps have whole seconds: a 3 s delay shows as at least 2 s.
    let slow = bare_pod(
        "slow",
        serde_json::json!({"asyncpool.dev/local-start-delay": "3s"}),
    );
    pods.create(&PostParams::default(), &slow)
        .await
        .expect("create pod");
    let started_after = eventually("the slow pod is ready", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("slow").await.ok()?;
            let created = pod.metadata.creation_timestamp.clone()?.0;
            let ready = pod
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.status == "True")?;
            Some(ready.last_transition_time?.0.duration_since(created))
        }
    })
    .await;
    assert!(
        started_after.as_secs() >= 2,
        "ready {started_after:?} after creation, asked for 3 s"
    );

    // Deleted with a 3 s grace, a pod whose processes stop themselves stays until the grace is
    // over (nothing stops it here); without the annotation kwok deletes it at once.
    let graceful = bare_pod(
        "graceful",
        serde_json::json!({"asyncpool.dev/local-graceful-stop": "true"}),
    );
    pods.create(&PostParams::default(), &graceful)
        .await
        .expect("create pod");
    eventually("the graceful pod runs", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("graceful").await.ok()?;
            (pod.status?.phase.as_deref() == Some("Running")).then_some(())
        }
    })
    .await;
    let asked = tokio::time::Instant::now();
    pods.delete("graceful", &DeleteParams::default().grace_period(3))
        .await
        .expect("delete pod");
    eventually("the graceful pod is gone", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move { pods.get_opt("graceful").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let lived = asked.elapsed();
    assert!(
        lived >= Duration::from_secs(2),
        "gone {lived:?} after a delete with a 3 s grace"
    );
}
