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

use super::{EmailJob, NewEmail, Queued, enqueue_many};
use crate::db::{Db, is_unavailable};
use crate::group::{Abandoned, Group};
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

/// Limits of [`EnqueueGroups`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Statements in flight at once; emails that arrive while all are busy wait for the next.
    pub statements: usize,
    /// Emails in one statement at most.
    pub max_group: usize,
}

/// The API's queue of single email enqueues, refused for suppressed recipients as
/// `POST /v1/emails` answers them; see the module's documentation.
#[derive(Debug, Clone)]
pub struct EnqueueGroups {
    group: Arc<Group<GroupedEmail, Answer>>,
    statements: Arc<AtomicU64>,
}

impl EnqueueGroups {
    /// Starts the task that groups and queues emails on `db` (it ends when every handle is dropped).
    pub fn start(db: Db, limits: GroupLimits) -> Self {
        let statements = Arc::new(AtomicU64::default());
        let counter = statements.clone();
        // A request that timed out while it waited is not queued after it was answered 503.
        let group = Group::start_with(
            limits.max_group,
            limits.statements,
            Abandoned::Skip,
            move |emails| {
                let (db, counter) = (db.clone(), counter.clone());
                async move {
                    let mut answers: Vec<Option<Answer>> =
                        (0..emails.len()).map(|_| None).collect();
                    // Rounds, each with distinct keys (`enqueue_emails` requires it): a repeated key
                    // runs after its first use committed, and so is answered as a replay or conflict.
                    for round in rounds(&emails) {
                        counter.fetch_add(1, Ordering::Relaxed);
                        let batch: Vec<&GroupedEmail> = round.iter().map(|&i| &emails[i]).collect();
                        for (i, answer) in round.into_iter().zip(queue_round(&db, &batch).await) {
                            answers[i] = Some(answer);
                        }
                    }
                    answers
                }
            },
        );
        Self {
            group: Arc::new(group),
            statements,
        }
    }

    /// Queues one email with whatever others are waiting; its own answer, as `enqueue_many`
    /// with `refuse_suppressed` gives it.
    pub async fn queue(&self, email: GroupedEmail) -> Answer {
        self.group
            .call(email)
            .await
            .unwrap_or_else(|| Err(GroupError::Failed("the enqueue task gave no answer".into())))
    }

    /// Statements run so far (each queues one round of a group).
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
}

/// Splits a group into rounds (indices into it) in which no idempotency key appears twice,
/// keeping arrival order.
fn rounds(group: &[GroupedEmail]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<Vec<usize>> = vec![Vec::with_capacity(group.len())];
    for (i, email) in group.iter().enumerate() {
        let at = match email.key() {
            None => 0,
            Some(key) => rounds
                .iter()
                .position(|round| round.iter().all(|&j| group[j].key() != Some(key)))
                .unwrap_or(rounds.len()),
        };
        if at == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[at].push(i);
    }
    rounds
}

/// One statement for a round; an answer per email, in order.
async fn queue_round(db: &Db, round: &[&GroupedEmail]) -> Vec<Answer> {
    let everyone = |err: GroupError| round.iter().map(|_| Err(err.clone())).collect();
    let mut conn = match db.acquire().await {
        Ok(conn) => conn,
        Err(err) => return everyone(GroupError::from(&JobError::Db(err))),
    };
    let emails: Vec<NewEmail<'_>> = round.iter().map(|e| e.as_new()).collect();
    match enqueue_many(&mut conn, &emails, true).await {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        // The server refused the statement, so nothing of it was written: each email alone, so
        // that one email's failure is its own.
        Err(err) if round.len() > 1 && refused(&err) => {
            tracing::warn!(emails = round.len(), error = %crate::telemetry::error_chain(&err),
                "a grouped enqueue was refused; queueing its emails one by one");
            let mut answers = Vec::with_capacity(round.len());
            for email in &emails {
                answers.push(
                    enqueue_many(&mut conn, std::slice::from_ref(email), true)
                        .await
                        .map_err(|e| GroupError::from(&e))
                        .and_then(|mut one| {
                            one.pop().ok_or_else(|| {
                                GroupError::Failed("enqueue_emails gave no answer".into())
                            })
                        }),
                );
            }
            answers
        }
        Err(err) => everyone(GroupError::from(&err)),
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

    fn email(key: Option<&str>) -> GroupedEmail {
        GroupedEmail {
            job: EmailJob {
                envelope: Default::default(),
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
        }
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
        let group: Vec<GroupedEmail> = keys.iter().map(|k| email(*k)).collect();
        assert_eq!(rounds(&group), vec![vec![0, 1, 2, 4], vec![3, 6], vec![5]]);
    }
}
