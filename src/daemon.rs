//! `depot run`: the watcher/claimer/scheduler loop, the apalis workers, and
//! the signals that stop or reload them.
//!
//! One producer's deposits run one at a time, in claim order, because the
//! scheduler only ever queues a producer's oldest unfinished deposit; the
//! next one is queued when that one leaves the spool. So the queue holds at
//! most one job per producer (bounded, whatever is waiting in `new/`), and
//! no lock has to outlive a publish.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use apalis::prelude::*;
use apalis_redis::{Config as QueueConfig, RedisStorage};
use futures::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tracing::{error, info, warn};

use crate::config::{Config, redacted};
use crate::metrics::{Gauges, Metrics};
use crate::service::{self, Heartbeat};
use crate::spool::{Entry, Spool};
use crate::status::{self, Status};
use crate::watcher::{self, Hint, Settler};
use crate::{poll, selfcheck, worker};

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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
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
    fn index_reload(&self) -> std::io::Result<()> {
        let entries = self.spool.list()?;
        let mut idx = lock(&self.index);
        idx.clear();
        for e in entries {
            idx.entry(e.producer.clone()).or_default().insert((e.claimed_ns, e.id.clone()), e);
        }
        Ok(())
    }

    pub fn gauges(&self) -> Gauges {
        let spool = lock(&self.index).iter().map(|(p, m)| (p.clone(), m.len())).collect();
        Gauges { spool, queued: lock(&self.queued).len(), redis_up: self.redis_up.load(Ordering::Relaxed) }
    }

    /// A job of this process is over with `e`; `left`: its spool entry is
    /// gone (the caller removed it), so it leaves the index too. Told, not
    /// looked up: a stat on the runtime per deposit.
    pub fn done(&self, e: &Entry, left: bool) {
        if left {
            self.index_remove(e);
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
        .and_then(|r| r.map_err(anyhow::Error::from))
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

fn queue(conn: ConnectionManager, cfg: &Config) -> Queue {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    All,
    Watcher,
    Worker,
}

pub async fn run(config_path: PathBuf, role: Role) -> Result<()> {
    let cfg = Arc::new(Config::load(&config_path)?);
    // The checks of `depot config check`: refuse to start on a failed one
    // rather than fail every deposit later.
    let failed: Vec<String> = selfcheck::filesystem(&cfg).into_iter().filter(|f| !f.ok).map(|f| f.what).collect();
    if !failed.is_empty() {
        anyhow::bail!("start-up check failed (`depot config check` lists them all): {}", failed.join("; "));
    }
    let conn = connect(&cfg).await?;
    let removed = jobs::publish::clean_stale(&cfg.publish_root).context("cleaning stale staging")?;
    for r in removed {
        info!(path = %r.display(), "removed stale staging");
    }
    let shared = Arc::new(Shared {
        spool: Spool::new(&cfg.drop_root).context("creating the spool")?,
        status: Status { conn: conn.clone(), prefix: cfg.redis.prefix.clone() },
        config: RwLock::new(cfg.clone()),
        producer_locks: Mutex::default(),
        queued: Mutex::default(),
        index: Mutex::default(),
        retry_at: Mutex::default(),
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
    });
    let metrics = match cfg.metrics.listen.as_str() {
        "" => None,
        addr => Some(crate::metrics::serve(addr, shared.clone()).await?),
    };
    // The queue gets a connection of its own: its commands must not hold up
    // status writes on a shared multiplexed connection, nor the reverse.
    let storage = queue(connect(&cfg).await?, &cfg);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(handle_signals(shared.clone(), config_path.clone(), stop_tx));

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let scheduler = (role != Role::Worker)
        .then(|| tokio::spawn(scheduler(shared.clone(), storage.clone(), stop_rx.clone(), ready_tx)));
    let watchdog = service::spawn_watchdog(shared.beat.clone());
    let pruner = (role != Role::Watcher).then(|| tokio::spawn(pruner(shared.clone())));
    let worker_beat = (role == Role::Worker).then(|| {
        // No scheduler loop here; the beat proves the runtime still turns.
        let beat = shared.beat.clone();
        tokio::spawn(async move {
            loop {
                beat.beat();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    });
    let ready = tokio::spawn(async move {
        if role == Role::Worker || ready_rx.await.is_ok() {
            service::ready(&format!("running ({role:?})"));
            info!(role = ?role, "ready");
        }
    });
    info!(role = ?role, drop_root = %cfg.drop_root.display(), publish_root = %cfg.publish_root.display(), "depot running");

    if role != Role::Watcher {
        let sh = shared.clone();
        let concurrency = cfg.workers.concurrency;
        let shutdown = Duration::from_secs(cfg.workers.shutdown_timeout_s);
        let mut rx = stop_rx.clone();
        // Woken by this process's scheduler when it queues; the timer is
        // for jobs queued elsewhere: a worker-only process has no other
        // way to learn of them (see `poll`).
        let every = Duration::from_millis(if role == Role::Worker { 10 } else { 500 });
        let monitor = Monitor::new()
            .register(move |restarts| {
                // A fresh name per start: a restarted worker under its old
                // name is refused while the old one still looks alive.
                let name = format!("depot-{}-{}-{restarts}", std::process::id(), jobs::deposit::new_id("w"));
                WorkerBuilder::new(name)
                    .backend(storage.clone().poll_with_strategy(poll::Wake::new(every, sh.pushed.clone())))
                    .concurrency(concurrency)
                    .data(sh.clone())
                    .build(worker::handle)
            })
            .should_restart(|_ctx, e| {
                warn!(error = %e, "queue worker stopped; restarting it");
                true
            })
            .shutdown_timeout(shutdown);
        let r = monitor
            .run_with_signal(async move {
                let _ = rx.wait_for(|s| *s).await;
                Ok(())
            })
            .await;
        if let Err(e) = r {
            warn!(error = %e, "workers stopped with an error");
        }
    } else {
        let mut rx = stop_rx.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
    if let Some(s) = scheduler {
        let _ = s.await;
    }
    // Jobs still running past the grace period see `abort` and stop.
    shared.abort.store(true, Ordering::SeqCst);
    signals.abort();
    for t in [watchdog, worker_beat, metrics, pruner].into_iter().flatten() {
        t.abort();
    }
    ready.abort();
    info!("depot stopped");
    Ok(())
}

/// Deletes the releases that publishing set aside (`jobs::publish::prune`)
/// when no deposit is running or waiting, or at least every 30 s under a
/// steady load: deletions in the middle of a burst slow every inode
/// creation after them.
async fn pruner(shared: Arc<Shared>) {
    let mut last = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let idle = shared.running.load(Ordering::Relaxed) == 0 && lock(&shared.index).is_empty();
        if !shared.pruned.load(Ordering::Relaxed) || !(idle || last.elapsed() >= Duration::from_secs(30)) {
            continue;
        }
        shared.pruned.store(false, Ordering::Relaxed);
        last = Instant::now();
        let root = shared.config().publish_root.clone();
        match tokio::task::spawn_blocking(move || jobs::publish::empty_pruned(&root)).await {
            Ok(Ok(n)) if n > 0 => info!(releases = n, "deleted pruned releases"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "cannot delete pruned releases; will try again");
                shared.pruned.store(true, Ordering::Relaxed);
            }
            Err(e) => warn!(error = %e, "pruned releases task failed"),
        }
    }
}

async fn handle_signals(shared: Arc<Shared>, config_path: PathBuf, stop: tokio::sync::watch::Sender<bool>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return;
        }
    };
    while let Some(sig) = signals.next().await {
        match sig {
            SIGHUP => match Config::load(&config_path) {
                Ok(c) => {
                    if c.metrics.listen != shared.config().metrics.listen {
                        warn!("metrics.listen changed: takes effect at the next start");
                    }
                    if let Ok(mut w) = shared.config.write() {
                        *w = Arc::new(c);
                    }
                    info!(config = %config_path.display(), "configuration reloaded");
                    shared.wake.notify_one();
                }
                Err(e) => warn!(error = %format!("{e:#}"), "reload failed; keeping the running configuration"),
            },
            _ => {
                service::stopping();
                info!("stopping: no new jobs; running jobs get workers.shutdown_timeout_s to finish");
                shared.stopping.store(true, Ordering::SeqCst);
                let _ = stop.send(true);
                shared.wake.notify_one();
                let grace = Duration::from_secs(shared.config().workers.shutdown_timeout_s);
                tokio::time::sleep(grace).await;
                warn!("shutdown grace period over: interrupting running jobs (they resume at the next start)");
                shared.abort.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Notice, settle, claim, and queue each producer's oldest deposit.
async fn scheduler(
    shared: Arc<Shared>,
    storage: Queue,
    mut stop: tokio::sync::watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let cfg = shared.config();
    let (tx, mut rx) = mpsc::unbounded_channel::<Hint>();
    let mut watcher = watcher::start(&cfg.drop_root, cfg.watch.poll_ms, tx.clone())
        .map_err(|e| warn!(error = %e, "cannot watch; polling by scanning only"))
        .ok();
    let mut watched = std::collections::HashSet::new();
    let mut settler = Settler::new(Duration::from_millis(cfg.watch.settle_ms), cfg.watch.sidecar_marks_done);
    let mut last_scan = Instant::now() - Duration::from_secs(3600);
    let mut redis_ok = true;
    let mut instance = None::<String>;
    let mut last_trim = Instant::now() - Duration::from_secs(3600);
    let mut last_ping = Instant::now() - Duration::from_secs(3600);
    // Short ticks: the settle deadline and the next deposit of a producer
    // are noticed within 20 ms; a tick costs no syscall when nothing waits.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut rescan = false;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {},
            _ = shared.wake.notified() => {},
            Some(h) = rx.recv() => {
                handle_hint(&shared, &mut settler, h, &mut rescan);
                while let Ok(h) = rx.try_recv() {
                    handle_hint(&shared, &mut settler, h, &mut rescan);
                }
            }
        }
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        shared.beat.beat();
        let cfg = shared.config();
        settler.reconfigure(Duration::from_millis(cfg.watch.settle_ms), cfg.watch.sidecar_marks_done);
        // Redis back after an outage, or back empty: everything it should
        // know is re-sent from the spool.
        // Redis liveness (and emptiness) once a second, or when a write failed.
        // A rescan asked for (a new producer folder, a watcher overflow)
        // is done now, not at the next once-a-second pass: files land in a
        // new folder before its watch is in place (measured: the first
        // deposits of new producers waited up to a second).
        if redis_ok && !rescan && last_ping.elapsed() < Duration::from_secs(1) {
            claim_settled(&shared, &cfg, &mut settler).await;
            schedule(&shared, &storage, false).await;
            continue;
        }
        last_ping = Instant::now();
        let alive = check_instance(&shared.status, &mut instance).await;
        match (alive, redis_ok) {
            (Ok(reset), _) => {
                if !redis_ok || reset {
                    info!(reset, "Redis is back; resynchronising from the spool");
                    lock(&shared.queued).clear();
                    let sh = shared.clone();
                    if let Some(Err(e)) = lend(&mut (), move |()| sh.index_reload()).await {
                        warn!(error = %e, "cannot read the spool");
                    }
                    rescan = true;
                    if ready.is_none() {
                        service::status("running");
                    }
                }
                redis_ok = true;
            }
            (Err(e), true) => {
                warn!(error = %e, "Redis unreachable; deposits wait in new/ and the spool until it returns");
                service::status("Redis unreachable; deposits wait in new/ and the spool");
                redis_ok = false;
            }
            (Err(_), false) => {}
        }
        if watcher.is_none() && cfg.watch.poll_ms == 0 {
            watcher = watcher::start(&cfg.drop_root, cfg.watch.poll_ms, tx.clone()).ok();
            watched.clear();
            rescan = true;
        }
        // The scan is the safety net under inotify (missed events, a
        // folder made and filled before its watch was added): a readdir of
        // each new/ folder, cheap enough to do every second.
        if rescan || last_scan.elapsed() >= Duration::from_secs(1) {
            last_scan = Instant::now();
            let c = cfg.clone();
            let mut state = (std::mem::take(&mut settler), watcher.take(), std::mem::take(&mut watched));
            lend(&mut state, move |(settler, watcher, watched)| {
                let is_p = |p: &str| c.is_producer(p);
                if let Some(w) = watcher.as_mut() {
                    watcher::watch_producers(w.as_mut(), watched, &c.drop_root, &is_p);
                }
                for (_, path) in watcher::scan(&c.drop_root, &is_p) {
                    settler.note(&path, Instant::now());
                }
            })
            .await;
            // After a panic the watcher is None (restarted on the next
            // pass) and the settler blank: give it its settings back before
            // it judges anything.
            (settler, watcher, watched) = state;
            settler.reconfigure(Duration::from_millis(cfg.watch.settle_ms), cfg.watch.sidecar_marks_done);
        }
        shared.redis_up.store(redis_ok, Ordering::Relaxed);
        claim_settled(&shared, &cfg, &mut settler).await;
        if redis_ok {
            schedule(&shared, &storage, true).await;
            // Redis answered, the spool was recovered and queued, the
            // drop folders scanned and watched: systemd may call us ready.
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            if last_trim.elapsed() >= Duration::from_secs(60) {
                last_trim = Instant::now();
                trim_queue(&shared.status, &storage, cfg.redis.keep_finished_jobs).await;
                trim_deposits(&shared.status, cfg.redis.keep_deposits_days).await;
            }
        }
    }
    drop(watcher);
}

fn handle_hint(shared: &Shared, settler: &mut Settler, h: Hint, rescan: &mut bool) {
    match h {
        Hint::Rescan => *rescan = true,
        Hint::Path { path: p, created } => {
            let cfg = shared.config();
            let is_p = |x: &str| cfg.is_producer(x);
            if let Some((_, name)) = watcher::classify(&cfg.drop_root, &p, &is_p) {
                let sidecar_of = name.strip_suffix(".md5");
                let target = sidecar_of.map_or_else(|| p.clone(), |base| p.with_file_name(base));
                let tname = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if !watcher::ignored(&tname) {
                    if sidecar_of.is_some() {
                        // The sidecar may mark its archive done before settle_ms.
                        settler.poke(&target, Instant::now());
                    } else {
                        settler.note(&target, Instant::now());
                    }
                }
            } else if created && p.strip_prefix(&cfg.drop_root).is_ok_and(|r| r.components().count() <= 2) {
                // A new producer folder or its new/: files may have landed
                // in it before the watch on it was in place, so look.
                *rescan = true;
            }
        }
    }
}

async fn check_instance(status: &Status, mine: &mut Option<String>) -> redis::RedisResult<bool> {
    let mut conn = status.conn.clone();
    let key = format!("{}:instance", status.prefix);
    let cur: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
    match (cur, mine.as_ref()) {
        (Some(c), Some(m)) if &c == m => Ok(false),
        (Some(c), None) => {
            *mine = Some(c);
            Ok(true)
        }
        _ => {
            // First start, or Redis came back empty: either way, resync.
            let id = jobs::deposit::new_id("instance");
            let _: () = redis::cmd("SET").arg(&key).arg(&id).query_async(&mut conn).await?;
            *mine = Some(id);
            Ok(true)
        }
    }
}

/// Up to this many claims per batch: one listing of each `new/` serves
/// many claims, and one sync of the spool and of each `new/` covers the
/// batch. A batch is as big as the spool's backlog (at least
/// [`MIN_CLAIMS`]): the first deposits of a burst reach the workers after
/// a small batch, and later batches grow while the workers have plenty.
const CLAIMS_PER_TICK: usize = 256;
const MIN_CLAIMS: usize = 32;

/// Claim settled uploads, each producer's in upload order: a producer's
/// files are taken oldest first and its walk stops at the first one not
/// settled yet, so a file noticed late is not overtaken by a newer one.
/// Producers take turns, one claim each per round: a burst over many
/// producers puts them all to work at once, where taking the first
/// producer's whole backlog first kept the others (and all but one
/// worker) waiting for several ticks.
async fn claim_settled(shared: &Arc<Shared>, cfg: &Arc<Config>, settler: &mut Settler) {
    let now = Instant::now();
    if !settler.due(now) {
        return;
    }
    let producers: std::collections::BTreeSet<String> = settler
        .folders()
        .into_iter()
        .filter_map(|dir| {
            let p = dir.parent()?.file_name()?.to_str()?;
            (dir == cfg.drop_root.join(p).join("new") && cfg.is_producer(p)).then(|| p.to_owned())
        })
        .collect();
    if producers.is_empty() {
        return;
    }
    let backlog: usize = lock(&shared.index).values().map(BTreeMap::len).sum();
    let budget = backlog.clamp(MIN_CLAIMS, CLAIMS_PER_TICK);
    let (sh, c) = (shared.clone(), cfg.clone());
    // A batch of claims takes tens of milliseconds (measured: in
    // block_in_place, no job started while a burst was being claimed).
    let Some(claimed) = lend(settler, move |settler| claim_batch(&sh, &c, settler, producers, now, budget)).await
    else {
        return;
    };
    for e in &claimed {
        shared.index_add(e);
        shared.metrics.claimed(&e.producer);
        info!(deposit = %e.id, producer = %e.producer, file = %e.name, state = status::CREATED, "claimed");
    }
    if let Err(err) = shared.status.created(&claimed).await {
        warn!(error = %err, "cannot record CREATED; will retry from the spool");
    }
    if claimed.len() >= budget {
        // More may be waiting: the next batch right after queueing, not
        // at the next tick.
        shared.wake.notify_one();
    }
}

/// Blocking file work on the blocking pool, with `state` lent to it: in
/// block_in_place it held up the runtime threads that drive every job's
/// Redis traffic. `None` if the work panicked; `state` is then reset to its
/// default (a settler forgets what it had seen, which the next scan finds
/// again; the scheduler reconfigures it on its next pass).
async fn lend<S: Default + Send + 'static, T: Send + 'static>(
    state: &mut S,
    f: impl FnOnce(&mut S) -> T + Send + 'static,
) -> Option<T> {
    let mut owned = std::mem::take(state);
    match tokio::task::spawn_blocking(move || {
        let t = f(&mut owned);
        (owned, t)
    })
    .await
    {
        Ok((back, t)) => {
            *state = back;
            Some(t)
        }
        Err(e) => {
            warn!(error = %e, "blocking file work failed; the next pass takes it up again");
            None
        }
    }
}

/// One tick's claims, producers taking turns (see [`claim_settled`]), then
/// one sync for the batch.
fn claim_batch(
    shared: &Shared,
    cfg: &Config,
    settler: &mut Settler,
    producers: std::collections::BTreeSet<String>,
    now: Instant,
    mut budget: usize,
) -> Vec<Entry> {
    // A backlog waits in new/ and is claimed a slice per batch, so the
    // scheduler keeps queueing while thousands of files are taken in.
    let mut claimed = Vec::new();
    let mut turns: Vec<(String, std::vec::IntoIter<PathBuf>)> = producers
        .into_iter()
        .map(|p| {
            let files = settler.ordered(&cfg.drop_root.join(&p).join("new"), now);
            (p, files.into_iter())
        })
        .collect();
    while budget > 0 && !turns.is_empty() {
        turns.retain_mut(|(p, files)| {
            let Some(path) = files.next().filter(|_| budget > 0) else { return false };
            if !settler.observe(&path, now) {
                return false;
            }
            budget -= 1;
            settler.forget(&path);
            match shared.spool.claim(p, &path) {
                Ok(e) => {
                    claimed.push(e);
                    true
                }
                Err(err) => {
                    warn!(path = %path.display(), error = %err, "cannot claim");
                    false
                }
            }
        });
    }
    if !claimed.is_empty()
        && let Err(err) = shared.spool.sync(&claimed, &cfg.drop_root)
    {
        // The entries are in custody either way; a crash before the
        // next sync can only give them back to new/, to be claimed again.
        warn!(error = %err, "cannot sync the spool");
    }
    claimed
}

/// apalis-redis keeps every finished task (set member, meta hash, payload)
/// forever; keep the configured number.
const TRIM: &str = r#"
local removed = 0
for _, set in ipairs({KEYS[1], KEYS[2]}) do
  local n = redis.call('SCARD', set) - tonumber(ARGV[1])
  if n > 0 then
    if n > 5000 then n = 5000 end
    for _, id in ipairs(redis.call('SPOP', set, n)) do
      redis.call('DEL', KEYS[3] .. ':' .. id)
      redis.call('HDEL', KEYS[4], id)
      removed = removed + 1
    end
  end
end
return removed
"#;

pub async fn trim_queue(status: &Status, storage: &Queue, keep: u64) {
    let qc = storage.get_config();
    let mut conn = status.conn.clone();
    let r: redis::RedisResult<i64> = redis::Script::new(TRIM)
        .key(qc.done_jobs_set())
        .key(qc.dead_jobs_set())
        .key(qc.job_meta_hash())
        .key(qc.job_data_hash())
        .arg(keep)
        .invoke_async(&mut conn)
        .await;
    match r {
        Ok(n) if n > 0 => info!(removed = n, "trimmed finished queue tasks"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot trim the queue"),
    }
}

/// Finished deposits claimed before the cutoff (ms since the epoch, the
/// score of `<prefix>:deposits`) lose their status hash; one that never
/// finished is kept whatever its age.
const TRIM_DEPOSITS: &str = r#"
local removed = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 5000)) do
  local key = ARGV[2] .. id
  local s = redis.call('HGET', key, 'state')
  if s == 'SUCCESS' or s == 'FAILURE' or not s then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], id)
    removed = removed + 1
  end
end
return removed
"#;

/// `redis.keep_deposits_days`: without it Redis would keep every deposit's
/// hash forever (a few hundred bytes each, thousands a day).
pub async fn trim_deposits(status: &Status, days: u64) {
    if days == 0 {
        return;
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let cutoff = now_ms.saturating_sub(u128::from(days) * 86_400_000);
    let mut conn = status.conn.clone();
    let r: redis::RedisResult<i64> = redis::Script::new(TRIM_DEPOSITS)
        .key(status.deposits_key())
        .arg(cutoff as f64)
        .arg(status.deposit_key(""))
        .invoke_async(&mut conn)
        .await;
    match r {
        Ok(n) if n > 0 => info!(removed = n, days, "removed old deposit status (redis.keep_deposits_days)"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot trim old deposit status"),
    }
}

/// Queue each producer's oldest deposit that is not queued yet.
///
/// `full` on the once-a-second pass. A deposit already queued leaves the
/// index through [`Shared::done`] when a job of this process ends it; only
/// a worker elsewhere (`--role worker`) can end it unseen, which its spool
/// entry's absence tells. That stat is made on full passes only: the other
/// passes come at every job's end (hundreds a second in a burst) and would
/// stat every producer's deposit each time.
async fn schedule(shared: &Shared, storage: &Queue, full: bool) {
    let mut oldest: Vec<(String, Entry)> = Vec::new();
    {
        let mut idx = lock(&shared.index);
        let queued = lock(&shared.queued);
        for (p, entries) in idx.iter_mut() {
            while let Some((k, e)) = entries.first_key_value() {
                let waits = !full && queued.get(p) == Some(&e.id);
                if waits || shared.spool.holds(&e.id) {
                    oldest.push((p.clone(), e.clone()));
                    break;
                }
                let k = k.clone();
                entries.remove(&k);
            }
        }
        idx.retain(|_, m| !m.is_empty());
    }
    let now = Instant::now();
    for (p, e) in oldest {
        if lock(&shared.queued).get(&p) == Some(&e.id) {
            continue;
        }
        if lock(&shared.retry_at).get(&e.id).is_some_and(|t| *t > now) {
            continue;
        }
        // WAITING (and CREATED first, if Redis lost it) before the push: a fast worker's PROGRESS must not be
        // overwritten by it.
        match shared.status.set(&e, status::WAITING, &[]).await {
            Ok(true) => {}
            Ok(false) => continue, // already ended
            Err(err) => {
                warn!(error = %err, "Redis write failed");
                return;
            }
        }
        let mut s = storage.clone();
        match s.push(DepositJob { id: e.id.clone(), producer: p.clone() }).await {
            Ok(()) => {
                shared.pushed.notify_one();
                lock(&shared.queued).insert(p.clone(), e.id.clone());
                lock(&shared.retry_at).remove(&e.id);
                info!(deposit = %e.id, producer = %p, state = status::WAITING, "queued");
            }
            Err(err) => {
                warn!(deposit = %e.id, error = %err, "cannot queue; will retry");
                return;
            }
        }
    }
}
