//! The sidecar's `redis` source against a real redis-server (Debian package, installed by
//! scripts/test-deps) that each test starts on a free port in a temporary directory.

mod sidecar_common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use sidecar_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

struct Redis {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    proc: Proc,
}

impl Redis {
    async fn start_on(port: u16) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null());
        let mut proc = Proc::spawn("redis-server", &mut command);
        let addr = loopback(port);
        let start = std::time::Instant::now();
        while redis_command(addr, &["PING"]).await.as_deref() != Ok("+PONG") {
            proc.assert_running();
            assert!(
                start.elapsed() < WAIT,
                "redis-server did not come up (is it installed? run scripts/test-deps)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Redis {
            addr,
            _dir: dir,
            proc,
        }
    }

    async fn command(&self, args: &[&str]) -> String {
        redis_command(self.addr, args).await.expect("redis command")
    }
}

/// Sends one command and returns the first reply line (enough for these tests).
async fn redis_command(addr: SocketAddr, args: &[&str]) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut out = format!("*{}\r\n", args.len());
    for arg in args {
        out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream
        .write_all(out.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut reply = vec![0u8; 4096];
    let n = stream.read(&mut reply).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&reply[..n]).into_owned();
    Ok(text.lines().next().unwrap_or_default().to_string())
}

async fn figures(sidecar: &Sidecar) -> Option<(u64, u64)> {
    let reply = get(sidecar.admin, "/queue").await.ok()?;
    if reply.status != 200 {
        return None;
    }
    let q = reply.json();
    assert_eq!(q["scope"], "pool", "{q}");
    Some((q["queued"].as_u64()?, q["inFlight"].as_u64()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_length_is_the_pool_queue() {
    let redis = Redis::start_on(free_port()).await;
    let url = format!("redis://{}/3", redis.addr);
    let sidecar = Sidecar::start(&[
        "--source",
        "redis",
        "--redis-url",
        &url,
        "--redis-key",
        "jobs",
    ])
    .await;
    // An absent key is an empty list: a real zero.
    wait_until("an empty list", WAIT, || async {
        figures(&sidecar).await == Some((0, 0))
    })
    .await;
    // Database 3, as the URL says: each redis_command is a new connection, so the push selects
    // it inside a script.
    let pushed = redis
        .command(&[
            "EVAL",
            "redis.call('SELECT', 3); return redis.call('RPUSH', 'jobs', 'a', 'b', 'c')",
            "0",
        ])
        .await;
    assert_eq!(pushed, ":3");
    wait_until("3 queued", WAIT, || async {
        figures(&sidecar).await == Some((3, 0))
    })
    .await;
    let metrics =
        String::from_utf8(get(sidecar.admin, "/metrics").await.unwrap().body.to_vec()).unwrap();
    assert!(
        metrics.contains("asyncpool_sidecar_queued{scope=\"pool\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_lag_is_queued_and_pending_is_in_flight() {
    let redis = Redis::start_on(free_port()).await;
    assert_eq!(
        redis
            .command(&["XGROUP", "CREATE", "tasks", "workers", "$", "MKSTREAM"])
            .await,
        "+OK"
    );
    let url = format!("redis://{}", redis.addr);
    let sidecar = Sidecar::start(&[
        "--source",
        "redis",
        "--redis-url",
        &url,
        "--redis-key",
        "tasks",
        "--redis-kind",
        "stream",
        "--redis-group",
        "workers",
    ])
    .await;
    wait_until("an empty stream", WAIT, || async {
        figures(&sidecar).await == Some((0, 0))
    })
    .await;
    for i in 0..5 {
        redis
            .command(&["XADD", "tasks", "*", "n", &i.to_string()])
            .await;
    }
    wait_until("5 queued", WAIT, || async {
        figures(&sidecar).await == Some((5, 0))
    })
    .await;
    redis
        .command(&[
            "XREADGROUP",
            "GROUP",
            "workers",
            "w1",
            "COUNT",
            "2",
            "STREAMS",
            "tasks",
            ">",
        ])
        .await;
    wait_until("3 queued and 2 in flight", WAIT, || async {
        figures(&sidecar).await == Some((3, 2))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_is_down_or_wrong_is_missing_data_not_zero() {
    let port = free_port();
    let mut redis = Redis::start_on(port).await;
    let url = format!("redis://{}", redis.addr);
    let sidecar = Sidecar::start(&[
        "--source",
        "redis",
        "--redis-url",
        &url,
        "--redis-key",
        "jobs",
    ])
    .await;
    wait_until("a reading", WAIT, || async {
        figures(&sidecar).await == Some((0, 0))
    })
    .await;

    redis.proc.signal("KILL");
    redis.proc.wait_exit(WAIT).await;
    wait_until("503 while redis is down", WAIT, || async {
        get(sidecar.admin, "/queue")
            .await
            .is_ok_and(|r| r.status == 503 && r.json()["error"].is_string())
    })
    .await;
    let metrics =
        String::from_utf8(get(sidecar.admin, "/metrics").await.unwrap().body.to_vec()).unwrap();
    assert!(
        metrics.contains("asyncpool_sidecar_source_up 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("asyncpool_sidecar_queued"),
        "figures served without data:\n{metrics}"
    );

    // Back on the same port: readings resume.
    let redis = Redis::start_on(port).await;
    redis.command(&["RPUSH", "jobs", "x"]).await;
    wait_until("readings to resume", WAIT, || async {
        figures(&sidecar).await == Some((1, 0))
    })
    .await;

    // A key of the wrong type is an error reply: missing data too.
    redis.command(&["DEL", "jobs"]).await;
    redis.command(&["SET", "jobs", "not a list"]).await;
    wait_until("503 on a wrong type", WAIT, || async {
        get(sidecar.admin, "/queue")
            .await
            .is_ok_and(|r| r.status == 503)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_consumer_group_is_missing_data() {
    let redis = Redis::start_on(free_port()).await;
    redis.command(&["XADD", "tasks", "*", "n", "1"]).await;
    let url = format!("redis://{}", redis.addr);
    let sidecar = Sidecar::start(&[
        "--source",
        "redis",
        "--redis-url",
        &url,
        "--redis-key",
        "tasks",
        "--redis-kind",
        "stream",
        "--redis-group",
        "nobody",
    ])
    .await;
    wait_until("a reading", WAIT, || async {
        get(sidecar.admin, "/queue")
            .await
            .is_ok_and(|r| r.status == 503)
    })
    .await;
    let reply = get(sidecar.admin, "/queue").await.unwrap();
    assert!(
        reply.json()["error"].as_str().unwrap().contains("nobody"),
        "{:?}",
        reply.body
    );
}
