//! The chart's observability kit: the PrometheusRule's alerts are checked and unit-tested with
//! promtool (built from the Prometheus module by scripts/tool), each alert firing on series shaped
//! like the real ones and staying quiet on healthy ones; the dashboard's and the rules' queries
//! name only metrics the operator and a real sidecar export; the PodMonitor scrapes the port the
//! operator injects.

use asyncpool_testkit::cluster as support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use asyncpool_contract::pod::ADMIN_PORT_NAME;
use asyncpool_testkit::sidecar::{RefusingPort, Sidecar, get};
use serde_json::Value;
use support::{helm_path, repo_root, succeeded};

const NAMESPACE: &str = "ops";

/// The chart rendered in namespace "ops" with the kit on, plus `sets`.
fn render(sets: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "asyncpool",
        "charts/asyncpool",
        "--namespace",
        NAMESPACE,
        "--kube-version",
        "1.33.0",
        "--set",
        "podMonitor.enabled=true",
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "grafanaDashboard.enabled=true",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let out = Command::new(helm_path())
        .current_dir(repo_root())
        .args(&args)
        .output()
        .expect("run helm");
    let all: Vec<Value> =
        serde_saphyr::from_str_multiple(&succeeded(out, "helm template")).expect("YAML");
    all.into_iter().filter(|d| !d.is_null()).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

fn promtool(args: &[&str], dir: &Path) -> Output {
    Command::new(repo_root().join("scripts/tool"))
        .arg("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run scripts/tool promtool")
}

/// The PrometheusRule's groups as a rules file in `dir`.
fn write_rules(objects: &[Value], dir: &Path) {
    let rule = one(objects, "PrometheusRule");
    let file = serde_json::json!({"groups": rule["spec"]["groups"]});
    // JSON is YAML: promtool reads it as a rules file.
    std::fs::write(dir.join("rules.yaml"), file.to_string()).expect("write rules");
}

/// Every expression of the rules.
fn rule_exprs(objects: &[Value]) -> Vec<String> {
    one(objects, "PrometheusRule")["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| r["expr"].as_str().expect("expr").to_owned())
        .collect()
}

fn dashboard() -> Value {
    let text =
        std::fs::read_to_string(repo_root().join("charts/asyncpool/dashboards/asyncpool.json"))
            .expect("dashboard file");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every query of the dashboard, with Grafana's variables replaced so PromQL can parse it.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "5m")
                .replace("$namespace", ".*")
                .replace("$pool", ".*")
        })
        .collect()
}

/// The asyncpool_* names that `exprs` use (a histogram's _bucket reduced to its family).
fn metric_names(exprs: &[String]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(start) = rest.find("asyncpool_") {
            let tail = &rest[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            names.insert(name.trim_end_matches("_bucket").to_owned());
            rest = &tail[end..];
        }
    }
    names
}

/// Metric families in a Prometheus text exposition (their `# TYPE` lines), with counters also
/// under their `_total` sample name.
fn families(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            names.insert(name.to_owned());
            if kind == "counter" && !name.ends_with("_total") {
                names.insert(format!("{name}_total"));
            }
        }
    }
    names
}

#[test]
fn the_alert_rules_pass_promtools_checks_with_either_label_layout() {
    for honor in ["true", "false"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = render(&[&format!("serviceMonitor.honorLabels={honor}")]);
        write_rules(&objects, dir.path());
        let out = succeeded(
            promtool(&["check", "rules", "rules.yaml"], dir.path()),
            "promtool check rules",
        );
        assert!(out.contains("SUCCESS: 5 rules found"), "{out}");
        let namespace_label = if honor == "true" {
            "namespace"
        } else {
            "exported_namespace"
        };
        assert!(
            rule_exprs(&objects)
                .iter()
                .any(|e| e.contains(&format!("max by ({namespace_label}, pool)"))),
            "the pool alerts do not group by {namespace_label}"
        );
    }
}

/// promtool's rule unit tests: series shaped like the operator's and the sidecars' (pool series
/// carry the pool's namespace, as with the chart's default honorLabels).
const RULE_TESTS: &str = r#"
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  # Nobody leads: the operator namespace's leader gauges are all 0.
  - interval: 1m
    input_series:
      - series: 'asyncpool_leader{namespace="ops", pod="a"}'
        values: '0x20'
      - series: 'asyncpool_leader{namespace="ops", pod="b"}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 3m
        alertname: AsyncpoolNoLeader
        exp_alerts: []
      - eval_time: 10m
        alertname: AsyncpoolNoLeader
        exp_alerts:
          - exp_labels: {severity: critical, team: platform}
  # One leads: quiet. An operator in another namespace does not count.
  - interval: 1m
    input_series:
      - series: 'asyncpool_leader{namespace="ops", pod="a"}'
        values: '1x20'
      - series: 'asyncpool_leader{namespace="elsewhere", pod="c"}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 15m
        alertname: AsyncpoolNoLeader
        exp_alerts: []
  # Half the reconciles fail for 20 minutes.
  - interval: 1m
    input_series:
      - series: 'asyncpool_reconciles_total{namespace="ops", result="ok"}'
        values: '0+60x40'
      - series: 'asyncpool_reconcile_errors_total{namespace="ops", category="apply"}'
        values: '0+30x40'
      - series: 'asyncpool_leader{namespace="ops"}'
        values: '1x40'
    alert_rule_test:
      - eval_time: 25m
        alertname: AsyncpoolReconcileErrors
        exp_alerts:
          - exp_labels: {severity: warning, team: platform}
            value: 50%
  # A pool at its maximum whose load keeps growing; another at its maximum with a steady load.
  - interval: 1m
    input_series:
      - series: 'asyncpool_pool_replicas{namespace="team", pool="chat", kind="desired"}'
        values: '10x30'
      - series: 'asyncpool_pool_replicas{namespace="team", pool="chat", kind="max"}'
        values: '10x30'
      - series: 'asyncpool_pool_replicas{namespace="team", pool="chat", kind="current"}'
        values: '10x30'
      - series: 'asyncpool_pool_load{namespace="team", pool="chat"}'
        values: '100+5x30'
      - series: 'asyncpool_pool_replicas{namespace="team", pool="batch", kind="desired"}'
        values: '4x30'
      - series: 'asyncpool_pool_replicas{namespace="team", pool="batch", kind="max"}'
        values: '4x30'
      - series: 'asyncpool_pool_replicas{namespace="team", pool="batch", kind="current"}'
        values: '4x30'
      - series: 'asyncpool_pool_load{namespace="team", pool="batch"}'
        values: '40x30'
    alert_rule_test:
      - eval_time: 25m
        alertname: AsyncpoolPoolAtMaxWithGrowingQueue
        exp_alerts:
          - exp_labels: {severity: warning, team: platform, namespace: team, pool: chat}
      - eval_time: 25m
        alertname: AsyncpoolReadingsMissing
        exp_alerts: []
  # A pool with workers and no reading (the operator drops the load series while nothing reports).
  - interval: 1m
    input_series:
      - series: 'asyncpool_pool_replicas{namespace="team", pool="chat", kind="current"}'
        values: '3x20'
    alert_rule_test:
      - eval_time: 10m
        alertname: AsyncpoolReadingsMissing
        exp_alerts:
          - exp_labels: {severity: warning, team: platform, namespace: team, pool: chat}
  # Sidecars refuse requests with a full queue; drains alone do not page.
  - interval: 1m
    input_series:
      - series: 'asyncpool_sidecar_refused_total{namespace="team", pool="chat", pod="chat-1", reason="queue_full"}'
        values: '0+12x20'
      - series: 'asyncpool_sidecar_refused_total{namespace="team", pool="batch", pod="batch-1", reason="draining"}'
        values: '0+12x20'
    alert_rule_test:
      - eval_time: 15m
        alertname: AsyncpoolRequestsRefused
        exp_alerts:
          - exp_labels: {severity: warning, team: platform, namespace: team, pool: chat}
            value: 200m
"#;

/// RULE_TESTS with each expected alert's annotations filled in from its rule, templates expanded
/// for that alert's `pool` label and `value` (the `value` key is this file's, not promtool's):
/// the alerts' texts are checked as rendered, not copied here.
fn rule_tests_with_annotations(objects: &[Value]) -> Value {
    let rules: Vec<Value> = one(objects, "PrometheusRule")["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    let mut tests: Value = serde_saphyr::from_str(RULE_TESTS).expect("RULE_TESTS is YAML");
    for test in tests["tests"].as_array_mut().expect("tests") {
        for case in test["alert_rule_test"].as_array_mut().expect("cases") {
            let name = case["alertname"].as_str().expect("alertname").to_owned();
            let rule = rules
                .iter()
                .find(|r| r["alert"] == name.as_str())
                .unwrap_or_else(|| panic!("no rule {name}"));
            for alert in case["exp_alerts"].as_array_mut().into_iter().flatten() {
                let pool = alert["exp_labels"]["pool"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let value = alert
                    .as_object_mut()
                    .and_then(|a| a.remove("value"))
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let annotations: serde_json::Map<String, Value> = rule["annotations"]
                    .as_object()
                    .expect("annotations")
                    .iter()
                    .map(|(key, text)| {
                        let text = text
                            .as_str()
                            .expect("text")
                            .replace("{{ $labels.pool }}", &pool)
                            .replace("{{ $value | humanizePercentage }}", &value)
                            .replace("{{ $value | humanize }}", &value);
                        (key.clone(), Value::String(text))
                    })
                    .collect();
                alert["exp_annotations"] = Value::Object(annotations);
            }
        }
    }
    tests
}

#[test]
fn each_alert_fires_on_its_problem_and_stays_quiet_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = render(&["prometheusRule.additionalAlertLabels.team=platform"]);
    write_rules(&objects, dir.path());
    let tests = rule_tests_with_annotations(&objects);
    std::fs::write(dir.path().join("tests.yaml"), tests.to_string()).expect("write tests");
    let out = promtool(&["test", "rules", "tests.yaml"], dir.path());
    succeeded(out, "promtool test rules");
    // The alerts the tests exercise are all the alerts there are.
    let tested: BTreeSet<&str> = RULE_TESTS
        .lines()
        .filter_map(|l| l.trim().strip_prefix("alertname: "))
        .collect();
    let defined: BTreeSet<String> = one(&objects, "PrometheusRule")["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        tested,
        defined.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
}

#[test]
fn a_broken_rule_fails_promtool() {
    // The checks above can fail: a rule with a bad expression is refused.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("rules.yaml"),
        r#"{"groups": [{"name": "x", "rules": [{"alert": "Broken", "expr": "sum(rate(asyncpool_leader[5m])"}]}]}"#,
    )
    .expect("write rules");
    let out = promtool(&["check", "rules", "rules.yaml"], dir.path());
    assert!(!out.status.success(), "promtool accepted a broken rule");
}

#[test]
fn every_dashboard_query_parses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exprs = dashboard_exprs(&dashboard());
    assert!(exprs.len() >= 8, "only {} queries", exprs.len());
    // As recording rules, so promtool's parser checks each one.
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("asyncpool:dashboard_query_{i}"), "expr": e}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(dir.path().join("rules.yaml"), file.to_string()).expect("write");
    succeeded(
        promtool(&["check", "rules", "rules.yaml"], dir.path()),
        "promtool check rules (dashboard queries)",
    );
}

/// The operator's exposition with a sample in every family (empty families are not written).
fn every_operator_family() -> String {
    use asyncpool::metrics::{CategoryLabel, KindLabel, Metrics, PoolFigures, ResultLabel};
    use asyncpool::queue::reader::ReadObserver;
    let metrics = Metrics::default();
    let pool = asyncpool::pool::PoolKey {
        namespace: "team".into(),
        name: "chat".into(),
    };
    let figures = PoolFigures {
        load: Some(1.0),
        desired: 1,
        current: 1,
        ready: 1,
        min: 1,
        max: 2,
    };
    metrics.record_pool(&pool, &figures);
    metrics
        .reconciles
        .get_or_create(&ResultLabel { result: "ok" })
        .inc();
    metrics
        .reconcile_errors
        .get_or_create(&CategoryLabel { category: "apply" })
        .inc();
    metrics.reconcile_seconds.observe(0.01);
    metrics
        .decisions
        .get_or_create(&KindLabel { kind: "hold" })
        .inc();
    metrics.reaction_reached("scaled", tokio::time::Instant::now());
    metrics.read_ok(std::time::Duration::from_millis(2), false);
    metrics.read_failed("timeout");
    metrics.leader.set(1);
    metrics.encode()
}

#[test]
fn the_dashboard_adds_up_only_per_pod_sidecar_figures() {
    // A Redis pool's sidecars each report the whole queue (scope="pool"): summed over pods it
    // would count the queue once per worker.
    for expr in dashboard_exprs(&dashboard()) {
        for figure in ["queued", "in_flight", "capacity", "arrived_total"] {
            let name = format!("asyncpool_sidecar_{figure}{{");
            for (at, _) in expr.match_indices(&name) {
                assert!(
                    expr[at..].starts_with(&format!("{name}scope=\"pod\"")),
                    "{expr} adds up {figure} without scope=\"pod\""
                );
            }
        }
    }
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_use_only_metrics_that_exist() {
    let operator = families(&every_operator_family());
    // A real sidecar's exposition (a proxy with nothing behind it still reports its queue).
    let nothing_behind = RefusingPort::new();
    let upstream = nothing_behind.addr.to_string();
    let sidecar = Sidecar::start(&["--upstream", &upstream]).await;
    let reply = get(sidecar.admin, "/metrics").await.expect("GET /metrics");
    let sidecar_families = families(&String::from_utf8_lossy(&reply.body));
    let known: BTreeSet<String> = operator.union(&sidecar_families).cloned().collect();
    assert!(known.contains("asyncpool_leader"), "{known:?}");
    assert!(known.contains("asyncpool_sidecar_queued"), "{known:?}");

    let mut used = metric_names(&dashboard_exprs(&dashboard()));
    used.extend(metric_names(&rule_exprs(&render(&[]))));
    let unknown: Vec<&String> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "queries use metrics nobody exports: {unknown:?}"
    );
}

#[test]
fn the_pod_monitor_scrapes_the_sidecar_admin_port_of_every_pool() {
    let objects = render(&[]);
    let monitor = one(&objects, "PodMonitor");
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], ADMIN_PORT_NAME);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(monitor["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(
        monitor["spec"]["selector"]["matchExpressions"][0]["key"],
        "asyncpool.dev/pool"
    );
    // Limited to the operator's namespace when it watches one.
    let scoped = render(&["watchNamespace=team"]);
    assert_eq!(
        one(&scoped, "PodMonitor")["spec"]["namespaceSelector"]["matchNames"],
        serde_json::json!(["team"])
    );
    // The dashboard ships in a ConfigMap the Grafana sidecar picks up.
    let config_map = one(&objects, "ConfigMap");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(
        config_map["data"]["asyncpool.json"]
            .as_str()
            .expect("dashboard data"),
    )
    .expect("dashboard JSON in the ConfigMap");
    assert_eq!(shipped, dashboard());
}
