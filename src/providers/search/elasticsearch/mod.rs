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
//!   authenticates) and nothing is written; without one (first pass, or a deliberate
//!   rotation by deleting the Secret) a new key is created first. Rotation has no outage:
//!   the other valid keys of that name (the one replaced, or one a crashed pass created
//!   and never handed over) are not invalidated in that pass but reported by
//!   `reconcile_rotating` to retire; the reconciler lists their IDs on the Secret and
//!   calls `retire` once the server Deployment, whose pod template carries a hash of the
//!   Secrets, has rolled out. A crash anywhere leaves the key the Pods hold valid. Keys
//!   wider than the tenant's index or bound to another tenant UID are invalidated at once.
//!   `reconcile` alone (no rollout to wait for) retires right after the new key is issued.
//!
//! Files: `config.rs` (configuration, names), `desired.rs` (pure bodies and drift),
//! `keys.rs` (which keys to keep, revoke or retire), `client.rs` (the wire and the
//! operator's credential), `errors.rs` (classification of answers).
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
pub use keys::{KeyInfo, KeyJudgement, judge_keys, parse_keys};

use reqwest::Method;
use serde_json::{Value, json};

use crate::providers::{
    Component, Erased, Provider, ProviderError, Reconciled, Rotating, SecretData, TenantInfo,
    residency,
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

    /// Keeps the key the Secret holds when it is sound (no write), else creates a new key
    /// first. Returns the key ID, new Secret data if any, and the other sound keys of the
    /// name, which are not revoked now but retired after the rollout (the key a rotation
    /// replaced keeps the running Pods working until then; a crash anywhere leaves a valid
    /// key). A key wider than the tenant's index or bound to another tenant UID is revoked
    /// at once, and on adoption (`reissue`) every key is: the retained tenant's keys stop
    /// working.
    async fn ensure_key(
        &self,
        name: &str,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
        reissue: bool,
    ) -> Result<(String, Option<SecretData>, Vec<String>), ProviderError> {
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
        let judged = judge_keys(&active, held.map(|h| h.0), name, &tenant.uid, reissue);
        self.invalidate(name, &judged.revoke_now).await?;
        let mut retire = judged.retire_later;
        if let Some((id, encoded, s)) = held
            && judged.candidate.as_deref() == Some(id)
        {
            if self.key_authenticates(encoded, id).await? {
                let want = secret_data(&self.cfg.endpoint, name, id, encoded);
                let same = want.keys().all(|k| s.get(k) == want.get(k));
                return Ok((id.to_string(), (!same).then_some(want), retire));
            }
            // Listed as valid, but the Secret's secret does not authenticate as it: a
            // replacement is issued, and the key is retired with the others.
            retire.push(id.to_string());
        }

        // Issue first: first pass, a missing Secret (a rotation, or a crash after a create),
        // or a key that no longer works. The old keys keep working until retired.
        let (id, encoded) = self.create_key(name, tenant).await?;
        let data = secret_data(&self.cfg.endpoint, name, &id, &encoded);
        Ok((id, Some(data), retire))
    }

    /// Reconciles and returns, besides the result, the keys to retire after the rollout.
    async fn reconcile_keys(
        &self,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
    ) -> Result<Rotating, ProviderError> {
        let name = self.name(tenant);
        // The deployment's region is where the index lives; nothing is sent when it is not
        // in the EU (it was validated at load; this guards a config that slipped past).
        residency::check_before_create(&format!("Elasticsearch index {name}"), &self.cfg.region)?;

        // An index bound to another tenant UID is refused here, before any write.
        let (mut index, adopted) = self.ensure_index(&name, tenant).await?;
        self.ensure_role(&name, tenant).await?;
        let (key_id, new_secret, retire) = self.ensure_key(&name, tenant, secret, adopted).await?;
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
        Ok(Rotating {
            reconciled: Reconciled {
                ready: true,
                reason: None,
                message,
                secret: new_secret,
                resources: vec![
                    self.resource(KIND_INDEX, &name, index.uuid.as_deref()),
                    self.resource(KIND_ROLE, &name, None),
                    self.resource(KIND_KEY, &name, Some(&key_id)),
                ],
                recheck_after: None,
            },
            retire,
        })
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
        // Without a rollout to wait for, the replaced keys are retired right away, after
        // the new key was issued.
        let done = self.reconcile_keys(tenant, secret).await?;
        self.retire(tenant, &done.retire).await?;
        Ok(done.reconciled)
    }

    async fn reconcile_rotating(
        &self,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
    ) -> Result<Rotating, ProviderError> {
        self.reconcile_keys(tenant, secret).await
    }

    /// Invalidates those of `ids` that are valid keys of this tenant's name (the IDs come
    /// from an annotation: an ID of any other key is ignored).
    async fn retire(&self, tenant: &TenantInfo, ids: &[String]) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        let name = self.name(tenant);
        let now = now_ms();
        let ours: Vec<String> = self
            .list_keys(&name)
            .await?
            .into_iter()
            .filter(|k| k.active(now) && ids.contains(&k.id))
            .map(|k| k.id)
            .collect();
        self.invalidate(&name, &ours).await?;
        Ok(())
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
