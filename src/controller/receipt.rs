//! Erasure receipts (GDPR Art. 17): when a tenant is deleted, what each processor erased
//! or kept, with provider IDs and timestamps and no personal data. Kept as a ConfigMap in
//! the operator's namespace (it outlives the tenant), published as an Event and logged as
//! one structured line. Pure: building, merging across retries, and the ConfigMap.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::api::DeletionPolicy;
use crate::desired::names;
use crate::processors::Processor;
use crate::providers::ExternalResource;

/// Key of the receipt in its ConfigMap.
pub const RECEIPT_KEY: &str = "receipt.json";
/// Label marking receipt ConfigMaps.
pub const RECEIPT_LABEL: &str = "dealerdesk.de/erasure-receipt";

/// What happened to one component's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Deleted at the processor.
    Erased,
    /// Deleted, but the processor keeps it restorable for a while (GCS soft delete, Cloud
    /// SQL retained backups); `detail` says what and until when. Nothing more the
    /// operator can delete.
    Restorable,
    /// There was nothing (left) to delete.
    NothingFound,
    /// Kept on purpose: `deletionPolicy: Retain`.
    Kept,
    /// Kept because the tenant's `dealerdesk.de/abandon` annotation says so.
    Abandoned,
    /// Deletion failed; the processor still holds the data.
    Failed,
}

impl Outcome {
    /// Whether the processor still holds data after this outcome (restorable data is
    /// data).
    pub fn still_holds_data(self) -> bool {
        matches!(
            self,
            Outcome::Kept | Outcome::Abandoned | Outcome::Failed | Outcome::Restorable
        )
    }

    /// Whether the operator has deleted all it can: the component leaves the holdings.
    pub fn deleted(self) -> bool {
        matches!(
            self,
            Outcome::Erased | Outcome::NothingFound | Outcome::Restorable
        )
    }
}

/// One component at one processor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// `namespace`, `database`, `storage`, `search` or `email`.
    pub component: String,
    pub processor: String,
    pub processor_entity: String,
    pub processor_country: String,
    pub outcome: Outcome,
    /// The resources concerned, with provider IDs where known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ExternalResource>,
    /// When this outcome was first recorded (RFC 3339).
    pub at: String,
    /// Why, for `Failed` and `Abandoned`; where, for `Kept`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Entry {
    pub fn new(
        component: &str,
        processor: &Processor,
        outcome: Outcome,
        resources: Vec<ExternalResource>,
        at: &str,
    ) -> Self {
        Self {
            component: component.into(),
            processor: processor.id.clone(),
            processor_entity: processor.entity.clone(),
            processor_country: processor.country.clone(),
            outcome,
            resources,
            at: at.into(),
            detail: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// The receipt of one tenant's deletion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub tenant: String,
    pub tenant_uid: String,
    pub deletion_policy: DeletionPolicy,
    /// True once nothing is left to do: every entry is final.
    pub complete: bool,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    pub entries: Vec<Entry>,
}

impl Receipt {
    /// Processors (by ID, with components) that still hold the tenant's data.
    pub fn still_holding(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.outcome.still_holds_data())
            .map(|e| format!("{} ({})", e.processor, e.component))
            .collect()
    }

    /// One line for the Event.
    pub fn summary(&self) -> String {
        let mut by: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for e in &self.entries {
            let word = match e.outcome {
                Outcome::Erased => "erased",
                Outcome::Restorable => "deleted but restorable",
                Outcome::NothingFound => "nothing found",
                Outcome::Kept => "kept",
                Outcome::Abandoned => "abandoned",
                Outcome::Failed => "failed",
            };
            by.entry(word)
                .or_default()
                .push(format!("{} at {}", e.component, e.processor));
        }
        let parts: Vec<String> = by
            .into_iter()
            .map(|(w, list)| format!("{w}: {}", list.join(", ")))
            .collect();
        format!(
            "{} receipt for tenant {} ({}): {}",
            if self.complete {
                "erasure"
            } else {
                "partial erasure"
            },
            self.tenant,
            match self.deletion_policy {
                DeletionPolicy::Delete => "deletionPolicy Delete",
                DeletionPolicy::Retain => "deletionPolicy Retain",
            },
            parts.join("; ")
        )
    }
}

/// Merges this attempt's findings into the receipt of earlier attempts: an earlier
/// `Erased` is not forgotten when a retry finds nothing left, and an unchanged outcome
/// keeps its first timestamp.
pub fn merge(old: Option<&Receipt>, mut new: Receipt) -> Receipt {
    let Some(old) = old else { return new };
    new.started_at = old.started_at.clone();
    for entry in &mut new.entries {
        let Some(prev) = old.entries.iter().find(|e| e.component == entry.component) else {
            continue;
        };
        if matches!(prev.outcome, Outcome::Erased | Outcome::Restorable)
            && entry.outcome == Outcome::NothingFound
        {
            *entry = prev.clone();
        } else if prev.outcome == entry.outcome && prev.resources == entry.resources {
            entry.at = prev.at.clone();
        }
    }
    // A component an earlier attempt dealt with (and this one, finding it erased, had no
    // more reason to visit) keeps its entry.
    for prev in &old.entries {
        if !new.entries.iter().any(|e| e.component == prev.component) {
            new.entries.push(prev.clone());
        }
    }
    if new.complete && old.complete {
        new.completed_at = old.completed_at.clone();
    }
    new
}

/// `erasure-<tenant>-<first 8 of uid>`: one receipt per tenant incarnation.
pub fn configmap_name(tenant: &str, uid: &str) -> String {
    let short: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    format!("erasure-{tenant}-{}", short.to_ascii_lowercase())
}

/// The ConfigMap that keeps the receipt.
pub fn to_configmap(receipt: &Receipt, namespace: &str) -> ConfigMap {
    let mut labels = BTreeMap::new();
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        names::MANAGED_BY.to_string(),
    );
    labels.insert(names::TENANT_LABEL.to_string(), receipt.tenant.clone());
    labels.insert(
        RECEIPT_LABEL.to_string(),
        if receipt.complete {
            "complete"
        } else {
            "incomplete"
        }
        .to_string(),
    );
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(configmap_name(&receipt.tenant, &receipt.tenant_uid)),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            RECEIPT_KEY.to_string(),
            serde_json::to_string_pretty(receipt).expect("a receipt serializes"),
        )])),
        ..Default::default()
    }
}

/// The receipt kept in a ConfigMap, if it holds one.
pub fn from_configmap(cm: &ConfigMap) -> Option<Receipt> {
    cm.data
        .as_ref()?
        .get(RECEIPT_KEY)
        .and_then(|s| serde_json::from_str(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors;

    fn google() -> Processor {
        processors::builtin().remove(0)
    }

    fn receipt(outcome: Outcome, at: &str, complete: bool) -> Receipt {
        Receipt {
            tenant: "acme".into(),
            tenant_uid: "0123-4567-89ab".into(),
            deletion_policy: DeletionPolicy::Delete,
            complete,
            started_at: at.into(),
            completed_at: complete.then(|| at.to_string()),
            entries: vec![Entry::new(
                "storage",
                &google(),
                outcome,
                vec![
                    ExternalResource::new(
                        "Bucket",
                        "b",
                        Some("europe-west3".into()),
                        "google-cloud",
                    )
                    .with_id("projects/1/buckets/b"),
                ],
                at,
            )],
        }
    }

    #[test]
    fn an_erasure_is_not_forgotten_when_a_retry_finds_nothing() {
        let first = receipt(Outcome::Erased, "t1", false);
        let mut retry = receipt(Outcome::NothingFound, "t2", true);
        retry.entries[0].resources.clear();
        let merged = merge(Some(&first), retry);
        assert_eq!(merged.entries[0].outcome, Outcome::Erased);
        assert_eq!(
            merged.entries[0].resources[0].id.as_deref(),
            Some("projects/1/buckets/b")
        );
        assert_eq!(merged.entries[0].at, "t1");
        assert_eq!(merged.started_at, "t1");
        assert!(merged.complete);
    }

    #[test]
    fn a_failure_then_success_records_the_success() {
        let first = receipt(Outcome::Failed, "t1", false);
        let merged = merge(Some(&first), receipt(Outcome::Erased, "t2", true));
        assert_eq!(merged.entries[0].outcome, Outcome::Erased);
        assert_eq!(merged.entries[0].at, "t2");
        assert!(merged.still_holding().is_empty());
        assert_eq!(first.still_holding(), ["google-cloud (storage)"]);
    }

    #[test]
    fn configmap_round_trips_and_names_the_incarnation() {
        let r = receipt(Outcome::Erased, "t1", true);
        let cm = to_configmap(&r, "dealertenant-system");
        assert_eq!(cm.metadata.name.as_deref(), Some("erasure-acme-01234567"));
        assert_eq!(
            cm.metadata.labels.as_ref().unwrap()[RECEIPT_LABEL],
            "complete"
        );
        assert_eq!(from_configmap(&cm), Some(r.clone()));
        assert!(r.summary().starts_with("erasure receipt for tenant acme (deletionPolicy Delete): erased: storage at google-cloud"));
    }
}
