//! Reads what arrives on the feedback queue: an SNS envelope, bare SES JSON or an EventBridge event,
//! in SES's notification format (`notificationType`) or event-publishing format (`eventType`).
//! Parsing is lenient about extra fields and strict about the ones the policy needs.
//!
//! Longer than 450 lines because half of it is its tests: a sample of every format and every
//! kind SES reports, each read once here.

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
    /// SES event publishing: the recipient's client loaded the open-tracking image.
    Open,
    /// SES event publishing: the recipient followed a tracked link (`detail.link`).
    Click,
    /// SES event publishing: the receiving server has not taken it yet; SES keeps trying.
    DeliveryDelay,
    /// SES event publishing: SES accepted the call, then refused the message (a virus): final.
    Reject,
    /// SES event publishing: SES could not render a template: final.
    RenderingFailure,
    /// SES event publishing: the recipient changed their subscription through SES's own
    /// list-management headers.
    Subscription,
    /// Any other SES event type (`Send`, …), lower case; recorded, no policy.
    Other(String),
}

impl Kind {
    /// The stored `event_type` (and the timeline's event name).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Bounce => "bounce",
            Self::Complaint => "complaint",
            Self::Delivery => "delivery",
            Self::Open => "open",
            Self::Click => "click",
            Self::DeliveryDelay => "delivery_delay",
            Self::Reject => "reject",
            Self::RenderingFailure => "rendering_failure",
            Self::Subscription => "subscription",
            Self::Other(t) => t,
        }
    }

    /// The kind SES names `name` (`notificationType` or `eventType`).
    fn from_ses(name: &str) -> Self {
        match name {
            "Bounce" => Self::Bounce,
            "Complaint" => Self::Complaint,
            "Delivery" => Self::Delivery,
            "Open" => Self::Open,
            "Click" => Self::Click,
            "DeliveryDelay" => Self::DeliveryDelay,
            "Reject" => Self::Reject,
            // SES writes it with a space; accept the spelling without one too.
            "Rendering Failure" | "RenderingFailure" => Self::RenderingFailure,
            "Subscription" => Self::Subscription,
            other => Self::Other(other.replace(' ', "_").to_lowercase()),
        }
    }

    /// The key of the object SES puts this kind's details under.
    fn section(&self) -> &str {
        match self {
            Self::DeliveryDelay => "deliveryDelay",
            Self::RenderingFailure => "failure",
            other => other.as_str(),
        }
    }

    /// Whether SES reports it once per message rather than per recipient: it is recorded once,
    /// for the message's first recipient.
    fn per_message(&self) -> bool {
        matches!(
            self,
            Self::Open
                | Self::Click
                | Self::Reject
                | Self::RenderingFailure
                | Self::Subscription
                | Self::Other(_)
        )
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
    /// What an event-publishing record adds (a click's link, a delay's type, a reject's reason),
    /// in Herald's names; `None` for bounces, complaints and deliveries.
    pub detail: Option<Value>,
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
    let kind = Kind::from_ses(&kind_name);
    let section = ses
        .get(kind.section())
        .cloned()
        .or_else(|| {
            // Older or unusual spellings: match the key without regard to case.
            ses.as_object().and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(kind.section()))
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
        Kind::DeliveryDelay => {
            let list = section
                .get("delayedRecipients")
                .and_then(Value::as_array)
                .ok_or_else(|| ParseError("delivery delay without delayedRecipients".into()))?;
            (
                list.iter()
                    .filter_map(|r| text(r, "emailAddress"))
                    .collect(),
                None,
            )
        }
        _ => {
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
    let mut recipients: Vec<String> = recipients
        .iter()
        .filter_map(|r| address::validate(strip_display_name(r)).ok())
        .map(|r| address::normalize(&r))
        .collect();
    if kind.per_message() {
        recipients.truncate(1);
    }
    if recipients.is_empty() {
        return err(format!("{} names no valid recipient", kind.as_str()));
    }
    let occurred_at = timestamp(section.get("timestamp"))
        .or_else(|| timestamp(mail.get("timestamp")))
        .ok_or_else(|| ParseError("no readable timestamp".into()))?;
    // Feedback id, else message id, else the content itself: the same event always gets the same
    // key. Opens, clicks and delays repeat for one message: their own section tells them apart.
    let identity = match (&feedback_id, &message_id, &kind) {
        (Some(f), _, _) => f.clone(),
        (None, Some(m), Kind::Bounce | Kind::Complaint | Kind::Delivery) => m.clone(),
        (None, Some(m), _) => format!(
            "{m}:{}",
            &herald_shared::tokens::sha256_hex(&section.to_string())[..16]
        ),
        (None, None, _) => herald_shared::tokens::sha256_hex(&ses.to_string()),
    };
    let detail = engagement_detail(&kind, &section);
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
            detail: detail.clone(),
        })
        .collect();
    Ok(Body::Feedback {
        topic_arn,
        events,
        raw: ses,
    })
}

/// The fields of an event-publishing record that Herald keeps, in its own names (no IP address:
/// the raw record keeps it for the audit trail, webhooks and the timeline do not carry it).
fn engagement_detail(kind: &Kind, section: &Value) -> Option<Value> {
    let pick = |pairs: &[(&str, &str)]| {
        let map: serde_json::Map<String, Value> = pairs
            .iter()
            .filter_map(|(ours, theirs)| {
                section
                    .get(*theirs)
                    .filter(|v| !v.is_null())
                    .map(|v| ((*ours).to_owned(), v.clone()))
            })
            .collect();
        Value::Object(map)
    };
    Some(match kind {
        Kind::Bounce | Kind::Complaint | Kind::Delivery | Kind::Other(_) => return None,
        Kind::Open => pick(&[("user_agent", "userAgent")]),
        Kind::Click => pick(&[
            ("link", "link"),
            ("link_tags", "linkTags"),
            ("user_agent", "userAgent"),
        ]),
        Kind::DeliveryDelay => pick(&[
            ("delay_type", "delayType"),
            ("expiration_time", "expirationTime"),
            ("reporting_mta", "reportingMTA"),
        ]),
        Kind::Reject => pick(&[("reason", "reason")]),
        Kind::RenderingFailure => pick(&[
            ("reason", "errorMessage"),
            ("template_name", "templateName"),
        ]),
        Kind::Subscription => {
            let mut d = pick(&[("contact_list", "contactList"), ("source", "source")]);
            d["unsubscribe_all"] = Value::Bool(unsubscribes_all(section));
            d
        }
    })
}

/// Whether a Subscription record says the recipient left every topic of the list.
pub fn unsubscribes_all(section: &Value) -> bool {
    section
        .pointer("/newTopicPreferences/unsubscribeAll")
        .and_then(Value::as_bool)
        .unwrap_or(false)
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
        let send = json!({"eventType": "Send", "send": {}, "mail": {"messageId": "msg-4", "timestamp": "2026-11-26T10:00:00Z", "destination": ["o@p.qr"]}});
        assert_eq!(
            events(parse(&send.to_string()).expect("send"))[0].kind,
            Kind::Other("send".into())
        );
    }

    /// The six event-publishing samples (worker/tests/fixtures), for `message` and `to`.
    fn sample(kind: &str, message: &str, to: &str) -> Value {
        let all: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/ses-event-publishing.json"
        ))
        .expect("fixtures");
        let text = all[kind]
            .to_string()
            .replace("{message_id}", message)
            .replace("{recipient}", to);
        serde_json::from_str(&text).expect("sample")
    }

    #[test]
    fn event_publishing_records_of_each_type_are_read_with_what_they_add() {
        let cases = [
            (
                "Open",
                Kind::Open,
                "2026-12-07T10:05:19.652Z",
                json!({"user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 10_3_3 like Mac OS X) AppleWebKit/603.3.8 (KHTML, like Gecko) Mobile/14G60"}),
            ),
            (
                "Click",
                Kind::Click,
                "2026-12-07T10:06:25.570Z",
                json!({"link": "https://app.example.com/welcome?step=1", "link_tags": {"campaign": ["welcome"]}, "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/60.0.3112.90 Safari/537.36"}),
            ),
            (
                "DeliveryDelay",
                Kind::DeliveryDelay,
                "2026-12-07T10:15:40.641Z",
                json!({"delay_type": "TransientCommunicationFailure", "expiration_time": "2026-12-08T10:00:00.000Z"}),
            ),
            (
                "Reject",
                Kind::Reject,
                "2026-12-07T10:00:00.000Z",
                json!({"reason": "Bad content"}),
            ),
            (
                "Rendering Failure",
                Kind::RenderingFailure,
                "2026-12-07T10:00:00.000Z",
                json!({"reason": "Attribute 'attributeName' is not present in the rendering data.", "template_name": "MyTemplate"}),
            ),
            (
                "Subscription",
                Kind::Subscription,
                "2026-12-07T10:20:14.340Z",
                json!({"contact_list": "Newsletter", "source": "UnsubscribeHeader", "unsubscribe_all": true}),
            ),
        ];
        for (name, kind, at, detail) in cases {
            let ses = sample(name, "msg-9", "Ann@Example.com");
            let sns = json!({"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": ses.to_string()});
            let e = events(parse(&sns.to_string()).expect(name));
            assert_eq!(e.len(), 1, "{name}");
            assert_eq!(e[0].kind, kind, "{name}");
            assert_eq!(e[0].recipient, "ann@example.com", "{name}");
            assert_eq!(e[0].ses_message_id.as_deref(), Some("msg-9"), "{name}");
            assert_eq!(
                e[0].occurred_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                at,
                "{name}"
            );
            assert_eq!(e[0].detail.as_ref(), Some(&detail), "{name}");
            assert!(
                e[0].dedupe_key
                    .starts_with(&format!("{}:msg-9:", kind.as_str())),
                "{name}"
            );
            assert!(
                !e[0]
                    .detail
                    .as_ref()
                    .expect("detail")
                    .to_string()
                    .contains("192.0.2.1"),
                "no IP address"
            );
        }
    }

    #[test]
    fn each_open_of_a_message_is_its_own_event_and_a_redelivered_one_is_the_same() {
        let first = sample("Open", "msg-9", "a@b.co");
        let mut second = first.clone();
        second["open"]["timestamp"] = json!("2026-12-07T11:00:00.000Z");
        let key = |v: &Value| {
            events(parse(&v.to_string()).expect("open"))[0]
                .dedupe_key
                .clone()
        };
        assert_eq!(key(&first), key(&first.clone()));
        assert_ne!(key(&first), key(&second));
        // A message to several recipients: SES cannot tell who opened it; one event, not one each.
        let mut several = first.clone();
        several["mail"]["destination"] = json!(["a@b.co", "c@d.co"]);
        assert_eq!(events(parse(&several.to_string()).expect("open")).len(), 1);
        // A delay names its delayed recipients, each an event.
        let mut delay = sample("DeliveryDelay", "msg-9", "a@b.co");
        delay["deliveryDelay"]["delayedRecipients"] =
            json!([{"emailAddress": "a@b.co"}, {"emailAddress": "c@d.co"}]);
        assert_eq!(events(parse(&delay.to_string()).expect("delay")).len(), 2);
        delay["deliveryDelay"]
            .as_object_mut()
            .expect("object")
            .remove("delayedRecipients");
        assert!(
            parse(&delay.to_string()).is_err(),
            "a delay without recipients is unreadable"
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
