//! Test doubles of the external services, shared by the integration suites. Each file says
//! which published documentation its behaviour follows. Every double listens on 127.0.0.1.
#![allow(dead_code)]
pub mod pgproxy;
