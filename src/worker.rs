//! One queued deposit, run by an apalis worker: the `jobs` pipeline on a
//! blocking thread, status in Redis as it goes, then rotation and the
//! terminal state. Every step can be repeated after a crash: the spool
//! entry says how far it got.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use jobs::pipeline::Job;
use jobs::report::{Report, ReportBase};
use jobs::rotate::{self, Deposited};
use jobs::unpack::Progress;
use jobs::{Error, Stage};
use tracing::{error, info, warn};

use crate::hook;
use crate::spool::{Entry, Outcome};
use crate::state::{DepositJob, Shared};
use crate::status::{self, FAILURE, PROGRESS, SUCCESS};

/// Shared between the pipeline thread and the status ticker.
struct Live {
    stage: AtomicU8,
    /// Bytes written so far; shared with the space reservations.
    bytes: Arc<AtomicU64>,
    id: String,
    /// The deposit as claimed: a file that still changes is never judged.
    entry: Entry,
    changed: AtomicBool,
    /// Judged as it is, changed or not (see `watch.max_give_backs`).
    as_is: bool,
    last_look: Mutex<Instant>,
    total: AtomicU64,
    files: AtomicU64,
    shared: Arc<Shared>,
    /// When the current stage began, for `depot_stage_seconds`.
    since: Mutex<Instant>,
}

const STAGES: [Stage; 5] = [Stage::Unpack, Stage::Verify, Stage::Conflicts, Stage::Publish, Stage::Rotate];

impl Progress for Live {
    fn stage(&self, s: Stage) {
        let i = STAGES.iter().position(|x| *x == s).unwrap_or(0);
        let prev = self.stage.swap(i as u8, Ordering::Relaxed);
        if prev != i as u8 {
            self.lap(prev);
        }
    }
    fn totals(&self, bytes: u64, _files: u64) {
        self.total.store(bytes, Ordering::Relaxed);
    }
    fn advance(&self, bytes: u64, files: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.files.fetch_add(files, Ordering::Relaxed);
    }
    fn cancelled(&self) -> bool {
        self.shared.abort.load(Ordering::Relaxed) || self.changed()
    }
    fn warn(&self, msg: &str) {
        warn!(deposit = %self.id, "{msg}");
    }
    fn reserve(&self, root: &std::path::Path, need: u64, margin: u64) -> Result<(), Error> {
        let mut logged = false;
        loop {
            match self.shared.space.try_reserve(&self.id, root, need, margin, &self.bytes) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(e),
            }
            if !logged {
                info!(deposit = %self.id, need, "waiting for disk space that running deposits have reserved");
                logged = true;
            }
            if self.cancelled() {
                return Err(Error::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// How often a running deposit's archive is looked at for changes.
const LOOK_EVERY: Duration = Duration::from_millis(250);

impl Live {
    /// Has the archive changed since its claim? Looked at no more than
    /// every [`LOOK_EVERY`] (this is asked between buffers).
    fn changed(&self) -> bool {
        if self.as_is {
            return false;
        }
        if self.changed.load(Ordering::Relaxed) {
            return true;
        }
        let mut last = self.last_look.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < LOOK_EVERY {
            return false;
        }
        *last = Instant::now();
        drop(last);
        let changed = self.shared.spool.changed_since_claim(&self.entry).unwrap_or(false);
        if changed {
            self.changed.store(true, Ordering::Relaxed);
        }
        changed
    }

    /// Account the time since the last lap to stage `i`.
    fn lap(&self, i: u8) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        self.shared.metrics.stage(STAGES[i as usize % STAGES.len()].as_str(), since.elapsed());
        *since = Instant::now();
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("stage", STAGES[self.stage.load(Ordering::Relaxed) as usize % STAGES.len()].as_str().to_owned()),
            ("bytes_done", self.bytes.load(Ordering::Relaxed).to_string()),
            ("bytes_total", self.total.load(Ordering::Relaxed).to_string()),
        ]
    }
}

/// The apalis handler. It never returns a plain error: the queue would
/// re-run it on its own schedule (25 times); retries are ours, bounded by
/// `workers.max_attempts`, and the spool keeps the deposit meanwhile.
///
/// The job runs as a task of its own: apalis polls every job of a worker
/// inside one future (the monitor's, on the thread that runs the daemon's
/// main future), so one job's blocking step held up every other job and
/// the worker's next fetch with them.
pub async fn handle(job: DepositJob, shared: Data<Arc<Shared>>) -> Result<(), BoxDynError> {
    let shared: Arc<Shared> = (*shared).clone();
    tokio::spawn(async move {
        let _running = Running::new(&shared, &job.id);
        handle_one(job, &shared).await
    })
    .await
    .map_err(|e| AbortError::new(std::io::Error::other(format!("deposit job failed: {e}"))))?
}

/// Counts a job as running (and its deposit as active here) until
/// dropped, so that a job cancelled at the end of the shutdown grace (or
/// one that panicked) is not counted forever.
struct Running<'a>(&'a Shared, String);

impl<'a> Running<'a> {
    fn new(shared: &'a Arc<Shared>, id: &str) -> Self {
        shared.running.fetch_add(1, Ordering::Relaxed);
        crate::state::lock(&shared.active).insert(id.to_owned());
        Running(shared, id.to_owned())
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        crate::state::lock(&self.0.active).remove(&self.1);
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle_one(job: DepositJob, shared: &Arc<Shared>) -> Result<(), BoxDynError> {
    let guard = shared.producer_lock(&job.producer);
    let _g = guard.lock().await;
    let (sh, id) = (shared.clone(), job.id.clone());
    // Loaded fresh and the run counted in one trip: the count must be on
    // disk before anything can crash.
    let loaded = off_runtime(move || -> std::io::Result<_> {
        match sh.spool.load_with_outcome(&id)? {
            Some((mut e, o)) => {
                sh.spool.begin_attempt(&mut e)?;
                Ok(Some((e, o)))
            }
            None => Ok(None),
        }
    })
    .await
    .and_then(|r| r);
    let cfg = shared.config();
    match loaded {
        Ok(Some((e, None))) if e.attempts > cfg.workers.max_attempts => give_up(shared, e).await,
        Ok(Some((e, None))) => run_one(shared, e).await,
        Ok(Some((e, Some(o)))) => finalize(shared, &e, &o).await,
        // Already finished (a duplicate or re-queued orphan): nothing to do.
        Ok(None) => {}
        Err(err) => record_fault(shared, &job, &err).await,
    }
    Ok(())
}

/// The spool record cannot be read or written: a host fault, whose count
/// the record cannot take, so it is kept in memory. Retried with backoff;
/// after `workers.max_attempts` the deposit ends (FAILURE IO_ERROR, its
/// archive to `rejected/` if it can go) so that the producer's next
/// deposit goes on. Running out of descriptors is not counted.
async fn record_fault(shared: &Arc<Shared>, job: &DepositJob, err: &std::io::Error) {
    let max = shared.config().workers.max_attempts;
    let n = if descriptors_exhausted(err) {
        host_fault(shared, &job.id)
    } else {
        let mut faults = crate::state::lock(&shared.record_faults);
        let n = faults.entry(job.id.clone()).or_default();
        *n += 1;
        *n
    };
    let counted = crate::state::lock(&shared.record_faults).get(&job.id).copied().unwrap_or(0);
    let entry = if counted >= max && !descriptors_exhausted(err) {
        let known = crate::state::lock(&shared.index)
            .get(&job.producer)
            .and_then(|m| m.values().find(|e| e.id == job.id).cloned());
        match known {
            Some(e) => Some(e),
            // No index here (`--role worker`): what the spool's names tell.
            None => {
                let (sh, id) = (shared.clone(), job.id.clone());
                off_runtime(move || sh.spool.entry_without_record(&id)).await.and_then(|r| r).ok()
            }
        }
    } else {
        None
    };
    match entry {
        Some(entry) => abandon(shared, entry, err).await,
        _ => {
            let wait = backoff(n);
            warn!(deposit = %job.id, producer = %job.producer, error = %err, tries = counted, retry_in_ms = wait.as_millis() as u64,
                "cannot read or update the spool record; will retry");
            // In memory: the record could not take it.
            crate::state::lock(&shared.retry_at).insert(job.id.clone(), Instant::now() + wait);
            shared.requeue(&job.producer, &job.id);
        }
    }
}

/// A deposit whose spool record failed `workers.max_attempts` times: it
/// ends as FAILURE IO_ERROR. The outcome goes into the record if it can;
/// else the archive goes to `rejected/` with its report, if it can, and
/// whatever stays in the spool is the operator's (logged at ERROR, no
/// longer scheduled by this process).
async fn abandon(shared: &Arc<Shared>, entry: Entry, err: &std::io::Error) {
    let max = shared.config().workers.max_attempts;
    let e = Error::io(
        Stage::Unpack,
        format!("the deposit's spool record could not be read or written {max} times (workers.max_attempts)"),
        std::io::Error::new(err.kind(), err.to_string()),
    );
    let outcome = failure(report_base(&entry, &jobs::deposit::now_rfc3339()), &e);
    let (sh, en, o) = (shared.clone(), entry.clone(), outcome.clone());
    if let Ok(Ok(())) = off_runtime(move || sh.spool.set_outcome(&en, &o)).await {
        crate::state::lock(&shared.record_faults).remove(&entry.id);
        finalize(shared, &entry, &outcome).await;
        return;
    }
    let (sh, c, en, o) = (shared.clone(), shared.config(), entry.clone(), outcome.clone());
    let rotated = off_runtime(move || rotate_entry(&sh, &c, &en, &o))
        .await
        .unwrap_or_else(|e| Err(Error::io(Stage::Rotate, "rotation thread", e)));
    crate::state::lock(&shared.abandoned).insert(entry.id.clone());
    crate::state::lock(&shared.record_faults).remove(&entry.id);
    error!(
        deposit = %entry.id, producer = %entry.producer, error = %err, rotated = rotated.is_ok(),
        spool = %shared.spool.root.display(),
        "the spool record failed {max} times: the deposit ends as FAILURE; what is left of it in the spool is the operator's"
    );
    if let Ok(true) = shared.status.terminal(&entry, &outcome, &[]).await {
        tell(shared, &shared.config(), &entry, &outcome);
    }
    let (sh, en, gone) = (shared.clone(), entry.clone(), rotated.is_ok());
    let _ = off_runtime(move || {
        // Aside, so that no scheduler (another process, the next start)
        // takes the deposit for one still held.
        if let Err(e) = sh.spool.set_aside(&en.id) {
            warn!(deposit = %en.id, error = %e, "cannot move the broken spool record aside");
        }
        if gone {
            let _ = sh.spool.remove(&en);
        }
    })
    .await;
    shared.done(&entry, true);
}

/// Out of file descriptors (EMFILE, ENFILE): the host's state at that
/// moment, never the deposit's.
pub fn descriptors_exhausted(e: &std::io::Error) -> bool {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<std::io::Error>());
    [Some(e), inner].into_iter().flatten().any(|e| matches!(e.raw_os_error(), Some(23 | 24)))
}

fn out_of_descriptors(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if descriptors_exhausted(source))
}

/// One more host fault of this deposit (for its backoff); never an attempt.
fn host_fault(shared: &Shared, id: &str) -> u32 {
    let mut faults = crate::state::lock(&shared.host_faults);
    let n = faults.entry(id.to_owned()).or_default();
    *n = n.saturating_add(1);
    *n
}

/// The run `Spool::begin_attempt` counted, taken back: the record may
/// refuse a write while descriptors are short, so a few tries.
fn uncount(shared: &Shared, e: &mut Entry) {
    for _ in 0..10 {
        match shared.spool.interrupted(e) {
            Ok(()) => return,
            Err(err) if descriptors_exhausted(&err) => std::thread::sleep(Duration::from_millis(200)),
            Err(err) => {
                warn!(deposit = %e.id, error = %err, "cannot take back the attempt in the spool record");
                return;
            }
        }
    }
    warn!(deposit = %e.id, "still out of descriptors: the attempt stays counted");
}

/// Exponential backoff with jitter (×0.5 to ×1.5): deposits that failed
/// together (a full disk) must not all come back at the same instant.
pub fn backoff(attempt: u32) -> Duration {
    let base = 2u64.saturating_pow(attempt.clamp(1, 8)) * 1000;
    let mut r = [0u8; 2];
    let jitter = if getrandom::fill(&mut r).is_ok() { u16::from_le_bytes(r) as u64 % 1000 } else { 500 };
    Duration::from_millis(base / 2 + base * jitter / 1000)
}

/// Every attempt begun and none finished: the daemon was killed during
/// each (out of memory, a crash). The deposit ends so that the producer's
/// next one goes on; the operator has the log.
async fn give_up(shared: &Arc<Shared>, entry: Entry) {
    let n = entry.attempts.saturating_sub(1);
    let err = Error::io(
        Stage::Unpack,
        format!(
            "{n} attempts were started and none finished (the daemon stopped or was killed during each; out of memory?); workers.max_attempts is {}",
            shared.config().workers.max_attempts
        ),
        std::io::Error::other("gave up"),
    );
    error!(deposit = %entry.id, producer = %entry.producer, attempts = n, "giving up: no attempt finished");
    let outcome = failure(report_base(&entry, &jobs::deposit::now_rfc3339()), &err);
    let (sh, en, o) = (shared.clone(), entry.clone(), outcome.clone());
    match off_runtime(move || sh.spool.set_outcome(&en, &o)).await.and_then(|r| r) {
        Ok(()) => finalize(shared, &entry, &outcome).await,
        Err(err) => {
            warn!(deposit = %entry.id, error = %err, "cannot record the outcome; the deposit will run again");
            shared.later(&entry, backoff(entry.attempts)).await;
        }
    }
}

async fn run_one(shared: &Arc<Shared>, entry: Entry) {
    let _listed = InProgress::new(shared, &entry);
    let cfg = shared.config();
    let started = jobs::deposit::now_rfc3339();
    let attempts = entry.attempts.max(1);
    let fields = [("started", started.clone()), ("stage", "unpack".into()), ("attempts", attempts.to_string())];
    // Redis away, or showing an end the spool does not know of yet: the
    // spool decides, so run it either way.
    let _ = shared.status.start(&entry, &fields).await;
    info!(deposit = %entry.id, producer = %entry.producer, stage = "unpack", state = PROGRESS, attempt = attempts, "started");
    // Polling has the settle rule alone: a writer pausing longer than
    // settle_ms has its file claimed and given back at each pause. Bounded.
    let gave_back = crate::state::lock(&shared.give_backs).get(&give_back_key(&entry)).copied().unwrap_or(0);
    let as_is = cfg.watch.poll_ms > 0 && gave_back >= cfg.watch.max_give_backs;
    if as_is {
        warn!(deposit = %entry.id, producer = %entry.producer, file = %entry.name, given_back = gave_back,
            "still changing after each of its claims (watch.max_give_backs): judged as it is");
    }

    let live = Arc::new(Live {
        stage: AtomicU8::new(0),
        bytes: Arc::default(),
        id: entry.id.clone(),
        entry: entry.clone(),
        changed: AtomicBool::new(false),
        as_is,
        last_look: Mutex::new(Instant::now()),
        total: AtomicU64::new(0),
        files: AtomicU64::new(0),
        shared: shared.clone(),
        since: Mutex::new(Instant::now()),
    });
    let ticker = {
        let (live, status, id) = (live.clone(), shared.status.clone(), entry.id.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = status.progress(&id, &live.fields()).await;
            }
        })
    };
    let settings = cfg.settings_for(&entry.producer);
    let archive = shared.spool.archive(&entry);
    let base = report_base(&entry, &started);
    let retry = attempts < cfg.workers.max_attempts;
    let (sh, c, e, l) = (shared.clone(), cfg.clone(), entry.clone(), live.clone());
    let t0 = Instant::now();
    // Pipeline, outcome record and rotation in one trip to the blocking
    // pool: each trip is a thread hand-over both ways (measured: futex
    // wake-ups were 4% of the daemon's CPU with one trip per step).
    let end = off_runtime(move || {
        // A claim cut short may name a sidecar that never came in.
        let sidecar = sh.spool.sidecar(&e).filter(|p| p.exists());
        let job = Job {
            id: &e.id,
            producer: &e.producer,
            archive: &archive,
            name: &e.name,
            sidecar: sidecar.as_deref(),
            settings: &settings,
        };
        if !as_is && sh.spool.changed_since_claim(&e).unwrap_or(false) {
            return End::Changed;
        }
        // custody: a name the claim could not store fails at once (NAME_INVALID), unrun.
        let result = match &e.invalid_name {
            Some(why) => Err(Error::reject(jobs::Code::NameInvalid, Stage::Unpack, None, why.clone())),
            None => crate::target::publish(&job, &c, &*l),
        };
        // Still written after the claim (the writer kept its descriptor
        // across our rename): what was read is not the upload. A success
        // stands (every byte published was verified as read); anything
        // else is not a verdict on the upload.
        let changed = !as_is
            && (l.changed.load(Ordering::Relaxed)
                || (result.is_err() && sh.spool.changed_since_claim(&e).unwrap_or(false)));
        if changed && result.is_err() {
            return End::Changed;
        }
        // The producer is told why a file that kept changing was judged.
        let mut result = result;
        if as_is && let Err(Error::Rejected(r)) = &mut result {
            r.message = format!(
                "{} (the file kept changing after {gave_back} claims: judged as it was read; upload it in one go, or send its .md5 sidecar when done)",
                r.message
            );
        }
        let outcome = match result {
            Err(Error::Cancelled) => return End::Cancelled,
            // Out of descriptors: the host's state, never a verdict, even
            // with no attempt left (it is not counted, see below).
            Err(err) if err.is_transient() && (retry || out_of_descriptors(&err)) => return End::Retry(err),
            Ok(p) => {
                sh.pruned.store(true, Ordering::Relaxed);
                // Accepted all the same (a bag's RFC "SHOULD"s): in the
                // report, and said to the operator.
                for w in &p.warnings {
                    info!(deposit = %e.id, producer = %e.producer, "accepted with a warning: {w}");
                }
                success(base, &p)
            }
            Err(err) => failure(base, &err),
        };
        let elapsed = t0.elapsed();
        if let Err(err) = sh.spool.set_outcome(&e, &outcome) {
            return End::Unrecorded(err);
        }
        let t1 = Instant::now();
        let rotated = rotate_entry(&sh, &c, &e, &outcome);
        End::Recorded { outcome: Box::new(outcome), elapsed, rotated, rotation: t1.elapsed() }
    })
    .await
    .unwrap_or_else(|err| End::Retry(Error::io(Stage::Unpack, "pipeline thread", err)));
    ticker.abort();
    shared.space.release(&entry.id);
    live.lap(live.stage.load(Ordering::Relaxed));
    // The last stage and byte counts: with the terminal state when there
    // is one (one round trip less per deposit), else on their own.
    let last = live.fields();
    if !matches!(end, End::Recorded { rotated: Ok(()), .. }) {
        let _ = shared.status.progress(&entry.id, &last).await;
    }

    match end {
        End::Changed => {
            let (sh, en) = (shared.clone(), entry.clone());
            let back = off_runtime(move || {
                let what = sh.spool.change_since_claim(&en).ok().flatten().unwrap_or_default();
                sh.spool.give_back_changed(&en).map(|()| what)
            });
            match back.await.and_then(|r| r) {
                Ok(what) => {
                    {
                        let mut counts = crate::state::lock(&shared.give_backs);
                        if counts.len() >= MAX_GIVE_BACK_NAMES {
                            counts.clear();
                        }
                        *counts.entry(give_back_key(&entry)).or_default() += 1;
                    }
                    info!(deposit = %entry.id, producer = %entry.producer, file = %entry.name, change = %what,
                        "still being written after its claim: not judged, given back to new/ to wait for its writer");
                    let _ = shared.status.forget(&entry).await;
                    shared.done(&entry, true);
                }
                Err(err) => {
                    warn!(deposit = %entry.id, error = %err, "cannot give back a deposit that changed after its claim; will retry");
                    shared.later(&entry, backoff(attempts)).await;
                }
            }
        }
        End::Cancelled if live.changed.load(Ordering::Relaxed) => {
            // Stopped because it changed (not by a shutdown): as above,
            // on the next run, which finds it changed before judging.
            let (sh, mut en) = (shared.clone(), entry.clone());
            let _ = off_runtime(move || sh.spool.interrupted(&mut en)).await;
            shared.done(&entry, false);
        }
        End::Cancelled => {
            // Shutdown interrupted it; staging is gone, the deposit stays
            // in the spool and runs again at the next start.
            info!(deposit = %entry.id, producer = %entry.producer, "interrupted by shutdown; resumes at the next start");
            let (sh, mut en) = (shared.clone(), entry.clone());
            let _ = off_runtime(move || sh.spool.interrupted(&mut en)).await;
            let stage = live.fields().first().map(|(_, s)| s.clone()).unwrap_or_default();
            let _ = shared.status.set(&entry, status::WAITING, &interrupted_fields(&stage)).await;
        }
        End::Retry(e) if out_of_descriptors(&e) => {
            // The host ran out of descriptors (a flood of connections,
            // another process): not this deposit's attempt. The run is
            // taken back and the deposit waits, longer each time.
            let n = host_fault(shared, &entry.id);
            let wait = backoff(n);
            warn!(deposit = %entry.id, producer = %entry.producer, error = %e, retry_in_ms = wait.as_millis() as u64,
                "out of file descriptors: not counted as an attempt; will retry");
            let (sh, mut en) = (shared.clone(), entry.clone());
            let _ = off_runtime(move || uncount(&sh, &mut en)).await;
            let _ = shared
                .status
                .set(&entry, status::WAITING, &[("error_code", e.code().as_str().into()), ("error", e.message())])
                .await;
            shared.later(&entry, wait).await;
        }
        End::Retry(e) if !retry => {
            // Only a pipeline thread that panicked comes back here with no
            // attempt left: it fails like any transient fault past
            // workers.max_attempts.
            let outcome = failure(report_base(&entry, &started), &e);
            let (sh, en, o) = (shared.clone(), entry.clone(), outcome.clone());
            match off_runtime(move || sh.spool.set_outcome(&en, &o)).await.and_then(|r| r) {
                Ok(()) => finalize(shared, &entry, &outcome).await,
                Err(err) => {
                    warn!(deposit = %entry.id, error = %err, "cannot record the outcome; the deposit will run again");
                    shared.later(&entry, backoff(attempts)).await;
                }
            }
        }
        End::Retry(e) => {
            // Not the producer's fault: back off, keep the deposit, try again.
            if e.code() == jobs::Code::ValidatorFailed {
                shared.metrics.validator_fault(&entry.producer);
            }
            let wait = backoff(attempts);
            error!(deposit = %entry.id, producer = %entry.producer, error = %e, attempt = attempts, retry_in_ms = wait.as_millis() as u64, "transient failure");
            let _ = shared
                .status
                .set(&entry, status::WAITING, &[("error_code", e.code().as_str().into()), ("error", e.message())])
                .await;
            shared.later(&entry, wait).await;
        }
        End::Unrecorded(e) => {
            warn!(deposit = %entry.id, error = %e, "cannot record the outcome; the deposit will run again");
            shared.later(&entry, backoff(attempts)).await;
        }
        End::Recorded { outcome, elapsed, rotated, rotation } => {
            info!(deposit = %entry.id, producer = %entry.producer, elapsed_ms = elapsed.as_millis() as u64, "pipeline done");
            if let Err(e) = rotated {
                rotation_failed(shared, entry, &outcome, &e, &last).await;
                return;
            }
            shared.metrics.stage(Stage::Rotate.as_str(), rotation);
            record(shared, &entry, &outcome, &last).await;
        }
    }
}

/// What a deposit that shutdown interrupted shows in its hash: WAITING,
/// and why, so that status never shows work that is not happening.
pub fn interrupted_fields(stage: &str) -> [(&'static str, String); 2] {
    let during = if stage.is_empty() { String::new() } else { format!(" during {stage}") };
    [("stage", String::new()), ("error", format!("interrupted by shutdown{during}; runs again at the next start"))]
}

/// A deposit's run, listed in `Shared::in_progress` while it lasts.
struct InProgress<'a>(&'a Shared, String);

impl<'a> InProgress<'a> {
    fn new(shared: &'a Shared, e: &Entry) -> Self {
        crate::state::lock(&shared.in_progress).insert(e.id.clone(), e.clone());
        InProgress(shared, e.id.clone())
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        crate::state::lock(&self.0.in_progress).remove(&self.1);
    }
}

/// Uploads whose give-backs are counted at once, at most (a producer
/// making fresh names forever must not grow the daemon).
const MAX_GIVE_BACK_NAMES: usize = 10_000;

/// An upload as its give-backs are counted: its producer and name (each
/// claim gives it a new deposit id).
fn give_back_key(e: &Entry) -> (String, String) {
    (e.producer.clone(), e.name.clone())
}

/// How a run of the pipeline ended, as the blocking side saw it.
enum End {
    /// Shutdown: nothing recorded, the deposit runs again at the next start.
    Cancelled,
    /// The archive was still being written after its claim: not judged,
    /// given back to `new/`.
    Changed,
    /// A transient failure with attempts left, or a pipeline thread that
    /// panicked: nothing recorded.
    Retry(Error),
    /// The outcome could not be written to the spool.
    Unrecorded(std::io::Error),
    /// The outcome is in the spool; rotation was tried.
    Recorded { outcome: Box<Outcome>, elapsed: Duration, rotated: Result<(), Error>, rotation: Duration },
}

fn report_base(entry: &Entry, started: &str) -> ReportBase {
    ReportBase {
        deposit: entry.id.clone(),
        producer: entry.producer.clone(),
        archive: entry.name.clone(),
        started: started.to_owned(),
    }
}

fn success(base: ReportBase, p: &jobs::publish::Published) -> Outcome {
    let release = p.release.display().to_string();
    let current =
        p.superseded_by.as_ref().and_then(|newer| p.release.parent().map(|r| r.join(newer).display().to_string()));
    let report = Report::success(base, p.file_count, p.total_bytes, Some(release.clone())).warned(&p.warnings);
    Outcome {
        state: SUCCESS.into(),
        report: serde_json::to_value(&report).unwrap_or_default(),
        error_code: None,
        error: None,
        release: Some(release),
        current,
        files: Some(p.file_count),
        bytes: Some(p.total_bytes),
        finished: report.finished.clone(),
    }
}

fn failure(base: ReportBase, e: &Error) -> Outcome {
    let report = Report::failure(base, e);
    Outcome {
        state: FAILURE.into(),
        report: serde_json::to_value(&report).unwrap_or_default(),
        error_code: Some(e.code().as_str().into()),
        error: Some(e.message()),
        release: None,
        current: None,
        files: None,
        bytes: None,
        finished: report.finished.clone(),
    }
}

/// Rotate (if not done yet), then record: for an outcome found in the spool
/// (a crash, or a job run twice). Each part is skipped when already done,
/// so a crash in between is mended by running this again.
pub async fn finalize(shared: &Arc<Shared>, entry: &Entry, o: &Outcome) {
    let cfg = shared.config();
    let t0 = Instant::now();
    // Rotation moves files and fsyncs folders: off the async workers.
    let (sh, c, e, o2) = (shared.clone(), cfg.clone(), entry.clone(), o.clone());
    let rotated = off_runtime(move || rotate_entry(&sh, &c, &e, &o2))
        .await
        .unwrap_or_else(|e| Err(Error::io(Stage::Rotate, "rotation thread", e)));
    if let Err(e) = rotated {
        rotation_failed(shared, entry.clone(), o, &e, &[]).await;
        return;
    }
    shared.metrics.stage(Stage::Rotate.as_str(), t0.elapsed());
    record(shared, entry, o, &[]).await;
}

/// The outcome is recorded but the files cannot leave the spool (the
/// host's fault: `previous/` unwritable or not a folder, a full disk).
/// Retried with backoff; after `workers.max_attempts` the deposit is parked
/// in the spool for the operator and its terminal state recorded, so that
/// the producer's next deposits go on.
async fn rotation_failed(shared: &Arc<Shared>, entry: Entry, o: &Outcome, e: &Error, last: &[(&str, String)]) {
    let max = shared.config().workers.max_attempts;
    if out_of_descriptors(e) {
        // The host's moment, not the deposit's: not counted (see run_one).
        let wait = backoff(host_fault(shared, &entry.id));
        warn!(deposit = %entry.id, producer = %entry.producer, error = %e, retry_in_ms = wait.as_millis() as u64,
            "rotation: out of file descriptors; not counted as an attempt; will retry");
        let (sh, mut en) = (shared.clone(), entry.clone());
        let _ = off_runtime(move || uncount(&sh, &mut en)).await;
        shared.later(&entry, wait).await;
        return;
    }
    if entry.attempts < max {
        let wait = backoff(entry.attempts);
        error!(deposit = %entry.id, producer = %entry.producer, error = %e, attempt = entry.attempts, retry_in_ms = wait.as_millis() as u64, "rotation failed; will retry");
        shared.later(&entry, wait).await;
        return;
    }
    let (sh, mut en) = (shared.clone(), entry.clone());
    if let Err(err) = off_runtime(move || sh.spool.park(&mut en)).await.and_then(|r| r) {
        error!(deposit = %entry.id, error = %err, "rotation failed and the deposit cannot be parked; will retry");
        shared.later(&entry, backoff(entry.attempts)).await;
        return;
    }
    error!(
        deposit = %entry.id, producer = %entry.producer, error = %e, attempts = entry.attempts,
        spool = %shared.spool.root.display(),
        "rotation failed {max} times: the deposit is parked in the spool (its state is recorded); move its files by hand"
    );
    if let Ok(true) = shared.status.terminal(&entry, o, last).await {
        tell(shared, &shared.config(), &entry, o);
    }
    shared.done(&entry, true);
}

/// The terminal state in Redis (and the notify hook, once), then the
/// spool entry forgotten. `last`: the job's final progress fields.
async fn record(shared: &Arc<Shared>, entry: &Entry, o: &Outcome, last: &[(&str, String)]) {
    crate::state::lock(&shared.give_backs).remove(&give_back_key(entry));
    let left = match shared.status.terminal(entry, o, last).await {
        Ok(first) => {
            if first {
                tell(shared, &shared.config(), entry, o);
            }
            // A rejection is worth a look (WARN); a host fault that used up
            // its attempts needs the operator (ERROR).
            match (o.state.as_str(), o.error_code.as_deref().unwrap_or("")) {
                (FAILURE, c @ ("IO_ERROR" | "NO_SPACE" | "VALIDATOR_FAILED")) => {
                    error!(deposit = %entry.id, producer = %entry.producer, state = %o.state, error_code = %c, "finished")
                }
                (FAILURE, c) => {
                    warn!(deposit = %entry.id, producer = %entry.producer, state = %o.state, error_code = %c, "finished")
                }
                (_, c) => {
                    info!(deposit = %entry.id, producer = %entry.producer, state = %o.state, error_code = %c, "finished")
                }
            }
            let (sh, e) = (shared.clone(), entry.clone());
            let removed = off_runtime(move || sh.spool.remove(&e)).await.and_then(|r| r);
            if let Err(e) = &removed {
                warn!(deposit = %entry.id, error = %e, "cannot remove the spool entry");
            }
            removed.is_ok()
        }
        Err(e) => {
            warn!(deposit = %entry.id, error = %e, "cannot record the final state yet; kept in the spool");
            false
        }
    };
    shared.done(entry, left);
}

/// The deposit out of the spool: to `previous/`, or to `rejected/` with
/// its reports. Nothing to do when an earlier run got that far.
fn rotate_entry(shared: &Shared, cfg: &crate::config::Config, entry: &Entry, o: &Outcome) -> Result<(), Error> {
    let archive = shared.spool.archive(entry);
    let pdir = cfg.drop_root.join(&entry.producer);
    if !archive.exists() {
        // Rotated, but a crash may have left the sidecar behind.
        return match shared.spool.sidecar(entry).filter(|p| std::fs::symlink_metadata(p).is_ok()) {
            Some(side) => {
                let id = (o.state != SUCCESS).then_some(entry.id.as_str());
                rotate::finish_sidecar(&pdir, &entry.name, &side, id)
            }
            None => Ok(()),
        };
    }
    let sidecar: Option<PathBuf> = shared.spool.sidecar(entry).filter(|p| p.exists()).or_else(|| {
        // Moved into previous/ by an attempt a crash cut short (the sidecar
        // goes first): it stays, it is this deposit's.
        let there = pdir.join(rotate::PREVIOUS).join(format!("{}.md5", entry.name));
        (entry.sidecar && o.state == SUCCESS && std::fs::symlink_metadata(&there).is_ok_and(|m| m.is_file()))
            .then_some(there)
    });
    let d = Deposited { archive: &archive, sidecar: sidecar.as_deref(), name: &entry.name };
    match serde_json::from_value::<ReportView>(o.report.clone()) {
        _ if o.state == SUCCESS => rotate::to_previous(&pdir, &d).map(|_| ()),
        Ok(v) => rotate::to_rejected(&pdir, &d, &v.into_report()).map(|_| ()),
        Err(e) => Err(Error::io(Stage::Rotate, "outcome report", std::io::Error::other(e))),
    }
}

/// Blocking file work on tokio's blocking pool, never on the threads that
/// drive the daemon's I/O. A blocking task that panicked or was cancelled
/// at shutdown reads as an I/O error: the spool keeps the deposit.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| std::io::Error::other(e.to_string()))
}

/// Count the outcome and run `notify.command`, once per terminal state.
fn tell(shared: &Shared, cfg: &crate::config::Config, entry: &Entry, o: &Outcome) {
    shared.metrics.deposit_took(entry.claimed_ns);
    if o.error_code.as_deref() == Some(jobs::Code::ValidatorFailed.as_str()) {
        shared.metrics.validator_fault(&entry.producer);
    }
    shared.metrics.finished(
        &entry.producer,
        &o.state,
        o.error_code.as_deref(),
        o.files.unwrap_or(0),
        o.bytes.unwrap_or(0),
    );
    let report = if o.state == FAILURE {
        rotate::report_path(&cfg.drop_root.join(&entry.producer), &entry.id).display().to_string()
    } else {
        String::new()
    };
    let ev = hook::Event {
        deposit: entry.id.clone(),
        producer: entry.producer.clone(),
        state: o.state.clone(),
        file: entry.name.clone(),
        error_code: o.error_code.clone().unwrap_or_default(),
        error: o.error.clone().unwrap_or_default(),
        report,
        release: o.release.clone().unwrap_or_default(),
    };
    hook::spawn(&cfg.notify, ev, shared.metrics.clone());
}

/// The report as stored in the spool's outcome, back into the type rotate writes.
#[derive(serde::Deserialize)]
struct ReportView {
    deposit: String,
    producer: String,
    archive: String,
    stage: Option<Stage>,
    code: Option<String>,
    message: Option<String>,
    entry: Option<String>,
    started: String,
    finished: String,
    #[serde(default)]
    output: Vec<String>,
}

impl ReportView {
    fn into_report(self) -> Report {
        let code = self.code.as_deref().and_then(jobs::Code::parse).map(jobs::Code::as_str);
        Report {
            deposit: self.deposit,
            producer: self.producer,
            archive: self.archive,
            accepted: false,
            state: FAILURE,
            stage: self.stage,
            code,
            message: self.message,
            entry: self.entry,
            started: self.started,
            finished: self.finished,
            file_count: None,
            total_bytes: None,
            release: None,
            warnings: Vec::new(),
            output: self.output,
        }
    }
}
