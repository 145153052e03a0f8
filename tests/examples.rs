//! examples/ and deploy/overlays/ stay usable: every tenant example passes `validate`, every
//! operator configuration loads, the dev overlay installs exactly examples/config/dev.yaml,
//! and its admission rule is the one the code generates for `thirdCountryProcessors: deny`.

use std::path::{Path, PathBuf};
use std::process::Command;

use dealertenant_operator::config::{OperatorConfig, ThirdCountryPolicy};
use dealertenant_operator::desired::admission;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {dir}");
    files
}

#[test]
fn every_tenant_example_validates() {
    for file in yaml_files("examples") {
        let out = Command::new(env!("CARGO_BIN_EXE_dealertenant-operator"))
            .arg("validate")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn every_configuration_loads() {
    let mut files = yaml_files("examples/config");
    files.push(root().join("deploy/overlays/dev/config.yaml"));
    files.push(root().join("deploy/overlays/gke/config.yaml"));
    for file in files {
        if let Err(e) = OperatorConfig::load(&file) {
            panic!("{}: {e}", file.display());
        }
    }
}

#[test]
fn the_dev_overlay_installs_the_dev_configuration_and_its_admission_rule() {
    let read = |p: &str| std::fs::read_to_string(root().join(p)).unwrap();
    assert!(
        read("deploy/overlays/dev/config.yaml") == read("examples/config/dev.yaml"),
        "deploy/overlays/dev/config.yaml must be a copy of examples/config/dev.yaml"
    );
    let cfg = OperatorConfig::load(&root().join("examples/config/dev.yaml")).unwrap();
    assert_eq!(cfg.third_country_processors, ThirdCountryPolicy::Deny);
    let ns = cfg.operator_namespace.as_str();
    let allow = admission::yaml(ThirdCountryPolicy::Allow, ns);
    let deny = admission::yaml(ThirdCountryPolicy::Deny, ns);
    let kustomization = read("deploy/overlays/dev/kustomization.yaml");
    let added = deny
        .lines()
        .filter(|l| !l.starts_with('#') && !allow.lines().any(|a| a == *l));
    for line in added {
        assert!(
            kustomization.contains(line.trim()),
            "deploy/overlays/dev/kustomization.yaml lacks the generated rule line {line:?}"
        );
    }
}
