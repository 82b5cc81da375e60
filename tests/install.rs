//! The install story: the Helm chart in charts/asyncpool, the plain manifests in deploy/ rendered
//! from it, and both installed into the local cluster. The chart's RBAC is checked twice: with
//! `kubectl auth can-i` for what it must and must not allow, and by running the real operator
//! binary with nothing but the chart's ServiceAccount token and the chart's settings.

use asyncpool_testkit::cluster as support;
use asyncpool_testkit::helm::{CHART, RELEASE, Release};

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use asyncpool::crd::AsyncWorkerPool;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::config::Kubeconfig;
use serde_json::{Value, json};
use support::{
    HELM_VERSION, HELM3_VERSION, TestNamespace, client, eventually, helm_path, helm_path_of,
    install_crd, kubeconfig_path, kubectl, kubectl_stdin, repo_root, succeeded,
};

/// What `scripts/gen-deploy` renders for. A helm built from source defaults to Kubernetes v1.20,
/// which the chart's kubeVersion (>=1.33) refuses, so offline renders name a version.
const KUBE_VERSION: &str = "1.33.0";

// --- helpers -----------------------------------------------------------------------------------

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Manifests applied with kubectl, deleted again on drop (a failing test included): their
/// cluster-scoped objects outlive any namespace.
struct Applied(String);

impl Applied {
    fn apply(manifest: String, what: &str) -> Self {
        let applied = Self(manifest);
        succeeded(kubectl_stdin(&["apply", "-f", "-"], &applied.0), what);
        applied
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        let _ = kubectl_stdin(
            &["delete", "-f", "-", "--ignore-not-found", "--wait=false"],
            &self.0,
        );
    }
}

/// helm without a cluster (template, lint), run from the repository root.
fn helm_offline(args: &[&str]) -> Output {
    Command::new(helm_path())
        .current_dir(repo_root())
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "run {}: {e} (build it with scripts/cluster build)",
                helm_path().display()
            )
        })
}

/// The chart rendered as release "asyncpool" in namespace "ops", with `--set` values.
fn render(sets: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        RELEASE,
        CHART,
        "--namespace",
        "ops",
        "--kube-version",
        KUBE_VERSION,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    parse_yaml_stream(&succeeded(helm_offline(&args), "helm template"))
}

fn parse_yaml_stream(yaml: &str) -> Vec<Value> {
    let documents: Vec<Value> =
        serde_saphyr::from_str_multiple(yaml).expect("rendered YAML parses");
    documents.into_iter().filter(|v| !v.is_null()).collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(objects, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// `kubectl auth can-i` as `user`: true for "yes", false for "no"; anything else fails the test.
fn can(user: &str, args: &[&str]) -> bool {
    let as_user = format!("--as={user}");
    let mut full = vec!["auth", "can-i", as_user.as_str()];
    full.extend_from_slice(args);
    let out = kubectl(&full);
    match text(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl auth can-i {args:?} answered {other:?}: {}",
            text(&out.stderr)
        ),
    }
}

fn assert_can(user: &str, checks: &[&[&str]]) {
    for args in checks {
        assert!(can(user, args), "{user} should be allowed to {args:?}");
    }
}

fn assert_cannot(user: &str, checks: &[&[&str]]) {
    for args in checks {
        assert!(!can(user, args), "{user} must not be allowed to {args:?}");
    }
}

/// The operator pods of release "asyncpool" in `namespace` that kwok reports Running. (kwok runs
/// no containers, so Running is as far as they get; it shows the API server admitted them.)
async fn wait_operator_pods_running(client: &kube::Client, namespace: &str, want: usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    eventually("the operator pods Running", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels(&format!(
                    "app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
                )))
                .await
                .ok()?;
            let running = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            (running == want).then_some(())
        }
    })
    .await;
}

/// Requires the "restricted" Pod Security Standard in `namespace`: the operator pods must still
/// be admitted, which proves their security contexts.
fn enforce_restricted(namespace: &str) {
    succeeded(
        kubectl(&[
            "label",
            "namespace",
            namespace,
            "pod-security.kubernetes.io/enforce=restricted",
        ]),
        "label namespace",
    );
}

fn cluster_role_exists(name: &str) -> bool {
    let out = kubectl(&[
        "get",
        "clusterrole",
        name,
        "--ignore-not-found",
        "-o",
        "name",
    ]);
    !text(&out.stdout).trim().is_empty()
}

// --- the chart, offline ------------------------------------------------------------------------

#[test]
fn deploy_manifest_is_the_chart_rendered_with_defaults() {
    let out = Command::new(repo_root().join("scripts/gen-deploy"))
        .arg("--stdout")
        .env("HELM", helm_path())
        .output()
        .expect("run scripts/gen-deploy");
    let fresh = succeeded(out, "scripts/gen-deploy --stdout");
    let committed = std::fs::read_to_string(repo_root().join("deploy/operator.yaml"))
        .expect("read deploy/operator.yaml");
    if committed != fresh {
        let line = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(fresh.lines().count()));
        panic!(
            "deploy/operator.yaml differs from the chart (first at line {}): run scripts/gen-deploy \
             and commit the result",
            line + 1
        );
    }

    // And it is what kubectl users need: the Namespace first, everything else inside it.
    assert!(committed.starts_with("# Generated by scripts/gen-deploy"));
    let objects = parse_yaml_stream(&committed);
    assert_eq!(objects[0]["kind"], "Namespace");
    assert_eq!(objects[0]["metadata"]["name"], "asyncpool-system");
    for object in &objects[1..] {
        let kind = object["kind"].as_str().expect("kind");
        if !matches!(kind, "ClusterRole" | "ClusterRoleBinding") {
            assert_eq!(
                object["metadata"]["namespace"], "asyncpool-system",
                "{kind} {} is outside asyncpool-system",
                object["metadata"]["name"]
            );
        }
    }
    assert_eq!(one(&objects, "Deployment")["spec"]["replicas"], 2);
}

#[test]
fn chart_lints_clean_with_each_mode() {
    for sets in [
        &[][..],
        &["watchNamespace=team-a"][..],
        &["serviceMonitor.enabled=true", "metrics.bindAddress=::"][..],
        &["replicaCount=1", "leaderElection.enabled=false"][..],
        &[
            "rbac.aggregateClusterRoles=false",
            "podDisruptionBudget.enabled=false",
        ][..],
        &["rbac.redisPasswordSecrets=true"][..],
        &["redis.caBundle.secretName=redis-ca"][..],
        &[
            "redis.caBundle.configMapName=redis-ca",
            "redis.caBundle.key=bundle.pem",
        ][..],
    ] {
        let mut args = vec!["lint", "--strict", CHART, "--kube-version", KUBE_VERSION];
        for set in sets {
            args.extend(["--set", set]);
        }
        succeeded(helm_offline(&args), &format!("helm lint with {sets:?}"));
    }
}

#[test]
fn default_render_runs_the_operator_as_documented() {
    let objects = render(&[]);
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];

    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env_var(container, name).unwrap_or_else(|| panic!("{name} is not set"));
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], field, "{name}");
    }
    let value = |name: &str| env_var(container, name).map(|v| v["value"].clone());
    assert_eq!(
        value("ASYNCPOOL_SIDECAR_IMAGE"),
        Some(json!(asyncpool::resources::DEFAULT_SIDECAR_IMAGE))
    );
    assert_eq!(value("ASYNCPOOL_LOG_FORMAT"), Some(json!("json")));
    assert_eq!(value("ASYNCPOOL_LEADER_ELECT"), Some(json!("true")));
    assert_eq!(
        value("ASYNCPOOL_OPERATOR_LISTEN"),
        Some(json!("0.0.0.0:8081"))
    );
    assert_eq!(value("ASYNCPOOL_NAMESPACE"), None, "default watches all");
    assert_eq!(
        container["image"],
        asyncpool::resources::DEFAULT_OPERATOR_IMAGE
    );

    assert_eq!(container["ports"][0]["name"], "http-metrics");
    assert_eq!(container["ports"][0]["containerPort"], 8081);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        container["readinessProbe"]["httpGet"]["port"],
        "http-metrics"
    );

    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);

    // The replicas spread: every constraint selects exactly the operator's pods.
    let pod_labels = pod["metadata"]["labels"].as_object().expect("pod labels");
    let spread = pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .expect("topology spread constraints");
    assert!(!spread.is_empty());
    for constraint in spread {
        let selector = constraint["labelSelector"]["matchLabels"]
            .as_object()
            .expect("matchLabels filled in");
        for (key, value) in selector {
            assert_eq!(pod_labels.get(key), Some(value), "spread selector {key}");
        }
    }

    // Standard labels on every object.
    for object in &objects {
        let labels = &object["metadata"]["labels"];
        for key in [
            "helm.sh/chart",
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
        ] {
            assert!(
                labels[key].is_string(),
                "{} {} lacks label {key}",
                object["kind"],
                object["metadata"]["name"]
            );
        }
    }
    assert_eq!(
        one(&objects, "PodDisruptionBudget")["spec"]["maxUnavailable"],
        1
    );
    assert!(
        of_kind(&objects, "ServiceMonitor").is_empty(),
        "off by default"
    );
    let service = one(&objects, "Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http-metrics");

    // With a ServiceMonitor: it scrapes the metrics Service's named port.
    let objects = render(&["serviceMonitor.enabled=true"]);
    let monitor = one(&objects, "ServiceMonitor");
    let service = one(&objects, "Service");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-metrics");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(&service["metadata"]["labels"][key], value, "selector {key}");
    }
}

#[test]
fn every_setting_the_chart_passes_is_one_the_operator_reads() {
    // clap ignores unknown environment variables, so a renamed flag would go unnoticed at run
    // time; `--help` lists every variable the binary reads.
    let help = succeeded(
        Command::new(env!("CARGO_BIN_EXE_asyncpool-operator"))
            .arg("--help")
            .output()
            .expect("run asyncpool-operator --help"),
        "asyncpool-operator --help",
    );
    let objects = render(&[
        "watchNamespace=team-a",
        "redis.caBundle.secretName=redis-ca",
    ]);
    let container = &one(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let names: Vec<&str> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    let mut checked = 0;
    for name in names.iter().filter(|n| n.starts_with("ASYNCPOOL_")) {
        assert!(
            help.contains(&format!("[env: {name}=")),
            "the chart sets {name}, which asyncpool-operator does not read"
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} ASYNCPOOL_* settings rendered");
    assert!(names.contains(&"RUST_LOG"), "log level is passed");
}

#[test]
fn watch_namespace_renders_a_role_there_and_no_cluster_wide_binding() {
    let cluster_wide = render(&[]);
    let cluster_role = of_kind(&cluster_wide, "ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "asyncpool:ops")
        .expect("the operator's ClusterRole, named after release and namespace");
    let binding = one(&cluster_wide, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], "asyncpool:ops");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "asyncpool", "namespace": "ops"}])
    );

    let namespaced = render(&["watchNamespace=team-a"]);
    assert!(
        of_kind(&namespaced, "ClusterRoleBinding").is_empty(),
        "a namespaced install binds nothing cluster-wide"
    );
    // The ClusterRoles left are the user-facing ones the built-in roles aggregate, never bound
    // to the operator.
    for role in of_kind(&namespaced, "ClusterRole") {
        let labels = role["metadata"]["labels"].as_object().expect("labels");
        assert!(
            labels
                .keys()
                .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-")),
            "ClusterRole {} in a namespaced install",
            role["metadata"]["name"]
        );
    }
    let role = of_kind(&namespaced, "Role")
        .into_iter()
        .find(|r| r["metadata"]["namespace"] == "team-a")
        .expect("a Role in the watched namespace");
    assert_eq!(
        role["rules"], cluster_role["rules"],
        "same rules, smaller scope"
    );
    let role_binding = of_kind(&namespaced, "RoleBinding")
        .into_iter()
        .find(|r| r["metadata"]["namespace"] == "team-a")
        .expect("a RoleBinding in the watched namespace");
    assert_eq!(role_binding["roleRef"]["kind"], "Role");
    assert_eq!(role_binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(role_binding["subjects"][0]["namespace"], "ops");

    // Leases stay in the release namespace either way.
    let lease_role = of_kind(&namespaced, "Role")
        .into_iter()
        .find(|r| r["metadata"]["namespace"] == "ops")
        .expect("the leader-election Role");
    assert_eq!(lease_role["rules"][0]["resources"], json!(["leases"]));

    let container = &one(&namespaced, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env_var(container, "ASYNCPOOL_NAMESPACE").map(|v| &v["value"]),
        Some(&json!("team-a"))
    );
}

#[test]
fn reading_redis_password_secrets_is_opt_in_and_get_only() {
    let secret_rules = |sets: &[&str]| -> Vec<Value> {
        let objects = render(sets);
        let role = of_kind(&objects, "ClusterRole")
            .into_iter()
            .find(|r| r["metadata"]["name"] == "asyncpool:ops")
            .expect("the operator's ClusterRole")
            .clone();
        role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .filter(|rule| {
                rule["resources"]
                    .as_array()
                    .is_some_and(|r| r.contains(&json!("secrets")))
            })
            .cloned()
            .collect()
    };
    assert!(
        secret_rules(&[]).is_empty(),
        "secrets are readable by default"
    );
    assert_eq!(
        secret_rules(&["rbac.redisPasswordSecrets=true"]),
        [json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})]
    );
}

#[test]
fn a_redis_ca_bundle_is_mounted_from_the_named_secret_or_config_map() {
    let pod = |sets: &[&str]| -> Value {
        one(&render(sets), "Deployment")["spec"]["template"]["spec"].clone()
    };
    let default = pod(&[]);
    assert!(default["volumes"].is_null(), "{}", default["volumes"]);
    assert_eq!(
        env_var(&default["containers"][0], "ASYNCPOOL_REDIS_CA_FILE"),
        None,
        "the public roots only by default"
    );
    for (sets, source) in [
        (
            &["redis.caBundle.secretName=redis-ca"][..],
            json!({"secret": {"secretName": "redis-ca", "items": [{"key": "ca.crt", "path": "ca.pem"}]}}),
        ),
        (
            &[
                "redis.caBundle.configMapName=redis-ca",
                "redis.caBundle.key=bundle.pem",
            ][..],
            json!({"configMap": {"name": "redis-ca", "items": [{"key": "bundle.pem", "path": "ca.pem"}]}}),
        ),
    ] {
        let pod = pod(sets);
        let mut volume = source;
        volume["name"] = json!("redis-ca");
        assert_eq!(pod["volumes"], json!([volume]), "{sets:?}");
        let container = &pod["containers"][0];
        assert_eq!(
            container["volumeMounts"],
            json!([{"name": "redis-ca", "mountPath": "/etc/asyncpool/redis-ca", "readOnly": true}])
        );
        assert_eq!(
            env_var(container, "ASYNCPOOL_REDIS_CA_FILE").map(|v| &v["value"]),
            Some(&json!("/etc/asyncpool/redis-ca/ca.pem")),
            "the mounted file, under the name the volume gives it"
        );
    }
}

#[test]
fn bad_values_are_refused_with_a_reason() {
    for (sets, expected) in [
        (&["replicaCont=3"][..], "replicaCont"),
        (&["leaderElection.leaseDuration=15"][..], "leaseDuration"),
        (&["logFormat=xml"][..], "logFormat"),
        (
            &["leaderElection.enabled=false"][..],
            "needs leaderElection.enabled",
        ),
        (
            &[
                "serviceMonitor.enabled=true",
                "metrics.service.enabled=false",
            ][..],
            "needs metrics.service.enabled",
        ),
        (
            &["prometheusRule.enabled=true"][..],
            "needs serviceMonitor.enabled",
        ),
        (&["networkPolicy.apiServer.ports={}"][..], "ports"),
        (
            &[
                "redis.caBundle.secretName=a",
                "redis.caBundle.configMapName=b",
            ][..],
            "set secretName or configMapName, not both",
        ),
        (&["redis.caBundle.sercetName=a"][..], "sercetName"),
    ] {
        let mut args = vec!["template", RELEASE, CHART, "--kube-version", KUBE_VERSION];
        for set in sets {
            args.extend(["--set", set]);
        }
        let out = helm_offline(&args);
        assert!(!out.status.success(), "helm template accepted {sets:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(expected),
            "refusing {sets:?} should mention {expected:?}: {stderr}"
        );
    }
}

#[test]
fn every_value_is_documented_in_the_install_guide() {
    let values: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_root().join(CHART).join("values.yaml")).expect("values"),
    )
    .expect("values.yaml parses");
    // Kubernetes-typed maps, and label maps with a default, are documented as a whole.
    let whole = [
        "podSecurityContext",
        "securityContext",
        "resources",
        "livenessProbe",
        "readinessProbe",
        "nodeSelector",
        "grafanaDashboard.labels",
    ];
    fn collect(prefix: &str, value: &Value, whole: &[&str], out: &mut Vec<String>) {
        match value.as_object() {
            Some(map) if !map.is_empty() && !whole.contains(&prefix) => {
                for (key, child) in map {
                    let path = if prefix.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    collect(&path, child, whole, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut keys = Vec::new();
    collect("", &values, &whole, &mut keys);
    let docs = std::fs::read_to_string(repo_root().join("docs/operator.md")).expect("docs");
    let missing: BTreeSet<&String> = keys
        .iter()
        .filter(|k| !docs.contains(&format!("| `{k}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operator.md's values table lacks {missing:?}"
    );
    assert!(keys.len() > 40, "found only {} keys", keys.len());
}

// --- in the cluster ----------------------------------------------------------------------------

#[tokio::test]
async fn helm_install_cluster_wide_grants_exactly_what_the_operator_needs() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "install-helm").await;
    enforce_restricted(&ns.name);
    let mut release = Release::install(&ns.name, &[]);
    let n = ns.name.as_str();

    // Helm installs the CRD from crds/ unless it is there already; either way it serves.
    succeeded(
        kubectl(&["get", "crd", "asyncworkerpools.asyncpool.dev", "-o", "name"]),
        "the CRD",
    );
    wait_operator_pods_running(&client, n, 2).await;
    let role_name = format!("asyncpool:{n}");
    for (kind, name, namespace) in [
        ("serviceaccount", "asyncpool", Some(n)),
        ("deployment", "asyncpool", Some(n)),
        ("service", "asyncpool-metrics", Some(n)),
        ("poddisruptionbudget", "asyncpool", Some(n)),
        ("role", "asyncpool-leader-election", Some(n)),
        ("rolebinding", "asyncpool-leader-election", Some(n)),
        ("clusterrole", role_name.as_str(), None),
        ("clusterrolebinding", role_name.as_str(), None),
    ] {
        let mut args = vec!["get", kind, name, "-o", "name"];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace]);
        }
        succeeded(kubectl(&args), &format!("get {kind} {name}"));
    }

    let operator = format!("system:serviceaccount:{n}:asyncpool");
    // "default" stands for any namespace with pools.
    assert_can(
        &operator,
        &[
            &["list", "asyncworkerpools.asyncpool.dev", "-A"],
            &["watch", "asyncworkerpools.asyncpool.dev", "-A"],
            &[
                "patch",
                "asyncworkerpools.asyncpool.dev",
                "--subresource=status",
                "-n",
                "default",
            ],
            &["get", "deployments.apps", "-n", "default"],
            &["create", "deployments.apps", "-n", "default"],
            &["patch", "deployments.apps", "-n", "default"],
            &["watch", "deployments.apps", "-A"],
            &["create", "services", "-n", "default"],
            &["patch", "services", "-n", "default"],
            &["watch", "pods", "-A"],
            &["patch", "pods", "-n", "default"],
            &["create", "events.events.k8s.io", "-n", "default"],
            &["patch", "events.events.k8s.io", "-n", "default"],
            &["create", "leases.coordination.k8s.io", "-n", n],
            &["get", "leases.coordination.k8s.io/asyncpool", "-n", n],
            &["update", "leases.coordination.k8s.io/asyncpool", "-n", n],
        ],
    );
    assert_cannot(
        &operator,
        &[
            &["get", "secrets", "-n", n],
            &["delete", "secrets", "-n", "default"],
            &["list", "secrets", "-A"],
            &["update", "asyncworkerpools.asyncpool.dev", "-n", "default"],
            &["delete", "asyncworkerpools.asyncpool.dev", "-n", "default"],
            &["delete", "deployments.apps", "-n", "default"],
            &["delete", "pods", "-n", "default"],
            &["create", "pods", "-n", "default"],
            &["create", "leases.coordination.k8s.io", "-n", "default"],
            &[
                "update",
                "leases.coordination.k8s.io/kube-scheduler",
                "-n",
                n,
            ],
            &["create", "clusterroles.rbac.authorization.k8s.io"],
        ],
    );

    // People: "edit" in a namespace now covers pools there, "view" reads them. The built-in roles
    // pick the rules up through the aggregation controller, so this converges.
    for (user, role) in [("dev", "edit"), ("auditor", "view")] {
        succeeded(
            kubectl(&[
                "create",
                "rolebinding",
                &format!("{user}-{role}"),
                &format!("--clusterrole={role}"),
                &format!("--user={user}"),
                "-n",
                n,
            ]),
            "bind a built-in role",
        );
    }
    eventually(
        "edit and view to cover AsyncWorkerPools",
        Duration::from_secs(30),
        || async {
            (can(
                "dev",
                &["create", "asyncworkerpools.asyncpool.dev", "-n", n],
            ) && can(
                "dev",
                &[
                    "patch",
                    "asyncworkerpools.asyncpool.dev",
                    "--subresource=scale",
                    "-n",
                    n,
                ],
            ) && can(
                "auditor",
                &["list", "asyncworkerpools.asyncpool.dev", "-n", n],
            ))
            .then_some(())
        },
    )
    .await;
    assert_cannot(
        "auditor",
        &[&["create", "asyncworkerpools.asyncpool.dev", "-n", n]],
    );

    // Uninstall removes the cluster-scoped objects that the namespace's deletion would not.
    release.uninstall();
    for name in [
        role_name.clone(),
        format!("{role_name}:view"),
        format!("{role_name}:edit"),
    ] {
        assert!(
            !cluster_role_exists(&name),
            "{name} outlived helm uninstall"
        );
    }
}

/// The operator binary as a process, configured the way the chart's Deployment configures its
/// container and holding only the chart's ServiceAccount token. Killed on drop.
struct ChartedOperator {
    child: Child,
    http_port: u16,
    log: PathBuf,
    _kubeconfig: tempfile::NamedTempFile,
}

impl ChartedOperator {
    fn start(deployment: &Deployment, namespace: &str, pod_name: &str) -> Self {
        let token = succeeded(
            kubectl(&[
                "create",
                "token",
                "asyncpool",
                "-n",
                namespace,
                "--duration=1h",
            ]),
            "create a ServiceAccount token",
        );
        let kubeconfig = token_kubeconfig(token.trim());
        let http_port = support::free_port();

        let container = &deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
            .containers[0];
        let mut command = Command::new(env!("CARGO_BIN_EXE_asyncpool-operator"));
        // Only what the chart sets may configure it.
        for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("ASYNCPOOL_")) {
            command.env_remove(name);
        }
        for var in container.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(value), None) => value.clone(),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.name") => pod_name.to_owned(),
                        Some("metadata.namespace") => namespace.to_owned(),
                        other => panic!("{}: cannot stand in for {other:?}", var.name),
                    }
                }
                other => panic!("{}: unexpected env source {other:?}", var.name),
            };
            command.env(&var.name, value);
        }
        // Two changes: the pod's port is not free on this machine, and debug logs show the
        // failures the operator otherwise tolerates quietly (an Event it may not write).
        command.env(
            "ASYNCPOOL_OPERATOR_LISTEN",
            format!("127.0.0.1:{http_port}"),
        );
        command.env("RUST_LOG", "info,asyncpool=debug,kube=warn");
        command.env("KUBECONFIG", kubeconfig.path());
        command.args(container.args.iter().flatten());

        let logs = repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        let log = logs.join(format!("{namespace}-charted-operator.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start the operator");
        Self {
            child,
            http_port,
            log,
            _kubeconfig: kubeconfig,
        }
    }

    /// Waits until this process holds the Lease "asyncpool" in `namespace`; fails at once, with
    /// its log, if the process exits (a setting it refuses, say).
    async fn wait_for_lease(&mut self, client: &kube::Client, namespace: &str, identity: &str) {
        let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
        let started = eventually(
            &format!("the operator to hold its Lease in {namespace}"),
            Duration::from_secs(30),
            || {
                let exited = self.child.try_wait().ok().flatten();
                let leases = leases.clone();
                async move {
                    if let Some(status) = exited {
                        return Some(Err(status));
                    }
                    let lease = leases.get_opt("asyncpool").await.ok()??;
                    (lease.spec?.holder_identity.as_deref() == Some(identity)).then_some(Ok(()))
                }
            },
        )
        .await;
        if let Err(status) = started {
            panic!("the operator exited ({status}):\n{}", self.log_tail());
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ChartedOperator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kubeconfig for the test cluster that authenticates with `token` only.
fn token_kubeconfig(token: &str) -> tempfile::NamedTempFile {
    let admin = Kubeconfig::read_from(kubeconfig_path()).expect("read kubeconfig");
    let cluster = admin.clusters[0].cluster.clone().expect("cluster entry");
    let mut entry = json!({"server": cluster.server});
    if let Some(path) = cluster.certificate_authority {
        entry["certificate-authority"] = json!(path);
    }
    if let Some(data) = cluster.certificate_authority_data {
        entry["certificate-authority-data"] = json!(data);
    }
    // JSON is YAML, which kubeconfig readers accept.
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": entry}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "test", "user": "operator"}}],
        "current-context": "operator",
    });
    let file = tempfile::NamedTempFile::new().expect("temp kubeconfig");
    std::fs::write(file.path(), config.to_string()).expect("write kubeconfig");
    file
}

async fn deployment_replicas(deployments: &Api<Deployment>, name: &str) -> Option<i32> {
    deployments.get_opt(name).await.ok()??.spec?.replicas
}

async fn scale_pool(namespace: &str, pool: &str, replicas: i32, deployments: &Api<Deployment>) {
    succeeded(
        kubectl(&[
            "scale",
            "-n",
            namespace,
            &format!("awp/{pool}"),
            &format!("--replicas={replicas}"),
        ]),
        "kubectl scale",
    );
    eventually(
        &format!("the Deployment at {replicas}"),
        Duration::from_secs(20),
        || async move {
            (deployment_replicas(deployments, pool).await == Some(replicas)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn helm_install_for_one_namespace_runs_the_operator_on_its_rbac_alone() {
    let client = client().await;
    install_crd(&client).await;
    let home = TestNamespace::new(&client, "install-home").await;
    let pools_ns = TestNamespace::new(&client, "install-pools").await;
    let (h, p) = (home.name.as_str(), pools_ns.name.as_str());
    let watch = format!("watchNamespace={p}");
    let mut release = Release::install(h, &[&watch]);

    let operator = format!("system:serviceaccount:{h}:asyncpool");
    assert_can(
        &operator,
        &[
            &["list", "asyncworkerpools.asyncpool.dev", "-n", p],
            &["patch", "deployments.apps", "-n", p],
            &["create", "leases.coordination.k8s.io", "-n", h],
        ],
    );
    assert_cannot(
        &operator,
        &[
            &["list", "asyncworkerpools.asyncpool.dev", "-A"],
            &["list", "pods", "-A"],
            &["patch", "deployments.apps", "-n", "default"],
            &["patch", "deployments.apps", "-n", h],
            &["create", "leases.coordination.k8s.io", "-n", p],
        ],
    );

    // Run the real operator with the installed Deployment's settings and the ServiceAccount's
    // token. kwok runs no containers, so this process stands in for the operator pod; the chart's
    // two kwok pods hold no Lease, so it leads alone.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), h);
    let installed = deployments
        .get("asyncpool")
        .await
        .expect("the operator Deployment");
    let identity = "asyncpool-0-test";
    let mut process = ChartedOperator::start(&installed, h, identity);
    process.wait_for_lease(&client, h, identity).await;
    // The liveness probe's path, and the metrics the ServiceMonitor scrapes, with this replica
    // marked as the leader.
    let port = process.http_port;
    eventually(
        "/livez and the leader gauge",
        Duration::from_secs(10),
        || async move {
            let (live, _) = asyncpool_testkit::operator::http_get(port, "/livez").await?;
            let (_, metrics) = asyncpool_testkit::operator::http_get(port, "/metrics").await?;
            (live == 200 && metrics.lines().any(|l| l == "asyncpool_leader 1")).then_some(())
        },
    )
    .await;

    // A paused pool, so that only `kubectl scale` moves it: no sidecars needed.
    let pools: Api<AsyncWorkerPool> = Api::namespaced(client.clone(), p);
    let pool: AsyncWorkerPool = serde_json::from_value(json!({
        "apiVersion": "asyncpool.dev/v1alpha1",
        "kind": "AsyncWorkerPool",
        "metadata": {"name": "web"},
        "spec": {
            "minReplicas": 1,
            "maxReplicas": 3,
            "concurrency": 4,
            "paused": true,
            "template": {"spec": {"containers": [{"name": "app", "image": "example/app:1"}]}}
        }
    }))
    .expect("pool object");
    pools
        .create(&PostParams::default(), &pool)
        .await
        .expect("create pool");

    // Server-side apply that creates the Deployment and Service (create + patch).
    let pool_deployments: Api<Deployment> = Api::namespaced(client.clone(), p);
    let services: Api<Service> = Api::namespaced(client.clone(), p);
    let created = eventually(
        "the pool's Deployment and Service",
        Duration::from_secs(20),
        || {
            let (pool_deployments, services) = (pool_deployments.clone(), services.clone());
            async move {
                let deployment = pool_deployments.get_opt("web").await.ok()??;
                services.get_opt("web").await.ok()??;
                Some(deployment)
            }
        },
    )
    .await;
    let sidecar = created
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers)
        .into_iter()
        .flatten()
        .find(|c| c.name == asyncpool_contract::pod::SIDECAR_CONTAINER)
        .expect("the injected sidecar");
    assert_eq!(
        sidecar.image.as_deref(),
        Some(asyncpool::resources::DEFAULT_SIDECAR_IMAGE),
        "the chart's sidecar image"
    );

    // The status subresource (patch).
    eventually("the pool's status written", Duration::from_secs(20), || {
        let pools = pools.clone();
        async move {
            let pool = pools.get("web").await.ok()?;
            let generation = pool.metadata.generation?;
            let status = pool.status?;
            (status.observed_generation == Some(generation)).then_some(())
        }
    })
    .await;

    // Scaling: up (a new Event), down (pods get their deletion cost first, so the pods patch
    // must be allowed), and up again (the same Event, patched to count two).
    scale_pool(p, "web", 2, &pool_deployments).await;
    scale_pool(p, "web", 1, &pool_deployments).await;
    scale_pool(p, "web", 2, &pool_deployments).await;
    let seen = eventually(
        "ScaledUp twice and ScaledDown once",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move {
                let seen = support::operator_events(&client, p, "web").await;
                let up_twice = seen.iter().any(|(r, n)| r == "ScaledUp" && *n == 2);
                let down = seen.iter().any(|(r, _)| r == "ScaledDown");
                (up_twice && down).then_some(seen)
            }
        },
    )
    .await;
    assert!(!seen.is_empty());

    let log = std::fs::read_to_string(&process.log).unwrap_or_default();
    assert!(
        !log.to_ascii_lowercase().contains("forbidden"),
        "the operator hit a permission it lacks:\n{}",
        process.log_tail()
    );
    drop(process);
    release.uninstall();
}

#[tokio::test]
async fn kubectl_apply_of_the_plain_manifests_runs_the_operator() {
    let client = client().await;
    // The manifests name their namespace; give this run its own, so that it neither meets a
    // real install nor a parallel run.
    let namespace = format!("install-kubectl-{:08x}", rand::random::<u32>());
    let manifest = std::fs::read_to_string(repo_root().join("deploy/operator.yaml"))
        .expect("read deploy/operator.yaml")
        .replace("asyncpool-system", &namespace);

    let applied = Applied::apply(manifest, "kubectl apply -f deploy/operator.yaml");

    // The Namespace carries the restricted Pod Security level and the pods are still admitted.
    let labels = succeeded(
        kubectl(&[
            "get",
            "namespace",
            &namespace,
            "-o",
            "jsonpath={.metadata.labels.pod-security\\.kubernetes\\.io/enforce}",
        ]),
        "read namespace labels",
    );
    assert_eq!(labels.trim(), "restricted");
    wait_operator_pods_running(&client, &namespace, 2).await;
    assert!(can(
        &format!("system:serviceaccount:{namespace}:asyncpool"),
        &["patch", "deployments.apps", "-n", "default"],
    ));

    succeeded(
        kubectl_stdin(&["delete", "-f", "-", "--wait=false"], &applied.0),
        "kubectl delete -f deploy/operator.yaml",
    );
    assert!(
        !cluster_role_exists(&format!("asyncpool:{namespace}")),
        "kubectl delete left the ClusterRole"
    );
}

/// What the chart's readinessProbe relies on: a leading operator answers /readyz with 200 once
/// its caches are synced (else rollouts and `helm --wait` hang and the metrics Service drops the
/// leader).
#[tokio::test]
async fn a_leading_operator_turns_ready_for_the_chart_probe() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "install-ready").await;
    let operator =
        asyncpool_testkit::operator::OperatorProcess::start(&ns.name, "ready", &[]).await;
    let port = operator.http_port;
    eventually(
        "/readyz to answer 200",
        Duration::from_secs(20),
        || async move {
            asyncpool_testkit::operator::http_get(port, "/readyz")
                .await
                .filter(|(status, _)| *status == 200)
        },
    )
    .await;
}

// --- Helm 4 and Helm 3 -------------------------------------------------------------------------

/// `spec.replicas` of the release's operator Deployment, or None once it is gone.
async fn operator_replicas(client: &kube::Client, namespace: &str) -> Option<i32> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    deployments.get_opt(RELEASE).await.ok()??.spec?.replicas
}

/// The release's revision and status, as `helm status` reports them.
fn release_status(release: &Release) -> (u64, String) {
    let status: Value = serde_json::from_str(&succeeded(
        release.run(&["status", RELEASE, "-o", "json"]),
        "helm status",
    ))
    .expect("helm status JSON");
    (
        status["version"].as_u64().unwrap_or_default(),
        status["info"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// The whole life of a release with one helm: install, upgrade with a changed value, uninstall.
async fn install_upgrade_uninstall(version: &str) {
    let client = client().await;
    install_crd(&client).await;
    let major = version.split('.').next().unwrap_or(version);
    let ns = TestNamespace::new(&client, &format!("helm-{major}")).await;
    let n = ns.name.as_str();
    let mut release = Release::install_with(&helm_path_of(version), n, &[]);
    assert_eq!(release_status(&release), (1, "deployed".to_owned()));
    wait_operator_pods_running(&client, n, 2).await;

    release.upgrade(&["--set", "replicaCount=1", "--set", "logLevel=debug"]);
    assert_eq!(release_status(&release), (2, "deployed".to_owned()));
    assert_eq!(operator_replicas(&client, n).await, Some(1));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), n);
    let upgraded = deployments
        .get(RELEASE)
        .await
        .expect("the operator Deployment");
    let container = &upgraded
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec")
        .containers[0];
    assert!(
        container
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug")),
        "the upgraded log level did not reach the Deployment: {:?}",
        container.env
    );
    wait_operator_pods_running(&client, n, 1).await;

    release.uninstall();
    assert_eq!(operator_replicas(&client, n).await, None);
    let role = format!("asyncpool:{n}");
    assert!(
        !cluster_role_exists(&role),
        "{role} outlived helm uninstall"
    );
    // The CRD, and so every pool in the cluster, survives an uninstall.
    succeeded(
        kubectl(&["get", "crd", "asyncworkerpools.asyncpool.dev", "-o", "name"]),
        "the CRD after uninstall",
    );
}

#[tokio::test]
async fn helm_4_installs_upgrades_and_uninstalls_the_chart() {
    install_upgrade_uninstall(HELM_VERSION).await;
}

#[tokio::test]
async fn helm_3_installs_upgrades_and_uninstalls_the_chart() {
    install_upgrade_uninstall(HELM3_VERSION).await;
}

const CRD: &str = "asyncworkerpools.asyncpool.dev";

fn crd_annotation(key: &str) -> String {
    let path = format!(
        "jsonpath={{.metadata.annotations.{}}}",
        key.replace('.', "\\.")
    );
    succeeded(kubectl(&["get", "crd", CRD, "-o", &path]), "read the CRD")
}

/// `value` with every number as a float, so that 1 and 1.0 compare equal.
fn as_floats(value: &Value) -> Value {
    match value {
        Value::Number(n) => n.as_f64().map_or(Value::Null, |f| json!(f)),
        Value::Array(items) => Value::Array(items.iter().map(as_floats).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), as_floats(v))).collect())
        }
        other => other.clone(),
    }
}

#[test]
fn templated_crds_are_off_by_default_and_kept_unless_asked() {
    let default = render(&[]);
    assert!(of_kind(&default, "CustomResourceDefinition").is_empty());
    let on = render(&["crds.enabled=true"]);
    let crd = one(&on, "CustomResourceDefinition");
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    // The template is the crds/ file, only labelled and annotated. (Helm's YAML round trip
    // writes 1.0 as 1: the same JSON number, so numbers are compared as numbers.)
    let file: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_root().join("crds/asyncworkerpools.yaml")).expect("CRD file"),
    )
    .expect("CRD YAML");
    assert!(
        crd["spec"] == as_floats(&file["spec"])
            || as_floats(&crd["spec"]) == as_floats(&file["spec"]),
        "the templated CRD's spec differs from crds/asyncworkerpools.yaml"
    );
    assert_eq!(crd["metadata"]["name"], file["metadata"]["name"]);
    assert_eq!(
        crd["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "Helm"
    );
    let unkept = render(&["crds.enabled=true", "crds.keep=false"]);
    let crd = one(&unkept, "CustomResourceDefinition");
    assert!(crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
}

#[tokio::test]
async fn templated_crds_are_adopted_updated_on_upgrade_and_kept_on_uninstall() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "helm-crds").await;
    let n = ns.name.as_str();
    // What docs/operator.md tells a user moving from crds/ to the templated CRD: hand the
    // existing CRD to the release (it may carry a previous release's marks: overwrite them).
    succeeded(
        kubectl(&[
            "annotate",
            "crd",
            CRD,
            "--overwrite",
            "meta.helm.sh/release-name=asyncpool",
            &format!("meta.helm.sh/release-namespace={n}"),
        ]),
        "annotate the CRD for Helm",
    );
    succeeded(
        kubectl(&[
            "label",
            "crd",
            CRD,
            "--overwrite",
            "app.kubernetes.io/managed-by=Helm",
        ]),
        "label the CRD for Helm",
    );
    let mut release = Release::install_with(
        &helm_path(),
        n,
        &["--skip-crds", "--set", "crds.enabled=true"],
    );
    assert_eq!(crd_annotation("helm.sh/resource-policy"), "keep");

    // An upgrade reaches the CRD, which Helm never does for crds/.
    let marker = format!("crds.annotations.asyncpool\\.dev/test-run={n}");
    release.upgrade(&[
        "--skip-crds",
        "--set",
        "crds.enabled=true",
        "--set",
        &marker,
    ]);
    assert_eq!(crd_annotation("asyncpool.dev/test-run"), n);

    // A chart whose CRD spec changed, as a new version's would. Helm 4 applies server-side, and
    // the fields were first applied by another manager (here the tests', for users kubectl's):
    // the upgrade stops on the conflict until it is forced, as docs/operator.md says.
    let newer = tempfile::tempdir().expect("tempdir");
    let chart = newer.path().join("asyncpool");
    succeeded(
        Command::new("cp")
            .arg("-r")
            .arg(repo_root().join(CHART))
            .arg(&chart)
            .output()
            .expect("run cp"),
        "copy the chart",
    );
    let crd_file = chart.join("crds/asyncworkerpools.yaml");
    let crd_text = std::fs::read_to_string(&crd_file).expect("chart CRD");
    let changed = crd_text.replacen(
        "    categories:\n    - asyncpool\n",
        "    categories:\n    - asyncpool\n    - asyncpool-upgraded\n",
        1,
    );
    assert_ne!(
        changed, crd_text,
        "the CRD's categories were not where expected"
    );
    std::fs::write(&crd_file, changed).expect("write chart CRD");
    let chart_path = chart.to_string_lossy().into_owned();
    let upgrade = |force: bool| {
        let mut args = vec!["upgrade", RELEASE, chart_path.as_str()];
        args.extend([
            "--skip-crds",
            "--set",
            "crds.enabled=true",
            "--set",
            &marker,
        ]);
        if force {
            args.push("--force-conflicts");
        }
        release.run(&args)
    };
    let refused = upgrade(false);
    assert!(
        !refused.status.success() && text(&refused.stderr).contains("conflict"),
        "an upgrade over fields another manager owns went through without --force-conflicts: {}",
        text(&refused.stderr)
    );
    succeeded(upgrade(true), "helm upgrade --force-conflicts");

    release.uninstall();
    assert_eq!(
        crd_annotation("asyncpool.dev/test-run"),
        n,
        "helm uninstall removed or replaced the kept CRD"
    );
}

// --- Kustomize ---------------------------------------------------------------------------------

/// A Kustomize overlay that moves the plain manifests to another namespace: every namespaced
/// object goes there, the bindings name the moved ServiceAccount, and the operator keeps its
/// Lease there too (the manifests do not pin the Lease's namespace).
#[tokio::test]
async fn a_kustomize_namespace_overlay_moves_the_operator_and_its_lease() {
    let client = client().await;
    install_crd(&client).await;
    let namespace = format!("kustomized-{:08x}", rand::random::<u32>());
    // Kustomize takes bases only by relative path: the overlay lives inside the repository.
    let overlay = repo_root().join(format!("target/kustomize-{namespace}"));
    std::fs::create_dir_all(&overlay).expect("overlay dir");
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             namespace: {namespace}\nresources:\n  - ../../deploy\n"
        ),
    )
    .expect("write the overlay");
    let rendered = succeeded(
        kubectl(&["kustomize", &overlay.to_string_lossy()]),
        "kubectl kustomize",
    );
    let _ = std::fs::remove_dir_all(&overlay);
    assert!(
        !rendered.contains("namespace: asyncpool-system"),
        "an object stayed in asyncpool-system"
    );

    let _applied = Applied::apply(rendered, "kubectl apply of the overlay");
    wait_operator_pods_running(&client, &namespace, 2).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let installed = deployments
        .get("asyncpool")
        .await
        .expect("the operator Deployment in the overlay's namespace");
    let identity = "asyncpool-kustomized";
    let mut process = ChartedOperator::start(&installed, &namespace, identity);
    process.wait_for_lease(&client, &namespace, identity).await;
}

// --- NetworkPolicy -----------------------------------------------------------------------------

#[tokio::test]
async fn the_network_policy_lets_the_operator_reach_what_it_needs_and_the_api_server_takes_it() {
    let objects = render(&[
        "networkPolicy.enabled=true",
        "watchNamespace=team",
        "networkPolicy.apiServer.cidrs[0]=10.0.0.1/32",
    ]);
    let policy = one(&objects, "NetworkPolicy");
    let spec = &policy["spec"];
    assert_eq!(
        spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "operator"
    );
    assert_eq!(spec["ingress"][0]["ports"][0]["port"], 8081);
    let egress = spec["egress"].as_array().expect("egress rules");
    let to_port = |port: u64| {
        egress
            .iter()
            .find(|rule| {
                rule["ports"]
                    .as_array()
                    .is_some_and(|ports| ports.iter().any(|p| p["port"] == port))
            })
            .unwrap_or_else(|| panic!("no egress rule for port {port}"))
    };
    assert_eq!(to_port(443)["to"][0]["ipBlock"]["cidr"], "10.0.0.1/32");
    assert!(
        to_port(53)["to"].is_null(),
        "DNS must be reachable wherever it runs"
    );
    let workers = &to_port(u64::from(asyncpool_contract::pod::ADMIN_PORT))["to"][0];
    assert_eq!(
        workers["podSelector"]["matchExpressions"][0]["key"],
        "asyncpool.dev/pool"
    );
    assert_eq!(
        workers["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "team"
    );
    // Cluster-wide, the workers may be in any namespace.
    let wide = render(&["networkPolicy.enabled=true"]);
    let wide_rules = one(&wide, "NetworkPolicy")["spec"]["egress"].clone();
    assert!(
        wide_rules
            .as_array()
            .expect("egress")
            .iter()
            .any(|r| r["to"][0]["namespaceSelector"] == json!({})),
        "{wide_rules}"
    );

    // The API server accepts it as rendered.
    let client = client().await;
    let ns = TestNamespace::new(&client, "install-netpol").await;
    let mut rendered = policy.clone();
    rendered["metadata"]["namespace"] = json!(ns.name);
    succeeded(
        kubectl_stdin(
            &["apply", "--dry-run=server", "-f", "-"],
            &rendered.to_string(),
        ),
        "server-side dry run of the NetworkPolicy",
    );
}
