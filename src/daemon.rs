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
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use apalis::prelude::*;
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::service;
use crate::spool::{Entry, Spool};
use crate::state::{DepositJob, Queue, Shared, connect, lock, queue};
use crate::status::{self, Status};
use crate::watcher::{self, Hint, Settler};
use crate::{poll, selfcheck, worker};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    All,
    Watcher,
    Worker,
    /// The HTTP door alone (a front host sharing the folders and Redis).
    Http,
}

pub async fn run(config_path: PathBuf, role: Role) -> Result<()> {
    let cfg = Arc::new(Config::load(&config_path)?);
    if role == Role::Http && cfg.http.listen.is_empty() {
        anyhow::bail!("--role http runs the HTTP door alone: set http.listen in {}", config_path.display());
    }
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
    if role != Role::Watcher && role != Role::Http {
        // Not awaited: a slow or unreachable bucket must not hold up the start.
        let c = cfg.clone();
        tokio::task::spawn_blocking(move || crate::target::clean_s3_debris(&c));
    }
    let spool = Spool::new(&cfg.drop_root).context("creating the spool")?;
    let status = Status { conn: conn.clone(), prefix: cfg.redis.prefix.clone() };
    let shared = Arc::new(Shared::new(cfg.clone(), spool, status));
    let serves = if role == Role::Http { crate::http::Serves::DoorOnly } else { crate::http::Serves::Everything };
    // `metrics.listen`: /metrics alone on an address of its own (the door
    // serves it too).
    let metrics = match cfg.metrics.listen.as_str() {
        "" => None,
        addr => Some(crate::http::serve(addr, shared.clone(), serves, true).await?),
    };
    let door = match cfg.http.listen.as_str() {
        "" => None,
        _ if !matches!(role, Role::All | Role::Http) => None,
        addr => Some(crate::http::serve(addr, shared.clone(), serves, false).await?),
    };
    if metrics.is_some() || door.is_some() {
        crate::metrics::spawn_seed(shared.clone());
    }
    // The queue gets a connection of its own: its commands must not hold up
    // status writes on a shared multiplexed connection, nor the reverse.
    let storage = queue(connect(&cfg).await?, &cfg);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(handle_signals(shared.clone(), config_path.clone(), stop_tx));

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let scheduler = matches!(role, Role::All | Role::Watcher)
        .then(|| tokio::spawn(scheduler(shared.clone(), storage.clone(), stop_rx.clone(), ready_tx)));
    let watchdog = service::spawn_watchdog(shared.beat.clone());
    let pruner = matches!(role, Role::All | Role::Worker).then(|| tokio::spawn(pruner(shared.clone())));
    let worker_beat = matches!(role, Role::Worker | Role::Http).then(|| {
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
        if matches!(role, Role::Worker | Role::Http) || ready_rx.await.is_ok() {
            service::ready(&format!("running ({role:?})"));
            info!(role = ?role, "ready");
        }
    });
    info!(role = ?role, drop_root = %cfg.drop_root.display(), publish_root = %cfg.publish_root.display(), "depot running");

    if matches!(role, Role::All | Role::Worker) {
        let concurrency = cfg.workers.concurrency;
        let shutdown = Duration::from_secs(cfg.workers.shutdown_timeout_s);
        // Woken by this process's scheduler when it queues; the timer is
        // for jobs queued elsewhere: a worker-only process has no other
        // way to learn of them (see `poll`).
        let every = Duration::from_millis(if role == Role::Worker { 10 } else { 500 });
        // apalis restarts a failed worker at once, and a worker fails at its
        // first fetch while Redis is away: two restarts a second, each
        // logged (a 10 s outage made 132 lines). It is restarted here
        // instead, once Redis answers again, and after a backoff if it keeps
        // failing with Redis up. One line per outage: the scheduler's, or
        // this loop's with --role worker (no scheduler there).
        let failed: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let mut runs = 0u64;
        let mut quick_failures = 0u32;
        'runs: loop {
            let (st, sh, why) = (storage.clone(), shared.clone(), failed.clone());
            let run = runs;
            runs += 1;
            let monitor = Monitor::new()
                .register(move |restarts| {
                    // A fresh name per start: a restarted worker under its old
                    // name is refused while the old one still looks alive.
                    let name = format!("depot-{}-{}-{run}-{restarts}", std::process::id(), jobs::deposit::new_id("w"));
                    WorkerBuilder::new(name)
                        .backend(st.clone().poll_with_strategy(poll::Wake::new(every, sh.pushed.clone())))
                        .concurrency(concurrency)
                        .data(sh.clone())
                        .build(worker::handle)
                })
                .should_restart(move |_ctx, e| {
                    *lock(&why) = Some(e.to_string());
                    false
                })
                .shutdown_timeout(shutdown);
            let mut rx = stop_rx.clone();
            let started = Instant::now();
            let r = monitor
                .run_with_signal(async move {
                    let _ = rx.wait_for(|s| *s).await;
                    Ok(())
                })
                .await;
            if *stop_rx.borrow() {
                if let Err(e) = r {
                    warn!(error = %e, "workers stopped with an error");
                }
                break;
            }
            let why = lock(&failed).take().or_else(|| r.err().map(|e| e.to_string())).unwrap_or_default();
            let mut wait = Duration::from_millis(250);
            let mut outage = false;
            loop {
                // The queue's own connection: it is the one the worker uses,
                // and it reconnects when a command goes through it.
                let mut conn = storage.clone().get_connection().clone();
                match redis_within(redis::cmd("PING").query_async::<String>(&mut conn)).await {
                    Ok(_) => break,
                    Err(e) => {
                        if !outage && role == Role::Worker {
                            warn!(error = %e, "Redis unreachable; the workers wait for it");
                        }
                        outage = true;
                    }
                }
                let mut rx = stop_rx.clone();
                tokio::select! {
                    _ = rx.wait_for(|s| *s) => break 'runs,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            if outage {
                quick_failures = 0;
                if role == Role::Worker {
                    info!("Redis is back; the workers take jobs again");
                }
                continue;
            }
            // Redis answers: the worker failed for another reason.
            quick_failures = if started.elapsed() < Duration::from_secs(60) { quick_failures + 1 } else { 1 };
            let pause = worker::backoff(quick_failures).min(Duration::from_secs(60));
            warn!(error = %why, restart_in_ms = pause.as_millis() as u64, "queue worker stopped; restarting it");
            let mut rx = stop_rx.clone();
            tokio::select! {
                _ = rx.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(pause) => {}
            }
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
    interrupted(&shared).await;
    signals.abort();
    for t in [watchdog, worker_beat, metrics, door, pruner].into_iter().flatten() {
        t.abort();
    }
    ready.abort();
    info!("depot stopped");
    Ok(())
}

/// How long jobs that see `abort` get to stop and record themselves.
const INTERRUPT_WAIT: Duration = Duration::from_secs(5);

/// The grace period is over: the jobs still running stop (they see
/// `abort`) and record their deposit as WAITING, interrupted. Their tasks
/// would die with the runtime when `run` returns, leaving PROGRESS in
/// Redis until the next start: they are given a moment, and a deposit
/// whose pipeline does not stop in time is recorded here.
async fn interrupted(shared: &Arc<Shared>) {
    let t0 = Instant::now();
    while shared.running.load(Ordering::SeqCst) > 0 && t0.elapsed() < INTERRUPT_WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<Entry> = lock(&shared.in_progress).values().cloned().collect();
    for e in left {
        warn!(deposit = %e.id, producer = %e.producer, "still running at exit: recorded as WAITING; resumes at the next start");
        let (sh, mut en) = (shared.clone(), e.clone());
        let _ = tokio::task::spawn_blocking(move || sh.spool.interrupted(&mut en)).await;
        let _ = redis_within(shared.status.set(&e, status::WAITING, &worker::interrupted_fields(""))).await;
    }
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
                    if c.http.listen != shared.config().http.listen {
                        warn!("http.listen changed: takes effect at the next start");
                    }
                    shared.set_config(c);
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
    settler.bound_marks(cfg.watch.max_open_marks);
    let mut last_scan = Instant::now() - Duration::from_secs(3600);
    let mut redis_ok = true;
    let mut instance = None::<String>;
    let mut last_trim = Instant::now() - Duration::from_secs(3600);
    let mut last_reconcile = Instant::now();
    let mut last_sweep = Instant::now() - SIDECAR_SWEEP;
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
        settler.bound_marks(cfg.watch.max_open_marks);
        // Redis back after an outage, or back empty: everything it should
        // know is re-sent from the spool.
        // Redis liveness (and emptiness) once a second, or when a write failed.
        // A rescan asked for (a new producer folder, a watcher overflow)
        // is done now, not at the next once-a-second pass: files land in a
        // new folder before its watch is in place (measured: the first
        // deposits of new producers waited up to a second).
        if redis_ok && !rescan && last_ping.elapsed() < Duration::from_secs(1) {
            claim_settled(&shared, &storage, &cfg, &mut settler).await;
            schedule(&shared, &storage, false).await;
            continue;
        }
        last_ping = Instant::now();
        // The first pass finds no instance of ours: a start, not a return.
        let had_instance = instance.is_some();
        let alive = redis_within(check_instance(&shared.status, &mut instance)).await;
        match (alive, redis_ok) {
            (Ok(reset), _) => {
                if !redis_ok || reset {
                    if !redis_ok || had_instance {
                        if reset {
                            info!(
                                reset,
                                "Redis is back, but empty (it lost depot's keys: restarted without persistence, or \
                                 flushed); every deposit in the spool is queued again and new/ rescanned, nothing \
                                 is lost"
                            );
                        } else {
                            info!(
                                reset,
                                "Redis is back with its keys; deposits that waited in new/ and the spool are \
                                 queued again"
                            );
                        }
                    }
                    lock(&shared.queued).clear();
                    let sh = shared.clone();
                    if let Some(Err(e)) = lend(&shared.beat, &mut (), move |()| sh.index_reload()).await {
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
            settler.lost_events();
            rescan = true;
        }
        // The scan is the safety net under inotify (missed events, a
        // folder made and filled before its watch was added): a readdir of
        // each new/ folder, cheap enough to do every second.
        if rescan || last_scan.elapsed() >= Duration::from_secs(1) {
            last_scan = Instant::now();
            let c = cfg.clone();
            let sweep = last_sweep.elapsed() >= SIDECAR_SWEEP;
            if sweep {
                last_sweep = Instant::now();
            }
            let sh = shared.clone();
            let mut state = (std::mem::take(&mut settler), watcher.take(), std::mem::take(&mut watched));
            lend(&shared.beat, &mut state, move |(settler, watcher, watched)| {
                let is_p = |p: &str| c.is_producer(p);
                if let Some(w) = watcher.as_mut() {
                    watcher::watch_producers(w.as_mut(), watched, &c.drop_root, &is_p);
                }
                for (_, path) in watcher::scan(&c.drop_root, &is_p) {
                    settler.note(&path, Instant::now());
                }
                let mut lone = settler.take_lone_sidecars();
                if sweep {
                    lone.extend(watcher::sidecars(&c.drop_root, &is_p));
                }
                // Bounded per pass, each folder listed at most once: a
                // producer keeping thousands of lone sidecars must not hold
                // the scheduler (the rest wait for the next sweep).
                let mut busy = crate::sidecars::Busy::default();
                for side in lone.into_iter().take(SIDECARS_PER_PASS) {
                    sweep_sidecar(&sh, &c, settler, &side, &mut busy);
                }
            })
            .await;
            // After a panic the watcher is None (restarted on the next
            // pass) and the settler blank: give it its settings back before
            // it judges anything.
            (settler, watcher, watched) = state;
            settler.reconfigure(Duration::from_millis(cfg.watch.settle_ms), cfg.watch.sidecar_marks_done);
            settler.bound_marks(cfg.watch.max_open_marks);
        }
        shared.redis_up.store(redis_ok, Ordering::Relaxed);
        if redis_ok {
            adopt_door_claims(&shared).await;
        }
        claim_settled(&shared, &storage, &cfg, &mut settler).await;
        if redis_ok {
            schedule(&shared, &storage, true).await;
            // Redis answered, the spool was recovered and queued, the
            // drop folders scanned and watched: systemd may call us ready.
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            if last_reconcile.elapsed() >= LOST_AFTER {
                last_reconcile = Instant::now();
                reconcile(&shared, &storage).await;
            }
            if last_trim.elapsed() >= Duration::from_secs(60) {
                last_trim = Instant::now();
                let _ = tokio::time::timeout(
                    REDIS_WAIT,
                    trim_queue(&shared.status, &storage, cfg.redis.keep_finished_jobs),
                )
                .await;
                let _ =
                    tokio::time::timeout(REDIS_WAIT, trim_deposits(&shared.status, cfg.redis.keep_deposits_days)).await;
                // retention.rejected_days (logs what it removed).
                let c = cfg.clone();
                let _ = tokio::task::spawn_blocking(move || crate::ops::prune_rejected(&c)).await;
            }
        }
    }
    drop(watcher);
}

/// Deposits a door elsewhere (`--role http`) claimed into the spool: into
/// this scheduler's index, to be queued in their producer's order.
async fn adopt_door_claims(shared: &Arc<Shared>) {
    let mut conn = shared.status.conn.clone();
    let ids: Vec<String> = match redis_within(
        redis::cmd("RPOP").arg(shared.status.door_claims_key()).arg(256).query_async::<Option<Vec<String>>>(&mut conn),
    )
    .await
    {
        Ok(Some(ids)) => ids,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, "cannot read the HTTP door's claims; they wait in Redis");
            return;
        }
    };
    let sh = shared.clone();
    let entries = tokio::task::spawn_blocking(move || {
        ids.iter()
            .filter(|id| jobs::deposit::is_id(id))
            .filter_map(|id| sh.spool.load_with_outcome(id).ok().flatten())
            .filter(|(e, _)| !e.parked)
            .map(|(e, _)| e)
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for e in &entries {
        shared.index_add(e);
        info!(deposit = %e.id, producer = %e.producer, "claimed by the HTTP door");
    }
}

/// How often every `new/` is looked through for sidecars without archive.
const SIDECAR_SWEEP: Duration = Duration::from_secs(60);
/// Sidecars judged per scan pass, at most.
const SIDECARS_PER_PASS: usize = 256;

/// A sidecar whose archive is not in `new/`: moved out when late (its
/// archive was taken already) or orphaned (see `sidecars`).
fn sweep_sidecar(
    shared: &Shared,
    cfg: &Config,
    settler: &Settler,
    side: &std::path::Path,
    busy: &mut crate::sidecars::Busy,
) {
    let Some((producer, _)) = watcher::classify(&cfg.drop_root, side, &|p| cfg.is_producer(p)) else { return };
    let verdict = {
        let recent = lock(&shared.recent);
        crate::sidecars::judge(side, &recent, settler.is_open(side), std::time::SystemTime::now(), busy)
    };
    if let crate::sidecars::Verdict::Out(why) = verdict {
        match crate::sidecars::move_out(&cfg.drop_root.join(&producer), &producer, side, &why) {
            Ok(report) => {
                warn!(producer = %producer, path = %side.display(), report = %report.display(), "sidecar without its archive moved out: {why}")
            }
            Err(e) => warn!(path = %side.display(), error = %e, "cannot move out a sidecar without its archive"),
        }
    }
}

fn handle_hint(shared: &Shared, settler: &mut Settler, h: Hint, rescan: &mut bool) {
    match h {
        Hint::Rescan => {
            // Events were lost: who holds what open is no longer known.
            settler.lost_events();
            *rescan = true;
        }
        Hint::Path { path: p, created, touch } => {
            let cfg = shared.config();
            let is_p = |x: &str| cfg.is_producer(x);
            if let Some((_, name)) = watcher::classify(&cfg.drop_root, &p, &is_p) {
                let now = Instant::now();
                let inotify = cfg.watch.poll_ms == 0;
                let sidecar_of = crate::sidecars::strip_sidecar_suffix(&name);
                let target = sidecar_of.map_or_else(|| p.clone(), |base| p.with_file_name(base));
                let tname = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                // Marks only for names that can be deposits or their
                // sidecars: ignored names (hidden, .part) never leave one.
                let claimable = !watcher::ignored(&tname) && !name.starts_with('.');
                match touch {
                    _ if !claimable => {}
                    watcher::Touch::Write if inotify => settler.written(&p, now),
                    watcher::Touch::Close if inotify => settler.closed(&p, now),
                    watcher::Touch::Gone => settler.gone(&p),
                    _ => {}
                }
                if !watcher::ignored(&tname) {
                    if sidecar_of.is_some() {
                        // The sidecar may mark its archive done before settle_ms.
                        settler.poke(&target, now);
                        if std::fs::symlink_metadata(&target).is_err() {
                            // Late (its archive already taken) or early:
                            // the next scan tells.
                            settler.sidecar_alone(&p);
                        }
                    } else {
                        settler.note(&target, now);
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
async fn claim_settled(shared: &Arc<Shared>, storage: &Queue, cfg: &Arc<Config>, settler: &mut Settler) {
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
    let batch = lend(&shared.beat, settler, move |settler| claim_batch(&sh, &c, settler, producers, now, budget));
    tokio::pin!(batch);
    // While a batch is claimed (a flood: hundreds of fsyncs), jobs that end
    // still get their producer's next deposit queued: one producer's flood
    // must not slow every other producer to one deposit per batch.
    let claimed = loop {
        tokio::select! {
            r = &mut batch => break r,
            _ = shared.wake.notified() => schedule(shared, storage, false).await,
        }
    };
    let Some(claimed) = claimed else {
        return;
    };
    for e in &claimed {
        shared.index_add(e);
        shared.metrics.claimed(&e.producer);
        info!(deposit = %e.id, producer = %e.producer, file = %e.name, state = status::CREATED, "claimed");
    }
    if let Err(err) = redis_within(shared.status.created(&claimed)).await {
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
    beat: &crate::service::Heartbeat,
    state: &mut S,
    f: impl FnOnce(&mut S) -> T + Send + 'static,
) -> Option<T> {
    let mut owned = std::mem::take(state);
    let mut work = tokio::task::spawn_blocking(move || {
        let t = f(&mut owned);
        (owned, t)
    });
    // A writeback storm can hold a claim batch's fsyncs for many seconds:
    // the watchdog is fed while the work is pending, for at most
    // DISK_PATIENCE, so that a slow disk does not get the daemon killed in
    // the middle of jobs, while a disk that never answers still does.
    let t0 = Instant::now();
    let joined = loop {
        match tokio::time::timeout(Duration::from_secs(5), &mut work).await {
            Ok(r) => break r,
            Err(_) => {
                warn!(waited_s = t0.elapsed().as_secs(), "file work of the scheduler is slow (disk busy?)");
                if t0.elapsed() < DISK_PATIENCE {
                    beat.beat();
                }
            }
        }
    };
    match joined {
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

/// How long the scheduler's file work may keep the watchdog fed while it
/// waits on the disk (`WatchdogSec` is 30 s: a stuck disk is noticed within
/// this plus 30 s).
const DISK_PATIENCE: Duration = Duration::from_secs(120);

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
    let mut turns: Vec<(String, PathBuf, std::collections::VecDeque<PathBuf>)> = producers
        .into_iter()
        .map(|p| {
            let dir = cfg.drop_root.join(&p).join("new");
            let files = settler.ordered(&dir, now);
            (p, dir, files)
        })
        .collect();
    let mut done: Vec<(PathBuf, std::collections::VecDeque<PathBuf>)> = Vec::new();
    // limits.max_backlog: what each producer may still claim now; the rest
    // waits in new/ (its listing kept, in drop order).
    let mut room: HashMap<String, u64> = {
        let idx = lock(&shared.index);
        turns
            .iter()
            .map(|(p, _, _)| {
                let held = idx.get(p).map_or(0, BTreeMap::len) as u64;
                (p.clone(), cfg.settings_for(p).limits.max_backlog.saturating_sub(held))
            })
            .collect()
    };
    while budget > 0 && !turns.is_empty() {
        let mut i = 0;
        while i < turns.len() {
            let (p, _, files) = &mut turns[i];
            let left = room.get_mut(p.as_str());
            // One claim per producer per round; a producer stops at its
            // first file not settled yet (it keeps its place).
            let mut took = false;
            let mut stop = false;
            // Files a writer holds open are not dropped yet (their place in
            // the order is their close): passed over, kept in the listing.
            let mut open = Vec::new();
            let Some(left) = left.filter(|n| **n > 0) else {
                let (_, dir, files) = turns.swap_remove(i);
                done.push((dir, files));
                continue;
            };
            while budget > 0 {
                let Some(path) = files.pop_front() else {
                    stop = true;
                    break;
                };
                if !settler.observe(&path, now) {
                    if settler.is_open(&path) {
                        open.push(path);
                        continue;
                    }
                    if settler.knows(&path) {
                        // Not settled yet by the quiet rule: the walk stops
                        // here, so a file noticed late is not overtaken.
                        files.push_front(path);
                        stop = true;
                        break;
                    }
                    continue; // gone, or not a regular file: skip it
                }
                budget -= 1;
                *left -= 1;
                settler.forget(&path);
                match shared.spool.claim(p, &path) {
                    Ok(e) => {
                        lock(&shared.recent).claimed(&path, &e.id);
                        claimed.push(e);
                    }
                    // Once per file, not at every pass (a file swapped or
                    // changed under the claim is looked at again anyway).
                    Err(err) => settler.refuse(&path, &format!("cannot claim: {err}")),
                }
                took = true;
                break;
            }
            for p in open.into_iter().rev() {
                files.push_front(p);
            }
            if stop || !took {
                let (_, dir, files) = turns.swap_remove(i);
                done.push((dir, files));
            } else {
                i += 1;
            }
        }
    }
    for (_, dir, files) in turns {
        done.push((dir, files));
    }
    for (dir, files) in done {
        settler.keep_listing(&dir, files);
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
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    for (p, e) in oldest {
        if lock(&shared.queued).get(&p) == Some(&e.id) {
            continue;
        }
        // Ended by a job of this process while this pass awaited Redis for
        // the producers before it.
        let still = || lock(&shared.index).get(&p).is_some_and(|m| m.contains_key(&(e.claimed_ns, e.id.clone())));
        if !still() {
            continue;
        }
        if lock(&shared.retry_at).get(&e.id).is_some_and(|t| *t > now) || e.not_before_ms > now_ms {
            continue;
        }
        // WAITING (and CREATED first, if Redis lost it) before the push: a fast worker's PROGRESS must not be
        // overwritten by it.
        match redis_within(shared.status.set(&e, status::WAITING, &[])).await {
            Ok(true) => {}
            Ok(false) if !still() || lock(&shared.queued).contains_key(&p) || !shared.spool.holds(&e.id) => continue,
            Ok(false) => {
                // Redis shows an end the spool still holds (a crash between
                // the terminal state and the entry's removal): the job
                // finishes it from the spool's outcome. Skipping it here
                // wedged the producer for good.
                info!(deposit = %e.id, producer = %p, "ended in Redis, still in the spool: finishing it");
            }
            Err(err) => {
                warn!(error = %err, "Redis write failed");
                return;
            }
        }
        let task_id = format!("{}.{}", e.id, jobs::deposit::new_id("t").rsplit('-').next().unwrap_or("0"));
        let task = TaskBuilder::new(DepositJob { id: e.id.clone(), producer: p.clone() })
            .task_id(TaskId::from_string(task_id.clone()))
            .build();
        let mut s = storage.clone();
        match redis_within(async { s.push_task(task).await.map_err(|e| anyhow::anyhow!("{e}")) }).await {
            Ok(()) => {
                shared.pushed.notify_one();
                lock(&shared.queued).insert(p.clone(), e.id.clone());
                lock(&shared.tasks).insert(e.id.clone(), (task_id, now));
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

/// How long one Redis call of the scheduler may take: well under systemd's
/// `WatchdogSec` (30 s), so that a slow Redis costs a pass, not the daemon.
const REDIS_WAIT: Duration = Duration::from_secs(5);

async fn redis_within<T, E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(REDIS_WAIT, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer from Redis within {} s", REDIS_WAIT.as_secs())),
    }
}

/// A queued job is checked against Redis once it is this old.
const LOST_AFTER: Duration = Duration::from_secs(5);

/// The scheduler's memory of queued jobs against Redis: a job that is gone
/// from the queue (Redis flushed or lost it), or that ended (done or dead,
/// in this process or a worker elsewhere) while its deposit is still in the
/// spool, no longer holds its producer: the deposit is queued again, after
/// the backoff its spool record asks for. Without this a producer waited
/// for the next restart.
async fn reconcile(shared: &Arc<Shared>, storage: &Queue) {
    let now = Instant::now();
    let candidates: Vec<(String, String, String)> = {
        let queued = lock(&shared.queued);
        let tasks = lock(&shared.tasks);
        let running = lock(&shared.active);
        queued
            .iter()
            .filter(|(_, id)| !running.contains(*id))
            .filter_map(|(p, id)| {
                let (task, at) = tasks.get(id)?;
                (now.duration_since(*at) >= LOST_AFTER).then(|| (p.clone(), id.clone(), task.clone()))
            })
            .collect()
    };
    if candidates.is_empty() {
        return;
    }
    let qc = storage.get_config();
    let mut pipe = redis::pipe();
    for (_, _, task) in &candidates {
        pipe.hexists(qc.job_data_hash(), task).sismember(qc.done_jobs_set(), task).sismember(qc.dead_jobs_set(), task);
    }
    let mut conn = shared.status.conn.clone();
    let answers: Vec<bool> = match redis_within(pipe.query_async(&mut conn)).await {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "cannot check queued jobs against Redis");
            return;
        }
    };
    for ((p, id, _), a) in candidates.iter().zip(answers.chunks(3)) {
        let (exists, done, dead) = (a[0], a.get(1) == Some(&true), a.get(2) == Some(&true));
        if exists && !done && !dead {
            continue;
        }
        // Still in the spool? Its record may carry a retry time written by
        // the worker that ran it.
        let (sh, i) = (shared.clone(), id.clone());
        let rec = tokio::task::spawn_blocking(move || sh.spool.load_with_outcome(&i)).await;
        let Ok(Ok(Some((e, _)))) = rec else {
            shared.requeue(p, id);
            continue;
        };
        let mut idx = lock(&shared.index);
        if let Some(x) = idx.get_mut(p).and_then(|m| m.get_mut(&(e.claimed_ns, e.id.clone()))) {
            x.not_before_ms = e.not_before_ms;
        }
        drop(idx);
        if exists {
            info!(deposit = %id, producer = %p, "its queued job ended but the deposit is still in the spool: queueing it again");
        } else {
            warn!(deposit = %id, producer = %p, "its queued job is gone from Redis: queueing it again");
        }
        lock(&shared.tasks).remove(id);
        shared.requeue(p, id);
    }
}
