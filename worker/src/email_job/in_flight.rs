//! One run per job per process at a time.

use std::sync::Arc;

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

#[cfg(test)]
mod tests {
    use super::InFlight;
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
}
