//! The GitHub Actions workflows in .github/workflows: they lint clean with actionlint
//! (`scripts/lint-workflows`, which builds it once), the linter really fails a broken copy, CI runs
//! the README's test command, and the release builds and pushes the images the chart deploys from
//! the files that exist in this repository.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const CI: &str = ".github/workflows/ci.yml";
const RELEASE: &str = ".github/workflows/release.yml";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    let full = root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn text<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(value, |v, key| &v[*key])
        .as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

/// Runs scripts/lint-workflows on `files` (none: the repository's workflows).
fn lint(files: &[PathBuf]) -> (Output, String) {
    let out = Command::new(root().join("scripts/lint-workflows"))
        .current_dir(root())
        .args(files)
        .output()
        .expect("run scripts/lint-workflows");
    let report = format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, report)
}

/// Every step of every job, with the name of its job.
fn steps(workflow: &Value) -> Vec<(&str, &Value)> {
    let jobs = workflow["jobs"].as_object().expect("a workflow has jobs");
    jobs.iter()
        .flat_map(|(name, job)| {
            let steps = job["steps"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            steps.iter().map(move |step| (name.as_str(), step))
        })
        .collect()
}

/// The steps that use `action` (any version).
fn uses<'a>(workflow: &'a Value, action: &str) -> Vec<&'a Value> {
    steps(workflow)
        .into_iter()
        .map(|(_, step)| step)
        .filter(|step| {
            step["uses"]
                .as_str()
                .is_some_and(|u| u.split_once('@').is_some_and(|(name, _)| name == action))
        })
        .collect()
}

/// A multi-line input (`build-args: |`, `tags: |`) or a comma-separated one, as its items.
fn items(value: &Value) -> Vec<&str> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a string"));
    text.split(['\n', ','])
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect()
}

fn is_true(value: &Value) -> bool {
    value.as_bool() == Some(true) || value.as_str() == Some("true")
}

#[test]
fn the_workflows_lint_clean() {
    let (out, report) = lint(&[]);
    assert!(out.status.success(), "actionlint finds problems:\n{report}");
}

#[test]
fn the_linter_fails_a_broken_release_workflow_and_names_the_problem() {
    let original = read(RELEASE);
    let dir = tempfile::tempdir().expect("temporary directory");
    // Each copy breaks one thing that only a linter that reads the workflow can see:
    // (file, text replaced, replacement, what the report must name).
    let breaks = [
        (
            "undefined-need.yml",
            "needs: version\n",
            "needs: nonexistent-job\n",
            "nonexistent-job",
        ),
        (
            "undefined-output.yml",
            "${{ needs.version.outputs.version }}",
            "${{ needs.version.outputs.nope }}",
            "\"nope\"",
        ),
        (
            "unknown-runner.yml",
            "runs-on: ubuntu-24.04\n",
            "runs-on: ubuntu-24.04-nope\n",
            "ubuntu-24.04-nope",
        ),
    ];
    // The untouched copy, from the same directory, passes: the failures below are the breaks'.
    let pristine = dir.path().join("release.yml");
    std::fs::write(&pristine, &original).expect("write the copy");
    let (out, report) = lint(std::slice::from_ref(&pristine));
    assert!(out.status.success(), "the untouched copy fails:\n{report}");

    let mut files = Vec::new();
    for (file, from, to, _) in breaks {
        assert!(
            original.contains(from),
            "{RELEASE} no longer contains {from:?}; pick another break"
        );
        let path = dir.path().join(file);
        std::fs::write(&path, original.replacen(from, to, 1)).expect("write the broken copy");
        files.push(path);
    }
    let (out, report) = lint(&files);
    assert!(!out.status.success(), "broken workflows pass:\n{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (file, _, _, problem) in breaks {
        assert!(
            stdout
                .lines()
                .any(|line| line.contains(file) && line.contains(problem)),
            "no error about {problem} in {file}:\n{report}"
        );
    }
}

/// The command the README gives for running every test: the first ```sh block after
/// "Run every test".
fn readme_test_command() -> String {
    let readme = read("README.md");
    let (_, after) = readme
        .split_once("Run every test")
        .expect("README.md says how to run every test");
    let (_, block) = after.split_once("```sh\n").expect("a ```sh block follows");
    let (command, _) = block.split_once("```").expect("the block is closed");
    command.trim().to_owned()
}

#[test]
fn ci_runs_the_readmes_test_command() {
    let command = readme_test_command();
    assert!(
        !command.is_empty() && !command.contains('\n'),
        "{command:?}"
    );
    let program = command.split_whitespace().next().expect("a command");
    assert!(root().join(program).is_file(), "{program} does not exist");

    let ci = yaml(CI);
    let (job, _) = steps(&ci)
        .into_iter()
        .find(|(_, step)| step["run"].as_str().map(str::trim) == Some(command.as_str()))
        .unwrap_or_else(|| panic!("no step of {CI} runs `{command}`"));
    let job = &ci["jobs"][job];
    assert_eq!(text(job, &["runs-on"]), "ubuntu-24.04");
    let timeout = job["timeout-minutes"]
        .as_u64()
        .expect("the test job has a timeout-minutes");
    assert!(timeout <= 90, "timeout-minutes {timeout} is over 90");
    assert_eq!(
        ci["permissions"],
        serde_json::json!({"contents": "read"}),
        "{CI} asks for more than reading the repository"
    );
}

#[test]
fn the_release_pushes_the_charts_images_built_from_the_containerfile() {
    let values = yaml("charts/asyncpool/values.yaml");
    let expected: BTreeMap<&str, &str> = [
        ("operator", text(&values, &["image", "repository"])),
        (
            "sidecar",
            text(&values, &["sidecar", "image", "repository"]),
        ),
    ]
    .into();
    let containerfile = read("images/Containerfile");
    let release = yaml(RELEASE);
    let builds = uses(&release, "docker/build-push-action");
    let mut targets = BTreeSet::new();
    for build in &builds {
        let with = &build["with"];
        let target = text(with, &["target"]);
        targets.insert(target);
        assert!(
            containerfile.contains(&format!(" AS {target}\n")),
            "images/Containerfile has no stage {target}"
        );
        assert_eq!(text(with, &["file"]), "images/Containerfile");
        // The binaries are downloaded into dist/ of the checkout; the default context, the Git
        // repository's URL, would not have them.
        assert_eq!(text(with, &["context"]), ".", "{target}: context");
        assert_eq!(
            items(&with["platforms"])
                .into_iter()
                .collect::<BTreeSet<_>>(),
            BTreeSet::from(["linux/amd64", "linux/arm64"]),
            "{target}: platforms"
        );
        let args = items(&with["build-args"]);
        assert!(args.contains(&"BINARIES=prebuilt"), "{target}: {args:?}");
        let version = args
            .iter()
            .find_map(|arg| arg.strip_prefix("VERSION="))
            .unwrap_or_else(|| panic!("{target}: no VERSION build-arg in {args:?}"));
        assert!(is_true(&with["push"]), "{target} is not pushed");
        assert!(is_true(&with["sbom"]), "{target} has no SBOM attestation");
        assert_eq!(text(with, &["provenance"]), "mode=max", "{target}");

        let repository = expected
            .get(target)
            .unwrap_or_else(|| panic!("the chart deploys no image built from target {target}"));
        let tags = items(&with["tags"]);
        assert!(!tags.is_empty(), "{target} has no tags");
        for tag in tags {
            let (repo, tag) = tag.rsplit_once(':').expect("a tag names repository:tag");
            assert_eq!(
                repo, *repository,
                "{target} is pushed elsewhere than the chart pulls"
            );
            // The chart pulls its appVersion (X.Y.Z, no "v"), which the image label carries too.
            assert_eq!(tag, version, "{target}: image tag and VERSION differ");
            assert!(!tag.starts_with('v'), "{target}: tag {tag} has a leading v");
        }
    }
    assert_eq!(
        targets,
        BTreeSet::from(["operator", "sidecar"]),
        "the images the release builds"
    );

    // Each pushed image is signed, by digest.
    let scripts: String = steps(&release)
        .into_iter()
        .filter_map(|(_, step)| step["run"].as_str())
        .collect();
    for repository in expected.values() {
        assert!(
            scripts.contains(&format!("cosign sign --yes \"{repository}@")),
            "{repository} is not signed by digest"
        );
    }
}

/// What looks like a repository path in a workflow and is not one: what the workflow creates as
/// it runs, and platform names.
const NOT_REPOSITORY_PATHS: [&str; 4] = ["dist/", "release/", "notes/", "linux/"];

/// The relative paths a workflow's code (not its comments) names, and the top-level files.
fn named_paths(workflow: &str) -> BTreeSet<&str> {
    let files = ["CHANGELOG.md", "Cargo.toml", "Cargo.lock", "README.md"];
    workflow
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(|line| line.split_once(" # ").map_or(line, |(code, _)| code))
        .flat_map(|line| line.split(|c: char| c.is_whitespace() || "\"'(){}<>,".contains(c)))
        .map(|token| token.trim_end_matches([';', ':', '.']))
        .filter(|token| {
            let path_like = token.contains('/')
                && !token.contains("//")
                && !token.starts_with(['/', '~', '-', '.'])
                // Expansions, action references, globs, assignments: not literal paths.
                && !token.contains(['$', '@', '*', '=', '`'])
                // ghcr.io/…, github.com/…: hosts, not directories.
                && !token.split('/').next().is_some_and(|first| first.contains('.'))
                && !NOT_REPOSITORY_PATHS.iter().any(|p| token.starts_with(p));
            path_like || files.contains(token)
        })
        .collect()
}

#[test]
fn every_path_the_release_names_exists() {
    let workflow = read(RELEASE);
    let named = named_paths(&workflow);
    for required in [
        "images/Containerfile",
        "charts/asyncpool",
        "charts/asyncpool/Chart.yaml",
        "crds/asyncworkerpools.yaml",
        "deploy/operator.yaml",
        "CHANGELOG.md",
        "Cargo.toml",
    ] {
        assert!(
            named.contains(required),
            "{RELEASE} does not use {required}"
        );
    }
    let missing: Vec<_> = named
        .iter()
        .filter(|path| !root().join(path).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "{RELEASE} names missing paths: {missing:?}"
    );
}

#[test]
fn the_release_builds_binaries_the_workspace_has() {
    let workflow = read(RELEASE);
    let mut words = workflow.split_whitespace();
    // Each binary with the package of the build that names it.
    let mut built = BTreeSet::new();
    let mut package = None;
    while let Some(word) = words.next() {
        match word {
            "cargo" => package = None,
            "--package" => package = words.next(),
            "--bin" => {
                let bin = words.next().expect("--bin takes a name");
                built.insert((package.expect("--package before --bin"), bin));
            }
            _ => {}
        }
    }
    assert_eq!(
        built.iter().map(|(_, bin)| *bin).collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "asyncpool-operator",
            "asyncpool-sidecar",
            "kubectl-asyncpool"
        ]),
        "the binaries the release builds"
    );
    for (package, bin) in built {
        let manifest = match package {
            "asyncpool" => "Cargo.toml".to_owned(),
            other => format!(
                "crates/{}/Cargo.toml",
                other.trim_start_matches("asyncpool-")
            ),
        };
        let text = read(&manifest);
        assert!(
            text.contains(&format!("name = \"{package}\""))
                && text.contains(&format!("[[bin]]\nname = \"{bin}\"")),
            "{manifest} is not package {package} with binary {bin}"
        );
    }
}

#[test]
fn no_script_splices_an_expression() {
    // A ${{ }} inside run: is pasted into the script's text before bash parses it: a branch name
    // or tag could inject commands. Values reach scripts through env: instead.
    for path in [CI, RELEASE] {
        let workflow = yaml(path);
        for (job, step) in steps(&workflow) {
            if let Some(script) = step["run"].as_str() {
                assert!(
                    !script.contains("${{"),
                    "{path}, job {job}: a run: script splices an expression:\n{script}"
                );
            }
        }
    }
}
