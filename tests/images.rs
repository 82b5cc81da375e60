//! The container images that `scripts/images` builds with buildah: each runs its binary from an
//! empty base as uid 65532, carries its OCI labels, stays under its size budget, and is named
//! exactly as the chart and the operator default to, so `helm install` pulls what was built.
//!
//! `scripts/test` builds the images first (ASYNCPOOL_IMAGES_BUILT=1); run alone, this test builds
//! them itself.

use asyncpool_testkit::cluster as support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use asyncpool::resources::{DEFAULT_OPERATOR_IMAGE, DEFAULT_SIDECAR_IMAGE};
use serde_json::Value;
use support::succeeded;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const MIB: u64 = 1024 * 1024;

struct Image {
    reference: &'static str,
    binary: &'static str,
    max_bytes: u64,
}

const IMAGES: [Image; 2] = [
    Image {
        reference: DEFAULT_OPERATOR_IMAGE,
        binary: "asyncpool-operator",
        max_bytes: 30 * MIB,
    },
    Image {
        reference: DEFAULT_SIDECAR_IMAGE,
        binary: "asyncpool-sidecar",
        max_bytes: 10 * MIB,
    },
];

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/images")
}

fn images(args: &[&str]) -> Output {
    Command::new(script())
        .args(args)
        .output()
        .expect("run scripts/images")
}

/// Builds the images unless `scripts/test` already did; once per test binary.
fn built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os("ASYNCPOOL_IMAGES_BUILT").is_none() {
            succeeded(images(&["build"]), "scripts/images build");
        }
    });
}

fn inspect(reference: &str) -> Value {
    built();
    serde_json::from_str(&succeeded(images(&["inspect", reference]), "inspect"))
        .expect("buildah inspect JSON")
}

fn yaml(path: &str) -> Value {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    serde_saphyr::from_str(&std::fs::read_to_string(&full).expect("read")).expect("YAML")
}

#[test]
fn the_images_built_are_the_ones_the_chart_and_the_operator_name() {
    let names = succeeded(images(&["names"]), "scripts/images names");
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(names, [DEFAULT_OPERATOR_IMAGE, DEFAULT_SIDECAR_IMAGE]);
    let values = yaml("charts/asyncpool/values.yaml");
    let chart = yaml("charts/asyncpool/Chart.yaml");
    let app_version = chart["appVersion"].as_str().expect("appVersion");
    for (repository, reference) in [
        (&values["image"]["repository"], DEFAULT_OPERATOR_IMAGE),
        (
            &values["sidecar"]["image"]["repository"],
            DEFAULT_SIDECAR_IMAGE,
        ),
    ] {
        let repository = repository.as_str().expect("a repository");
        assert_eq!(format!("{repository}:{app_version}"), reference);
        // Present in the local store under exactly that name.
        assert_eq!(inspect(reference)["FromImage"], reference);
    }
}

#[test]
fn each_image_runs_its_static_binary_as_uid_65532() {
    for image in IMAGES {
        let config = &inspect(image.reference)["OCIv1"];
        assert_eq!(config["os"], "linux");
        assert_eq!(
            config["config"]["User"], "65532:65532",
            "{}",
            image.reference
        );
        let entrypoint = format!("/usr/local/bin/{}", image.binary);
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([entrypoint]),
            "{}",
            image.reference
        );
        // The base is empty: the binary runs only if it needs no shared library.
        let version = succeeded(
            images(&["run", image.reference, &entrypoint, "--version"]),
            &format!("{} --version in its image", image.binary),
        );
        assert_eq!(version.trim(), format!("{} {VERSION}", image.binary));
        let help = succeeded(
            images(&["run", image.reference, &entrypoint, "--help"]),
            &format!("{} --help in its image", image.binary),
        );
        assert!(help.contains("Usage:"), "{}: {help}", image.binary);
    }
}

#[test]
fn each_image_carries_its_labels_and_stays_under_its_size_budget() {
    for image in IMAGES {
        let labels = &inspect(image.reference)["OCIv1"]["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], VERSION);
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
        assert_eq!(labels["org.opencontainers.image.title"], image.binary);
        assert!(
            labels["org.opencontainers.image.source"]
                .as_str()
                .is_some_and(|s| s.starts_with("https://github.com/")),
            "{labels}"
        );
        let size: u64 = succeeded(images(&["size", image.reference]), "scripts/images size")
            .trim()
            .parse()
            .expect("a size in bytes");
        assert!(
            size <= image.max_bytes,
            "{} is {size} bytes, over its budget of {} MiB",
            image.reference,
            image.max_bytes / MIB
        );
        // Only the binary and the user database: nothing else slipped into the image.
        assert!(
            size > MIB,
            "{} is implausibly small: {size} bytes",
            image.reference
        );
    }
}

#[test]
fn the_images_save_as_oci_archives_that_name_themselves() {
    built();
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().to_string_lossy().into_owned();
    succeeded(images(&["save", &target]), "scripts/images save");
    for (file, image) in [("operator", &IMAGES[0]), ("sidecar", &IMAGES[1])] {
        let archive = dir.path().join(format!("{file}.oci.tar"));
        let index = Command::new("tar")
            .arg("xOf")
            .arg(&archive)
            .arg("index.json")
            .output()
            .expect("run tar");
        let index: Value =
            serde_json::from_str(&succeeded(index, "read index.json")).expect("index JSON");
        // What `ctr images import`, `kind load image-archive` and skopeo take the name from.
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            image.reference,
            "{}",
            archive.display()
        );
    }
}
