//! Worker tests: the retry policy against a mocked SES (aws-smithy-mocks) with real apalis workers
//! and a real database, and end-to-end runs of the real binaries against moto.

mod backend;
mod chaos;
mod console;
mod drain;
mod e2e;
mod engagement;
mod feedback;
mod helpers;
mod ledger;
mod maintenance;
mod message;
mod retry_policy;
mod ses_dispatch;
mod ses_stub;
mod sns_trust;
mod templates;
mod unsubscribe;
mod webhooks;
