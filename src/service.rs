//! What systemd hears from `depot run` (`Type=notify`): READY=1 once Redis,
//! recovery and the watcher are up, WATCHDOG=1 while the main loop turns,
//! STOPPING=1 when a stop begins. Without `NOTIFY_SOCKET` every call is a
//! no-op, so the daemon runs the same by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// The main loop's last turn, read by the watchdog task. The watchdog is fed
/// only while the loop turns: a loop stuck in a syscall or a deadlock stops
/// the pings and systemd restarts the service, while the async runtime (which
/// would happily keep a bare timer task alive) proves nothing.
pub struct Heartbeat {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat { origin: Instant::now(), last_ms: AtomicU64::new(0) }
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        self.last_ms.store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    pub fn age(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "cannot notify systemd");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: running jobs finish")]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Feeds `WATCHDOG=1` at half the period systemd asked for (`WATCHDOG_USEC`),
/// as long as the main loop turned within that period.
pub fn spawn_watchdog(beat: Arc<Heartbeat>) -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()?;
    let every = (period / 2).max(Duration::from_millis(10));
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut starving = false;
        loop {
            tick.tick().await;
            if beat.age() < period {
                send(&[NotifyState::Watchdog]);
                starving = false;
            } else if !starving {
                warn!(
                    stuck_for_ms = beat.age().as_millis() as u64,
                    "main loop is not turning; not feeding the watchdog"
                );
                starving = true;
            } else {
                debug!("watchdog still starving");
            }
        }
    }))
}
