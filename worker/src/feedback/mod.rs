//! SES feedback from SQS: bounces and complaints become suppressions, idempotently, losing nothing.
//!
//! Longer than 450 lines on purpose: the consumer's loops, the handling of one message and where
//! a refused message goes are one state machine, read top to bottom.

pub mod apply;
pub mod parse;
pub mod sns;
pub mod trust;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use apply::{ApplyError, Outcome, Policy, UNMATCHED, apply, apply_value};
pub use sns::{Reason, Rejection, SnsVerifier};
pub use trust::Trust;

/// Counters of what the consumer did since it started.
#[derive(Debug, Default)]
pub struct FeedbackStats {
    /// Events recorded and applied.
    pub applied: AtomicU64,
    /// Events already seen (a redelivered message).
    pub duplicates: AtomicU64,
    /// Messages that cannot be parsed (left for the dead-letter queue).
    pub poison: AtomicU64,
    /// Messages refused by the trust checks: signature, format, topic (left for the dead-letter
    /// queue). Counted on their first receive only.
    pub rejected: AtomicU64,
    /// Messages left for redelivery after a database error.
    pub db_errors: AtomicU64,
    /// Subscription messages deleted.
    pub control: AtomicU64,
}

/// Long-polls the feedback queue and applies what arrives.
#[derive(Debug, Clone)]
pub struct FeedbackConsumer {
    /// The SQS client.
    pub sqs: aws_sdk_sqs::Client,
    /// `SQS_FEEDBACK_QUEUE_URL`.
    pub queue_url: String,
    /// Database pool.
    pub pool: PgPool,
    /// Suppression policy.
    pub policy: Arc<Policy>,
    /// What a message must prove before it is applied.
    pub trust: Arc<Trust>,
    /// Concurrent pollers (`FEEDBACK_CONCURRENCY`).
    pub concurrency: usize,
    /// Long-poll wait, seconds (20, SQS's maximum).
    pub wait_seconds: i32,
    /// Counters.
    pub stats: Arc<FeedbackStats>,
    /// Metrics.
    pub metrics: Arc<herald_shared::metrics::Metrics>,
    /// The dead-letter queue's URL from the queue's redrive policy, looked up once (`None`: the
    /// queue has none).
    pub dead_letter: Arc<tokio::sync::OnceCell<Option<String>>>,
}

/// Receives after which a message refused because its certificate could not be fetched is given
/// up on like any other refused message (a fetch failure may pass; a forgery does not).
pub const UNAVAILABLE_RECEIVES: u32 = 5;

impl FeedbackConsumer {
    /// Runs the pollers until `token` is cancelled; a batch being applied is finished first.
    pub async fn run(self, token: CancellationToken) {
        tracing::info!(pollers = self.concurrency, "feedback consumer started");
        match self.dead_letter_url().await {
            Ok(Some(_)) => {}
            Ok(None) => tracing::warn!(
                "the feedback queue has no redrive policy: refused and unreadable messages are \
                 recorded and deleted, not kept in a dead-letter queue (docs/feedback.md)"
            ),
            Err(error) => tracing::warn!(
                %error,
                "cannot read the feedback queue's redrive policy: refused messages stay on it until it can be read"
            ),
        }
        let mut tasks = Vec::new();
        for _ in 0..self.concurrency.max(1) {
            let me = self.clone();
            let token = token.clone();
            tasks.push(tokio::spawn(async move { me.poll_loop(token).await }));
        }
        let me = self.clone();
        let depth_token = token.clone();
        tasks.push(tokio::spawn(async move {
            me.depth_loop(depth_token).await;
        }));
        for task in tasks {
            let _ = task.await;
        }
        tracing::info!("feedback consumer stopped");
    }

    /// Every minute, stores the queue's depth and its dead-letter queue's (found through its
    /// redrive policy; skipped when there is none or it cannot be read) for the console.
    async fn depth_loop(&self, token: CancellationToken) {
        loop {
            if let Err(error) = self.record_depths().await {
                tracing::debug!(%error, "could not read the feedback queues' depths");
            }
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
        }
    }

    async fn record_depths(&self) -> Result<(), String> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let depth = |attrs: Option<&std::collections::HashMap<A, String>>| {
            attrs
                .and_then(|a| a.get(&A::ApproximateNumberOfMessages))
                .and_then(|n| n.parse::<i64>().ok())
        };
        let main = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| herald_shared::telemetry::error_chain(&e))?;
        let mut found = vec![("feedback", depth(main.attributes()))];
        let mut dlq_error = None;
        let dlq = async {
            let Some(url) = self.dead_letter_url().await? else {
                return Ok(None);
            };
            let attrs = self
                .sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(A::ApproximateNumberOfMessages)
                .send()
                .await
                .map_err(|e| herald_shared::telemetry::error_chain(&e))?;
            Ok::<_, String>(Some(depth(attrs.attributes())))
        }
        .await;
        match dlq {
            Ok(Some(messages)) => found.push(("dead_letter", messages)),
            Ok(None) => {}
            // The main queue's depth is still worth storing.
            Err(error) => dlq_error = Some(error),
        }
        let mut conn = self.pool.acquire().await.map_err(|e| e.to_string())?;
        for (queue, messages) in found {
            if let Some(messages) = messages {
                herald_shared::feedback::record_depth(&mut conn, queue, messages)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        dlq_error.map_or(Ok(()), |e| Err(format!("dead-letter queue: {e}")))
    }

    /// The dead-letter queue of the feedback queue, from its redrive policy, read on first use and
    /// kept (`None`: the queue has none). A failed read is not kept: the next call asks again.
    pub async fn dead_letter_url(&self) -> Result<Option<String>, String> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        if let Some(known) = self.dead_letter.get() {
            return Ok(known.clone());
        }
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(A::RedrivePolicy)
            .send()
            .await
            .map_err(|e| herald_shared::telemetry::error_chain(&e))?;
        let target = attrs
            .attributes()
            .and_then(|a| a.get(&A::RedrivePolicy))
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .and_then(|p| p["deadLetterTargetArn"].as_str().map(str::to_owned));
        let url = match target.as_deref().and_then(|arn| arn.rsplit(':').next()) {
            None => None,
            Some(name) => self
                .sqs
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "dead-letter queue: {}",
                        herald_shared::telemetry::error_chain(&e)
                    )
                })?
                .queue_url()
                .map(str::to_owned),
        };
        let _ = self.dead_letter.set(url.clone());
        Ok(url)
    }

    /// Deletes a message from the feedback queue; a failure is logged (`what` says which message).
    async fn delete(&self, message: &aws_sdk_sqs::types::Message, what: &str) {
        if let Some(handle) = message.receipt_handle()
            && let Err(e) = self
                .sqs
                .delete_message()
                .queue_url(&self.queue_url)
                .receipt_handle(handle)
                .send()
                .await
        {
            tracing::warn!(sqs_message_id = message.message_id().unwrap_or("?"), error = %herald_shared::telemetry::error_chain(&e), "could not delete {what}");
        }
    }

    /// Takes a refused or unreadable message off the queue for good, once it is recorded: into the
    /// dead-letter queue when there is one (with the reason as a message attribute), else deleted.
    /// Either way SQS does not show it again; a failure leaves it for the next receive.
    async fn dispose(&self, message: &aws_sdk_sqs::types::Message, reason: &str) {
        let id = message.message_id().unwrap_or("?");
        let dlq = match self.dead_letter_url().await {
            Ok(dlq) => dlq,
            Err(error) => {
                // Whether there is a dead-letter queue is unknown: keep the message for later.
                tracing::warn!(sqs_message_id = id, %error, "cannot read the feedback queue's redrive policy; the refused message comes back");
                return;
            }
        };
        if let Some(dlq) = dlq {
            let attribute = aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(reason)
                .build();
            let mut send = self
                .sqs
                .send_message()
                .queue_url(&dlq)
                .message_body(message.body().unwrap_or_default());
            if let Ok(attribute) = attribute {
                send = send.message_attributes("herald_refused", attribute);
            }
            if let Err(e) = send.send().await {
                tracing::warn!(sqs_message_id = id, error = %herald_shared::telemetry::error_chain(&e), "could not move a refused message to the dead-letter queue; it comes back");
                return;
            }
        }
        self.delete(message, "a refused message").await;
    }

    /// Counts a refused message in the database for the console (a failure only logs).
    async fn count_refused(&self, reason: &str) {
        let counted = async {
            let mut conn = self.pool.acquire().await?;
            herald_shared::feedback::count_rejection(&mut conn, reason).await
        }
        .await;
        if let Err(error) = counted {
            tracing::warn!(%error, reason, "could not count a refused feedback message");
        }
    }

    async fn poll_loop(&self, token: CancellationToken) {
        while !token.is_cancelled() {
            let receive = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(self.wait_seconds)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send();
            // A cancelled long poll is dropped: anything it had received becomes visible again later.
            let result = tokio::select! {
                () = token.cancelled() => break,
                r = receive => r,
            };
            let messages = match result {
                Ok(out) => out.messages.unwrap_or_default(),
                Err(err) => {
                    tracing::error!(error = %herald_shared::telemetry::error_chain(&err), "receiving feedback failed");
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            for message in messages {
                self.handle(&message).await;
            }
        }
    }

    /// Receives without waiting and handles what arrives until a receive answers empty; returns
    /// how many messages were handled. For deterministic runs (tests, one-off catch-up): a message
    /// left for redelivery stays invisible for the queue's visibility timeout, so it is not seen
    /// twice in one drain.
    pub async fn drain(&self) -> Result<usize, String> {
        let mut handled = 0;
        loop {
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send()
                .await
                .map_err(|e| herald_shared::telemetry::error_chain(&e))?;
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                return Ok(handled);
            }
            for message in &messages {
                self.handle(message).await;
            }
            handled += messages.len();
        }
    }

    /// Applies one message and deletes it only once its effects are committed.
    pub async fn handle(&self, message: &aws_sdk_sqs::types::Message) {
        let id = message.message_id().unwrap_or("?");
        let receives = message
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(1);
        let body = message.body().unwrap_or_default();
        let outcome = match parse::json_object(body) {
            Ok(outer) => match self.trust.admit(&outer).await {
                Ok(_) => {
                    // Kept only for a subscription message, which may need confirming.
                    let control = matches!(
                        outer.get("Type").and_then(serde_json::Value::as_str),
                        Some("SubscriptionConfirmation")
                    )
                    .then(|| outer.clone());
                    apply_value(&self.pool, &self.policy, outer, message.message_id())
                        .await
                        .map(|o| (o, control))
                }
                Err(rejection) => {
                    self.rejected(id, receives, &rejection).await;
                    // A certificate that could not be fetched may be there next time.
                    let transient = rejection.reason == Reason::CertificateUnavailable
                        && receives < UNAVAILABLE_RECEIVES;
                    if !transient {
                        self.dispose(message, rejection.reason.as_str()).await;
                    }
                    return;
                }
            },
            Err(e) => Err(ApplyError::Parse(e)),
        };
        let delete = match outcome {
            Ok((
                Outcome::Applied {
                    new,
                    duplicates,
                    kinds,
                },
                _,
            )) => {
                self.stats.applied.fetch_add(new as u64, Ordering::Relaxed);
                for kind in kinds {
                    self.metrics
                        .feedback_events
                        .get_or_create(&herald_shared::metrics::TypeLabel { r#type: kind })
                        .inc();
                }
                self.stats
                    .duplicates
                    .fetch_add(duplicates as u64, Ordering::Relaxed);
                tracing::debug!(sqs_message_id = id, new, duplicates, "feedback applied");
                true
            }
            Ok((Outcome::Control(kind), control)) => {
                self.stats.control.fetch_add(1, Ordering::Relaxed);
                let confirmed = match control {
                    Some(outer) => self.trust.confirm(&outer).await,
                    None => Ok(false),
                };
                match confirmed {
                    Ok(true) => {
                        tracing::info!(sqs_message_id = id, kind, "SNS subscription confirmed");
                        true
                    }
                    Ok(false) => {
                        tracing::info!(
                            sqs_message_id = id,
                            kind,
                            "SNS subscription message; deleted"
                        );
                        true
                    }
                    Err(error) => {
                        tracing::warn!(
                            sqs_message_id = id,
                            kind,
                            error,
                            "could not confirm the SNS subscription; SQS will redeliver it"
                        );
                        false
                    }
                }
            }
            Err(ApplyError::Parse(err)) => {
                self.stats.poison.fetch_add(1, Ordering::Relaxed);
                self.metrics.poison_messages.inc();
                if receives == 1 {
                    self.count_refused("poison").await;
                }
                tracing::warn!(sqs_message_id = id, receives, error = %err, "poison feedback message; moved to the dead-letter queue (or deleted without one)");
                self.dispose(message, "poison").await;
                false
            }
            Err(ApplyError::Db(err)) => {
                self.stats.db_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sqs_message_id = id, error = %err, "feedback not applied (database); SQS will redeliver it");
                false
            }
        };
        if delete {
            // Applied but not deleted: it comes back and is recognised as a duplicate.
            self.delete(message, "an applied message").await;
        }
    }

    /// A refused message is logged and counted once, on its first receive, however often SQS
    /// shows it again (a certificate fetch that failed is tried on a few receives).
    async fn rejected(&self, id: &str, receives: u32, rejection: &Rejection) {
        if receives > 1 {
            tracing::debug!(sqs_message_id = id, receives, %rejection, "refused feedback seen again");
            return;
        }
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .feedback_rejected
            .get_or_create(&herald_shared::metrics::ReasonLabel {
                reason: rejection.reason.as_str().to_owned(),
            })
            .inc();
        self.count_refused(rejection.reason.as_str()).await;
        tracing::warn!(
            sqs_message_id = id,
            reason = rejection.reason.as_str(),
            detail = %rejection.detail,
            "feedback refused: not applied; moved to the dead-letter queue (or deleted without one)"
        );
    }
}
