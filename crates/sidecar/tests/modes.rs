//! The sidecar's configuration and its `report` source, as the operator's tests use them:
//! sidecars on 127.x pod addresses, no app, load set through `POST /report`.

use std::process::Command;
use std::time::Duration;

use asyncpool_testkit::sidecar::*;
use bytes::Bytes;

fn run_with(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_asyncpool-sidecar"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:1"])
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run the sidecar");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Flags, environment variables, and the flag the error must name.
type BadCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_values_stop_the_sidecar_with_a_message_naming_the_flag() {
    let cases: &[BadCase] = &[
        (&["--concurrency", "0"], &[], "--concurrency"),
        (&["--queue-timeout", "30"], &[], "--queue-timeout"),
        (
            &[],
            &[("ASYNCPOOL_DRAIN_TIMEOUT", "soon")],
            "--drain-timeout",
        ),
        (&[], &[("ASYNCPOOL_SOURCE", "kafka")], "--source"),
        (&["--source", "redis"], &[], "--redis-url"),
        (
            &["--source", "redis", "--redis-url", "redis://127.0.0.1:1"],
            &[],
            "--redis-key",
        ),
        (&[], &[("ASYNCPOOL_MAX_QUEUE", "-5")], "--max-queue"),
        (&["--upstream", "http://localhost:8000/"], &[], "--upstream"),
    ];
    for (args, envs, flag) in cases {
        let (code, stderr) = run_with(args, envs);
        assert_eq!(code, Some(2), "{args:?} {envs:?}: exit {code:?}, {stderr}");
        assert!(
            stderr.contains(flag),
            "{args:?} {envs:?}: {stderr:?} does not name {flag}"
        );
    }
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_asyncpool-sidecar"))
        .args(["--listen", &port, "--admin-listen", "127.0.0.1:0"])
        .env("ASYNCPOOL_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--listen") && stderr.contains(&port),
        "{stderr}"
    );
    // JSON logs, as asked through the environment.
    let line = stderr.lines().find(|l| l.contains("--listen")).unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(line).is_ok(),
        "not a JSON log line: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_on_a_pod_address_without_an_app() {
    // Settings through the environment, as the operator injects them.
    let sidecar = Sidecar::start_on(
        "127.20.0.7".parse().unwrap(),
        &[],
        &[
            ("ASYNCPOOL_SOURCE", "report"),
            ("ASYNCPOOL_CONCURRENCY", "8"),
        ],
    )
    .await;
    // Nothing reported yet: missing data, not zeros.
    let before = get(sidecar.admin, "/queue").await.unwrap();
    assert_eq!(before.status, 503);
    assert!(before.json()["error"].is_string());
    assert_eq!(get(sidecar.admin, "/readyz").await.unwrap().status, 200);

    let post = |body: &'static str| {
        request(
            sidecar.admin,
            "POST",
            "/report",
            Bytes::from_static(body.as_bytes()),
        )
    };
    let reply = post(r#"{"queued": 12, "inFlight": 8}"#).await.unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let queue = sidecar.queue().await;
    assert_eq!(
        (queue["queued"].as_u64(), queue["inFlight"].as_u64()),
        (Some(12), Some(8))
    );
    assert_eq!(
        (queue["capacity"].as_u64(), queue["arrivedTotal"].as_u64()),
        (Some(8), Some(20))
    );
    assert_eq!(queue["scope"], "pod");

    post(r#"{"queued": 0, "inFlight": 3}"#).await.unwrap();
    let queue = sidecar.queue().await;
    assert_eq!(
        (
            queue["arrivedTotal"].as_u64(),
            queue["completedTotal"].as_u64()
        ),
        (Some(20), Some(17))
    );

    for bad in [
        r#"{"queued": -1, "inFlight": 0}"#,
        "not json",
        r#"{"queued": 1}"#,
    ] {
        let reply = post(bad).await.unwrap();
        assert_eq!(reply.status, 400, "{bad} was accepted");
    }
    let too_big = request(
        sidecar.admin,
        "POST",
        "/report",
        Bytes::from(vec![b' '; 10_000]),
    )
    .await
    .unwrap();
    assert_eq!(too_big.status, 413);
    // The last good report stands.
    assert_eq!(sidecar.queue().await["inFlight"], 3);

    // Draining waits for the reported work: the app learns it from the report's answer.
    let drain = request(sidecar.admin, "POST", "/drain", Bytes::new())
        .await
        .unwrap();
    assert_eq!(drain.status, 202);
    let reply = post(r#"{"queued": 0, "inFlight": 1}"#).await.unwrap();
    assert_eq!(reply.json()["draining"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_sigterm_waits_for_the_app_to_report_idle() {
    let mut sidecar = Sidecar::start_on(
        "127.20.0.8".parse().unwrap(),
        &[
            "--source",
            "report",
            "--drain-grace",
            "0s",
            "--drain-timeout",
            "10s",
        ],
        &[],
    )
    .await;
    let busy = request(
        sidecar.admin,
        "POST",
        "/report",
        Bytes::from_static(br#"{"queued": 0, "inFlight": 2}"#),
    );
    assert_eq!(busy.await.unwrap().status, 200);
    sidecar.proc.signal("TERM");
    wait_until("draining", Duration::from_secs(5), || async {
        sidecar.queue().await["draining"] == true
    })
    .await;
    // Still running while the app reports work.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sidecar.proc.assert_running();
    let idle = request(
        sidecar.admin,
        "POST",
        "/report",
        Bytes::from_static(br#"{"queued": 0, "inFlight": 0}"#),
    );
    assert_eq!(idle.await.unwrap().status, 200);
    let status = sidecar.proc.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_times_out_exits_non_zero() {
    let mut sidecar = Sidecar::start(&[
        "--source",
        "report",
        "--drain-grace",
        "0s",
        "--drain-timeout",
        "500ms",
    ])
    .await;
    let busy = request(
        sidecar.admin,
        "POST",
        "/report",
        Bytes::from_static(br#"{"queued": 1, "inFlight": 1}"#),
    );
    assert_eq!(busy.await.unwrap().status, 200);
    sidecar.proc.signal("TERM");
    let status = sidecar.proc.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(1));
}
