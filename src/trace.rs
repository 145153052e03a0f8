//! `trace NAME`: one tenant's whole stack at a glance, in the manner of `crossplane beta
//! trace`: the tenant, its namespace, its server, then each component with its provider,
//! external resources, location, processor (third countries flagged), readiness, reason,
//! age and last error. Everything comes from the tenant's status and two reads
//! (namespace, Deployment); building and rendering the tree are pure.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::api::DealerTenant;
use crate::controller::publish::is_failure;
use crate::desired::names;
use crate::providers::Component;

/// One line of the tree.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `DealerTenant/acme`, `Namespace/tenant-acme`, `Deployment/server`, `database`.
    pub name: String,
    /// `True`/`False`/`Unknown`, or `ready/desired` for the server.
    pub ready: String,
    pub reason: String,
    pub message: String,
    /// Since the last transition (or creation), e.g. `5m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age: Option<String>,
    /// The service behind a component (`postgres`, `cloudsql`, `gcs`, `elasticsearch`,
    /// `postmark`), from the kinds of its resources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The external resources that hold the component's data.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    /// The condition's message when it reports a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Node>,
}

/// An external resource of a component.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub processor: String,
    /// `Google Cloud EMEA Limited (IE)`, from the tenant's processor register.
    pub processor_entity: String,
    pub third_country: bool,
}

/// The tree of `t`, its namespace and its server, at `now`.
pub fn build(
    t: &DealerTenant,
    namespace: Option<&Namespace>,
    deployment: Option<&Deployment>,
    now: jiff::Timestamp,
) -> Node {
    let status = t.status.clone().unwrap_or_default();
    let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
    let age = |time: Option<&Time>| time.map(|t| short_age(now, t.0));
    let from_condition = |name: String, c: Option<&Condition>| match c {
        Some(c) => Node {
            name,
            ready: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            age: age(Some(&c.last_transition_time)),
            last_error: (c.status != "True" && is_failure(&c.reason)).then(|| c.message.clone()),
            ..Node::empty()
        },
        None => Node {
            name,
            ready: "Unknown".into(),
            reason: "NotObserved".into(),
            message: "the operator has not reported on this yet".into(),
            ..Node::empty()
        },
    };
    let ns_name = status
        .namespace
        .clone()
        .unwrap_or_else(|| names::namespace(t.tenant_name()));
    let mut ns = from_condition(format!("Namespace/{ns_name}"), condition("NamespaceReady"));
    if namespace.is_none() {
        ns.ready = "False".into();
        ns.reason = "NotFound".into();
        ns.message = format!("namespace {ns_name} does not exist");
    }
    let mut server = from_condition(
        format!("Deployment/{ns_name}/{}", names::SERVER),
        condition("ServerReady"),
    );
    match deployment {
        Some(d) => {
            let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            server.ready = format!("{ready}/{desired}");
        }
        None => {
            server.ready = "0/0".into();
            if status.namespace.is_some() {
                server.reason = "NotFound".into();
                server.message = "the server Deployment does not exist".into();
            }
        }
    }
    let mut children = vec![ns, server];
    for component in Component::ORDER {
        if !component.enabled_for(t) {
            children.push(Node {
                name: component.key().into(),
                ready: "-".into(),
                reason: "Disabled".into(),
                message: format!("spec.{}.enabled is false", component.key()),
                ..Node::empty()
            });
            continue;
        }
        let mut node = from_condition(
            component.key().into(),
            condition(component.condition_type()),
        );
        node.resources = status
            .external_resources
            .iter()
            .filter(|r| r.component.as_deref() == Some(component.key()))
            .map(|r| {
                let p = status.processors.iter().find(|p| p.id == r.processor);
                Resource {
                    kind: r.kind.clone(),
                    name: r.name.clone(),
                    location: r.location.clone(),
                    processor: r.processor.clone(),
                    processor_entity: p
                        .map(|p| format!("{} ({})", p.entity, p.country))
                        .unwrap_or_else(|| "not in the tenant's processor register".into()),
                    // Unknown processors count as third-country, as the register does.
                    third_country: p.is_none_or(|p| p.third_country),
                }
            })
            .collect();
        node.provider = provider_of(&node.resources);
        children.push(node);
    }
    let mut root = from_condition(format!("DealerTenant/{}", t.name_any()), condition("Ready"));
    if status.conditions.is_empty() {
        root.age = age(t.metadata.creation_timestamp.as_ref());
    }
    root.children = children;
    root
}

impl Node {
    fn empty() -> Self {
        Node {
            name: String::new(),
            ready: String::new(),
            reason: String::new(),
            message: String::new(),
            age: None,
            provider: None,
            resources: Vec::new(),
            last_error: None,
            children: Vec::new(),
        }
    }
}

/// The provider behind a component, from the kinds of the resources it recorded.
fn provider_of(resources: &[Resource]) -> Option<String> {
    resources.iter().find_map(|r| {
        let p = match r.kind.as_str() {
            "Database" | "DatabaseRole" => "postgres",
            "CloudSqlInstance" | "CloudSqlDatabase" | "CloudSqlUser" => "cloudsql",
            "Bucket" => "gcs",
            k if k.starts_with("Elasticsearch") => "elasticsearch",
            k if k.starts_with("Postmark") => "postmark",
            _ => return None,
        };
        Some(p.to_string())
    })
}

/// `42s`, `5m`, `3h`, `2d`, as kubectl shows ages.
pub fn short_age(now: jiff::Timestamp, then: jiff::Timestamp) -> String {
    let secs = now.duration_since(then).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The tree as text: a header, then one row per node; `wide` adds the message column.
pub fn render(root: &Node, wide: bool) -> String {
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut extra: Vec<(usize, String)> = Vec::new();
    rows.push(["NAME", "READY", "REASON", "AGE", "MESSAGE"].map(|s| s.to_string()));
    let row = |prefix: &str, n: &Node| {
        let name = match &n.provider {
            Some(p) => format!("{prefix}{} ({p})", n.name),
            None => format!("{prefix}{}", n.name),
        };
        [
            name,
            n.ready.clone(),
            n.reason.clone(),
            n.age.clone().unwrap_or_else(|| "-".into()),
            n.message.clone(),
        ]
    };
    rows.push(row("", root));
    let last = root.children.len().saturating_sub(1);
    for (i, child) in root.children.iter().enumerate() {
        let (branch, indent) = if i == last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        rows.push(row(branch, child));
        let mut details: Vec<String> = child
            .resources
            .iter()
            .map(|r| {
                let flag = if r.third_country {
                    "  THIRD COUNTRY"
                } else {
                    ""
                };
                format!(
                    "{}/{}  {}  {}: {}{flag}",
                    r.kind,
                    r.name,
                    r.location.as_deref().unwrap_or("-"),
                    r.processor,
                    r.processor_entity
                )
            })
            .collect();
        if let Some(e) = &child.last_error {
            details.push(format!("last error: {e}"));
        }
        let n = details.len();
        for (j, d) in details.into_iter().enumerate() {
            let twig = if j + 1 == n { "└─ " } else { "├─ " };
            extra.push((rows.len(), format!("{indent}{twig}{d}")));
            rows.push(Default::default());
        }
    }
    let columns = if wide { 5 } else { 4 };
    let width: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        if let Some((_, text)) = extra.iter().find(|(at, _)| *at == i) {
            out.push_str(text);
            out.push('\n');
            continue;
        }
        let mut line = String::new();
        for c in 0..columns {
            let cell = &r[c];
            line.push_str(cell);
            if c + 1 < columns {
                let pad = width[c] - cell.chars().count() + 2;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// How `trace` shows the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Wide,
    Json,
}

/// Whether the tenant is Ready: `trace`'s exit status.
pub fn is_ready(root: &Node) -> bool {
    root.ready == "True"
}

/// Reads tenant `name`, its namespace and its server Deployment from the cluster.
pub async fn fetch(client: &Client, name: &str) -> anyhow::Result<Node> {
    let tenants: Api<DealerTenant> = Api::all(client.clone());
    let t = tenants
        .get_opt(name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read DealerTenant {name}: {e}"))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "there is no DealerTenant {name}; `kubectl get dealertenants` lists them"
            )
        })?;
    let ns_name = t
        .status
        .as_ref()
        .and_then(|s| s.namespace.clone())
        .unwrap_or_else(|| names::namespace(name));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = namespaces
        .get_opt(&ns_name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read namespace {ns_name}: {e}"))?
        // A namespace of this name that is not this tenant's (by UID) is not its namespace.
        .filter(|ns| {
            ns.labels().get(names::TENANT_UID_LABEL).map(String::as_str) == t.uid().as_deref()
        });
    let deployment = match &namespace {
        Some(_) => Api::<Deployment>::namespaced(client.clone(), &ns_name)
            .get_opt(names::SERVER)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read Deployment {ns_name}/server: {e}"))?,
        None => None,
    };
    Ok(build(
        &t,
        namespace.as_ref(),
        deployment.as_ref(),
        jiff::Timestamp::now(),
    ))
}

/// `trace NAME`: prints the tree; exit status 0 when the tenant is Ready, 1 when it is
/// not, 2 when it cannot be read.
pub async fn run(client: &Client, name: &str, output: Output) -> u8 {
    match fetch(client, name).await {
        Ok(root) => {
            let text = match output {
                Output::Text => render(&root, false),
                Output::Wide => render(&root, true),
                Output::Json => format!(
                    "{}\n",
                    serde_json::to_string_pretty(&root).expect("a trace serializes")
                ),
            };
            print!("{text}");
            if is_ready(&root) { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// `trace` from a command line (`dealertenant-operator trace`, `kubectl dealertenant
/// trace`): the cluster of KUBECONFIG or the current context, or in-cluster.
pub fn command(name: &str, output: Output) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async {
        match Client::try_default().await {
            Ok(client) => run(&client, name, output).await,
            Err(e) => {
                eprintln!(
                    "error: no Kubernetes cluster is reachable ({e}); set KUBECONFIG or the current context"
                );
                2
            }
        }
    });
    std::process::ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tenant() -> DealerTenant {
        serde_json::from_value(json!({
            "apiVersion": "dealerdesk.de/v1alpha1", "kind": "DealerTenant",
            "metadata": {"name": "acme", "uid": "u1", "creationTimestamp": "2026-12-02T10:00:00Z"},
            "spec": {"displayName": "Acme", "region": "europe-west3",
                     "storage": {"enabled": false}, "search": {"enabled": false}},
            "status": {
                "namespace": "tenant-acme", "phase": "Failed",
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "ComponentsNotReady", "message": "email is not ready",
                     "lastTransitionTime": "2026-12-02T10:00:00Z"},
                    {"type": "NamespaceReady", "status": "True", "reason": "Active", "message": "",
                     "lastTransitionTime": "2026-12-02T10:00:00Z"},
                    {"type": "ServerReady", "status": "True", "reason": "Available", "message": "0/0",
                     "lastTransitionTime": "2026-12-02T10:00:00Z"},
                    {"type": "DatabaseReady", "status": "True", "reason": "Provisioned", "message": "database dt_acme",
                     "lastTransitionTime": "2026-12-02T10:05:00Z"},
                    {"type": "EmailReady", "status": "False", "reason": "ProviderRefused", "message": "Postmark said 422",
                     "lastTransitionTime": "2026-12-02T11:00:00Z"},
                ],
                "externalResources": [
                    {"kind": "Database", "name": "dt_acme", "location": "europe-west3", "processor": "google-cloud", "component": "database"},
                    {"kind": "PostmarkServer", "name": "dd-acme", "processor": "postmark", "component": "email"},
                ],
                "processors": [
                    {"id": "google-cloud", "name": "Google Cloud", "entity": "Google Cloud EMEA Limited", "country": "IE",
                     "thirdCountry": false, "safeguard": "", "purpose": "", "dataCategories": [], "components": ["database"]},
                    {"id": "postmark", "name": "Postmark", "entity": "ActiveCampaign, LLC", "country": "US",
                     "thirdCountry": true, "safeguard": "SCC", "purpose": "", "dataCategories": [], "components": ["email"]},
                ],
            },
        }))
        .unwrap()
    }

    fn now() -> jiff::Timestamp {
        "2026-12-02T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn every_component_shows_provider_resources_processor_and_last_error() {
        let root = build(&tenant(), Some(&Namespace::default()), None, now());
        assert_eq!(root.name, "DealerTenant/acme");
        assert!(!is_ready(&root));
        let names: Vec<&str> = root.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Namespace/tenant-acme",
                "Deployment/tenant-acme/server",
                "database",
                "storage",
                "search",
                "email"
            ]
        );
        let db = &root.children[2];
        assert_eq!(db.provider.as_deref(), Some("postgres"));
        assert_eq!(db.age.as_deref(), Some("115m"));
        assert!(!db.resources[0].third_country);
        assert_eq!(root.children[3].reason, "Disabled");
        let email = &root.children[5];
        assert_eq!(email.provider.as_deref(), Some("postmark"));
        assert!(email.resources[0].third_country);
        assert_eq!(email.last_error.as_deref(), Some("Postmark said 422"));
        assert_eq!(email.age.as_deref(), Some("60m"));
    }

    #[test]
    fn the_text_is_a_tree_and_wide_adds_the_message() {
        let root = build(&tenant(), Some(&Namespace::default()), None, now());
        let text = render(&root, false);
        assert!(text.starts_with("NAME"), "{text}");
        assert!(text.contains("├─ database (postgres)"), "{text}");
        assert!(
            text.contains(
                "Database/dt_acme  europe-west3  google-cloud: Google Cloud EMEA Limited (IE)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "PostmarkServer/dd-acme  -  postmark: ActiveCampaign, LLC (US)  THIRD COUNTRY"
            ),
            "{text}"
        );
        assert!(text.contains("└─ email (postmark)"), "{text}");
        assert!(text.contains("last error: Postmark said 422"), "{text}");
        assert!(!text.contains("MESSAGE"), "{text}");
        let wide = render(&root, true);
        assert!(
            wide.contains("MESSAGE") && wide.contains("email is not ready"),
            "{wide}"
        );
    }

    #[test]
    fn a_missing_namespace_is_said_plainly() {
        let root = build(&tenant(), None, None, now());
        assert_eq!(root.children[0].reason, "NotFound");
        assert_eq!(root.children[1].ready, "0/0");
    }
}
