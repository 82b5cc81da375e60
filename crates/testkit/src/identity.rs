//! Identities other than the admin for processes under test: a ServiceAccount's token in a
//! kubeconfig of its own, so that the process may do exactly what RBAC grants that account, and
//! the API server's audit log records every call it makes (see [`crate::audit`]); and the
//! operator's own RBAC, as the Helm chart ships it, granted to such an account.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use serde_json::Value;

use crate::cluster::{helm_path, kubeconfig_path, succeeded};
use crate::helm::{CHART, RELEASE};
use crate::repo_root;

/// The Lease the operator binary elects on unless told otherwise (its `--lease-name` default).
pub const OPERATOR_LEASE: &str = "asyncpool-operator";
/// What the chart is rendered for: a helm built from source defaults to Kubernetes v1.20, which
/// the chart's kubeVersion refuses (as in `scripts/gen-deploy`).
const KUBE_VERSION: &str = "1.33.0";

/// How long the token lasts: longer than any test.
const TOKEN_SECONDS: i64 = 3600;

/// A kubeconfig for the test cluster that authenticates as the ServiceAccount `name` in
/// `namespace` and as nothing else. Creates the account if it is absent and asks the API server
/// for a token of it (TokenRequest, the `token` subresource); the server and its CA are the
/// admin kubeconfig's. `client` must be allowed to do both (the admin's is).
///
/// The file is the caller's for the rest of the test process: it stays in the temporary
/// directory, readable by its owner only. Its token dies with the ServiceAccount (a test's
/// namespace is deleted after it) and within the hour in any case.
pub async fn service_account_kubeconfig(client: &Client, namespace: &str, name: &str) -> PathBuf {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => panic!("create ServiceAccount {namespace}/{name}: {error}"),
    }
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|error| panic!("token for ServiceAccount {namespace}/{name}: {error}"))
        .status
        .and_then(|status| status.token)
        .filter(|token| !token.is_empty())
        .unwrap_or_else(|| panic!("the TokenRequest for {namespace}/{name} returned no token"));

    let config = token_kubeconfig(&token, &format!("{namespace}-{name}"));
    let path = std::env::temp_dir().join(format!(
        "asyncpool-{}-{namespace}-{name}.kubeconfig",
        std::process::id()
    ));
    // A credential: its owner's alone, as kubectl writes kubeconfigs.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap_or_else(|error| panic!("create {}: {error}", path.display()));
    file.write_all(config.to_string().as_bytes())
        .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
    path
}

/// The admin kubeconfig's cluster (server and CA) with `token` as the only credential.
fn token_kubeconfig(token: &str, user: &str) -> serde_json::Value {
    let admin = Kubeconfig::read_from(kubeconfig_path())
        .unwrap_or_else(|error| panic!("read {}: {error}", kubeconfig_path().display()));
    let cluster_name = admin
        .current_context
        .as_ref()
        .and_then(|current| admin.contexts.iter().find(|c| &c.name == current))
        .and_then(|context| context.context.as_ref())
        .map(|context| context.cluster.clone());
    let cluster = admin
        .clusters
        .iter()
        .find(|c| cluster_name.is_none() || Some(&c.name) == cluster_name.as_ref())
        .and_then(|c| c.cluster.clone())
        .unwrap_or_else(|| panic!("no cluster in {}", kubeconfig_path().display()));
    let mut entry = serde_json::json!({"server": cluster.server});
    if let Some(path) = cluster.certificate_authority {
        entry["certificate-authority"] = serde_json::json!(path);
    }
    if let Some(data) = cluster.certificate_authority_data {
        entry["certificate-authority-data"] = serde_json::json!(data);
    }
    if let Some(server_name) = cluster.tls_server_name {
        entry["tls-server-name"] = serde_json::json!(server_name);
    }
    // JSON is YAML, which every kubeconfig reader takes.
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": entry}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "test", "user": user}}],
        "current-context": user,
    })
}

/// A ServiceAccount `account` in `namespace` holding the operator's RBAC as the chart ships it
/// (see [`OperatorRbac`]), and a kubeconfig that authenticates as it: the operator run with it
/// (`OperatorProcess::start_with_kubeconfig`, watching `namespace`, electing on
/// [`OPERATOR_LEASE`] there) may do what the installed operator may, and its calls are audited.
pub async fn operator_service_account(client: &Client, namespace: &str, account: &str) -> PathBuf {
    OperatorRbac::render(namespace, account).grant(client).await;
    service_account_kubeconfig(client, namespace, account).await
}

/// One of the chart's Roles bound to the operator's ServiceAccount.
#[derive(Debug, Clone)]
pub struct BoundRole {
    /// Where the RoleBinding grants it.
    pub namespace: String,
    pub name: String,
    pub rules: Vec<PolicyRule>,
}

/// The operator's RBAC as the chart renders it for an operator that manages one namespace and
/// keeps its Lease there: the chart's `watchNamespace` mode, whose rules are the cluster-wide
/// ClusterRole's (tests/install.rs checks that they are the same and that deploy/operator.yaml is
/// the chart's render). Everything in it is namespaced, so it goes with the namespace: nothing is
/// left behind in the cluster, and tests grant it side by side.
#[derive(Debug, Clone)]
pub struct OperatorRbac {
    pub namespace: String,
    pub service_account: String,
    /// The rules, by the Role that holds them, the leader-election Role's included.
    pub roles: Vec<BoundRole>,
    /// The Roles and RoleBindings to create.
    objects: Vec<Value>,
}

impl OperatorRbac {
    /// Renders the chart (release `asyncpool` in `namespace`) for the ServiceAccount `account`
    /// and the Lease [`OPERATOR_LEASE`], and keeps the Roles bound to that account with their
    /// bindings. The other RBAC the chart renders (ClusterRoles aggregated into the built-in
    /// view and edit, for people) is not the operator's and stays out.
    pub fn render(namespace: &str, account: &str) -> Self {
        Self::render_with(namespace, account, &[])
    }

    /// [`Self::render`] with more chart values (`--set` syntax), such as an opt-in right.
    pub fn render_with(namespace: &str, account: &str, extra_values: &[&str]) -> Self {
        let mut values = vec![
            format!("watchNamespace={namespace}"),
            // Role names follow the account's, so that two accounts in one namespace do not clash.
            format!("fullnameOverride={account}"),
            format!("serviceAccount.name={account}"),
            format!("leaderElection.leaseName={OPERATOR_LEASE}"),
        ];
        values.extend(extra_values.iter().map(|value| (*value).to_owned()));
        let mut args = vec![
            "template",
            RELEASE,
            CHART,
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
        ];
        for value in &values {
            args.extend(["--set", value.as_str()]);
        }
        let out = Command::new(helm_path())
            .current_dir(repo_root())
            .args(&args)
            .output()
            .unwrap_or_else(|error| panic!("run {}: {error}", helm_path().display()));
        let yaml = succeeded(out, "helm template");
        let documents: Vec<Value> = serde_saphyr::from_str_multiple(&yaml)
            .unwrap_or_else(|error| panic!("the chart's render does not parse: {error}"));
        Self::bound_to(&documents, namespace, account)
    }

    /// What in `documents` is bound to the ServiceAccount `namespace/account`.
    fn bound_to(documents: &[Value], namespace: &str, account: &str) -> Self {
        let is_account = |subject: &Value| {
            subject["kind"] == "ServiceAccount"
                && subject["name"] == account
                && subject["namespace"] == namespace
        };
        let mut rbac = Self {
            namespace: namespace.to_owned(),
            service_account: account.to_owned(),
            roles: Vec::new(),
            objects: Vec::new(),
        };
        for binding in documents {
            let binds_account = binding["subjects"]
                .as_array()
                .is_some_and(|subjects| subjects.iter().any(is_account));
            if !binds_account {
                continue;
            }
            let name = &binding["metadata"]["name"];
            // One namespace's RBAC: anything cluster-wide would outlive the test's namespace.
            assert!(
                binding["kind"] == "RoleBinding" && binding["roleRef"]["kind"] == "Role",
                "the chart binds {account} with {} {name} to {} {}: not one namespace's RBAC",
                binding["kind"],
                binding["roleRef"]["kind"],
                binding["roleRef"]["name"]
            );
            let role_namespace = binding["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default();
            let role = documents
                .iter()
                .find(|role| {
                    role["kind"] == "Role"
                        && role["metadata"]["name"] == binding["roleRef"]["name"]
                        && role["metadata"]["namespace"] == role_namespace
                })
                .unwrap_or_else(|| {
                    panic!("RoleBinding {name} names a Role the chart does not render")
                });
            let rules: Vec<PolicyRule> = serde_json::from_value(role["rules"].clone())
                .unwrap_or_else(|error| panic!("the rules of Role {name}: {error}"));
            rbac.roles.push(BoundRole {
                namespace: role_namespace.to_owned(),
                name: role["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                rules,
            });
            rbac.objects.push(role.clone());
            rbac.objects.push(binding.clone());
        }
        assert!(
            !rbac.roles.is_empty(),
            "the chart binds nothing to the ServiceAccount {namespace}/{account}"
        );
        rbac
    }

    /// Creates (or updates) the Roles and RoleBindings; the ServiceAccount itself comes from
    /// [`service_account_kubeconfig`].
    pub async fn grant(&self, client: &Client) {
        let apply = PatchParams::apply("asyncpool-tests").force();
        for object in &self.objects {
            let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let applied = if object["kind"] == "Role" {
                let roles: Api<Role> = Api::namespaced(client.clone(), namespace);
                roles
                    .patch(name, &apply, &Patch::Apply(object))
                    .await
                    .map(drop)
            } else {
                let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), namespace);
                bindings
                    .patch(name, &apply, &Patch::Apply(object))
                    .await
                    .map(drop)
            };
            applied.unwrap_or_else(|error| {
                panic!("apply {} {namespace}/{name}: {error}", object["kind"])
            });
        }
    }
}
