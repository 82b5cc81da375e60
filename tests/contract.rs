//! The operator↔sidecar contract as the pod sees it: the environment the operator injects into
//! the sidecar container is read by the sidecar's own argument parser and validation, for every
//! queue source, and means what the pool says. (The other tests start sidecars with flags of
//! their own, so a renamed variable or a value the sidecar refuses would only show in a real pod.)

use std::collections::BTreeMap;
use std::time::Duration;

use asyncpool::crd::AsyncWorkerPool;
use asyncpool::pool::EffectiveSpec;
use asyncpool::resources;
use asyncpool_contract::pod::{ADMIN_PORT, SIDECAR_CONTAINER};
use asyncpool_sidecar::config::{Args, Config, SourceKind};
use clap::{CommandFactory, Parser};
use k8s_openapi::api::core::v1::Container;

/// A pool as `kubectl apply` would store it (schema defaults applied, CEL rules checked).
fn pool(queue: &str) -> AsyncWorkerPool {
    let yaml = format!(
        r#"
apiVersion: asyncpool.dev/v1alpha1
kind: AsyncWorkerPool
metadata: {{name: chat, namespace: team, uid: 1234-5678}}
spec:
  minReplicas: 1
  maxReplicas: 8
  concurrency: 6
  port: 8123
  queue: {queue}
  supervision: {{drainTimeout: 45s}}
  template:
    metadata: {{labels: {{app: chat}}}}
    spec: {{containers: [{{name: app, image: chat:1}}]}}
"#
    );
    asyncpool::manifest::load_pool(&yaml, None).expect("a valid pool")
}

fn sidecar_of(pool: &AsyncWorkerPool) -> Container {
    sidecar_with_ca(pool, None)
}

/// The injected sidecar when the operator has `redis_ca` as its private CA bundle.
fn sidecar_with_ca(pool: &AsyncWorkerPool, redis_ca: Option<&str>) -> Container {
    let effective = EffectiveSpec::from_spec(&pool.spec, false).expect("valid spec");
    let deployment = resources::deployment(
        pool,
        &effective,
        "ghcr.io/asyncpool/sidecar:test",
        redis_ca,
        2,
    )
    .expect("build");
    deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec")
        .containers
        .into_iter()
        .find(|c| c.name == SIDECAR_CONTAINER)
        .expect("the injected sidecar")
}

/// The sidecar's command line for the injected environment, through the parser's own mapping of
/// each variable to its flag. A variable from a Secret gets a stand-in value, as the kubelet would
/// resolve it.
fn command_line(sidecar: &Container) -> Vec<String> {
    let command = Args::command();
    let flag_of: BTreeMap<String, String> = command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_string_lossy().into_owned();
            Some((env, arg.get_long()?.to_owned()))
        })
        .collect();
    let mut argv = vec!["asyncpool-sidecar".to_owned()];
    for var in sidecar.env.iter().flatten() {
        let flag = flag_of.get(&var.name).unwrap_or_else(|| {
            panic!(
                "the operator injects {} but the sidecar has no flag reading it",
                var.name
            )
        });
        let value = match (&var.value, &var.value_from) {
            (Some(value), None) => value.clone(),
            (None, Some(from)) if from.secret_key_ref.is_some() => "from-the-secret".to_owned(),
            other => panic!("{}: unexpected source {other:?}", var.name),
        };
        argv.push(format!("--{flag}={value}"));
    }
    argv
}

fn parsed(pool: &AsyncWorkerPool) -> Config {
    let argv = command_line(&sidecar_of(pool));
    let args = Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    args.validate()
        .unwrap_or_else(|e| panic!("the sidecar refuses {argv:?}: {e:?}"))
}

#[test]
fn a_proxy_pools_environment_configures_the_sidecar_as_the_pool_says() {
    let pool = pool("{source: proxy, maxQueue: 30, queueTimeout: 12s}");
    let config = parsed(&pool);
    assert_eq!(config.source, SourceKind::Proxy);
    assert_eq!(config.concurrency, 6);
    assert_eq!(config.max_queue, 30);
    assert_eq!(config.queue_timeout, Duration::from_secs(12));
    assert_eq!(config.drain_timeout, Duration::from_secs(45));
    assert_eq!(config.upstream, "127.0.0.1:8123");
    assert_eq!(config.admin_listen.port(), ADMIN_PORT);
    assert!(config.redis.is_none());
}

#[test]
fn a_report_pools_environment_configures_the_sidecar() {
    let config = parsed(&pool("{source: report}"));
    assert_eq!(config.source, SourceKind::Report);
    assert_eq!(config.concurrency, 6);
}

#[test]
fn a_redis_list_pools_environment_configures_the_sidecar() {
    let config = parsed(&pool(
        "{source: redis, redis: {url: 'redis://redis.team.svc:6379/0', key: jobs}}",
    ));
    assert_eq!(config.source, SourceKind::Redis);
    let redis = config.redis.expect("a Redis target");
    assert_eq!(redis.url, "redis://redis.team.svc:6379/0");
    assert_eq!(redis.key, "jobs");
    assert_eq!(redis.group, None, "a list has no consumer group");
    assert_eq!(redis.password, None);
}

#[test]
fn a_redis_stream_pools_environment_with_a_secret_password_configures_the_sidecar() {
    let pool = pool(
        "{source: redis, redis: {url: 'redis://redis.team.svc:6379/0', key: events, kind: stream, \
         group: workers, passwordSecretRef: {name: redis, key: password}}}",
    );
    let sidecar = sidecar_of(&pool);
    let argv = command_line(&sidecar);
    assert!(
        argv.iter().any(|a| a == "--redis-password=from-the-secret"),
        "{argv:?}"
    );
    let redis = parsed(&pool).redis.expect("a Redis target");
    assert_eq!(redis.key, "events");
    assert_eq!(redis.group.as_deref(), Some("workers"));
    assert_eq!(redis.password.as_deref(), Some("from-the-secret"));
}

#[test]
fn a_tls_redis_pools_environment_gives_the_sidecar_the_operators_ca() {
    let ca = include_str!("../crates/contract/testdata/test-ca.pem");
    let pool =
        pool("{source: redis, redis: {url: 'rediss://reader@redis.team.svc:6380/0', key: jobs}}");
    let argv = command_line(&sidecar_with_ca(&pool, Some(ca)));
    let args = Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let config = args
        .validate()
        .unwrap_or_else(|e| panic!("the sidecar refuses {argv:?}: {e:?}"));
    let redis = config.redis.expect("a Redis target");
    assert_eq!(redis.url, "rediss://reader@redis.team.svc:6380/0");
    assert_eq!(config.redis_tls.private_ca_pem(), Some(ca));
    // Without a bundle at the operator, the sidecar trusts the public roots only.
    let public = Args::try_parse_from(command_line(&sidecar_of(&pool)))
        .expect("parse")
        .validate()
        .expect("valid");
    assert_eq!(public.redis_tls.private_ca_pem(), None);
}

/// The sidecar runs in every worker pod: it must not carry the operator's Kubernetes client,
/// whose only link to it would be the contract crate.
#[test]
fn the_sidecar_links_no_kubernetes_client() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "tree",
            "--locked",
            "--offline",
            "--package",
            "asyncpool-sidecar",
        ])
        .args(["--edges", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"asyncpool-contract") && crates.contains(&"hyper"),
        "not the sidecar's tree: {tree}"
    );
    for forbidden in [
        "kube",
        "kube-client",
        "k8s-openapi",
        "schemars",
        "asyncpool",
    ] {
        assert!(
            !crates.contains(&forbidden),
            "the sidecar depends on {forbidden}:\n{tree}"
        );
    }
}
