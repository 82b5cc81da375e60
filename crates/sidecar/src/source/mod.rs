//! Where the reported queue comes from: the proxy's own limiter (default), a Redis list or
//! stream, or the app's reports.

pub mod report;

use std::sync::Arc;

use tokio::sync::watch;

use crate::limiter::Limiter;
use asyncpool_contract::queue::QueueSnapshot;
use asyncpool_contract::redis::RedisPoller;

#[derive(Debug, Clone)]
pub enum Source {
    Proxy(Arc<Limiter>),
    Redis(Arc<RedisPoller>),
    Report(Arc<report::ReportSource>),
}

impl Source {
    /// The figures now, or why they are missing (the admin port answers 503 then).
    pub fn snapshot(&self) -> Result<QueueSnapshot, String> {
        match self {
            Source::Proxy(limiter) => Ok(limiter.snapshot()),
            Source::Redis(redis) => redis.snapshot(),
            Source::Report(report) => report
                .snapshot()
                .ok_or_else(|| "no report received yet".to_string()),
        }
    }

    /// A receiver that sees a new value after every change of the figures.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        match self {
            Source::Proxy(limiter) => limiter.subscribe(),
            Source::Redis(redis) => redis.subscribe(),
            Source::Report(report) => report.subscribe(),
        }
    }

    /// True when the work this pod must finish before it goes is done. A Redis queue belongs to
    /// the pool, so it never holds a pod back; the app's reported work does.
    pub fn is_idle(&self) -> bool {
        match self {
            Source::Proxy(_) | Source::Redis(_) => true,
            Source::Report(report) => report.is_idle(),
        }
    }
}
