//! The asyncpool operator: reconciles AsyncWorkerPools into workers and scales them on the
//! queue length their sidecars report. Settings come from flags or the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use asyncpool::api_rate::{ApiRate, ThrottleLayer, TimingLayer};
use asyncpool::controller::{Clients, LeaderConfig, OperatorConfig};
use asyncpool::leader::LeaseTiming;
use asyncpool::metrics::Metrics;
use asyncpool::queue::reader::ReaderConfig;
use asyncpool::reconcile::Settings;
use asyncpool_contract::duration::parse_duration;
use asyncpool_contract::queue::parse_watch_pace;
use asyncpool_contract::redis::RedisTls;
use clap::Parser;

/// Resident memory at ten thousand worker pods is about a quarter lower than under glibc's
/// malloc, whose per-thread arenas keep freed pages (docs/benchmarks.md, "Operator at scale").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's options by their index in its `mi_option_t` (the bundled 3.x; a test checks
/// their defaults), and the values the operator runs with unless `MIMALLOC_<NAME>` says
/// otherwise. A page freed at rest goes back to the system at once rather than a second later,
/// and no emptied page is kept per size class: every line of ten thousand watch streams
/// allocates and frees, and the pages held back for that were 3 to 4 MiB of a 63 MiB operator
/// at 1,000 pools, for a handful of page faults a second more (docs/benchmarks.md).
const ALLOCATOR_OPTIONS: [(libmimalloc_sys::mi_option_t, &str, std::ffi::c_long); 2] =
    [(15, "PURGE_DELAY", 0), (36, "PAGE_FULL_RETAIN", 0)];

fn tune_allocator() {
    for (option, name, value) in ALLOCATOR_OPTIONS {
        if std::env::var_os(format!("MIMALLOC_{name}")).is_none() {
            // SAFETY: sets a number in mimalloc's option table; any value is valid for these two.
            #[allow(unsafe_code)]
            unsafe {
                libmimalloc_sys::mi_option_set(option, value)
            };
        }
    }
}

#[derive(Parser, Debug)]
#[command(name = "asyncpool-operator", version, about)]
struct Args {
    /// Watch pools in this namespace only (default: all namespaces).
    #[arg(long, env = "ASYNCPOOL_NAMESPACE")]
    namespace: Option<String>,
    /// Image of the sidecar injected into worker pods.
    #[arg(
        long,
        env = "ASYNCPOOL_SIDECAR_IMAGE",
        default_value = asyncpool::resources::DEFAULT_SIDECAR_IMAGE
    )]
    sidecar_image: String,
    /// Address of /metrics, /livez and /readyz.
    #[arg(
        long,
        env = "ASYNCPOOL_OPERATOR_LISTEN",
        default_value = "0.0.0.0:8081"
    )]
    listen: SocketAddr,
    /// Elect a leader among replicas on a Lease (turn off only for a single replica).
    #[arg(long, env = "ASYNCPOOL_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "ASYNCPOOL_LEASE_NAME",
        default_value = "asyncpool-operator"
    )]
    lease_name: String,
    /// Namespace of the leader Lease (default: the operator's own, from POD_NAMESPACE).
    #[arg(long, env = "ASYNCPOOL_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: the pod name, from POD_NAME or HOSTNAME).
    #[arg(long, env = "ASYNCPOOL_IDENTITY")]
    identity: Option<String>,
    /// How long the lease holds without renewal; a follower takes over after it.
    #[arg(long, env = "ASYNCPOOL_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// How often the leader renews the lease.
    #[arg(long, env = "ASYNCPOOL_LEASE_RENEW", default_value = "5s", value_parser = parse_duration)]
    lease_renew: Duration,
    /// Read sidecars through their watch stream (falls back to polling per pod).
    #[arg(long, env = "ASYNCPOOL_WATCH_SIDECARS", default_value_t = true, action = clap::ArgAction::Set)]
    watch_sidecars: bool,
    /// The pace asked of sidecar watch streams: counters and small load steps arrive within
    /// it, coalesced; a load step of half the concurrency, a drain or a gap at once.
    /// Between 20ms (every change) and 2s; the default 1s bounds the lines a busy fleet sends
    /// to about one per worker a second.
    #[arg(long, env = "ASYNCPOOL_WATCH_PACE", default_value = "1s", value_parser = parse_watch_pace)]
    watch_pace: Duration,
    /// About how many paced lines a second all watch streams together may send: with more
    /// streams than this at --watch-pace, each stream's pace is stretched to keep within it,
    /// up to 2s (bursts, drains and gaps still arrive at once). 0 never stretches the pace.
    #[arg(long, env = "ASYNCPOOL_WATCH_LINE_BUDGET", default_value_t = 5_000)]
    watch_line_budget: u32,
    /// Time between polls of one sidecar when it is polled.
    #[arg(long, env = "ASYNCPOOL_POLL_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Longest a sidecar read may take.
    #[arg(long, env = "ASYNCPOOL_READ_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    read_timeout: Duration,
    /// Sidecar reads in flight at once.
    #[arg(long, env = "ASYNCPOOL_MAX_CONCURRENT_READS", default_value_t = 64)]
    max_concurrent_reads: usize,
    /// How often every pool's plan is looked at from memory, so time windows advance; a pool is
    /// reconciled only when its plan moved (or its objects or sidecars changed).
    #[arg(long, env = "ASYNCPOOL_TICK", default_value = "1s", value_parser = parse_duration)]
    tick: Duration,
    /// Requests per second the operator sends the API server, past its burst (0: no limit).
    /// The lease is renewed outside this limit.
    #[arg(long, env = "ASYNCPOOL_KUBE_API_QPS", default_value_t = ApiRate::DEFAULT.qps)]
    kube_api_qps: f64,
    /// Requests the operator may send at once after a quiet spell; the writes that carry out a
    /// plan (Deployments, the marks on workers to go) may go a further burst ahead.
    #[arg(long, env = "ASYNCPOOL_KUBE_API_BURST", default_value_t = ApiRate::DEFAULT.burst)]
    kube_api_burst: u32,
    /// Pools reconciled at once.
    #[arg(long, env = "ASYNCPOOL_RECONCILE_CONCURRENCY", default_value_t = 64)]
    reconcile_concurrency: u16,
    /// PEM bundle of CA certificates to trust, besides the public web roots, for pools whose
    /// `queue.redis.url` is `rediss://` (a Redis whose certificate a private CA signed). Read at
    /// start; the sidecars of those pools get it too.
    #[arg(long, env = "ASYNCPOOL_REDIS_CA_FILE")]
    redis_ca_file: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "ASYNCPOOL_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    asyncpool::signal::terminate_or_interrupt().await;
    tracing::info!("shutting down");
}

/// The CAs a `rediss://` queue's certificate may come from, or why the bundle is unusable: a
/// bad bundle stops the operator at start rather than failing every TLS pool later.
fn redis_tls(ca_file: Option<&Path>) -> Result<RedisTls, String> {
    let Some(path) = ca_file else {
        return Ok(RedisTls::public_roots());
    };
    let tls = RedisTls::with_ca_file(path).map_err(|e| format!("--redis-ca-file: {e}"))?;
    let size = tls.private_ca_pem().map_or(0, str::len);
    if size > asyncpool::resources::MAX_SIDECAR_CA_BYTES {
        return Err(format!(
            "--redis-ca-file: {} is {size} bytes, more than the {} that the sidecars can be \
             given; keep only the private CAs (the public roots are built in)",
            path.display(),
            asyncpool::resources::MAX_SIDECAR_CA_BYTES
        ));
    }
    Ok(tls)
}

/// The operator's clients, from one configuration (in-cluster or kubeconfig, as `kubectl` finds
/// it): the rate-limited one for everything and its urgent lane for the writes that carry out a
/// plan, both on one HTTP/2 connection, and one for the lease on a connection of its own.
async fn clients(rate: ApiRate, metrics: &Metrics) -> Result<Clients, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let lease = kube::Client::try_from(config.clone())?;
    let connection = asyncpool::api_client::Connection::new(config)?;
    let timing = TimingLayer::new(metrics.api_request_seconds.clone());
    let throttle = ThrottleLayer::new(rate, metrics.api_wait_seconds.clone());
    let api = connection
        .builder()?
        .with_layer(&timing)
        .with_layer(&throttle)
        .build();
    let urgent = connection
        .builder()?
        .with_layer(&timing)
        .with_layer(&throttle.urgent())
        .build();
    Ok(Clients { api, urgent, lease })
}

#[tokio::main]
async fn main() -> ExitCode {
    tune_allocator();
    let args = Args::parse();
    init_logging(&args.log_format);
    let redis_tls = match redis_tls(args.redis_ca_file.as_deref()) {
        Ok(tls) => tls,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };

    let metrics = Arc::new(Metrics::default());
    let rate = ApiRate {
        qps: args.kube_api_qps,
        burst: args.kube_api_burst,
    };
    // An unreachable API server is retried with backoff rather than ending the process.
    let clients = loop {
        match clients(rate, &metrics).await {
            Ok(clients) => break clients,
            Err(error) => {
                tracing::error!(%error, "cannot build a Kubernetes client; retrying in 2s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let identity = args
        .identity
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("asyncpool-{:08x}", rand::random::<u32>()));
    let leader = args.leader_elect.then(|| LeaderConfig {
        lease_name: args.lease_name,
        lease_namespace: args
            .lease_namespace
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into()),
        identity,
        timing: LeaseTiming {
            duration: args.lease_duration,
            renew_every: args.lease_renew,
        },
    });
    let config = OperatorConfig {
        namespace: args.namespace,
        settings: Settings {
            sidecar_image: args.sidecar_image,
            tick: args.tick,
            redis_tls,
            ..Settings::default()
        },
        reader: ReaderConfig {
            watch: args.watch_sidecars,
            watch_pace: args.watch_pace,
            watch_line_budget: args.watch_line_budget,
            poll_interval: args.poll_interval,
            request_timeout: args.read_timeout,
            max_concurrent_polls: args.max_concurrent_reads,
            ..ReaderConfig::default()
        },
        leader,
        http_listen: args.listen,
        concurrency: args.reconcile_concurrency,
    };
    match asyncpool::controller::run(clients, config, metrics, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "operator stopped");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_options_are_the_ones_named() {
        // Their defaults in the bundled mimalloc (purge after 1000 ms, retain 2 pages): an
        // index that named another option would read another default.
        let defaults = [1000, 2];
        for ((option, name, _), default) in ALLOCATOR_OPTIONS.into_iter().zip(defaults) {
            if std::env::var_os(format!("MIMALLOC_{name}")).is_some() {
                continue;
            }
            #[allow(unsafe_code)]
            // SAFETY: reads a number from mimalloc's option table.
            let value = unsafe { libmimalloc_sys::mi_option_get(option) };
            assert_eq!(value, default, "mimalloc option {option} is not {name}");
        }
    }

    /// A throwaway CA (P-256, until 2126) for parsing only: nothing it signed is served anywhere.
    const TEST_CA: &str = include_str!("../../crates/contract/testdata/test-ca.pem");

    #[test]
    fn the_redis_ca_file_is_read_at_start_and_bounded() {
        let args = Args::try_parse_from(["asyncpool-operator"]).unwrap();
        assert_eq!(args.redis_ca_file, None);
        let public = redis_tls(None).unwrap();
        assert_eq!(public.private_ca_pem(), None);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, TEST_CA).unwrap();
        let args = Args::try_parse_from([
            "asyncpool-operator",
            "--redis-ca-file",
            file.to_str().unwrap(),
        ])
        .unwrap();
        let private = redis_tls(args.redis_ca_file.as_deref()).unwrap();
        assert_eq!(private.private_ca_pem(), Some(TEST_CA));

        let missing = redis_tls(Some(&dir.path().join("none.pem"))).unwrap_err();
        assert!(
            missing.contains("--redis-ca-file") && missing.contains("none.pem"),
            "{missing}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let junk = redis_tls(Some(&junk)).unwrap_err();
        assert!(junk.contains("no certificate"), "{junk}");
        let big = dir.path().join("big.pem");
        let copies = asyncpool::resources::MAX_SIDECAR_CA_BYTES / TEST_CA.len() + 1;
        std::fs::write(&big, TEST_CA.repeat(copies)).unwrap();
        let big = redis_tls(Some(&big)).unwrap_err();
        assert!(big.contains("more than the 65536"), "{big}");
    }
}
