//! `notify.command`: how a host tells people (mail to the producer, a
//! webhook) without depot knowing about mail or HTTP. Run once per terminal
//! state, after the state is recorded; whatever it does (fails, hangs,
//! prints) is logged and never changes the deposit's outcome.

use std::process::Stdio;
use std::sync::Arc;
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
    fn env(&self) -> [(&'static str, &str); 8] {
        [
            ("DEPOT_DEPOSIT", &self.deposit),
            ("DEPOT_PRODUCER", &self.producer),
            ("DEPOT_STATE", &self.state),
            ("DEPOT_FILE", &self.file),
            ("DEPOT_ERROR_CODE", &self.error_code),
            ("DEPOT_ERROR", &self.error),
            ("DEPOT_REPORT", &self.report),
            ("DEPOT_RELEASE", &self.release),
        ]
    }
}

/// Start the program in the background; the caller does not wait.
pub fn spawn(cfg: &Notify, ev: Event, metrics: Arc<Metrics>) {
    let Some((program, args)) = cfg.command.split_first() else { return };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(ev.env())
        // The program is not the service: it must not talk to systemd.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let timeout = Duration::from_secs(cfg.timeout_s);
    let program = program.clone();
    tokio::spawn(async move {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                warn!(deposit = %ev.deposit, command = %program, error = %e, "notify.command cannot start");
                metrics.notify_failed();
                return;
            }
        };
        let mut stderr = child.stderr.take();
        let read_err = async {
            let mut s = Vec::new();
            if let Some(e) = stderr.as_mut() {
                // Drained to the end (a full pipe would block the program),
                // kept bounded (a chatty program cannot grow the daemon).
                let mut buf = [0u8; 4096];
                while let Ok(n) = e.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let room = 4096usize.saturating_sub(s.len());
                    s.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            s
        };
        match tokio::time::timeout(timeout, async { tokio::join!(child.wait(), read_err) }).await {
            Ok((Ok(st), _)) if st.success() => {
                info!(deposit = %ev.deposit, producer = %ev.producer, state = %ev.state, "notify.command done");
            }
            Ok((st, err)) => {
                let status = st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                let err = String::from_utf8_lossy(&err);
                warn!(deposit = %ev.deposit, command = %program, status = %status, stderr = %err.trim(), "notify.command failed");
                metrics.notify_failed();
            }
            Err(_) => {
                let _ = child.kill().await;
                warn!(deposit = %ev.deposit, command = %program, timeout_s = timeout.as_secs(), "notify.command timed out; killed");
                metrics.notify_failed();
            }
        }
    });
}
