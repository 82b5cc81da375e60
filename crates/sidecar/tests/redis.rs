//! The sidecar's `redis` source against a real redis-server (Debian package, installed by
//! scripts/test-deps) that each test starts on a free port.

use std::time::Duration;

use asyncpool_testkit::redis::RedisServer;
use asyncpool_testkit::sidecar::*;

const WAIT: Duration = Duration::from_secs(10);

/// The shared redis-server harness, failing the test when it cannot start.
struct Redis(RedisServer);

impl Redis {
    async fn start_on(port: u16) -> Redis {
        Redis(RedisServer::start_on(port).await.expect("redis-server"))
    }

    async fn command(&self, args: &[&str]) -> String {
        self.0.command(args).await.expect("redis command")
    }
}

impl std::ops::Deref for Redis {
    type Target = RedisServer;

    fn deref(&self) -> &RedisServer {
        &self.0
    }
}

/// The sidecar in `redis` mode on `key` at `url`, with `extra` flags.
async fn redis_sidecar(url: &str, key: &str, extra: &[&str]) -> Sidecar {
    let mut args = vec!["--source", "redis", "--redis-url", url, "--redis-key", key];
    args.extend_from_slice(extra);
    Sidecar::start(&args).await
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
    let sidecar = redis_sidecar(&url, "jobs", &[]).await;
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
    let sidecar = redis_sidecar(
        &url,
        "tasks",
        &["--redis-kind", "stream", "--redis-group", "workers"],
    )
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
    let sidecar = redis_sidecar(&url, "jobs", &[]).await;
    wait_until("a reading", WAIT, || async {
        figures(&sidecar).await == Some((0, 0))
    })
    .await;

    redis.0.kill();
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
    let sidecar = redis_sidecar(
        &url,
        "tasks",
        &["--redis-kind", "stream", "--redis-group", "nobody"],
    )
    .await;
    // Before its first read the sidecar answers 503 too ("not read yet"): wait for the read.
    wait_until("the group's error", WAIT, || async {
        get(sidecar.admin, "/queue").await.is_ok_and(|r| {
            r.status == 503 && r.json()["error"].as_str() != Some("redis not read yet")
        })
    })
    .await;
    let reply = get(sidecar.admin, "/queue").await.unwrap();
    assert!(
        reply.json()["error"].as_str().unwrap().contains("nobody"),
        "{:?}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_flag_authenticates_and_its_absence_is_missing_data() {
    let redis = RedisServer::start_with_password(free_port(), Some("s3cret"))
        .await
        .expect("redis-server");
    redis.command(&["RPUSH", "jobs", "a", "b"]).await.unwrap();
    let url = redis.url(0);
    let with = redis_sidecar(&url, "jobs", &["--redis-password", "s3cret"]).await;
    wait_until("2 queued, read with the password", WAIT, || async {
        figures(&with).await == Some((2, 0))
    })
    .await;
    let without = redis_sidecar(&url, "jobs", &[]).await;
    // Redis refuses the unauthenticated read: an error that says so, not zeros (and not merely
    // the "not read yet" of a sidecar that has not read).
    wait_until("an error, not zeros, without it", WAIT, || async {
        get(without.admin, "/queue").await.is_ok_and(|r| {
            r.status == 503
                && r.json()["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("NOAUTH"))
        })
    })
    .await;
}
