//! Noticing finished uploads. inotify (through `notify`) says that something
//! changed; a full scan at start, every few seconds, and after any watcher
//! error says what is there. A file is handed on once it has settled: size
//! and mtime unchanged for `watch.settle_ms`, or its `.md5` sidecar arrived
//! after it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Names that are never deposits: partial uploads, sidecars, hidden files.
pub fn ignored(name: &str) -> bool {
    name.starts_with('.')
        || [".part", ".filepart", ".tmp", ".md5", ".sha256", ".sha512"]
            .iter()
            .any(|s| name.to_ascii_lowercase().ends_with(s))
}

/// `<drop_root>/<P>/new/<name>` → (P, name), for producers this config
/// serves. The name is lossy when it is not UTF-8: such a file must still
/// be noticed (the claim fails it as NAME_INVALID; skipped here, it stayed
/// in `new/` forever), and the name is only used for its suffixes.
pub fn classify(drop_root: &Path, path: &Path, is_producer: &dyn Fn(&str) -> bool) -> Option<(String, String)> {
    let rel = path.strip_prefix(drop_root).ok()?;
    let mut c = rel.components();
    let p = c.next()?.as_os_str().to_str()?.to_owned();
    if c.next()?.as_os_str() != "new" {
        return None;
    }
    let name = c.next()?.as_os_str().to_string_lossy().into_owned();
    if c.next().is_some() || !is_producer(&p) {
        return None;
    }
    Some((p, name))
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    size: u64,
    mtime: SystemTime,
    since: Instant,
}

/// The inode's change time (a rename, a write, a chmod).
pub fn changed_at(m: &fs::Metadata) -> SystemTime {
    use std::os::unix::fs::MetadataExt;
    let secs = u64::try_from(m.ctime()).unwrap_or(0);
    let nanos = u32::try_from(m.ctime_nsec()).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
}

/// Files one producer may have marked as being written, as inotify tells
/// (`watch.max_open_marks`'s default): past it (a producer creating files
/// without end), that producer's further files have the settle rule alone.
/// Per producer: one producer at its bound must not switch the others'
/// stalled uploads to the settle rule.
const MAX_WRITING: usize = 8192;

/// The open/closed marks, counted per folder (a producer's `new/`).
#[derive(Default)]
struct Marks {
    map: HashMap<PathBuf, Writer>,
    per_dir: HashMap<PathBuf, usize>,
}

fn dir_of(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new(""))
}

fn uncount(per_dir: &mut HashMap<PathBuf, usize>, p: &Path) {
    let dir = dir_of(p);
    if let Some(n) = per_dir.get_mut(dir) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            per_dir.remove(dir);
        }
    }
}

impl Marks {
    fn get(&self, p: &Path) -> Option<&Writer> {
        self.map.get(p)
    }
    fn contains_key(&self, p: &Path) -> bool {
        self.map.contains_key(p)
    }
    fn insert(&mut self, p: PathBuf, w: Writer) {
        let dir = dir_of(&p).to_path_buf();
        if self.map.insert(p, w).is_none() {
            *self.per_dir.entry(dir).or_default() += 1;
        }
    }
    fn remove(&mut self, p: &Path) {
        if self.map.remove(p).is_some() {
            uncount(&mut self.per_dir, p);
        }
    }
    fn retain(&mut self, mut keep: impl FnMut(&Path, &Writer) -> bool) {
        let Marks { map, per_dir } = self;
        map.retain(|p, w| {
            let k = keep(p, w);
            if !k {
                uncount(per_dir, p);
            }
            k
        });
    }
    /// Marks of files in `dir`.
    fn in_dir(&self, dir: &Path) -> usize {
        self.per_dir.get(dir).copied().unwrap_or(0)
    }
}

/// The settle rule, kept apart from the I/O so it reads like the SPEC.
/// What it has seen is kept per folder (a producer's `new/`), so that the
/// claim pass asks one producer's files in upload order without a stat of
/// each (see [`Settler::ordered`]).
#[derive(Default)]
pub struct Settler {
    settle: Duration,
    sidecar_marks_done: bool,
    seen: HashMap<PathBuf, HashMap<OsString, Seen>>,
    /// Non-regular files already warned about, so that a FIFO left in a
    /// drop folder is not reported at every pass. Bounded: a producer who
    /// makes fresh FIFOs forever must not grow a daemon that runs for
    /// months; past the bound a warning may repeat, nothing worse.
    warned: HashSet<PathBuf>,
    /// A sidecar arrived since the last claim pass: its archive may be
    /// done before its settle time.
    poked: bool,
    /// Per `new/`: when it was listed, and the candidates not taken yet,
    /// oldest first (see [`Settler::ordered`]).
    listing: HashMap<PathBuf, (Instant, VecDeque<PathBuf>)>,
    /// Files a writer has open (created or written since their last
    /// close-after-write): never settled, however long the writer pauses.
    /// Only inotify fills it; a rescan after a lost event empties it (the
    /// settle rule then applies).
    writing: Marks,
    /// Sidecars seen without their archive, for the next scan.
    lone_sidecars: HashSet<PathBuf>,
    /// When events were last lost: an open mark older than that may have
    /// missed its close.
    lost_at: Option<Instant>,
    /// See [`Settler::bound_marks`]; 0: the default.
    max_marks: usize,
}

/// An open mark that may have missed its close (events were lost) holds its
/// file until the file has been unchanged this long.
const SUSPECT_QUIET: Duration = Duration::from_secs(3600);

/// What inotify said of a file's writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// Created or written, not closed since.
    Open(Instant),
    /// Closed after writing at this instant: done once quiet for settle_ms
    /// from here (an mtime set back by `sftp -p` does not shorten it, so a
    /// sidecar sent right after still pairs).
    Closed(Instant),
}

/// A sidecar with no close seen marks its archive done only once unchanged
/// this long (see [`Settler::judge`]).
const SIDECAR_QUIET: Duration = Duration::from_millis(50);

/// How long a listing of a busy `new/` serves claim batches.
const LISTING_TTL: Duration = Duration::from_secs(1);

const MAX_WARNED: usize = 4096;

fn split(path: &Path) -> Option<(&Path, &OsStr)> {
    Some((path.parent()?, path.file_name()?))
}

impl Settler {
    pub fn new(settle: Duration, sidecar_marks_done: bool) -> Self {
        Settler { settle, sidecar_marks_done, ..Settler::default() }
    }

    pub fn reconfigure(&mut self, settle: Duration, sidecar_marks_done: bool) {
        self.settle = settle;
        self.sidecar_marks_done = sidecar_marks_done;
    }

    /// `watch.max_open_marks`: open marks one producer may hold.
    pub fn bound_marks(&mut self, n: usize) {
        self.max_marks = n;
    }

    fn max_marks(&self) -> usize {
        if self.max_marks == 0 { MAX_WRITING } else { self.max_marks }
    }

    fn insert(&mut self, path: &Path, seen: Seen) {
        if let Some((dir, name)) = split(path) {
            self.seen.entry(dir.to_path_buf()).or_default().insert(name.to_owned(), seen);
        }
    }

    fn get_mut(&mut self, path: &Path) -> Option<&mut Seen> {
        let (dir, name) = split(path)?;
        self.seen.get_mut(dir)?.get_mut(name)
    }

    pub fn knows(&self, path: &Path) -> bool {
        split(path).and_then(|(dir, name)| self.seen.get(dir)?.get(name)).is_some()
    }

    /// Look at one candidate now; true when it has settled.
    pub fn observe(&mut self, path: &Path, now: Instant) -> bool {
        self.judge(path, now).is_some_and(|(settled, _)| settled)
    }

    /// `observe`, also giving what the stat saw (None: not a regular file,
    /// or gone), so that a caller need not stat the file again.
    fn judge(&mut self, path: &Path, now: Instant) -> Option<(bool, Seen)> {
        // symlink_metadata: a link is never followed, a FIFO never opened.
        let Ok(meta) = fs::symlink_metadata(path) else {
            self.forget(path);
            return None;
        };
        // A second link means the inode is shared with a name elsewhere
        // (a producer could make depot publish and move a file it cannot
        // read); the claim refuses it too, this keeps it from being tried
        // at every pass.
        if meta.is_dir() {
            self.folder(path);
            return None;
        }
        let why = if !meta.file_type().is_file() {
            Some("not a regular file (link, FIFO, socket or device)")
        } else if meta.nlink() != 1 {
            Some("a file with more than one link (a hard link) is never claimed")
        } else {
            None
        };
        if let Some(why) = why {
            self.refuse(path, why);
            return None;
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        // When it was last written or renamed in: a file rsync -t renamed
        // in a moment ago carries its source's old mtime, and must still
        // wait settle_ms (its sidecar may follow).
        let arrived = mtime.max(changed_at(&meta));
        let seen = Seen { size: meta.len(), mtime, since: now };
        let [side, others @ ..] = sidecar_paths(path);
        // A mark from before lost events, on a file unchanged for
        // SUSPECT_QUIET: its close was probably lost; the mark goes.
        if let (Some(Writer::Open(t)), Some(lost)) = (self.writing.get(path).copied(), self.lost_at)
            && t <= lost
            && self.get_mut(path).is_some_and(|s| {
                s.size == seen.size && s.mtime == mtime && now.duration_since(s.since) >= SUSPECT_QUIET
            })
        {
            warn!(path = %path.display(), "no close seen for an hour after lost events: judged by the settle rule");
            self.writing.remove(path);
        }
        let open = |w: Option<&Writer>| matches!(w, Some(Writer::Open(_)));
        // A writer has it open (a stalled sftp session), or a sidecar of it
        // (.md5, .sha256, .sha512) is on its way: not done, whatever its
        // mtime or a sidecar says.
        if open(self.writing.get(path))
            || open(self.writing.get(&side))
            || others.iter().any(|o| open(self.writing.get(o)))
        {
            match self.get_mut(path) {
                Some(s) if s.size == seen.size && s.mtime == mtime => {}
                Some(s) => *s = seen,
                None => self.insert(path, seen),
            }
            return Some((false, seen));
        }
        let closed_at = match self.writing.get(path) {
            Some(Writer::Closed(t)) => Some(*t),
            _ => None,
        };
        if self.sidecar_marks_done {
            // Arrived (its ctime: a rename in keeps the source's mtime)
            // after the archive was last written or renamed in.
            if let Ok(sm) = fs::symlink_metadata(&side)
                && sm.file_type().is_file()
                && sm.len() > 0
                && changed_at(&sm) >= arrived
            {
                // Its writer's own events may not have been read yet (a
                // busy host): an open sidecar would mark its archive done
                // and be judged half-written. Trusted once closed, or once
                // unchanged for SIDECAR_QUIET (renamed in: no close comes).
                let closed = matches!(self.writing.get(&side), Some(Writer::Closed(_)));
                let quiet = SystemTime::now().duration_since(changed_at(&sm)).is_ok_and(|a| a >= SIDECAR_QUIET);
                if closed || quiet {
                    self.forget(path);
                    return Some((true, seen));
                }
                // Looked at again at the next pass, not at the settle time.
                self.poked = true;
            }
        }
        // Not written for settle_ms already (noticed late, or an rsync
        // rename that kept the source's mtime): settled, since the size
        // cannot change without the mtime changing.
        if let Some(t) = closed_at {
            if now.duration_since(t) >= self.settle
                && self.get_mut(path).is_some_and(|s| s.size == seen.size && s.mtime == mtime)
            {
                self.forget(path);
                return Some((true, seen));
            }
        } else if SystemTime::now().duration_since(arrived).is_ok_and(|age| age >= self.settle) {
            self.forget(path);
            return Some((true, seen));
        }
        let settle = self.settle;
        match self.get_mut(path) {
            Some(s) if s.size == seen.size && s.mtime == mtime => {
                if now.duration_since(s.since) >= settle {
                    self.forget(path);
                    return Some((true, seen));
                }
            }
            Some(s) => *s = seen,
            None => self.insert(path, seen),
        }
        Some((false, seen))
    }

    /// Not to be claimed: warned about once (within the bound), forgotten.
    /// A folder in `new/` (what `rsync -r … host:new/` or sftp's `put -r`
    /// makes) is never a deposit: said once in the log and once to the
    /// producer, through a report in `rejected/`; the folder stays where
    /// it is, untouched (its upload may still be going on).
    fn folder(&mut self, path: &Path) {
        if self.warned.contains(path) {
            return;
        }
        self.refuse(path, "a folder: folders are not deposits (only zip files are); it stays in new/, untouched");
        match crate::sidecars::folder_report(path) {
            Ok(report) => {
                tracing::info!(path = %path.display(), report = %report.display(), "the producer is told so in a report")
            }
            Err(e) => warn!(path = %path.display(), error = %e, "cannot write the report about a folder in new/"),
        }
    }

    pub fn refuse(&mut self, path: &Path, why: &str) {
        if self.warned.len() >= MAX_WARNED {
            self.warned.clear();
        }
        if self.warned.insert(path.to_path_buf()) {
            warn!(path = %path.display(), "skipping: {why}");
        }
        self.forget(path);
    }

    /// Remember a path to look at; judged by `observe`. One settled at
    /// first sight stays listed until claimed.
    pub fn note(&mut self, path: &Path, now: Instant) {
        if !self.knows(path)
            && let Some((true, seen)) = self.judge(path, now)
        {
            self.insert(path, seen);
        }
    }

    /// A sidecar arrived for `path`: look at it at the next claim pass.
    pub fn poke(&mut self, path: &Path, now: Instant) {
        self.note(path, now);
        self.poked = true;
    }

    /// Could anything have settled by `now`? A claim pass lists the busy
    /// folders; while every upload is still inside its settle time (a burst
    /// just dropped, a slow sftp upload) there is nothing to list them for.
    pub fn due(&mut self, now: Instant) -> bool {
        let wall = SystemTime::now();
        let settle = self.settle;
        std::mem::take(&mut self.poked)
            || self.seen.values().flat_map(HashMap::values).any(|s| {
                now.duration_since(s.since) >= settle || wall.duration_since(s.mtime).is_ok_and(|a| a >= settle)
            })
    }

    /// The folders that hold candidates.
    pub fn folders(&self) -> Vec<PathBuf> {
        self.seen.iter().filter(|(_, files)| !files.is_empty()).map(|(d, _)| d.clone()).collect()
    }

    /// A writer created or wrote `path` (inotify): it is not done until
    /// closed. A sidecar's mark keeps its archive waiting too.
    pub fn written(&mut self, path: &Path, now: Instant) {
        if self.room_for(path, now) {
            self.writing.insert(path.to_path_buf(), Writer::Open(now));
        }
    }

    /// A new mark fits: the bound is the producer's own (its `new/`); at
    /// it, that folder's closed marks past their quiet time (they no
    /// longer change anything) go, in one sweep; an open mark is never
    /// dropped for another, and another producer's marks are never
    /// touched. When every mark of the folder is open, the new file has
    /// the settle rule alone.
    fn room_for(&mut self, path: &Path, now: Instant) -> bool {
        let dir = dir_of(path);
        if self.writing.in_dir(dir) < self.max_marks() || self.writing.contains_key(path) {
            return true;
        }
        let settle = self.settle;
        self.writing
            .retain(|p, w| dir_of(p) != dir || !matches!(w, Writer::Closed(t) if now.duration_since(*t) >= settle));
        self.writing.in_dir(dir) < self.max_marks()
    }

    /// Removed or renamed away: its marks go (a sidecar renamed while open
    /// would otherwise hold its archive for good).
    pub fn gone(&mut self, path: &Path) {
        self.writing.remove(path);
    }

    /// Closed after writing (IN_CLOSE_WRITE): the quiet period starts now.
    pub fn closed(&mut self, path: &Path, now: Instant) {
        if !self.room_for(path, now) {
            return;
        }
        self.writing.insert(path.to_path_buf(), Writer::Closed(now));
        if let Some(s) = self.get_mut(path) {
            s.since = now;
        }
    }

    /// Is a writer known to hold `path` open?
    pub fn is_open(&self, path: &Path) -> bool {
        matches!(self.writing.get(path), Some(Writer::Open(_)))
    }

    /// A sidecar whose archive is not in `new/` was touched: the next scan
    /// looks at it (late, or an orphan).
    pub fn sidecar_alone(&mut self, side: &Path) {
        if self.lone_sidecars.len() < MAX_WARNED {
            self.lone_sidecars.insert(side.to_path_buf());
        }
    }

    /// The sidecars [`Settler::sidecar_alone`] collected.
    pub fn take_lone_sidecars(&mut self) -> HashSet<PathBuf> {
        std::mem::take(&mut self.lone_sidecars)
    }

    /// Events were lost (inotify overflow, a watcher restart): what was
    /// known of writers is no longer known; the settle rule applies.
    pub fn lost_events(&mut self) {
        // A close may have been lost: closed marks are moot (the settle
        // rule applies), open ones are kept but suspect (see `judge`).
        self.writing.retain(|_, w| matches!(w, Writer::Open(_)));
        self.lost_at = Some(Instant::now());
    }

    pub fn forget(&mut self, path: &Path) {
        self.writing.remove(path);
        for side in sidecar_paths(path) {
            self.writing.remove(&side);
        }
        if let Some((dir, name)) = split(path)
            && let Some(files) = self.seen.get_mut(dir)
        {
            files.remove(name);
            if files.is_empty() {
                self.seen.remove(dir);
            }
        }
    }

    /// A producer's candidate files, oldest upload first: by mtime, then by
    /// name (file times are only as fine as the kernel's clock tick). The
    /// folder is listed, so that a file whose event was missed is not
    /// overtaken by a newer one; only files not seen before are stat'ed
    /// (the others sort by the mtime last seen: one that changed since is
    /// judged by `observe`, which stops the walk at it). A file gone from
    /// the folder is forgotten.
    pub fn ordered(&mut self, new_dir: &Path, now: Instant) -> VecDeque<PathBuf> {
        // A backlog is claimed a batch at a time: the listing is kept and
        // taken from, and made again once a second (missed events, files
        // that changed), not at every batch. Listing 100,000 files per
        // batch of 256 made a flood cost O(n²) and held the scheduler.
        if let Some((at, files)) = self.listing.get_mut(new_dir)
            && !files.is_empty()
            && now.duration_since(*at) < LISTING_TTL
        {
            return std::mem::take(files);
        }
        let files = self.list(new_dir, now);
        self.listing.insert(new_dir.to_path_buf(), (now, VecDeque::new()));
        files.into()
    }

    /// What a claim pass did not take of [`Settler::ordered`], for the next.
    pub fn keep_listing(&mut self, new_dir: &Path, rest: VecDeque<PathBuf>) {
        if rest.is_empty() {
            self.listing.remove(new_dir);
        } else if let Some((_, files)) = self.listing.get_mut(new_dir) {
            *files = rest;
        }
    }

    fn list(&mut self, new_dir: &Path, now: Instant) -> Vec<PathBuf> {
        let mut listed = HashSet::new();
        let mut files = Vec::new();
        for f in walkdir::WalkDir::new(new_dir).min_depth(1).max_depth(1).into_iter().flatten() {
            if ignored(&f.file_name().to_string_lossy()) {
                continue;
            }
            if f.file_type().is_dir() {
                self.folder(f.path());
                continue;
            }
            if !f.file_type().is_file() {
                continue;
            }
            let path = f.into_path();
            self.note(&path, now);
            let Some(mtime) = split(&path).and_then(|(d, n)| self.seen.get(d)?.get(n)).map(|s| s.mtime) else {
                continue;
            };
            if let Some(name) = path.file_name() {
                listed.insert(name.to_owned());
            }
            files.push((mtime, path));
        }
        if let Some(known) = self.seen.get_mut(new_dir) {
            known.retain(|name, _| listed.contains(name));
            if known.is_empty() {
                self.seen.remove(new_dir);
            }
        }
        files.sort();
        files.into_iter().map(|(_, p)| p).collect()
    }
}

/// Every candidate file under every producer's `new/`.
pub fn scan(drop_root: &Path, is_producer: &dyn Fn(&str) -> bool) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for p in walkdir::WalkDir::new(drop_root).min_depth(1).max_depth(1).into_iter().flatten() {
        let name = p.file_name().to_string_lossy().into_owned();
        if !p.file_type().is_dir() || !is_producer(&name) {
            continue;
        }
        let new = p.path().join("new");
        for f in walkdir::WalkDir::new(&new).min_depth(1).max_depth(1).into_iter().flatten() {
            let fname = f.file_name().to_string_lossy();
            if !ignored(&fname) {
                out.push((name.clone(), f.path().to_path_buf()));
            }
        }
    }
    out
}

/// `<archive>.md5`, `<archive>.sha256`, `<archive>.sha512`: the `.md5` first
/// (only it marks its archive done, SPEC "Settled").
fn sidecar_paths(archive: &Path) -> [PathBuf; 3] {
    ["md5", "sha256", "sha512"].map(|ext| {
        let mut p = archive.as_os_str().to_owned();
        p.push(".");
        p.push(ext);
        PathBuf::from(p)
    })
}

/// Every sidecar (`.md5`, `.sha256`, `.sha512`) in every producer's `new/`
/// (for the sidecar sweep).
pub fn sidecars(drop_root: &Path, is_producer: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in walkdir::WalkDir::new(drop_root).min_depth(1).max_depth(1).into_iter().flatten() {
        if !p.file_type().is_dir() || !is_producer(&p.file_name().to_string_lossy()) {
            continue;
        }
        for f in walkdir::WalkDir::new(p.path().join("new")).min_depth(1).max_depth(1).into_iter().flatten() {
            let n = f.file_name().to_string_lossy();
            if f.file_type().is_file()
                && !n.starts_with('.')
                && crate::sidecars::strip_sidecar_suffix(&n.to_ascii_lowercase()).is_some()
            {
                out.push(f.into_path());
            }
        }
    }
    out
}

/// Filesystem events, reduced to "look at this path" or "rescan".
#[derive(Debug)]
pub enum Hint {
    Path { path: PathBuf, created: bool, touch: Touch },
    Rescan,
}

/// What an event says about a writer (inotify only; polling says nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Created or written: a writer has it open.
    Write,
    /// Closed after writing (IN_CLOSE_WRITE).
    Close,
    /// Removed or renamed away: whatever was known of its writer goes.
    Gone,
    /// Anything else (a rename in, metadata).
    Other,
}

/// Start the notify watcher (inotify, or polling every `poll_ms` for
/// network filesystems). Events go to `tx`; errors ask for a rescan.
pub fn start(
    drop_root: &Path,
    poll_ms: u64,
    tx: mpsc::UnboundedSender<Hint>,
) -> notify::Result<Box<dyn notify::Watcher + Send>> {
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(ev) => {
            if ev.need_rescan() {
                let _ = tx.send(Hint::Rescan);
            }
            use notify::EventKind as K;
            use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
            // A write marks a writer; a create alone does not: a name made
            // by link() (OpenSSH's plain SSH_FXP_RENAME, WinSCP's default
            // after its .filepart) is never written nor closed, and would
            // wait for a close that never comes.
            let touch = match ev.kind {
                K::Modify(ModifyKind::Data(_) | ModifyKind::Any) => Touch::Write,
                K::Access(AccessKind::Close(AccessMode::Write)) => Touch::Close,
                // Opens and reads (our own scans open these folders) say
                // nothing new; the writes that follow a reopen do.
                K::Access(_) => return,
                K::Remove(_) | K::Modify(ModifyKind::Name(RenameMode::From)) => Touch::Gone,
                _ => Touch::Other,
            };
            let created = matches!(ev.kind, K::Create(_));
            for p in ev.paths {
                let _ = tx.send(Hint::Path { path: p, created, touch });
            }
        }
        Err(e) => {
            warn!(error = %e, "watcher error; rescanning");
            let _ = tx.send(Hint::Rescan);
        }
    };
    let mut w: Box<dyn notify::Watcher + Send> = if poll_ms > 0 {
        let cfg = notify::Config::default().with_poll_interval(Duration::from_millis(poll_ms));
        Box::new(notify::PollWatcher::new(handler, cfg)?)
    } else {
        Box::new(notify::RecommendedWatcher::new(handler, notify::Config::default())?)
    };
    // Not recursive: a recursive watch would also follow the spool,
    // previous/ and rejected/, adding and dropping an inotify watch for
    // every spool entry (measured: most of the daemon's system time under a
    // flood of small deposits). Producer folders and their new/ get watches
    // of their own, from [`watch_producers`].
    w.watch(drop_root, RecursiveMode::NonRecursive)?;
    debug!(root = %drop_root.display(), poll_ms, "watching");
    Ok(w)
}

/// Watch every producer folder (to see its `new/` appear) and every
/// `<P>/new/`; forget watches of folders that went away, so that a folder
/// made again is watched again. Run with each scan: cheap (a readdir of
/// drop_root and a stat per producer).
pub fn watch_producers(
    w: &mut dyn notify::Watcher,
    watched: &mut HashSet<PathBuf>,
    drop_root: &Path,
    is_producer: &dyn Fn(&str) -> bool,
) {
    watched.retain(|p| {
        let alive = p.is_dir();
        if !alive {
            let _ = w.unwatch(p);
        }
        alive
    });
    let Ok(rd) = fs::read_dir(drop_root) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // file_type does not follow symlinks: a linked producer folder is skipped.
        if !e.file_type().is_ok_and(|t| t.is_dir()) || !is_producer(&name) {
            continue;
        }
        for dir in [e.path(), e.path().join("new")] {
            if !watched.contains(&dir) && dir.is_dir() {
                match w.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        watched.insert(dir);
                    }
                    Err(err) => warn!(path = %dir.display(), error = %err, "cannot watch; the scan still sees it"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_rules() {
        for n in [
            ".x.zip.AbC123",
            "a.zip.part",
            "a.zip.filepart",
            "a.tmp",
            "a.zip.md5",
            "A.ZIP.MD5",
            "a.zip.sha256",
            "a.zip.SHA512",
        ] {
            assert!(ignored(n), "{n}");
        }
        assert!(!ignored("MSEC_THEIA.zip"));
    }

    #[test]
    fn classify_paths() {
        let root = Path::new("/d");
        let yes = |p: &str| p == "MSEC";
        assert_eq!(classify(root, Path::new("/d/MSEC/new/a.zip"), &yes), Some(("MSEC".into(), "a.zip".into())));
        assert_eq!(classify(root, Path::new("/d/MSEC/previous/a.zip"), &yes), None);
        assert_eq!(classify(root, Path::new("/d/XXXX/new/a.zip"), &yes), None);
        assert_eq!(classify(root, Path::new("/d/MSEC/new/sub/a.zip"), &yes), None);
        // A name that is not UTF-8 is still noticed (the claim fails it).
        use std::os::unix::ffi::OsStrExt;
        let bad = Path::new("/d/MSEC/new").join(OsStr::from_bytes(b"\xff.zip"));
        assert_eq!(classify(root, &bad, &yes), Some(("MSEC".into(), "\u{fffd}.zip".into())));
    }

    #[test]
    fn hard_links_are_never_settled() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside.zip");
        fs::write(&outside, b"1").unwrap();
        let link = tmp.path().join("a.zip");
        fs::hard_link(&outside, &link).unwrap();
        let mut s = Settler::new(Duration::ZERO, true);
        let t0 = Instant::now();
        assert!(!s.observe(&link, t0));
        assert!(s.warned.contains(&link));
        s.note(&link, t0);
        assert!(s.seen.is_empty());
        // Once the other name is gone, it is an upload like any other.
        fs::remove_file(&outside).unwrap();
        assert!(s.observe(&link, t0));
    }

    #[test]
    fn non_regular_files_warned_once_within_a_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Settler::new(Duration::from_secs(10), true);
        let t0 = Instant::now();
        for i in 0..MAX_WARNED + 10 {
            let link = tmp.path().join(format!("l{i}"));
            std::os::unix::fs::symlink("nowhere", &link).unwrap();
            assert!(!s.observe(&link, t0));
            assert!(!s.observe(&link, t0), "seen twice, still skipped");
            assert!(s.warned.len() <= MAX_WARNED);
        }
        assert!(s.seen.is_empty());
    }

    #[test]
    fn ordered_by_mtime_and_forgets_what_left() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let old = SystemTime::now() - Duration::from_secs(60);
        for (name, age) in [("b.zip", 10), ("a.zip", 20), ("c.zip", 10)] {
            fs::write(dir.join(name), b"1").unwrap();
            fs::File::options()
                .write(true)
                .open(dir.join(name))
                .unwrap()
                .set_modified(old + Duration::from_secs(age))
                .unwrap();
        }
        fs::write(dir.join(".hidden"), b"1").unwrap();
        let mut s = Settler::new(Duration::from_secs(10), true);
        let t0 = Instant::now();
        // b.zip noticed first (by its event), the others only by the listing.
        s.note(&dir.join("b.zip"), t0);
        let names = |v: VecDeque<PathBuf>| {
            v.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(names(s.ordered(dir, t0)), ["b.zip", "c.zip", "a.zip"]);
        assert!(s.due(t0), "files not written for longer than settle_ms are due");
        fs::remove_file(dir.join("c.zip")).unwrap();
        assert_eq!(names(s.ordered(dir, t0)), ["b.zip", "a.zip"]);
        assert_eq!(s.folders(), vec![dir.to_path_buf()]);
        fs::remove_file(dir.join("a.zip")).unwrap();
        fs::remove_file(dir.join("b.zip")).unwrap();
        assert!(s.ordered(dir, t0).is_empty());
        assert!(s.folders().is_empty(), "a folder whose files left is not listed again");
        // A fresh upload is not due before its settle time.
        fs::write(dir.join("d.zip"), b"1").unwrap();
        s.note(&dir.join("d.zip"), t0);
        assert!(!s.due(t0));
        assert!(s.due(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn a_file_held_open_for_writing_never_settles_until_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("a.zip");
        fs::write(&f, b"half").unwrap();
        // Not written for a minute: by the settle rule alone, done.
        let old = SystemTime::now() - Duration::from_secs(60);
        fs::File::options().write(true).open(&f).unwrap().set_modified(old).unwrap();
        let mut s = Settler::new(Duration::from_millis(100), true);
        let t0 = Instant::now();
        s.written(&f, t0);
        assert!(!s.observe(&f, t0 + Duration::from_secs(3600)), "a stalled writer keeps it, however long");
        // A sidecar does not mark it done while the writer holds it.
        fs::write(tmp.path().join("a.zip.md5"), b"d41d8cd98f00b204e9800998ecf8427e").unwrap();
        assert!(!s.observe(&f, t0 + Duration::from_secs(3601)));
        fs::remove_file(tmp.path().join("a.zip.md5")).unwrap();
        // Closed: quiet for settle_ms from the close, even with an old mtime
        // (a sidecar sent right after the close still pairs).
        let t1 = t0 + Duration::from_secs(3602);
        s.closed(&f, t1);
        assert!(!s.observe(&f, t1 + Duration::from_millis(50)));
        assert!(s.observe(&f, t1 + Duration::from_millis(150)));
        // Events lost: an open mark is kept (its close may have been lost,
        // or the writer is still stalled) until the file has been quiet
        // for an hour; then the settle rule.
        let g = tmp.path().join("b.zip");
        fs::write(&g, b"x").unwrap();
        fs::File::options().write(true).open(&g).unwrap().set_modified(old).unwrap();
        s.written(&g, t0);
        s.lost_events();
        assert!(!s.observe(&g, t0));
        assert!(!s.observe(&g, t0 + Duration::from_secs(60)));
        assert!(s.observe(&g, t0 + SUSPECT_QUIET + Duration::from_secs(1)));
    }

    #[test]
    fn a_sidecar_being_written_holds_its_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("a.zip");
        fs::write(&f, b"zip").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        fs::File::options().write(true).open(&f).unwrap().set_modified(old).unwrap();
        let side = tmp.path().join("a.zip.md5");
        fs::write(&side, b"").unwrap();
        let mut s = Settler::new(Duration::from_millis(100), true);
        let t0 = Instant::now();
        s.written(&side, t0);
        assert!(!s.observe(&f, t0), "claimed now, the sidecar would be taken half written");
        // A SHA-256 sidecar being written holds it too (and once closed,
        // the settle rule judges the archive, here long quiet).
        let mut s2 = Settler::new(Duration::from_millis(100), true);
        let sha = tmp.path().join("a.zip.sha256");
        s2.written(&sha, t0);
        assert!(!s2.observe(&f, t0), "claimed now, the .sha256 would be taken half written");
        s2.closed(&sha, t0);
        assert!(s2.observe(&f, t0 + Duration::from_secs(1)), "judged by the settle rule once it is closed");
        fs::write(&side, b"d41d8cd98f00b204e9800998ecf8427e  a.zip\n").unwrap();
        s.closed(&side, t0);
        assert!(s.observe(&f, t0), "the sidecar came after the archive: done at once");
    }

    #[test]
    fn settles_after_quiet_period_or_sidecar() {
        let tmp = tempfile::tempdir().unwrap();
        // Noticed late: not written, nor renamed in, for longer than the
        // settle time (its ctime is the time it came: wait it out).
        let old = tmp.path().join("old.zip");
        fs::write(&old, b"1").unwrap();
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(5))
            .unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let f = tmp.path().join("a.zip");
        fs::write(&f, b"1").unwrap();
        let mut s = Settler::new(Duration::from_secs(1), true);
        let t0 = Instant::now();
        assert!(s.observe(&old, t0));
        assert!(!s.observe(&f, t0));
        assert!(!s.observe(&f, t0 + Duration::from_millis(500)));
        assert!(s.observe(&f, t0 + Duration::from_millis(1500)));
        let g = tmp.path().join("b.zip");
        fs::write(&g, b"1").unwrap();
        assert!(!s.observe(&g, t0));
        fs::write(tmp.path().join("b.zip.md5"), b"x").unwrap();
        // No close seen (no inotify here): trusted once quiet SIDECAR_QUIET,
        // since its writer's events may not have been read yet.
        assert!(!s.observe(&g, t0));
        std::thread::sleep(SIDECAR_QUIET);
        assert!(s.observe(&g, t0));
        // Closed (inotify said so): trusted at once.
        let h = tmp.path().join("c.zip");
        fs::write(&h, b"1").unwrap();
        fs::write(tmp.path().join("c.zip.md5"), b"x").unwrap();
        s.closed(&tmp.path().join("c.zip.md5"), t0);
        assert!(s.observe(&h, t0));
        // A FIFO is skipped without being opened.
        let fifo = tmp.path().join("pipe");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(!s.observe(&fifo, t0 + Duration::from_secs(10)));
    }
}
