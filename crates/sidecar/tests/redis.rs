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
    assert_no_figures(&sidecar).await;

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

// --- TLS (rediss://) ------------------------------------------------------------------------

/// The ACL user of the TLS tests: the two reads on the tests' keys, nothing else.
const READER: (&str, &str) = ("reader", "r3ader-pw");

/// A redis-server whose clients' port speaks TLS only, with the [`READER`] user.
async fn tls_redis() -> RedisServer {
    let redis = RedisServer::start_tls(free_port(), free_port())
        .await
        .expect("redis-server with TLS");
    redis
        .add_user(
            READER.0,
            READER.1,
            &["~jobs", "~tasks", "+llen", "+xinfo|groups"],
        )
        .await
        .expect("ACL SETUSER");
    redis
}

/// `rediss://user:password@host:port` of `redis`'s TLS port.
fn tls_url(redis: &RedisServer, host: &str, password: &str) -> String {
    format!(
        "rediss://{}:{password}@{host}:{}",
        READER.0,
        redis.addr.port()
    )
}

/// The sidecar's error once it has read (not the "not read yet" of one that has not).
async fn read_error(sidecar: &Sidecar) -> Option<String> {
    let reply = get(sidecar.admin, "/queue").await.ok()?;
    if reply.status != 503 {
        return None;
    }
    let error = reply.json()["error"].as_str()?.to_owned();
    (error != "redis not read yet").then_some(error)
}

/// Waits for [`read_error`], naming `what` if it does not come.
async fn wait_for_error(what: &str, sidecar: &Sidecar) -> String {
    asyncpool_testkit::poll_until(what, WAIT, Duration::from_millis(10), || {
        read_error(sidecar)
    })
    .await
    .unwrap_or_else(|timeout| panic!("{timeout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_an_acl_user_and_the_ca_reads_a_list_and_a_stream_group() {
    let redis = tls_redis().await;
    let ca_file = redis.ca_file().expect("the CA of a TLS server");
    let ca_pem = std::fs::read_to_string(&ca_file).expect("the CA");
    redis
        .command(&["RPUSH", "jobs", "a", "b", "c"])
        .await
        .unwrap();
    assert_eq!(
        redis
            .command(&["XGROUP", "CREATE", "tasks", "workers", "$", "MKSTREAM"])
            .await
            .unwrap(),
        "+OK"
    );
    for i in 0..4 {
        redis
            .command(&["XADD", "tasks", "*", "n", &i.to_string()])
            .await
            .unwrap();
    }
    redis
        .command(&[
            "XREADGROUP",
            "GROUP",
            "workers",
            "w1",
            "COUNT",
            "1",
            "STREAMS",
            "tasks",
            ">",
        ])
        .await
        .unwrap();

    // The list by IP address (the certificate's IP SAN), with the CA from a file.
    let list = redis_sidecar(
        &tls_url(&redis, "127.0.0.1", READER.1),
        "jobs",
        &["--redis-ca-file", ca_file.to_str().unwrap()],
    )
    .await;
    // The stream by name (its DNS SAN, and the SNI), with the CA as text, as the operator
    // injects it.
    let stream_url = tls_url(&redis, "localhost", READER.1);
    let stream = Sidecar::start_on(
        "127.0.0.1".parse().unwrap(),
        &[
            "--source",
            "redis",
            "--redis-url",
            &stream_url,
            "--redis-key",
            "tasks",
            "--redis-kind",
            "stream",
            "--redis-group",
            "workers",
        ],
        &[("ASYNCPOOL_REDIS_CA_PEM", &ca_pem)],
    )
    .await;
    wait_until("3 queued in the list, over TLS", WAIT, || async {
        figures(&list).await == Some((3, 0))
    })
    .await;
    wait_until(
        "3 queued and 1 in flight in the stream, over TLS",
        WAIT,
        || async { figures(&stream).await == Some((3, 1)) },
    )
    .await;
    // Live readings, not a first one kept.
    redis.command(&["RPUSH", "jobs", "d"]).await.unwrap();
    wait_until("4 queued in the list", WAIT, || async {
        figures(&list).await == Some((4, 0))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_the_ca_is_an_untrusted_certificate_not_zeros() {
    let redis = tls_redis().await;
    redis.command(&["RPUSH", "jobs", "a"]).await.unwrap();
    // The public web roots only: the throwaway CA is not among them.
    let sidecar = redis_sidecar(&tls_url(&redis, "127.0.0.1", READER.1), "jobs", &[]).await;
    let error = wait_for_error("the certificate refused", &sidecar).await;
    assert!(error.contains("not trusted"), "{error}");
    assert_no_figures(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_wrong_password_or_a_key_outside_the_acl_is_an_error() {
    let redis = tls_redis().await;
    let ca_file = redis.ca_file().expect("the CA of a TLS server");
    let ca = ["--redis-ca-file", ca_file.to_str().unwrap()];
    let wrong = redis_sidecar(&tls_url(&redis, "127.0.0.1", "not-it"), "jobs", &ca).await;
    let other_key = redis_sidecar(&tls_url(&redis, "127.0.0.1", READER.1), "other", &ca).await;
    let error = wait_for_error("the password refused", &wrong).await;
    assert!(error.contains("WRONGPASS"), "{error}");
    let error = wait_for_error("the key refused", &other_key).await;
    assert!(error.contains("NOPERM"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_to_a_plain_redis_is_an_error_within_the_timeout() {
    let redis = Redis::start_on(free_port()).await;
    redis.command(&["RPUSH", "jobs", "a"]).await;
    let url = format!("rediss://{}", redis.addr);
    let sidecar = redis_sidecar(&url, "jobs", &[]).await;
    let started = std::time::Instant::now();
    let error = wait_for_error("an error, not a hang", &sidecar).await;
    // The handshake is bounded by the 1 s I/O timeout; the poll interval and a busy machine
    // take the rest.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(error.contains("redis tls"), "{error}");
    assert!(figures(&sidecar).await.is_none());
}

/// The poller as the operator runs it for a pool at zero (`ExternalQueues`), in-process: the
/// operator's CA bundle is what lets it read a TLS queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_poller_reads_over_tls_with_its_ca_bundle_only() {
    use asyncpool_contract::redis::{RedisPoller, RedisTarget, RedisTls};
    use std::sync::Arc;

    let redis = tls_redis().await;
    redis.command(&["RPUSH", "jobs", "a", "b"]).await.unwrap();
    let target = RedisTarget {
        url: tls_url(&redis, "localhost", "from-the-url-replaced"),
        key: "jobs".into(),
        group: None,
        password: Some(READER.1.into()),
    };
    let ca = RedisTls::with_ca_file(&redis.ca_file().expect("the CA")).expect("a CA bundle");
    let with_ca = Arc::new(RedisPoller::new(target.clone(), 5, &ca).expect("a poller"));
    let without =
        Arc::new(RedisPoller::new(target, 5, &RedisTls::public_roots()).expect("a poller"));
    let _runs = [Arc::clone(&with_ca), Arc::clone(&without)]
        .map(|poller| tokio::spawn(async move { poller.run().await }));
    wait_until("2 queued, read with the CA", WAIT, || async {
        with_ca
            .snapshot()
            .is_ok_and(|s| (s.queued, s.in_flight, s.capacity) == (2, 0, 5))
    })
    .await;
    wait_until("the certificate refused without it", WAIT, || async {
        without.snapshot().is_err_and(|e| e.contains("not trusted"))
    })
    .await;
}

/// The sidecar says its source is down and serves no queue figures: missing data, not zeros.
async fn assert_no_figures(sidecar: &Sidecar) {
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
}
