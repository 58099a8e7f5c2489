//! Herald's shared library: configuration, database access and the schema's query functions.

pub mod address;
pub mod compliance;
pub mod config;
pub mod db;
pub mod email;
pub mod feedback;
pub mod group;
pub mod job_search;
pub mod jobs;
pub mod maintenance;
pub mod metrics;
pub mod outbound;
pub mod phrases;
pub mod secret;
pub mod suppressions;
pub mod telemetry;
pub mod time;
pub mod tokens;
pub mod unsubscribe;
pub mod users;
pub mod webhooks;

pub use config::{ConfigError, DbConfig};
pub use secret::Secret;
