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
    /// producer → when its last deposit succeeded (s since the epoch):
    /// from Redis at start, then from this process's successes.
    last_success: BTreeMap<String, f64>,
    /// Claim to terminal state, per bucket of [`DURATION_BUCKETS`] (not
    /// cumulative here), then the sum and count.
    duration: [u64; DURATION_BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
}

/// Upper bounds (s) of `depot_deposit_duration_seconds`: a small deposit
/// ends within a second of its claim; a large one in minutes; a deposit
/// that waited behind its producer's others or was retried, in hours.
pub const DURATION_BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

fn now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
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
            if state == crate::status::SUCCESS {
                c.last_success.insert(producer.to_owned(), now_s().floor());
            }
        });
    }
    /// A deposit claimed at `claimed_ns` (ns since the epoch) just ended.
    pub fn deposit_took(&self, claimed_ns: u128) {
        let took = (now_s() - claimed_ns as f64 / 1e9).max(0.0);
        self.with(|c| {
            if let Some(i) = DURATION_BUCKETS.iter().position(|b| took <= *b) {
                c.duration[i] += 1;
            }
            c.duration_sum += took;
            c.duration_count += 1;
        });
    }
    /// A producer's last success as Redis knows it (a restart must not make
    /// every producer look quiet, nor forget them): kept unless this
    /// process saw a later one.
    pub fn seed_last_success(&self, producer: &str, at_s: f64) {
        self.with(|c| {
            let e = c.last_success.entry(producer.to_owned()).or_insert(at_s);
            *e = e.max(at_s);
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
        head(
            &mut s,
            "depot_s3_bytes_sent_total",
            "counter",
            "Bytes of object data the S3 publish target sent and the server accepted (parts and objects).",
        );
        let sent = jobs::s3::BYTES_SENT.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(s, "depot_s3_bytes_sent_total {sent}");
        head(&mut s, "depot_stage_seconds", "summary", "Time spent in each pipeline stage.");
        for (st, (sum, n)) in &c.stages {
            let _ = writeln!(s, "depot_stage_seconds_sum{{stage=\"{st}\"}} {sum:.6}");
            let _ = writeln!(s, "depot_stage_seconds_count{{stage=\"{st}\"}} {n}");
        }
        head(
            &mut s,
            "depot_last_success_timestamp_seconds",
            "gauge",
            "When the producer's last deposit succeeded (Unix time).",
        );
        for (p, t) in &c.last_success {
            let _ = writeln!(s, "depot_last_success_timestamp_seconds{{producer=\"{}\"}} {t}", esc(p));
        }
        head(
            &mut s,
            "depot_deposit_duration_seconds",
            "histogram",
            "Time from a deposit's claim to its terminal state.",
        );
        let mut cumulative = 0;
        for (b, n) in DURATION_BUCKETS.iter().zip(c.duration) {
            cumulative += n;
            let _ = writeln!(s, "depot_deposit_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(s, "depot_deposit_duration_seconds_bucket{{le=\"+Inf\"}} {}", c.duration_count);
        let _ = writeln!(s, "depot_deposit_duration_seconds_sum {:.6}", c.duration_sum);
        let _ = writeln!(s, "depot_deposit_duration_seconds_count {}", c.duration_count);
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

/// At most this many scrapes are served at once (a scraper needs one).
const MAX_CONNECTIONS: usize = 16;
/// A connection's whole life: the request read, the answer written.
const CONNECTION_TIME: Duration = Duration::from_secs(5);

/// Bind now (a bad address is a start-up error), serve in the background.
pub async fn serve(addr: &str, shared: Arc<Shared>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("metrics.listen {addr:?}: {e}"))?;
    info!(listen = %addr, "metrics endpoint up");
    let sh = shared.clone();
    tokio::spawn(async move {
        if tokio::time::timeout(Duration::from_secs(10), seed(&sh)).await.is_err() {
            warn!(
                "cannot read producers' last successes from Redis; depot_last_success_timestamp_seconds starts empty"
            );
        }
    });
    // Connections served at once: each holds a descriptor, and idle ones
    // by the thousand (1,100 under `ulimit -n 1024`) starved the spool of
    // descriptors. The others wait in the kernel's accept queue, costing
    // the daemon nothing; each served one has CONNECTION_TIME in all.
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let Ok(place) = places.clone().acquire_owned().await else { return };
            match listener.accept().await {
                Ok((sock, _)) => {
                    let sh = shared.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(CONNECTION_TIME, answer(sock, &sh)).await;
                        drop(place);
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

/// `depot_last_success_timestamp_seconds` from the producers' hashes.
async fn seed(shared: &Shared) {
    use redis::AsyncCommands;
    let st = &shared.status;
    let mut conn = st.conn.clone();
    let Ok(producers) = conn.smembers::<_, Vec<String>>(st.producers_key()).await else { return };
    for p in producers {
        if let Ok(Some(t)) = conn.hget::<_, _, Option<String>>(st.producer_key(&p), "last_success").await
            && let Some(s) = rfc3339_s(&t)
        {
            shared.metrics.seed_last_success(&p, s);
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (what depot writes) as seconds since the epoch.
pub fn rfc3339_s(t: &str) -> Option<f64> {
    let b = t.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) as f64)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_as_unix_time() {
        assert_eq!(rfc3339_s("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(rfc3339_s("2026-11-22T10:15:00Z"), Some(1_795_342_500.0));
        assert_eq!(rfc3339_s("2000-02-29T23:59:59Z"), Some(951_868_799.0));
        assert_eq!(rfc3339_s("2026-11-22 10:15:00"), None);
    }

    #[test]
    fn last_success_and_duration_histogram() {
        let m = Metrics::default();
        m.seed_last_success("MSEC", 100.0);
        m.finished("IGNF", crate::status::FAILURE, Some("NOT_A_ZIP"), 0, 0);
        let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        m.deposit_took(now_ns - 3_000_000_000);
        m.deposit_took(now_ns);
        let g = Gauges { spool: BTreeMap::new(), queued: 0, redis_up: true };
        let text = m.render(&g);
        assert!(text.contains("depot_last_success_timestamp_seconds{producer=\"MSEC\"} 100\n"), "{text}");
        assert!(!text.contains("depot_last_success_timestamp_seconds{producer=\"IGNF\"}"), "{text}");
        assert!(text.contains("# TYPE depot_deposit_duration_seconds histogram"), "{text}");
        assert!(text.contains("depot_deposit_duration_seconds_bucket{le=\"0.1\"} 1\n"), "{text}");
        assert!(text.contains("depot_deposit_duration_seconds_bucket{le=\"2.5\"} 1\n"), "{text}");
        assert!(text.contains("depot_deposit_duration_seconds_bucket{le=\"5\"} 2\n"), "{text}");
        assert!(text.contains("depot_deposit_duration_seconds_bucket{le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("depot_deposit_duration_seconds_count 2\n"), "{text}");
        m.finished("MSEC", crate::status::SUCCESS, None, 1, 1);
        let text = m.render(&g);
        let line =
            text.lines().find(|l| l.starts_with("depot_last_success_timestamp_seconds{producer=\"MSEC\"}")).unwrap();
        let t: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(t > 1.7e9, "{line}");
    }
}
