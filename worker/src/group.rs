//! Group commit for ledger writes: requests that arrive while one statement is in flight share
//! the next one, so a busy worker pays one statement and one commit for many emails while a quiet
//! one waits no longer than before.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// A request waiting for its group, and who to tell the result.
type Pending<I, O> = (I, oneshot::Sender<Option<O>>);

/// Runs requests of one kind in groups through one writer task.
#[derive(Debug)]
pub struct Group<I, O>(mpsc::Sender<Pending<I, O>>);

impl<I: Send + 'static, O: Send + 'static> Group<I, O> {
    /// Starts the writer task; it ends when the group is dropped. `run` answers each request of a
    /// group in order; `None` (or a missing answer) tells that caller to do the work itself.
    pub fn start<F, Fut>(max: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Option<O>>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<Pending<I, O>>(4096);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while rx.recv_many(&mut batch, max).await > 0 {
                let (items, replies): (Vec<I>, Vec<_>) = batch.drain(..).unzip();
                let mut answers = run(items).await.into_iter();
                for reply in replies {
                    let _ = reply.send(answers.next().flatten());
                }
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
    use super::Group;
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
}
