//! The pool every reaction trial scales.

use asyncpool::crd::AsyncWorkerPool;
use asyncpool_testkit::bench::BenchResult;
use serde_json::json;

pub fn pool_object(name: &str) -> BenchResult<AsyncWorkerPool> {
    // The shortest windows the API allows: a 1 s panic window makes a step in the load a
    // decision at the next reconcile, so what is measured is the pipeline, not the smoothing.
    Ok(serde_json::from_value(json!({
        "apiVersion": "asyncpool.dev/v1alpha1",
        "kind": "AsyncWorkerPool",
        "metadata": {"name": name},
        "spec": {
            "minReplicas": 1,
            "maxReplicas": 10,
            "concurrency": 10,
            "queue": {"source": "report", "targetPerWorker": 10},
            "scaling": {
                "tolerancePercent": 0,
                "panicWindow": "1s",
                "stableWindow": "4s",
                "scaleDownDelay": "3s",
                "metricsTimeout": "2s"
            },
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}
            }
        }
    }))?)
}
