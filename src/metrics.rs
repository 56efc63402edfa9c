//! The Prometheus metrics served at `GET /metrics` by the HTTP door (and
//! by `metrics.listen`, its alias): counters live in this process (they
//! restart at zero, as Prometheus expects of a counter); gauges are read
//! from the daemon's state at scrape time. The `prometheus-client` crate
//! (the Prometheus project's own) types and encodes them, so escaping and
//! the exposition format are not ours to get wrong.
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::state::Shared;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProducerState {
    producer: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProducerCode {
    producer: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProducerLabel {
    producer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: String,
}

/// Upper bounds (s) of `depot_deposit_duration_seconds`: a small deposit
/// ends within a second of its claim; a large one in minutes; a deposit
/// that waited behind its producer's others or was retried, in hours.
pub const DURATION_BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

fn now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

type LastSuccess = Family<ProducerLabel, Gauge<f64, AtomicU64>>;

pub struct Metrics {
    deposits: Family<ProducerState, Counter>,
    failures: Family<ProducerCode, Counter>,
    claimed: Family<ProducerLabel, Counter>,
    bytes: Family<ProducerLabel, Counter>,
    files: Family<ProducerLabel, Counter>,
    stages: Family<StageLabel, Histogram>,
    notify_failures: Counter,
    /// Validator runs that were the tool's fault (a status not in
    /// reject_exits, a signal, a timeout), retried or final.
    validator_faults: Family<ProducerLabel, Counter>,
    /// When the producer's last deposit succeeded (s since the epoch):
    /// from Redis at start, then from this process's successes.
    last_success: LastSuccess,
    duration: Histogram,
    /// Logins refused by the HTTP door (unknown user, wrong password).
    login_failures: Counter,
    /// Deposits received over HTTP.
    http_uploads: Family<ProducerLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            deposits: Family::default(),
            failures: Family::default(),
            claimed: Family::default(),
            bytes: Family::default(),
            files: Family::default(),
            stages: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            notify_failures: Counter::default(),
            validator_faults: Family::default(),
            last_success: Family::default(),
            duration: duration_histogram(),
            login_failures: Counter::default(),
            http_uploads: Family::default(),
        }
    }
}

fn producer(p: &str) -> ProducerLabel {
    ProducerLabel { producer: p.to_owned() }
}

impl Metrics {
    pub fn claimed(&self, p: &str) {
        self.claimed.get_or_create(&producer(p)).inc();
    }
    pub fn finished(&self, p: &str, state: &str, code: Option<&str>, files: u64, bytes: u64) {
        self.deposits.get_or_create(&ProducerState { producer: p.to_owned(), state: state.to_owned() }).inc();
        if let Some(code) = code {
            self.failures.get_or_create(&ProducerCode { producer: p.to_owned(), code: code.to_owned() }).inc();
        }
        self.files.get_or_create(&producer(p)).inc_by(files);
        self.bytes.get_or_create(&producer(p)).inc_by(bytes);
        if state == crate::status::SUCCESS {
            self.last_success.get_or_create(&producer(p)).set(now_s().floor());
        }
    }
    /// A deposit claimed at `claimed_ns` (ns since the epoch) just ended.
    pub fn deposit_took(&self, claimed_ns: u128) {
        self.duration.observe((now_s() - claimed_ns as f64 / 1e9).max(0.0));
    }
    /// A producer's last success as Redis knows it (a restart must not make
    /// every producer look quiet, nor forget them): kept unless this
    /// process saw a later one.
    pub fn seed_last_success(&self, p: &str, at_s: f64) {
        let g = self.last_success.get_or_create(&producer(p));
        if g.get() < at_s {
            g.set(at_s);
        }
    }
    pub fn stage(&self, stage: &'static str, took: Duration) {
        self.stages.get_or_create(&StageLabel { stage: stage.to_owned() }).observe(took.as_secs_f64());
    }
    pub fn notify_failed(&self) {
        self.notify_failures.inc();
    }
    pub fn validator_fault(&self, p: &str) {
        self.validator_faults.get_or_create(&producer(p)).inc();
    }
    pub fn login_failed(&self) {
        self.login_failures.inc();
    }
    pub fn http_upload(&self, p: &str) {
        self.http_uploads.get_or_create(&producer(p)).inc();
    }

    /// The exposition text (OpenMetrics, which Prometheus reads).
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut r = Registry::default();
        r.register("depot_deposits", "Deposits that reached a terminal state.", self.deposits.clone());
        r.register("depot_failures", "Failed deposits by error code.", self.failures.clone());
        r.register("depot_claimed", "Uploads claimed from new/ into the spool.", self.claimed.clone());
        r.register("depot_published_bytes", "Bytes published in releases.", self.bytes.clone());
        r.register("depot_published_files", "Files published in releases.", self.files.clone());
        let sent = Counter::<u64>::default();
        sent.inc_by(jobs::s3::BYTES_SENT.load(std::sync::atomic::Ordering::Relaxed));
        r.register(
            "depot_s3_bytes_sent",
            "Bytes of object data the S3 publish target sent and the server accepted (parts and objects).",
            sent,
        );
        r.register("depot_stage_seconds", "Time spent in each pipeline stage.", self.stages.clone());
        r.register(
            "depot_last_success_timestamp_seconds",
            "When the producer's last deposit succeeded (Unix time).",
            self.last_success.clone(),
        );
        r.register(
            "depot_deposit_duration_seconds",
            "Time from a deposit's claim to its terminal state.",
            self.duration.clone(),
        );
        r.register(
            "depot_notify_failures",
            "notify.command runs that failed or timed out.",
            self.notify_failures.clone(),
        );
        r.register(
            "depot_validator_faults",
            "Validator runs that failed on their own (not a verdict on the deposit): each attempt counts.",
            self.validator_faults.clone(),
        );
        r.register(
            "depot_http_login_failures",
            "Logins the HTTP door refused (unknown user or wrong password).",
            self.login_failures.clone(),
        );
        r.register("depot_http_uploads", "Deposits received over HTTP.", self.http_uploads.clone());
        let spool = Family::<ProducerLabel, Gauge>::default();
        for (p, n) in &gauges.spool {
            spool.get_or_create(&producer(p)).set(*n as i64);
        }
        r.register("depot_spool_deposits", "Claimed deposits not finished yet, by producer.", spool);
        let queued = Gauge::<i64>::default();
        queued.set(gauges.queued as i64);
        r.register("depot_queue_depth", "Jobs this daemon has in the Redis queue.", queued);
        let up = Gauge::<i64>::default();
        up.set(i64::from(gauges.redis_up));
        r.register("depot_redis_up", "1 when the last Redis check succeeded.", up);
        let mut s = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut s, &r) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        s
    }
}

pub struct Gauges {
    pub spool: BTreeMap<String, usize>,
    pub queued: usize,
    pub redis_up: bool,
}

/// Read the producers' last successes from Redis once, in the background
/// (a slow Redis must not hold up the start).
pub fn spawn_seed(shared: std::sync::Arc<Shared>) {
    tokio::spawn(async move {
        if tokio::time::timeout(Duration::from_secs(10), seed(&shared)).await.is_err() {
            tracing::warn!(
                "cannot read producers' last successes from Redis; depot_last_success_timestamp_seconds starts empty"
            );
        }
    });
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
        assert!(text.contains("depot_last_success_timestamp_seconds{producer=\"MSEC\"} 100.0\n"), "{text}");
        assert!(!text.contains("depot_last_success_timestamp_seconds{producer=\"IGNF\"}"), "{text}");
        assert!(text.contains("# TYPE depot_deposit_duration_seconds histogram"), "{text}");
        assert!(text.contains("depot_deposit_duration_seconds_bucket{le=\"0.1\"} 1\n"), "{text}");
        assert!(text.contains("depot_deposit_duration_seconds_bucket{le=\"2.5\"} 1\n"), "{text}");
        assert!(text.contains("depot_deposit_duration_seconds_bucket{le=\"5.0\"} 2\n"), "{text}");
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
