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

    /// Sends one message; returns SES's message id (`None`: a 2xx without one, accepted all the same).
    pub async fn send(&self, email: &OutgoingEmail) -> Result<Option<String>, SendError> {
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
            // A 2xx is SES's acceptance; retrying it for want of an id would send it twice.
            Ok(out) => Ok(out.message_id().map(str::to_owned)),
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
