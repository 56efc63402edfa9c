//! When the queue worker asks Redis for jobs.
//!
//! apalis-core 1.0's `IntervalStrategy` re-arms its timer without polling
//! the new one when it fires, so nothing is set to wake the worker again:
//! after an empty fetch in that same turn the worker slept until its next
//! heartbeat (measured: a burst's first jobs waited 0.75 s in the queue,
//! bench "first SUCCESS after 1.02 s"; the latency bench's p99 was 100–700
//! ms). This strategy re-arms properly, and is woken at once when this
//! process queues a job, so the timer is only a fallback for jobs queued
//! by another process and need not spin: the idle daemon asked Redis for
//! jobs a hundred times a second.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{PollSnapshot, PollStrategy};
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};

/// A second fetch this soon after a push: a fetch already on its way when
/// the job was pushed may come back empty, and the worker would then
/// wait for the fallback timer.
const FOLLOW_UP: Duration = Duration::from_millis(5);

pub struct Wake {
    every: Duration,
    timer: Pin<Box<Sleep>>,
    notify: Arc<Notify>,
    pushed: Pin<Box<OwnedNotified>>,
}

impl Wake {
    /// Fetch every `every`, and whenever `notify` is told of a push.
    pub fn new(every: Duration, notify: Arc<Notify>) -> Wake {
        Wake {
            every,
            timer: Box::pin(tokio::time::sleep(every)),
            pushed: Box::pin(notify.clone().notified_owned()),
            notify,
        }
    }
}

impl PollStrategy for Wake {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut due = false;
        // Each new waiter is polled at once: it takes a stored permit, or
        // registers for the next push.
        while self.pushed.as_mut().poll(cx).is_ready() {
            self.pushed = Box::pin(self.notify.clone().notified_owned());
            self.timer.as_mut().reset(Instant::now() + FOLLOW_UP);
            due = true;
        }
        // Likewise the timer: re-armed and polled, so it wakes us again.
        while self.timer.as_mut().poll(cx).is_ready() {
            let every = self.every;
            self.timer.as_mut().reset(Instant::now() + every);
            due = true;
        }
        if due { Poll::Ready(Some(())) } else { Poll::Pending }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn drive(w: &mut Wake) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        w.poll_drive(&mut cx, &PollSnapshot::default()).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_wakes_at_once_then_once_more_then_the_timer_goes_on() {
        let notify = Arc::new(Notify::new());
        let mut w = Wake::new(Duration::from_millis(500), notify.clone());
        assert!(!drive(&mut w));
        notify.notify_one();
        assert!(drive(&mut w), "a push is due at once");
        assert!(!drive(&mut w));
        tokio::time::advance(FOLLOW_UP).await;
        assert!(drive(&mut w), "and once more shortly after");
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!drive(&mut w));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(drive(&mut w), "then every 500 ms");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(drive(&mut w), "the timer was re-armed");
    }
}
