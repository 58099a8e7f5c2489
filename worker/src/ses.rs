//! Sending through SES v2: one client per process, errors sorted into retry, give up or pause.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sesv2::Client;
use aws_sdk_sesv2::config::http::HttpResponse;
use aws_sdk_sesv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sesv2::operation::send_email::SendEmailError;
use aws_sdk_sesv2::types::{
    Body, Content, Destination, EmailContent, Message, MessageHeader, MessageTag,
};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

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

/// The SES v2 client and the settings every send uses.
#[derive(Debug, Clone)]
pub struct SesSender {
    client: Client,
    from: String,
    configuration_set: Option<String>,
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
    pub fn new(client: Client, from: String, configuration_set: Option<String>) -> Self {
        Self {
            client,
            from,
            configuration_set,
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

    /// Sends one message; returns SES's message id.
    pub async fn send(&self, email: &OutgoingEmail) -> Result<String, SendError> {
        let mut body = Body::builder();
        if let Some(text) = &email.text {
            body = body.text(content(text)?);
        }
        if let Some(html) = &email.html {
            body = body.html(content(html)?);
        }
        let mut message = Message::builder()
            .subject(content(&email.subject)?)
            .body(body.build());
        for (name, value) in &email.headers {
            let header = MessageHeader::builder()
                .name(name)
                .value(value)
                .build()
                .map_err(|e| SendError::Permanent(e.to_string()))?;
            message = message.headers(header);
        }
        let tag = MessageTag::builder()
            .name("herald_job_id")
            .value(&email.job_id)
            .build()
            .map_err(|e| SendError::Permanent(e.to_string()))?;
        let result = self
            .client
            .send_email()
            .from_email_address(&self.from)
            .destination(Destination::builder().to_addresses(&email.to).build())
            .content(EmailContent::builder().simple(message.build()).build())
            .email_tags(tag)
            .set_configuration_set_name(self.configuration_set.clone())
            .send()
            .await;
        match result {
            Ok(out) => out
                .message_id()
                .map(str::to_owned)
                .ok_or_else(|| SendError::Retryable("SES answered without a message id".into())),
            Err(err) => Err(classify(&err)),
        }
    }
}

fn content(data: &str) -> Result<Content, SendError> {
    Content::builder()
        .data(data)
        .charset("UTF-8")
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
            format!("{code}: {message}")
        }
        other => herald_shared::telemetry::error_chain(other),
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
        // Dispatch failures (no connection, or it broke while sending): try again.
        _ => SendError::Retryable(text),
    }
}
