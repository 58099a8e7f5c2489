//! Outbound webhooks (docs/webhooks.md), in three parts, each the only writer of its tables:
//! - [`endpoints`]: `webhook_endpoints`, the registered receivers, their secrets and health;
//! - [`outbox`]: `webhook_events`, recorded by triggers in the transaction of the change that
//!   causes them, and the relay that fans them out into deliveries;
//! - [`deliveries`]: `webhook_deliveries` and `webhook_attempts`, a state machine like the ledger.
//!
//! This module holds what all three share: the event catalogue ([`EventType`], written once here;
//! a test checks the trigger SQL emits exactly these), the delivery job and signing.
//! Which URLs may be called: [`crate::outbound`].

pub mod deliveries;
pub mod endpoints;
pub mod outbox;
mod signing;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use deliveries::{
    Attempt, DeliveryStatus, DeliveryView, Outgoing, deliveries, outgoing, record_attempt,
    redeliver,
};
pub use endpoints::{
    AUTO_DISABLED, Change, DISABLE_AFTER, Endpoint, NewEndpoint, auto_disabled, create, delete,
    find, list, signing_secrets, update,
};
pub use outbox::{fan_out, prune};
pub use signing::{ROTATION_OVERLAP, SECRET_PREFIX, Secrets, new_secret, sign};

/// An event type an endpoint can subscribe to. The triggers in [`outbox`] record these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[sqlx(type_name = "varchar")]
pub enum EventType {
    /// The ledger's `sent`: SES accepted the email.
    #[serde(rename = "email.sent")]
    #[sqlx(rename = "email.sent")]
    EmailSent,
    /// SES reported delivery.
    #[serde(rename = "email.delivered")]
    #[sqlx(rename = "email.delivered")]
    EmailDelivered,
    /// SES reported a bounce.
    #[serde(rename = "email.bounced")]
    #[sqlx(rename = "email.bounced")]
    EmailBounced,
    /// SES reported a complaint.
    #[serde(rename = "email.complained")]
    #[sqlx(rename = "email.complained")]
    EmailComplained,
    /// SES event publishing: the recipient opened it (its open-tracking image loaded).
    #[serde(rename = "email.opened")]
    #[sqlx(rename = "email.opened")]
    EmailOpened,
    /// SES event publishing: the recipient followed a tracked link.
    #[serde(rename = "email.clicked")]
    #[sqlx(rename = "email.clicked")]
    EmailClicked,
    /// SES event publishing: the receiving server has not taken it yet; SES keeps trying.
    #[serde(rename = "email.delivery_delayed")]
    #[sqlx(rename = "email.delivery_delayed")]
    EmailDeliveryDelayed,
    /// SES event publishing: SES refused it after accepting it (Reject, Rendering Failure); final.
    #[serde(rename = "email.rejected")]
    #[sqlx(rename = "email.rejected")]
    EmailRejected,
    /// The ledger's `failed`.
    #[serde(rename = "email.failed")]
    #[sqlx(rename = "email.failed")]
    EmailFailed,
    /// The ledger's `suppressed`: blocked at send time.
    #[serde(rename = "email.suppressed")]
    #[sqlx(rename = "email.suppressed")]
    EmailSuppressed,
    /// An address was added to the suppression list.
    #[serde(rename = "suppression.created")]
    #[sqlx(rename = "suppression.created")]
    SuppressionCreated,
    /// An address was removed from it.
    #[serde(rename = "suppression.removed")]
    #[sqlx(rename = "suppression.removed")]
    SuppressionRemoved,
    /// The compliance guard paused a category.
    #[serde(rename = "compliance.paused")]
    #[sqlx(rename = "compliance.paused")]
    CompliancePaused,
    /// A paused category was resumed.
    #[serde(rename = "compliance.resumed")]
    #[sqlx(rename = "compliance.resumed")]
    ComplianceResumed,
}

impl EventType {
    /// Every event type, in the documented order.
    pub const ALL: [Self; 14] = [
        Self::EmailSent,
        Self::EmailDelivered,
        Self::EmailBounced,
        Self::EmailComplained,
        Self::EmailOpened,
        Self::EmailClicked,
        Self::EmailDeliveryDelayed,
        Self::EmailRejected,
        Self::EmailFailed,
        Self::EmailSuppressed,
        Self::SuppressionCreated,
        Self::SuppressionRemoved,
        Self::CompliancePaused,
        Self::ComplianceResumed,
    ];

    /// The name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmailSent => "email.sent",
            Self::EmailDelivered => "email.delivered",
            Self::EmailBounced => "email.bounced",
            Self::EmailComplained => "email.complained",
            Self::EmailOpened => "email.opened",
            Self::EmailClicked => "email.clicked",
            Self::EmailDeliveryDelayed => "email.delivery_delayed",
            Self::EmailRejected => "email.rejected",
            Self::EmailFailed => "email.failed",
            Self::EmailSuppressed => "email.suppressed",
            Self::SuppressionCreated => "suppression.created",
            Self::SuppressionRemoved => "suppression.removed",
            Self::CompliancePaused => "compliance.paused",
            Self::ComplianceResumed => "compliance.resumed",
        }
    }

    /// The event type named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Every name, for messages and the OpenAPI document.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.map(Self::as_str).to_vec()
    }

    /// An example body, as an endpoint that did not opt into addresses receives it (the OpenAPI
    /// document's `webhooks` section; a test checks each against a real event's fields).
    pub fn example_body(self) -> serde_json::Value {
        use serde_json::json;
        let email = json!({
            "job_id": "01KBDB7CW0J3M4N5P6Q7R8S9TV",
            "template": "welcome",
            "category": "transactional",
            "ses_message_id": "0100019ae3b1a2c3-5f1e2d3c-0000-4a5b-9c8d-7e6f5a4b3c2d-000000",
            "recipient": "a***@example.com",
            "tags": {},
        });
        let (extra, sequence) = match self {
            Self::EmailSent => (json!({"sent_at": "2026-12-02T05:40:20.400Z"}), 1),
            Self::EmailDelivered => (json!({"delivered_at": "2026-12-02T05:40:21.950Z"}), 2),
            Self::EmailBounced => (
                json!({"bounced_at": "2026-12-02T05:40:22.100Z", "bounce_type": "Permanent", "hard": true}),
                2,
            ),
            Self::EmailComplained => (json!({"complained_at": "2026-12-02T07:12:03.000Z"}), 3),
            Self::EmailOpened => (
                json!({"opened_at": "2026-12-02T06:01:10.250Z",
                       "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)"}),
                3,
            ),
            Self::EmailClicked => (
                json!({"clicked_at": "2026-12-02T06:01:42.800Z",
                       "link": "https://app.example.com/welcome?step=1",
                       "link_tags": {"campaign": ["welcome"]},
                       "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)"}),
                4,
            ),
            Self::EmailDeliveryDelayed => (
                json!({"delayed_at": "2026-12-02T05:45:20.400Z",
                       "delay_type": "TransientCommunicationFailure",
                       "expiration_time": "2026-12-03T05:40:20.400Z"}),
                2,
            ),
            Self::EmailRejected => (
                json!({"rejected_at": "2026-12-02T05:40:20.900Z", "kind": "reject",
                       "reason": "Bad content"}),
                2,
            ),
            Self::EmailFailed => (
                json!({"reason": "SES: MessageRejected: Email address is not verified", "ses_message_id": null}),
                1,
            ),
            Self::EmailSuppressed => (json!({"ses_message_id": null}), 1),
            Self::SuppressionCreated => {
                return self.example(
                    json!({"type": "bounce", "reason": "Permanent bounce (General)",
                       "transactional": true, "marketing": true,
                       "recipient": "a***@example.com"}),
                );
            }
            Self::SuppressionRemoved => {
                return self.example(json!({"type": "bounce", "recipient": "a***@example.com"}));
            }
            Self::CompliancePaused => {
                return self.example(
                    json!({"category": "marketing", "reason": "bounce rate 5.2 % over 24 h (threshold 5 %)"}),
                );
            }
            Self::ComplianceResumed => {
                return self.example(json!({"category": "marketing", "reason": null}));
            }
        };
        let mut data = email;
        if let (Some(map), serde_json::Value::Object(more)) = (data.as_object_mut(), extra) {
            map.extend(more);
            map.insert("sequence".into(), json!(sequence));
        }
        self.example(data)
    }

    fn example(self, data: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"type": self.as_str(), "timestamp": "2026-12-02T05:40:20.400Z", "data": data})
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The names of `types`, as the `events` column stores them.
pub(crate) fn type_names(types: &[EventType]) -> Vec<String> {
    types.iter().map(|t| t.as_str().to_owned()).collect()
}

/// The queue of webhook deliveries (the relay queues one job per delivery).
pub const WEBHOOK_QUEUE: &str = crate::jobs::Queue::Webhooks.name();

/// Runs a delivery job is allowed: with the worker's backoff, about three days.
pub const DELIVERY_RUNS: u32 = 24;

/// The payload of a delivery job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WebhookJob {
    /// The `webhook_deliveries` row.
    pub delivery_id: Uuid,
}

impl crate::jobs::QueueJob for WebhookJob {
    const QUEUE: &'static str = WEBHOOK_QUEUE;
}

#[cfg(test)]
mod tests {
    use super::EventType;

    #[test]
    fn event_types_round_trip_through_their_names_and_serde() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(
                serde_json::to_value(t).expect("json"),
                serde_json::json!(t.as_str())
            );
            assert_eq!(t.example_body()["type"], t.as_str());
        }
        assert_eq!(EventType::parse("email.open"), None);
    }
}
