//! The chart installed with Helm into the test cluster, as a release that cleans up after itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::cluster::{helm_path, kubeconfig_path, succeeded};
use crate::repo_root;

/// The chart, relative to the repository's root (where helm runs).
pub const CHART: &str = "charts/asyncpool";
/// The release name the tests install the chart as.
pub const RELEASE: &str = "asyncpool";

/// A Helm release in the test cluster, uninstalled on drop (a failing test included), because
/// its ClusterRoles outlive the namespace that TestNamespace deletes.
pub struct Release {
    helm: PathBuf,
    namespace: String,
    uninstalled: bool,
}

impl Release {
    /// Installs with Helm 4 and `--set` values.
    pub fn install(namespace: &str, sets: &[&str]) -> Self {
        let mut args = Vec::new();
        for set in sets {
            args.extend(["--set", set]);
        }
        Self::install_with(&helm_path(), namespace, &args)
    }

    /// Installs with the helm binary `helm` and extra arguments.
    pub fn install_with(helm: &Path, namespace: &str, extra: &[&str]) -> Self {
        let release = Self {
            helm: helm.to_owned(),
            namespace: namespace.to_owned(),
            uninstalled: false,
        };
        let mut args = vec!["install", RELEASE, CHART];
        args.extend_from_slice(extra);
        succeeded(release.run(&args), "helm install");
        release
    }

    /// Runs this release's helm from the repository root, against the test cluster and in the
    /// release's namespace.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.helm)
            .current_dir(repo_root())
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .args(["--namespace", &self.namespace])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.helm.display()))
    }

    pub fn upgrade(&self, extra: &[&str]) {
        let mut args = vec!["upgrade", RELEASE, CHART];
        args.extend_from_slice(extra);
        succeeded(self.run(&args), "helm upgrade");
    }

    pub fn uninstall(&mut self) {
        self.uninstalled = true;
        succeeded(
            self.run(&["uninstall", RELEASE, "--wait"]),
            "helm uninstall",
        );
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.uninstalled {
            let _ = self.run(&["uninstall", RELEASE]);
        }
    }
}
