//! The operator's own rights: who it is to the API server, and the RoleBinding that lets it
//! write in one tenant namespace (see `deploy/base/rbac.yaml` and [`crate::desired::access`]).

use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::rbac::v1::Subject;
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::debug;

use super::apply::ensure;
use super::context::Context;
use super::error::Error;
use crate::api::DealerTenant;
use crate::desired::{self, access, names};

/// How long a new RoleBinding may take to reach the API server's authorizer.
const GRANT_DEADLINE: Duration = Duration::from_secs(10);
const GRANT_POLL: Duration = Duration::from_millis(50);

/// Who the operator is, as the API server sees its credentials (a SelfSubjectReview, which
/// every authenticated user may create).
pub async fn whoami(client: &Client) -> anyhow::Result<Subject> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| anyhow::anyhow!("cannot ask the API server who the operator is: {e}"))?;
    let username = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| anyhow::anyhow!("the API server did not say who the operator is"))?;
    Ok(access::subject_of(&username))
}

/// Makes sure the operator holds its rights in the tenant namespace. A binding just
/// written takes a moment to reach the authorizer: the pass waits for it (asking with
/// SelfSubjectAccessReviews, which write nothing) rather than run into 403s.
pub async fn ensure_access(t: &DealerTenant, ctx: &Context) -> Result<(), Error> {
    let binding =
        access::role_binding(t.tenant_name(), &desired::owner_reference(t), &ctx.operator);
    if ensure(ctx, &ctx.stores.role_bindings, &binding)
        .await?
        .wrote
    {
        wait_until_granted(ctx, &names::namespace(t.tenant_name())).await?;
    }
    Ok(())
}

async fn wait_until_granted(ctx: &Context, namespace: &str) -> Result<(), Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(ctx.client.clone());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.into()),
                verb: Some("patch".into()),
                group: Some("apps".into()),
                resource: Some("deployments".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let started = tokio::time::Instant::now();
    let mut asked = 0u32;
    loop {
        asked += 1;
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Error::kube(format!("review access in namespace {namespace}"), e))?;
        if answer.status.is_some_and(|s| s.allowed) {
            debug!(%namespace, asked, waited_ms = started.elapsed().as_millis() as u64, "access granted");
            return Ok(());
        }
        if started.elapsed() >= GRANT_DEADLINE {
            return Err(Error::AccessPending(format!(
                "RoleBinding {namespace}/{} does not grant the operator its rights after {}s; \
                 check that deploy/base/rbac.yaml (ClusterRole {}) is installed",
                access::BINDING,
                GRANT_DEADLINE.as_secs(),
                access::TENANT_ROLE
            )));
        }
        tokio::time::sleep(GRANT_POLL).await;
    }
}
