//! The operator's RBAC, proven least-privilege on the local cluster. The operator binary runs as a
//! ServiceAccount that holds exactly the rules the chart ships, through everything it does (leader
//! election; a pool built, its status written, scaled up and down with victims marked, Events
//! recorded and counted, its spec changed, the pool deleted), and the API server's audit log says
//! which permissions it used: every one it is granted, and none refused. Then a
//! SubjectAccessReview for every verb of every resource the API server serves shows that the
//! account may do nothing else. The one opt-in right (reading Secrets, for Redis passwords) is
//! checked the same way: it adds exactly that, and the operator uses it.

use asyncpool_testkit::cluster as support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use asyncpool::crd::AsyncWorkerPool;
use asyncpool_testkit::audit::{self, AuditRequest};
use asyncpool_testkit::identity::{OPERATOR_LEASE, OperatorRbac, service_account_kubeconfig};
use asyncpool_testkit::operator::OperatorProcess;
use asyncpool_testkit::redis::RedisServer;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{
    TestNamespace, client, eventually, fleet, free_port, install_crd, operator_events, repo_root,
    test_pool,
};
use tokio::time::Instant;

/// The operator's ServiceAccount in the tests' namespaces.
const ACCOUNT: &str = "asyncpool-operator";

/// Permissions the chart grants that the drive below cannot show used, each with the reason it
/// is needed all the same. Empty: the drive uses every one.
const NEEDED_BUT_NOT_SEEN: &[(&str, &str)] = &[];

/// RBAC verbs that discovery does not list (the API server checks them beside the REST verbs),
/// on the resources they apply to: (group, resource, verb, namespaced).
const VERBS_NOT_IN_DISCOVERY: &[(&str, &str, &str, bool)] = &[
    ("rbac.authorization.k8s.io", "roles", "bind", true),
    ("rbac.authorization.k8s.io", "roles", "escalate", true),
    ("rbac.authorization.k8s.io", "clusterroles", "bind", false),
    (
        "rbac.authorization.k8s.io",
        "clusterroles",
        "escalate",
        false,
    ),
    ("", "users", "impersonate", false),
    ("", "groups", "impersonate", false),
    ("", "serviceaccounts", "impersonate", true),
    ("authentication.k8s.io", "uids", "impersonate", false),
    (
        "authentication.k8s.io",
        "userextras/scopes",
        "impersonate",
        false,
    ),
    ("certificates.k8s.io", "signers", "approve", false),
    ("certificates.k8s.io", "signers", "sign", false),
    ("certificates.k8s.io", "signers", "attest", false),
    // Everything at once: true only for a rule made of wildcards.
    ("*", "*", "*", true),
    ("*", "*", "*", false),
];

/// One RBAC permission: a verb on a resource (`pods`, or `pods/exec` for a subresource) of an
/// API group (`""` for the core group).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Permission {
    group: String,
    resource: String,
    verb: String,
}

impl Permission {
    fn new(group: &str, resource: &str, verb: &str) -> Self {
        Self {
            group: group.to_owned(),
            resource: resource.to_owned(),
            verb: verb.to_owned(),
        }
    }

    /// What a request that used this permission shows in the audit log.
    fn of(request: &AuditRequest) -> Self {
        Self::new(&request.api_group, &request.rbac_resource(), &request.verb)
    }
}

/// `verb resource.group/subresource`, as `kubectl auth can-i` spells it.
impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (resource, subresource) = match self.resource.split_once('/') {
            Some((resource, subresource)) => (resource, Some(subresource)),
            None => (self.resource.as_str(), None),
        };
        write!(f, "{} {resource}", self.verb)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        if let Some(subresource) = subresource {
            write!(f, "/{subresource}")?;
        }
        Ok(())
    }
}

/// Where a permission is granted: the namespace of its Role, and the only objects it covers
/// when the rule names them.
#[derive(Debug, Clone)]
struct Grant {
    namespace: String,
    names: Option<Vec<String>>,
}

/// Every permission the Roles grant, each once. Fails the test on a wildcard (a rule that would
/// grant what the API server adds later), a non-resource URL, or a permission granted twice (the
/// table would not tell which rule needs it).
fn granted_permissions(rbac: &OperatorRbac) -> BTreeMap<Permission, Grant> {
    let mut granted = BTreeMap::new();
    for role in &rbac.roles {
        for rule in &role.rules {
            assert_no_wildcard(&role.name, rule);
            let groups = rule.api_groups.iter().flatten();
            for (group, resource) in groups.flat_map(|g| {
                rule.resources
                    .iter()
                    .flatten()
                    .map(move |resource| (g, resource))
            }) {
                for verb in &rule.verbs {
                    let grant = Grant {
                        namespace: role.namespace.clone(),
                        names: rule.resource_names.clone().filter(|n| !n.is_empty()),
                    };
                    let permission = Permission::new(group, resource, verb);
                    assert!(
                        granted.insert(permission.clone(), grant).is_none(),
                        "{permission} is granted twice"
                    );
                }
            }
        }
    }
    granted
}

fn assert_no_wildcard(role: &str, rule: &PolicyRule) {
    let fields = [
        ("apiGroups", rule.api_groups.clone().unwrap_or_default()),
        ("resources", rule.resources.clone().unwrap_or_default()),
        ("verbs", rule.verbs.clone()),
        (
            "resourceNames",
            rule.resource_names.clone().unwrap_or_default(),
        ),
    ];
    for (field, values) in fields {
        assert!(
            !values.iter().any(|v| v.contains('*')),
            "Role {role} has a wildcard in {field}: {values:?}"
        );
    }
    assert!(
        rule.non_resource_urls.as_ref().is_none_or(Vec::is_empty),
        "Role {role} grants non-resource URLs: {:?}",
        rule.non_resource_urls
    );
}

// --- what the tests grant is what is shipped ----------------------------------------------------

/// The operator's rules in deploy/operator.yaml (the chart's default, cluster-wide render): its
/// ClusterRole's and its leader-election Role's, with the Lease that the latter names.
fn shipped_rules() -> (Vec<PolicyRule>, String) {
    let text = std::fs::read_to_string(repo_root().join("deploy/operator.yaml"))
        .expect("read deploy/operator.yaml");
    let objects: Vec<Value> = serde_saphyr::from_str_multiple(&text).expect("YAML");
    let account = objects
        .iter()
        .find(|o| o["kind"] == "ServiceAccount")
        .expect("the operator's ServiceAccount");
    let is_operator = |subject: &Value| {
        subject["kind"] == "ServiceAccount"
            && subject["name"] == account["metadata"]["name"]
            && subject["namespace"] == account["metadata"]["namespace"]
    };
    let mut rules = Vec::new();
    for binding in objects.iter().filter(|o| {
        o["subjects"]
            .as_array()
            .is_some_and(|s| s.iter().any(is_operator))
    }) {
        let role = objects
            .iter()
            .find(|o| {
                o["kind"] == binding["roleRef"]["kind"]
                    && o["metadata"]["name"] == binding["roleRef"]["name"]
            })
            .expect("every role bound to the operator is in the file");
        let bound: Vec<PolicyRule> = serde_json::from_value(role["rules"].clone()).expect("rules");
        rules.extend(bound);
    }
    let lease = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .and_then(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()?
                .iter()
                .find(|e| e["name"] == "ASYNCPOOL_LEASE_NAME")?["value"]
                .as_str()
                .map(str::to_owned)
        })
        .expect("the operator's Lease name");
    (rules, lease)
}

/// Rules as sorted JSON texts, so that two lists compare whatever their order.
fn canonical(rules: &[PolicyRule]) -> Vec<String> {
    let mut texts: Vec<String> = rules
        .iter()
        .map(|r| serde_json::to_string(r).expect("rule JSON"))
        .collect();
    texts.sort();
    texts
}

#[test]
fn the_rules_granted_here_are_the_shipped_ones() {
    // Offline: the chart rendered for a namespace, compared with the plain manifests (which
    // tests/install.rs keeps identical to the chart's default render, byte for byte).
    let rbac = OperatorRbac::render("rbac-offline", ACCOUNT);
    let tested: Vec<PolicyRule> = rbac.roles.iter().flat_map(|r| r.rules.clone()).collect();
    let (mut shipped, lease) = shipped_rules();
    // The one difference: the tests' operators elect on the binary's default Lease name.
    for rule in &mut shipped {
        for name in rule.resource_names.iter_mut().flatten() {
            if *name == lease {
                *name = OPERATOR_LEASE.to_owned();
            }
        }
    }
    assert_eq!(canonical(&tested), canonical(&shipped));
    granted_permissions(&rbac);
}

// --- used: the operator through everything it does ----------------------------------------------

struct Cluster {
    client: Client,
    namespace: String,
    pools: Api<AsyncWorkerPool>,
    deployments: Api<Deployment>,
}

impl Cluster {
    async fn replicas(&self, name: &str) -> Option<i32> {
        self.deployments.get_opt(name).await.ok()??.spec?.replicas
    }

    async fn wait_replicas(&self, name: &str, want: i32, limit: Duration) {
        eventually(
            &format!("Deployment {name} at {want} replicas"),
            limit,
            || async move { (self.replicas(name).await == Some(want)).then_some(()) },
        )
        .await;
    }

    async fn events(&self, pool: &str) -> Vec<(String, i32)> {
        operator_events(&self.client, &self.namespace, pool).await
    }

    async fn wait_event(&self, pool: &str, reason: &str, at_least: i32) {
        eventually(
            &format!("a {reason} Event on {pool} counted {at_least} times"),
            Duration::from_secs(20),
            || async move {
                self.events(pool)
                    .await
                    .iter()
                    .any(|(r, count)| r == reason && *count >= at_least)
                    .then_some(())
            },
        )
        .await;
    }

    async fn live_pods(&self, pool: &str) -> Option<usize> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = pods
            .list(&ListParams::default().labels(&format!("asyncpool.dev/pool={pool}")))
            .await
            .ok()?;
        Some(
            list.items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count(),
        )
    }
}

/// Whether the pool's condition `type_` has `status`, for the pool's current generation.
fn has_condition(pool: &AsyncWorkerPool, type_: &str, status: &str) -> bool {
    let Some(pool_status) = &pool.status else {
        return false;
    };
    pool_status.observed_generation == pool.metadata.generation
        && pool_status
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == status)
}

/// Everything the operator does with the API, each step checked for its effect: with a rule
/// missing, a step stops here.
async fn drive_the_operator(cluster: &Cluster, identity: &str) {
    let name = "web";
    // Leader election: the Lease created (get finds none, create), then held (get, update).
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let first_renewal = eventually(
        "the operator to hold its Lease",
        Duration::from_secs(20),
        || async {
            let spec = leases.get_opt(OPERATOR_LEASE).await.ok()??.spec?;
            (spec.holder_identity.as_deref() == Some(identity)).then_some(spec.renew_time)
        },
    )
    .await;

    // A pool becomes a Deployment and a Service, by server-side apply (get finds none, an apply
    // creates them), both owned by the pool.
    cluster
        .pools
        .create(&PostParams::default(), &test_pool(name, json!({})))
        .await
        .expect("create the pool");
    let fleet = fleet(&cluster.client, &cluster.namespace, name);
    fleet.set_total_load(0);
    cluster
        .wait_replicas(name, 1, Duration::from_secs(20))
        .await;
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let service = eventually("the pool's Service", Duration::from_secs(10), || async {
        services.get_opt(name).await.ok()?
    })
    .await;
    assert!(
        service
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.kind == "AsyncWorkerPool"),
        "the Service is not owned by its pool"
    );

    // The status subresource, written once the worker reports.
    eventually("the pool Ready", Duration::from_secs(20), || async {
        let pool = cluster.pools.get(name).await.ok()?;
        has_condition(&pool, "Ready", "True").then_some(())
    })
    .await;

    // Scaled up twice: two ScaledUp Events, the second counted on the first (create, patch).
    fleet.set_total_load(25);
    cluster
        .wait_replicas(name, 3, Duration::from_secs(15))
        .await;
    fleet.set_total_load(45);
    cluster
        .wait_replicas(name, 5, Duration::from_secs(15))
        .await;
    cluster.wait_event(name, "ScaledUp", 2).await;

    // Scaled down: the workers to go are marked first (pod patch), then the Deployment shrinks.
    eventually("5 workers up", Duration::from_secs(20), || async {
        (cluster.live_pods(name).await? == 5).then_some(())
    })
    .await;
    fleet.set_total_load(0);
    cluster
        .wait_replicas(name, 1, Duration::from_secs(40))
        .await;
    eventually("one worker left", Duration::from_secs(20), || async {
        (cluster.live_pods(name).await? == 1).then_some(())
    })
    .await;
    cluster.wait_event(name, "ScaledDown", 1).await;

    // The spec changes: the Deployment follows (patch of an existing object) and the status says
    // which generation it reflects.
    cluster
        .pools
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "example/app:2"}]}}}})),
        )
        .await
        .expect("change the pool's template");
    eventually(
        "the new image in the Deployment and the status",
        Duration::from_secs(20),
        || async {
            let deployment = cluster.deployments.get(name).await.ok()?;
            let image = deployment
                .spec?
                .template
                .spec?
                .containers
                .first()?
                .image
                .clone()?;
            let pool = cluster.pools.get(name).await.ok()?;
            (image == "example/app:2" && has_condition(&pool, "Ready", "True")).then_some(())
        },
    )
    .await;

    // Deleted: the garbage collector removes what the pool owned; the operator needs no delete.
    cluster
        .pools
        .delete(name, &DeleteParams::foreground())
        .await
        .expect("delete the pool");
    eventually(
        "the pool, its Deployment and Service gone",
        Duration::from_secs(30),
        || async {
            let gone = cluster.pools.get_opt(name).await.ok()?.is_none()
                && cluster.deployments.get_opt(name).await.ok()?.is_none()
                && services.get_opt(name).await.ok()?.is_none();
            gone.then_some(())
        },
    )
    .await;

    // The Lease was renewed meanwhile (update), by the same holder.
    let spec = leases
        .get(OPERATOR_LEASE)
        .await
        .expect("the Lease")
        .spec
        .expect("Lease spec");
    assert_eq!(spec.holder_identity.as_deref(), Some(identity));
    assert_ne!(
        spec.renew_time, first_renewal,
        "the Lease was never renewed"
    );
}

/// The operator for `namespace`, authenticated as the ServiceAccount [`ACCOUNT`] there, with
/// leader election on and a short Lease (so that its renewals show within the test); and the
/// user name the audit log knows it by.
async fn operator_as_its_account(
    client: &Client,
    namespace: &str,
    identity: &str,
) -> (OperatorProcess, String) {
    let kubeconfig = service_account_kubeconfig(client, namespace, ACCOUNT).await;
    let lease = [
        "--leader-elect=true",
        "--lease-duration",
        "3s",
        "--lease-renew",
        "1s",
    ];
    let operator =
        OperatorProcess::start_with_kubeconfig(namespace, identity, &lease, &kubeconfig).await;
    (
        operator,
        format!("system:serviceaccount:{namespace}:{ACCOUNT}"),
    )
}

/// A line for a request in a failure message.
fn describe(request: &AuditRequest) -> String {
    format!(
        "{} {} -> {:?}",
        request.verb, request.request_uri, request.code
    )
}

/// Fails the test at once when the cluster keeps no audit log, rather than later with nothing
/// seen used.
fn require_audit_log() {
    assert!(
        audit::log_path().exists(),
        "no audit log at {}: the cluster was started before auditing was added to \
         scripts/cluster (scripts/cluster down, then up)",
        audit::log_path().display()
    );
}

#[tokio::test]
async fn the_operator_uses_every_permission_it_is_granted_and_no_other() {
    require_audit_log();
    let started = Instant::now();
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "rbac-used").await;
    let rbac = OperatorRbac::render(&ns.name, ACCOUNT);
    let granted = granted_permissions(&rbac);
    rbac.grant(&client).await;
    let identity = "rbac-leader";
    let (operator, user) = operator_as_its_account(&client, &ns.name, identity).await;
    let cluster = Cluster {
        pools: Api::namespaced(client.clone(), &ns.name),
        deployments: Api::namespaced(client.clone(), &ns.name),
        client: client.clone(),
        namespace: ns.name.clone(),
    };
    drive_the_operator(&cluster, identity).await;
    // Everything it did is in the log; nothing it does later counts.
    drop(operator);

    let requests = audit::requests_by(&user);
    assert!(
        !requests.is_empty(),
        "the audit log {} holds no request by {user}",
        audit::log_path().display()
    );
    let refused: Vec<String> = requests
        .iter()
        .filter(|r| !r.was_authorized())
        .map(describe)
        .collect();
    assert!(refused.is_empty(), "refused to the operator: {refused:#?}");
    let elsewhere: Vec<String> = requests
        .iter()
        .filter(|r| r.namespace.as_deref() != Some(ns.name.as_str()))
        .map(describe)
        .collect();
    assert!(
        elsewhere.is_empty(),
        "requests outside the operator's namespace: {elsewhere:#?}"
    );
    // Each owned object is created once: a pool being deleted is left to the garbage collector,
    // whatever the operator's caches still hold.
    let mut created: BTreeMap<String, usize> = BTreeMap::new();
    let owned = ["services", "deployments"];
    for request in requests
        .iter()
        .filter(|r| r.code == Some(201) && owned.contains(&r.resource.as_str()))
    {
        let name = request.name.clone().unwrap_or_default();
        *created
            .entry(format!("{} {name}", request.rbac_resource()))
            .or_default() += 1;
    }
    let again: Vec<&String> = created
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(
        again.is_empty(),
        "created more than once: {again:?} ({created:?})"
    );

    let mut used: BTreeMap<Permission, usize> = BTreeMap::new();
    for request in &requests {
        *used.entry(Permission::of(request)).or_default() += 1;
        // A server-side apply that creates its object (201) is authorized as a create as well,
        // which the log records only as the patch it was.
        if request.verb == "patch" && request.code == Some(201) {
            *used
                .entry(Permission::new(
                    &request.api_group,
                    &request.rbac_resource(),
                    "create",
                ))
                .or_default() += 1;
        }
    }

    println!("{:<52} {:>7} {:>6}", "permission", "granted", "used");
    let all: BTreeSet<&Permission> = granted.keys().chain(used.keys()).collect();
    for permission in &all {
        let grant = granted.get(*permission).map_or("no".to_owned(), |g| {
            g.names
                .as_ref()
                .map_or("yes".to_owned(), |names| names.join(","))
        });
        let count = used.get(*permission).copied().unwrap_or(0);
        println!("{:<52} {grant:>7} {count:>6}", permission.to_string());
    }
    println!(
        "{} requests by the operator, {} of them writes; {:.1?} in all",
        requests.len(),
        requests.iter().filter(|r| r.is_write()).count(),
        started.elapsed()
    );

    let excused: BTreeSet<&str> = NEEDED_BUT_NOT_SEEN.iter().map(|(p, _)| *p).collect();
    let unused: Vec<String> = granted
        .keys()
        .filter(|p| !used.contains_key(*p))
        .map(ToString::to_string)
        .filter(|p| !excused.contains(p.as_str()))
        .collect();
    assert!(
        unused.is_empty(),
        "granted but never used (remove them, or say in NEEDED_BUT_NOT_SEEN why they stay): \
         {unused:?}"
    );
    let stale: Vec<&str> = excused
        .iter()
        .copied()
        .filter(|p| used.keys().any(|u| u.to_string() == *p))
        .collect();
    assert!(
        stale.is_empty(),
        "NEEDED_BUT_NOT_SEEN lists permissions that were used: {stale:?}"
    );
    let ungranted: Vec<String> = used
        .keys()
        .filter(|p| !granted.contains_key(*p))
        .map(ToString::to_string)
        .collect();
    assert!(
        ungranted.is_empty(),
        "used without a grant of the chart (a right every account has?): {ungranted:?}"
    );
}

/// The chart's opt-in for pools whose Redis password is in a Secret.
const SECRETS_OPT_IN: &str = "rbac.redisPasswordSecrets=true";

#[tokio::test]
async fn the_redis_password_opt_in_adds_reading_secrets_which_the_operator_uses() {
    require_audit_log();
    let redis = RedisServer::start_with_password(free_port(), Some("s3cret"))
        .await
        .expect("redis-server");
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "rbac-secret").await;
    let rbac = OperatorRbac::render_with(&ns.name, ACCOUNT, &[SECRETS_OPT_IN]);
    let granted = granted_permissions(&rbac);
    let by_default = granted_permissions(&OperatorRbac::render(&ns.name, ACCOUNT));
    assert!(by_default.keys().all(|p| granted.contains_key(p)));
    let added: Vec<String> = granted
        .keys()
        .filter(|p| !by_default.contains_key(*p))
        .map(ToString::to_string)
        .collect();
    assert_eq!(added, ["get secrets"], "what {SECRETS_OPT_IN} adds");
    rbac.grant(&client).await;
    let (operator, user) = operator_as_its_account(&client, &ns.name, "rbac-secrets").await;

    // A pool at zero whose queue needs the password: the operator reads the Secret, then the
    // queue, which only works with the password.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let secret = serde_json::from_value(json!({
        "metadata": {"name": "redis-auth"},
        "stringData": {"password": "s3cret"},
    }))
    .expect("secret object");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    let spec = json!({
        "minReplicas": 0,
        "maxReplicas": 4,
        "queue": {"source": "redis", "redis": {
            "key": "jobs",
            "url": redis.url(0),
            "passwordSecretRef": {"name": "redis-auth", "key": "password"},
        }},
        "scaling": {"fallbackReplicas": 1},
    });
    let pools: Api<AsyncWorkerPool> = Api::namespaced(client.clone(), &ns.name);
    pools
        .create(&PostParams::default(), &test_pool("jobs", spec))
        .await
        .expect("create the pool");
    eventually(
        "the operator reading the queue with the password",
        Duration::from_secs(20),
        || async {
            let pool = pools.get("jobs").await.ok()?;
            let condition = pool
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "MetricsAvailable")?;
            (condition.reason == "QueueRead").then_some(())
        },
    )
    .await;
    drop(operator);

    let requests = audit::requests_by(&user);
    let refused: Vec<String> = requests
        .iter()
        .filter(|r| !r.was_authorized())
        .map(describe)
        .collect();
    assert!(refused.is_empty(), "refused to the operator: {refused:#?}");
    let secret_reads: Vec<&AuditRequest> = requests
        .iter()
        .filter(|r| r.resource == "secrets")
        .collect();
    assert!(
        !secret_reads.is_empty(),
        "the operator never read the Secret"
    );
    for read in secret_reads {
        assert_eq!(
            (read.verb.as_str(), read.name.as_deref(), read.code),
            ("get", Some("redis-auth"), Some(200)),
            "{}",
            describe(read)
        );
    }
}

// --- refused: everything else ------------------------------------------------------------------

/// Every permission the API server serves, with whether its resource is namespaced, from the
/// discovery documents of every group version, and the verbs discovery does not list.
async fn every_permission(client: &Client) -> BTreeMap<Permission, bool> {
    let mut lists = Vec::new();
    let core = client
        .list_core_api_versions()
        .await
        .expect("core API versions");
    for version in core.versions {
        let list = client
            .list_core_api_resources(&version)
            .await
            .expect("core API resources");
        lists.push((String::new(), list));
    }
    let groups = client.list_api_groups().await.expect("API groups");
    for group in groups.groups {
        for version in group.versions {
            // Another test may remove a CRD meanwhile: its group goes, and nothing is lost.
            match client
                .list_api_group_resources(&version.group_version)
                .await
            {
                Ok(list) => lists.push((group.name.clone(), list)),
                Err(error) => println!("skipped {}: {error}", version.group_version),
            }
        }
    }
    let mut permissions = BTreeMap::new();
    for (group, list) in lists {
        for resource in list.resources {
            for verb in &resource.verbs {
                permissions.insert(
                    Permission::new(&group, &resource.name, verb),
                    resource.namespaced,
                );
            }
        }
    }
    for (group, resource, verb, namespaced) in VERBS_NOT_IN_DISCOVERY {
        permissions.insert(Permission::new(group, resource, verb), *namespaced);
    }
    permissions
}

/// One SubjectAccessReview to make and the answer it must get.
#[derive(Debug, Clone)]
struct Check {
    permission: Permission,
    /// `None`: cluster-scoped, or a namespaced resource in every namespace at once.
    namespace: Option<String>,
    name: Option<String>,
    allowed: bool,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.permission)?;
        if let Some(name) = &self.name {
            write!(f, " {name}")?;
        }
        match &self.namespace {
            Some(namespace) => write!(f, " in {namespace}"),
            None => write!(f, " cluster-wide"),
        }
    }
}

/// Whether the ServiceAccount `namespace/account` may do what `check` asks, with the groups its
/// token carries.
async fn may(client: &Client, namespace: &str, account: &str, check: &Check) -> bool {
    let (resource, subresource) = match check.permission.resource.split_once('/') {
        Some((resource, subresource)) => (resource, Some(subresource.to_owned())),
        None => (check.permission.resource.as_str(), None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{namespace}:{account}")),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                group: Some(check.permission.group.clone()),
                resource: Some(resource.to_owned()),
                subresource,
                verb: Some(check.permission.verb.clone()),
                namespace: check.namespace.clone(),
                name: check.name.clone(),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .unwrap_or_else(|error| panic!("SubjectAccessReview for {check}: {error}"));
    answer.status.is_some_and(|status| status.allowed)
}

#[tokio::test]
async fn the_operator_may_do_nothing_else() {
    let started = Instant::now();
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "rbac-refused").await;
    let rbac = OperatorRbac::render(&ns.name, ACCOUNT);
    let granted = granted_permissions(&rbac);
    rbac.grant(&client).await;
    let every = every_permission(&client).await;
    assert!(
        every.contains_key(&Permission::new(
            "asyncpool.dev",
            "asyncworkerpools",
            "list"
        )),
        "discovery lacks the pools"
    );
    // A rule for a resource or verb the API server does not serve grants nothing: a typo.
    let unserved: Vec<String> = granted
        .keys()
        .filter(|p| !every.contains_key(*p))
        .map(ToString::to_string)
        .collect();
    assert!(unserved.is_empty(), "granted, but not served: {unserved:?}");

    let mut checks = Vec::new();
    for (permission, namespaced) in &every {
        let here = namespaced.then(|| ns.name.clone());
        let Some(grant) = granted.get(permission) else {
            checks.push(Check {
                permission: permission.clone(),
                namespace: here,
                name: None,
                allowed: false,
            });
            continue;
        };
        assert!(
            *namespaced,
            "{permission}: a Role grants it, yet it is cluster-scoped"
        );
        match &grant.names {
            None => checks.push(Check {
                permission: permission.clone(),
                namespace: Some(grant.namespace.clone()),
                name: None,
                allowed: true,
            }),
            // Limited to some objects: those, and no other.
            Some(names) => {
                for name in names.iter().cloned().chain(["another".to_owned()]) {
                    checks.push(Check {
                        permission: permission.clone(),
                        namespace: Some(grant.namespace.clone()),
                        allowed: names.contains(&name),
                        name: Some(name),
                    });
                }
            }
        }
        // Its namespace only: not in another, nor in all at once.
        for elsewhere in [Some("default".to_owned()), None] {
            checks.push(Check {
                permission: permission.clone(),
                namespace: elsewhere,
                name: None,
                allowed: false,
            });
        }
    }

    let client_ref = &client;
    let namespace = ns.name.as_str();
    let answers: Vec<(Check, bool)> = futures::stream::iter(checks)
        .map(|check| async move {
            let allowed = may(client_ref, namespace, ACCOUNT, &check).await;
            (check, allowed)
        })
        .buffer_unordered(16)
        .collect()
        .await;

    // What every ServiceAccount may do (the built-in roles bound to all authenticated users, e.g.
    // reviewing its own access) is no grant of the chart: an account with no binding of its own
    // shows it.
    let mut everyones = Vec::new();
    let mut wrong = Vec::new();
    for (check, allowed) in &answers {
        if *allowed == check.allowed {
            continue;
        }
        if *allowed && may(&client, namespace, "rbac-bystander", check).await {
            everyones.push(check.to_string());
        } else {
            let should = if check.allowed { "allowed" } else { "refused" };
            wrong.push(format!("{check}: should be {should}"));
        }
    }
    wrong.sort();
    let refused = answers.iter().filter(|(_, allowed)| !allowed).count();
    println!(
        "{} access reviews over {} permissions: {refused} refused, {} allowed to every account \
         ({everyones:?}); {:.1?}",
        answers.len(),
        every.len(),
        everyones.len(),
        started.elapsed()
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
}
