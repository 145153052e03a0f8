//! No generated credential ever reaches a log line, an Event, the status or an error
//! message: a full provisioning, a rotation and an erasure run with every log level on,
//! and the captured output and every request body outside Secrets are searched.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use dealertenant_operator::api::{DealerTenant, DealerTenantSpec};
use dealertenant_operator::config::OperatorConfig;
use dealertenant_operator::providers::{Component, Provider, Providers};
use support::fake_kube::{World, pass};
use support::fake_provider::{FakeProvider, Fault, Injector};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_generated_secret_appears_in_logs_events_status_or_errors() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let spec: DealerTenantSpec = serde_saphyr::from_str(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}, deletionPolicy: Delete}",
    )
    .unwrap();
    let world = World::new(&DealerTenant::new("acme", spec));
    let injector = Injector::new();
    let fakes: Vec<_> = Component::ORDER
        .iter()
        .map(|c| FakeProvider::new(*c, "europe-west3", injector.clone()))
        .collect();
    let providers = Providers::new(
        fakes
            .iter()
            .map(|f| f.clone() as Arc<dyn Provider>)
            .collect(),
    );
    let cfg = OperatorConfig::default();
    let mut errors = Vec::new();
    let mut issued = Vec::new();
    let mut run = |result: Option<Result<_, dealertenant_operator::controller::Error>>| {
        if let Some(Err(e)) = result {
            errors.push(format!("{e} {e:?}"));
        }
    };

    for _ in 0..3 {
        run(pass(&world, &cfg, &providers, &injector).await);
    }
    issued.extend(fakes.iter().flat_map(|f| {
        f.resources
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect::<Vec<_>>()
    }));
    // Rotation, with a failure in the middle of it.
    world
        .lock()
        .unwrap()
        .objects
        .retain(|p, _| !p.ends_with("/secrets/database"));
    injector.arm(injector.calls() + 3, Fault::After);
    for _ in 0..3 {
        run(pass(&world, &cfg, &providers, &injector).await);
    }
    issued.extend(fakes.iter().flat_map(|f| {
        f.resources
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect::<Vec<_>>()
    }));
    // Erasure.
    world.lock().unwrap().tenant["metadata"]["deletionTimestamp"] =
        serde_json::json!("2026-11-27T00:00:00Z");
    for _ in 0..4 {
        run(pass(&world, &cfg, &providers, &injector).await);
    }
    assert!(
        world.lock().unwrap().tenant.is_null(),
        "the tenant was erased"
    );

    issued.sort();
    issued.dedup();
    assert!(
        issued.len() >= 5,
        "credentials were issued and rotated: {}",
        issued.len()
    );
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("erased"), "logging was captured");
    let bodies = world.lock().unwrap().bodies.join("\n");
    assert!(bodies.contains("\"status\""), "status writes were captured");
    assert!(!errors.is_empty(), "an error message was captured");
    for secret in &issued {
        assert!(
            !logs.contains(secret.as_str()),
            "a credential is in the logs"
        );
        assert!(
            !bodies.contains(secret.as_str()),
            "a credential is in a status, Event or object"
        );
        assert!(
            errors.iter().all(|e| !e.contains(secret.as_str())),
            "a credential is in an error"
        );
    }
}
