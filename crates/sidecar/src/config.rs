//! Command-line flags and their environment variables (the operator injects the latter), with
//! validation: a bad value stops the sidecar at start with a message that names the flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use asyncpool_contract::duration::parse_duration;
use asyncpool_contract::pod::{ADMIN_PORT, SERVE_PORT, env};
use asyncpool_contract::redis::{RedisAddress, RedisTarget, RedisTls};
pub use asyncpool_contract::{RedisKind, SourceKind};

/// Upper bound on `--concurrency`: far above any sane pod, low enough to catch a typo.
const MAX_CONCURRENCY: usize = 100_000;
/// Upper bound on `--max-queue`, which bounds the sidecar's memory.
const MAX_QUEUE: usize = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// asyncpool sidecar: admits `concurrency` requests into the app at once, queues the rest in
/// order, drains gracefully, and serves the queue contract on an admin port.
#[derive(Debug, Clone, Parser)]
#[command(name = "asyncpool-sidecar", version)]
pub struct Args {
    /// Serving address: the port the pod's Service targets.
    #[arg(long, env = env::LISTEN, default_value_t = SocketAddr::from(([0, 0, 0, 0], SERVE_PORT)))]
    pub listen: SocketAddr,

    /// Admin address: /queue, /metrics, /livez, /readyz, /drain, /report.
    #[arg(long, env = env::ADMIN_LISTEN, default_value_t = SocketAddr::from(([0, 0, 0, 0], ADMIN_PORT)))]
    pub admin_listen: SocketAddr,

    /// The app's address (plain HTTP/1.1, normally on localhost).
    #[arg(long, env = env::UPSTREAM, default_value = "127.0.0.1:8000")]
    pub upstream: String,

    /// Requests admitted into the app at once.
    #[arg(long, env = env::CONCURRENCY, default_value_t = 10)]
    pub concurrency: usize,

    /// Requests waiting beyond `--concurrency` before new ones get 503 [default: 10 × concurrency].
    #[arg(long, env = env::MAX_QUEUE)]
    pub max_queue: Option<usize>,

    /// How long a request may wait in the queue before it gets 503.
    #[arg(long, env = env::QUEUE_TIMEOUT, default_value = "30s", value_parser = parse_duration)]
    pub queue_timeout: Duration,

    /// After a drain starts, how long new requests are still served at least (endpoint removal
    /// propagates).
    #[arg(long, env = env::DRAIN_GRACE, default_value = "5s", value_parser = parse_duration)]
    pub drain_grace: Duration,

    /// After `--drain-grace`, new requests are still served until none has arrived for this long
    /// (some proxy still routes to the pod), up to half of `--drain-timeout`; 0 ends the grace
    /// at `--drain-grace`.
    #[arg(long, env = env::DRAIN_QUIET, default_value = "2s", value_parser = parse_duration)]
    pub drain_quiet: Duration,

    /// Deadline from the drain's start for everything admitted or queued to complete.
    #[arg(long, env = env::DRAIN_TIMEOUT, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Bearer token that allows `POST /drain` from a non-loopback address.
    #[arg(long, env = env::DRAIN_TOKEN, hide_env_values = true)]
    pub drain_token: Option<String>,

    /// Where the reported queue comes from.
    #[arg(long, env = env::SOURCE, value_enum, default_value = "proxy")]
    pub source: SourceKind,

    /// Redis to read (`redis://[[user]:password@]host[:port][/db]`, or `rediss://…` for TLS),
    /// for `--source redis`.
    #[arg(long, env = env::REDIS_URL, hide_env_values = true)]
    pub redis_url: Option<String>,

    /// The list or stream key, for `--source redis`.
    #[arg(long, env = env::REDIS_KEY)]
    pub redis_key: Option<String>,

    /// Whether `--redis-key` is a list (LLEN) or a stream (pending entries of `--redis-group`).
    #[arg(long, env = env::REDIS_KIND, value_enum, default_value = "list")]
    pub redis_kind: RedisKind,

    /// The stream's consumer group, for `--redis-kind stream`.
    #[arg(long, env = env::REDIS_GROUP)]
    pub redis_group: Option<String>,

    /// Password for Redis, replacing one in `--redis-url` (the operator injects it from the
    /// pool's Secret).
    #[arg(long, env = env::REDIS_PASSWORD, hide_env_values = true)]
    pub redis_password: Option<String>,

    /// PEM bundle of CA certificates to trust, besides the public web roots, for a `rediss://`
    /// `--redis-url` whose certificate a private CA signed.
    #[arg(long, env = env::REDIS_CA_FILE, conflicts_with = "redis_ca_pem")]
    pub redis_ca_file: Option<PathBuf>,

    /// The same bundle as PEM text (the operator injects its own bundle so).
    // A PEM starts with "-----": a value, not a flag.
    #[arg(long, env = env::REDIS_CA_PEM, hide_env_values = true, allow_hyphen_values = true)]
    pub redis_ca_pem: Option<String>,

    /// Log format on stderr.
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Serving threads, each with its own event loop and app connections [default: the
    /// available cores, cgroup quota included, at most 4].
    #[arg(long, env = env::THREADS)]
    pub threads: Option<usize>,

    /// How long a client may take to send a request's headers (against slowloris); also the
    /// idle time after which a keep-alive connection is closed.
    #[arg(long, env = env::HEADER_TIMEOUT, default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// How long a request body may stop arriving: each read of it must bring bytes within this
    /// (against a trickling body holding a slot), as nginx's client_body_timeout.
    #[arg(long, env = env::BODY_TIMEOUT, default_value = "60s", value_parser = parse_duration)]
    pub body_timeout: Duration,
}

/// Upper bound on `--threads`.
const MAX_THREADS: usize = 64;

/// A flag whose value is unusable, with the flag's name in the message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid value for {flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstream: String,
    pub concurrency: usize,
    pub max_queue: usize,
    pub queue_timeout: Duration,
    pub drain_grace: Duration,
    pub drain_quiet: Duration,
    pub drain_timeout: Duration,
    pub drain_token: Option<String>,
    pub source: SourceKind,
    pub redis: Option<RedisTarget>,
    /// Whom a `rediss://` certificate may come from.
    pub redis_tls: RedisTls,
    pub log_format: LogFormat,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub threads: usize,
}

impl Args {
    /// Checks what clap's parsers cannot: ranges and the flags that go together.
    pub fn validate(self) -> Result<Config, ConfigError> {
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(invalid(
                "--concurrency",
                format!("{} is not in 1..={MAX_CONCURRENCY}", self.concurrency),
            ));
        }
        let max_queue = self
            .max_queue
            .unwrap_or(self.concurrency.saturating_mul(10));
        if max_queue > MAX_QUEUE {
            return Err(invalid(
                "--max-queue",
                format!("{max_queue} is above {MAX_QUEUE}"),
            ));
        }
        if self.queue_timeout.is_zero() {
            return Err(invalid("--queue-timeout", "must be positive"));
        }
        if self.drain_timeout.is_zero() {
            return Err(invalid("--drain-timeout", "must be positive"));
        }
        if self.drain_grace > self.drain_timeout {
            return Err(invalid(
                "--drain-grace",
                "must not exceed --drain-timeout (the grace is part of the drain)",
            ));
        }
        if self.header_timeout.is_zero() {
            return Err(invalid("--header-timeout", "must be positive"));
        }
        if self.body_timeout.is_zero() {
            return Err(invalid("--body-timeout", "must be positive"));
        }
        let threads = match self.threads {
            Some(threads) if threads == 0 || threads > MAX_THREADS => {
                return Err(invalid(
                    "--threads",
                    format!("{threads} is not in 1..={MAX_THREADS}"),
                ));
            }
            Some(threads) => threads,
            None => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4),
        };
        if self.listen == self.admin_listen {
            return Err(invalid("--admin-listen", "must differ from --listen"));
        }
        if self.upstream.is_empty() || !self.upstream.contains(':') || self.upstream.contains('/') {
            return Err(invalid(
                "--upstream",
                format!("{:?} is not host:port", self.upstream),
            ));
        }
        if let Some(token) = &self.drain_token
            && token.trim().is_empty()
        {
            return Err(invalid("--drain-token", "must not be empty when set"));
        }
        let mut redis_tls = RedisTls::public_roots();
        let redis = match self.source {
            SourceKind::Redis => {
                let url = self
                    .redis_url
                    .ok_or_else(|| invalid("--redis-url", "required with --source redis"))?;
                let address =
                    RedisAddress::parse(&url).map_err(|e| invalid("--redis-url", e.to_string()))?;
                // A CA with a plain URL would be ignored: refused, as the TLS meant is not on.
                let ca_flag = if self.redis_ca_file.is_some() {
                    "--redis-ca-file"
                } else {
                    "--redis-ca-pem"
                };
                if let Some(path) = &self.redis_ca_file {
                    redis_tls = RedisTls::with_ca_file(path)
                        .map_err(|e| invalid("--redis-ca-file", e.to_string()))?;
                }
                if let Some(pem) = &self.redis_ca_pem {
                    redis_tls = RedisTls::with_ca_pem(pem)
                        .map_err(|e| invalid("--redis-ca-pem", e.to_string()))?;
                }
                if redis_tls.private_ca_pem().is_some() && !address.tls {
                    return Err(invalid(ca_flag, "only for a rediss:// --redis-url"));
                }
                let key = self
                    .redis_key
                    .filter(|key| !key.is_empty())
                    .ok_or_else(|| invalid("--redis-key", "required with --source redis"))?;
                let group = match self.redis_kind {
                    RedisKind::List => {
                        if self.redis_group.is_some() {
                            return Err(invalid("--redis-group", "only for --redis-kind stream"));
                        }
                        None
                    }
                    RedisKind::Stream => Some(
                        self.redis_group
                            .filter(|group| !group.is_empty())
                            .ok_or_else(|| {
                                invalid("--redis-group", "required with --redis-kind stream")
                            })?,
                    ),
                };
                Some(RedisTarget {
                    url,
                    key,
                    group,
                    password: self.redis_password,
                })
            }
            SourceKind::Proxy | SourceKind::Report => {
                for (set, flag) in [
                    (self.redis_url.is_some(), "--redis-url"),
                    (self.redis_key.is_some(), "--redis-key"),
                    (self.redis_group.is_some(), "--redis-group"),
                    (self.redis_password.is_some(), "--redis-password"),
                    (self.redis_ca_file.is_some(), "--redis-ca-file"),
                    (self.redis_ca_pem.is_some(), "--redis-ca-pem"),
                ] {
                    if set {
                        return Err(invalid(flag, "only for --source redis"));
                    }
                }
                None
            }
        };
        Ok(Config {
            listen: self.listen,
            admin_listen: self.admin_listen,
            upstream: self.upstream,
            concurrency: self.concurrency,
            max_queue,
            queue_timeout: self.queue_timeout,
            drain_grace: self.drain_grace,
            drain_quiet: self.drain_quiet,
            drain_timeout: self.drain_timeout,
            drain_token: self.drain_token,
            source: self.source,
            redis,
            redis_tls,
            log_format: self.log_format,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            threads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args =
            Args::try_parse_from(std::iter::once("asyncpool-sidecar").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        args.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.admin_listen, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(config.upstream, "127.0.0.1:8000");
        assert_eq!((config.concurrency, config.max_queue), (10, 100));
        assert_eq!(config.queue_timeout, Duration::from_secs(30));
        assert_eq!(config.drain_grace, Duration::from_secs(5));
        assert_eq!(config.drain_quiet, Duration::from_secs(2));
        assert_eq!(config.drain_timeout, Duration::from_secs(30));
        assert_eq!(config.source, SourceKind::Proxy);
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(config.redis.is_none() && config.drain_token.is_none());
    }

    #[test]
    fn max_queue_follows_concurrency_unless_given() {
        assert_eq!(parse(&["--concurrency", "7"]).unwrap().max_queue, 70);
        assert_eq!(
            parse(&["--concurrency", "7", "--max-queue", "0"])
                .unwrap()
                .max_queue,
            0
        );
    }

    #[test]
    fn redis_stream() {
        let config = parse(&[
            "--source",
            "redis",
            "--redis-url",
            "redis://127.0.0.1:6379/2",
            "--redis-key",
            "jobs",
            "--redis-kind",
            "stream",
            "--redis-group",
            "workers",
        ])
        .unwrap();
        assert_eq!(
            config.redis,
            Some(RedisTarget {
                url: "redis://127.0.0.1:6379/2".into(),
                key: "jobs".into(),
                group: Some("workers".into()),
                password: None,
            })
        );
    }

    /// A throwaway CA (P-256, until 2126) for parsing only: nothing it signed is served anywhere.
    const TEST_CA: &str = include_str!("../../contract/testdata/test-ca.pem");

    #[test]
    fn redis_over_tls_with_a_ca_bundle() {
        let redis = ["--source", "redis", "--redis-key", "jobs"];
        let public = parse(
            &[
                &redis[..],
                &["--redis-url", "rediss://reader:pw@cache:6380"],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(public.redis.unwrap().url, "rediss://reader:pw@cache:6380");
        assert_eq!(public.redis_tls.private_ca_pem(), None);

        let dir = std::env::temp_dir().join(format!("asyncpool-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, TEST_CA).unwrap();
        let path = file.to_str().unwrap();
        let from_file = parse(
            &[
                &redis[..],
                &["--redis-url", "rediss://cache", "--redis-ca-file", path],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(from_file.redis_tls.private_ca_pem(), Some(TEST_CA));
        let from_text = parse(
            &[
                &redis[..],
                &["--redis-url", "rediss://cache", "--redis-ca-pem", TEST_CA],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(from_text.redis_tls.private_ca_pem(), Some(TEST_CA));

        let refused: &[(&[&str], &str, &str)] = &[
            (
                &["--redis-url", "redis://cache", "--redis-ca-file", path],
                "--redis-ca-file",
                "rediss://",
            ),
            (
                &["--redis-url", "redis://cache", "--redis-ca-pem", TEST_CA],
                "--redis-ca-pem",
                "rediss://",
            ),
            (
                &[
                    "--redis-url",
                    "rediss://cache",
                    "--redis-ca-pem",
                    "not a pem",
                ],
                "--redis-ca-pem",
                "no certificate",
            ),
            (
                &[
                    "--redis-url",
                    "rediss://cache",
                    "--redis-ca-file",
                    "/nonexistent.pem",
                ],
                "--redis-ca-file",
                "/nonexistent.pem",
            ),
            (
                &[
                    "--redis-url",
                    "rediss://cache",
                    "--redis-ca-file",
                    path,
                    "--redis-ca-pem",
                    TEST_CA,
                ],
                "--redis-ca-file",
                "cannot be used with",
            ),
        ];
        for (args, flag, why) in refused {
            let error = parse(&[&redis[..], args].concat()).expect_err(&format!("{args:?}"));
            assert!(
                error.contains(flag) && error.contains(why),
                "{args:?}: {error}"
            );
        }
        let error = parse(&["--redis-ca-file", path]).unwrap_err();
        assert!(error.contains("only for --source redis"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--concurrency", "0"], "--concurrency"),
            (&["--concurrency=-1"], "--concurrency"),
            (&["--concurrency", "ten"], "--concurrency"),
            (&["--max-queue", "99999999"], "--max-queue"),
            (&["--queue-timeout", "30"], "--queue-timeout"),
            (&["--queue-timeout", "0s"], "--queue-timeout"),
            (&["--drain-grace", "1d"], "--drain-grace"),
            (&["--drain-grace", "40s"], "--drain-grace"),
            (&["--drain-timeout", "0"], "--drain-timeout"),
            (&["--drain-quiet", "1d"], "--drain-quiet"),
            (&["--drain-quiet", "soon"], "--drain-quiet"),
            (&["--listen", "8080"], "--listen"),
            (&["--admin-listen", "0.0.0.0:8080"], "--admin-listen"),
            (&["--upstream", "http://app:8000"], "--upstream"),
            (&["--source", "kafka"], "--source"),
            (&["--log-format", "xml"], "--log-format"),
            (&["--drain-token", " "], "--drain-token"),
            (&["--threads", "0"], "--threads"),
            (&["--body-timeout", "0s"], "--body-timeout"),
            (&["--body-timeout", "soon"], "--body-timeout"),
            (&["--source", "redis", "--redis-key", "q"], "--redis-url"),
            (
                &[
                    "--source",
                    "redis",
                    "--redis-url",
                    "http://x",
                    "--redis-key",
                    "q",
                ],
                "--redis-url",
            ),
            (
                &["--source", "redis", "--redis-url", "redis://h:1"],
                "--redis-key",
            ),
            (
                &[
                    "--source",
                    "redis",
                    "--redis-url",
                    "redis://h:1",
                    "--redis-key",
                    "q",
                    "--redis-kind",
                    "stream",
                ],
                "--redis-group",
            ),
            (&["--redis-key", "q"], "--redis-key"),
        ];
        for (args, flag) in cases {
            let error = parse(args).expect_err(&format!("{args:?} was accepted"));
            assert!(
                error.contains(flag),
                "{args:?}: {error:?} does not name {flag}"
            );
        }
    }

    #[test]
    fn every_flag_has_its_environment_variable() {
        let command = <Args as clap::CommandFactory>::command();
        let envs: Vec<_> = command
            .get_arguments()
            .filter_map(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
            .collect();
        for env in [
            "ASYNCPOOL_LISTEN",
            "ASYNCPOOL_ADMIN_LISTEN",
            "ASYNCPOOL_UPSTREAM",
            "ASYNCPOOL_CONCURRENCY",
            "ASYNCPOOL_MAX_QUEUE",
            "ASYNCPOOL_QUEUE_TIMEOUT",
            "ASYNCPOOL_DRAIN_GRACE",
            "ASYNCPOOL_DRAIN_QUIET",
            "ASYNCPOOL_DRAIN_TIMEOUT",
            "ASYNCPOOL_DRAIN_TOKEN",
            "ASYNCPOOL_SOURCE",
            "ASYNCPOOL_REDIS_URL",
            "ASYNCPOOL_REDIS_KEY",
            "ASYNCPOOL_REDIS_KIND",
            "ASYNCPOOL_REDIS_GROUP",
            "ASYNCPOOL_REDIS_CA_FILE",
            "ASYNCPOOL_REDIS_CA_PEM",
            "ASYNCPOOL_LOG_FORMAT",
        ] {
            assert!(envs.iter().any(|e| e == env), "{env} is not wired");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        <Args as clap::CommandFactory>::command().debug_assert();
    }
}
