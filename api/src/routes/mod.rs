//! The HTTP routes, one module per resource.

pub mod admin;
pub mod admin_templates;
pub mod batch;
pub mod compliance;
pub mod console;
pub mod email_view;
pub mod emails;
pub mod health;
pub mod jobs;
pub mod schedules;
pub mod suppressions;
pub mod templates;
pub mod unsubscribe;
pub mod users;
pub mod webhooks;
