//! Least privilege, proven on the real API server as the operator's own user: what it may
//! not do is refused (by RBAC, or by the guard policy `dealertenant-operator-guard` where
//! RBAC cannot say it), and every right `deploy/base/rbac.yaml` grants is one the operator used
//! (derived from the audit log, not from a second list).
//!
//! The probes run with the operator's credentials but the user agent [`PROBE_AGENT`], so
//! that the audit checks can tell the refusals they provoke from the operator's requests.
//! Every probing write is a dry run: authorization and admission run, nothing is stored.

use std::collections::BTreeSet;
use std::path::PathBuf;

use dealertenant_operator::desired::access::{BINDING, TENANT_ROLE};
use dealertenant_operator::desired::guard::{self, GUARD_NAME};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{E2e, FIELD_MANAGER, OPERATOR_NAMESPACE, OPERATOR_USER, apply_manifest, audit};
use dealertenant_operator::api::DealerTenant;

/// User agent of the probes made with the operator's credentials.
pub const PROBE_AGENT: &str = "dealertenant-e2e-probe";

/// Installs the guard policy for the operator's namespace (what `deploy/base/admission-policy.yaml`
/// holds) before the operator starts, so that every scenario runs under it.
pub async fn install_guard(client: &Client) {
    let (policy, binding) = guard::objects(OPERATOR_NAMESPACE);
    apply_manifest(client, serde_json::to_value(policy).unwrap()).await;
    apply_manifest(client, serde_json::to_value(binding).unwrap()).await;
}

/// A client with the operator's credentials and the probe's user agent.
async fn operator_client(kubeconfig: &std::path::Path) -> Client {
    super::cluster::client(kubeconfig, PROBE_AGENT).await
}

/// A client of the admin kubeconfig that impersonates `user` (with its groups as the API
/// server would give a ServiceAccount).
async fn impersonating(admin: &std::path::Path, user: &str) -> Client {
    let mut config = super::cluster::config(admin, PROBE_AGENT).await;
    config.auth_info.impersonate = Some(user.into());
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{OPERATOR_NAMESPACE}"),
        "system:authenticated".into(),
    ]);
    Client::try_from(config).expect("an impersonating client")
}

/// Creates `manifest` as a dry run: authorized and admitted (or not), never stored.
async fn create<K>(api: &Api<K>, manifest: Value) -> kube::Result<K>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(manifest).expect("a valid manifest");
    let params = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    api.create(&params, &obj).await
}

/// What a refusal must say: RBAC's "cannot", or the guard's name.
#[derive(Clone, Copy, Debug)]
enum By {
    Rbac,
    Guard,
}

fn assert_refused<T: std::fmt::Debug>(what: &str, by: By, result: kube::Result<T>) {
    match result {
        Err(kube::Error::Api(s)) => {
            let ok = match by {
                By::Rbac => s.code == 403 && !s.message.contains(GUARD_NAME),
                By::Guard => s.message.contains(GUARD_NAME),
            };
            assert!(
                ok,
                "{what}: refused, but not by {by:?}: {} {}",
                s.code, s.message
            );
            eprintln!("e2e: refused as it must be ({by:?}): {what}");
        }
        other => panic!("{what}: must be refused ({by:?}), got {other:?}"),
    }
}

impl E2e {
    /// Every refusal the issue asks for, as the operator's user; and the RoleBinding that
    /// grants its rights in `t`'s namespace.
    pub(super) async fn the_operator_cannot_leave_its_namespaces(&self, t: &DealerTenant) {
        let Some(path) = &self.operator_kubeconfig else {
            eprintln!("e2e: notice: no operator kubeconfig; least-privilege checks skipped");
            return;
        };
        let op = operator_client(path).await;
        let ns = super::namespace_of(t);

        // Its rights in the tenant namespace: one binding, of the fixed role, to itself.
        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), &ns);
        let rb = bindings
            .get(BINDING)
            .await
            .expect("the operator's RoleBinding");
        assert_eq!(rb.role_ref.name, TENANT_ROLE);
        let subjects = rb.subjects.clone().unwrap_or_default();
        assert_eq!(subjects.len(), 1, "{subjects:?}");
        assert_eq!(
            (subjects[0].kind.as_str(), subjects[0].name.as_str()),
            ("User", OPERATOR_USER)
        );
        assert!(
            rb.owner_references()
                .iter()
                .any(|o| o.uid == t.uid().unwrap())
        );

        // What it may and may not do, as the authorizer answers it (kubectl auth can-i).
        let reviews: Api<SelfSubjectAccessReview> = Api::all(op.clone());
        for (verb, group, resource, namespace, name, allowed) in [
            ("get", "", "secrets", ns.as_str(), "", true),
            ("get", "", "secrets", "kube-system", "", false),
            ("get", "", "secrets", OPERATOR_NAMESPACE, "", false),
            ("list", "", "secrets", "", "", false),
            ("list", "", "secrets", ns.as_str(), "", false),
            ("create", "", "pods", ns.as_str(), "", false),
            ("create", "apps", "deployments", "default", "", false),
            ("create", "", "configmaps", "default", "", false),
            ("create", "", "services", "kube-system", "", false),
            (
                "create",
                "rbac.authorization.k8s.io",
                "clusterrolebindings",
                "",
                "",
                false,
            ),
            (
                "escalate",
                "rbac.authorization.k8s.io",
                "clusterroles",
                "",
                "",
                false,
            ),
            (
                "bind",
                "rbac.authorization.k8s.io",
                "clusterroles",
                "",
                "cluster-admin",
                false,
            ),
            (
                "bind",
                "rbac.authorization.k8s.io",
                "clusterroles",
                "",
                TENANT_ROLE,
                true,
            ),
            ("impersonate", "", "users", "", "", false),
            (
                "delete",
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "",
                "",
                false,
            ),
            (
                "patch",
                "admissionregistration.k8s.io",
                "validatingadmissionpolicies",
                "",
                "",
                false,
            ),
        ] {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(verb.into()),
                        group: Some(group.into()),
                        resource: Some(resource.into()),
                        namespace: (!namespace.is_empty()).then(|| namespace.into()),
                        name: (!name.is_empty()).then(|| name.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = reviews
                .create(&PostParams::default(), &review)
                .await
                .expect("SelfSubjectAccessReview");
            let got = answer.status.map(|s| s.allowed).unwrap_or(false);
            assert_eq!(
                got, allowed,
                "can the operator {verb} {group}/{resource} {name} in {namespace:?}?"
            );
        }

        // A Secret outside tenant namespaces cannot be read, nor Secrets listed anywhere.
        let foreign = format!("e2e-{}-not-yours", self.run_id);
        let admin_secrets: Api<Secret> = Api::namespaced(self.client.clone(), "default");
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": foreign}, "stringData": {"password": "not-the-operators"},
        }))
        .unwrap();
        admin_secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("create a Secret in default");
        let theirs: Api<Secret> = Api::namespaced(op.clone(), "default");
        assert_refused(
            "get a Secret in default",
            By::Rbac,
            theirs.get(&foreign).await,
        );
        let all: Api<Secret> = Api::all(op.clone());
        assert_refused(
            "list Secrets cluster-wide",
            By::Rbac,
            all.list(&ListParams::default()).await,
        );
        let _ = admin_secrets.delete(&foreign, &Default::default()).await;

        // Writes outside tenant namespaces.
        let operator_binding = |role: &str, subject: Value| {
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "probe"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [subject],
            })
        };
        let me =
            json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": OPERATOR_USER});
        let rolebindings = |namespace: &str| Api::<RoleBinding>::namespaced(op.clone(), namespace);
        assert_refused(
            "create a ConfigMap in default",
            By::Rbac,
            create(
                &Api::<ConfigMap>::namespaced(op.clone(), "default"),
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe"}}),
            )
            .await,
        );
        // RBAC lets it create RoleBindings of the tenant role anywhere (it needs one before
        // it holds any right in a new namespace): only the guard keeps them in tenant
        // namespaces. Here it would have given itself kube-system's Secrets.
        assert_refused(
            "bind itself the tenant role in kube-system",
            By::Guard,
            create(
                &rolebindings("kube-system"),
                operator_binding(TENANT_ROLE, me.clone()),
            )
            .await,
        );
        assert_refused(
            "bind cluster-admin in its tenant namespace",
            By::Rbac,
            create(
                &rolebindings(&ns),
                operator_binding("cluster-admin", me.clone()),
            )
            .await,
        );
        assert_refused(
            "bind the tenant role to everyone",
            By::Guard,
            create(
                &rolebindings(&ns),
                operator_binding(
                    TENANT_ROLE,
                    json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:authenticated"}),
                ),
            )
            .await,
        );
        let namespaces: Api<Namespace> = Api::all(op.clone());
        let label_patch = |labels: Value| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"labels": labels}});
        let ssa = PatchParams::apply("dealertenant-e2e-probe")
            .force()
            .dry_run();
        assert_refused(
            "label kube-system as a tenant namespace",
            By::Guard,
            namespaces
                .patch(
                    "kube-system",
                    &ssa,
                    &Patch::Apply(label_patch(json!({
                        "app.kubernetes.io/managed-by": "dealertenant-operator",
                        "dealerdesk.de/tenant": "kube-system",
                        "pod-security.kubernetes.io/enforce": "restricted",
                    }))),
                )
                .await,
        );
        assert_refused(
            "create a namespace that is not a tenant's",
            By::Guard,
            create(
                &namespaces,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("e2e-{}-free", self.run_id)}}),
            )
            .await,
        );
        assert_refused(
            "weaken Pod Security of its tenant namespace",
            By::Guard,
            namespaces
                .patch(
                    &ns,
                    &ssa,
                    &Patch::Apply(label_patch(
                        json!({"pod-security.kubernetes.io/enforce": "privileged"}),
                    )),
                )
                .await,
        );
        assert_refused(
            "create a Secret that is a ServiceAccount token",
            By::Guard,
            create(
                &Api::<Secret>::namespaced(op.clone(), &ns),
                json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "probe", "annotations": {"kubernetes.io/service-account.name": "server"}},
                    "type": "kubernetes.io/service-account-token"}),
            )
            .await,
        );

        // The same as the operator's ServiceAccount (what deploy/ runs it as; the admin
        // impersonates it): a RoleBinding of the tenant role to itself is admitted, to
        // another ServiceAccount refused. This is the guard's ServiceAccount branch, whose
        // `subject.namespace` only the real API server evaluates as deployed.
        let sa = impersonating(
            &PathBuf::from(std::env::var("KUBECONFIG").expect("KUBECONFIG")),
            &format!("system:serviceaccount:{OPERATOR_NAMESPACE}:dealertenant-operator"),
        )
        .await;
        let sa_bindings = Api::<RoleBinding>::namespaced(sa, &ns);
        let sa_subject = |name: &str, namespace: &str| json!({"kind": "ServiceAccount", "name": name, "namespace": namespace});
        create(
            &sa_bindings,
            operator_binding(
                TENANT_ROLE,
                sa_subject("dealertenant-operator", OPERATOR_NAMESPACE),
            ),
        )
        .await
        .expect("the ServiceAccount binds the tenant role to itself (dry run)");
        assert_refused(
            "as the ServiceAccount, bind the tenant role to the tenant's own ServiceAccount",
            By::Guard,
            create(
                &sa_bindings,
                operator_binding(TENANT_ROLE, sa_subject("default", &ns)),
            )
            .await,
        );

        // Deployments: none outside tenant namespaces; inside, none with host access,
        // privileges or another ServiceAccount. The API server itself allows privileged
        // Pods (as GKE does), and Pod Security checks Pods, not Deployments: the guard
        // refuses the Deployment before any Pod exists.
        let deployment = |pod: Value| {
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "probe"},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "probe"}},
                    "template": {"metadata": {"labels": {"app": "probe"}}, "spec": pod},
                },
            })
        };
        let container = |security: Value| json!({"name": "c", "image": "registry.invalid/probe:1", "securityContext": security});
        let plain = container(json!({"allowPrivilegeEscalation": false}));
        assert_refused(
            "create a Deployment in default",
            By::Rbac,
            create(
                &Api::<Deployment>::namespaced(op.clone(), "default"),
                deployment(json!({"serviceAccountName": "server", "containers": [plain.clone()]})),
            )
            .await,
        );
        let in_tenant = Api::<Deployment>::namespaced(op.clone(), &ns);
        for (what, pod) in [
            (
                "a privileged Deployment",
                json!({"serviceAccountName": "server", "containers": [container(json!({"privileged": true}))]}),
            ),
            (
                "a hostNetwork Deployment",
                json!({"serviceAccountName": "server", "hostNetwork": true, "containers": [plain.clone()]}),
            ),
            (
                "a hostPath Deployment",
                json!({"serviceAccountName": "server", "containers": [plain.clone()],
                       "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
            ),
            (
                "a Deployment under another ServiceAccount",
                json!({"serviceAccountName": "default", "containers": [plain.clone()]}),
            ),
        ] {
            assert_refused(
                &format!("{what} in its tenant namespace"),
                By::Guard,
                create(&in_tenant, deployment(pod)).await,
            );
        }
        // And the same Deployment without those is admitted: the refusals above are the
        // guard's rules, not a blanket refusal.
        create(
            &in_tenant,
            deployment(json!({"serviceAccountName": "server", "containers": [plain]})),
        )
        .await
        .expect("a plain Deployment in its tenant namespace is admitted (dry run)");
    }

    /// Every grant of `deploy/base/rbac.yaml` is one the operator used in this run, as the audit
    /// log shows: the needed verbs come from what the code called.
    pub(super) fn every_grant_is_used(&self) {
        let Some(path) = &self.audit_log else { return };
        let (requests, _) = audit::read_from(path, self.audit_start)
            .unwrap_or_else(|e| panic!("read audit log {}: {e}", path.display()));
        let mut used: BTreeSet<(String, String, String)> = BTreeSet::new();
        for r in requests
            .iter()
            .filter(|r| r.user_agent != PROBE_AGENT && !r.failed())
        {
            let Some(resource) = &r.resource else {
                continue;
            };
            let resource = match &r.subresource {
                Some(s) => format!("{resource}/{s}"),
                None => resource.clone(),
            };
            used.insert((r.api_group.clone(), resource.clone(), r.verb.clone()));
            // Server-side apply of an object that did not exist is a create: RBAC checked
            // `create` (the audit log says `patch`, answered 201).
            if r.verb == "patch" && r.code == Some(201) {
                used.insert((r.api_group.clone(), resource, "create".into()));
            }
        }
        let granted = granted_by_rbac_yaml();
        let unused: Vec<String> = granted
            .iter()
            .filter(|g| !used.contains(*g))
            .filter(|(group, resource, verb)| {
                // Checked by the API server, never sent: `bind` when the RoleBinding is
                // created, `update` of finalizers when an owner reference blocks the
                // tenant's deletion (every owned object has one).
                let authorization_only = (verb == "bind" && resource == "clusterroles")
                    || (verb == "update" && resource == "dealertenants/finalizers");
                // `get` is what a reader that may list needs when its cache lags behind;
                // whether a run needs it depends on timing.
                let get_of_listed = verb == "get"
                    && used.contains(&(group.clone(), resource.clone(), "list".into()));
                // The event recorder patches an Event that repeats (a series) instead of
                // creating another; whether one repeats depends on timing.
                let event_series = verb == "patch" && resource == "events";
                !(authorization_only || get_of_listed || event_series)
            })
            .map(|(g, r, v)| format!("{v} {g}/{r}"))
            .collect();
        let used_list: Vec<String> = used
            .iter()
            .map(|(g, r, v)| format!("{v} {g}/{r}"))
            .collect();
        eprintln!("e2e: the operator used: {}", used_list.join(", "));
        assert!(
            unused.is_empty(),
            "deploy/base/rbac.yaml grants what the operator never used in this run: {unused:?}; \
             used: {used_list:?}"
        );
        let needed_but_not_granted: Vec<&String> = used_list
            .iter()
            .zip(used.iter())
            .filter(|(_, (g, r, v))| {
                !granted.contains(&(g.clone(), r.clone(), v.clone()))
                    // Granted to every user (system:basic-user): who am I, may I.
                    && !["authorization.k8s.io", "authentication.k8s.io"].contains(&g.as_str())
            })
            .map(|(s, _)| s)
            .collect();
        assert!(
            needed_but_not_granted.is_empty(),
            "the operator used what deploy/base/rbac.yaml does not grant: {needed_but_not_granted:?}"
        );
    }
}

/// `(apiGroup, resource, verb)` granted by any role in `deploy/base/rbac.yaml`.
fn granted_by_rbac_yaml() -> BTreeSet<(String, String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/rbac.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut granted = BTreeSet::new();
    for role in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for rule in role["rules"].as_array().into_iter().flatten() {
            for g in strings(&rule["apiGroups"]) {
                for r in strings(&rule["resources"]) {
                    for v in strings(&rule["verbs"]) {
                        granted.insert((g.clone(), r.clone(), v));
                    }
                }
            }
        }
    }
    granted
}
