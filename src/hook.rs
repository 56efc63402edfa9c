//! `notify.command`: how a host tells people (mail to the producer, a
//! webhook) without depot knowing about mail or HTTP. Run once per terminal
//! state, after the state is recorded; whatever it does (fails, hangs,
//! prints) is logged and never changes the deposit's outcome.
//!
//! At most `notify.max_running` run at once; the others wait their turn in
//! the order their deposits ended (a burst of a thousand failures must not
//! fork a thousand mailers). The file name and the error message come from
//! the producer: control characters (a newline would start a new mail
//! header in a careless script) and bidi overrides are removed from every
//! `DEPOT_*` value.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use crate::config::Notify;
use crate::metrics::Metrics;

/// What the program finds in its environment (`DEPOT_*`).
pub struct Event {
    pub deposit: String,
    pub producer: String,
    pub state: String,
    pub file: String,
    pub error_code: String,
    pub error: String,
    /// `rejected/<deposit-id>/report.json` on FAILURE, empty on SUCCESS.
    pub report: String,
    pub release: String,
}

impl Event {
    /// The environment the program gets: every value made safe to paste
    /// into a mail or a log line.
    pub fn env(&self) -> [(&'static str, String); 8] {
        [
            ("DEPOT_DEPOSIT", clean(&self.deposit)),
            ("DEPOT_PRODUCER", clean(&self.producer)),
            ("DEPOT_STATE", clean(&self.state)),
            ("DEPOT_FILE", clean(&self.file)),
            ("DEPOT_ERROR_CODE", clean(&self.error_code)),
            ("DEPOT_ERROR", clean(&self.error)),
            ("DEPOT_REPORT", clean(&self.report)),
            ("DEPOT_RELEASE", clean(&self.release)),
        ]
    }
}

/// Without control characters (C0, DEL, C1: newlines, escapes) and the
/// bidi controls that make text display in another order than it is.
pub fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control() && !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')).collect()
}

/// Hooks running now, across every deposit of this process.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static FREED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// One of `notify.max_running` places, given back when dropped.
struct Place;

impl Place {
    async fn take(max: usize) -> Place {
        loop {
            let freed = FREED.notified();
            tokio::pin!(freed);
            // Registered before looking, so a place freed in between wakes us.
            freed.as_mut().enable();
            let n = RUNNING.load(Ordering::SeqCst);
            if n < max && RUNNING.compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                return Place;
            }
            if n < max {
                continue; // lost a race: look again
            }
            freed.await;
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        FREED.notify_waiters();
    }
}

/// Hooks running now.
#[cfg(test)]
fn running() -> usize {
    RUNNING.load(Ordering::SeqCst)
}

/// The `PATH` a hook gets when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How long the pipe is still read once the program has exited: what it
/// wrote before exiting is there at once; a background child it left
/// holding the pipe must not keep the run (and its place) open.
const PIPE_GRACE: Duration = Duration::from_millis(200);

/// The program's process group, killed whole when dropped: its children
/// must not outlive it (they would escape `notify.timeout_s` and
/// `notify.max_running`).
struct Group(Option<rustix::process::Pid>);

impl Group {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            // ESRCH: nobody left in the group.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Start the program in the background, once a place is free; the caller
/// does not wait.
///
/// It runs in a process group of its own, with an environment of `PATH`
/// and the `DEPOT_*` values only: the daemon's may hold secrets
/// (`AWS_SECRET_ACCESS_KEY` of the S3 target) and systemd's
/// `NOTIFY_SOCKET`, which a mail script has no use for.
pub fn spawn(cfg: &Notify, ev: Event, metrics: Arc<Metrics>) {
    let Some((program, args)) = cfg.command.split_first() else { return };
    let max = cfg.max_running.max(1);
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()))
        .envs(ev.env())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let timeout = Duration::from_secs(cfg.timeout_s);
    let program = program.clone();
    tokio::spawn(async move {
        let _place = Place::take(max).await;
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                warn!(deposit = %ev.deposit, command = %program, error = %e, "notify.command cannot start");
                metrics.notify_failed();
                return;
            }
        };
        // process_group(0): the group's id is the program's pid.
        let mut group = Group(child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)));
        let err = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let (mut stderr, err) = (child.stderr.take(), err.clone());
            tokio::spawn(async move {
                if let Some(e) = stderr.as_mut() {
                    // Drained to the end (a full pipe would block the
                    // program), kept bounded (a chatty program cannot grow
                    // the daemon).
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = e.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let mut s = err.lock().unwrap_or_else(|p| p.into_inner());
                        let room = 4096usize.saturating_sub(s.len());
                        s.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            })
        };
        let waited = tokio::time::timeout(timeout, child.wait()).await;
        if waited.is_err() {
            // Killed whole before the program is reaped (its pid, the
            // group's id, cannot be taken by another process meanwhile).
            group.kill();
            let _ = child.kill().await;
        }
        let mut reader = reader;
        if tokio::time::timeout(PIPE_GRACE, &mut reader).await.is_err() {
            reader.abort();
        }
        // Whatever it left running goes with it.
        group.kill();
        let err = std::mem::take(&mut *err.lock().unwrap_or_else(|p| p.into_inner()));
        match waited {
            Ok(Ok(st)) if st.success() => {
                info!(deposit = %ev.deposit, producer = %ev.producer, state = %ev.state, "notify.command done");
            }
            Ok(st) => {
                let status = st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                let err = String::from_utf8_lossy(&err);
                warn!(deposit = %ev.deposit, command = %program, status = %status, stderr = %err.trim(), "notify.command failed");
                metrics.notify_failed();
            }
            Err(_) => {
                warn!(deposit = %ev.deposit, command = %program, timeout_s = timeout.as_secs(), "notify.command timed out; killed with its process group");
                metrics.notify_failed();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_text_loses_control_and_bidi_characters() {
        assert_eq!(clean("a.zip\nBcc: x@example.org\r\n"), "a.zipBcc: x@example.org");
        assert_eq!(clean("evil\u{202e}piz.exe\u{1b}[31m\u{85}"), "evilpiz.exe[31m");
        assert_eq!(clean("MSEC_THEIA.zip: données été"), "MSEC_THEIA.zip: données été");
        let ev = Event {
            deposit: "d".into(),
            producer: "MSEC".into(),
            state: "FAILURE".into(),
            file: "x\ny.zip".into(),
            error_code: "NOT_A_ZIP".into(),
            error: "line1\nline2\ttab".into(),
            report: String::new(),
            release: String::new(),
        };
        for (k, v) in ev.env() {
            assert!(!v.chars().any(char::is_control), "{k}={v:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn places_are_bounded() {
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let peak = peak.clone();
            tasks.push(tokio::spawn(async move {
                let _p = Place::take(3).await;
                peak.fetch_max(running(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 3 && peak.load(Ordering::SeqCst) >= 2, "{peak:?}");
        assert_eq!(running(), 0);
    }
}
