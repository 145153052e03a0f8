//! NetworkPolicies of the tenant namespace: deny all ingress, then allow the namespace
//! itself and the ingress controller (to the server's port only).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
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
        egress_policy(names::NP_DENY_EGRESS, tenant, owner, Vec::new()),
        egress_policy(names::NP_EGRESS, tenant, owner, egress_rules(cfg)),
    ]
}

/// DNS (the cluster's, in kube-system), the namespace itself, and every configured
/// destination with the metadata server cut out of it.
fn egress_rules(cfg: &OperatorConfig) -> Vec<NetworkPolicyEgressRule> {
    let port = |protocol: &str, port: i32| NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(port)),
        ..Default::default()
    };
    let mut rules = vec![
        NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        "kube-system".to_string(),
                    )])),
                    ..Default::default()
                }),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "k8s-app".to_string(),
                        "kube-dns".to_string(),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
        },
        NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(LabelSelector::default()),
                ..Default::default()
            }]),
            ports: None,
        },
    ];
    let metadata = crate::config::metadata_server();
    for r in &cfg.namespace.egress.allow {
        let Ok(net) = r.cidr.parse::<ipnet::IpNet>() else {
            continue; // refused by the configuration's validation
        };
        let except = net.contains(&metadata).then(|| vec![metadata.to_string()]);
        rules.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: net.to_string(),
                    except,
                }),
                ..Default::default()
            }]),
            ports: (!r.ports.is_empty())
                .then(|| r.ports.iter().map(|p| port("TCP", i32::from(*p))).collect()),
        });
    }
    rules
}

fn egress_policy(
    name: &str,
    tenant: &str,
    owner: &OwnerReference,
    egress: Vec<NetworkPolicyEgressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(name, tenant, owner),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Egress".into()]),
            egress: (!egress.is_empty()).then_some(egress),
            ..Default::default()
        }),
    }
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
        assert_eq!(ps.len(), 5);
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

    #[test]
    fn egress_is_denied_except_dns_the_namespace_and_what_is_configured() {
        let t = tenant("acme", "{displayName: A, region: europe-west3}");
        let mut cfg = OperatorConfig::default();
        cfg.namespace.egress.allow = vec![
            crate::config::EgressRule {
                cidr: "10.20.0.0/16".into(),
                ports: vec![5432],
            },
            // A range that contains the metadata server: it is cut out.
            crate::config::EgressRule {
                cidr: "0.0.0.0/0".into(),
                ports: vec![443],
            },
        ];
        let ps = policies("acme", &owner_reference(&t), &cfg);
        let deny = by_name(&ps, "default-deny-egress");
        assert_eq!(
            deny.policy_types.as_deref(),
            Some(&["Egress".to_string()][..])
        );
        assert!(deny.egress.is_none());
        let allow = by_name(&ps, "allow-egress");
        let rules = allow.egress.as_ref().unwrap();
        assert_eq!(rules.len(), 4);
        let dns = &rules[0];
        assert_eq!(dns.ports.as_ref().unwrap().len(), 2);
        let same = &rules[1].to.as_ref().unwrap()[0];
        assert_eq!(same.pod_selector, Some(LabelSelector::default()));
        assert!(same.namespace_selector.is_none(), "no other namespace");
        let db = rules[2].to.as_ref().unwrap()[0].ip_block.as_ref().unwrap();
        assert_eq!(
            (db.cidr.as_str(), db.except.is_none()),
            ("10.20.0.0/16", true)
        );
        let web = rules[3].to.as_ref().unwrap()[0].ip_block.as_ref().unwrap();
        assert_eq!(
            web.except.as_deref(),
            Some(&["169.254.169.254/32".to_string()][..])
        );
        // Nothing anywhere reaches the metadata server or selects another namespace.
        for r in rules {
            for peer in r.to.iter().flatten() {
                if let Some(b) = &peer.ip_block {
                    let net: ipnet::IpNet = b.cidr.parse().unwrap();
                    let metadata = crate::config::metadata_server();
                    assert!(
                        !net.contains(&metadata)
                            || b.except.iter().flatten().any(|e| e == "169.254.169.254/32")
                    );
                }
            }
        }
    }

    #[test]
    fn the_metadata_server_itself_is_refused_in_the_configuration() {
        let mut cfg = OperatorConfig::default();
        cfg.namespace.egress.allow = vec![crate::config::EgressRule {
            cidr: "169.254.169.254/32".into(),
            ports: vec![],
        }];
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("metadata server"), "{err}");
        cfg.namespace.egress.allow[0].cidr = "10.0.0.0/33".into();
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("not a CIDR")
        );
    }
}
