//! Counting API writes in a namespace during a window, and who made them.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::pin::pin;
use std::time::Duration;

use asyncpool::crd::AsyncWorkerPool;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, timeout_at};

use asyncpool_testkit::bench::BenchResult;

/// Writes to one kind of object seen by a watch during a window.
#[derive(Debug, Default)]
pub struct KindWrites {
    events: usize,
    /// Who wrote, from the objects' managed fields touched in the window: "manager op/subresource".
    writers: BTreeMap<String, usize>,
    /// The distinct load figures and Scaling condition messages that the written objects
    /// carried (pools only), to show what a status write changed.
    scaling_messages: Vec<String>,
}

async fn count_writes<K>(
    api: Api<K>,
    window: Duration,
    only: Option<&str>,
) -> BenchResult<KindWrites>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug + Send + 'static,
{
    let version = api
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .ok_or("a list without a resourceVersion")?;
    let watch_seconds = u32::try_from(window.as_secs() + 30).unwrap_or(u32::MAX);
    let stream = api
        .watch(&WatchParams::default().timeout(watch_seconds), &version)
        .await?;
    count_stream(stream, window, only).await
}

/// "manager Operation/subresource" → the time of its last write, from managed fields.
type Writers = BTreeMap<String, Option<Timestamp>>;

fn writers_of(meta: &ObjectMeta) -> Writers {
    meta.managed_fields
        .iter()
        .flatten()
        .map(|entry| {
            let who = format!(
                "{} {}{}",
                entry.manager.as_deref().unwrap_or("?"),
                entry.operation.as_deref().unwrap_or("?"),
                entry
                    .subresource
                    .as_deref()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default()
            );
            (who, entry.time.as_ref().map(|t| t.0))
        })
        .collect()
}

/// Who made the write that turned `before` into `after`: the managers whose entry's time moved;
/// when none did (two writes within one second, the times' resolution, or no earlier version
/// seen), the ones with the latest time.
fn who_wrote(before: Option<&Writers>, after: &Writers) -> Vec<String> {
    let moved: Vec<String> = after
        .iter()
        .filter(|(who, time)| before.is_some_and(|b| b.get(*who) != Some(*time)))
        .map(|(who, _)| who.clone())
        .collect();
    if !moved.is_empty() {
        return moved;
    }
    let latest = after.values().max().copied().flatten();
    after
        .iter()
        .filter(|(_, time)| latest.is_some() && **time == latest)
        .map(|(who, _)| who.clone())
        .collect()
}

/// Whether an object named `name` is, or belongs to, the pool `pool`: the pool, its Deployment
/// and Service (same name), its ReplicaSets and pods (`pool-…`), and events about them
/// (`<object>.<id>`).
fn belongs(name: &str, pool: &str) -> bool {
    name.strip_prefix(pool)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '.']))
}

async fn count_stream<K: Resource + Serialize>(
    stream: impl Stream<Item = kube::Result<WatchEvent<K>>>,
    window: Duration,
    only: Option<&str>,
) -> BenchResult<KindWrites> {
    let mut stream = pin!(stream);
    let mut writes = KindWrites::default();
    let mut last: HashMap<String, Writers> = HashMap::new();
    let deadline = Instant::now() + window;
    loop {
        let object = match timeout_at(deadline, stream.next()).await {
            Err(_) => return Ok(writes),
            Ok(None) => return Err("a write-counting watch ended early".into()),
            Ok(Some(event)) => match event? {
                WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => return Err(format!("watch error: {e:?}").into()),
            },
        };
        let name = object.meta().name.clone().unwrap_or_default();
        if only.is_some_and(|pool| !belongs(&name, pool)) {
            continue;
        }
        writes.events += 1;
        let now = writers_of(object.meta());
        for who in who_wrote(last.get(&name), &now) {
            *writes.writers.entry(who).or_default() += 1;
        }
        last.insert(name, now);
        if let Some(message) = scaling_message(&object)
            && !writes.scaling_messages.contains(&message)
        {
            writes.scaling_messages.push(message);
        }
    }
}

/// A pool's load figure and the message of its Scaling condition.
fn scaling_message<K: Serialize>(object: &K) -> Option<String> {
    let value = serde_json::to_value(object).ok()?;
    let load = value
        .pointer("/status/load")
        .map_or_else(|| "-".to_owned(), |l| l.to_string());
    let message = value
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Scaling"))?
        .get("message")?
        .as_str()?
        .to_owned();
    Some(format!("status.load {load}: {message}"))
}

/// Writes per kind in the namespace during `window`; only those to the pool `only` and its
/// objects when given.
pub async fn writes_in(
    client: &Client,
    namespace: &str,
    window: Duration,
    only: Option<&str>,
) -> BenchResult<Vec<(&'static str, KindWrites)>> {
    let (pools, deployments, services, pods, events) = tokio::try_join!(
        count_writes(
            Api::<AsyncWorkerPool>::namespaced(client.clone(), namespace),
            window,
            only
        ),
        count_writes(
            Api::<Deployment>::namespaced(client.clone(), namespace),
            window,
            only
        ),
        count_writes(
            Api::<Service>::namespaced(client.clone(), namespace),
            window,
            only
        ),
        count_writes(
            Api::<Pod>::namespaced(client.clone(), namespace),
            window,
            only
        ),
        count_writes(
            Api::<K8sEvent>::namespaced(client.clone(), namespace),
            window,
            only
        ),
    )?;
    Ok(vec![
        ("AsyncWorkerPool", pools),
        ("Deployment", deployments),
        ("Service", services),
        ("Pod", pods),
        ("Event", events),
    ])
}

pub fn describe_writes(writes: &[(&'static str, KindWrites)]) -> String {
    let mut text = String::new();
    for (kind, w) in writes {
        let _ = write!(text, "{kind}: {}", w.events);
        if !w.writers.is_empty() {
            let who: Vec<String> = w.writers.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
            let _ = write!(text, " [{}]", who.join(", "));
        }
        if !w.scaling_messages.is_empty() {
            let shown: Vec<String> = w
                .scaling_messages
                .iter()
                .take(4)
                .map(|m| format!("{m:?}"))
                .collect();
            let _ = write!(
                text,
                " ({} distinct load figures and Scaling messages, e.g. {})",
                w.scaling_messages.len(),
                shown.join(", ")
            );
        }
        text.push_str("; ");
    }
    text.trim_end_matches("; ").to_owned()
}
