//! API tests: the real router on a real database (one per test), over HTTP.

mod admin;
mod api;
mod browser;
mod console;
mod hardening;
mod message;
mod webhooks;
