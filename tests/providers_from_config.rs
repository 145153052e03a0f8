//! Building the providers from the built-in configuration never fails the operator: a
//! provider whose credential is missing is left out with a reason its components show.

use dealertenant_operator::config::OperatorConfig;
use dealertenant_operator::providers::{self, Component};

#[tokio::test]
async fn missing_credentials_leave_a_reason_not_a_crash() {
    for var in [
        "POSTMARK_ACCOUNT_TOKEN",
        "ELASTICSEARCH_API_KEY",
        "DEALERTENANT_POSTGRES_PASSWORD",
    ] {
        assert!(
            std::env::var_os(var).is_none(),
            "{var} must not be set for this test"
        );
    }
    let built = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        providers::from_config(&OperatorConfig::default(), &Default::default()),
    )
    .await
    .expect("building providers does not hang")
    .expect("building providers does not fail");
    for c in Component::ORDER {
        let available = built.get(c).is_some();
        let reason = built.why_unavailable(c);
        assert!(available || !reason.is_empty(), "{c}");
    }
    let email = built.why_unavailable(Component::Email);
    assert!(built.get(Component::Email).is_none());
    assert!(email.contains("POSTMARK_ACCOUNT_TOKEN"), "{email}");
    let search = built.why_unavailable(Component::Search);
    assert!(built.get(Component::Search).is_none());
    assert!(search.contains("ELASTICSEARCH"), "{search}");
}
