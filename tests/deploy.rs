//! deploy/ stays in step with the code: the ClusterRole grants exactly what the code uses,
//! the shipped configuration is valid, and the operator Pod is restricted.

use std::collections::BTreeSet;
use std::path::Path;

use dealertenant_operator::config::OperatorConfig;
use serde_json::Value;

fn docs(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_multiple(&text).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// `(apiGroup, resource, verb)` a role grants, with the resourceNames it is limited to.
fn granted(role: &Value) -> BTreeSet<(String, String, String, Vec<String>)> {
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let names: Vec<String> = rule["resourceNames"]
            .as_array()
            .map(|a| a.iter().map(|n| n.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    let (g, r, v) = (
                        g.as_str().unwrap(),
                        r.as_str().unwrap(),
                        v.as_str().unwrap(),
                    );
                    assert!(
                        ![g, r, v].contains(&"*"),
                        "no wildcards in deploy/base/rbac.yaml: {rule}"
                    );
                    granted.insert((g.into(), r.into(), v.into(), names.clone()));
                }
            }
        }
    }
    granted
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("deploy/base/rbac.yaml has no {kind} {name}"))
}

/// The shape of least privilege; which verbs are needed at all is derived from the audit
/// log of an e2e run (tests/e2e.rs, `every_grant_is_used`).
#[test]
fn cluster_wide_the_operator_reads_and_binds_only_its_tenant_role() {
    use dealertenant_operator::desired::access::TENANT_ROLE;
    let docs = docs("base/rbac.yaml");
    let cluster = granted(named(&docs, "ClusterRole", "dealertenant-operator"));
    let tenant = granted(named(&docs, "ClusterRole", TENANT_ROLE));
    // Cluster-wide: writes only to tenants, namespaces, RoleBindings and Events.
    for (g, r, v, names) in &cluster {
        assert_ne!(r, "secrets", "no Secret is readable cluster-wide");
        assert!(
            !["pods", "clusterrolebindings", "roles", "clusterroles"].contains(&r.as_str())
                || v == "bind",
            "{r} {v}"
        );
        assert_ne!(v, "escalate");
        assert_ne!(v, "impersonate");
        if v == "bind" {
            assert_eq!(
                (g.as_str(), r.as_str()),
                ("rbac.authorization.k8s.io", "clusterroles")
            );
            assert_eq!(
                names,
                &vec![TENANT_ROLE.to_string()],
                "bind only the tenant role"
            );
        }
        if !["get", "list", "watch", "bind"].contains(&v.as_str()) {
            assert!(
                [
                    "dealertenants",
                    "dealertenants/status",
                    "dealertenants/finalizers",
                    "namespaces",
                    "rolebindings",
                    "events"
                ]
                .contains(&r.as_str()),
                "cluster-wide write {v} {g}/{r}: writes in tenant namespaces come from the tenant role"
            );
        }
    }
    // The tenant role: writes in one namespace, no listing, no Pods, no RBAC.
    for (g, r, v, _) in &tenant {
        assert!(!["list", "watch"].contains(&v.as_str()), "{r} {v}");
        assert!(
            !["pods", "rolebindings", "roles"].contains(&r.as_str()),
            "{g}/{r}"
        );
    }
    assert!(
        tenant
            .iter()
            .any(|(_, r, v, _)| r == "secrets" && v == "get")
    );
    // Bound cluster-wide: only the read-and-bind role; the tenant role never.
    for b in docs.iter().filter(|d| d["kind"] == "ClusterRoleBinding") {
        assert_eq!(b["roleRef"]["name"], "dealertenant-operator", "{b}");
    }
    assert_eq!(
        named(&docs, "Role", "dealertenant-operator")["metadata"]["namespace"],
        "dealertenant-system"
    );
}

#[test]
fn shipped_configuration_is_valid() {
    let docs = docs("base/config.yaml");
    let cm = find(&docs, "ConfigMap");
    let text = cm["data"]["config.yaml"].as_str().unwrap();
    let cfg = OperatorConfig::from_yaml(text).unwrap();
    assert_eq!(cfg.operator_namespace, "dealertenant-system");
}

#[test]
fn operator_pod_is_restricted_and_reads_its_config() {
    let docs = docs("base/deployment.yaml");
    let dep = find(&docs, "Deployment");
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    let args: Vec<_> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        &args[..3],
        ["run", "--config", "/etc/dealertenant/config.yaml"]
    );
    assert_eq!(pod["serviceAccountName"], "dealertenant-operator");
}

#[test]
fn admission_policy_is_what_the_code_generates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/admission-policy.yaml");
    let stored = std::fs::read_to_string(path).unwrap();
    let generated = dealertenant_operator::desired::admission::yaml(
        dealertenant_operator::config::ThirdCountryPolicy::Allow,
        "dealertenant-system",
    );
    assert!(
        stored == generated,
        "deploy/base/admission-policy.yaml is stale: run `cargo run -- admission-policy > deploy/base/admission-policy.yaml`"
    );
    let kustomization = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/kustomization.yaml"),
    )
    .unwrap();
    assert!(kustomization.contains("admission-policy.yaml"));
}

/// Two replicas, one leading: a rolling update starts a new replica before it stops an old
/// one, each knows its Pod name (the Lease holder identity), the grace period covers the
/// drain deadline, and a disruption budget keeps one replica.
#[test]
fn the_operator_runs_two_replicas_with_leader_election() {
    let deployment = docs("base/deployment.yaml");
    let dep = find(&deployment, "Deployment");
    assert_eq!(dep["spec"]["replicas"], 2);
    let strategy = &dep["spec"]["strategy"];
    assert_eq!(strategy["type"], "RollingUpdate");
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 0);
    assert_eq!(strategy["rollingUpdate"]["maxSurge"], 1);
    let pod = &dep["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let drain = dealertenant_operator::controller::DRAIN_DEADLINE.as_secs();
    assert!(
        grace >= drain + 5,
        "terminationGracePeriodSeconds {grace} leaves no time to release the Lease after the \
         {drain}s drain"
    );
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let pod_name = env
        .iter()
        .find(|e| e["name"] == "POD_NAME")
        .expect("POD_NAME in the environment");
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let args = pod["containers"][0]["args"].as_array().unwrap();
    assert!(
        !args
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("--leader-election")),
        "leader election stays on in the Deployment: {args:?}"
    );

    let pdbs = docs("base/poddisruptionbudget.yaml");
    let pdb = find(&pdbs, "PodDisruptionBudget");
    assert_eq!(pdb["metadata"]["namespace"], dep["metadata"]["namespace"]);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        dep["spec"]["template"]["metadata"]["labels"]
    );
    let kustomization = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/kustomization.yaml"),
    )
    .unwrap();
    assert!(kustomization.contains("- poddisruptionbudget.yaml"));
}

/// Removing the operator (`kubectl delete -k deploy/`) must delete no tenant and no
/// erasure receipt: the CRD and the operator namespace are installed apart, from
/// deploy/cluster/, together with the policy that guards the CRD against deletion.
#[test]
fn uninstalling_the_operator_deletes_no_tenant_and_no_receipt() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kustomization = |dir: &str| -> Vec<String> {
        let text = std::fs::read_to_string(root.join(dir).join("kustomization.yaml")).unwrap();
        let v: Value = serde_saphyr::from_str(&text).unwrap();
        v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect()
    };
    let operator = kustomization("deploy/base");
    assert_eq!(kustomization("deploy"), ["base"]);
    assert!(
        !operator
            .iter()
            .any(|r| r.contains("crds") || r.contains("namespace")),
        "deploy/ must not own the CRD or the operator namespace: {operator:?}"
    );
    let cluster = kustomization("deploy/cluster");
    for needed in ["../../crds", "namespace.yaml", "crd-protection.yaml"] {
        assert!(cluster.iter().any(|r| r == needed), "{needed}: {cluster:?}");
    }
    for r in operator.iter().chain(&cluster) {
        let dir = if operator.contains(r) {
            "deploy/base"
        } else {
            "deploy/cluster"
        };
        assert!(root.join(dir).join(r).exists(), "{dir}/{r} is missing");
    }
    let guard = docs("cluster/crd-protection.yaml");
    let policy = find(&guard, "ValidatingAdmissionPolicy");
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"][0]["resourceNames"][0],
        "dealertenants.dealerdesk.de"
    );
    assert_eq!(
        find(&guard, "ValidatingAdmissionPolicyBinding")["spec"]["validationActions"][0],
        "Deny"
    );
}

/// The operator Pod takes traffic only on its metrics and probe port, and never reaches
/// the cloud metadata server.
#[test]
fn the_operator_pod_has_its_own_network_policy() {
    let docs = docs("base/networkpolicy.yaml");
    let np = find(&docs, "NetworkPolicy");
    let spec = &np["spec"];
    assert_eq!(
        spec["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    let ingress = spec["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(ingress[0]["ports"][0]["port"], 9464);
    assert!(ingress[0].get("from").is_none());
    for rule in spec["egress"].as_array().unwrap() {
        for peer in rule["to"].as_array().unwrap() {
            if let Some(block) = peer.get("ipBlock") {
                assert!(
                    block["except"]
                        .as_array()
                        .is_some_and(|e| e.iter().any(|x| x == "169.254.169.254/32")),
                    "{block}"
                );
            }
        }
    }
}
