//! expense-sync: export expense data from the Fyle platform into CSV, Parquet
//! and other systems — incremental, exact to the cent, and polite to the API.
//!
//! Data flows `config` → `auth` → `sources` → `transforms` → `sinks`, wired by
//! `pipeline`; every outbound request goes through `http`.

pub mod auth;
pub mod cli;
pub mod common;
pub mod config;
pub mod error;
pub mod extract;
pub mod failpoint;
pub mod fsutil;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod record;
pub mod row;
pub mod simulator;
pub mod sinks;
pub mod sources;
pub mod state;
pub mod store;
pub mod tenants;
pub mod transforms;

pub use error::{Error, ExitCode};
