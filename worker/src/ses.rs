//! Sending through SES v2: one client per process, errors sorted into retry, give up or pause.
//!
//! Longer than 450 lines because the message as SES gets it (MIME, envelope, tags, configuration
//! set) and the sorting of SES's answers are one path, read and changed together.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sesv2::Client;
use aws_sdk_sesv2::config::http::HttpResponse;
use aws_sdk_sesv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sesv2::operation::send_email::SendEmailError;
use aws_sdk_sesv2::primitives::Blob;
use aws_sdk_sesv2::types::{Destination, EmailContent, MessageTag, RawMessage};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use herald_shared::email::Category;
use herald_shared::email::message::{Envelope, Mailbox};
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::MimePart;

/// A message ready for SES.
#[derive(Debug, Clone)]
pub struct OutgoingEmail {
    /// Recipient.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text part.
    pub text: Option<String>,
    /// HTML part.
    pub html: Option<String>,
    /// Extra headers (List-Unsubscribe for marketing mail).
    pub headers: Vec<(String, String)>,
    /// The job id, sent as an SES message tag so feedback can be traced back.
    pub job_id: String,
    /// Named and further recipients, the sender, reply-to, custom headers and tags (recipients
    /// suppressed since the email was queued left out); empty for one plain recipient.
    pub envelope: Envelope,
    /// The bytes of each of the envelope's attachments, in order.
    pub attachment_bytes: Vec<Vec<u8>>,
    /// Its category: which configuration set the send names.
    pub category: Category,
}

/// The configuration set each send names, so that SES publishes its events (deliveries, opens,
/// clicks, delays, rejects) to the destinations the set has (docs/feedback.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigurationSets {
    /// `SES_CONFIGURATION_SET`: every send's, unless its category has its own.
    pub default: Option<String>,
    /// `SES_CONFIGURATION_SET_TRANSACTIONAL`.
    pub transactional: Option<String>,
    /// `SES_CONFIGURATION_SET_MARKETING`.
    pub marketing: Option<String>,
}

impl ConfigurationSets {
    /// The set a send of `category` names, if any.
    pub fn for_category(&self, category: Category) -> Option<&str> {
        match category {
            Category::Transactional => self.transactional.as_deref(),
            Category::Marketing => self.marketing.as_deref(),
        }
        .or(self.default.as_deref())
    }

    /// Whether `name` is a name SES accepts for a configuration set: 1 to 64 letters, digits,
    /// `_` and `-`.
    pub fn valid_name(name: &str) -> bool {
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }
}

impl OutgoingEmail {
    /// Recipients as (to, cc, bcc): the envelope's, or `to` alone.
    pub fn recipients(&self) -> (Vec<Mailbox>, &[Mailbox], &[Mailbox]) {
        if self.envelope.lists_recipients() {
            (
                self.envelope.to.clone(),
                &self.envelope.cc,
                &self.envelope.bcc,
            )
        } else {
            (
                vec![Mailbox {
                    email: self.to.clone(),
                    name: None,
                }],
                &[],
                &[],
            )
        }
    }

    /// The sender: the envelope's, else `default_from` (`EMAIL_FROM`).
    pub fn sender(&self, default_from: &str) -> Mailbox {
        self.envelope.from.clone().unwrap_or_else(|| Mailbox {
            email: default_from.to_owned(),
            name: None,
        })
    }

    /// The MIME message (RFC 5322) SES gets as Raw content: From, To, Cc (never Bcc: those are
    /// in SES's envelope only), Reply-To, Subject, Date, a Message-ID made from the job id (the
    /// same on every attempt, so a resend can be recognised), Herald's and the caller's headers,
    /// and the text and HTML parts as alternatives.
    pub fn mime(&self, default_from: &str) -> Vec<u8> {
        fn address(m: &Mailbox) -> Address<'_> {
            Address::new_address(m.name.as_deref(), m.email.as_str())
        }
        fn list(ms: &[Mailbox]) -> Address<'_> {
            Address::new_list(ms.iter().map(address).collect())
        }
        let from = self.sender(default_from);
        let (to, cc, _) = self.recipients();
        let domain = from
            .email
            .rsplit_once('@')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_else(|| "herald.invalid".into());
        let mut builder = MessageBuilder::new()
            .from(address(&from))
            .subject(self.subject.as_str())
            .message_id(format!("{}@{domain}", self.job_id));
        if !to.is_empty() {
            builder = builder.to(list(&to));
        }
        if !cc.is_empty() {
            builder = builder.cc(list(cc));
        }
        if !self.envelope.reply_to.is_empty() {
            builder = builder.reply_to(list(&self.envelope.reply_to));
        }
        let own = self.headers.iter().map(|(n, v)| (n, v));
        for (name, value) in own.chain(&self.envelope.headers) {
            // ASCII as given (List-Unsubscribe's URLs must stay readable); anything else RFC 2047.
            builder = if value.is_ascii() {
                builder.header(name.as_str(), Raw::new(value.as_str()))
            } else {
                builder.header(name.as_str(), Text::new(value.as_str()))
            };
        }
        builder = builder.body(self.body_part());
        // Writing into a Vec cannot fail.
        builder.write_to_vec().unwrap_or_default()
    }

    /// The body: text and HTML as alternatives; inline parts beside the HTML in
    /// multipart/related; attachments after them in multipart/mixed.
    fn body_part(&self) -> MimePart<'_> {
        let text = self.text.as_deref().map(|t| MimePart::new("text/plain", t));
        let html = self.html.as_deref().map(|h| MimePart::new("text/html", h));
        let (mut inline, mut attached) = (Vec::new(), Vec::new());
        for (a, bytes) in self.envelope.attachments.iter().zip(&self.attachment_bytes) {
            let part = MimePart::new(a.content_type.as_str(), bytes.as_slice());
            match &a.content_id {
                Some(id) => inline.push(part.inline().cid(id.as_str())),
                None => attached.push(part.attachment(a.filename.as_str())),
            }
        }
        let mut readable = match (text, html) {
            (Some(t), Some(h)) => MimePart::new("multipart/alternative", vec![t, h]),
            (Some(t), None) => t,
            (None, Some(h)) => h,
            (None, None) => MimePart::new("text/plain", "\n"),
        };
        if !inline.is_empty() {
            inline.insert(0, readable);
            readable = MimePart::new("multipart/related", inline);
        }
        if attached.is_empty() {
            readable
        } else {
            attached.insert(0, readable);
            MimePart::new("multipart/mixed", attached)
        }
    }
}

/// How a failed send should be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Throttling, 5xx, timeouts, network: try again later.
    #[error("retryable: {0}")]
    Retryable(String),
    /// Rejected for good (bad address, unverified sender, rejected content).
    #[error("permanent: {0}")]
    Permanent(String),
    /// The request may have reached SES but no answer came back (timeout, lost response): try
    /// again, and count the next attempt as a possible duplicate.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// SES paused or suspended the account: stop every worker for a while.
    #[error("sending paused by SES: {0}")]
    Paused(String),
}

/// What sends an email: the SES v2 client in production, [`RecordingSender`] where the provider is
/// not the point of a test.
pub trait EmailSender: Send + Sync + std::fmt::Debug + 'static {
    /// Sends one message; `Ok` carries the provider's message id (`None`: accepted without one).
    fn send<'a>(
        &'a self,
        email: &'a OutgoingEmail,
    ) -> futures::future::BoxFuture<'a, Result<Option<String>, SendError>>;
}

impl EmailSender for SesSender {
    fn send<'a>(
        &'a self,
        email: &'a OutgoingEmail,
    ) -> futures::future::BoxFuture<'a, Result<Option<String>, SendError>> {
        Box::pin(SesSender::send(self, email))
    }
}

/// An in-process sender that accepts everything and remembers it, for tests that are about the
/// queue and the ledger rather than SES. Never used by the binaries.
#[derive(Debug, Default)]
pub struct RecordingSender {
    sent: std::sync::Mutex<Vec<OutgoingEmail>>,
}

impl RecordingSender {
    /// Everything sent so far, in order.
    pub fn sent(&self) -> Vec<OutgoingEmail> {
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl EmailSender for RecordingSender {
    fn send<'a>(
        &'a self,
        email: &'a OutgoingEmail,
    ) -> futures::future::BoxFuture<'a, Result<Option<String>, SendError>> {
        Box::pin(async move {
            let mut sent = self
                .sent
                .lock()
                .map_err(|_| SendError::Retryable("the recording sender is poisoned".into()))?;
            sent.push(email.clone());
            Ok(Some(format!("recorded-{}", sent.len())))
        })
    }
}

/// The SES v2 client and the settings every send uses.
#[derive(Debug, Clone)]
pub struct SesSender {
    client: Client,
    from: String,
    configuration_sets: ConfigurationSets,
}

/// Builds the AWS configuration from the standard variables (`AWS_REGION`, `AWS_ENDPOINT_URL`,
/// credentials), with rustls on ring and no SDK retries: Herald's durable backoff retries instead.
pub async fn aws_config(timeout: Duration) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(timeout)
                .build(),
        )
        .load()
        .await
}

impl SesSender {
    /// Wraps a client.
    pub fn new(client: Client, from: String, configuration_sets: ConfigurationSets) -> Self {
        Self {
            client,
            from,
            configuration_sets,
        }
    }

    /// The account's sending rate (emails per second), if SES tells it.
    pub async fn max_send_rate(&self) -> Option<f64> {
        match self.client.get_account().send().await {
            Ok(account) => account
                .send_quota()
                .map(|q| q.max_send_rate())
                .filter(|r| *r > 0.0),
            Err(err) => {
                tracing::warn!(error = %describe(&err), "could not read the SES send quota");
                None
            }
        }
    }

    /// Sends one message as Raw content; returns SES's message id (`None`: a 2xx without one,
    /// accepted all the same). Every recipient, bcc included, is in the envelope (`Destination`).
    pub async fn send(&self, email: &OutgoingEmail) -> Result<Option<String>, SendError> {
        let raw = RawMessage::builder()
            .data(Blob::new(email.mime(&self.from)))
            .build()
            .map_err(|e| SendError::Permanent(e.to_string()))?;
        let (to, cc, bcc) = email.recipients();
        let addresses = |ms: &[Mailbox]| -> Option<Vec<String>> {
            (!ms.is_empty()).then(|| ms.iter().map(|m| m.email.clone()).collect())
        };
        let destination = Destination::builder()
            .set_to_addresses(addresses(&to))
            .set_cc_addresses(addresses(cc))
            .set_bcc_addresses(addresses(bcc))
            .build();
        let mut tags = vec![tag("herald_job_id", &email.job_id)?];
        for (name, value) in &email.envelope.tags {
            tags.push(tag(name, value)?);
        }
        let result = self
            .client
            .send_email()
            .from_email_address(email.sender(&self.from).email)
            .destination(destination)
            .content(EmailContent::builder().raw(raw).build())
            .set_email_tags(Some(tags))
            .set_configuration_set_name(
                self.configuration_sets
                    .for_category(email.category)
                    .map(str::to_owned),
            )
            .send()
            .await;
        match result {
            // A 2xx is SES's acceptance; retrying it for want of an id would send it twice.
            Ok(out) => Ok(out.message_id().map(str::to_owned)),
            Err(err) => Err(classify(&err)),
        }
    }
}

fn tag(name: &str, value: &str) -> Result<MessageTag, SendError> {
    MessageTag::builder()
        .name(name)
        .value(value)
        .build()
        .map_err(|e| SendError::Permanent(e.to_string()))
}

fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match err {
        SdkError::ServiceError(s) => {
            let e = s.err();
            // Real responses carry a code; errors built in tests may not, so fall back to the variant.
            let code = e.code().map(str::to_owned).unwrap_or_else(|| {
                let debug = format!("{e:?}");
                debug
                    .split(['(', ' ', '{'])
                    .next()
                    .unwrap_or("unknown")
                    .to_owned()
            });
            let message = e
                .message()
                .map(str::to_owned)
                .unwrap_or_else(|| e.to_string());
            // SES names addresses in its messages ("… failed the check: ada@example.com"); this
            // text reaches logs, `last_error` and the dashboard, so every address in it is masked.
            herald_shared::address::mask_all(&format!("{code}: {message}"))
        }
        other => herald_shared::address::mask_all(&herald_shared::telemetry::error_chain(other)),
    }
}

/// Sorts an SES failure: throttling, 5xx and transport problems are retried; a paused or suspended
/// account pauses sending; everything else the caller sent wrongly is final.
pub fn classify(err: &SdkError<SendEmailError, HttpResponse>) -> SendError {
    let text = describe(err);
    match err {
        SdkError::ServiceError(service) => match service.err() {
            SendEmailError::TooManyRequestsException(_)
            | SendEmailError::LimitExceededException(_) => SendError::Retryable(text),
            SendEmailError::AccountSuspendedException(_)
            | SendEmailError::SendingPausedException(_) => SendError::Paused(text),
            SendEmailError::MessageRejected(_)
            | SendEmailError::MailFromDomainNotVerifiedException(_)
            | SendEmailError::BadRequestException(_)
            | SendEmailError::NotFoundException(_) => SendError::Permanent(text),
            other => match other.code() {
                Some(
                    "Throttling" | "ThrottlingException" | "ServiceUnavailable" | "InternalFailure",
                ) => SendError::Retryable(text),
                _ => {
                    let status = service.raw().status().as_u16();
                    // Unknown codes: 5xx and 429 are the provider's problem, the rest are ours.
                    if status >= 500 || status == 429 {
                        SendError::Retryable(text)
                    } else {
                        SendError::Permanent(text)
                    }
                }
            },
        },
        SdkError::ConstructionFailure(_) => SendError::Permanent(text),
        // The request went out and the answer did not come back: SES may have accepted it.
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => SendError::Unknown(text),
        SdkError::DispatchFailure(failure) if failed_before_sending(failure) => {
            SendError::Retryable(text)
        }
        // The connection broke after the request may have been written (reset, broken pipe, an
        // incomplete answer): SES may have accepted it.
        SdkError::DispatchFailure(_) => SendError::Unknown(text),
        _ => SendError::Unknown(text),
    }
}

/// Whether a dispatch failure happened before any byte of the request could reach SES: no
/// connection (refused, DNS, TLS handshake, connect timeout) or a request that could not be built.
fn failed_before_sending(
    failure: &aws_smithy_runtime_api::client::result::DispatchFailure,
) -> bool {
    if failure.is_user() || failure.is_timeout() {
        // The SDK's operation timeout is a TimeoutError, not this: a dispatch timeout is the
        // connect timeout.
        return true;
    }
    let Some(connector) = failure.as_connector_error() else {
        return false;
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(connector);
    while let Some(err) = source {
        if err.is::<aws_smithy_runtime_api::client::dns::ResolveDnsError>() {
            return true;
        }
        if let Some(client) = err.downcast_ref::<hyper_util::client::legacy::Error>()
            && client.is_connect()
        {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use aws_sdk_sesv2::error::ConnectorError;
    use aws_smithy_runtime_api::client::dns::ResolveDnsError;

    use super::*;

    fn dispatch(err: ConnectorError) -> SendError {
        classify(&SdkError::dispatch_failure(err))
    }

    #[test]
    fn a_failure_before_the_request_was_written_is_a_clean_retry() {
        let dns = ConnectorError::io(Box::new(ResolveDnsError::new("no such host")));
        assert!(matches!(dispatch(dns), SendError::Retryable(_)));
        let connect_timeout = ConnectorError::timeout("connect timed out".into());
        assert!(matches!(dispatch(connect_timeout), SendError::Retryable(_)));
        let user = ConnectorError::user("bad request".into());
        assert!(matches!(dispatch(user), SendError::Retryable(_)));
    }

    #[test]
    fn a_failure_after_the_request_may_have_been_written_is_an_unknown_outcome() {
        for kind in [
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            let io = ConnectorError::io(Box::new(std::io::Error::new(kind, "lost")));
            assert!(matches!(dispatch(io), SendError::Unknown(_)), "{kind:?}");
        }
        let other = ConnectorError::other("incomplete message".into(), None);
        assert!(matches!(dispatch(other), SendError::Unknown(_)));
    }
}
