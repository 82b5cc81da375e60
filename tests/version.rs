//! One version everywhere: the crate's, the chart's `version` and `appVersion`, the image tags
//! the chart and the plain manifests deploy, and the sidecar image the operator injects by
//! default. A release bumps the crate version and the chart; this fails when one is missed.

use std::path::Path;

use asyncpool::resources::{DEFAULT_OPERATOR_IMAGE, DEFAULT_SIDECAR_IMAGE};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn yaml(path: &str) -> serde_json::Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn text<'a>(value: &'a serde_json::Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(value, |v, key| &v[*key])
        .as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

#[test]
fn the_chart_carries_the_crates_version() {
    let chart = yaml("charts/asyncpool/Chart.yaml");
    assert_eq!(text(&chart, &["version"]), VERSION);
    assert_eq!(text(&chart, &["appVersion"]), VERSION);
}

#[test]
fn the_default_images_are_this_versions_under_the_charts_names() {
    assert!(DEFAULT_OPERATOR_IMAGE.ends_with(&format!(":{VERSION}")));
    assert!(DEFAULT_SIDECAR_IMAGE.ends_with(&format!(":{VERSION}")));
    // The chart's tags default to its appVersion (checked above), under these repositories.
    let values = yaml("charts/asyncpool/values.yaml");
    for (path, image) in [
        (["image", "repository"].as_slice(), DEFAULT_OPERATOR_IMAGE),
        (
            ["sidecar", "image", "repository"].as_slice(),
            DEFAULT_SIDECAR_IMAGE,
        ),
    ] {
        assert_eq!(format!("{}:{VERSION}", text(&values, path)), image);
        let mut tag = path[..path.len() - 1].to_vec();
        tag.push("tag");
        assert_eq!(text(&values, &tag), "", "{} pins a tag", tag.join("."));
    }
}

#[test]
fn the_plain_manifests_and_the_docs_name_the_same_images() {
    let rendered = read("deploy/operator.yaml");
    assert!(rendered.contains(&format!("image: \"{DEFAULT_OPERATOR_IMAGE}\"")));
    assert!(rendered.contains(&format!("value: \"{DEFAULT_SIDECAR_IMAGE}\"")));
    assert!(rendered.contains(&format!("helm.sh/chart: asyncpool-{VERSION}")));
    assert!(read("docs/operator.md").contains(&format!("`{DEFAULT_SIDECAR_IMAGE}`")));
}
