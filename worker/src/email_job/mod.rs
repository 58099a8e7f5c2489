//! The email job handler, top to bottom: a slot from the shared rate limiter, the ledger claim
//! (grouped, or step by step with the send rule), SES, and the ledger's record of what happened.
//! The parts it leans on live beside it: `ledger_groups` (grouped ledger statements), `slots`
//! (the rate limiter's reservations), `in_flight` (one run per job per process), `failure` (why
//! a run failed, and the backoff) and `content` (rendering and the message SES gets).

mod content;
pub(crate) mod failure;
mod in_flight;
mod ledger_groups;
mod slots;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use herald_shared::email::ledger::{self, Blocker, Status};
use herald_shared::email::{self, EmailContent, EmailJob, attachments};
use herald_shared::metrics::{Metrics, Outcome as EmailOutcome};
use herald_shared::tokens::{self, TokenKind};
use herald_shared::{address, db};
use sqlx::PgPool;

use crate::job::{HeraldJob, Outcome, Runs};
use crate::ses::{EmailSender, OutgoingEmail, SendError};
use content::{build, outgoing, render_plain};
pub use failure::{JobFailure, backoff};
pub use in_flight::{InFlight, InFlightGuard};
pub use ledger_groups::{GROUP_STATEMENT_BOUND, LedgerGroups};
pub use slots::SendSlots;

/// What every email job needs, shared by the process's workers.
#[derive(Debug)]
pub struct EmailContext {
    /// Database pool.
    pub pool: PgPool,
    /// What sends: SES in production.
    pub sender: Arc<dyn EmailSender>,
    /// Base of verification and reset links.
    pub frontend_url: String,
    /// Compiled template versions.
    pub templates: Arc<herald_shared::email::templates::Cache>,
    /// Unsubscribe links for marketing mail; `None` when marketing mail is disabled.
    pub marketing: Option<Arc<herald_shared::unsubscribe::Marketing>>,
    /// Emails per second across every worker process.
    pub send_rate: f64,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long to stop after SES pauses the account.
    pub pause: Duration,
    /// Send slots this process reserved and has not used yet.
    pub slots: SendSlots,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// How often a job held by a compliance pause looks again.
    pub compliance_recheck: Duration,
    /// Grouped ledger writes.
    pub ledger: LedgerGroups,
    /// Jobs running in this process.
    pub in_flight: Arc<InFlight>,
}

crate::job::job_context!(EmailContext);

impl HeraldJob for EmailJob {
    type Context = EmailContext;

    fn span(&self, id: &str) -> tracing::Span {
        tracing::info_span!("email_job", job_id = %id, to = %address::mask(&self.to))
    }

    async fn run(self, id: String, runs: Runs, ctx: Arc<EmailContext>) -> Outcome {
        match run(&ctx, &id, &self, runs).await {
            Ok(outcome) => outcome,
            // The database, the queue or the token store failed: as transient as a throttle, so
            // the same backoff rather than apalis fetching the job again at once.
            Err(error) => {
                let after = backoff(ctx.backoff_base, ctx.backoff_max, runs.this);
                tracing::warn!(job_id = %id, %error, retry_in_ms = after.as_millis() as u64, "email run failed; will retry");
                Outcome::Retry {
                    after,
                    error: error.to_string(),
                }
            }
        }
    }
}

/// Warns when a run finds its row `sending`: an earlier attempt died during its SES call, so this
/// one may send the email again.
fn warn_if_uncertain(id: &str, before: &ledger::Delivery) {
    if before.status == Status::Sending {
        tracing::warn!(
            job_id = id,
            "an earlier attempt died during its SES call; sending again"
        );
    }
}

/// One run: `Ok` is what the run decided; `Err` a failure of the database (or the token store) on
/// the way, retried with backoff.
async fn run(
    ctx: &EmailContext,
    id: &str,
    job: &EmailJob,
    runs: Runs,
) -> Result<Outcome, JobFailure> {
    // Wait for our slot first, so that the ledger's 'sending' window before the SES call is short.
    let slot = ctx.slots.next(&ctx.pool, ctx.send_rate).await?;
    let wait = (slot - Utc::now()).to_std().unwrap_or_default();
    if !wait.is_zero() {
        ctx.metrics.rate_limiter_waits.inc();
        ctx.metrics
            .rate_limiter_wait_seconds
            .inc_by(wait.as_secs_f64());
        tokio::time::sleep(wait).await;
    }

    // Plain content to one recipient with nothing holding it back: one grouped statement, not a
    // transaction of four. Several recipients take the long way, which checks each of them.
    let unsubscribe = content::unsubscribe_link(ctx, job)?;
    if !job.envelope.lists_recipients()
        && job.envelope.attachments.is_empty()
        && let Some(Ok(rendered)) = render_plain(ctx, job, unsubscribe.as_deref()).await
    {
        let request = (
            id.to_owned(),
            job.to.clone(),
            job.category.as_str().to_owned(),
        );
        // Only `pending` rows are claimed here; one left `sending` by a crash goes the long way.
        if let Some(claim) = ctx.ledger.claims.call(request).await {
            let outgoing = outgoing(ctx, id, job, rendered, unsubscribe.as_deref());
            return send(ctx, id, &outgoing, &claim.before, runs).await;
        }
    }

    // An email with attachments holds them in memory, twice (bytes and MIME), while it is built
    // and sent: at most ATTACHMENT_SENDS at once per worker. Taken before any connection, so
    // that the emails waiting for it hold none.
    let _permit = if job.envelope.attachments.is_empty() {
        None
    } else {
        ATTACHMENT_SENDS.acquire().await.ok()
    };
    let mut tx = ctx.pool.begin().await?;
    let delivery = match ledger::lock(&mut tx, id).await? {
        Some(d) => d,
        None => {
            // A job pushed without its ledger row (another producer): create the row now.
            ledger::insert(&mut tx, id, &job.to, job.content.label(), job.category).await?;
            ledger::lock(&mut tx, id)
                .await?
                .ok_or_else(|| JobFailure::Content("ledger row vanished".into()))?
        }
    };
    match delivery.status {
        // SES accepted it on an earlier run whose result was lost: never send twice.
        Status::Sent => {
            tx.commit().await?;
            tracing::info!(job_id = id, "already sent; not sending again");
            return Ok(Outcome::Done(ledger::job_result(
                Status::Sent,
                delivery.ses_message_id.as_deref(),
            )));
        }
        Status::Suppressed | Status::Cancelled => {
            tx.commit().await?;
            return Ok(Outcome::Done(ledger::job_result(delivery.status, None)));
        }
        Status::Failed => {
            // Given up by an earlier run whose end apalis did not record: end this one too.
            tx.commit().await?;
            return Ok(Outcome::Fatal(
                delivery
                    .last_error
                    .unwrap_or_else(|| "the email failed for good earlier".into()),
            ));
        }
        Status::Pending | Status::Sending => {}
    }
    let gate = email::send_gate(&mut tx, &job.to, job.category).await?;
    if let Some(pause) = gate.pause {
        let reason = format!(
            "sending paused until {} ({})",
            pause.until,
            pause.reason.unwrap_or_default()
        );
        ledger::note_wait(&mut tx, id, &reason).await?;
        tx.commit().await?;
        return Ok(Outcome::Hold {
            until: pause.until,
            reason,
        });
    }
    if gate.blocker == Some(Blocker::Held) {
        // Held, not failed: the job looks again later and is sent once sending resumes.
        let until =
            Utc::now() + chrono::Duration::from_std(ctx.compliance_recheck).unwrap_or_default();
        let reason = format!(
            "{} sending is paused by the compliance guard",
            job.category.as_str()
        );
        ledger::note_wait(&mut tx, id, &reason).await?;
        tx.commit().await?;
        return Ok(Outcome::Hold { until, reason });
    }
    if gate.blocker == Some(Blocker::Suppressed) {
        ledger::suppress(&mut tx, id).await?;
        tx.commit().await?;
        count(ctx, "suppressed");
        tracing::info!(job_id = id, to = %address::mask(&job.to), "recipient suppressed; not sent");
        return Ok(Outcome::Done(ledger::job_result(Status::Suppressed, None)));
    }
    warn_if_uncertain(id, &delivery);
    let kind = match job.content {
        EmailContent::Verification { .. } => Some(TokenKind::Verification),
        EmailContent::PasswordReset { .. } => Some(TokenKind::PasswordReset),
        _ => None,
    };
    if let (Some(kind), Some(old)) = (kind, delivery.token_id) {
        tokens::revoke(&mut tx, kind, old).await?;
    }
    let (mut outgoing, token_id) = match build(ctx, id, job, &mut tx).await {
        Ok(built) => built,
        Err(JobFailure::Content(reason)) => {
            ledger::fail(&mut tx, id, &reason, false).await?;
            tx.commit().await?;
            return Ok(Outcome::Fatal(format!("cannot build the email: {reason}")));
        }
        Err(other) => return Err(other),
    };
    if outgoing.envelope.lists_recipients() {
        // The gate checked the first recipient; the others may have been suppressed since.
        let all: Vec<String> = outgoing.envelope.addresses().map(str::to_owned).collect();
        let gone = email::suppressed_among(&mut tx, &all, job.category).await?;
        if !gone.is_empty() {
            outgoing.envelope.without(&gone);
            tracing::info!(
                job_id = id,
                left_out = gone.len(),
                "suppressed recipients left out"
            );
        }
        if outgoing.envelope.primary().is_none() {
            ledger::suppress(&mut tx, id).await?;
            tx.commit().await?;
            count(ctx, "suppressed");
            return Ok(Outcome::Done(ledger::job_result(Status::Suppressed, None)));
        }
        ledger::set_recipients(&mut tx, id, outgoing.envelope.addresses().count()).await?;
    }
    if !outgoing.envelope.attachments.is_empty() {
        match attachments::load(&mut tx, &outgoing.envelope.attachments).await? {
            Ok(bytes) => outgoing.attachment_bytes = bytes,
            Err(reason) => {
                ledger::fail(&mut tx, id, &reason, false).await?;
                tx.commit().await?;
                return Ok(Outcome::Fatal(format!("cannot build the email: {reason}")));
            }
        }
    }
    // Locked above, so the row is still pending or sending.
    ledger::claim(&mut tx, id, token_id).await?;
    tx.commit().await?;
    send(ctx, id, &outgoing, &delivery, runs).await
}

/// Calls SES for a job whose ledger row is committed as `sending`, and records what happened.
async fn send(
    ctx: &EmailContext,
    id: &str,
    outgoing: &OutgoingEmail,
    delivery: &ledger::Delivery,
    runs: Runs,
) -> Result<Outcome, JobFailure> {
    let last_attempt = runs.is_last();
    let error = match ctx.sender.send(outgoing).await {
        Ok(message_id) => {
            record_sent(ctx, id, message_id.as_deref(), runs).await?;
            count(ctx, "sent");
            tracing::info!(
                job_id = id,
                ses_message_id = message_id.as_deref().unwrap_or("(none given)"),
                "email sent"
            );
            return Ok(Outcome::Done(ledger::job_result(
                Status::Sent,
                message_id.as_deref(),
            )));
        }
        Err(error) => error,
    };
    if let SendError::Retryable(reason) = &error
        && ["Throttl", "TooManyRequests", "LimitExceeded"]
            .iter()
            .any(|t| reason.contains(t))
    {
        ctx.metrics.ses_throttles.inc();
    }
    let mut conn = ctx.pool.acquire().await?;
    match error {
        SendError::Retryable(reason) if !last_attempt => {
            retry_later(ctx, &mut conn, id, delivery, reason, false).await
        }
        // The row stays `sending`, so the next attempt is counted as an uncertain resend.
        SendError::Unknown(reason) if !last_attempt => {
            retry_later(ctx, &mut conn, id, delivery, reason, true).await
        }
        SendError::Paused(reason) => {
            let until = Utc::now() + chrono::Duration::from_std(ctx.pause).unwrap_or_default();
            email::pause_sending(&mut conn, until, &reason).await?;
            ledger::release(&mut conn, id, &reason).await?;
            tracing::warn!(job_id = id, error = %reason, %until, "SES paused sending; every worker stops until then");
            Ok(Outcome::Hold {
                until,
                reason: SendError::Paused(reason).to_string(),
            })
        }
        err => {
            // Permanent, or retryable with no attempts left.
            let reason = err.to_string();
            let unknown = matches!(err, SendError::Unknown(_));
            ledger::fail(&mut conn, id, &reason, unknown).await?;
            count(ctx, "failed");
            tracing::warn!(job_id = id, error = %reason, "email failed for good");
            Ok(Outcome::Fatal(reason))
        }
    }
}

fn count(ctx: &EmailContext, outcome: &str) {
    ctx.metrics
        .emails
        .get_or_create(&EmailOutcome {
            outcome: outcome.into(),
        })
        .inc();
}

/// Records a retryable failure on the ledger and says when to try again.
async fn retry_later(
    ctx: &EmailContext,
    conn: &mut sqlx::PgConnection,
    id: &str,
    delivery: &ledger::Delivery,
    reason: String,
    outcome_unknown: bool,
) -> Result<Outcome, JobFailure> {
    let delay = backoff(
        ctx.backoff_base,
        ctx.backoff_max,
        delivery.attempts as u32 + 1,
    );
    if outcome_unknown {
        ledger::keep_unknown(conn, id, &reason).await?;
    } else {
        ledger::release(conn, id, &reason).await?;
    }
    tracing::warn!(job_id = id, error = %reason, retry_in_ms = delay.as_millis() as u64, "send failed; will retry");
    Ok(Outcome::Retry {
        after: delay,
        error: SendError::Retryable(reason).to_string(),
    })
}

/// How long an accepted email's `sent` write keeps trying while the database is out of reach:
/// giving up is what turns an outage into a resend.
const SENT_PATIENCE: Duration = Duration::from_secs(60);

/// Emails with attachments one worker builds and sends at once: 4 × (10 MB of bytes and ~14 MB
/// of MIME) bounds their memory to about 100 MB whatever `WORKER_CONCURRENCY` is.
static ATTACHMENT_SENDS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Records SES's acceptance, retrying through a database outage of up to [`SENT_PATIENCE`]:
/// losing this write is what could cause a resend. A write the database refuses for good (not a
/// lost connection or a server shutting down) still marks the email sent, so that a retry never
/// sends it again.
async fn record_sent(
    ctx: &EmailContext,
    id: &str,
    message_id: Option<&str>,
    runs: Runs,
) -> Result<(), JobFailure> {
    let run = i32::try_from(runs.this).unwrap_or(i32::MAX);
    let grouped = ctx
        .ledger
        .sent
        .call((id.to_owned(), message_id.map(str::to_owned), run));
    if grouped.await.is_some() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            let mut conn = ctx.pool.acquire().await?;
            let row = ledger::Accepted {
                job_id: id.to_owned(),
                ses_message_id: message_id.map(str::to_owned),
                note: None,
                run,
            };
            ledger::mark_sent_many(&mut conn, &[row], ledger::LockWait::Session).await
        };
        let err = match attempt.await {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        let transient = db::is_unavailable(&err) || !matches!(err, sqlx::Error::Database(_));
        if transient && started.elapsed() < SENT_PATIENCE {
            tracing::error!(job_id = id, ses_message_id = message_id, error = %err, "cannot record the sent email yet; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            continue;
        }
        if transient {
            return Err(err.into());
        }
        tracing::error!(job_id = id, ses_message_id = message_id, error = %err, "cannot store the SES message id; marking the email sent without it");
        let note = format!(
            "SES accepted message {}, which could not be stored: {err}",
            message_id.unwrap_or("(no id)")
        );
        let mut conn = ctx.pool.acquire().await?;
        ledger::mark_sent_without_id(&mut conn, id, &note).await?;
        return Ok(());
    }
}
