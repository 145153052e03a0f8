//! Layer 2 of data residency: a ValidatingAdmissionPolicy (CEL, GA since Kubernetes 1.30)
//! that enforces the EU-region rule and the cluster's processor policy at admission, so
//! they hold even if someone edits the CRD by hand. Generated from the same region list as
//! the CRD; `deploy/base/admission-policy.yaml` is exactly what `admission-policy` prints.
//!
//! The policy has no parameter: every rule is in the policy itself, so nothing (a deleted
//! ConfigMap, a parameter the API server no longer finds after the policy was re-created)
//! can switch a rule off. The cluster's processor policy is generated into it from the
//! operator configuration (`admission-policy --config FILE`): with
//! `thirdCountryProcessors: deny` the policy refuses tenants with email on; with `allow`
//! that rule is left out. Regenerate and re-apply it when that setting changes.

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{GROUP, MAX_NAME_LEN, VERSION, regions};
use crate::config::ThirdCountryPolicy;

/// Name of the policy and its binding.
pub const POLICY_NAME: &str = "dealertenants.dealerdesk.de";

/// The policy's CEL validations under the cluster's processor `policy`:
/// `(expression, message, messageExpression)`.
pub fn validations(policy: ThirdCountryPolicy) -> Vec<(String, String, Option<String>)> {
    let regions: Vec<String> = regions::eu_region_ids().map(|r| format!("'{r}'")).collect();
    let allowed = regions::eu_region_ids().collect::<Vec<_>>().join(", ");
    let mut out = vec![
        (
            format!("object.spec.region in [{}]", regions.join(", ")),
            format!("spec.region must be a Google Cloud region in an EU member state ({allowed})"),
            Some(format!(
                "'spec.region \"' + string(object.spec.region) + '\" is not an EU region; allowed: {allowed}'"
            )),
        ),
        (
            format!(
                "size(object.metadata.name) <= {MAX_NAME_LEN} && object.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')"
            ),
            format!("metadata.name must be a DNS-1123 label of at most {MAX_NAME_LEN} characters"),
            None,
        ),
        (
            "request.operation != 'UPDATE' || object.spec.region == oldObject.spec.region".into(),
            "spec.region is immutable: moving a tenant between regions is a migration, not an edit"
                .into(),
            None,
        ),
    ];
    if policy == ThirdCountryPolicy::Deny {
        out.push((
            "has(object.spec.email) && has(object.spec.email.enabled) && object.spec.email.enabled == false"
                .into(),
            "the cluster denies third-country processors (thirdCountryProcessors: deny): email (Postmark, \
             ActiveCampaign LLC, United States) must be off; set spec.email.enabled: false"
                .into(),
            None,
        ));
    }
    out
}

/// The policy (with the rules of the cluster's processor `policy`) and its binding.
pub fn objects(
    policy: ThirdCountryPolicy,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        labels: Some(
            [(
                "app.kubernetes.io/name".to_string(),
                "dealertenant-operator".to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    };
    let vap = ValidatingAdmissionPolicy {
        metadata: meta(POLICY_NAME),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec![GROUP.into()]),
                    api_versions: Some(vec![VERSION.into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                    resources: Some(vec!["dealertenants".into()]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            // A tenant on its way out must always be able to lose its finalizer.
            match_conditions: Some(vec![MatchCondition {
                name: "not-being-deleted".into(),
                expression: "!has(object.metadata.deletionTimestamp)".into(),
            }]),
            validations: Some(
                validations(policy)
                    .into_iter()
                    .map(|(expression, message, message_expression)| Validation {
                        expression,
                        message: Some(message),
                        message_expression,
                        reason: Some("Invalid".into()),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let binding = ValidatingAdmissionPolicyBinding {
        metadata: meta(POLICY_NAME),
        spec: ValidatingAdmissionPolicyBindingSpec {
            policy_name: POLICY_NAME.into(),
            validation_actions: vec!["Deny".into()],
            ..Default::default()
        },
    };
    (vap, binding)
}

/// The tenant policy and its binding, then the operator guard ([`super::guard`]) for an
/// operator in `operator_namespace` and its binding, as one YAML stream:
/// `deploy/base/admission-policy.yaml` holds them (generated with the built-in default
/// configuration).
pub fn yaml(policy: ThirdCountryPolicy, operator_namespace: &str) -> String {
    let (vap, binding) = objects(policy);
    let (guard, guard_binding) = super::guard::objects(operator_namespace);
    let rule = match policy {
        ThirdCountryPolicy::Allow => "allow",
        ThirdCountryPolicy::Deny => "deny",
    };
    let header = format!(
        "# Generated by `dealertenant-operator admission-policy` (thirdCountryProcessors: {rule},\n\
         # operatorNamespace: {operator_namespace}); do not edit. No parameters: nothing outside\n\
         # these policies can switch a rule off.\n"
    );
    let docs = [
        serde_saphyr::to_string(&vap).expect("serializes"),
        serde_saphyr::to_string(&binding).expect("serializes"),
        serde_saphyr::to_string(&guard).expect("serializes"),
        serde_saphyr::to_string(&guard_binding).expect("serializes"),
    ];
    format!("{header}{}", docs.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_cel::{AdmissionRequest, VapEvaluator, VapExpression};
    use serde_json::{Value, json};

    fn tenant(region: &str, email: bool) -> Value {
        json!({
            "apiVersion": "dealerdesk.de/v1alpha1", "kind": "DealerTenant",
            "metadata": {"name": "acme"},
            "spec": {"displayName": "Acme", "region": region, "email": {"enabled": email}},
        })
    }

    /// Messages of the validations that fail, evaluated as the API server would.
    fn failures(
        op: &str,
        object: Value,
        old: Option<Value>,
        policy: Option<ThirdCountryPolicy>,
    ) -> Vec<String> {
        let mut b = VapEvaluator::builder()
            .object(object)
            .request(AdmissionRequest {
                operation: op.into(),
                ..Default::default()
            });
        if let Some(o) = old {
            b = b.old_object(o);
        }
        // The API server always declares `params`: null, as this policy has none.
        b = b.params(Value::Null);
        let exprs: Vec<VapExpression> = validations(policy.unwrap_or(ThirdCountryPolicy::Allow))
            .into_iter()
            .map(|(expression, message, _)| VapExpression {
                expression,
                message: Some(message),
                message_expression: None,
            })
            .collect();
        b.build()
            .evaluate(&exprs)
            .into_iter()
            .filter(|r| !r.passed)
            .map(|r| r.message.unwrap_or(r.expression))
            .collect()
    }

    fn deny() -> Option<ThirdCountryPolicy> {
        Some(ThirdCountryPolicy::Deny)
    }

    #[test]
    fn eu_regions_pass_and_every_other_location_is_denied() {
        for r in regions::eu_region_ids() {
            let f = failures("CREATE", tenant(r, true), None, None);
            assert!(f.is_empty(), "{r}: {f:?}");
        }
        for r in [
            "europe-west2",
            "europe-west6",
            "us-central1",
            "EU",
            "europe-west3-a",
            "",
        ] {
            let f = failures("CREATE", tenant(r, true), None, None);
            assert_eq!(f.len(), 1, "{r}: {f:?}");
            assert!(f[0].contains("EU member state"), "{f:?}");
        }
    }

    #[test]
    fn region_changes_are_denied_on_update() {
        let f = failures(
            "UPDATE",
            tenant("europe-west1", true),
            Some(tenant("europe-west3", true)),
            None,
        );
        assert!(f.iter().any(|m| m.contains("immutable")), "{f:?}");
        assert!(
            failures(
                "UPDATE",
                tenant("europe-west3", true),
                Some(tenant("europe-west3", true)),
                None
            )
            .is_empty()
        );
    }

    #[test]
    fn email_must_be_off_when_third_country_processors_are_denied() {
        let f = failures("CREATE", tenant("europe-west3", true), None, deny());
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("spec.email.enabled: false"));
        assert!(failures("CREATE", tenant("europe-west3", false), None, deny()).is_empty());
        let allow = Some(ThirdCountryPolicy::Allow);
        assert!(failures("CREATE", tenant("europe-west3", true), None, allow).is_empty());
        // Under deny, the other rules still hold.
        let f = failures("CREATE", tenant("europe-west2", false), None, deny());
        assert_eq!(f.len(), 1, "{f:?}");
    }

    #[test]
    fn long_names_are_denied() {
        let mut t = tenant("europe-west3", false);
        t["metadata"]["name"] = json!("a".repeat(41));
        assert_eq!(failures("CREATE", t, None, None).len(), 1);
    }

    #[test]
    fn the_policy_has_no_parameter_that_could_switch_it_off() {
        for policy in [ThirdCountryPolicy::Allow, ThirdCountryPolicy::Deny] {
            let (vap, binding) = objects(policy);
            let spec = vap.spec.unwrap();
            assert!(spec.param_kind.is_none());
            assert!(binding.spec.param_ref.is_none());
            assert_eq!(spec.validations.unwrap().len(), validations(policy).len());
            assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
            assert_eq!(binding.spec.policy_name, POLICY_NAME);
            assert_eq!(binding.spec.validation_actions, ["Deny"]);
        }
        assert_eq!(
            validations(ThirdCountryPolicy::Deny).len(),
            validations(ThirdCountryPolicy::Allow).len() + 1
        );
    }
}
