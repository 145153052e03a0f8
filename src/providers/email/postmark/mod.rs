//! Postmark server per tenant, through the Account API (`X-Postmark-Account-Token`).
//!
//! Every tenant gets one Postmark "server" named `<serverNamePrefix>-<tenant>`
//! ([`server_name`]). The endpoints used are those of Postmark's published Account API
//! description (`account.yml`, Swagger 2.0; a trimmed copy is vendored in
//! `tests/specs/postmark-account-servers.swagger.yaml`) and of the servers API reference
//! (<https://postmarkapp.com/developer/api/servers-api>):
//!
//! | step       | request                                              |
//! |------------|------------------------------------------------------|
//! | observe    | `GET /servers?count=500&offset=N&name=<name>`        |
//! | create     | `POST /servers` (without `InboundDomain`)            |
//! | read token | `GET /servers/{serverid}` (only if a listing lacks it)|
//! | repair     | `PUT /servers/{serverid}` (only the drifted fields)  |
//! | inbound    | the same `PUT`, which also sets `InboundDomain`      |
//! | erase      | `DELETE /servers/{serverid}`                         |
//!
//! The `name` filter of the listing is a substring match, so the answer is filtered for the
//! exact name and paged through. A crash after `POST /servers` succeeded is healed by the
//! next pass finding the server by name and reading its token from it: never a second
//! server.
//!
//! The tenant's Secret holds [`SECRET_SERVER_TOKEN`] (`POSTMARK_SERVER_TOKEN`, the server's
//! API token, `ApiTokens[0]`, used as `X-Postmark-Server-Token` to send mail) and
//! [`SECRET_SERVER_ID`] (`POSTMARK_SERVER_ID`, Postmark's numeric server ID). Nothing else.
//!
//! Residency: Postmark hosts every server in the United States; there is no EU hosting.
//! Postmark is registered as a third-country processor under EU standard contractual
//! clauses (see [`crate::processors`]), so this provider does not call
//! [`crate::providers::residency::check_before_create`] (it would refuse every create); the
//! cluster policy that may forbid third-country processors is enforced by the reconciler
//! before any provider is called. Resources are reported with location
//! [`POSTMARK_LOCATION`] (`us`), and Postmark reports no location of its own to check.
//!
//! Errors (status codes and error codes from <https://postmarkapp.com/developer/api/overview>):
//! 401 (bad or missing account token, ErrorCode 10) is permanent and never shows the token;
//! 422 with `{"ErrorCode", "Message"}` is permanent and shows both (603 "Server name already
//! exists", 601 "Server does not exist", 604 "You don't have delete access", ...); 429, 5xx,
//! timeouts and refused connections are transient.
//!
//! Inbound domain: Postmark refuses a domain without an MX record for
//! `inbound.postmarkapp.com` (ErrorCode 610) or one in use by another server anywhere on
//! Postmark (602). The create therefore leaves the domain out and the edit after it sets it;
//! when that edit is refused for the domain, the rest of it is sent again without the domain,
//! the server and its token are issued as usual, and the pass reports `ready: false` with
//! reason [`INBOUND_DOMAIN_REJECTED`] and what to fix. Every later pass tries the domain again.

mod client;
mod config;
mod desired;
mod errors;

use crate::processors::ids;
use crate::providers::{
    Component, Erased, ExternalResource, Provider, ProviderError, Reconciled, SecretData,
    TenantInfo,
};

pub use client::{PAGE_SIZE, PostmarkProvider};
pub use config::{DeliveryType, PostmarkConfig, TrackLinks, read_account_token};
pub use desired::{
    CreateServer, DesiredServer, EditServer, Server, exact_matches, inbound_domain, server_name,
};
pub use errors::{
    Operation, classify, error_codes, inbound_domain_problem, inbound_domain_refusal,
    is_duplicate_name, is_not_found,
};

use errors::refused;

/// Postmark servers are hosted in the United States; there is no EU hosting.
pub const POSTMARK_LOCATION: &str = "us";

/// The service name in errors and conditions.
pub const SERVICE: &str = "Postmark";

/// Secret key: the server's API token (`X-Postmark-Server-Token` for sending).
pub const SECRET_SERVER_TOKEN: &str = "POSTMARK_SERVER_TOKEN";
/// Secret key: Postmark's numeric server ID.
pub const SECRET_SERVER_ID: &str = "POSTMARK_SERVER_ID";

/// Condition reason while Postmark refuses the tenant's inbound domain (ErrorCode 602 or
/// 610); the server and its token work meanwhile.
pub const INBOUND_DOMAIN_REJECTED: &str = "InboundDomainRejected";

/// The kind of the one external resource, as planned and reported.
pub const RESOURCE_KIND: &str = "PostmarkServer";

/// Header that carries the account token.
pub const ACCOUNT_TOKEN_HEADER: &str = "X-Postmark-Account-Token";

#[async_trait::async_trait]
impl Provider for PostmarkProvider {
    fn component(&self) -> Component {
        Component::Email
    }

    async fn reconcile(
        &self,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
    ) -> Result<Reconciled, ProviderError> {
        let desired = self.cfg.desired(&tenant.name);

        // Observe by name (a crash after create is healed here), then by the Secret's ID.
        let mut found = self.find_by_name(&desired.name).await?;
        if found.len() > 1 {
            let ids: Vec<String> = found.iter().map(|s| s.id.to_string()).collect();
            return Err(refused(format!(
                "{} servers are named {} (IDs {}); exactly one is expected: remove the others \
                 in Postmark",
                found.len(),
                desired.name,
                ids.join(", ")
            )));
        }
        let mut observed = found.pop();
        if observed.is_none() {
            observed = self.find_by_secret(secret).await?;
        }

        // Create what is missing. No `residency::check_before_create`: Postmark has no EU
        // hosting and is an allowed third-country processor (SCCs); the policy that may
        // forbid such processors is the reconciler's, before this call (see module docs).
        let mut created = false;
        let server = match observed {
            Some(s) => s,
            None => match self.create_server(&desired.create_body()).await? {
                Ok(s) => {
                    created = true;
                    tracing::info!(service = SERVICE, server = %s.name, id = s.id, "server created");
                    s
                }
                Err(raw) => {
                    // Name taken although the lookup found none: a concurrent create, or a
                    // server whose name differs only in case. Adopt an exact match only.
                    let mut again = self.find_by_name(&desired.name).await?;
                    if again.len() == 1 {
                        again.remove(0)
                    } else {
                        return Err(raw.into_error(Operation::Create, &self.token));
                    }
                }
            },
        };

        if let Some(conflict) = desired.delivery_type_conflict(&server) {
            return Err(refused(conflict));
        }

        // Bring drifted settings back (also checks what a create returned, and sets the
        // inbound domain, which the create leaves out). A refused inbound domain (602, 610)
        // does not fail the pass: the rest of the edit is made, the server and its token
        // are reported, and the condition says what is wrong with the domain.
        let edit = desired.edit_for(&server);
        let mut repaired = edit.fields();
        let mut inbound_problem = None;
        let server = if edit.is_empty() {
            server
        } else {
            tracing::info!(service = SERVICE, server = %desired.name, id = server.id,
                fields = ?repaired, "repairing drifted server settings");
            let edited = match self.edit_server_raw(server.id, &edit).await? {
                Ok(s) => s,
                Err(raw) => {
                    let refusal = edit
                        .sets_inbound_domain()
                        .zip(inbound_domain_refusal(raw.status, &raw.body));
                    let Some((domain, (code, text))) = refusal else {
                        return Err(raw.into_error(Operation::Edit, &self.token));
                    };
                    let problem = inbound_domain_problem(domain, code, &text)
                        .replace(self.token.as_str(), "<redacted>");
                    tracing::warn!(service = SERVICE, server = %desired.name, id = server.id,
                        code, "Postmark refused the inbound domain; the server works without it");
                    inbound_problem = Some(problem);
                    repaired.retain(|f| *f != "InboundDomain");
                    let rest = edit.without_inbound_domain();
                    if rest.is_empty() {
                        server.clone()
                    } else {
                        self.edit_server(server.id, &rest).await?
                    }
                }
            };
            let mut edited = edited;
            if edited.api_tokens.is_empty() {
                edited.api_tokens = server.api_tokens;
            }
            edited
        };

        // Credentials. Postmark's Account API (the servers endpoints used here) cannot
        // rotate a server's API token, so a lost Secret is reissued with the current token
        // read back from the server; a person can add and remove tokens in Postmark's UI,
        // and the next pass then issues the new one.
        let tokens = self.tokens_of(&server).await?;
        let id = server.id.to_string();
        let secret_is_current = secret.is_some_and(|s| {
            s.get(SECRET_SERVER_ID) == Some(id.as_str())
                && s.get(SECRET_SERVER_TOKEN)
                    .is_some_and(|t| tokens.iter().any(|x| x == t))
        });
        let new_secret = (!secret_is_current).then(|| {
            SecretData::new()
                .with(SECRET_SERVER_TOKEN, tokens[0].clone())
                .with(SECRET_SERVER_ID, id.clone())
        });

        let what = if created {
            "created".to_string()
        } else if !repaired.is_empty() {
            format!("repaired {}", repaired.join(", "))
        } else {
            "in sync".to_string()
        };
        let issued = match (&new_secret, secret) {
            (Some(_), None) => "; credentials issued",
            (Some(_), Some(_)) => "; credentials reissued",
            (None, _) => "",
        };
        let mut message = format!(
            "Postmark server {} (ID {id}, {}) {what}{issued}",
            desired.name,
            desired.delivery_type.as_str()
        );
        if let Some(problem) = &inbound_problem {
            message.push_str("; ");
            message.push_str(problem);
        }
        Ok(Reconciled {
            ready: inbound_problem.is_none(),
            reason: inbound_problem.as_ref().map(|_| INBOUND_DOMAIN_REJECTED),
            message,
            secret: new_secret,
            resources: vec![
                ExternalResource::new(
                    RESOURCE_KIND,
                    desired.name.clone(),
                    Some(POSTMARK_LOCATION.into()),
                    ids::POSTMARK,
                )
                .with_id(id),
            ],
            recheck_after: None,
        })
    }

    async fn delete(&self, tenant: &TenantInfo) -> Result<Erased, ProviderError> {
        let name = server_name(&self.cfg.server_name_prefix, &tenant.name);
        let mut erased = Erased::default();
        for server in self.find_by_name(&name).await? {
            if self.delete_server(server.id).await? {
                tracing::info!(service = SERVICE, server = %name, id = server.id, "server deleted");
                erased.resources.push(
                    ExternalResource::new(
                        RESOURCE_KIND,
                        name.clone(),
                        Some(POSTMARK_LOCATION.into()),
                        ids::POSTMARK,
                    )
                    .with_id(server.id.to_string()),
                );
            }
        }
        Ok(erased)
    }
}
