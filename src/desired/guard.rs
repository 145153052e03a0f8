//! A ValidatingAdmissionPolicy on the operator's own identity: even with its credentials in
//! the wrong hands, the operator's user cannot write outside the tenant namespaces it
//! manages, cannot weaken a tenant namespace's Pod Security, cannot create Secrets other
//! than Opaque ones, cannot run a Deployment with host access or privileges or under
//! another ServiceAccount than the tenant server's, and cannot bind itself any role but
//! the fixed tenant role. RBAC alone cannot say "only in namespaces this operator made":
//! the operator must create the RoleBinding in a namespace before it holds any right
//! there, so it may create RoleBindings (of that one role) anywhere; this policy is what
//! keeps them inside tenant namespaces.
//!
//! `deploy/base/admission-policy.yaml` holds it next to the tenant policy; `admission-policy
//! --config FILE` prints both for the configured operator namespace.

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::access::TENANT_ROLE;
use super::names::{MANAGED_BY, SERVER, TENANT_LABEL};

/// Name of the policy and its binding.
pub const GUARD_NAME: &str = "dealertenant-operator-guard";

/// The usernames the guard applies to: the operator's ServiceAccount in
/// `operator_namespace`, and the user `dealertenant-operator` (the identity a cluster
/// without ServiceAccount tokens, such as the test control plane, gives it). Restricting
/// one name more than needed cannot widen anything.
pub fn identities(operator_namespace: &str) -> Vec<String> {
    vec![
        format!("system:serviceaccount:{operator_namespace}:{MANAGED_BY}"),
        MANAGED_BY.to_string(),
    ]
}

/// CEL: `x` is a namespace this operator made for a tenant.
fn managed(x: &str) -> String {
    format!(
        "({x} != null && has({x}.metadata.labels) \
         && 'app.kubernetes.io/managed-by' in {x}.metadata.labels \
         && {x}.metadata.labels['app.kubernetes.io/managed-by'] == '{MANAGED_BY}' \
         && '{TENANT_LABEL}' in {x}.metadata.labels)"
    )
}

/// CEL: the request is a create or update of `resource` (in API group `group`).
fn writes(group: &str, resource: &str) -> String {
    format!(
        "request.resource.group == '{group}' && request.resource.resource == '{resource}' \
         && request.operation != 'DELETE'"
    )
}

/// The guard's validations: `(expression, message)`.
pub fn validations(operator_namespace: &str) -> Vec<(String, String)> {
    let pod = "object.spec.template.spec";
    let deployment = writes("apps", "deployments");
    let containers =
        format!("({pod}.containers + (has({pod}.initContainers) ? {pod}.initContainers : []))");
    vec![
        (
            format!(
                "request.resource.group in ['dealerdesk.de', 'authorization.k8s.io', 'authentication.k8s.io'] \
                 || request.resource.resource == 'events' \
                 || (request.namespace == '{operator_namespace}' && request.resource.group in ['', 'coordination.k8s.io'] \
                     && request.resource.resource in ['configmaps', 'leases']) \
                 || (request.resource.group == '' && request.resource.resource == 'namespaces' \
                     && (request.operation == 'CREATE' || {old}) && (request.operation == 'DELETE' || {new})) \
                 || (request.namespace != '' && {ns})",
                old = managed("oldObject"),
                new = managed("object"),
                ns = managed("namespaceObject"),
            ),
            format!(
                "the operator writes only in tenant namespaces it manages (labelled \
                 app.kubernetes.io/managed-by={MANAGED_BY} and {TENANT_LABEL}), its Events, \
                 and its receipts and Lease in {operator_namespace}"
            ),
        ),
        (
            format!(
                "!({}) || (has(object.metadata.labels) \
                 && 'pod-security.kubernetes.io/enforce' in object.metadata.labels \
                 && object.metadata.labels['pod-security.kubernetes.io/enforce'] == 'restricted')",
                writes("", "namespaces")
            ),
            "a namespace the operator writes keeps Pod Security `restricted` enforced".into(),
        ),
        (
            format!(
                "!({}) || !has(object.type) || object.type == 'Opaque'",
                writes("", "secrets")
            ),
            "the operator writes only Opaque Secrets (no ServiceAccount tokens, no registry or TLS Secrets)"
                .into(),
        ),
        (
            format!(
                "!({deployment}) || ((!has({pod}.hostNetwork) || !{pod}.hostNetwork) \
                 && (!has({pod}.hostPID) || !{pod}.hostPID) && (!has({pod}.hostIPC) || !{pod}.hostIPC))"
            ),
            "a tenant Deployment may not use the node's network, PID or IPC namespace".into(),
        ),
        (
            format!(
                "!({deployment}) || !has({pod}.volumes) || {pod}.volumes.all(v, !has(v.hostPath))"
            ),
            "a tenant Deployment may not mount a hostPath volume".into(),
        ),
        (
            format!(
                "!({deployment}) || {containers}.all(c, !has(c.securityContext) || ( \
                 (!has(c.securityContext.privileged) || !c.securityContext.privileged) \
                 && (!has(c.securityContext.allowPrivilegeEscalation) || !c.securityContext.allowPrivilegeEscalation) \
                 && (!has(c.securityContext.capabilities) || !has(c.securityContext.capabilities.add) \
                     || size(c.securityContext.capabilities.add) == 0)))"
            ),
            "a tenant Deployment's containers may not be privileged, escalate privileges or add capabilities"
                .into(),
        ),
        (
            format!(
                "!({deployment}) || (has({pod}.serviceAccountName) && {pod}.serviceAccountName == '{SERVER}')"
            ),
            format!("a tenant Deployment runs as the tenant's ServiceAccount `{SERVER}`, no other"),
        ),
        (
            format!(
                "!({}) || (object.roleRef.kind == 'ClusterRole' && object.roleRef.name == '{TENANT_ROLE}' \
                 && has(object.subjects) && object.subjects.all(s, \
                    (s.kind == 'User' && s.name == request.userInfo.username) \
                    || (s.kind == 'ServiceAccount' && has(s.namespace) \
                        && 'system:serviceaccount:' + s.namespace + ':' + s.name == request.userInfo.username)))",
                writes("rbac.authorization.k8s.io", "rolebindings")
            ),
            format!(
                "the operator binds only the ClusterRole {TENANT_ROLE}, and only to itself"
            ),
        ),
    ]
}

/// The guard policy for an operator running in `operator_namespace`, and its binding.
pub fn objects(
    operator_namespace: &str,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let meta = || ObjectMeta {
        name: Some(GUARD_NAME.into()),
        labels: Some(
            [(
                "app.kubernetes.io/name".to_string(),
                "dealertenant-operator".to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    };
    let users = identities(operator_namespace)
        .iter()
        .map(|u| format!("'{u}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let vap = ValidatingAdmissionPolicy {
        metadata: meta(),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec!["*".into()]),
                    api_versions: Some(vec!["*".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into(), "DELETE".into()]),
                    resources: Some(vec!["*/*".into()]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "the-operator".into(),
                expression: format!("request.userInfo.username in [{users}]"),
            }]),
            validations: Some(
                validations(operator_namespace)
                    .into_iter()
                    .map(|(expression, message)| Validation {
                        expression,
                        message: Some(message),
                        message_expression: None,
                        reason: Some("Forbidden".into()),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let binding = ValidatingAdmissionPolicyBinding {
        metadata: meta(),
        spec: ValidatingAdmissionPolicyBindingSpec {
            policy_name: GUARD_NAME.into(),
            validation_actions: vec!["Deny".into()],
            ..Default::default()
        },
    };
    (vap, binding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_cel::{AdmissionRequest, VapEvaluator, VapExpression};
    use serde_json::{Value, json};

    const OP: &str = "system:serviceaccount:dealertenant-system:dealertenant-operator";

    struct Req {
        op: &'static str,
        group: &'static str,
        resource: &'static str,
        namespace: &'static str,
        object: Value,
        old: Value,
        ns_object: Value,
    }

    fn req(group: &'static str, resource: &'static str, namespace: &'static str) -> Req {
        Req {
            op: "CREATE",
            group,
            resource,
            namespace,
            object: json!({"metadata": {"name": "x"}}),
            old: Value::Null,
            ns_object: Value::Null,
        }
    }

    fn tenant_ns() -> Value {
        json!({"metadata": {"name": "tenant-acme", "labels": {
            "app.kubernetes.io/managed-by": "dealertenant-operator",
            "dealerdesk.de/tenant": "acme",
            "pod-security.kubernetes.io/enforce": "restricted"}}})
    }

    fn other_ns() -> Value {
        json!({"metadata": {"name": "kube-system", "labels": {"kubernetes.io/metadata.name": "kube-system"}}})
    }

    /// Messages of the validations that fail, evaluated as the API server would.
    fn refused(r: Req) -> Vec<String> {
        let request = AdmissionRequest {
            operation: r.op.into(),
            username: OP.into(),
            namespace: r.namespace.into(),
            resource: kube_cel::GroupVersionResource {
                group: r.group.into(),
                version: "v1".into(),
                resource: r.resource.into(),
            },
            ..Default::default()
        };
        let exprs: Vec<VapExpression> = validations("dealertenant-system")
            .into_iter()
            .map(|(expression, message)| VapExpression {
                expression,
                message: Some(message),
                message_expression: None,
            })
            .collect();
        VapEvaluator::builder()
            .object(r.object)
            .old_object(r.old)
            .namespace_object(r.ns_object)
            .params(Value::Null)
            .request(request)
            .build()
            .evaluate(&exprs)
            .into_iter()
            .filter(|x| !x.passed)
            .map(|x| x.message.unwrap_or(x.expression))
            .collect()
    }

    fn in_tenant(mut r: Req) -> Req {
        r.namespace = "tenant-acme";
        r.ns_object = tenant_ns();
        r
    }

    fn deployment(pod: Value) -> Value {
        json!({"metadata": {"name": "server"}, "spec": {"template": {"spec": pod}}})
    }

    fn server_pod() -> Value {
        json!({"serviceAccountName": "server", "containers": [{"name": "server",
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]})
    }

    /// kube-cel escapes every map key (`app.kubernetes.io/managed-by` becomes
    /// `app__dot__kubernetes...`), where the API server escapes only declared field names,
    /// so a label lookup never matches here: the two label rules refuse everything in these
    /// tests. That they admit what they should is proven on the real API server
    /// (tests/e2e.rs, `the_operator_cannot_leave_its_namespaces`).
    fn label_rule(message: &str) -> bool {
        message.starts_with("the operator writes only in tenant namespaces")
            || message.starts_with("a namespace the operator writes keeps")
    }

    #[test]
    fn what_the_operator_writes_is_admitted() {
        for r in [
            in_tenant(req("", "configmaps", "")),
            in_tenant(req("", "services", "")),
            req("dealerdesk.de", "dealertenants", ""),
            req("events.k8s.io", "events", "default"),
            req("", "configmaps", "dealertenant-system"),
            req("coordination.k8s.io", "leases", "dealertenant-system"),
            req("authorization.k8s.io", "selfsubjectaccessreviews", ""),
            Req {
                object: tenant_ns(),
                ..req("", "namespaces", "")
            },
            Req {
                op: "DELETE",
                object: Value::Null,
                old: tenant_ns(),
                ..req("", "namespaces", "")
            },
            Req {
                object: json!({"metadata": {"name": "c"}, "type": "Opaque"}),
                ..in_tenant(req("", "secrets", ""))
            },
            Req {
                object: deployment(server_pod()),
                ..in_tenant(req("apps", "deployments", ""))
            },
            Req {
                object: json!({"metadata": {"name": "b"},
                    "roleRef": {"kind": "ClusterRole", "name": TENANT_ROLE},
                    // A ServiceAccount subject names its namespace in `namespace`,
                    // which kube-cel escapes (as `__namespace__`) and the API server
                    // does not: that branch is proven on the real API server (e2e,
                    // `the_operator_cannot_leave_its_namespaces`, as the ServiceAccount).
                    "subjects": [{"kind": "User", "name": OP}]}),
                ..in_tenant(req("rbac.authorization.k8s.io", "rolebindings", ""))
            },
        ] {
            let what = format!("{} {} in {:?}", r.op, r.resource, r.namespace);
            let f: Vec<String> = refused(r).into_iter().filter(|m| !label_rule(m)).collect();
            assert_eq!(f, Vec::<String>::new(), "{what}");
        }
    }

    #[test]
    fn writes_outside_tenant_namespaces_are_refused() {
        let mut kube_system = req("", "services", "kube-system");
        kube_system.ns_object = other_ns();
        let mut labelled = req("", "namespaces", "");
        labelled.op = "UPDATE";
        labelled.old = other_ns();
        labelled.object = tenant_ns();
        for r in [
            kube_system,
            req("", "configmaps", "default"),
            labelled,
            req("rbac.authorization.k8s.io", "clusterrolebindings", ""),
            req("apiextensions.k8s.io", "customresourcedefinitions", ""),
        ] {
            let what = format!("{} {} in {:?}", r.op, r.resource, r.namespace);
            let f = refused(r);
            assert!(
                f.iter().any(|m| m.contains("only in tenant namespaces")),
                "{what}: {f:?}"
            );
        }
    }

    #[test]
    fn only_opaque_secrets() {
        let f = refused(Req {
            object: json!({"metadata": {"name": "t"}, "type": "kubernetes.io/service-account-token"}),
            ..in_tenant(req("", "secrets", ""))
        });
        let f: Vec<String> = f.into_iter().filter(|m| !label_rule(m)).collect();
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("Opaque"));
    }

    #[test]
    fn deployments_with_host_access_privileges_or_another_identity_are_refused() {
        let cases: Vec<(&str, Value)> = vec![
            ("node's network", json!({"hostNetwork": true})),
            ("node's network", json!({"hostPID": true})),
            (
                "hostPath",
                json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
            ),
            (
                "privileged",
                json!({"containers": [{"name": "s", "securityContext": {"privileged": true}}]}),
            ),
            (
                "privileged",
                json!({"initContainers": [{"name": "i", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}),
            ),
            ("ServiceAccount", json!({"serviceAccountName": "default"})),
        ];
        for (expect, change) in cases {
            let mut pod = server_pod();
            for (k, v) in change.as_object().unwrap() {
                if k == "containers" {
                    pod["containers"] = v.clone();
                } else {
                    pod[k] = v.clone();
                }
            }
            let f: Vec<String> = refused(Req {
                object: deployment(pod),
                ..in_tenant(req("apps", "deployments", ""))
            })
            .into_iter()
            .filter(|m| !label_rule(m))
            .collect();
            assert_eq!(f.len(), 1, "{change}: {f:?}");
            assert!(f[0].contains(expect), "{change}: {f:?}");
        }
    }

    #[test]
    fn it_binds_only_the_tenant_role_and_only_itself() {
        for (role, subject) in [
            ("cluster-admin", json!({"kind": "User", "name": OP})),
            (
                TENANT_ROLE,
                json!({"kind": "ServiceAccount", "name": "default", "namespace": "tenant-acme"}),
            ),
            (
                TENANT_ROLE,
                json!({"kind": "Group", "name": "system:authenticated"}),
            ),
        ] {
            let f: Vec<String> = refused(Req {
                object: json!({"metadata": {"name": "b"},
                    "roleRef": {"kind": "ClusterRole", "name": role}, "subjects": [subject]}),
                ..in_tenant(req("rbac.authorization.k8s.io", "rolebindings", ""))
            })
            .into_iter()
            .filter(|m| !label_rule(m))
            .collect();
            assert_eq!(f.len(), 1, "{role} {subject}: {f:?}");
        }
    }

    #[test]
    fn the_guard_matches_only_the_operator() {
        let (vap, binding) = objects("ops");
        let spec = vap.spec.unwrap();
        let cond = &spec.match_conditions.unwrap()[0].expression;
        assert!(cond.contains("'system:serviceaccount:ops:dealertenant-operator'"));
        assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
        assert!(spec.param_kind.is_none());
        assert_eq!(binding.spec.validation_actions, ["Deny"]);
    }
}
