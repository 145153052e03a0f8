//! `dealertenant-operator validate` against the manifests in tests/fixtures: every valid one
//! passes, every invalid one fails with the line its `# expect:` comment names.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dealertenant-operator"))
}

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

#[test]
fn valid_manifests_pass() {
    for file in fixtures("valid") {
        let out = bin().arg("validate").arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn invalid_manifests_fail_with_a_clear_line() {
    for file in fixtures("invalid") {
        let text = std::fs::read_to_string(&file).unwrap();
        let out = bin().arg("validate").arg(&file).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stdout}", file.display());
        assert!(!stderr.contains("panicked"), "{stderr}");
        let shown = file.display().to_string();
        for line in stdout.lines() {
            assert!(
                line.starts_with(&shown),
                "every line names the file: {line}"
            );
        }
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or("the file is empty");
        assert!(
            stdout.contains(expect),
            "{}: expected {expect:?} in:\n{stdout}",
            file.display()
        );
    }
}

#[test]
fn one_bad_file_among_good_ones_fails_the_run_and_missing_files_are_reported() {
    let good = fixtures("valid").remove(0);
    let bad =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid/region-london.yaml");
    let out = bin().arg("validate").arg(&good).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = bin()
        .args(["validate", "/nonexistent/tenant.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/nonexistent/tenant.yaml: cannot read"));
}

#[test]
fn crds_directory_is_what_the_crd_command_prints() {
    let out = bin().arg("crd").output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/dealertenant.yaml");
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        printed == stored,
        "crds/dealertenant.yaml is stale: run `cargo run -- crd > crds/dealertenant.yaml`"
    );
}
