//! The command line against the manifests in tests/fixtures: `validate` accepts every valid
//! one and rejects every invalid one with the line its `# expect:` comment names; `plan` and `processors`.

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

fn json_of(args: &[&str]) -> serde_json::Value {
    let out = bin().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn plan_lists_every_resource_each_external_one_located_in_the_tenant_region() {
    for file in fixtures("valid") {
        let text = std::fs::read_to_string(&file).unwrap();
        if text.contains("\n---") {
            continue; // single-tenant manifests only
        }
        let plan = json_of(&["plan", "-o", "json", file.to_str().unwrap()]);
        let region = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("region: "))
            .unwrap()
            .trim();
        let resources = plan["resources"].as_array().unwrap();
        let kinds: Vec<&str> = resources
            .iter()
            .map(|r| r["kind"].as_str().unwrap())
            .collect();
        for k in [
            "Namespace",
            "Deployment",
            "Database",
            "Bucket",
            "ElasticsearchIndex",
        ] {
            assert!(kinds.contains(&k), "{}: {k} missing", file.display());
        }
        assert_eq!(
            kinds.contains(&"PostmarkServer"),
            !text.contains("email: {enabled: false}")
        );
        for r in resources {
            assert!(r["location"].is_string(), "{r}");
            assert!(r["processor"].is_string() && r["name"].is_string(), "{r}");
        }
        let bucket = resources.iter().find(|r| r["kind"] == "Bucket").unwrap();
        assert_eq!(bucket["location"], region, "{}", file.display());
        assert_eq!(
            plan["tenant"],
            text.lines()
                .find_map(|l| l.trim().strip_prefix("name: "))
                .unwrap()
                .trim()
        );
    }
}

#[test]
fn plan_of_an_invalid_manifest_fails_with_the_validate_messages() {
    for file in fixtures("invalid") {
        let p = file.to_str().unwrap();
        let plan = bin().args(["plan", p]).output().unwrap();
        let validate = bin().args(["validate", p]).output().unwrap();
        assert_eq!(plan.status.code(), Some(1), "{p}");
        assert_eq!(
            String::from_utf8_lossy(&plan.stdout),
            String::from_utf8_lossy(&validate.stdout),
            "{p}"
        );
    }
}

#[test]
fn processors_json_follows_what_is_enabled() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid");
    let with = json_of(&[
        "processors",
        "-o",
        "json",
        dir.join("minimal.yaml").to_str().unwrap(),
    ]);
    let without = json_of(&[
        "processors",
        "-o",
        "json",
        dir.join("full.yaml").to_str().unwrap(),
    ]);
    let names = |v: &serde_json::Value| -> Vec<String> {
        v[0]["processors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&with), ["Google Cloud", "Postmark", "Elastic Cloud"]);
    assert_eq!(names(&without), ["Google Cloud", "Elastic Cloud"]);
    let postmark = &with[0]["processors"][1];
    assert_eq!(postmark["country"], "US");
    assert_eq!(postmark["thirdCountry"], true);
    assert_eq!(postmark["entity"], "ActiveCampaign, LLC");
    let md = bin()
        .args([
            "processors",
            "-o",
            "markdown",
            dir.join("minimal.yaml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&md.stdout).starts_with("# Sub-processors"));
}

#[test]
fn processors_under_a_deny_policy_leave_postmark_out() {
    let cfg = std::env::temp_dir().join(format!("dt-deny-{}.yaml", std::process::id()));
    std::fs::write(&cfg, "thirdCountryProcessors: deny\n").unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid");
    let v = json_of(&[
        "processors",
        "-o",
        "json",
        "--config",
        cfg.to_str().unwrap(),
        dir.join("minimal.yaml").to_str().unwrap(),
    ]);
    std::fs::remove_file(&cfg).ok();
    assert!(
        v[0]["processors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["thirdCountry"] == false)
    );
}

#[test]
fn the_readme_holds_the_current_configuration_reference() {
    let out = bin().arg("config-reference").output().unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let (start, end) = (
        "<!-- config-reference:start -->\n",
        "<!-- config-reference:end -->",
    );
    let from = readme
        .find(start)
        .expect("README has the config-reference markers")
        + start.len();
    let to = readme[from..].find(end).expect("the end marker") + from;
    assert!(
        readme[from..to] == generated,
        "README's configuration reference is stale: replace what is between the markers with \
         the output of `cargo run -- config-reference`"
    );
}

#[test]
fn trace_of_a_tenant_that_does_not_exist_says_so_and_exits_2() {
    // A kubeconfig naming a server nobody listens on: no cluster is reached.
    let dir = std::env::temp_dir().join(format!("dt-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    )
    .unwrap();
    let out = bin()
        .args(["trace", "nobody"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read DealerTenant nobody"), "{err}");
}
