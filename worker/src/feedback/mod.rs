//! SES feedback from SQS: bounces and complaints become suppressions, idempotently, losing nothing.

pub mod apply;
pub mod parse;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use apply::{ApplyError, Outcome, Policy, apply};

/// Counters of what the consumer did since it started.
#[derive(Debug, Default)]
pub struct FeedbackStats {
    /// Events recorded and applied.
    pub applied: AtomicU64,
    /// Events already seen (a redelivered message).
    pub duplicates: AtomicU64,
    /// Messages that cannot be parsed (left for the dead-letter queue).
    pub poison: AtomicU64,
    /// Messages from a topic not allowed (left for the dead-letter queue).
    pub rejected_topic: AtomicU64,
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
    /// Concurrent pollers (`FEEDBACK_CONCURRENCY`).
    pub concurrency: usize,
    /// Long-poll wait, seconds (20, SQS's maximum).
    pub wait_seconds: i32,
    /// Counters.
    pub stats: Arc<FeedbackStats>,
    /// Metrics.
    pub metrics: Arc<herald_shared::metrics::Metrics>,
}

impl FeedbackConsumer {
    /// Runs the pollers until `token` is cancelled; a batch being applied is finished first.
    pub async fn run(self, token: CancellationToken) {
        tracing::info!(pollers = self.concurrency, "feedback consumer started");
        let mut tasks = Vec::new();
        for _ in 0..self.concurrency.max(1) {
            let me = self.clone();
            let token = token.clone();
            tasks.push(tokio::spawn(async move { me.poll_loop(token).await }));
        }
        for task in tasks {
            let _ = task.await;
        }
        tracing::info!("feedback consumer stopped");
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

    /// Applies one message and deletes it only once its effects are committed.
    pub async fn handle(&self, message: &aws_sdk_sqs::types::Message) {
        let id = message.message_id().unwrap_or("?");
        let receives = message
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .cloned()
            .unwrap_or_default();
        let body = message.body().unwrap_or_default();
        let delete = match apply(&self.pool, &self.policy, body, message.message_id()).await {
            Ok(Outcome::Applied {
                new,
                duplicates,
                kinds,
            }) => {
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
            Ok(Outcome::Control(kind)) => {
                self.stats.control.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    sqs_message_id = id,
                    kind,
                    "SNS subscription message; deleted"
                );
                true
            }
            Ok(Outcome::TopicNotAllowed(topic)) => {
                self.stats.rejected_topic.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    sqs_message_id = id,
                    topic,
                    receives,
                    "feedback from a topic not in SNS_ALLOWED_TOPIC_ARNS; not applied, left for the dead-letter queue"
                );
                false
            }
            Err(ApplyError::Parse(err)) => {
                self.stats.poison.fetch_add(1, Ordering::Relaxed);
                self.metrics.poison_messages.inc();
                tracing::warn!(sqs_message_id = id, receives, error = %err, "poison feedback message; left for the dead-letter queue");
                false
            }
            Err(ApplyError::Db(err)) => {
                self.stats.db_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sqs_message_id = id, error = %err, "feedback not applied (database); SQS will redeliver it");
                false
            }
        };
        if delete
            && let Some(handle) = message.receipt_handle()
            && let Err(err) = self
                .sqs
                .delete_message()
                .queue_url(&self.queue_url)
                .receipt_handle(handle)
                .send()
                .await
        {
            // Applied but not deleted: it comes back and is recognised as a duplicate.
            tracing::warn!(sqs_message_id = id, error = %herald_shared::telemetry::error_chain(&err), "could not delete an applied message");
        }
    }
}
