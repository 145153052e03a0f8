//! NetworkPolicies of the tenant namespace: deny all ingress, then allow the namespace
//! itself and the ingress controller (to the server's port only).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{meta, names};
use crate::config::OperatorConfig;

/// The three policies, in a fixed order.
pub fn policies(tenant: &str, owner: &OwnerReference, cfg: &OperatorConfig) -> Vec<NetworkPolicy> {
    let all_pods = LabelSelector::default();
    vec![
        policy(
            names::NP_DENY,
            tenant,
            owner,
            all_pods.clone(),
            Some(vec![]),
        ),
        policy(
            names::NP_SAME_NS,
            tenant,
            owner,
            all_pods.clone(),
            Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(all_pods),
                    ..Default::default()
                }]),
                ..Default::default()
            }]),
        ),
        policy(
            names::NP_INGRESS,
            tenant,
            owner,
            LabelSelector {
                match_labels: Some(names::server_selector(tenant)),
                ..Default::default()
            },
            Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "kubernetes.io/metadata.name".to_string(),
                            cfg.ingress.namespace.clone(),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    protocol: Some("TCP".into()),
                    port: Some(IntOrString::Int(cfg.server.port)),
                    ..Default::default()
                }]),
            }]),
        ),
    ]
}

fn policy(
    name: &str,
    tenant: &str,
    owner: &OwnerReference,
    pod_selector: LabelSelector,
    ingress: Option<Vec<NetworkPolicyIngressRule>>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(name, tenant, owner),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: ingress.filter(|rules| !rules.is_empty()),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{owner_reference, testing::tenant};

    fn by_name<'a>(ps: &'a [NetworkPolicy], name: &str) -> &'a NetworkPolicySpec {
        ps.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .and_then(|p| p.spec.as_ref())
            .unwrap()
    }

    #[test]
    fn default_deny_has_no_ingress_rule() {
        let t = tenant("acme", "{displayName: A, region: europe-west3}");
        let ps = policies("acme", &owner_reference(&t), &OperatorConfig::default());
        assert_eq!(ps.len(), 3);
        let deny = by_name(&ps, "default-deny-ingress");
        assert_eq!(deny.pod_selector, Some(LabelSelector::default()));
        assert_eq!(
            deny.policy_types.as_deref(),
            Some(&["Ingress".to_string()][..])
        );
        assert!(deny.ingress.is_none());
    }

    #[test]
    fn same_namespace_and_ingress_controller_are_allowed() {
        let t = tenant("acme", "{displayName: A, region: europe-west3}");
        let mut cfg = OperatorConfig::default();
        cfg.ingress.namespace = "traefik".into();
        cfg.server.port = 9000;
        let ps = policies("acme", &owner_reference(&t), &cfg);
        let same = by_name(&ps, "allow-same-namespace");
        let from = same.ingress.as_ref().unwrap()[0].from.as_ref().unwrap();
        assert_eq!(from[0].pod_selector, Some(LabelSelector::default()));
        assert!(from[0].namespace_selector.is_none());

        let ing = by_name(&ps, "allow-ingress-controller");
        assert_eq!(
            ing.pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["dealerdesk.de/tenant"],
            "acme"
        );
        let rule = &ing.ingress.as_ref().unwrap()[0];
        let ns_sel = rule.from.as_ref().unwrap()[0]
            .namespace_selector
            .as_ref()
            .unwrap();
        assert_eq!(
            ns_sel.match_labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
            "traefik"
        );
        assert_eq!(
            rule.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(9000))
        );
    }
}
