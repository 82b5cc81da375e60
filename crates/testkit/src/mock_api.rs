//! A mocked API server for the pipeline's tests that need no cluster: kube's `tower-test` mock
//! service (as kube-rs's controller-rs tests do) answered by an in-memory object store that
//! records every request. It speaks just enough of the API's semantics for the operator: get,
//! create (409 if present), replace (409 on a stale resourceVersion), merge and apply patches,
//! the status subresource, delete, 404 as a `Status`, and the uid, generation and
//! resourceVersion every write sets. Paths are the API's own
//! (`/apis/apps/v1/namespaces/team/deployments/chat`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::merge_patch;
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request the mock answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// The path without the query.
    pub path: String,
    /// The JSON (or YAML-as-JSON for apply patches) body, `Null` when empty.
    pub body: Value,
}

impl Recorded {
    /// Whether the request changes anything.
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }
}

type Hook = Box<dyn Fn(&Recorded, Option<&Value>) + Send>;

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    resource_version: u64,
    /// Requests to these paths still to be answered with a 500.
    failing: BTreeMap<String, usize>,
}

/// The mocked API server; its task ends when the last client is dropped.
#[derive(Clone, Default)]
pub struct MockApi {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MockApi {
    /// A client whose every request this mock answers.
    pub fn client(&self) -> Client {
        self.client_with_hook(Box::new(|_, _| {}))
    }

    /// As [`Self::client`], calling `hook` after each request with the object it left (for a
    /// test that plays the watch caches' part, say).
    pub fn client_with_hook(&self, hook: Hook) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let state = self.state.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    // Apply patches are YAML, of which JSON is a subset; kube sends JSON.
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                };
                let recorded = Recorded {
                    method: parts.method.clone(),
                    path: parts.uri.path().to_owned(),
                    body,
                };
                let is_apply = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
                let (status, object) = {
                    let mut state = lock(&state);
                    match state.failing.get_mut(&recorded.path) {
                        Some(left) if *left > 0 => {
                            *left -= 1;
                            (StatusCode::INTERNAL_SERVER_ERROR, None)
                        }
                        _ => answer(&mut state, &recorded, is_apply),
                    }
                };
                hook(&recorded, object.as_ref());
                lock(&state).requests.push(recorded);
                let reply = object.unwrap_or_else(|| failure(status));
                let response = Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap_or_default()))
                    .unwrap_or_else(|_| Response::new(Body::empty()));
                respond.send_response(response);
            }
        });
        Client::new(service, "default")
    }

    /// Puts `object` at `path`, as if someone had created it.
    pub fn insert(&self, path: &str, mut object: Value) {
        let mut state = lock(&self.state);
        let previous = state.objects.get(path).cloned();
        stamp(&mut state, previous.as_ref(), &mut object);
        state.objects.insert(path.to_owned(), object);
    }

    /// Answers the next `times` requests to `path` (a subresource's own, like `.../status`)
    /// with a 500, as an API server that is failing.
    pub fn fail(&self, path: &str, times: usize) {
        lock(&self.state).failing.insert(path.to_owned(), times);
    }

    /// The object at `path`, if any.
    pub fn object(&self, path: &str) -> Option<Value> {
        lock(&self.state).objects.get(path).cloned()
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// The requests that changed something, in order.
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(Recorded::is_write)
            .collect()
    }

    /// Forgets the requests answered so far (the objects stay).
    pub fn clear_requests(&self) {
        lock(&self.state).requests.clear();
    }
}

/// What the API server sets on every write of `object` over `previous`: a new
/// resourceVersion, the uid it was created with, and a generation raised by a change of spec.
fn stamp(state: &mut State, previous: Option<&Value>, object: &mut Value) {
    state.resource_version += 1;
    let version = state.resource_version;
    let generation = match previous {
        Some(previous) => {
            let was = previous["metadata"]["generation"].as_i64().unwrap_or(1);
            was + i64::from(previous.get("spec") != object.get("spec"))
        }
        None => object["metadata"]["generation"].as_i64().unwrap_or(1),
    };
    let uid = previous
        .and_then(|p| p["metadata"].get("uid"))
        .or(object["metadata"].get("uid"))
        .cloned()
        .unwrap_or_else(|| format!("uid-{version}").into());
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("resourceVersion".into(), version.to_string().into());
        metadata.insert("uid".into(), uid);
        metadata.insert("generation".into(), generation.into());
    }
}

fn failure(status: StatusCode) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": status.canonical_reason().unwrap_or("failure"),
        "reason": status.canonical_reason().unwrap_or("Unknown").replace(' ', ""),
        "code": status.as_u16(),
    })
}

/// The status and the object of the answer (`None`: a failure `Status`).
fn answer(state: &mut State, request: &Recorded, is_apply: bool) -> (StatusCode, Option<Value>) {
    let (path, subresource_status) = match request.path.strip_suffix("/status") {
        Some(object) => (object.to_owned(), true),
        None => (request.path.clone(), false),
    };
    let existing = state.objects.get(&path).cloned();
    match request.method {
        Method::GET => match existing {
            Some(object) => (StatusCode::OK, Some(object)),
            None => (StatusCode::NOT_FOUND, None),
        },
        Method::POST => {
            let name = request.body["metadata"]["name"]
                .as_str()
                .unwrap_or_default();
            let path = format!("{path}/{name}");
            if state.objects.contains_key(&path) {
                return (StatusCode::CONFLICT, None);
            }
            let mut object = request.body.clone();
            stamp(state, None, &mut object);
            state.objects.insert(path, object.clone());
            (StatusCode::CREATED, Some(object))
        }
        Method::PUT => {
            let Some(existing) = existing else {
                return (StatusCode::NOT_FOUND, None);
            };
            let sent = request.body["metadata"]["resourceVersion"].as_str();
            if sent.is_some_and(|v| Some(v) != existing["metadata"]["resourceVersion"].as_str()) {
                return (StatusCode::CONFLICT, None);
            }
            let mut object = request.body.clone();
            stamp(state, Some(&existing), &mut object);
            state.objects.insert(path, object.clone());
            (StatusCode::OK, Some(object))
        }
        Method::PATCH => {
            let mut object = match &existing {
                Some(object) => object.clone(),
                // Server-side apply creates; a merge patch needs something to patch.
                None if is_apply && !subresource_status => json!({}),
                None => return (StatusCode::NOT_FOUND, None),
            };
            if subresource_status {
                merge_patch(&mut object["status"], &request.body["status"]);
            } else {
                merge_patch(&mut object, &request.body);
            }
            stamp(state, existing.as_ref(), &mut object);
            state.objects.insert(path, object.clone());
            (StatusCode::OK, Some(object))
        }
        Method::DELETE => match state.objects.remove(&path) {
            Some(object) => (StatusCode::OK, Some(object)),
            None => (StatusCode::NOT_FOUND, None),
        },
        _ => (StatusCode::METHOD_NOT_ALLOWED, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_sets_replaces_and_removes() {
        let mut target = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut target, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(target, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
    }
}
