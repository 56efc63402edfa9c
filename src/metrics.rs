//! `metrics.listen`: a Prometheus text endpoint (`GET /metrics`). Counters
//! live in this process (they restart at zero, as Prometheus expects of a
//! counter); gauges are read from the daemon's state at scrape time. A
//! hand-written HTTP/1.0 responder is enough for one scraper and keeps a web
//! framework out of the daemon.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use crate::state::Shared;

#[derive(Default)]
struct Counters {
    /// (producer, state) → deposits that reached that terminal state.
    deposits: BTreeMap<(String, String), u64>,
    /// (producer, error_code) → failures.
    failures: BTreeMap<(String, String), u64>,
    /// producer → bytes and files published.
    bytes: BTreeMap<String, u64>,
    files: BTreeMap<String, u64>,
    claimed: BTreeMap<String, u64>,
    /// stage → (seconds, runs).
    stages: BTreeMap<&'static str, (f64, u64)>,
    notify_failures: u64,
}

#[derive(Default)]
pub struct Metrics {
    c: Mutex<Counters>,
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Counters)) {
        let mut g = self.c.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }
    pub fn claimed(&self, producer: &str) {
        self.with(|c| *c.claimed.entry(producer.to_owned()).or_default() += 1);
    }
    pub fn finished(&self, producer: &str, state: &str, code: Option<&str>, files: u64, bytes: u64) {
        self.with(|c| {
            *c.deposits.entry((producer.to_owned(), state.to_owned())).or_default() += 1;
            if let Some(code) = code {
                *c.failures.entry((producer.to_owned(), code.to_owned())).or_default() += 1;
            }
            *c.files.entry(producer.to_owned()).or_default() += files;
            *c.bytes.entry(producer.to_owned()).or_default() += bytes;
        });
    }
    pub fn stage(&self, stage: &'static str, took: Duration) {
        self.with(|c| {
            let e = c.stages.entry(stage).or_default();
            e.0 += took.as_secs_f64();
            e.1 += 1;
        });
    }
    pub fn notify_failed(&self) {
        self.with(|c| c.notify_failures += 1);
    }

    /// The exposition text (format 0.0.4).
    pub fn render(&self, gauges: &Gauges) -> String {
        let c = self.c.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = String::new();
        let head = |s: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(&mut s, "depot_deposits_total", "counter", "Deposits that reached a terminal state.");
        for ((p, st), n) in &c.deposits {
            let _ = writeln!(s, "depot_deposits_total{{producer=\"{}\",state=\"{st}\"}} {n}", esc(p));
        }
        head(&mut s, "depot_failures_total", "counter", "Failed deposits by error code.");
        for ((p, code), n) in &c.failures {
            let _ = writeln!(s, "depot_failures_total{{producer=\"{}\",code=\"{code}\"}} {n}", esc(p));
        }
        head(&mut s, "depot_claimed_total", "counter", "Uploads claimed from new/ into the spool.");
        for (p, n) in &c.claimed {
            let _ = writeln!(s, "depot_claimed_total{{producer=\"{}\"}} {n}", esc(p));
        }
        head(&mut s, "depot_published_bytes_total", "counter", "Bytes published in releases.");
        for (p, n) in &c.bytes {
            let _ = writeln!(s, "depot_published_bytes_total{{producer=\"{}\"}} {n}", esc(p));
        }
        head(&mut s, "depot_published_files_total", "counter", "Files published in releases.");
        for (p, n) in &c.files {
            let _ = writeln!(s, "depot_published_files_total{{producer=\"{}\"}} {n}", esc(p));
        }
        head(&mut s, "depot_stage_seconds", "summary", "Time spent in each pipeline stage.");
        for (st, (sum, n)) in &c.stages {
            let _ = writeln!(s, "depot_stage_seconds_sum{{stage=\"{st}\"}} {sum:.6}");
            let _ = writeln!(s, "depot_stage_seconds_count{{stage=\"{st}\"}} {n}");
        }
        head(&mut s, "depot_notify_failures_total", "counter", "notify.command runs that failed or timed out.");
        let _ = writeln!(s, "depot_notify_failures_total {}", c.notify_failures);
        head(&mut s, "depot_spool_deposits", "gauge", "Claimed deposits not finished yet, by producer.");
        for (p, n) in &gauges.spool {
            let _ = writeln!(s, "depot_spool_deposits{{producer=\"{}\"}} {n}", esc(p));
        }
        head(&mut s, "depot_queue_depth", "gauge", "Jobs this daemon has in the Redis queue.");
        let _ = writeln!(s, "depot_queue_depth {}", gauges.queued);
        head(&mut s, "depot_redis_up", "gauge", "1 when the last Redis check succeeded.");
        let _ = writeln!(s, "depot_redis_up {}", u8::from(gauges.redis_up));
        s
    }
}

/// Label values are producer folder names (the pattern is the operator's),
/// so quote them as the format requires.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub struct Gauges {
    pub spool: BTreeMap<String, usize>,
    pub queued: usize,
    pub redis_up: bool,
}

/// Bind now (a bad address is a start-up error), serve in the background.
pub async fn serve(addr: &str, shared: Arc<Shared>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("metrics.listen {addr:?}: {e}"))?;
    info!(listen = %addr, "metrics endpoint up");
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    let sh = shared.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(5), answer(sock, &sh)).await;
                    });
                }
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }))
}

async fn answer(mut sock: TcpStream, shared: &Shared) -> std::io::Result<()> {
    // Read the request head only (bounded); a scrape has no body.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
        ("200 OK", "text/plain; version=0.0.4; charset=utf-8", shared.metrics.render(&shared.gauges()))
    } else {
        ("404 Not Found", "text/plain; charset=utf-8", "only GET /metrics here\n".to_owned())
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}
