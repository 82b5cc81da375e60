//! The committed CRD files are exactly what the Rust types generate.

use std::path::Path;

fn committed(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn committed_crds_match_the_types() {
    let generated = asyncpool::crd::crd_yaml().expect("CRD serializes");
    for file in [
        "crds/asyncworkerpools.yaml",
        "charts/asyncpool/crds/asyncworkerpools.yaml",
    ] {
        assert!(
            committed(file) == generated,
            "{file} is stale: run scripts/gen-crds and commit the result"
        );
    }
}

#[test]
fn crd_fits_a_client_side_apply_annotation() {
    // `kubectl apply` (client-side) stores the whole object in an annotation limited to 256 KiB.
    let json = serde_json::to_vec(&asyncpool::crd::crd()).expect("CRD serializes");
    assert!(json.len() < 200 * 1024, "CRD is {} bytes", json.len());
}

#[test]
fn example_pools_parse_as_the_api_type() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("read example");
            let pool: Result<asyncpool::crd::AsyncWorkerPool, _> = serde_saphyr::from_str(&text);
            assert!(
                pool.is_ok(),
                "{} does not parse: {:?}",
                path.display(),
                pool.err()
            );
            seen += 1;
        }
    }
    assert!(seen > 0, "no example pools found");
}
