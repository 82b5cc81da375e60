//! Reading an `AsyncWorkerPool` manifest as the API server would, without a cluster: the
//! schema's defaults, its OpenAPI checks and its CEL rules, all taken from the CRD that the
//! Rust types generate, with the API server's messages. So a tool that reads a pool file
//! (`kubectl asyncpool simulate -f pool.yaml`) refuses exactly what `kubectl apply` would, and
//! says so in the same words.
//!
//! What it checks, in the API server's order: `metadata.name`; unknown fields (kubectl's strict
//! field validation); then per field, type, enum, bounds, lengths and required fields; then,
//! only when none of those failed, every `x-kubernetes-validations` rule.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

use crate::crd::{AsyncWorkerPool, crd};

/// One reason the API server would refuse the object, as it words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The field path, `spec.maxReplicas`; `<nil>` for the object as a whole.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not YAML: {0}")]
    Yaml(String),
    #[error("no AsyncWorkerPool in the file")]
    NoPool,
    #[error("the file holds several AsyncWorkerPools ({0}); choose one with --pool")]
    Several(String),
    #[error("no AsyncWorkerPool named {0:?} in the file")]
    NotFound(String),
    #[error("The AsyncWorkerPool {name:?} is invalid:\n{}", list(.causes))]
    Invalid { name: String, causes: Vec<Cause> },
    #[error("the pool does not read as an AsyncWorkerPool: {0}")]
    Decode(String),
}

fn list(causes: &[Cause]) -> String {
    causes
        .iter()
        .map(|c| format!("* {c}"))
        .collect::<Vec<_>>()
        .join("\n")
}

const KIND: &str = "AsyncWorkerPool";
const API_VERSION: &str = "asyncpool.dev/v1alpha1";

/// The pool in `text` (one or more YAML documents; other kinds are skipped), named `name` when
/// the file holds several, defaulted and checked as the API server would.
pub fn load_pool(text: &str, name: Option<&str>) -> Result<AsyncWorkerPool, ManifestError> {
    let mut pools = Vec::new();
    let documents: Vec<Value> =
        serde_saphyr::from_str_multiple(text).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    for value in documents {
        let is_pool = value.get("kind").and_then(Value::as_str) == Some(KIND)
            && value.get("apiVersion").and_then(Value::as_str) == Some(API_VERSION);
        if is_pool {
            pools.push(value);
        }
    }
    let pool_name = |v: &Value| {
        v.pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let value = match (name, pools.len()) {
        (_, 0) => return Err(ManifestError::NoPool),
        (None, 1) => pools.remove(0),
        (None, _) => {
            let names: Vec<String> = pools.iter().filter_map(pool_name).collect();
            return Err(ManifestError::Several(names.join(", ")));
        }
        (Some(wanted), _) => pools
            .into_iter()
            .find(|p| pool_name(p).as_deref() == Some(wanted))
            .ok_or_else(|| ManifestError::NotFound(wanted.to_owned()))?,
    };
    check(value)
}

/// Defaults and checks one pool object, then reads it as the API type.
pub fn check(mut object: Value) -> Result<AsyncWorkerPool, ManifestError> {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let causes = validate(&mut object);
    if !causes.is_empty() {
        return Err(ManifestError::Invalid { name, causes });
    }
    serde_json::from_value(object).map_err(|e| ManifestError::Decode(e.to_string()))
}

/// Applies the schema's defaults to `object` and returns every reason the API server would
/// refuse it (none: it would be accepted).
pub fn validate(object: &mut Value) -> Vec<Cause> {
    static SCHEMA: OnceLock<Option<Value>> = OnceLock::new();
    let schema = SCHEMA.get_or_init(|| {
        serde_json::to_value(crd())
            .ok()?
            .pointer("/spec/versions/0/schema/openAPIV3Schema")
            .cloned()
    });
    let Some(schema) = schema else {
        return vec![cause("<nil>", "the CRD has no schema")];
    };
    // Object metadata is checked on its own and does not hold back the CEL rules.
    let mut meta = Vec::new();
    match object.pointer("/metadata/name").and_then(Value::as_str) {
        None | Some("") => meta.push(cause(
            "metadata.name",
            "Required value: name or generateName is required",
        )),
        Some(name) if !is_dns_subdomain(name) => meta.push(cause(
            "metadata.name",
            &format!(
                "Invalid value: {}: a lowercase RFC 1123 subdomain must consist of lower case \
                 alphanumeric characters, '-' or '.', and must start and end with an \
                 alphanumeric character (e.g. 'example.com', regex used for validation is \
                 '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                quoted(name)
            ),
        )),
        Some(_) => {}
    }
    let Some(fields) = object.as_object_mut() else {
        meta.push(cause("<nil>", "Invalid value: the object is not a map"));
        return meta;
    };
    let mut causes = Vec::new();
    // The status subresource: what a create carries in `status` is dropped.
    fields.remove("status");
    let mut unknown = Vec::new();
    for (key, value) in fields.iter_mut() {
        match key.as_str() {
            "apiVersion" | "kind" | "metadata" => {}
            _ => match schema.pointer(&format!("/properties/{key}")) {
                Some(property) => {
                    apply_defaults(value, property);
                    let mut walk = Walk {
                        causes: &mut causes,
                        unknown: &mut unknown,
                    };
                    walk.structure(value, property, key);
                }
                None => unknown.push(key.clone()),
            },
        }
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for field in required.iter().filter_map(Value::as_str) {
            if !fields.contains_key(field) {
                causes.push(cause(field, "Required value"));
            }
        }
    }
    if !unknown.is_empty() {
        // kubectl's default (strict) field validation refuses the whole object first.
        let listed: Vec<String> = unknown
            .iter()
            .map(|u| format!("unknown field {u:?}"))
            .collect();
        meta.push(cause(
            "<nil>",
            &format!("strict decoding error: {}", listed.join(", ")),
        ));
        return meta;
    }
    if causes.iter().any(Cause::is_blocking) {
        causes.push(cause(
            "<nil>",
            "Invalid value: null: some validation rules were not checked because the object was \
             invalid; correct the existing errors to complete validation",
        ));
    } else {
        for (key, value) in fields.iter() {
            if let Some(property) = schema.pointer(&format!("/properties/{key}")) {
                rules(value, property, key, &mut causes);
            }
        }
    }
    meta.extend(causes);
    meta
}

fn cause(field: &str, message: &str) -> Cause {
    Cause {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

impl Cause {
    /// Errors that stop CEL rules from running (apiextensions-apiserver `hasBlockingErr`).
    fn is_blocking(&self) -> bool {
        [
            "Unsupported value",
            "Required value",
            "Too long",
            "Too many",
            "must be of type",
        ]
        .iter()
        .any(|kind| self.message.contains(kind))
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
                && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        })
}

/// A value as the API server quotes it in a message.
fn quoted(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| format!("{value:?}"))
}

fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => quoted(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

/// The OpenAPI type name of a value, as messages name it.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "string",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Fills absent fields from `default`, and drops nulls of fields that are not nullable (the
/// API server prunes them before defaulting).
fn apply_defaults(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(fields) => {
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, property) in properties {
                    let nullable = property.get("nullable").and_then(Value::as_bool) == Some(true);
                    if fields.get(name).is_some_and(Value::is_null) && !nullable {
                        fields.remove(name);
                    }
                    if !fields.contains_key(name)
                        && let Some(default) = property.get("default")
                    {
                        fields.insert(name.clone(), default.clone());
                    }
                    if let Some(field) = fields.get_mut(name) {
                        apply_defaults(field, property);
                    }
                }
            } else if let Some(values) = schema.get("additionalProperties") {
                for field in fields.values_mut() {
                    apply_defaults(field, values);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for value in items {
                    apply_defaults(value, item);
                }
            }
        }
        _ => {}
    }
}

struct Walk<'a> {
    causes: &'a mut Vec<Cause>,
    unknown: &'a mut Vec<String>,
}

impl Walk<'_> {
    fn fail(&mut self, path: &str, message: String) {
        self.causes.push(Cause {
            field: path.to_owned(),
            message,
        });
    }

    /// Type, enum, bounds, lengths, required and unknown fields, depth first.
    fn structure(&mut self, value: &Value, schema: &Value, path: &str) {
        if value.is_null() {
            return; // a nullable field set to null
        }
        let int_or_string = schema
            .get("x-kubernetes-int-or-string")
            .and_then(Value::as_bool)
            == Some(true);
        let actual = type_name(value);
        if int_or_string {
            if !matches!(actual, "integer" | "string") {
                self.fail(
                    path,
                    format!(
                        "Invalid value: {:?}: {path} in body must be of type integer,string: {:?}",
                        actual, actual
                    ),
                );
                return;
            }
        } else if let Some(wanted) = schema.get("type").and_then(Value::as_str) {
            let fits = wanted == actual || (wanted == "number" && actual == "integer");
            if !fits {
                self.fail(
                    path,
                    format!(
                        "Invalid value: {actual:?}: {path} in body must be of type {wanted}: \
                         {actual:?}"
                    ),
                );
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            let listed: Vec<String> = allowed.iter().map(shown).collect();
            self.fail(
                path,
                format!(
                    "Unsupported value: {}: supported values: {}",
                    shown(value),
                    listed.join(", ")
                ),
            );
        }
        if let Some(number) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && number < min
            {
                self.fail(
                    path,
                    format!(
                        "Invalid value: {}: {path} in body should be greater than or equal to {}",
                        shown(value),
                        trim_number(min)
                    ),
                );
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && number > max
            {
                self.fail(
                    path,
                    format!(
                        "Invalid value: {}: {path} in body should be less than or equal to {}",
                        shown(value),
                        trim_number(max)
                    ),
                );
            }
        }
        if let Some(text) = value.as_str() {
            let length = text.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && length < min
            {
                self.fail(
                    path,
                    format!(
                        "Invalid value: {}: {path} in body should be at least {min} chars long",
                        quoted(text)
                    ),
                );
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && length > max
            {
                self.fail(path, format!("Too long: may not be more than {max} bytes"));
            }
        }
        match value {
            Value::Object(fields) => self.object(fields, schema, path),
            Value::Array(items) => {
                if let Some(item) = schema.get("items") {
                    for (index, value) in items.iter().enumerate() {
                        self.structure(value, item, &format!("{path}[{index}]"));
                    }
                }
                self.duplicates(items, schema, path);
            }
            _ => {}
        }
    }

    fn object(&mut self, fields: &Map<String, Value>, schema: &Value, path: &str) {
        let preserve = schema
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    self.fail(&format!("{path}.{name}"), "Required value".into());
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        for (name, value) in fields {
            let child = format!("{path}.{name}");
            match (properties.and_then(|p| p.get(name)), additional) {
                (Some(property), _) => self.structure(value, property, &child),
                (None, Some(values)) if values.is_object() => {
                    self.structure(value, values, &child);
                }
                (None, Some(Value::Bool(true))) => {}
                _ if preserve => {}
                _ => self.unknown.push(child),
            }
        }
    }

    /// `x-kubernetes-list-type: map` keys and `set` items must be unique.
    fn duplicates(&mut self, items: &[Value], schema: &Value, path: &str) {
        let keys: Vec<&str> = match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|keys| keys.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default(),
            Some("set") => Vec::new(),
            _ => return,
        };
        let identity = |item: &Value| -> Value {
            if keys.is_empty() {
                item.clone()
            } else {
                Value::Object(
                    keys.iter()
                        .filter_map(|k| Some(((*k).to_owned(), item.get(*k)?.clone())))
                        .collect(),
                )
            }
        };
        let mut seen: Vec<Value> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let id = identity(item);
            if seen.contains(&id) {
                self.fail(
                    &format!("{path}[{index}]"),
                    format!("Duplicate value: {id}"),
                );
            }
            seen.push(id);
        }
    }
}

fn trim_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// Evaluates every `x-kubernetes-validations` rule, depth first as the API server does.
fn rules(value: &Value, schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    if value.is_null() {
        return;
    }
    if let Some(list) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        let this = to_cel(value, schema);
        for rule in list {
            let Some(expression) = rule.get("rule").and_then(Value::as_str) else {
                continue;
            };
            let message = rule
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| format!("failed rule: {expression}"), str::to_owned);
            let message = match evaluate(expression, &this) {
                Ok(true) => continue,
                // The API server shows a scalar's value, not an object's or a list's.
                Ok(false) => match value {
                    Value::Object(_) | Value::Array(_) => format!("Invalid value: {message}"),
                    scalar => format!("Invalid value: {}: {message}", shown(scalar)),
                },
                Err(error) => format!(
                    "Invalid value: {:?}: {error} evaluating rule: {message}",
                    type_name(value)
                ),
            };
            causes.push(Cause {
                field: path.to_owned(),
                message,
            });
        }
    }
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            for (name, field) in fields {
                let child = properties
                    .and_then(|p| p.get(name))
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(child) = child {
                    rules(field, child, &format!("{path}.{name}"), causes);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for (index, value) in items.iter().enumerate() {
                    rules(value, item, &format!("{path}[{index}]"), causes);
                }
            }
        }
        _ => {}
    }
}

/// Whether one CEL rule holds for `this`; a rule that cannot run is an error, as on the
/// API server.
pub fn evaluate(expression: &str, this: &cel::Value) -> Result<bool, String> {
    let program =
        cel::Program::compile(expression).map_err(|e| format!("compilation failed: {e}"))?;
    let mut context = cel::Context::default();
    context.add_variable_from_value("self", this.clone());
    match program.execute(&context) {
        Ok(cel::Value::Bool(holds)) => Ok(holds),
        Ok(other) => Err(format!("rule did not evaluate to a bool: {other:?}")),
        // The API server's words for the one failure the CRD's rules can meet: a string that
        // is not a duration.
        Err(error) if error.to_string().contains("'duration'") => {
            Err("type conversion error from 'string' to 'google.protobuf.Duration'".to_owned())
        }
        Err(error) => Err(format!("rule could not be evaluated: {error}")),
    }
}

/// A JSON value as CEL sees it, typed by its schema (a `number` is a double even when written
/// as an integer).
fn to_cel(value: &Value, schema: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => {
            let is_number = schema.get("type").and_then(Value::as_str) == Some("number");
            match n.as_i64() {
                Some(i) if !is_number => cel::Value::Int(i),
                _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            }
        }
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => {
            let item = schema.get("items").unwrap_or(&Value::Null);
            cel::Value::List(Arc::new(items.iter().map(|v| to_cel(v, item)).collect()))
        }
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").unwrap_or(&Value::Null);
            let map: HashMap<String, cel::Value> = fields
                .iter()
                .map(|(name, field)| {
                    let child = properties.and_then(|p| p.get(name)).unwrap_or(additional);
                    (name.clone(), to_cel(field, child))
                })
                .collect();
            cel::Value::from(map)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: asyncpool.dev/v1alpha1
kind: AsyncWorkerPool
metadata: {name: chat}
spec:
  maxReplicas: 8
  concurrency: 4
  template: {spec: {containers: [{name: app, image: app}]}}
"#;

    fn invalid(yaml: &str) -> Vec<String> {
        match load_pool(yaml, None) {
            Err(ManifestError::Invalid { causes, .. }) => {
                causes.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    fn with(spec_line: &str) -> String {
        VALID.replace(
            "  concurrency: 4\n",
            &format!("  concurrency: 4\n{spec_line}\n"),
        )
    }

    #[test]
    fn a_valid_pool_is_defaulted_like_the_api_server_does() {
        let pool = load_pool(VALID, None).unwrap();
        assert_eq!(pool.metadata.name.as_deref(), Some("chat"));
        assert_eq!(pool.spec.min_replicas, 1);
        assert_eq!(pool.spec.scaling.stable_window.0, "60s");
    }

    #[test]
    fn bounds_types_and_enums_use_the_api_servers_words() {
        assert_eq!(
            invalid(&VALID.replace("maxReplicas: 8", "maxReplicas: 0")),
            [
                "spec.maxReplicas: Invalid value: 0: spec.maxReplicas in body should be \
                 greater than or equal to 1",
                "spec: Invalid value: minReplicas must not be greater than maxReplicas"
            ]
        );
        let causes = invalid(&with("  queue: {source: kafka}"));
        assert_eq!(
            causes[0],
            "spec.queue.source: Unsupported value: \"kafka\": supported values: \"proxy\", \
             \"redis\", \"report\""
        );
        assert!(causes[1].contains("some validation rules were not checked"));
        let causes = invalid(&VALID.replace("maxReplicas: 8", "maxReplicas: eight"));
        assert!(
            causes[0].starts_with("spec.maxReplicas: Invalid value: \"string\": spec.maxReplicas in body must be of type integer"),
            "{causes:?}"
        );
    }

    #[test]
    fn cel_rules_give_their_messages() {
        let causes = invalid(&with("  scaling: {panicWindow: 2m, stableWindow: 1m}"));
        assert_eq!(
            causes,
            [
                "spec.scaling: Invalid value: scaling.panicWindow must not be longer than \
              scaling.stableWindow"
            ]
        );
        let causes = invalid(&with("  port: 9090"));
        assert!(causes[0].starts_with("spec.port: Invalid value: 9090: port must not be"));
    }

    #[test]
    fn a_redis_url_is_redis_or_rediss() {
        for url in ["redis://r:6379/0", "rediss://reader@r:6380/0"] {
            let pool = with(&format!(
                "  queue: {{source: redis, redis: {{url: '{url}', key: jobs}}}}"
            ));
            let loaded = load_pool(&pool, None).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(loaded.spec.queue.redis.unwrap().url, url);
        }
        let causes = invalid(&with(
            "  queue: {source: redis, redis: {url: 'http://r:6379', key: jobs}}",
        ));
        assert_eq!(
            causes,
            [
                "spec.queue.redis.url: Invalid value: \"http://r:6379\": queue.redis.url must start \
                 with redis:// or rediss://"
            ]
        );
    }

    #[test]
    fn unknown_fields_and_missing_ones_are_named() {
        let causes = invalid(&VALID.replace("maxReplicas: 8", "maxReplica: 8"));
        assert_eq!(
            causes,
            ["<nil>: strict decoding error: unknown field \"spec.maxReplica\""]
        );
        let causes = invalid(&VALID.replace("metadata: {name: chat}", "metadata: {}"));
        assert_eq!(
            causes,
            ["metadata.name: Required value: name or generateName is required"]
        );
    }

    #[test]
    fn files_with_several_pools_need_a_name() {
        let two = format!("{VALID}---\n{}", VALID.replace("name: chat", "name: jobs"));
        assert!(matches!(
            load_pool(&two, None),
            Err(ManifestError::Several(_))
        ));
        let jobs = load_pool(&two, Some("jobs")).unwrap();
        assert_eq!(jobs.metadata.name.as_deref(), Some("jobs"));
        assert!(matches!(
            load_pool(&two, Some("nope")),
            Err(ManifestError::NotFound(_))
        ));
        assert!(matches!(
            load_pool("kind: Namespace\n", None),
            Err(ManifestError::NoPool)
        ));
    }

    #[test]
    fn every_rule_in_the_crd_compiles() {
        fn collect(value: &Value, rules: &mut Vec<String>) {
            match value {
                Value::Object(fields) => {
                    if let Some(Value::String(rule)) = fields.get("rule") {
                        rules.push(rule.clone());
                    }
                    fields.values().for_each(|v| collect(v, rules));
                }
                Value::Array(items) => items.iter().for_each(|v| collect(v, rules)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        collect(&serde_json::to_value(crd()).unwrap(), &mut found);
        assert!(found.len() >= 10, "found {} rules", found.len());
        for rule in found {
            assert!(
                cel::Program::compile(&rule).is_ok(),
                "the CRD rule {rule:?} does not compile here"
            );
        }
    }
}
