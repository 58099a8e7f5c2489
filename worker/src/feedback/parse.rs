//! Reads what arrives on the feedback queue: an SNS envelope, bare SES JSON or an EventBridge event,
//! in SES's notification format (`notificationType`) or event-publishing format (`eventType`).
//! Parsing is lenient about extra fields and strict about the ones the policy needs.

use chrono::{DateTime, Utc};
use serde_json::Value;

use herald_shared::address;

/// What one queue message holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// SNS `SubscriptionConfirmation` / `UnsubscribeConfirmation`: logged and deleted, never applied.
    Control {
        /// The SNS `Type`.
        kind: String,
        /// The topic it concerns.
        topic_arn: Option<String>,
        /// `SubscribeURL`: visiting it confirms the subscription.
        subscribe_url: Option<String>,
    },
    /// SES feedback, one entry per recipient.
    Feedback {
        /// The SNS topic, when it came through SNS.
        topic_arn: Option<String>,
        /// Per-recipient events.
        events: Vec<RecipientEvent>,
        /// The SES JSON, stored with each event.
        raw: Value,
    },
}

/// What SES reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A bounce (`bounce_type` says which).
    Bounce,
    /// A complaint.
    Complaint,
    /// A delivery.
    Delivery,
    /// Any other SES event type (Send, Reject, Open, …), lower case; recorded, no policy.
    Other(String),
}

impl Kind {
    /// The stored `event_type`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Bounce => "bounce",
            Self::Complaint => "complaint",
            Self::Delivery => "delivery",
            Self::Other(t) => t,
        }
    }
}

/// One recipient's part of an SES notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientEvent {
    /// The kind.
    pub kind: Kind,
    /// Address, normalised.
    pub recipient: String,
    /// `mail.messageId`: the id SendEmail returned.
    pub ses_message_id: Option<String>,
    /// `feedbackId` of a bounce or complaint.
    pub feedback_id: Option<String>,
    /// `Permanent`, `Transient` or `Undetermined`.
    pub bounce_type: Option<String>,
    /// `General`, `NoEmail`, `MailboxFull`, …
    pub bounce_sub_type: Option<String>,
    /// `complaintFeedbackType` (`abuse`, `not-spam`, …).
    pub complaint_type: Option<String>,
    /// When SES says it happened.
    pub occurred_at: DateTime<Utc>,
    /// Same SES event, same key: what makes a duplicate delivery harmless.
    pub dedupe_key: String,
}

/// Why a message cannot be used; it stays on the queue and ends in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable feedback: {0}")]
pub struct ParseError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// How a message reached the queue; `FEEDBACK_FORMATS` says which are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// An SNS envelope (raw delivery off): signed by SNS.
    Sns,
    /// The bare SES JSON (SNS raw delivery on, or anything else that writes to the queue).
    Raw,
    /// An EventBridge event (`source: aws.ses`).
    EventBridge,
}

impl Format {
    /// Every format.
    pub const ALL: [Self; 3] = [Self::Sns, Self::Raw, Self::EventBridge];

    /// The name in `FEEDBACK_FORMATS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sns => "sns",
            Self::Raw => "raw",
            Self::EventBridge => "eventbridge",
        }
    }

    /// Which format a parsed message body is in.
    pub fn of(outer: &Value) -> Self {
        if outer.get("Type").is_some_and(Value::is_string) {
            Self::Sns
        } else if outer.get("source").and_then(Value::as_str) == Some("aws.ses") {
            Self::EventBridge
        } else {
            Self::Raw
        }
    }
}

/// Reads a queue message body as a JSON object (the first step; [`parse_value`] is the second).
pub fn json_object(body: &str) -> Result<Value, ParseError> {
    let outer: Value = serde_json::from_str(body).or_else(|e| err(format!("not JSON: {e}")))?;
    if !outer.is_object() {
        return err("not a JSON object");
    }
    Ok(outer)
}

/// Parses one queue message body.
pub fn parse(body: &str) -> Result<Body, ParseError> {
    parse_value(json_object(body)?)
}

/// Parses a queue message body already read as a JSON object.
pub fn parse_value(outer: Value) -> Result<Body, ParseError> {
    match Format::of(&outer) {
        Format::Sns => {
            let kind = text(&outer, "Type").unwrap_or_default();
            let topic_arn = text(&outer, "TopicArn");
            match kind.as_str() {
                "Notification" => {
                    let inner = text(&outer, "Message")
                        .ok_or_else(|| ParseError("SNS Message is not a string".into()))?;
                    let ses: Value = serde_json::from_str(&inner)
                        .or_else(|e| err(format!("SNS Message is not JSON: {e}")))?;
                    ses_feedback(ses, topic_arn)
                }
                "SubscriptionConfirmation" | "UnsubscribeConfirmation" => Ok(Body::Control {
                    kind,
                    topic_arn,
                    subscribe_url: text(&outer, "SubscribeURL"),
                }),
                other => err(format!("unknown SNS Type {other:?}")),
            }
        }
        Format::EventBridge => {
            let detail = outer
                .get("detail")
                .cloned()
                .ok_or_else(|| ParseError("EventBridge event without detail".into()))?;
            ses_feedback(detail, None)
        }
        Format::Raw => ses_feedback(outer, None),
    }
}

fn timestamp(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn ses_feedback(ses: Value, topic_arn: Option<String>) -> Result<Body, ParseError> {
    if !ses.is_object() {
        return err("the SES notification is not a JSON object");
    }
    let kind_name = text(&ses, "notificationType")
        .or_else(|| text(&ses, "eventType"))
        .ok_or_else(|| ParseError("neither notificationType nor eventType".into()))?;
    let mail = ses.get("mail").cloned().unwrap_or(Value::Null);
    let message_id = text(&mail, "messageId");
    let kind = match kind_name.as_str() {
        "Bounce" => Kind::Bounce,
        "Complaint" => Kind::Complaint,
        "Delivery" => Kind::Delivery,
        other => Kind::Other(other.to_lowercase()),
    };
    let section = ses
        .get(kind.as_str().to_owned().as_str())
        .cloned()
        .or_else(|| {
            // Event types are camel case in the JSON ("deliveryDelay") and lower case in our table.
            ses.as_object().and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.to_lowercase() == kind.as_str())
                    .map(|(_, v)| v.clone())
            })
        })
        .unwrap_or(Value::Null);
    let (recipients, feedback_id): (Vec<String>, Option<String>) = match kind {
        Kind::Bounce => {
            let list = section
                .get("bouncedRecipients")
                .and_then(Value::as_array)
                .ok_or_else(|| ParseError("bounce without bouncedRecipients".into()))?;
            (
                list.iter()
                    .filter_map(|r| text(r, "emailAddress"))
                    .collect(),
                text(&section, "feedbackId"),
            )
        }
        Kind::Complaint => {
            let list = section
                .get("complainedRecipients")
                .and_then(Value::as_array)
                .ok_or_else(|| ParseError("complaint without complainedRecipients".into()))?;
            (
                list.iter()
                    .filter_map(|r| text(r, "emailAddress"))
                    .collect(),
                text(&section, "feedbackId"),
            )
        }
        Kind::Delivery => {
            let list = section
                .get("recipients")
                .and_then(Value::as_array)
                .ok_or_else(|| ParseError("delivery without recipients".into()))?;
            (
                list.iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect(),
                None,
            )
        }
        Kind::Other(_) => {
            let list = mail
                .get("destination")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            (
                list.iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect(),
                None,
            )
        }
    };
    let recipients: Vec<String> = recipients
        .iter()
        .filter_map(|r| address::validate(strip_display_name(r)).ok())
        .map(|r| address::normalize(&r))
        .collect();
    if recipients.is_empty() {
        return err(format!("{} names no valid recipient", kind.as_str()));
    }
    let occurred_at = timestamp(section.get("timestamp"))
        .or_else(|| timestamp(mail.get("timestamp")))
        .ok_or_else(|| ParseError("no readable timestamp".into()))?;
    // Feedback id, else message id, else the content itself: the same event always gets the same key.
    let identity = feedback_id
        .clone()
        .or_else(|| message_id.clone())
        .unwrap_or_else(|| herald_shared::tokens::sha256_hex(&ses.to_string()));
    let events = recipients
        .into_iter()
        .map(|recipient| RecipientEvent {
            dedupe_key: format!("{}:{identity}:{recipient}", kind.as_str()),
            kind: kind.clone(),
            recipient,
            ses_message_id: message_id.clone(),
            feedback_id: feedback_id.clone(),
            bounce_type: text(&section, "bounceType"),
            bounce_sub_type: text(&section, "bounceSubType"),
            complaint_type: text(&section, "complaintFeedbackType"),
            occurred_at,
        })
        .collect();
    Ok(Body::Feedback {
        topic_arn,
        events,
        raw: ses,
    })
}

/// `"Name" <a@b>` → `a@b` (SES sometimes reports addresses with display names).
fn strip_display_name(raw: &str) -> &str {
    match (raw.rfind('<'), raw.rfind('>')) {
        (Some(start), Some(end)) if start < end => &raw[start + 1..end],
        _ => raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bounce(kind: &str) -> Value {
        json!({
            "notificationType": "Bounce",
            "bounce": {
                "bounceType": kind, "bounceSubType": "General", "feedbackId": "fb-1",
                "timestamp": "2026-11-26T10:00:00.000Z",
                "bouncedRecipients": [{"emailAddress": "Gone@X.com", "status": "5.1.1"}, {"emailAddress": "\"Bo\" <bo@y.org>"}]
            },
            "mail": {"messageId": "msg-1", "timestamp": "2026-11-26T09:59:00.000Z", "source": "a@b.c", "destination": ["gone@x.com"]},
            "newFieldAwsAdded": {"x": 1}
        })
    }

    fn events(body: Body) -> Vec<RecipientEvent> {
        match body {
            Body::Feedback { events, .. } => events,
            other => panic!("not feedback: {other:?}"),
        }
    }

    #[test]
    fn bare_ses_json_gives_one_normalised_event_per_recipient() {
        let e = events(parse(&bounce("Permanent").to_string()).expect("parse"));
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].recipient, "gone@x.com");
        assert_eq!(e[1].recipient, "bo@y.org");
        assert_eq!(e[0].kind, Kind::Bounce);
        assert_eq!(e[0].bounce_type.as_deref(), Some("Permanent"));
        assert_eq!(e[0].ses_message_id.as_deref(), Some("msg-1"));
        assert_eq!(e[0].dedupe_key, "bounce:fb-1:gone@x.com");
    }

    #[test]
    fn the_sns_envelope_and_eventbridge_carry_the_same_event() {
        let ses = bounce("Transient");
        let sns = json!({"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": ses.to_string(), "Signature": "x"});
        let Body::Feedback {
            topic_arn,
            events: e,
            ..
        } = parse(&sns.to_string()).expect("sns")
        else {
            panic!()
        };
        assert_eq!(topic_arn.as_deref(), Some("arn:aws:sns:us-east-1:1:t"));
        let mut event = ses.clone();
        event["eventType"] = json!("Bounce");
        event
            .as_object_mut()
            .expect("obj")
            .remove("notificationType");
        let bridge = json!({"source": "aws.ses", "detail-type": "Email Bounced", "detail": event});
        assert_eq!(events(parse(&bridge.to_string()).expect("bridge")), e);
        assert_eq!(e, events(parse(&ses.to_string()).expect("bare")));
    }

    #[test]
    fn complaints_deliveries_and_other_events_are_read() {
        let complaint = json!({"eventType": "Complaint", "complaint": {"complainedRecipients": [{"emailAddress": "c@d.ef"}],
            "timestamp": "2026-11-26T10:00:00Z", "feedbackId": "fb-2", "complaintFeedbackType": "not-spam"},
            "mail": {"messageId": "msg-2"}});
        let e = events(parse(&complaint.to_string()).expect("complaint"));
        assert_eq!(e[0].complaint_type.as_deref(), Some("not-spam"));
        let delivery = json!({"notificationType": "Delivery", "delivery": {"recipients": ["d@e.fg"], "timestamp": "2026-11-26T10:00:00Z"},
            "mail": {"messageId": "msg-3"}});
        let e = events(parse(&delivery.to_string()).expect("delivery"));
        assert_eq!(
            (e[0].kind.clone(), e[0].dedupe_key.as_str()),
            (Kind::Delivery, "delivery:msg-3:d@e.fg")
        );
        let open = json!({"eventType": "Open", "open": {"timestamp": "2026-11-26T10:00:00Z"}, "mail": {"messageId": "msg-4", "destination": ["o@p.qr"]}});
        assert_eq!(
            events(parse(&open.to_string()).expect("open"))[0].kind,
            Kind::Other("open".into())
        );
    }

    #[test]
    fn subscription_messages_are_control_and_garbage_is_an_error() {
        let confirm = json!({"Type": "SubscriptionConfirmation", "TopicArn": "t", "SubscribeURL": "https://x"});
        assert!(matches!(
            parse(&confirm.to_string()),
            Ok(Body::Control { .. })
        ));
        for bad in [
            "",
            "nope",
            "[1,2]",
            r#"{"Type":"Notification","Message":"{not json"}"#,
            r#"{"hello":"world"}"#,
            r#"{"notificationType":"Bounce","bounce":{"bouncedRecipients":[]},"mail":{}}"#,
            r#"{"notificationType":"Bounce","bounce":{"bouncedRecipients":[{"emailAddress":"x@y.z"}]},"mail":{}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
