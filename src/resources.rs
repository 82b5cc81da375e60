//! Pure builders for the Kubernetes objects a pool owns: the worker Deployment (the user's pod
//! template with the sidecar injected) and the Service in front of the sidecars. No client
//! calls: reconcile applies what these return.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle,
    LifecycleHandler, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use asyncpool_contract::pod::{
    ADMIN_PORT, ADMIN_PORT_NAME, POOL_LABEL, SERVE_PORT, SIDECAR_CONTAINER, env as sidecar_env,
};

use crate::crd::AsyncWorkerPool;
use crate::pool::EffectiveSpec;

/// The sidecar image the operator injects unless told otherwise: the release of the same
/// version as the operator (the chart's appVersion; `tests/version.rs` keeps them one).
pub const DEFAULT_SIDECAR_IMAGE: &str =
    concat!("ghcr.io/asyncpool/sidecar:", env!("CARGO_PKG_VERSION"));
/// The operator's image of this version, as the chart and `deploy/` name it.
pub const DEFAULT_OPERATOR_IMAGE: &str =
    concat!("ghcr.io/asyncpool/operator:", env!("CARGO_PKG_VERSION"));
/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "asyncpool-operator";
/// Seconds the sidecar keeps serving after a drain starts, so endpoint removal can propagate.
pub const DRAIN_GRACE_SECONDS: i64 = 5;
/// Largest private CA bundle the operator hands on to sidecars: it travels in an environment
/// variable of every `rediss://` pool's pods (Linux caps one at 128 KiB), and a few private CAs
/// take a few KiB.
pub const MAX_SIDECAR_CA_BYTES: usize = 64 * 1024;

/// Why an object cannot be built from a pool.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BuildError {
    #[error("the pool has no name or namespace yet")]
    Unnamed,
    #[error("the pod template already has a container named {SIDECAR_CONTAINER}; rename it")]
    SidecarNameTaken,
    #[error(
        "container {container} uses port {port}, which the sidecar needs; move the app to spec.port"
    )]
    PortTaken { container: String, port: i32 },
}

/// Labels that select a pool's worker pods.
pub fn selector_labels(pool_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(POOL_LABEL.to_owned(), pool_name.to_owned())])
}

/// The label selector string for `status.selector` (the scale subresource) and pod lists.
pub fn selector_string(pool_name: &str) -> String {
    format!("{POOL_LABEL}={pool_name}")
}

fn owned_meta(pool: &AsyncWorkerPool) -> Result<ObjectMeta, BuildError> {
    let owner: OwnerReference = pool.controller_owner_ref(&()).ok_or(BuildError::Unnamed)?;
    let mut labels = selector_labels(&pool.name_any());
    labels.insert("app.kubernetes.io/managed-by".into(), "asyncpool".into());
    Ok(ObjectMeta {
        name: Some(pool.name_any()),
        namespace: Some(pool.namespace().ok_or(BuildError::Unnamed)?),
        labels: Some(labels),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}

/// The worker Deployment: the user's template plus the sidecar, at `replicas`. `redis_ca` is
/// the operator's private CA bundle for `rediss://` queues, which the sidecar of such a pool
/// gets too.
pub fn deployment(
    pool: &AsyncWorkerPool,
    effective: &EffectiveSpec,
    sidecar_image: &str,
    redis_ca: Option<&str>,
    replicas: i32,
) -> Result<Deployment, BuildError> {
    let name = pool.name_any();
    let mut template = pool.spec.template.clone();
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .extend(selector_labels(&name));

    let pod = template.spec.get_or_insert_with(Default::default);
    // The API server refuses these at apply (the CRD's rules); checked here too for pools
    // stored before those rules existed.
    if pod
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == SIDECAR_CONTAINER)
    {
        return Err(BuildError::SidecarNameTaken);
    }
    for container in &pod.containers {
        if container.name == SIDECAR_CONTAINER {
            return Err(BuildError::SidecarNameTaken);
        }
        for port in container.ports.iter().flatten() {
            if port.container_port == i32::from(SERVE_PORT)
                || port.container_port == i32::from(ADMIN_PORT)
            {
                return Err(BuildError::PortTaken {
                    container: container.name.clone(),
                    port: port.container_port,
                });
            }
        }
    }
    // The app must outlive the sidecar's drain: its preStop hook returns only once the sidecar
    // has finished every admitted request, and only then does the app get SIGTERM.
    for container in &mut pod.containers {
        if container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .is_none()
        {
            container
                .lifecycle
                .get_or_insert_with(Lifecycle::default)
                .pre_stop = Some(LifecycleHandler {
                http_get: Some(HTTPGetAction {
                    path: Some("/wait-for-drain".into()),
                    port: IntOrString::Int(i32::from(ADMIN_PORT)),
                    ..HTTPGetAction::default()
                }),
                ..LifecycleHandler::default()
            });
        }
    }
    let image = pool
        .spec
        .sidecar
        .as_ref()
        .and_then(|s| s.image.clone())
        .unwrap_or_else(|| sidecar_image.to_owned());
    let resources = pool.spec.sidecar.as_ref().and_then(|s| s.resources.clone());
    // A template that runs as root (runAsUser 0 for the whole pod) would pass that to the
    // sidecar, which must not run as root: it gets a user of its own then.
    let root_pod = pod.security_context.as_ref().and_then(|c| c.run_as_user) == Some(0);
    pod.containers.push(sidecar_container(
        effective, image, resources, root_pod, redis_ca,
    ));
    let drain_seconds =
        i64::try_from(effective.sidecar.drain_timeout.as_secs()).unwrap_or(i64::MAX / 2);
    pod.termination_grace_period_seconds = Some(drain_seconds + DRAIN_GRACE_SECONDS + 5);

    Ok(Deployment {
        metadata: owned_meta(pool)?,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            },
            template,
            // Surge first and never remove a ready worker before its replacement is ready.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn sidecar_container(
    effective: &EffectiveSpec,
    image: String,
    resources: Option<ResourceRequirements>,
    root_pod: bool,
    redis_ca: Option<&str>,
) -> Container {
    let s = &effective.sidecar;
    let mut vars = vec![
        env(sidecar_env::LISTEN, format!("0.0.0.0:{SERVE_PORT}")),
        env(sidecar_env::ADMIN_LISTEN, format!("0.0.0.0:{ADMIN_PORT}")),
        env(sidecar_env::UPSTREAM, format!("127.0.0.1:{}", s.app_port)),
        env(sidecar_env::SOURCE, s.source.as_str()),
        env(sidecar_env::CONCURRENCY, s.concurrency.to_string()),
        env(sidecar_env::MAX_QUEUE, s.max_queue.to_string()),
        env(sidecar_env::QUEUE_TIMEOUT, s.queue_timeout.0.clone()),
        env(sidecar_env::DRAIN_GRACE, format!("{DRAIN_GRACE_SECONDS}s")),
        env(sidecar_env::DRAIN_TIMEOUT, s.drain_timeout_text.0.clone()),
        env(sidecar_env::LOG_FORMAT, "json"),
    ];
    if let Some(redis) = &s.redis {
        vars.push(env(sidecar_env::REDIS_URL, redis.url.clone()));
        vars.push(env(sidecar_env::REDIS_KEY, redis.key.clone()));
        vars.push(env(sidecar_env::REDIS_KIND, redis.kind.as_str()));
        if let Some(group) = &redis.group {
            vars.push(env(sidecar_env::REDIS_GROUP, group.clone()));
        }
        // Only to TLS pools: the sidecar refuses a CA with a plain URL, and adding one to the
        // operator must not roll every other pool's workers.
        if let Some(pem) = redis_ca
            && redis.url.starts_with("rediss://")
        {
            vars.push(env(sidecar_env::REDIS_CA_PEM, pem));
        }
        if let Some(secret) = &redis.password_secret_ref {
            vars.push(EnvVar {
                name: sidecar_env::REDIS_PASSWORD.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.name.clone(),
                        key: secret.key.clone(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
            });
        }
    }
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ADMIN_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(image),
        env: Some(vars),
        ports: Some(vec![
            ContainerPort {
                name: Some("serve".into()),
                container_port: i32::from(SERVE_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(ADMIN_PORT_NAME.into()),
                container_port: i32::from(ADMIN_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz", 1)),
        liveness_probe: Some(probe("/livez", 10)),
        resources: Some(resources.unwrap_or_else(default_sidecar_resources)),
        security_context: Some(sidecar_security_context(root_pod)),
        ..Container::default()
    }
}

/// Requests that let the scheduler and ResourceQuotas account for the sidecar (a few MiB of
/// memory, a small share of a core); no limits, since a CPU limit throttles every request.
fn default_sidecar_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_owned(), Quantity("50m".into())),
                ("memory".to_owned(), Quantity("32Mi".into())),
            ]
            .into(),
        ),
        ..ResourceRequirements::default()
    }
}

/// The user the sidecar's image runs as (distroless `nonroot`).
const SIDECAR_USER: i64 = 65532;

/// What the `restricted` Pod Security Standard asks of a container, so that the injected
/// sidecar never gets a pool's pods refused. No fixed user id unless the pod runs as root: the
/// image runs as a non-root user, and platforms that assign ids (OpenShift) stay free to.
fn sidecar_security_context(root_pod: bool) -> SecurityContext {
    SecurityContext {
        run_as_user: root_pod.then_some(SIDECAR_USER),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

/// The Service in front of the pool: clients reach the sidecars, which queue for the app.
pub fn service(pool: &AsyncWorkerPool) -> Result<Service, BuildError> {
    Ok(Service {
        metadata: owned_meta(pool)?,
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&pool.name_any())),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("serve".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(extra_spec: &str) -> AsyncWorkerPool {
        let yaml = format!(
            r#"
apiVersion: asyncpool.dev/v1alpha1
kind: AsyncWorkerPool
metadata: {{name: chat, namespace: team, uid: 1234-5678}}
spec:
  maxReplicas: 8
  concurrency: 4
  template:
    metadata: {{labels: {{app: chat}}}}
    spec: {{containers: [{{name: app, image: chat:1}}]}}
{extra_spec}"#
        );
        serde_saphyr::from_str(&yaml).expect("valid pool")
    }

    fn effective(pool: &AsyncWorkerPool) -> EffectiveSpec {
        EffectiveSpec::from_spec(&pool.spec, false).expect("valid spec")
    }

    fn env_of(container: &Container, name: &str) -> Option<String> {
        container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    #[test]
    fn deployment_injects_the_sidecar_and_keeps_the_app() {
        let pool = pool("");
        let d = deployment(&pool, &effective(&pool), "asyncpool/sidecar:0.1", None, 3).unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("chat"));
        assert_eq!(
            d.metadata.owner_references.as_ref().unwrap()[0].kind,
            "AsyncWorkerPool"
        );
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels.get("app").map(String::as_str), Some("chat"));
        assert_eq!(labels.get(POOL_LABEL).map(String::as_str), Some("chat"));
        let pod = spec.template.spec.unwrap();
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app", SIDECAR_CONTAINER]);
        let sidecar = &pod.containers[1];
        assert_eq!(sidecar.image.as_deref(), Some("asyncpool/sidecar:0.1"));
        assert_eq!(
            env_of(sidecar, sidecar_env::CONCURRENCY).as_deref(),
            Some("4")
        );
        assert_eq!(
            env_of(sidecar, sidecar_env::MAX_QUEUE).as_deref(),
            Some("40")
        );
        assert_eq!(
            env_of(sidecar, sidecar_env::UPSTREAM).as_deref(),
            Some("127.0.0.1:8000")
        );
        let app_hook = pod.containers[0]
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap();
        assert_eq!(
            app_hook.http_get.as_ref().unwrap().path.as_deref(),
            Some("/wait-for-drain")
        );
        assert_eq!(pod.termination_grace_period_seconds, Some(40));
        let rolling = spec.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    }

    fn sidecar_of(pool: &AsyncWorkerPool) -> Container {
        let d = deployment(pool, &effective(pool), "default", None, 1).unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        pod.containers
            .into_iter()
            .find(|c| c.name == SIDECAR_CONTAINER)
            .unwrap()
    }

    #[test]
    fn the_sidecar_has_default_requests_and_a_restricted_security_context() {
        let pool = pool("");
        let sidecar = sidecar_of(&pool);
        let requests = sidecar.resources.clone().unwrap().requests.unwrap();
        assert_eq!(requests["cpu"], Quantity("50m".into()));
        assert_eq!(requests["memory"], Quantity("32Mi".into()));
        let security = sidecar.security_context.clone().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(
            security.capabilities.unwrap().drop,
            Some(vec!["ALL".into()])
        );
        assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(
            security.run_as_user, None,
            "the image's user, or the platform's"
        );
        assert_eq!(sidecar.resources.clone().unwrap().limits, None);

        let mut root = self::pool("");
        root.spec.template.spec.as_mut().unwrap().security_context =
            Some(k8s_openapi::api::core::v1::PodSecurityContext {
                run_as_user: Some(0),
                ..Default::default()
            });
        let security = sidecar_of(&root).security_context.unwrap();
        assert_eq!(
            (security.run_as_user, security.run_as_non_root),
            (Some(SIDECAR_USER), Some(true)),
            "a root pod's user is not passed on to the sidecar"
        );

        let custom = self::pool("  sidecar: {resources: {requests: {cpu: 200m}}}");
        let requests = sidecar_of(&custom).resources.unwrap().requests.unwrap();
        assert_eq!(
            requests.get("memory"),
            None,
            "the pool's resources replace the defaults"
        );
        assert_eq!(requests["cpu"], Quantity("200m".into()));
    }

    #[test]
    fn a_redis_password_comes_from_its_secret() {
        let pool = pool(
            "  minReplicas: 0\n  queue: {source: redis, redis: {url: 'redis://r:6379', key: jobs, passwordSecretRef: {name: redis-auth, key: password}}}",
        );
        let sidecar = sidecar_of(&pool);
        let password = sidecar
            .env
            .iter()
            .flatten()
            .find(|e| e.name == sidecar_env::REDIS_PASSWORD)
            .unwrap();
        assert_eq!(password.value, None, "the password is not in the pod spec");
        let secret = password
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("redis-auth", "password")
        );
    }

    #[test]
    fn redis_source_reaches_the_sidecar() {
        let pool = pool(
            "  queue: {source: redis, redis: {url: 'redis://r:6379', key: jobs, kind: stream, group: g}}",
        );
        let d = deployment(&pool, &effective(&pool), "img", None, 1).unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        let sidecar = pod
            .containers
            .iter()
            .find(|c| c.name == SIDECAR_CONTAINER)
            .unwrap();
        assert_eq!(
            env_of(sidecar, sidecar_env::SOURCE).as_deref(),
            Some("redis")
        );
        assert_eq!(
            env_of(sidecar, sidecar_env::REDIS_KIND).as_deref(),
            Some("stream")
        );
        assert_eq!(
            env_of(sidecar, sidecar_env::REDIS_GROUP).as_deref(),
            Some("g")
        );
    }

    #[test]
    fn the_operators_ca_bundle_reaches_the_sidecars_of_tls_pools_only() {
        let ca = "-----BEGIN CERTIFICATE-----\n(a CA)\n-----END CERTIFICATE-----\n";
        let sidecar = |url: &str, ca: Option<&str>| {
            let pool = pool(&format!(
                "  queue: {{source: redis, redis: {{url: '{url}', key: jobs}}}}"
            ));
            let d = deployment(&pool, &effective(&pool), "img", ca, 1).unwrap();
            let pod = d.spec.unwrap().template.spec.unwrap();
            pod.containers
                .into_iter()
                .find(|c| c.name == SIDECAR_CONTAINER)
                .unwrap()
        };
        let tls = sidecar("rediss://cache:6380", Some(ca));
        assert_eq!(
            env_of(&tls, sidecar_env::REDIS_URL).as_deref(),
            Some("rediss://cache:6380")
        );
        assert_eq!(env_of(&tls, sidecar_env::REDIS_CA_PEM).as_deref(), Some(ca));
        let plain = sidecar("redis://cache:6379", Some(ca));
        assert_eq!(env_of(&plain, sidecar_env::REDIS_CA_PEM), None);
        let public_roots = sidecar("rediss://cache:6380", None);
        assert_eq!(env_of(&public_roots, sidecar_env::REDIS_CA_PEM), None);
        let proxy = {
            let pool = pool("");
            let d = deployment(&pool, &effective(&pool), "img", Some(ca), 1).unwrap();
            d.spec
                .unwrap()
                .template
                .spec
                .unwrap()
                .containers
                .pop()
                .unwrap()
        };
        assert_eq!(env_of(&proxy, sidecar_env::REDIS_CA_PEM), None);
    }

    #[test]
    fn sidecar_image_override_and_clashes() {
        let pool = pool("  sidecar: {image: mirror/sidecar:1}");
        let d = deployment(&pool, &effective(&pool), "default", None, 1).unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.containers[1].image.as_deref(), Some("mirror/sidecar:1"));

        let mut clash = pool.clone();
        clash.spec.template.spec.as_mut().unwrap().containers[0].name = SIDECAR_CONTAINER.into();
        assert_eq!(
            deployment(&clash, &effective(&clash), "img", None, 1).unwrap_err(),
            BuildError::SidecarNameTaken
        );
        let mut init_clash = pool.clone();
        init_clash
            .spec
            .template
            .spec
            .as_mut()
            .unwrap()
            .init_containers = Some(vec![Container {
            name: SIDECAR_CONTAINER.into(),
            ..Container::default()
        }]);
        assert_eq!(
            deployment(&init_clash, &effective(&init_clash), "img", None, 1).unwrap_err(),
            BuildError::SidecarNameTaken
        );
        let mut port = pool.clone();
        port.spec.template.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            container_port: 9090,
            ..ContainerPort::default()
        }]);
        assert!(matches!(
            deployment(&port, &effective(&port), "img", None, 1),
            Err(BuildError::PortTaken { port: 9090, .. })
        ));
    }

    #[test]
    fn service_targets_the_sidecar() {
        let s = service(&pool("")).unwrap();
        let spec = s.spec.unwrap();
        assert_eq!(
            spec.selector.unwrap().get(POOL_LABEL).map(String::as_str),
            Some("chat")
        );
        assert_eq!(
            spec.ports.unwrap()[0].target_port,
            Some(IntOrString::String("serve".into()))
        );
    }
}
