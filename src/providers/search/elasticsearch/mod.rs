//! Elasticsearch provider: one index per tenant, an index-scoped role and one API key, all
//! named `<indexPrefix><tenant>`, through the REST API.
//!
//! - Index: `GET /{index}` observes it; `PUT /{index}` creates it with
//!   `number_of_shards`/`number_of_replicas` from the configuration. Replicas are a dynamic
//!   setting and are brought back with `PUT /{index}/_settings`; the shard count of an
//!   existing index cannot change, so a difference is reported as a permanent error.
//! - Role: `PUT /_security/role/{name}` granting `read`, `write` and `view_index_metadata`
//!   on that one index and no cluster privileges; written only when `GET` shows a
//!   difference.
//! - API key: `POST /_security/api_key` with the same role descriptor. Elasticsearch shows a
//!   key's secret once, at creation, so the tenant Secret is the only copy: with a Secret
//!   the key is checked (listed by name, not invalidated, same ID, same descriptor, and it
//!   authenticates) and nothing is written; without one (first pass, a crash after the key
//!   was created, or a deliberate rotation) every key of that name is invalidated and one
//!   new key is created. Either way exactly one valid key remains.
//!
//! Each index is bound to the UID of the tenant that created it: `mappings._meta` holds
//! `{"dealerdesk.de/tenant-uid": "<uid>"}` (set at creation, read from `GET /{index}`,
//! updated with `PUT /{index}/_mapping`; Elasticsearch reference, "_meta field" and
//! "Update mapping API"); the role's and the key's `metadata` carry it too. Tenant names
//! are reused, UIDs are not: an index bound to another UID holds data retained (under
//! `deletionPolicy: Retain`) from a deleted tenant, and is neither reconciled nor erased,
//! nor is a key issued for it, unless the tenant adopts exactly that UID with the
//! annotation `dealerdesk.de/adopt-retained: <uid>`. Adoption rewrites the role, issues a
//! new key, invalidating every older key of that name, the retained tenant's included (the
//! data belongs to the adopter from then on), and rebinds the index last, so that a pass
//! cut short adopts again. A held key bound to another UID is never kept. An index without the
//! UID (made by an earlier version) is bound to the tenant that reconciles it. Only
//! `manage` (not the tenants' `write`) covers the update mapping API from Elasticsearch 8
//! on, so a tenant key cannot rebind its own index there.
//!
//! The operator authenticates either with an API key (`Authorization: ApiKey`, the default)
//! or, when `search.username` is set, as that user with HTTP Basic. Elasticsearch refuses
//! to let a request authenticated by an API key create a key that carries privileges
//! ("creating derived api keys requires an explicit role descriptor that is empty"), so
//! issuing tenant keys needs the user form; with an operator API key the index and role
//! are still managed and key creation fails with a permanent error that says so.
//!
//! The deployment's region is configuration (validated against the EU list at load, and
//! checked again here before anything is created); Elasticsearch itself reports no
//! location for an index.

mod client;
mod config;
mod desired;
mod errors;
mod keys;

pub use client::{ElasticsearchProvider, OperatorCredential};
pub use config::*;
pub use desired::*;
pub use errors::{describe_error, error_type, scrub};
pub use keys::{KeyInfo, parse_keys};

use reqwest::Method;
use serde_json::{Value, json};

use crate::providers::{
    Component, Erased, Provider, ProviderError, Reconciled, SecretData, TenantInfo, residency,
};
use client::As;
use keys::now_ms;

/// Service name in errors.
const SERVICE: &str = "Elasticsearch";

impl ElasticsearchProvider {
    /// Refuses an index bound to another tenant UID that `tenant` does not adopt.
    fn check_owner(
        &self,
        name: &str,
        state: &IndexState,
        tenant: &TenantInfo,
    ) -> Result<(), ProviderError> {
        match state.owner() {
            Some(owner) if owner != tenant.uid && !tenant.adopts(owner) => {
                Err(ProviderError::Foreign {
                    service: SERVICE,
                    message: format!(
                        "index {name} holds data retained from another tenant (UID {owner}); \
                         nothing was changed and no API key was issued. Annotate this tenant \
                         dealerdesk.de/adopt-retained: {owner} to take it over, or delete the \
                         index {name} first"
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// Observes the index, creates it (bound to the tenant) when missing, refuses one bound
    /// to another tenant that is not adopted, and brings replicas back. Returns the state
    /// and whether the index is being adopted.
    async fn ensure_index(
        &self,
        name: &str,
        tenant: &TenantInfo,
    ) -> Result<(IndexState, bool), ProviderError> {
        let mut state = match self.get_index(name).await? {
            Some(s) => s,
            None => {
                residency::check_before_create(
                    &format!("Elasticsearch index {name}"),
                    &self.cfg.region,
                )?;
                let body = index_body(self.cfg.shards, self.cfg.replicas, &tenant.uid);
                let a = self
                    .call(Method::PUT, &[name], &[], Some(&body), As::Operator)
                    .await?;
                match a.status {
                    200 => tracing::info!(index = %name, "created Elasticsearch index"),
                    // Created by a pass that crashed or by a concurrent one: it exists.
                    400 if error_type(&a.body) == Some("resource_already_exists_exception") => {}
                    _ => return Err(self.failed(&format!("creating index {name}"), &a, &[])),
                }
                self.get_index(name)
                    .await?
                    .ok_or_else(|| ProviderError::Unavailable {
                        service: SERVICE,
                        message: format!("index {name} was created but is not visible yet"),
                    })?
            }
        };
        // Whose is it? Checked before any write (and again after a create that found the
        // index made concurrently).
        self.check_owner(name, &state, tenant)?;
        let adopted = state.owner().is_some_and(|owner| owner != tenant.uid);
        if let Some(shards) = state.shards
            && shards != self.cfg.shards
        {
            return Err(ProviderError::Refused {
                service: SERVICE,
                message: format!(
                    "index {name} has {shards} primary shards, the configuration asks for {}; \
                     the shard count of an existing index cannot change (reindex into a new \
                     index, or set search.shards to {shards})",
                    self.cfg.shards
                ),
            });
        }
        if state.replicas != Some(self.cfg.replicas) {
            let body = json!({ "index": { "number_of_replicas": self.cfg.replicas } });
            let a = self
                .call(
                    Method::PUT,
                    &[name, "_settings"],
                    &[],
                    Some(&body),
                    As::Operator,
                )
                .await?;
            if a.status != 200 {
                return Err(self.failed(&format!("setting replicas of index {name}"), &a, &[]));
            }
            tracing::info!(index = %name, replicas = self.cfg.replicas, "set index replicas");
            state.replicas = Some(self.cfg.replicas);
        }
        Ok((state, adopted))
    }

    /// Binds an index made by an earlier version, or adopted, to `tenant` (no write when
    /// it is bound to it already).
    async fn bind_index(
        &self,
        name: &str,
        state: &mut IndexState,
        tenant: &TenantInfo,
    ) -> Result<(), ProviderError> {
        if state.owner() != Some(tenant.uid.as_str()) {
            let body = bind_body(&state.meta, &tenant.uid);
            let a = self
                .call(
                    Method::PUT,
                    &[name, "_mapping"],
                    &[],
                    Some(&body),
                    As::Operator,
                )
                .await?;
            if a.status != 200 {
                return Err(self.failed(&format!("binding index {name} to its tenant"), &a, &[]));
            }
            tracing::info!(index = %name, "bound Elasticsearch index to its tenant's UID");
            if let Some(Value::Object(meta)) = body.get("_meta") {
                state.meta = meta.clone();
            }
        }
        Ok(())
    }

    // --- role ----------------------------------------------------------------------------

    async fn ensure_role(&self, name: &str, tenant: &TenantInfo) -> Result<(), ProviderError> {
        let what = format!("reading role {name}");
        let a = self
            .call(
                Method::GET,
                &["_security", "role", name],
                &[],
                None,
                As::Operator,
            )
            .await?;
        let current = match a.status {
            200 => a.body.get(name).cloned(),
            404 => None,
            _ => return Err(self.failed(&what, &a, &[])),
        };
        if current.is_some_and(|r| role_matches(&r, name, &tenant.name, &tenant.uid)) {
            return Ok(());
        }
        let body = role_body(name, &tenant.name, &tenant.uid);
        let a = self
            .call(
                Method::PUT,
                &["_security", "role", name],
                &[],
                Some(&body),
                As::Operator,
            )
            .await?;
        if a.status != 200 {
            return Err(self.failed(&format!("writing role {name}"), &a, &[]));
        }
        tracing::info!(role = %name, "wrote Elasticsearch role");
        Ok(())
    }

    /// Keeps the key the Secret holds when it is sound (no write), else replaces every key
    /// of that name by one new key. Returns the key ID and new Secret data, if any. A key
    /// bound to another tenant UID is never sound, and on adoption (`reissue`) none is: the
    /// retained tenant's keys stop working.
    async fn ensure_key(
        &self,
        name: &str,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
        reissue: bool,
    ) -> Result<(String, Option<SecretData>), ProviderError> {
        let now = now_ms();
        let active: Vec<KeyInfo> = self
            .list_keys(name)
            .await?
            .into_iter()
            .filter(|k| k.active(now))
            .collect();

        let held = secret.and_then(|s| {
            Some((
                s.get(secret_keys::API_KEY_ID)?,
                s.get(secret_keys::API_KEY)?,
                s,
            ))
        });
        if let Some((id, encoded, s)) = held.filter(|_| !reissue)
            && let Some(key) = active.iter().find(|k| k.id == id)
            && key.limited_to(name)
            && !key.bound_elsewhere(&tenant.uid)
            && self.key_authenticates(encoded, id).await?
        {
            // Sound. Other valid keys of this name are strays: invalidate them.
            let strays: Vec<String> = active
                .iter()
                .filter(|k| k.id != id)
                .map(|k| k.id.clone())
                .collect();
            self.invalidate(name, &strays).await?;
            let want = secret_data(&self.cfg.endpoint, name, id, encoded);
            let same = want.keys().all(|k| s.get(k) == want.get(k));
            return Ok((id.to_string(), (!same).then_some(want)));
        }

        // (Re)issue: first pass, missing Secret (rotation or crash after create), or a key
        // that no longer works.
        let old: Vec<String> = active.iter().map(|k| k.id.clone()).collect();
        self.invalidate(name, &old).await?;
        let (id, encoded) = self.create_key(name, tenant).await?;
        let data = secret_data(&self.cfg.endpoint, name, &id, &encoded);
        Ok((id, Some(data)))
    }
}

#[async_trait::async_trait]
impl Provider for ElasticsearchProvider {
    fn component(&self) -> Component {
        Component::Search
    }

    async fn reconcile(
        &self,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
    ) -> Result<Reconciled, ProviderError> {
        let name = self.name(tenant);
        // The deployment's region is where the index lives; nothing is sent when it is not
        // in the EU (it was validated at load; this guards a config that slipped past).
        residency::check_before_create(&format!("Elasticsearch index {name}"), &self.cfg.region)?;

        // An index bound to another tenant UID is refused here, before any write.
        let (mut index, adopted) = self.ensure_index(&name, tenant).await?;
        self.ensure_role(&name, tenant).await?;
        let (key_id, new_secret) = self.ensure_key(&name, tenant, secret, adopted).await?;
        // Binding comes last: on adoption it is the commit point, after the retained
        // tenant's keys were invalidated and the new key issued. A pass that stops before
        // it adopts again (issuing yet another key); one that stops after it finds the
        // retained keys invalidated and issues a key for a missing or unusable Secret.
        self.bind_index(&name, &mut index, tenant).await?;

        let mut message = format!(
            "index {name} ({} primary shard(s), {} replica(s)) with its role and API key in {}",
            index.shards.unwrap_or(self.cfg.shards),
            index.replicas.unwrap_or(self.cfg.replicas),
            self.cfg.region
        );
        if adopted {
            message.push_str("; adopted from the retained tenant, whose API keys were invalidated");
        }
        Ok(Reconciled {
            ready: true,
            reason: None,
            message,
            secret: new_secret,
            resources: vec![
                self.resource(KIND_INDEX, &name, index.uuid.as_deref()),
                self.resource(KIND_ROLE, &name, None),
                self.resource(KIND_KEY, &name, Some(&key_id)),
            ],
        })
    }

    async fn delete(&self, tenant: &TenantInfo) -> Result<Erased, ProviderError> {
        let name = self.name(tenant);
        let mut erased = Vec::new();

        // Another tenant's (retained) data under this name is not this tenant's to erase:
        // neither its index nor its role or keys.
        let index = self.get_index(&name).await?;
        if let Some(owner) = index.as_ref().and_then(IndexState::owner)
            && owner != tenant.uid
        {
            tracing::info!(index = %name, "index is bound to another tenant UID; not erased");
            return Ok(Erased::default());
        }

        // Keys first, so that nothing reaches the index while it is being deleted.
        // Invalidated keys stay listed (without working) until Elasticsearch's retention
        // period for invalidated keys has passed, then it removes them.
        let now = now_ms();
        let active: Vec<String> = self
            .list_keys(&name)
            .await?
            .into_iter()
            .filter(|k| k.active(now))
            .map(|k| k.id)
            .collect();
        for id in self.invalidate(&name, &active).await? {
            erased.push(self.resource(KIND_KEY, &name, Some(&id)));
        }

        if let Some(state) = index {
            let a = self
                .call(Method::DELETE, &[&name], &[], None, As::Operator)
                .await?;
            match a.status {
                200 => {
                    tracing::info!(index = %name, "deleted Elasticsearch index");
                    erased.push(self.resource(KIND_INDEX, &name, state.uuid.as_deref()));
                }
                404 if error_type(&a.body) == Some("index_not_found_exception") => {}
                _ => return Err(self.failed(&format!("deleting index {name}"), &a, &[])),
            }
        }

        let a = self
            .call(
                Method::DELETE,
                &["_security", "role", &name],
                &[],
                None,
                As::Operator,
            )
            .await?;
        match a.status {
            200 if a.body.get("found") == Some(&Value::Bool(true)) => {
                tracing::info!(role = %name, "deleted Elasticsearch role");
                erased.push(self.resource(KIND_ROLE, &name, None));
            }
            200 | 404 => {}
            _ => return Err(self.failed(&format!("deleting role {name}"), &a, &[])),
        }

        Ok(Erased {
            resources: erased,
            ..Erased::default()
        })
    }
}
