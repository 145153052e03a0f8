//! The processor register: who processes tenants' personal data, where, why, and under
//! which safeguard. The built-in catalog can be extended or overridden in the operator
//! configuration (`processors:`). Every component names the processor that holds it.

pub mod report;

use serde::{Deserialize, Serialize};

/// One processor (sub-processor, in the company's published list).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Processor {
    /// Stable ID used by components and configuration, e.g. `google-cloud`.
    pub id: String,
    /// Public name, e.g. "Postmark".
    pub name: String,
    /// Legal entity.
    pub entity: String,
    /// ISO 3166-1 alpha-2 country of the entity / processing.
    pub country: String,
    /// Outside the EU/EEA without an adequacy decision.
    pub third_country: bool,
    /// Legal safeguard for the transfer, or the basis for none being needed.
    pub safeguard: String,
    /// What it does with the data.
    pub purpose: String,
    /// Categories of personal data it holds.
    pub data_categories: Vec<String>,
    /// Retention note, if the processor keeps data on its own schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
}

/// A catalog row, for the compact table below.
struct Row {
    id: &'static str,
    name: &'static str,
    entity: &'static str,
    country: &'static str,
    third_country: bool,
    safeguard: &'static str,
    purpose: &'static str,
    data: &'static [&'static str],
    retention: Option<&'static str>,
}

impl Row {
    fn processor(&self) -> Processor {
        Processor {
            id: self.id.into(),
            name: self.name.into(),
            entity: self.entity.into(),
            country: self.country.into(),
            third_country: self.third_country,
            safeguard: self.safeguard.into(),
            purpose: self.purpose.into(),
            data_categories: self.data.iter().map(|s| s.to_string()).collect(),
            retention: self.retention.map(Into::into),
        }
    }
}

/// Processor IDs used by the built-in components.
pub mod ids {
    pub const GOOGLE_CLOUD: &str = "google-cloud";
    pub const POSTMARK: &str = "postmark";
    pub const ELASTIC: &str = "elastic";
    pub const DIALOG360: &str = "360dialog";
    pub const WORNET: &str = "wornet";
}

/// The built-in catalog.
pub fn builtin() -> Vec<Processor> {
    const CUSTOMER_DATA: &[&str] = &[
        "customer contact data",
        "vehicle and sales records",
        "correspondence",
    ];
    const ROWS: &[Row] = &[
        Row {
            id: ids::GOOGLE_CLOUD,
            name: "Google Cloud",
            entity: "Google Cloud EMEA Ltd.",
            country: "IE",
            third_country: false,
            safeguard: "EU processor; data hosted in EU regions only",
            purpose: "hosting, database and file storage",
            data: CUSTOMER_DATA,
            retention: None,
        },
        Row {
            id: ids::POSTMARK,
            name: "Postmark",
            entity: "ActiveCampaign, LLC",
            country: "US",
            third_country: true,
            safeguard: "EU standard contractual clauses",
            purpose: "sending and receiving email",
            data: &["email addresses", "email content", "delivery metadata"],
            retention: Some("email content kept 45 days by default (an account-wide setting)"),
        },
        Row {
            id: ids::ELASTIC,
            name: "Elastic Cloud",
            entity: "Elasticsearch GmbH",
            country: "DE",
            third_country: false,
            safeguard: "EU processor; Elastic Cloud on Google Cloud in the EU",
            purpose: "search index",
            data: CUSTOMER_DATA,
            retention: None,
        },
        Row {
            id: ids::DIALOG360,
            name: "360dialog",
            entity: "360dialog GmbH",
            country: "DE",
            third_country: false,
            safeguard: "EU processor",
            purpose: "WhatsApp Business API messaging",
            data: &["phone numbers", "message content"],
            retention: None,
        },
        Row {
            id: ids::WORNET,
            name: "WorNet",
            entity: "WorNet AG",
            country: "DE",
            third_country: false,
            safeguard: "EU processor",
            purpose: "spam and malware filtering of inbound email",
            data: &["email addresses", "email content"],
            retention: None,
        },
    ];
    ROWS.iter().map(Row::processor).collect()
}

/// The catalog in force: the built-in one with configured entries added, or replacing
/// built-in ones of the same ID.
pub fn catalog(overrides: &[Processor]) -> Vec<Processor> {
    let mut all = builtin();
    for o in overrides {
        match all.iter_mut().find(|p| p.id == o.id) {
            Some(existing) => *existing = o.clone(),
            None => all.push(o.clone()),
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_knows_every_component_processor() {
        let c = builtin();
        for id in [ids::GOOGLE_CLOUD, ids::POSTMARK, ids::ELASTIC] {
            assert!(c.iter().any(|p| p.id == id), "{id}");
        }
        let postmark = c.iter().find(|p| p.id == ids::POSTMARK).unwrap();
        assert!(postmark.third_country);
        assert_eq!(postmark.country, "US");
        assert!(
            c.iter()
                .filter(|p| p.id != ids::POSTMARK)
                .all(|p| !p.third_country)
        );
    }

    #[test]
    fn configuration_overrides_and_extends() {
        let mut eu_mail = builtin().into_iter().find(|p| p.id == ids::WORNET).unwrap();
        eu_mail.id = "eu-mail".into();
        let mut google = builtin().remove(0);
        google.purpose = "hosting".into();
        let c = catalog(&[eu_mail, google]);
        assert_eq!(c.len(), builtin().len() + 1);
        assert_eq!(
            c.iter()
                .find(|p| p.id == ids::GOOGLE_CLOUD)
                .unwrap()
                .purpose,
            "hosting"
        );
    }
}

/// A processor that holds one tenant's data, with the components it serves.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantProcessor {
    pub id: String,
    pub name: String,
    pub entity: String,
    pub country: String,
    pub third_country: bool,
    pub safeguard: String,
    pub purpose: String,
    pub data_categories: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// What it holds for this tenant: `hosting`, `database`, `storage`, `search`, `email`.
    pub components: Vec<String>,
}

/// The catalog entry of `id`; an ID missing from the catalog is reported as unknown (and
/// treated as a third country) rather than dropped.
pub fn lookup(catalog: &[Processor], id: &str) -> Processor {
    catalog
        .iter()
        .find(|p| p.id == id)
        .cloned()
        .unwrap_or_else(|| Processor {
            id: id.into(),
            name: id.into(),
            entity: "unknown: not in the processor catalog".into(),
            country: "ZZ".into(),
            third_country: true,
            safeguard: "unknown".into(),
            purpose: "unknown".into(),
            data_categories: Vec::new(),
            retention: None,
        })
}

/// The processors that hold a tenant's data, from `(component, processor id)` pairs, in
/// catalog order. Unknown IDs are reported as such rather than dropped.
pub fn for_tenant(used: &[(String, String)], catalog: &[Processor]) -> Vec<TenantProcessor> {
    let mut out: Vec<TenantProcessor> = Vec::new();
    for (component, id) in used {
        if let Some(existing) = out.iter_mut().find(|p| &p.id == id) {
            if !existing.components.contains(component) {
                existing.components.push(component.clone());
            }
            continue;
        }
        let p = catalog
            .iter()
            .find(|p| &p.id == id)
            .cloned()
            .unwrap_or_else(|| Processor {
                id: id.clone(),
                name: id.clone(),
                entity: "unknown: not in the processor catalog".into(),
                country: "ZZ".into(),
                third_country: true,
                safeguard: "unknown".into(),
                purpose: "unknown".into(),
                data_categories: Vec::new(),
                retention: None,
            });
        out.push(TenantProcessor {
            id: p.id,
            name: p.name,
            entity: p.entity,
            country: p.country,
            third_country: p.third_country,
            safeguard: p.safeguard,
            purpose: p.purpose,
            data_categories: p.data_categories,
            retention: p.retention,
            components: vec![component.clone()],
        });
    }
    let position = |id: &str| {
        catalog
            .iter()
            .position(|p| p.id == id)
            .unwrap_or(usize::MAX)
    };
    out.sort_by_key(|p| position(&p.id));
    out
}
