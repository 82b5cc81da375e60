//! The local cluster's audit log: `scripts/cluster` has the API server record every request made
//! as a ServiceAccount (audit.k8s.io/v1 Events at Metadata level, one JSON object a line: who,
//! verb, object, response code) in `$ASYNCPOOL_CLUSTER_DIR/logs/audit.log`. A process holding a
//! ServiceAccount's token (see [`crate::identity`]) therefore leaves a record of every API call it
//! made, which a test reads back here.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::PathBuf;

use serde_json::Value;

/// One API request as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRequest {
    /// Unique per request; a request logged at several stages shares it.
    pub audit_id: String,
    /// `ResponseStarted` (long-running requests such as watches) or `ResponseComplete`.
    pub stage: String,
    /// Who the request acted as: the impersonated user if there was one, else the
    /// authenticated one.
    pub user: String,
    /// The RBAC verb: get, list, watch, create, update, patch, delete, deletecollection, ...
    pub verb: String,
    /// The API group, `""` for the core group.
    pub api_group: String,
    pub api_version: String,
    /// The resource (`pods`), empty for a non-resource URL such as `/version`.
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The response's HTTP status code; `None` when the log has none (a panic).
    pub code: Option<u16>,
    pub request_uri: String,
}

impl AuditRequest {
    /// Whether the request asked to change something.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// The resource as RBAC rules name it: `pods`, or `pods/status` for a subresource.
    pub fn rbac_resource(&self) -> String {
        match &self.subresource {
            Some(subresource) => format!("{}/{subresource}", self.resource),
            None => self.resource.clone(),
        }
    }

    /// Whether authorization let the request through (it may still have failed after, e.g. 404).
    pub fn was_authorized(&self) -> bool {
        !matches!(self.code, Some(401 | 403))
    }

    /// The request one line of the log records, or `None` for a line that is no audit Event (a
    /// torn or foreign line).
    pub fn parse(line: &[u8]) -> Option<Self> {
        let event: Value = serde_json::from_slice(line).ok()?;
        let text = |pointer: &str| event.pointer(pointer).and_then(Value::as_str);
        let owned = |pointer: &str| text(pointer).map(str::to_owned);
        let user = text("/impersonatedUser/username").or_else(|| text("/user/username"))?;
        Some(Self {
            audit_id: owned("/auditID")?,
            stage: owned("/stage")?,
            user: user.to_owned(),
            verb: owned("/verb")?,
            api_group: owned("/objectRef/apiGroup").unwrap_or_default(),
            api_version: owned("/objectRef/apiVersion").unwrap_or_default(),
            resource: owned("/objectRef/resource").unwrap_or_default(),
            subresource: owned("/objectRef/subresource"),
            namespace: owned("/objectRef/namespace"),
            name: owned("/objectRef/name"),
            code: event
                .pointer("/responseStatus/code")
                .and_then(Value::as_u64)
                .and_then(|code| u16::try_from(code).ok()),
            request_uri: owned("/requestURI").unwrap_or_default(),
        })
    }

    /// Whether this stage is the one that stands for the request: the response for most, its
    /// start for a watch, which completes only when the watch ends (maybe never in a test).
    fn is_final_stage(&self) -> bool {
        self.stage == "ResponseComplete"
            || (self.stage == "ResponseStarted" && self.verb == "watch")
    }
}

/// Where the local cluster keeps its logs (`$ASYNCPOOL_CLUSTER_DIR/logs`).
pub fn log_dir() -> PathBuf {
    crate::cluster::state_dir().join("logs")
}

/// The audit log, if the cluster writes one (a cluster started before `scripts/cluster` turned
/// auditing on does not).
pub fn log_path() -> PathBuf {
    log_dir().join("audit.log")
}

/// The audit log's files, oldest first: the rotated backup (`audit-<time>.log`, kept when the
/// log reaches its size limit) if there is one, then the current file.
pub fn log_files() -> Vec<PathBuf> {
    let mut backups: Vec<PathBuf> = std::fs::read_dir(log_dir())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("audit-") && name.ends_with(".log"))
        })
        .collect();
    // The backup's name carries its rotation time, so the name orders them.
    backups.sort();
    backups.push(log_path());
    backups
}

/// Every request made as `user` (e.g. `system:serviceaccount:NS:NAME`) that the audit log holds,
/// in the order logged, each once. Lines that do not parse (the line being written, say) are
/// skipped; a missing log gives nothing.
pub fn requests_by(user: &str) -> Vec<AuditRequest> {
    let files = log_files()
        .into_iter()
        .filter_map(|path| std::fs::File::open(path).ok())
        .map(std::io::BufReader::new);
    requests_in(files, user)
}

/// [`requests_by`] over the given logs, oldest first.
fn requests_in(logs: impl Iterator<Item = impl BufRead>, user: &str) -> Vec<AuditRequest> {
    let mut seen = HashSet::new();
    let mut requests = Vec::new();
    // The name in quotes, as JSON writes it: most lines are someone else's and need no parsing.
    let quoted = format!("\"{user}\"");
    for log in logs {
        for line in log.split(b'\n') {
            let Ok(line) = line else {
                break;
            };
            if !contains(&line, quoted.as_bytes()) {
                continue;
            }
            let Some(request) = AuditRequest::parse(&line) else {
                continue;
            };
            // A watch is logged when it starts and again when it ends, and a file renamed by a
            // rotation while it was read may be read twice: the audit ID keeps each request once.
            if request.user == user
                && request.is_final_stage()
                && seen.insert(request.audit_id.clone())
            {
                requests.push(request);
            }
        }
    }
    requests
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, stage: &str, verb: &str, code: u16) -> String {
        serde_json::json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": id,
            "stage": stage,
            "requestURI": "/apis/apps/v1/namespaces/team/deployments/web?fieldManager=x",
            "verb": verb,
            "user": {"username": "system:serviceaccount:team:op", "groups": ["system:serviceaccounts"]},
            "objectRef": {"resource": "deployments", "namespace": "team", "name": "web",
                          "apiGroup": "apps", "apiVersion": "v1"},
            "responseStatus": {"metadata": {}, "code": code},
        })
        .to_string()
    }

    #[test]
    fn a_line_becomes_a_request() {
        let request = AuditRequest::parse(line("a", "ResponseComplete", "patch", 201).as_bytes())
            .expect("parses");
        assert_eq!(request.user, "system:serviceaccount:team:op");
        assert_eq!(
            (request.api_group.as_str(), request.rbac_resource().as_str()),
            ("apps", "deployments")
        );
        assert_eq!(request.namespace.as_deref(), Some("team"));
        assert_eq!(request.code, Some(201));
        assert!(request.is_write() && request.was_authorized());
    }

    #[test]
    fn core_group_subresources_and_impersonation() {
        let event = serde_json::json!({
            "auditID": "b", "stage": "ResponseComplete", "verb": "create",
            "user": {"username": "admin"},
            "impersonatedUser": {"username": "system:serviceaccount:team:op"},
            "objectRef": {"resource": "pods", "subresource": "exec", "namespace": "team", "apiVersion": "v1"},
            "responseStatus": {"code": 403},
        });
        let request = AuditRequest::parse(event.to_string().as_bytes()).expect("parses");
        assert_eq!(request.user, "system:serviceaccount:team:op");
        assert_eq!(request.api_group, "");
        assert_eq!(request.rbac_resource(), "pods/exec");
        assert!(!request.was_authorized());
    }

    #[test]
    fn torn_and_foreign_lines_are_skipped() {
        let whole = line("c", "ResponseComplete", "get", 200);
        assert!(AuditRequest::parse(&whole.as_bytes()[..whole.len() / 2]).is_none());
        assert!(AuditRequest::parse(b"not json").is_none());
        assert!(AuditRequest::parse(b"{\"kind\": \"Event\"}").is_none());
    }

    #[test]
    fn each_request_counts_once_a_watch_from_its_start() {
        let log = [
            line("w", "ResponseStarted", "watch", 200),
            line("g", "ResponseComplete", "get", 404),
            "{\"torn".to_owned(),
            line("w", "ResponseComplete", "watch", 200),
            line("l", "ResponseStarted", "list", 200),
        ]
        .join("\n");
        let backup = line("g", "ResponseComplete", "get", 404);
        let logs = [backup.as_bytes(), log.as_bytes()].into_iter();
        let requests = requests_in(logs, "system:serviceaccount:team:op");
        let found: Vec<(&str, &str)> = requests
            .iter()
            .map(|r| (r.audit_id.as_str(), r.stage.as_str()))
            .collect();
        assert_eq!(found, [("g", "ResponseComplete"), ("w", "ResponseStarted")]);
        assert!(
            requests_in(
                [log.as_bytes()].into_iter(),
                "system:serviceaccount:team:other"
            )
            .is_empty()
        );
    }
}
