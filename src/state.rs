//! What the scheduler, the workers, the metrics endpoint and the hooks
//! share in one process: the config (swapped on SIGHUP), the spool and its
//! in-memory index, what is queued, and the flags that stop things. Kept
//! apart from `daemon.rs`, which holds the loop alone, so that the modules
//! around it depend on the state and not on the loop.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use apalis_redis::{Config as QueueConfig, RedisStorage};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::config::{Config, redacted};
use crate::metrics::{Gauges, Metrics};
use crate::service::Heartbeat;
use crate::spool::{Entry, Spool};
use crate::status::Status;

/// What travels through the queue: just enough to find the spool entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DepositJob {
    pub id: String,
    pub producer: String,
}

pub type Queue = RedisStorage<DepositJob>;

/// One producer's spool entries by (claim time, id).
pub type ProducerQueue = BTreeMap<(u128, String), Entry>;

/// State shared by the scheduler and the workers.
pub struct Shared {
    config: RwLock<Arc<Config>>,
    pub spool: Spool,
    pub status: Status,
    /// In-process guard: two copies of one producer's job (a re-queued
    /// orphan) never run at once here.
    producer_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Producer → the deposit id we queued for it.
    pub queued: Mutex<HashMap<String, String>>,
    /// The spool in memory, producer → entries in claim order, so that
    /// scheduling does not re-read every deposit.json on every tick.
    pub index: Mutex<HashMap<String, ProducerQueue>>,
    /// Deposit → the apalis task id it was last queued under, and when:
    /// checked against Redis (see `daemon::reconcile`).
    pub tasks: Mutex<HashMap<String, (String, Instant)>>,
    /// Archives claimed lately, to tell a late sidecar (see `sidecars`).
    pub recent: Mutex<crate::sidecars::Recent>,
    /// Disk space promised to the deposits running in this process.
    pub space: Space,
    /// Deposits whose job runs in this process now.
    pub active: Mutex<std::collections::HashSet<String>>,
    /// Deposits whose pipeline runs in this process now: a shutdown
    /// records the ones it interrupts as WAITING (see `daemon::run`).
    pub in_progress: Mutex<HashMap<String, Entry>>,
    /// Deposit → how many times its spool record could not be read or
    /// written (the record cannot count that itself).
    pub record_faults: Mutex<HashMap<String, u32>>,
    /// Deposit → host faults not counted as attempts (out of descriptors),
    /// for their backoff.
    pub host_faults: Mutex<HashMap<String, u32>>,
    /// Deposits ended without their spool record (see
    /// `worker::record_fault`): never scheduled again by this process.
    pub abandoned: Mutex<std::collections::HashSet<String>>,
    /// (producer, file name) → times the upload was given back to `new/`
    /// for changing after its claim (see `watch.max_give_backs`).
    pub give_backs: Mutex<HashMap<(String, String), u32>>,
    /// Deposit → when a transient failure may be retried.
    pub retry_at: Mutex<HashMap<String, Instant>>,
    /// Wakes the scheduler (a job finished, a retry is due).
    pub wake: Notify,
    /// Wakes this process's queue worker: a job was queued.
    pub pushed: Arc<Notify>,
    pub stopping: AtomicBool,
    /// Set when the shutdown grace period is over: running pipelines stop
    /// (staging removed) and their deposits resume at the next start.
    pub abort: AtomicBool,
    /// Turned by the scheduler loop; feeds systemd's watchdog.
    pub beat: Arc<Heartbeat>,
    pub metrics: Arc<Metrics>,
    pub redis_up: AtomicBool,
    /// Jobs running in this process.
    pub running: AtomicUsize,
    /// Old releases may wait in `<publish_root>/.pruned` (see `pruner`).
    pub pruned: AtomicBool,
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn new(cfg: Arc<Config>, spool: Spool, status: Status) -> Shared {
        Shared {
            spool,
            status,
            config: RwLock::new(cfg),
            producer_locks: Mutex::default(),
            queued: Mutex::default(),
            index: Mutex::default(),
            retry_at: Mutex::default(),
            tasks: Mutex::default(),
            active: Mutex::default(),
            in_progress: Mutex::default(),
            record_faults: Mutex::default(),
            host_faults: Mutex::default(),
            abandoned: Mutex::default(),
            give_backs: Mutex::default(),
            space: Space::default(),
            recent: Mutex::default(),
            wake: Notify::new(),
            pushed: Arc::default(),
            stopping: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            beat: Arc::default(),
            metrics: Arc::default(),
            redis_up: AtomicBool::new(true),
            running: AtomicUsize::new(0),
            // Whatever an earlier run set aside is deleted once idle.
            pruned: AtomicBool::new(true),
        }
    }

    /// SIGHUP: the next deposit reads the new config.
    pub fn set_config(&self, c: Config) {
        if let Ok(mut w) = self.config.write() {
            *w = Arc::new(c);
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().map(|c| c.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn producer_lock(&self, p: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.producer_locks).entry(p.to_owned()).or_default().clone()
    }

    pub fn index_add(&self, e: &Entry) {
        lock(&self.index).entry(e.producer.clone()).or_default().insert((e.claimed_ns, e.id.clone()), e.clone());
    }

    fn index_remove(&self, e: &Entry) {
        let mut idx = lock(&self.index);
        if let Some(m) = idx.get_mut(&e.producer) {
            m.remove(&(e.claimed_ns, e.id.clone()));
            if m.is_empty() {
                idx.remove(&e.producer);
            }
        }
    }

    /// Reload the index from disk (start, Redis resync).
    pub fn index_reload(&self) -> std::io::Result<()> {
        let entries = self.spool.list()?;
        let mut idx = lock(&self.index);
        idx.clear();
        // A parked deposit has ended; it waits for the operator, not a worker.
        let abandoned = lock(&self.abandoned);
        for e in entries.into_iter().filter(|e| !e.parked && !abandoned.contains(&e.id)) {
            idx.entry(e.producer.clone()).or_default().insert((e.claimed_ns, e.id.clone()), e);
        }
        Ok(())
    }

    pub fn gauges(&self) -> Gauges {
        let spool = lock(&self.index).iter().map(|(p, m)| (p.clone(), m.len())).collect();
        Gauges { spool, queued: lock(&self.queued).len(), redis_up: self.redis_up.load(Ordering::Relaxed) }
    }

    /// Run `e` again, not before `wait`: in memory for this process's
    /// scheduler, and in the spool record for any other (a `--role
    /// worker` elsewhere, the next start).
    pub async fn later(self: &Arc<Self>, e: &Entry, wait: Duration) {
        let (sh, mut en) = (self.clone(), e.clone());
        let r = tokio::task::spawn_blocking(move || sh.spool.retry_after(&mut en, wait)).await;
        if !matches!(r, Ok(Ok(()))) {
            tracing::warn!(deposit = %e.id, "cannot write the retry time into the spool record; kept in memory");
        }
        lock(&self.retry_at).insert(e.id.clone(), Instant::now() + wait);
        self.done(e, false);
    }

    /// The job queued for `producer` is over or gone without its deposit
    /// leaving the spool: the scheduler may queue it again.
    pub fn requeue(&self, producer: &str, id: &str) {
        let mut q = lock(&self.queued);
        if q.get(producer).is_some_and(|x| x == id) {
            q.remove(producer);
        }
        drop(q);
        self.wake.notify_one();
    }

    /// A job of this process is over with `e`; `left`: its spool entry is
    /// gone (the caller removed it), so it leaves the index too. Told, not
    /// looked up: a stat on the runtime per deposit.
    pub fn done(&self, e: &Entry, left: bool) {
        if left {
            self.index_remove(e);
            lock(&self.tasks).remove(&e.id);
            lock(&self.host_faults).remove(&e.id);
            lock(&self.record_faults).remove(&e.id);
        }
        let mut q = lock(&self.queued);
        if q.get(&e.producer) == Some(&e.id) {
            q.remove(&e.producer);
        }
        drop(q);
        self.wake.notify_one();
    }
}

/// `redis://…` reachable, or one clear line saying what to do.
pub async fn connect(cfg: &Config) -> Result<ConnectionManager> {
    let client = redis::Client::open(cfg.redis.url.as_str())
        .with_context(|| format!("redis.url {:?} is not valid", cfg.redis.url))?;
    let mcfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(2);
    let mut conn = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager_with_config(mcfg))
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|r| r.map_err(|e| anyhow::anyhow!(one_cause(&e))))
        .with_context(|| {
            format!(
                "cannot reach Redis at {} — start one (`redis-server`, or `systemctl start redis-server`) or set redis.url in {}",
                redacted(&cfg.redis.url),
                cfg.path.display()
            )
        })?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await.context("Redis did not answer PING")?;
    Ok(conn)
}

/// An error and its causes in one line, each said once: redis' error shows
/// its I/O cause in its own text and again as its source ("Connection
/// refused (os error 111): Connection refused (os error 111)").
pub fn one_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

pub fn queue(conn: ConnectionManager, cfg: &Config) -> Queue {
    let qc = QueueConfig::default()
        .queue(format!("{}:queue", cfg.redis.prefix))
        // A worker starts fetching at its first heartbeat: 1 s, so that a
        // deposit dropped just after a (re)start does not wait 5 s (the p99
        // of bench/daemon.py was that wait). Orphans (jobs of a killed
        // worker) come back after 10 x 1 s, not the default 300 s; the
        // spool makes a second run harmless.
        .heartbeat_interval(Duration::from_secs(1))
        .missed_heartbeats(10);
    RedisStorage::new(conn).with_config(qc)
}

/// Disk space reserved by running deposits: a deposit starts writing only
/// when the free space, less what the others reserved and have not written
/// yet, covers its size and the margin. Two deposits that cannot both fit
/// then run one after the other instead of both running out of space half
/// way (and both being retried in lockstep).
#[derive(Default)]
pub struct Space {
    /// Deposit → (bytes it needs, bytes it has written so far).
    held: Mutex<HashMap<String, (u64, Arc<std::sync::atomic::AtomicU64>)>>,
}

impl Space {
    /// True: reserved. False: it would fit once running deposits finish;
    /// wait. Err: it does not fit even alone (NO_SPACE, retried later).
    pub fn try_reserve(
        &self,
        id: &str,
        root: &std::path::Path,
        need: u64,
        margin: u64,
        written: &Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<bool, jobs::Error> {
        let mut held = lock(&self.held);
        let running: Vec<_> = held.iter().filter(|(k, _)| k.as_str() != id).map(|(_, v)| v).collect();
        let others: u64 = running.iter().map(|(n, w)| n.saturating_sub(w.load(Ordering::Relaxed))).sum();
        if running.is_empty() {
            // Alone: the plain check is the verdict.
            jobs::publish::check_free_space(root, need, margin)?;
        } else if jobs::publish::check_free_space(root, need.saturating_add(others), margin).is_err() {
            // Another deposit runs: it may yet fail and give its space
            // back (even once all its bytes are written), so wait for it to
            // end; alone again, the plain check decides.
            return Ok(false);
        }
        held.insert(id.to_owned(), (need, written.clone()));
        Ok(true)
    }

    pub fn release(&self, id: &str) {
        lock(&self.held).remove(id);
    }
}
