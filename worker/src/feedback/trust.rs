//! What a feedback message must prove before it may change who receives mail: a format the
//! operator opted into, an allowed topic, and (for SNS) SNS's signature.

use std::collections::HashSet;

use serde_json::Value;

use super::parse::Format;
use super::sns::{Reason, Rejection, SnsVerifier};

/// The trust settings of the feedback consumer.
#[derive(Debug)]
pub struct Trust {
    /// `FEEDBACK_FORMATS`: the formats accepted.
    pub formats: HashSet<Format>,
    /// `SNS_ALLOWED_TOPIC_ARNS`: SNS topics whose messages are applied; empty means any.
    pub allowed_topics: Vec<String>,
    /// SNS signature checks; `None` when `SNS_VERIFY_SIGNATURES=false` (the local emulator only).
    pub verifier: Option<SnsVerifier>,
    /// `SNS_CONFIRM_SUBSCRIPTIONS`: visit the `SubscribeURL` of a verified subscription message.
    pub confirm_subscriptions: bool,
}

impl Trust {
    /// Accepts everything the consumer can read, unsigned: for tests of the policy, never production.
    pub fn everything_unverified() -> Self {
        Self {
            formats: Format::ALL.into_iter().collect(),
            allowed_topics: Vec::new(),
            verifier: None,
            confirm_subscriptions: false,
        }
    }

    /// Checks a message read as a JSON object; `Ok` means it may be applied.
    pub async fn admit(&self, outer: &Value) -> Result<Format, Rejection> {
        let format = Format::of(outer);
        if !self.formats.contains(&format) {
            return Err(Rejection::new(
                Reason::Format,
                format!("{} is not in FEEDBACK_FORMATS", format.as_str()),
            ));
        }
        if format != Format::Sns {
            return Ok(format);
        }
        let envelope = outer
            .as_object()
            .ok_or_else(|| Rejection::new(Reason::SignatureMissing, "not a JSON object"))?;
        // The topic is only worth checking once it is known to be signed, but the check is cheap
        // and spares a certificate fetch for a topic that would be refused anyway.
        let topic = envelope.get("TopicArn").and_then(Value::as_str);
        if !self.allowed_topics.is_empty()
            && !topic.is_some_and(|t| self.allowed_topics.iter().any(|a| a == t))
        {
            return Err(Rejection::new(
                Reason::Topic,
                format!("topic {topic:?} is not in SNS_ALLOWED_TOPIC_ARNS"),
            ));
        }
        if let Some(verifier) = &self.verifier {
            verifier.verify(envelope).await?;
        }
        Ok(format)
    }

    /// Confirms an SNS subscription when configured to: only a verified message's `SubscribeURL`,
    /// and only on the host that served the signing certificate. Returns whether it was visited.
    pub async fn confirm(&self, outer: &Value) -> Result<bool, String> {
        let Some(verifier) = self
            .verifier
            .as_ref()
            .filter(|_| self.confirm_subscriptions)
        else {
            return Ok(false);
        };
        let text = |name: &str| outer.get(name).and_then(Value::as_str);
        let (Some("SubscriptionConfirmation"), Some(url)) = (text("Type"), text("SubscribeURL"))
        else {
            return Ok(false);
        };
        let cert_url = outer
            .get("SigningCertURL")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if origin(url).is_none() || origin(url) != origin(cert_url) {
            return Err(format!(
                "SubscribeURL is not on the signing certificate's host ({:?})",
                origin(url)
            ));
        }
        verifier.get(url).await.map(|()| true)
    }
}

/// `scheme://host[:port]` of a URL, if it has one.
fn origin(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let host_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if host_len == 0 || rest[..host_len].contains('@') {
        return None;
    }
    Some(&url[..url.len() - rest.len() + host_len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_and_host_only() {
        assert_eq!(
            origin("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"),
            Some("https://sns.us-east-1.amazonaws.com")
        );
        assert_eq!(
            origin("http://127.0.0.1:9/x.pem"),
            Some("http://127.0.0.1:9")
        );
        assert_eq!(origin("https://a@evil.example/"), None);
        assert_eq!(origin("ftp://x/"), None);
        assert_eq!(origin("https:///x"), None);
    }
}
