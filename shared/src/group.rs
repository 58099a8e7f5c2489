//! Group commit: requests that arrive while a statement is in flight share the next one, so a
//! busy process pays one statement and one commit for many requests while a quiet one waits no
//! longer than before. The worker's ledger writes and the API's single enqueues use it.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// A request waiting for its group, and who to tell the result.
type Pending<I, O> = (I, oneshot::Sender<Option<O>>);

/// What a group does with a request whose caller stopped waiting before the group started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// Runs it anyway: its effect must not depend on the caller still being there.
    Run,
    /// Leaves it out (a request that timed out must not take effect later).
    Skip,
}

/// Runs requests of one kind in groups through one writer task.
#[derive(Debug)]
pub struct Group<I, O>(mpsc::Sender<Pending<I, O>>);

impl<I: Send + 'static, O: Send + 'static> Group<I, O> {
    /// Starts the writer task, one group in flight at a time; it ends when the group is dropped.
    /// `run` answers each request of a group in order; `None` (or a missing answer) tells that
    /// caller to do the work itself. A request runs even if its caller stopped waiting (a write
    /// whose effect already happened, such as `sent` after the SES call, must not be lost).
    pub fn start<F, Fut>(max: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Option<O>>> + Send + 'static,
    {
        Self::start_with(max, 1, Abandoned::Run, run)
    }

    /// [`Group::start`] with up to `in_flight` groups running at once (requests that arrive while
    /// all are busy gather for the next free one), and a choice for requests whose caller stopped
    /// waiting before their group started.
    pub fn start_with<F, Fut>(max: usize, in_flight: usize, abandoned: Abandoned, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Option<O>>> + Send + 'static,
    {
        let max = max.max(1);
        let (tx, mut rx) = mpsc::channel::<Pending<I, O>>(4096);
        let run = Arc::new(run);
        let permits = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            loop {
                // The permit first: while every group is busy, arrivals gather in the channel.
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = Vec::with_capacity(max);
                if rx.recv_many(&mut batch, max).await == 0 {
                    return;
                }
                if abandoned == Abandoned::Skip {
                    batch.retain(|(_, reply)| !reply.is_closed());
                    if batch.is_empty() {
                        continue;
                    }
                }
                let run = run.clone();
                tokio::spawn(async move {
                    let (items, replies): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
                    let mut answers = run(items).await.into_iter();
                    for reply in replies {
                        let _ = reply.send(answers.next().flatten());
                    }
                    drop(permit);
                });
            }
        });
        Self(tx)
    }

    /// This request's answer from its group; `None` if the group could not do it.
    pub async fn call(&self, item: I) -> Option<O> {
        let (reply, answer) = oneshot::channel();
        self.0.send((item, reply)).await.ok()?;
        answer.await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::{Abandoned, Group};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_requests_share_groups_and_get_their_own_answers() {
        let groups = Arc::new(AtomicUsize::new(0));
        let counter = groups.clone();
        let group = Arc::new(Group::start(64, move |items: Vec<u32>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                // Odd numbers are "failures": their callers get None.
                items
                    .into_iter()
                    .map(|i| (i % 2 == 0).then_some(i * 10))
                    .collect()
            }
        }));
        let calls: Vec<_> = (0..100_u32)
            .map(|i| {
                let group = group.clone();
                tokio::spawn(async move { (i, group.call(i).await) })
            })
            .collect();
        for call in calls {
            let (i, answer) = call.await.expect("task");
            assert_eq!(answer, (i % 2 == 0).then_some(i * 10), "answer for {i}");
        }
        let used = groups.load(Ordering::SeqCst);
        assert!(used < 50, "100 concurrent requests took {used} groups");
    }

    #[tokio::test]
    async fn short_answers_leave_the_rest_to_their_callers() {
        let group = Group::start(8, |_items: Vec<u32>| async { vec![Some(1_u32)] });
        let (a, b) = tokio::join!(group.call(1), group.call(2));
        // Whichever was first in the group got the one answer; the other got None.
        assert_eq!(a.into_iter().chain(b).collect::<Vec<_>>(), vec![1]);
    }

    #[tokio::test]
    async fn up_to_in_flight_groups_run_at_once() {
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (r, m) = (running.clone(), most.clone());
        let group = Arc::new(Group::start_with(
            1,
            3,
            Abandoned::Run,
            move |items: Vec<u32>| {
                let (r, m) = (r.clone(), m.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    items.into_iter().map(Some).collect()
                }
            },
        ));
        let calls: Vec<_> = (0..12_u32)
            .map(|i| {
                let group = group.clone();
                tokio::spawn(async move { group.call(i).await })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.expect("task"), Some(i as u32));
        }
        assert_eq!(most.load(Ordering::SeqCst), 3, "groups at once");
    }

    /// 1 occupies the only statement; 2 gives up while it waits; 3 waits it out. What ran.
    async fn run_with_one_caller_gone(abandoned: Abandoned) -> Vec<u32> {
        let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = ran.clone();
        let group = Arc::new(Group::start_with(
            8,
            1,
            abandoned,
            move |items: Vec<u32>| {
                let seen = seen.clone();
                async move {
                    seen.lock().expect("lock").extend(items.iter().copied());
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    items.into_iter().map(Some).collect()
                }
            },
        ));
        let first = tokio::spawn({
            let group = group.clone();
            async move { group.call(1).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(10), group.call(2)).await;
        assert!(
            gave_up.is_err(),
            "2 was answered before the first group ended"
        );
        assert_eq!(group.call(3).await, Some(3));
        assert_eq!(first.await.expect("task"), Some(1));
        ran.lock().expect("lock").to_vec()
    }

    #[tokio::test]
    async fn a_caller_that_gave_up_is_skipped_or_run_as_chosen() {
        assert_eq!(run_with_one_caller_gone(Abandoned::Skip).await, vec![1, 3]);
        assert_eq!(
            run_with_one_caller_gone(Abandoned::Run).await,
            vec![1, 2, 3]
        );
    }
}
