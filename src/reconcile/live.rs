//! The pool's Deployment and Service as the operator's caches hold them: parsed straight from
//! the API server's JSON into the few fields reconcile reads, so that nothing else of them is
//! ever allocated. (k8s-openapi's structs hold every optional field inline, 2.4 KiB for a
//! Deployment before its contents; and trimming a whole object after its parse frees its other
//! parts between the parts kept, which leaves the allocator's pages as full as before.)

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::{Deserialize, Deserializer};

/// A Deployment of the operator's as reconcile reads it: its identity, owner and annotations
/// (the applied hash), `spec.replicas`, and the sizes and conditions of its status.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LiveDeployment {
    #[serde(deserialize_with = "owned_metadata")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<LiveDeploymentSpec>,
    #[serde(default)]
    pub status: Option<LiveDeploymentStatus>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LiveDeploymentSpec {
    pub replicas: Option<i32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveDeploymentStatus {
    pub replicas: Option<i32>,
    pub ready_replicas: Option<i32>,
    pub updated_replicas: Option<i32>,
    pub conditions: Option<Vec<LiveCondition>>,
}

/// A Deployment's condition, without its times.
#[derive(Clone, Debug, Deserialize)]
pub struct LiveCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// A Service of the operator's as reconcile reads it: it is re-applied whenever its applied
/// hash differs, so its identity, owner and annotations are all there is to read.
#[derive(Clone, Debug, Deserialize)]
pub struct LiveService {
    #[serde(deserialize_with = "owned_metadata")]
    pub metadata: ObjectMeta,
}

/// What reconcile reads of an owned object's metadata; its field managers and labels (a tree
/// per writer, a map each) are skipped by the parser.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OwnedMetadata {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
}

impl From<OwnedMetadata> for ObjectMeta {
    fn from(kept: OwnedMetadata) -> Self {
        ObjectMeta {
            name: kept.name,
            namespace: kept.namespace,
            uid: kept.uid,
            resource_version: kept.resource_version,
            generation: kept.generation,
            annotations: kept.annotations,
            owner_references: kept.owner_references,
            ..ObjectMeta::default()
        }
    }
}

fn owned_metadata<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    OwnedMetadata::deserialize(deserializer).map(ObjectMeta::from)
}

/// The same fields of a whole object (the operator's own write, as the API server answered it).
fn kept_metadata(metadata: ObjectMeta) -> ObjectMeta {
    ObjectMeta::from(OwnedMetadata {
        name: metadata.name,
        namespace: metadata.namespace,
        uid: metadata.uid,
        resource_version: metadata.resource_version,
        generation: metadata.generation,
        annotations: metadata.annotations,
        owner_references: metadata.owner_references,
    })
}

impl From<Deployment> for LiveDeployment {
    fn from(deployment: Deployment) -> Self {
        LiveDeployment {
            metadata: kept_metadata(deployment.metadata),
            spec: deployment.spec.map(|spec| LiveDeploymentSpec {
                replicas: spec.replicas,
            }),
            status: deployment.status.map(|status| LiveDeploymentStatus {
                replicas: status.replicas,
                ready_replicas: status.ready_replicas,
                updated_replicas: status.updated_replicas,
                conditions: status.conditions.map(|conditions| {
                    conditions
                        .into_iter()
                        .map(|c| LiveCondition {
                            type_: c.type_,
                            status: c.status,
                            reason: c.reason,
                            message: c.message,
                        })
                        .collect()
                }),
            }),
        }
    }
}

impl LiveDeployment {
    /// Its `spec.replicas`.
    pub fn replicas(&self) -> Option<i32> {
        self.spec.as_ref()?.replicas
    }
}

/// Both are read through the API as the objects they stand for: the kind, the group and the
/// path of the whole object's.
macro_rules! resource_of {
    ($live:ty, $whole:ty) => {
        impl k8s_openapi::Resource for $live {
            const API_VERSION: &'static str = <$whole as k8s_openapi::Resource>::API_VERSION;
            const GROUP: &'static str = <$whole as k8s_openapi::Resource>::GROUP;
            const KIND: &'static str = <$whole as k8s_openapi::Resource>::KIND;
            const VERSION: &'static str = <$whole as k8s_openapi::Resource>::VERSION;
            const URL_PATH_SEGMENT: &'static str =
                <$whole as k8s_openapi::Resource>::URL_PATH_SEGMENT;
            type Scope = <$whole as k8s_openapi::Resource>::Scope;
        }

        impl k8s_openapi::Metadata for $live {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

resource_of!(LiveDeployment, Deployment);
resource_of!(LiveService, Service);

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;

    fn whole_deployment() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "a", "uid": "u1", "generation": 4,
                "resourceVersion": "17", "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"asyncpool.dev/pool": "web"},
                "annotations": {"asyncpool.dev/applied-hash": "abc"},
                "ownerReferences": [{"apiVersion": "asyncpool.dev/v1alpha1",
                    "kind": "AsyncWorkerPool", "name": "web", "uid": "p1", "controller": true}],
                "managedFields": [{"manager": "asyncpool", "operation": "Apply",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {
                "replicas": 7,
                "selector": {"matchLabels": {"asyncpool.dev/pool": "web"}},
                "template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}}
            },
            "status": {
                "replicas": 8, "readyReplicas": 6, "updatedReplicas": 7,
                "conditions": [{"type": "Progressing", "status": "False",
                    "reason": "ProgressDeadlineExceeded", "message": "too slow",
                    "lastUpdateTime": "2026-01-01T00:00:00Z"}]
            }
        })
    }

    fn assert_kept(live: &LiveDeployment) {
        assert_eq!(
            (live.name_any(), live.namespace(), live.uid()),
            (
                "web".to_owned(),
                Some("a".to_owned()),
                Some("u1".to_owned())
            )
        );
        assert_eq!(live.metadata.generation, Some(4));
        assert_eq!(live.resource_version().as_deref(), Some("17"));
        assert_eq!(
            live.annotations()
                .get("asyncpool.dev/applied-hash")
                .map(String::as_str),
            Some("abc")
        );
        assert_eq!(live.owner_references().len(), 1);
        assert!(live.metadata.managed_fields.is_none() && live.metadata.labels.is_none());
        assert_eq!(live.replicas(), Some(7));
        let status = live.status.as_ref().expect("status");
        assert_eq!(
            (
                status.replicas,
                status.ready_replicas,
                status.updated_replicas
            ),
            (Some(8), Some(6), Some(7))
        );
        let condition = &status.conditions.as_ref().expect("conditions")[0];
        assert_eq!(
            (condition.type_.as_str(), condition.reason.as_deref()),
            ("Progressing", Some("ProgressDeadlineExceeded"))
        );
        assert_eq!(condition.message.as_deref(), Some("too slow"));
    }

    #[test]
    fn a_deployment_is_kept_as_the_fields_reconcile_reads_parsed_or_written() {
        let parsed: LiveDeployment =
            serde_json::from_value(whole_deployment()).expect("a Deployment");
        assert_kept(&parsed);
        let whole: Deployment = serde_json::from_value(whole_deployment()).expect("a Deployment");
        assert_kept(&LiveDeployment::from(whole));
    }

    #[test]
    fn a_service_is_kept_as_its_identity_owner_and_annotations() {
        let service: LiveService = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web", "namespace": "a", "uid": "s1", "resourceVersion": "9",
                "labels": {"asyncpool.dev/pool": "web"},
                "annotations": {"asyncpool.dev/applied-hash": "def"},
                "ownerReferences": [{"apiVersion": "asyncpool.dev/v1alpha1",
                    "kind": "AsyncWorkerPool", "name": "web", "uid": "p1", "controller": true}]
            },
            "spec": {"selector": {"asyncpool.dev/pool": "web"}, "ports": [{"port": 80}]}
        }))
        .expect("a Service");
        assert_eq!(service.uid().as_deref(), Some("s1"));
        assert_eq!(
            service
                .annotations()
                .get("asyncpool.dev/applied-hash")
                .map(String::as_str),
            Some("def")
        );
        assert_eq!(service.owner_references().len(), 1);
        assert!(service.metadata.labels.is_none());
    }

    #[test]
    fn they_are_read_at_the_whole_objects_paths() {
        use kube::Resource;
        assert_eq!(
            LiveDeployment::url_path(&(), Some("a")),
            Deployment::url_path(&(), Some("a"))
        );
        assert_eq!(
            LiveService::url_path(&(), Some("a")),
            Service::url_path(&(), Some("a"))
        );
        assert_eq!(LiveDeployment::kind(&()), "Deployment");
    }
}
