//! Queues the operator reads itself: a pool whose queue is in Redis and that has no ready
//! worker (at zero replicas, or while its first worker starts) has no sidecar to report it, so
//! the operator polls the queue in the background, one poller per such pool, and wakes the
//! pool's reconcile when the reading changes. Reconcile only looks at the latest reading, so a
//! slow or unreachable Redis never holds up a reconcile. A password kept in a Secret is read
//! when the poller starts and again every minute, so that a rotated one is picked up. A
//! `rediss://` queue's certificate is checked against the public web roots and the operator's
//! own CA bundle (`--redis-ca-file`), if it has one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, SecretKeySelector};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::pool::PoolKey;
use asyncpool_contract::queue::QueueSnapshot;
use asyncpool_contract::redis::{RedisError, RedisPoller, RedisTarget, RedisTls};

/// How often a password kept in a Secret is read again.
const SECRET_REFRESH: Duration = Duration::from_secs(60);
/// How soon a Secret that could not be read is tried again.
const SECRET_RETRY: Duration = Duration::from_secs(5);
/// Bound on reading the Secret, so that a slow API server does not stall the polling.
const SECRET_READ_LIMIT: Duration = Duration::from_secs(5);

struct Polling {
    target: RedisTarget,
    password_secret: Option<SecretKeySelector>,
    capacity: u64,
    poller: Arc<RedisPoller>,
    task: AbortHandle,
}

impl Drop for Polling {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The operator's own pollers, by pool.
pub struct ExternalQueues {
    polling: Mutex<HashMap<PoolKey, Polling>>,
    changes: mpsc::UnboundedSender<PoolKey>,
    /// Reads the Secrets that hold Redis passwords.
    client: Client,
    /// Whom a `rediss://` queue's certificate may come from.
    tls: RedisTls,
}

impl ExternalQueues {
    /// Pollers that announce every changed reading on `changes`.
    pub fn new(changes: mpsc::UnboundedSender<PoolKey>, client: Client, tls: RedisTls) -> Self {
        Self {
            polling: Mutex::default(),
            changes,
            client,
            tls,
        }
    }

    /// The pool's queue as last read, from a poller that keeps running until [`Self::stop`].
    /// A poller just started has no reading yet: missing data until its first read, a moment
    /// later.
    pub fn reading(
        &self,
        pool: &PoolKey,
        target: &RedisTarget,
        password_secret: Option<&SecretKeySelector>,
        capacity: u64,
    ) -> Result<QueueSnapshot, String> {
        let mut polling = self.polling.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = polling.get(pool)
            && current.target == *target
            && current.password_secret.as_ref() == password_secret
            && current.capacity == capacity
        {
            return current.poller.snapshot();
        }
        let started = self
            .start(pool, target, password_secret, capacity)
            .map_err(|error| error.to_string())?;
        let snapshot = started.poller.snapshot();
        polling.insert(pool.clone(), started);
        snapshot
    }

    /// Stops reading the pool's queue (it has a ready worker again, or is gone).
    pub fn stop(&self, pool: &PoolKey) {
        let mut polling = self.polling.lock().unwrap_or_else(PoisonError::into_inner);
        polling.remove(pool);
    }

    fn start(
        &self,
        pool: &PoolKey,
        target: &RedisTarget,
        password_secret: Option<&SecretKeySelector>,
        capacity: u64,
    ) -> Result<Polling, RedisError> {
        let poller = Arc::new(RedisPoller::new(target.clone(), capacity, &self.tls)?);
        let changes = self.changes.clone();
        let key = pool.clone();
        let running = Arc::clone(&poller);
        let secret = password_secret.cloned();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &pool.namespace);
        let span =
            tracing::info_span!("redis_queue", namespace = %pool.namespace, pool = %pool.name);
        let task = tokio::spawn(
            async move {
                let mut changed = running.subscribe();
                let announce = async {
                    while changed.changed().await.is_ok() {
                        if changes.send(key.clone()).is_err() {
                            return;
                        }
                    }
                };
                let poll = async {
                    let Some(secret) = secret else {
                        return running.run().await;
                    };
                    let mut have_password = false;
                    loop {
                        let read = tokio::time::timeout(
                            SECRET_READ_LIMIT,
                            read_password(&secrets, &secret),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(format!("reading Secret {} timed out", secret.name))
                        });
                        match read {
                            Ok(password) => {
                                running.use_password(password).await;
                                have_password = true;
                            }
                            // A refresh that fails keeps the password that works.
                            Err(problem) if have_password => {
                                tracing::warn!(%problem, "cannot refresh the redis password; keeping the last one");
                            }
                            Err(problem) => {
                                running.fail(RedisError::Password(problem));
                                tokio::time::sleep(SECRET_RETRY).await;
                                continue;
                            }
                        }
                        let _ = tokio::time::timeout(SECRET_REFRESH, running.run()).await;
                    }
                };
                tokio::select! {
                    () = poll => {}
                    () = announce => {}
                }
            }
            .instrument(span),
        )
        .abort_handle();
        Ok(Polling {
            target: target.clone(),
            password_secret: password_secret.cloned(),
            capacity,
            poller,
            task,
        })
    }
}

/// The password in `secret`, or what is wrong, in words that say what to fix.
async fn read_password(
    secrets: &Api<Secret>,
    secret: &SecretKeySelector,
) -> Result<String, String> {
    let name = &secret.name;
    let found = secrets.get(name).await.map_err(|error| match error {
        kube::Error::Api(status) if status.code == 403 => format!(
            "the operator may not read Secret {name} (install it with rbac.redisPasswordSecrets=true)"
        ),
        kube::Error::Api(status) if status.code == 404 => format!("Secret {name} not found"),
        other => format!("cannot read Secret {name}: {other}"),
    })?;
    let value = found
        .data
        .and_then(|mut data| data.remove(&secret.key))
        .ok_or_else(|| format!("Secret {name} has no key {}", secret.key))?;
    String::from_utf8(value.0).map_err(|_| format!("Secret {name} key {} is not UTF-8", secret.key))
}
