//! The email job handler: ledger first, then suppression, rendering, the rate limit and SES.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{BoxDynError, Data, TaskId};
use chrono::Utc;
use herald_shared::email::ledger::{self, Blocker, Status};
use herald_shared::email::{self, Category, EmailContent, EmailJob, templates};
use herald_shared::metrics::{Metrics, Outcome as EmailOutcome, QueueOutcome};
use herald_shared::tokens::{self, TokenKind};
use herald_shared::{address, db, jobs};
use rand::Rng;
use serde_json::{Value, json};
use sqlx::PgPool;
use tracing::Instrument;

use crate::group::Group;
use crate::ses::{OutgoingEmail, SendError, SesSender};

/// What every email job needs, shared by the process's workers.
#[derive(Debug)]
pub struct EmailContext {
    /// Database pool.
    pub pool: PgPool,
    /// SES client.
    pub sender: SesSender,
    /// Base of links.
    pub frontend_url: String,
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

/// A claim request: job id, recipient, category.
type ClaimRequest = (String, String, String);

/// The grouped ledger writes of one worker process.
#[derive(Debug)]
pub struct LedgerGroups {
    /// Moves rows to `sending` (the common case) for many emails at once.
    claims: Group<ClaimRequest, ledger::Claim>,
    /// Writes `sent` for many emails at once.
    sent: Group<(String, Option<String>), ()>,
}

/// How long a grouped ledger statement may take before its emails fall back to the per-email path
/// (a row lock held elsewhere, a half-open connection): one stuck row must not stall the group.
pub const GROUP_STATEMENT_BOUND: Duration = Duration::from_secs(2);

impl LedgerGroups {
    /// Starts the two writer tasks.
    pub fn start(pool: &PgPool) -> Self {
        Self::start_with_bound(pool, GROUP_STATEMENT_BOUND)
    }

    /// Starts the two writer tasks, giving up on a grouped statement after `bound`.
    pub fn start_with_bound(pool: &PgPool, bound: Duration) -> Self {
        let claim_pool = pool.clone();
        let claims = Group::start(256, move |items: Vec<ClaimRequest>| {
            let pool = claim_pool.clone();
            async move {
                let mut ids = Vec::with_capacity(items.len());
                let mut emails = Vec::with_capacity(items.len());
                let mut categories = Vec::with_capacity(items.len());
                for (id, to, category) in items {
                    ids.push(id);
                    emails.push(to);
                    categories.push(category);
                }
                let write = async |conn: &mut sqlx::PgConnection| {
                    ledger::claim_clear_many(conn, &ids, &emails, &categories).await
                };
                // On failure each email takes the step-by-step path.
                let Some(claimed) = grouped_write(&pool, "claim", ids.len(), bound, write).await
                else {
                    return Vec::new();
                };
                let mut claimed: std::collections::HashMap<_, _> = claimed.into_iter().collect();
                ids.iter().map(|id| claimed.remove(id)).collect()
            }
        });
        let sent_pool = pool.clone();
        let sent = Group::start(256, move |items: Vec<(String, Option<String>)>| {
            let pool = sent_pool.clone();
            async move {
                let (ids, message_ids): (Vec<String>, Vec<Option<String>>) =
                    items.into_iter().unzip();
                let write = async |conn: &mut sqlx::PgConnection| {
                    ledger::mark_sent_many(conn, &ids, &message_ids).await
                };
                // On failure each email writes its own row, with retries and per-row errors.
                match grouped_write(&pool, "'sent'", ids.len(), bound, write).await {
                    Some(_) => vec![Some(()); ids.len()],
                    None => Vec::new(),
                }
            }
        });
        Self { claims, sent }
    }
}

/// Runs one grouped statement on a pooled connection within `bound`; a failure or a statement
/// that outlasts the bound is logged and answers `None` (its emails then go one by one).
async fn grouped_write<T>(
    pool: &PgPool,
    what: &str,
    emails: usize,
    bound: Duration,
    write: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
) -> Option<T> {
    use sqlx::Connection;
    // The server gives up too (a lock held elsewhere, a slow plan) and releases the rows it locked,
    // so the per-email path is not left waiting behind an abandoned statement.
    let ms = bound.as_millis().max(1);
    let begin =
        format!("BEGIN; SET LOCAL lock_timeout = '{ms}ms'; SET LOCAL statement_timeout = '{ms}ms'");
    let attempt = async {
        let mut conn = pool.acquire().await?;
        let run = async {
            let mut tx = conn.begin_with(sqlx::AssertSqlSafe(begin)).await?;
            let done = write(&mut tx).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(done)
        };
        match tokio::time::timeout(bound + Duration::from_millis(500), run).await {
            Ok(result) => result,
            Err(_) => {
                // No answer (a half-open connection): it must not be reused.
                conn.close_on_drop();
                Err(sqlx::Error::PoolTimedOut)
            }
        }
    };
    match tokio::time::timeout(bound.saturating_mul(2), attempt).await {
        Ok(Ok(done)) => Some(done),
        Ok(Err(error)) => {
            tracing::warn!(%error, emails, "grouped {what} write failed; one by one instead");
            None
        }
        Err(_) => {
            tracing::warn!(
                emails,
                bound_ms = bound.as_millis() as u64,
                "grouped {what} write took too long; one by one instead"
            );
            None
        }
    }
}

/// Warns when a run finds its row `sending`: an earlier attempt died during its SES call, so this
/// one may send the email again. Says whether it did.
fn warn_if_uncertain(id: &str, before: &ledger::Delivery) -> bool {
    let uncertain = before.status == Status::Sending;
    if uncertain {
        tracing::warn!(
            job_id = id,
            "an earlier attempt died during its SES call; sending again"
        );
    }
    uncertain
}

/// A block of reserved send slots. Reserving 50 ms worth at a time keeps the shared limiter's row
/// from becoming the bottleneck at high rates; at SES's usual rates a block is one slot.
#[derive(Debug, Default)]
pub struct SendSlots(tokio::sync::Mutex<Option<(chrono::DateTime<Utc>, u32)>>);

impl SendSlots {
    /// The time this process may make its next SES call.
    pub async fn next(
        &self,
        pool: &PgPool,
        per_second: f64,
    ) -> Result<chrono::DateTime<Utc>, sqlx::Error> {
        let spacing = chrono::Duration::microseconds((1_000_000.0 / per_second.max(0.001)) as i64);
        let mut block = self.0.lock().await;
        // Slots left over from a quiet spell are stale: sending on them late could exceed the rate.
        let stale = Utc::now() - chrono::Duration::milliseconds(50);
        if let Some((next, left)) = block.as_mut()
            && *left > 0
            && *next > stale
        {
            let slot = *next;
            *next += spacing;
            *left -= 1;
            return Ok(slot);
        }
        let size = ((per_second * 0.05) as u32).max(1);
        let mut conn = pool.acquire().await?;
        let first = email::reserve_send_slots(&mut conn, per_second, size).await?;
        *block = Some((first + spacing, size - 1));
        Ok(first)
    }
}

/// Why a run failed; apalis records the text in `last_result`.
#[derive(Debug, thiserror::Error)]
pub enum JobFailure {
    /// SES failed; the job may run again later (or has failed for good, see the ledger).
    #[error("{0}")]
    Send(#[from] SendError),
    /// Sending is paused for every worker; this job waits without using an attempt.
    #[error("sending paused until {0}")]
    Paused(chrono::DateTime<Utc>),
    /// The database failed; the job runs again (at once, as apalis does for failures).
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Queue bookkeeping failed.
    #[error("{0}")]
    Job(#[from] jobs::JobError),
    /// Issuing a token failed.
    #[error("{0}")]
    Token(#[from] tokens::TokenError),
    /// The job cannot be rendered (unknown user, template error): final.
    #[error("cannot build the email: {0}")]
    Content(String),
    /// The run's task ended without an answer (it panicked).
    #[error("the email job's run was aborted: {0}")]
    Aborted(String),
}

/// The delay before attempt `attempt + 1`: base × 2^(attempt−1), capped, with equal jitter
/// (half fixed, half random) so that workers hit by one throttle do not retry in step.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1).min(30)));
    let capped = exp.min(max);
    let half = capped / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis().min(u128::from(u64::MAX)) as u64);
    half + Duration::from_millis(jitter)
}

/// Handles one email job. `Ok` carries the outcome apalis stores; `Err` makes apalis record a
/// failed run, after this handler has set when (or whether) the job runs again.
pub async fn handle(
    job: EmailJob,
    task_id: TaskId,
    ctx: Data<Arc<EmailContext>>,
) -> Result<Value, BoxDynError> {
    let ctx: Arc<EmailContext> = Arc::clone(&ctx);
    let id = task_id.to_string();
    let span = tracing::info_span!("email_job", job_id = %id, to = %address::mask(&job.to));
    let started = std::time::Instant::now();
    // One run per job in this process at a time, and a run finishes even if apalis drops this
    // future (a worker restarted after a database outage, whose jobs the next instance rescues):
    // the rescue then waits for it and finds the email `sent` instead of sending it again.
    let guard = ctx.in_flight.enter(&id).await;
    let task = {
        let ctx = Arc::clone(&ctx);
        let id = id.clone();
        tokio::spawn(
            async move {
                let _guard = guard;
                run(&ctx, &id, &job).await
            }
            .instrument(span),
        )
    };
    let result = match task.await {
        Ok(result) => result,
        Err(error) => Err(JobFailure::Aborted(error.to_string())),
    };
    if let Err(JobFailure::Db(_) | JobFailure::Job(_)) = &result {
        back_off_after_database_error(&ctx, &id).await;
    }
    let outcome = if result.is_ok() {
        "succeeded"
    } else {
        "failed"
    };
    ctx.metrics
        .job_duration
        .get_or_create(&QueueOutcome {
            queue: email::EMAIL_QUEUE.into(),
            outcome: outcome.into(),
        })
        .observe(started.elapsed().as_secs_f64());
    result.map_err(|e| Box::new(e) as BoxDynError)
}

/// A database error is as transient as a throttle: the job waits with the same backoff instead of
/// apalis fetching it again at once. Best effort, and bounded: with the database out of reach the
/// job runs again when apalis can fetch it, which is no sooner than the database is back.
async fn back_off_after_database_error(ctx: &EmailContext, id: &str) {
    let attempt = async {
        let mut conn = ctx.pool.acquire().await?;
        jobs::back_off_running(&mut conn, id, ctx.backoff_base, ctx.backoff_max).await?;
        Ok::<_, JobFailure>(())
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(job_id = id, %error, "could not delay the job after a database error")
        }
        Err(_) => tracing::warn!(
            job_id = id,
            "could not delay the job after a database error in time"
        ),
    }
}

/// The email jobs this process is running, so that a job never runs twice in it at once.
#[derive(Debug, Default)]
pub struct InFlight {
    ids: std::sync::Mutex<std::collections::HashSet<String>>,
    done: tokio::sync::Notify,
}

/// A job's place in [`InFlight`], given back when dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    set: Arc<InFlight>,
    id: String,
}

impl InFlight {
    /// Waits until no other run of this job is in flight here, then takes its place.
    pub async fn enter(self: &Arc<Self>, id: &str) -> InFlightGuard {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            // Registered before the check, so a release between the two is not missed.
            done.as_mut().enable();
            if self.lock().insert(id.to_owned()) {
                return InFlightGuard {
                    set: Arc::clone(self),
                    id: id.to_owned(),
                };
            }
            done.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        // The set stays consistent even if a holder panicked: inserts and removes are single steps.
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
        self.set.done.notify_waiters();
    }
}

async fn run(ctx: &EmailContext, id: &str, job: &EmailJob) -> Result<Value, JobFailure> {
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

    // Plain content with nothing holding it back: one grouped statement, not a transaction of four.
    if let Some(Ok(rendered)) = render_plain(job) {
        let request = (
            id.to_owned(),
            job.to.clone(),
            job.category.as_str().to_owned(),
        );
        if let Some(claim) = ctx.ledger.claims.call(request).await {
            warn_if_uncertain(id, &claim.before);
            let last_attempt = claim.job_attempts + 1 >= claim.max_attempts;
            let outgoing = outgoing(ctx, id, job, rendered);
            return send(ctx, id, &outgoing, &claim.before, last_attempt).await;
        }
    }

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
            return Ok(json!({"outcome": "sent", "ses_message_id": delivery.ses_message_id}));
        }
        Status::Suppressed | Status::Cancelled => {
            tx.commit().await?;
            return Ok(json!({"outcome": delivery.status, "ses_message_id": null}));
        }
        Status::Failed => {
            // Given up by an earlier run whose end apalis did not record: end this one too.
            jobs::finish_after_this_run(&mut tx, id).await?;
            tx.commit().await?;
            return Err(JobFailure::Content(
                delivery
                    .last_error
                    .unwrap_or_else(|| "the email failed for good earlier".into()),
            ));
        }
        Status::Pending | Status::Sending => {}
    }
    let gate = email::send_gate(&mut tx, id, &job.to, job.category).await?;
    if let Some(pause) = gate.pause {
        jobs::reschedule_running(&mut tx, id, pause.until, true).await?;
        let reason = format!(
            "sending paused until {} ({})",
            pause.until,
            pause.reason.unwrap_or_default()
        );
        ledger::release(&mut tx, id, &reason).await?;
        tx.commit().await?;
        return Err(JobFailure::Paused(pause.until));
    }
    if gate.blocker == Some(Blocker::Held) {
        // Held, not failed: the job looks again later and is sent once sending resumes.
        let until =
            Utc::now() + chrono::Duration::from_std(ctx.compliance_recheck).unwrap_or_default();
        jobs::reschedule_running(&mut tx, id, until, true).await?;
        let reason = format!(
            "{} sending is paused by the compliance guard",
            job.category.as_str()
        );
        ledger::release(&mut tx, id, &reason).await?;
        tx.commit().await?;
        return Err(JobFailure::Paused(until));
    }
    if gate.blocker == Some(Blocker::Suppressed) {
        ledger::suppress(&mut tx, id).await?;
        tx.commit().await?;
        count(ctx, "suppressed");
        tracing::info!(job_id = id, to = %address::mask(&job.to), "recipient suppressed; not sent");
        return Ok(json!({"outcome": "suppressed", "ses_message_id": null}));
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
    let (outgoing, token_id) = match build(ctx, id, job, &mut tx).await {
        Ok(built) => built,
        Err(JobFailure::Content(reason)) => {
            ledger::fail(&mut tx, id, &reason, false).await?;
            jobs::finish_after_this_run(&mut tx, id).await?;
            tx.commit().await?;
            return Err(JobFailure::Content(reason));
        }
        Err(other) => return Err(other),
    };
    let last_attempt = gate.attempts + 1 >= gate.max_attempts;
    if !ledger::claim(&mut tx, id, token_id).await? {
        return Err(JobFailure::Content(
            "the ledger row left pending/sending meanwhile".into(),
        ));
    }
    tx.commit().await?;
    send(ctx, id, &outgoing, &delivery, last_attempt).await
}

/// Calls SES for a job whose ledger row is committed as `sending`, and records what happened.
async fn send(
    ctx: &EmailContext,
    id: &str,
    outgoing: &OutgoingEmail,
    delivery: &ledger::Delivery,
    last_attempt: bool,
) -> Result<Value, JobFailure> {
    let error = match ctx.sender.send(outgoing).await {
        Ok(message_id) => {
            record_sent(ctx, id, message_id.as_deref()).await?;
            count(ctx, "sent");
            tracing::info!(
                job_id = id,
                ses_message_id = message_id.as_deref().unwrap_or("(none given)"),
                "email sent"
            );
            return Ok(json!({"outcome": "sent", "ses_message_id": message_id}));
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
            jobs::reschedule_running(&mut conn, id, until, true).await?;
            ledger::release(&mut conn, id, &reason).await?;
            tracing::warn!(job_id = id, error = %reason, %until, "SES paused sending; every worker stops until then");
            Err(SendError::Paused(reason).into())
        }
        err => {
            // Permanent, or retryable with no attempts left.
            let reason = err.to_string();
            let unknown = matches!(err, SendError::Unknown(_));
            ledger::fail(&mut conn, id, &reason, unknown).await?;
            jobs::finish_after_this_run(&mut conn, id).await?;
            count(ctx, "failed");
            tracing::warn!(job_id = id, error = %reason, "email failed for good");
            Err(err.into())
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

/// Schedules the next attempt after a retryable failure.
async fn retry_later(
    ctx: &EmailContext,
    conn: &mut sqlx::PgConnection,
    id: &str,
    delivery: &ledger::Delivery,
    reason: String,
    outcome_unknown: bool,
) -> Result<Value, JobFailure> {
    let delay = backoff(
        ctx.backoff_base,
        ctx.backoff_max,
        delivery.attempts as u32 + 1,
    );
    let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
    jobs::reschedule_running(conn, id, next, false).await?;
    if outcome_unknown {
        ledger::keep_unknown(conn, id, &reason).await?;
    } else {
        ledger::release(conn, id, &reason).await?;
    }
    tracing::warn!(job_id = id, error = %reason, retry_in_ms = delay.as_millis() as u64, "send failed; will retry");
    Err(SendError::Retryable(reason).into())
}

/// How long an accepted email's `sent` write keeps trying while the database is out of reach:
/// giving up is what turns an outage into a resend.
const SENT_PATIENCE: Duration = Duration::from_secs(60);

/// Records SES's acceptance, retrying through a database outage of up to [`SENT_PATIENCE`]:
/// losing this write is what could cause a resend. A write the database refuses for good (not a
/// lost connection or a server shutting down) still marks the email sent, so that a retry never
/// sends it again.
async fn record_sent(
    ctx: &EmailContext,
    id: &str,
    message_id: Option<&str>,
) -> Result<(), JobFailure> {
    let grouped = ctx
        .ledger
        .sent
        .call((id.to_owned(), message_id.map(str::to_owned)));
    if grouped.await.is_some() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            let mut conn = ctx.pool.acquire().await?;
            ledger::mark_sent_many(
                &mut conn,
                &[id.to_owned()],
                &[message_id.map(str::to_owned)],
            )
            .await
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

/// Renders the message; verification and reset emails get a fresh token, stored as a hash.
async fn build(
    ctx: &EmailContext,
    id: &str,
    job: &EmailJob,
    tx: &mut sqlx::PgConnection,
) -> Result<(OutgoingEmail, Option<uuid::Uuid>), JobFailure> {
    let content_error = |e: templates::TemplateError| JobFailure::Content(e.to_string());
    let (rendered, token_id) = match &job.content {
        EmailContent::Template { .. } | EmailContent::Raw { .. } => match render_plain(job) {
            Some(rendered) => (rendered.map_err(content_error)?, None),
            None => return Err(JobFailure::Content("no content".into())),
        },
        EmailContent::Verification { user_id } | EmailContent::PasswordReset { user_id } => {
            let (kind, template, path) = match job.content {
                EmailContent::Verification { .. } => (
                    TokenKind::Verification,
                    templates::VERIFICATION,
                    "verify-email",
                ),
                _ => (
                    TokenKind::PasswordReset,
                    templates::PASSWORD_RESET,
                    "reset-password",
                ),
            };
            let name = sqlx::query_scalar!(
                "SELECT display_name FROM users WHERE id = $1 AND active",
                user_id
            )
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                JobFailure::Content("the user no longer exists or is inactive".into())
            })?;
            let (token_id, token) = tokens::issue(tx, kind, *user_id, Utc::now()).await?;
            let link = format!("{}/{path}?token={}", ctx.frontend_url, token.raw);
            let rendered = templates::render(template, &json!({"name": name, "link": link}))
                .map_err(content_error)?;
            (rendered, Some(token_id))
        }
    };
    Ok((outgoing(ctx, id, job, rendered), token_id))
}

/// Renders content that needs no token (`None` for verification and reset emails).
fn render_plain(job: &EmailJob) -> Option<Result<templates::Rendered, templates::TemplateError>> {
    match &job.content {
        EmailContent::Template { name, data } => Some(templates::render(name, data)),
        EmailContent::Raw {
            subject,
            text,
            html,
        } => Some(Ok(templates::Rendered {
            subject: subject.clone(),
            text: text.clone().unwrap_or_default(),
            html: html.clone().unwrap_or_default(),
        })),
        EmailContent::Verification { .. } | EmailContent::PasswordReset { .. } => None,
    }
}

/// The message SES gets: the rendered content, with unsubscribe headers on marketing mail.
fn outgoing(
    ctx: &EmailContext,
    id: &str,
    job: &EmailJob,
    rendered: templates::Rendered,
) -> OutgoingEmail {
    let mut headers = Vec::new();
    if job.category == Category::Marketing {
        // RFC 8058 one-click unsubscribe; the frontend resolves the job id to the address.
        headers.push((
            "List-Unsubscribe".to_owned(),
            format!("<{}/unsubscribe?job={id}>", ctx.frontend_url),
        ));
        headers.push((
            "List-Unsubscribe-Post".to_owned(),
            "List-Unsubscribe=One-Click".to_owned(),
        ));
    }
    OutgoingEmail {
        to: job.to.clone(),
        subject: rendered.subject,
        text: Some(rendered.text).filter(|t| !t.is_empty()),
        html: Some(rendered.html).filter(|h| !h.is_empty()),
        headers,
        job_id: id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{InFlight, backoff};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_run_of_a_job_waits_for_the_first_and_other_jobs_do_not() {
        let set = Arc::new(InFlight::default());
        let first = set.enter("job-1").await;
        // Another job is not held up.
        let other = tokio::time::timeout(Duration::from_millis(100), set.enter("job-2")).await;
        assert!(other.is_ok(), "a different job waited");
        let second = tokio::spawn({
            let set = Arc::clone(&set);
            async move { set.enter("job-1").await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "the same job ran twice at once");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), second).await;
        assert!(
            second.is_ok(),
            "the second run did not start after the first ended"
        );
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        for attempt in 1..=8_u32 {
            let full = (base * 2_u32.pow(attempt - 1)).min(max);
            for _ in 0..50 {
                let d = backoff(base, max, attempt);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
        assert!(backoff(base, max, 100) <= max);
    }
}
