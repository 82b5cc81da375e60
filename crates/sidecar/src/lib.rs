//! The sidecar injected into every worker pod: a reverse proxy that admits `concurrency`
//! requests into the app at once and queues the rest in order (the Uvicorn worker's semantics,
//! enforced from outside the app), a graceful drain, and the queue contract on an admin port.
//! Flags and modes: `docs/sidecar.md`; the contract: `docs/sidecar-contract.md`.

pub mod admin;
pub mod config;
pub mod drain;
pub mod http1;
pub mod limiter;
pub mod proxy;
pub mod source;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;

use asyncpool_contract::duration::format_duration;
use config::{Config, SourceKind};
use source::Source;

/// Bound on a request's head (request line and headers): larger ones get 431.
pub(crate) const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Bound on a connection's read buffer, hence on the memory one client can pin.
pub(crate) const MAX_READ_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Bind {
        addr: SocketAddr,
        flag: &'static str,
        source: std::io::Error,
    },
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
    #[error("cannot start a serving thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Redis(#[from] asyncpool_contract::redis::RedisError),
}

/// How the sidecar ended after a SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything admitted or queued completed.
    Drained,
    /// `--drain-timeout` passed with work left.
    TimedOut,
}

/// HTTP/1.1 server settings shared by both ports: bounded heads and a head timeout (slowloris).
pub(crate) fn server_builder(header_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_READ_BUFFER);
    builder
}

async fn bind(addr: SocketAddr, flag: &'static str) -> Result<TcpListener, SidecarError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SidecarError::Bind { addr, flag, source })
}

/// Runs the sidecar until SIGTERM (or SIGINT) and the drain that follows.
pub async fn run(config: Config) -> Result<Outcome, SidecarError> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed first, so that a SIGTERM during start-up drains instead of killing.
    let mut sigterm = signal(SignalKind::terminate()).map_err(SidecarError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(SidecarError::Signal)?;

    let limiter = Arc::new(limiter::Limiter::new(config.concurrency, config.max_queue));
    let capacity = config.concurrency as u64;
    let source = match config.source {
        SourceKind::Proxy => Source::Proxy(Arc::clone(&limiter)),
        SourceKind::Report => Source::Report(Arc::new(source::report::ReportSource::new(capacity))),
        SourceKind::Redis => {
            let target = config
                .redis
                .clone()
                .ok_or(asyncpool_contract::redis::RedisError::Url("missing".into()))?;
            let redis = Arc::new(asyncpool_contract::redis::RedisPoller::new(
                target,
                capacity,
                &config.redis_tls,
            )?);
            let poller = Arc::clone(&redis);
            tokio::spawn(async move { poller.run().await });
            Source::Redis(redis)
        }
    };
    let grace = drain::Grace::within(config.drain_timeout, config.drain_grace, config.drain_quiet);
    let drain = Arc::new(drain::Drain::new(
        grace,
        Arc::clone(&limiter),
        source.clone(),
    ));
    let stats = Arc::new(proxy::Stats::default());
    let admin = Arc::new(admin::Admin {
        source,
        drain: Arc::clone(&drain),
        limiter: Arc::clone(&limiter),
        stats: Arc::clone(&stats),
        drain_token: config.drain_token.clone(),
        // The preStop hook that calls /wait-for-drain starts with the SIGTERM: the same budget.
        drain_wait: config.drain_timeout + Duration::from_secs(1),
        waiters: AtomicUsize::new(0),
        app_readiness: matches!(config.source, SourceKind::Proxy).then(|| config.upstream.clone()),
    });

    let serving = bind(config.listen, "--listen").await?;
    let admin_listener = bind(config.admin_listen, "--admin-listen").await?;
    // One single-threaded runtime per serving thread, each with its own app connections,
    // accepting on the shared socket: a request never crosses threads (as with nginx's workers)
    // and no wake-up costs a futex.
    let threads = config.threads;
    let serving = serving.into_std().map_err(SidecarError::Thread)?;
    for index in 0..threads {
        let proxy = proxy::Proxy::new(
            Arc::clone(&limiter),
            config.upstream.clone(),
            config.queue_timeout,
            config.body_timeout,
            config.concurrency.min(1024),
            Arc::clone(&stats),
        );
        let listener = serving.try_clone().map_err(SidecarError::Thread)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SidecarError::Thread)?;
        let drain = Arc::clone(&drain);
        let header_timeout = config.header_timeout;
        std::thread::Builder::new()
            .name(format!("serve-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            Arc::new(proxy).serve(listener, drain, header_timeout).await
                        }
                        Err(error) => tracing::error!(%error, "serving thread cannot listen"),
                    }
                })
            })
            .map_err(SidecarError::Thread)?;
    }
    tokio::spawn(Arc::clone(&admin).serve(admin_listener, config.header_timeout));
    tracing::info!(
        listen = %config.listen,
        admin = %config.admin_listen,
        upstream = %config.upstream,
        concurrency = config.concurrency,
        max_queue = config.max_queue,
        queue_timeout = %format_duration(config.queue_timeout),
        threads,
        source = ?config.source,
        "sidecar started"
    );

    let signal_name = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(signal = signal_name, "stopping");
    drain.start(signal_name);
    let deadline = tokio::time::Instant::now() + config.drain_timeout;
    if drain.wait_drained(deadline).await {
        // A slot is freed when the app's response ends; its last bytes may still be on their way
        // to the client. Connections close once written (graceful shutdown), so wait for them.
        while stats.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        admin.release_waiters().await;
        tracing::info!("drained, exiting");
        Ok(Outcome::Drained)
    } else {
        tracing::error!(
            drain_timeout = %format_duration(config.drain_timeout),
            "drain timed out with requests still in flight or queued"
        );
        Ok(Outcome::TimedOut)
    }
}
