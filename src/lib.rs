//! dealertenant-operator: one `DealerTenant` becomes a customer's complete, isolated,
//! EU-only stack.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod config_reference;
pub mod controller;
pub mod desired;
pub mod logging;
pub mod plan;
pub mod processors;
pub mod providers;
pub mod table;
pub mod trace;
