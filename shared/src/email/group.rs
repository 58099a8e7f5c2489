//! Concurrent single enqueues queued together: each `POST /v1/emails` waits for one statement
//! that carries its email and every other email that arrived while earlier statements ran.
//!
//! A statement and its commit cost PostgreSQL about as much as the rows they write, so a busy
//! API queues many emails for the price of one; an idle one sends each email alone, at once (a
//! group never waits for company). Every email still gets its own answer from `enqueue_emails`
//! (queued, replayed, key conflict, suppressed), checked in SQL as when it was alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{EmailJob, NewEmail, Queued, enqueue_many};
use crate::db::{Db, is_unavailable};
use crate::jobs::JobError;

/// An email to queue, owned, as [`EnqueueGroups::queue`] takes it.
#[derive(Debug, Clone)]
pub struct GroupedEmail {
    /// The payload.
    pub job: EmailJob,
    /// Earliest send; `None` means now.
    pub run_at: Option<DateTime<Utc>>,
    /// Total runs allowed.
    pub max_attempts: u32,
    /// Idempotency key and the SHA-256 (hex) of its request.
    pub idempotency: Option<(String, String)>,
}

impl GroupedEmail {
    fn as_new(&self) -> NewEmail<'_> {
        NewEmail {
            job: &self.job,
            run_at: self.run_at,
            max_attempts: self.max_attempts,
            idempotency: self
                .idempotency
                .as_ref()
                .map(|(key, hash)| (key.as_str(), hash.as_str())),
        }
    }

    fn key(&self) -> Option<&str> {
        self.idempotency.as_ref().map(|(key, _)| key.as_str())
    }
}

/// Why a grouped enqueue has no answer. Cloneable: one failed statement answers every email in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    /// The database could not be reached (or went away); nothing was queued.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The statement failed otherwise.
    #[error("{0}")]
    Failed(String),
}

impl From<&JobError> for GroupError {
    fn from(err: &JobError) -> Self {
        let text = crate::telemetry::error_chain(err);
        match err.as_sqlx() {
            Some(db) if is_unavailable(db) => Self::Unavailable(text),
            _ => Self::Failed(text),
        }
    }
}

type Answer = Result<Queued, GroupError>;

struct Waiting {
    email: GroupedEmail,
    answer: oneshot::Sender<Answer>,
}

/// Limits of [`EnqueueGroups`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Statements in flight at once; emails that arrive while all are busy wait for the next.
    pub statements: usize,
    /// Emails in one statement at most.
    pub max_group: usize,
}

impl Default for GroupLimits {
    fn default() -> Self {
        Self {
            statements: 4,
            max_group: 100,
        }
    }
}

/// The API's queue of single email enqueues, refused for suppressed recipients as
/// `POST /v1/emails` answers them; see the module's documentation.
#[derive(Debug, Clone)]
pub struct EnqueueGroups {
    tx: mpsc::Sender<Waiting>,
    statements: Arc<AtomicU64>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting").finish_non_exhaustive()
    }
}

impl EnqueueGroups {
    /// Starts the task that groups and queues emails on `db` (it ends when every handle is dropped).
    pub fn start(db: Db, limits: GroupLimits) -> Self {
        let limits = GroupLimits {
            statements: limits.statements.max(1),
            max_group: limits.max_group.max(1),
        };
        let (tx, rx) = mpsc::channel(limits.max_group.saturating_mul(limits.statements).max(64));
        let statements = Arc::new(AtomicU64::default());
        tokio::spawn(run(db, rx, limits, statements.clone()));
        Self { tx, statements }
    }

    /// Queues one email with whatever others are waiting; its own answer, as `enqueue_many`
    /// with `refuse_suppressed` gives it.
    pub async fn queue(&self, email: GroupedEmail) -> Answer {
        let (answer, rx) = oneshot::channel();
        let stopped = || GroupError::Failed("the enqueue task stopped".into());
        self.tx
            .send(Waiting { email, answer })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Statements run so far (each queues one group).
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
}

async fn run(
    db: Db,
    mut rx: mpsc::Receiver<Waiting>,
    limits: GroupLimits,
    statements: Arc<AtomicU64>,
) {
    let permits = Arc::new(Semaphore::new(limits.statements));
    loop {
        // The permit first: while every statement is busy, arrivals gather in the channel.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < limits.max_group {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let (db, statements) = (db.clone(), statements.clone());
        tokio::spawn(async move {
            // Rounds, each with distinct keys (`enqueue_emails` requires it): a repeated key
            // runs after its first use committed, and so is answered as a replay or conflict.
            for round in rounds(group) {
                statements.fetch_add(1, Ordering::Relaxed);
                queue_round(&db, round).await;
            }
            drop(permit);
        });
    }
}

/// Splits a group into rounds in which no idempotency key appears twice, keeping arrival order.
fn rounds(group: Vec<Waiting>) -> Vec<Vec<Waiting>> {
    let mut rounds: Vec<Vec<Waiting>> = vec![Vec::with_capacity(group.len())];
    for waiting in group {
        let at = match waiting.email.key() {
            None => 0,
            Some(key) => rounds
                .iter()
                .position(|round| round.iter().all(|w| w.email.key() != Some(key)))
                .unwrap_or(rounds.len()),
        };
        if at == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[at].push(waiting);
    }
    rounds
}

async fn queue_round(db: &Db, round: Vec<Waiting>) {
    let mut conn = match db.acquire().await {
        Ok(conn) => conn,
        Err(err) => {
            let err = GroupError::from(&JobError::Db(err));
            for waiting in round {
                let _ = waiting.answer.send(Err(err.clone()));
            }
            return;
        }
    };
    let emails: Vec<NewEmail<'_>> = round.iter().map(|w| w.email.as_new()).collect();
    match enqueue_many(&mut conn, &emails, true).await {
        Ok(answers) => {
            for (waiting, answer) in round.into_iter().zip(answers) {
                let _ = waiting.answer.send(Ok(answer));
            }
        }
        // The server refused the statement, so nothing of it was written: each email alone, so
        // that one email's failure is its own.
        Err(err) if round.len() > 1 && refused(&err) => {
            tracing::warn!(emails = round.len(), error = %crate::telemetry::error_chain(&err),
                "a grouped enqueue was refused; queueing its emails one by one");
            for waiting in round {
                let answer = enqueue_many(&mut conn, &[waiting.email.as_new()], true)
                    .await
                    .map_err(|e| GroupError::from(&e))
                    .and_then(|mut answers| {
                        answers.pop().ok_or_else(|| {
                            GroupError::Failed("enqueue_emails gave no answer".into())
                        })
                    });
                let _ = waiting.answer.send(answer);
            }
        }
        Err(err) => {
            let err = GroupError::from(&err);
            for waiting in round {
                let _ = waiting.answer.send(Err(err.clone()));
            }
        }
    }
}

/// An error the server answered to the statement itself (not a lost connection, whose statement
/// may have committed).
fn refused(err: &JobError) -> bool {
    match err.as_sqlx() {
        Some(db @ sqlx::Error::Database(_)) => !is_unavailable(db),
        _ => matches!(err, JobError::Encode(_)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::email::{Category, EmailContent};

    fn waiting(key: Option<&str>) -> (Waiting, oneshot::Receiver<Answer>) {
        let (answer, rx) = oneshot::channel();
        let email = GroupedEmail {
            job: EmailJob {
                to: "a@example.com".into(),
                category: Category::Transactional,
                content: EmailContent::Raw {
                    subject: "s".into(),
                    text: Some("t".into()),
                    html: None,
                },
            },
            run_at: None,
            max_attempts: 1,
            idempotency: key.map(|k| (k.to_owned(), "h".to_owned())),
        };
        (Waiting { email, answer }, rx)
    }

    #[test]
    fn a_repeated_key_waits_for_a_later_round_and_order_is_kept() {
        let keys = [
            Some("a"),
            None,
            Some("b"),
            Some("a"),
            None,
            Some("a"),
            Some("b"),
        ];
        let group: Vec<Waiting> = keys.iter().map(|k| waiting(*k).0).collect();
        let rounds = rounds(group);
        let shape: Vec<Vec<Option<&str>>> = rounds
            .iter()
            .map(|r| r.iter().map(|w| w.email.key()).collect())
            .collect();
        assert_eq!(
            shape,
            vec![
                vec![Some("a"), None, Some("b"), None],
                vec![Some("a"), Some("b")],
                vec![Some("a")],
            ]
        );
    }
}
