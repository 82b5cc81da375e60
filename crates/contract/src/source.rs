//! Where a pool's queue is measured: one enum each for the pool's spec (serde and, with the
//! `schema` feature, its JSON schema) and the sidecar's flags (with the `cli` feature), so the
//! value the operator writes is by construction one the sidecar accepts.

use serde::{Deserialize, Serialize};

/// Where a pool's queue is measured.
// No doc comments on the variants: schemars would turn them into a `oneOf` in the CRD.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    #[default]
    #[cfg_attr(
        feature = "cli",
        value(help = "Requests passing through the proxy (pod scope)")
    )]
    Proxy,
    #[cfg_attr(
        feature = "cli",
        value(help = "The length of a Redis list or a stream's pending entries (pool scope)")
    )]
    Redis,
    #[cfg_attr(
        feature = "cli",
        value(help = "Figures the app posts itself to `POST /report` (pod scope)")
    )]
    Report,
}

/// The kind of Redis key that holds a pool's queue.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum RedisKind {
    #[default]
    List,
    Stream,
}

impl SourceKind {
    /// The value as the pool's spec and the sidecar's `--source` flag spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Proxy => "proxy",
            SourceKind::Redis => "redis",
            SourceKind::Report => "report",
        }
    }
}

impl RedisKind {
    /// The value as the pool's spec and the sidecar's `--redis-kind` flag spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisKind::List => "list",
            RedisKind::Stream => "stream",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_is_the_serialized_spelling() {
        for kind in [SourceKind::Proxy, SourceKind::Redis, SourceKind::Report] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
        }
        for kind in [RedisKind::List, RedisKind::Stream] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
        }
    }
}
