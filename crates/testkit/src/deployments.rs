//! The Deployments as this process sees them, with the arrival time of every change.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};

use asyncpool_contract::pod::POOL_LABEL;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

/// A change of one Deployment's `spec.replicas`, stamped when its watch event arrived here.
#[derive(Debug)]
pub struct Change {
    pub name: String,
    pub replicas: Option<i32>,
    pub at: Instant,
}

pub struct Deployments {
    replicas: Arc<Mutex<HashMap<String, Option<i32>>>>,
    changes: mpsc::UnboundedReceiver<Change>,
    task: JoinHandle<()>,
}

impl Deployments {
    pub fn start(client: &Client, namespace: &str) -> Self {
        let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let replicas = Arc::new(Mutex::new(HashMap::new()));
        let (tx, changes) = mpsc::unbounded_channel();
        let task = tokio::spawn(follow_deployments(api, replicas.clone(), tx));
        Self {
            replicas,
            changes,
            task,
        }
    }

    pub fn replicas(&self, name: &str) -> Option<i32> {
        self.replicas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
            .flatten()
    }

    /// Forgets changes seen so far, so that the next one waited for is a new one.
    pub fn drain(&mut self) {
        while self.changes.try_recv().is_ok() {}
    }

    /// The next change of any Deployment, before `deadline`.
    pub async fn next(&mut self, deadline: Instant) -> Option<Change> {
        timeout_at(deadline, self.changes.recv())
            .await
            .ok()
            .flatten()
    }

    /// The first change of `name` away from `from`, before `deadline`.
    pub async fn next_change(
        &mut self,
        name: &str,
        from: i32,
        deadline: Instant,
    ) -> Option<Change> {
        loop {
            match timeout_at(deadline, self.changes.recv()).await {
                Ok(Some(change)) if change.name == name && change.replicas != Some(from) => {
                    return Some(change);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

impl Drop for Deployments {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow_deployments(
    api: Api<Deployment>,
    replicas: Arc<Mutex<HashMap<String, Option<i32>>>>,
    changes: mpsc::UnboundedSender<Change>,
) {
    let events = watcher(api, watcher::Config::default().labels(POOL_LABEL)).default_backoff();
    let mut events = pin!(events);
    while let Some(event) = events.next().await {
        // Stamped first: decoding is already done, and nothing else should sit in between.
        let at = Instant::now();
        let Ok(event) = event else { continue };
        match event {
            watcher::Event::Apply(d) | watcher::Event::InitApply(d) => {
                let name = d.name_any();
                let now = d.spec.as_ref().and_then(|s| s.replicas);
                let before = replicas
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.clone(), now);
                if before != Some(now) {
                    let _ = changes.send(Change {
                        name,
                        replicas: now,
                        at,
                    });
                }
            }
            watcher::Event::Delete(d) => {
                replicas
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&d.name_any());
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }
}
