//! Test doubles of the external services, shared by the integration suites. Each file says
//! which published documentation its behaviour follows. Every double listens on 127.0.0.1.
#![allow(dead_code)]

pub mod cloudsql;
pub mod cloudsql_pg;
pub mod cluster;
pub mod elasticsearch;
pub mod fake_kube;
pub mod fake_provider;
pub mod gcs;
pub mod pg;
pub mod pgproxy;
pub mod postmark;
