//! Herald's shared library: configuration, database access and the schema's query functions.

pub mod config;
pub mod db;
pub mod phrases;
pub mod secret;
pub mod telemetry;

pub use config::{ConfigError, DbConfig};
pub use secret::Secret;
