//! Layer 2 of data residency: a ValidatingAdmissionPolicy (CEL, GA since Kubernetes 1.30)
//! that enforces the EU-region rule and the cluster's processor policy at admission, so
//! they hold even if someone edits the CRD by hand. Generated from the same region list as
//! the CRD; `deploy/admission-policy.yaml` is exactly what `admission-policy` prints.
//!
//! The cluster policy is read from the ConfigMap `dealertenant-policy` in the operator
//! namespace (key `thirdCountryProcessors`: `allow` or `deny`), the policy's parameter.
//! Keep it equal to `thirdCountryProcessors` in the operator configuration.

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ParamKind, ParamRef,
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    ValidatingAdmissionPolicyBindingSpec, ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{GROUP, MAX_NAME_LEN, VERSION, regions};
use crate::config::ThirdCountryPolicy;

/// Name of the policy and its binding.
pub const POLICY_NAME: &str = "dealertenants.dealerdesk.de";
/// The parameter ConfigMap.
pub const PARAMS_NAME: &str = "dealertenant-policy";

/// The policy's CEL validations: `(expression, message, messageExpression)`.
pub fn validations() -> Vec<(String, String, Option<String>)> {
    let regions: Vec<String> = regions::eu_region_ids().map(|r| format!("'{r}'")).collect();
    let allowed = regions::eu_region_ids().collect::<Vec<_>>().join(", ");
    vec![
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
            "spec.region is immutable: moving a tenant between regions is a migration, not an edit".into(),
            None,
        ),
        (
            "params == null || !has(params.data) || !('thirdCountryProcessors' in params.data) \
             || params.data.thirdCountryProcessors != 'deny' \
             || (has(object.spec.email) && has(object.spec.email.enabled) && object.spec.email.enabled == false)"
                .into(),
            "the cluster denies third-country processors (thirdCountryProcessors: deny): email (Postmark, \
             ActiveCampaign LLC, United States) must be off; set spec.email.enabled: false"
                .into(),
            None,
        ),
    ]
}

/// The policy, its binding, and the parameter ConfigMap with `policy`.
pub fn objects(
    operator_namespace: &str,
    policy: ThirdCountryPolicy,
) -> (
    ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
    ConfigMap,
) {
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
            param_kind: Some(ParamKind {
                api_version: Some("v1".into()),
                kind: Some("ConfigMap".into()),
            }),
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
                validations()
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
            param_ref: Some(ParamRef {
                name: Some(PARAMS_NAME.into()),
                namespace: Some(operator_namespace.into()),
                parameter_not_found_action: Some("Allow".into()),
                ..Default::default()
            }),
            validation_actions: vec!["Deny".into()],
            ..Default::default()
        },
    };
    let mut params_meta = meta(PARAMS_NAME);
    params_meta.namespace = Some(operator_namespace.into());
    let params = ConfigMap {
        metadata: params_meta,
        data: Some(
            [(
                "thirdCountryProcessors".to_string(),
                match policy {
                    ThirdCountryPolicy::Allow => "allow".to_string(),
                    ThirdCountryPolicy::Deny => "deny".to_string(),
                },
            )]
            .into(),
        ),
        ..Default::default()
    };
    (vap, binding, params)
}

/// The three objects as one YAML stream, as `deploy/admission-policy.yaml` holds them.
pub fn yaml(operator_namespace: &str, policy: ThirdCountryPolicy) -> String {
    let (vap, binding, params) = objects(operator_namespace, policy);
    let header = "# Generated by `dealertenant-operator admission-policy`; do not edit.\n";
    let docs = [
        serde_saphyr::to_string(&vap).expect("serializes"),
        serde_saphyr::to_string(&binding).expect("serializes"),
        serde_saphyr::to_string(&params).expect("serializes"),
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
    fn failures(op: &str, object: Value, old: Option<Value>, params: Option<Value>) -> Vec<String> {
        let mut b = VapEvaluator::builder()
            .object(object)
            .request(AdmissionRequest {
                operation: op.into(),
                ..Default::default()
            });
        if let Some(o) = old {
            b = b.old_object(o);
        }
        // The API server always declares `params` (null without a parameter object).
        b = b.params(params.unwrap_or(Value::Null));
        let exprs: Vec<VapExpression> = validations()
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

    fn deny() -> Option<Value> {
        Some(json!({"data": {"thirdCountryProcessors": "deny"}}))
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
        let allow = Some(json!({"data": {"thirdCountryProcessors": "allow"}}));
        assert!(failures("CREATE", tenant("europe-west3", true), None, allow).is_empty());
    }

    #[test]
    fn long_names_are_denied() {
        let mut t = tenant("europe-west3", false);
        t["metadata"]["name"] = json!("a".repeat(41));
        assert_eq!(failures("CREATE", t, None, None).len(), 1);
    }

    #[test]
    fn the_objects_bind_the_policy_to_its_parameters() {
        let (vap, binding, params) = objects("dealertenant-system", ThirdCountryPolicy::Deny);
        let spec = vap.spec.unwrap();
        assert_eq!(spec.validations.unwrap().len(), validations().len());
        assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
        let b = binding.spec;
        assert_eq!(b.policy_name, POLICY_NAME);
        assert_eq!(b.validation_actions, ["Deny"]);
        assert_eq!(b.param_ref.unwrap().name.as_deref(), Some(PARAMS_NAME));
        assert_eq!(params.data.unwrap()["thirdCountryProcessors"], "deny");
    }
}
