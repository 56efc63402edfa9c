//! Custody of deposits between `new/` and their outcome. The spool, not the
//! queue, is the source of truth: an entry exists from the moment a deposit
//! is claimed (an atomic rename out of `new/`) until it has been rotated and
//! its terminal state recorded. Whatever Redis forgets, a restart finds here.
//!
//! `<drop_root>/.depot/spool/` holds, per deposit, flat: `<id>.json` (the
//! entry: producer, name as dropped, claim time; then, once the pipeline
//! has spoken, the outcome appended to it), `<id>=<name>` (the archive) and
//! `<id>.md5` (its sidecar, if any). Flat, and the outcome in the entry's
//! file rather than a file of its own: every inode made and removed per
//! deposit costs, and on ext4 without a journal each removed one slows the
//! creations after it (bench/daemon.py). Versions before 0.2 kept `<id>/`
//! folders and 0.2 `<id>.outcome.json` files; both are still read.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use jobs::rotate::{open_nofollow, rename_noreplace};
use serde::{Deserialize, Serialize};
use tracing::warn;

pub const SPOOL: &str = ".depot/spool";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub producer: String,
    /// The archive's name as dropped; a name of depot's own (`<id>.zip`)
    /// when that one cannot be stored (see `invalid_name`).
    pub name: String,
    /// Claim time (ns since the epoch): one producer's deposits run in this order.
    pub claimed_ns: u128,
    pub size: u64,
    pub sidecar: bool,
    pub created: String,
    /// Runs begun, as counted in the record (see [`Spool::begin_attempt`]);
    /// never written with the entry itself.
    #[serde(default, skip_serializing)]
    pub attempts: u32,
    /// Not to be run again before this time (ms since the epoch): a
    /// transient failure's backoff, kept in the record so that any
    /// scheduler (another process, the next start) honours it.
    #[serde(default, skip_serializing)]
    pub not_before_ms: u64,
    /// Ended, but could not be moved out of the spool: left for the
    /// operator, no longer scheduled (see [`Spool::park`]).
    #[serde(default, skip_serializing)]
    pub parked: bool,
    /// The archive as the claim's fstat saw it, through the descriptor it
    /// opened without following a link (with `size`): device and inode
    /// say which file custody took (the rename in was checked against
    /// them), mtime (ns since the epoch) when it was last written. None in
    /// records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// Inode change time just after the claim's rename: a writer that kept
    /// its descriptor across the rename (a stalled sftp session) changes it
    /// (see [`Spool::changed_since_claim`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime_ns: Option<i64>,
    /// The name as dropped could not be stored (not UTF-8, control
    /// characters, too long for its sidecar's name): the message the
    /// deposit fails with, NAME_INVALID, without running the pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_name: Option<String>,
}

impl Entry {
    /// An entry with nothing known beyond its name and size: no sidecar,
    /// no claim-time stat, no attempt yet. Claims fill in the rest.
    pub fn new(id: &str, producer: &str, name: &str, size: u64) -> Entry {
        Entry {
            id: id.to_owned(),
            producer: producer.to_owned(),
            name: name.to_owned(),
            claimed_ns: 0,
            size,
            sidecar: false,
            created: jobs::deposit::now_rfc3339(),
            attempts: 0,
            not_before_ms: 0,
            parked: false,
            dev: None,
            ino: None,
            mtime_ns: None,
            ctime_ns: None,
            invalid_name: None,
        }
    }
}

/// Lines appended to a record after the entry, besides the outcome.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mark {
    /// A run began: counted before the pipeline starts, so a crash or an
    /// out-of-memory kill counts as an attempt.
    Attempt { n: u32 },
    /// A run was stopped by shutdown: not the deposit's fault, not counted.
    Interrupted,
    /// A transient failure: not before this time.
    RetryAt { ms: u64 },
    /// Rotation kept failing: see [`Spool::park`].
    Parked,
}

/// What the pipeline decided, kept until rotation and Redis both know it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    pub state: String,
    pub report: serde_json::Value,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub release: Option<String>,
    /// The release `current` points at after this deposit, when it is not
    /// the deposit's own (an older deposit published after a newer one:
    /// see `jobs::publish::publish`); the producer's `current_release`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    pub files: Option<u64>,
    pub bytes: Option<u64>,
    pub finished: String,
}

fn archive_name(id: &str, name: &str) -> Option<String> {
    let n = format!("{id}={name}");
    (n.len() <= 255).then_some(n)
}

/// The deposit id a spool file belongs to: `<id>`, `<id>=<name>`, `<id>.json`, …
fn id_of(file: &str) -> &str {
    file.split(['.', '=']).next().unwrap_or_default()
}

/// The longest name stored as dropped: its sidecar `<name>.md5` must fit
/// in a file name too (255 bytes).
const MAX_NAME: usize = 251;

/// Linux errno values the claim tells apart.
const ELOOP: i32 = 40;
const ENAMETOOLONG: i32 = 36;

/// Why a name as dropped cannot be stored, if it cannot: it rides in
/// Redis, reports, logs and the producer's mail, where control characters
/// (C0, DEL, C1) reach terminals and bytes that are not UTF-8 do not
/// survive; a name with no room for `.md5` breaks its sidecar's name; and
/// a name of depot's own files in `rejected/<id>/` would collide with them.
fn unstorable(name: &OsStr) -> Option<&'static str> {
    match std::str::from_utf8(name.as_bytes()) {
        Err(_) => Some("not UTF-8"),
        Ok(s) if s.chars().any(char::is_control) => Some("control characters"),
        Ok(s) if s.len() > MAX_NAME => Some("longer than 251 bytes"),
        Ok(s) if jobs::rotate::reserved_name(s) => {
            Some("report.json, report.txt and retried are the names of depot's own files beside a rejected archive")
        }
        Ok(_) => None,
    }
}

/// What the claim may take from a producer's `new/`: opened without
/// following a link (and without blocking on a FIFO), a regular file with
/// exactly one link. The metadata is the descriptor's (fstat), not the
/// name's: the name may be swapped at any time, the descriptor not.
///
/// `unreadable_ok`: an archive depot may not read (a producer's mode 0600)
/// is judged by lstat, which never follows a link, and claimed: nothing
/// can leak from a file depot cannot read, the pipeline fails it and the
/// producer is told; refused here it stayed in `new/` forever, warned
/// about at every pass. A sidecar depot cannot read is ignored instead.
fn checked(path: &Path, unreadable_ok: bool) -> io::Result<fs::Metadata> {
    let m = match open_nofollow(path) {
        Ok(f) => f.metadata()?,
        Err(e) if e.raw_os_error() == Some(ELOOP) => {
            return Err(io::Error::new(e.kind(), "a symlink, never followed"));
        }
        Err(e) if unreadable_ok && e.kind() == io::ErrorKind::PermissionDenied => fs::symlink_metadata(path)?,
        Err(e) => return Err(e),
    };
    if !m.file_type().is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if m.nlink() != 1 {
        return Err(io::Error::other(format!("{} links: a hard link is never claimed", m.nlink())));
    }
    Ok(m)
}

/// A name that stays one entry of the folder it is joined to.
fn plain(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// Is `path` (never followed) the inode that `m` describes?
fn ns(s: i64, nsec: i64) -> i64 {
    s.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// `<archive>.sha256` and `<archive>.sha512`: where the pipeline and the
/// rotation look for a deposit's other sidecars, beside its archive.
fn other_sidecar_paths(archive: &Path) -> Vec<PathBuf> {
    jobs::md5sums::Algo::OTHERS
        .iter()
        .map(|a| {
            let mut p = archive.as_os_str().to_owned();
            p.push(format!(".{}", a.ext()));
            PathBuf::from(p)
        })
        .collect()
}

/// Is this spool file name a `.sha256`/`.sha512` sidecar (never an
/// archive: the watcher never claims such a name)?
fn is_other_sidecar(name: &str) -> bool {
    jobs::md5sums::Algo::OTHERS.iter().any(|a| name.ends_with(&format!(".{}", a.ext())))
}

/// Rename `<name>.sha256`/`<name>.sha512` of `new/` in beside the claimed
/// archive (`<archive>.sha256`), before the archive (whose rename is the claim), with the
/// checks the `.md5` sidecar gets: a regular file with one link, renamed
/// without replacing anything, and still the inode checked (else given
/// back). One that cannot be taken is left, with a warning; the deposit
/// goes on without it. Returns what was taken, to give back if the claim
/// fails.
fn claim_other_sidecars(new: &Path, dropped: &OsStr, archive: &Path, id: &str) -> Vec<(PathBuf, OsString)> {
    let mut taken = Vec::new();
    for (algo, dst) in jobs::md5sums::Algo::OTHERS.into_iter().zip(other_sidecar_paths(archive)) {
        let mut name = dropped.to_owned();
        name.push(format!(".{}", algo.ext()));
        let src = new.join(&name);
        let meta = match checked(&src, false) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(ENAMETOOLONG) => continue,
            Err(e) => {
                warn!(path = %src.display(), error = %e, "sidecar ignored, never read: the deposit goes on without it");
                continue;
            }
        };
        if let Err(e) = rename_noreplace(&src, &dst) {
            warn!(path = %src.display(), error = %e, "sidecar not taken: the deposit goes on without it");
            continue;
        }
        if !same_file(&dst, &meta) {
            warn!(path = %src.display(), "sidecar swapped while it was claimed: given back, the deposit goes on without it");
            let _ = return_to_new(&dst, new, &name, id);
            continue;
        }
        taken.push((dst, name));
    }
    taken
}

fn same_file(path: &Path, m: &fs::Metadata) -> bool {
    fs::symlink_metadata(path).is_ok_and(|d| d.dev() == m.dev() && d.ino() == m.ino())
}

/// Put `src` (a spool file) into the producer's `new/` as `name`, never
/// over a file there: when `name` was taken meanwhile (a newer upload),
/// under [`returned_name`]. Returns where it went.
fn return_to_new(src: &Path, new: &Path, name: &OsStr, id: &str) -> io::Result<PathBuf> {
    let dst = new.join(name);
    match rename_noreplace(src, &dst) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let other = new.join(returned_name(name, id));
            rename_noreplace(src, &other)?;
            warn!(taken = %dst.display(), kept_as = %other.display(), "a newer file holds the name: the one given back is kept beside it");
            Ok(other)
        }
        Err(e) => Err(e),
        Ok(()) => Ok(dst),
    }
}

/// The visible name a given-back file takes when its own is taken in
/// `new/`: `<name>.returned-<id>`, with `.md5` kept last for a sidecar
/// (`a.zip.returned-<id>.md5` beside `a.zip.returned-<id>`, so that the
/// pair still goes together). When that is too long for a file name,
/// `<id>.returned` (and `<id>.returned.md5`). Not hidden: a hidden name is
/// ignored forever; this one is claimed and judged like any upload (its
/// mtime, kept by the rename, puts it before the newer file).
fn returned_name(name: &OsStr, id: &str) -> OsString {
    let b = name.as_bytes();
    let (stem, md5) = match b.strip_suffix(b".md5") {
        Some(stem) => (stem, ".md5"),
        None => (b, ""),
    };
    let mut out = OsString::from(OsStr::from_bytes(stem));
    out.push(format!(".returned-{id}"));
    if out.len() + ".md5".len() > 255 {
        out = OsString::from(format!("{id}.returned"));
    }
    out.push(md5);
    out
}

pub struct Spool {
    pub root: PathBuf,
}

/// The entry and, if one was appended, the outcome: `<id>.json` is a
/// stream of JSON values (the entry, pretty-printed by older versions, then
/// one line per outcome). An outcome cut short by a crash is no outcome:
/// only its fdatasync made it count.
/// A spool record's entry, read only (for `depot history`): None when it
/// is not there or cannot be parsed.
pub fn read_entry(path: &Path) -> Option<Entry> {
    read_record(path).ok().flatten().map(|(e, _)| e)
}

fn read_record(path: &Path) -> io::Result<Option<(Entry, Option<Outcome>)>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut values = serde_json::Deserializer::from_slice(&bytes).into_iter::<serde_json::Value>();
    let mut entry: Entry = match values.next() {
        Some(v) => serde_json::from_value(v.map_err(io::Error::other)?).map_err(io::Error::other)?,
        None => return Err(io::Error::other("empty spool entry")),
    };
    let mut outcome = None;
    // A value cut short by a crash ends the record: only its fdatasync made
    // it count.
    for v in values.map_while(Result::ok) {
        match serde_json::from_value::<Mark>(v.clone()) {
            Ok(Mark::Attempt { n }) => entry.attempts = entry.attempts.max(n),
            Ok(Mark::Interrupted) => entry.attempts = entry.attempts.saturating_sub(1),
            Ok(Mark::RetryAt { ms }) => entry.not_before_ms = ms,
            Ok(Mark::Parked) => entry.parked = true,
            Err(_) => outcome = serde_json::from_value(v).ok().or(outcome),
        }
    }
    Ok(Some((entry, outcome)))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn remove_if_there(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Spool {
    pub fn new(drop_root: &Path) -> io::Result<Spool> {
        let root = drop_root.join(SPOOL);
        fs::create_dir_all(&root)?;
        Ok(Spool { root })
    }

    fn entry_path(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.json"))
    }

    fn outcome_path(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.outcome.json"))
    }

    /// Still in custody (claimed, not yet rotated and recorded).
    pub fn holds(&self, id: &str) -> bool {
        self.entry_path(id).exists()
    }

    /// `<id>=<name as dropped>`: the name survives a crash that loses the
    /// entry file (claims are synced in batches, see [`Spool::sync`]). A
    /// name too long for that makes it `<id>`, and its entry is synced.
    pub fn archive(&self, e: &Entry) -> PathBuf {
        match archive_name(&e.id, &e.name) {
            Some(n) => self.root.join(n),
            None => self.root.join(&e.id),
        }
    }

    pub fn sidecar(&self, e: &Entry) -> Option<PathBuf> {
        e.sidecar.then(|| self.root.join(format!("{}.md5", e.id)))
    }

    /// Take `path` (a settled file in `<P>/new/`) into custody: the entry
    /// is written, then the sidecar and the archive are renamed in (the
    /// archive's rename is the claim). Nothing is fsynced here: claims come
    /// in batches and [`Spool::sync`] makes a whole batch durable before
    /// anyone is told. A crash before that sync leaves each file in `new/`
    /// or in the spool with an entry that [`Spool::list`] either keeps or
    /// uses to give the files back to `new/` under their names: never lost.
    ///
    /// The producer controls the names and links in its `new/`, and their
    /// timing: the archive is opened without following a link and must be
    /// a regular file with one link (a link to a file elsewhere would have
    /// depot publish and move a file the producer cannot read); the renames
    /// never replace anything; and what was renamed in must be the inode
    /// that was checked, or it goes back (a name swapped in between).
    /// A name that cannot be stored is claimed all the same, under
    /// `<id>.zip`, and fails at once as NAME_INVALID (see `invalid_name`).
    pub fn claim(&self, producer: &str, path: &Path) -> io::Result<Entry> {
        let Some(dropped) = path.file_name() else {
            return Err(io::Error::other("no name"));
        };
        self.claim_as(producer, path, dropped)
    }

    /// [`Spool::claim`] of a file in `new/` under another name than its
    /// own: the HTTP door's upload, written under a hidden name the watcher
    /// ignores, becomes the deposit `dropped` (and pairs with
    /// `<dropped>.md5` in `new/`, as an sftp upload would).
    pub fn claim_as(&self, producer: &str, path: &Path, dropped: &OsStr) -> io::Result<Entry> {
        let Some(new) = path.parent() else {
            return Err(io::Error::other("no folder"));
        };
        let meta = checked(path, true).map_err(|e| io::Error::new(e.kind(), format!("not claimed: {e}")))?;
        let claimed_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let id = jobs::deposit::new_id(producer);
        let (name, invalid_name) = match (unstorable(dropped), dropped.to_str()) {
            (None, Some(n)) => (n.to_owned(), None),
            (why, _) => (
                format!("{id}.zip"),
                Some(format!(
                    "the file name {dropped:?} cannot be stored ({}); rename the file and upload it again",
                    why.unwrap_or("not UTF-8")
                )),
            ),
        };
        let mut side_name = dropped.to_owned();
        side_name.push(".md5");
        let side_src = new.join(&side_name);
        let side_meta = match checked(&side_src, false) {
            Ok(m) => Some(m),
            // No sidecar; or none can exist, its name being too long.
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(ENAMETOOLONG) => None,
            Err(e) => {
                warn!(path = %side_src.display(), error = %e, "sidecar ignored, never read: the deposit goes on without it");
                None
            }
        };
        let mut entry = Entry {
            claimed_ns,
            sidecar: side_meta.is_some(),
            dev: Some(meta.dev()),
            ino: Some(meta.ino()),
            mtime_ns: Some(ns(meta.mtime(), meta.mtime_nsec())),
            invalid_name,
            ..Entry::new(&id, producer, &name, meta.len())
        };
        // Written in place, not through a temporary file: a record cut
        // short by a crash before the batch's sync reads as lost, and
        // `list` gives the archive back under the name it carries.
        self.write_entry(&entry)?;
        let side_dst = self.root.join(format!("{}.md5", entry.id));
        if let Some(sm) = &side_meta {
            if let Err(e) = rename_noreplace(&side_src, &side_dst) {
                let _ = fs::remove_file(self.entry_path(&entry.id));
                return Err(e);
            }
            if !same_file(&side_dst, sm) {
                warn!(path = %side_src.display(), "sidecar swapped while it was claimed: given back, the deposit goes on without it");
                let back = return_to_new(&side_dst, new, &side_name, &entry.id);
                if let Err(e) = back.and_then(|_| {
                    entry.sidecar = false;
                    self.write_entry(&entry)
                }) {
                    let _ = fs::remove_file(self.entry_path(&entry.id));
                    return Err(e);
                }
            }
        }
        let dst = self.archive(&entry);
        let others = claim_other_sidecars(new, dropped, &dst, &entry.id);
        let claimed = rename_noreplace(path, &dst).and_then(|()| {
            if same_file(&dst, &meta) {
                return Ok(());
            }
            let back = return_to_new(&dst, new, dropped, &entry.id)?;
            warn!(path = %path.display(), returned = %back.display(), "file swapped while it was claimed: given back, not claimed");
            Err(io::Error::other("swapped while it was claimed"))
        });
        if let Err(e) = claimed {
            if entry.sidecar {
                let _ = return_to_new(&side_dst, new, &side_name, &entry.id);
            }
            for (dst, name) in &others {
                let _ = return_to_new(dst, new, name, &entry.id);
            }
            let _ = fs::remove_file(self.entry_path(&entry.id));
            return Err(e);
        }
        // The rename changed the inode's ctime: what it is now is what an
        // unchanged file keeps. Written with the entry (rewritten whole: it
        // is still the record's only line).
        if let Ok(m) = fs::symlink_metadata(&dst) {
            entry.ctime_ns = Some(ns(m.ctime(), m.ctime_nsec()));
            self.write_entry(&entry)?;
        }
        Ok(entry)
    }

    /// Did the archive change since it was claimed (size, mtime or ctime)?
    /// A writer that kept its descriptor across the claim's rename goes on
    /// writing into the spool: such a file is never judged; it goes back
    /// to `new/` to wait (see [`Spool::give_back_changed`]). Records of
    /// older versions (no times) never count as changed.
    pub fn changed_since_claim(&self, e: &Entry) -> io::Result<bool> {
        Ok(self.change_since_claim(e)?.is_some())
    }

    /// What changed since the claim, in words for the log; None if nothing.
    pub fn change_since_claim(&self, e: &Entry) -> io::Result<Option<String>> {
        let m = fs::symlink_metadata(self.archive(e))?;
        let mtime = ns(m.mtime(), m.mtime_nsec());
        let ctime = ns(m.ctime(), m.ctime_nsec());
        Ok(if m.len() != e.size {
            Some(format!("size {} at the claim, {} now", e.size, m.len()))
        } else if e.mtime_ns.is_some_and(|t| t != mtime) {
            Some("written since the claim (mtime)".into())
        } else if e.ctime_ns.is_some_and(|t| t != ctime) {
            Some("changed since the claim (ctime)".into())
        } else {
            None
        })
    }

    /// The archive (and sidecar) of a deposit that changed after its claim,
    /// back into `new/` under its name (never over a newer file there),
    /// and the entry forgotten: it is claimed again once its writer is done.
    pub fn give_back_changed(&self, e: &Entry) -> io::Result<()> {
        self.give_back(e)
    }

    fn write_entry(&self, e: &Entry) -> io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
        line.push(b'\n');
        fs::write(self.entry_path(&e.id), line)
    }

    /// Make a batch of claims durable: each entry record (fdatasync: it
    /// holds what the archive's name cannot, the claim's fstat and a name
    /// found invalid, and a record lost to a power cut would give the
    /// deposit back without them), then the spool folder (the renamed-in
    /// files, whose names carry the names they were dropped under) and each
    /// `new/` a file left (so that it is not in both places after a crash).
    /// Not syncfs(2): that walks every cached inode of the filesystem and
    /// waits for every other writer's dirty data, a big deposit's included
    /// (measured: slower than the fsyncs, and unbounded).
    pub fn sync(&self, claimed: &[Entry], drop_root: &Path) -> io::Result<()> {
        for e in claimed {
            fs::File::open(self.entry_path(&e.id))?.sync_data()?;
        }
        let mut dirs = vec![self.root.clone()];
        let mut producers: Vec<&str> = claimed.iter().map(|e| e.producer.as_str()).collect();
        producers.sort_unstable();
        producers.dedup();
        dirs.extend(producers.iter().map(|p| drop_root.join(p).join("new")));
        for d in dirs {
            fs::File::open(&d)?.sync_all()?;
        }
        Ok(())
    }

    /// The entry and its outcome, if the pipeline has spoken (appended to
    /// the entry, or in the `<id>.outcome.json` of version 0.2).
    pub fn load_with_outcome(&self, id: &str) -> io::Result<Option<(Entry, Option<Outcome>)>> {
        if !jobs::deposit::is_id(id) {
            return Ok(None);
        }
        match read_record(&self.entry_path(id))? {
            Some((e, None)) => Ok(Some((e, read_json(&self.outcome_path(id))?))),
            found => Ok(found),
        }
    }

    /// The outcome, appended to the entry's record and fdatasynced with it:
    /// claims are synced in batches without their records' contents, and
    /// this makes both durable at once; the record's name is already
    /// durable (the claim batch synced the spool folder after making it).
    /// Rotation comes next and syncs `previous/`: an archive durably there
    /// always has a durable outcome here. Appended, not a file of its own:
    /// no inode made and removed, no spool folder to sync.
    pub fn set_outcome(&self, e: &Entry, o: &Outcome) -> io::Result<()> {
        self.append(e, o)
    }

    /// One JSON value appended to the record, on disk before this returns.
    fn append(&self, e: &Entry, v: &impl Serialize) -> io::Result<()> {
        let mut line = serde_json::to_vec(v).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = fs::OpenOptions::new().append(true).open(self.entry_path(&e.id))?;
        io::Write::write_all(&mut f, &line)?;
        f.sync_data()
    }

    /// Count a run before it starts, on disk: a run that never reports
    /// (the daemon killed, out of memory) still counts, so a deposit that
    /// kills its worker cannot be retried forever. Returns the attempt's
    /// number; `e` must be fresh from the record (a worker loads it).
    pub fn begin_attempt(&self, e: &mut Entry) -> io::Result<u32> {
        let n = e.attempts.saturating_add(1);
        self.append(e, &Mark::Attempt { n })?;
        e.attempts = n;
        Ok(n)
    }

    /// The run that [`Spool::begin_attempt`] counted was stopped by a
    /// shutdown: it does not count against the deposit.
    pub fn interrupted(&self, e: &mut Entry) -> io::Result<()> {
        self.append(e, &Mark::Interrupted)?;
        e.attempts = e.attempts.saturating_sub(1);
        Ok(())
    }

    /// A transient failure: no run before `wait` from now, whoever schedules.
    pub fn retry_after(&self, e: &mut Entry, wait: std::time::Duration) -> io::Result<()> {
        let ms = now_ms().saturating_add(wait.as_millis() as u64);
        self.append(e, &Mark::RetryAt { ms })?;
        e.not_before_ms = ms;
        Ok(())
    }

    /// A deposit whose outcome is recorded but whose files cannot leave the
    /// spool (rotation failed `workers.max_attempts` times: a folder made
    /// unwritable, a full disk). It stays here for the operator, and is no
    /// longer scheduled, so that the producer's next deposits go on.
    pub fn park(&self, e: &mut Entry) -> io::Result<()> {
        self.append(e, &Mark::Parked)?;
        e.parked = true;
        Ok(())
    }

    /// The entry kept in a 0.2 outcome record (whose entry record a power
    /// cut lost), written back as an entry record with its outcome.
    fn entry_from_outcome(&self, id: &str) -> io::Result<Option<Entry>> {
        // Read once: the same JSON object is the entry (its `entry` field)
        // and the outcome (the rest).
        let stored: Option<serde_json::Value> = read_json(&self.outcome_path(id)).unwrap_or(None);
        let Some(stored) = stored else { return Ok(None) };
        let entry = stored.get("entry").cloned().and_then(|v| serde_json::from_value::<Entry>(v).ok());
        match entry.filter(|e| e.id == id) {
            Some(e) => {
                let o: Option<Outcome> = serde_json::from_value(stored).ok();
                self.rewrite(&e, o.as_ref())?;
                Ok(Some(e))
            }
            None => Ok(None),
        }
    }

    /// The record written whole (entry, then outcome if any), synced, and
    /// a 0.2 outcome file dropped: at start only, never per deposit.
    fn rewrite(&self, e: &Entry, o: Option<&Outcome>) -> io::Result<()> {
        let path = self.entry_path(&e.id);
        let tmp = path.with_extension("json.tmp");
        let mut bytes = serde_json::to_vec(e).map_err(io::Error::other)?;
        bytes.push(b'\n');
        if let Some(o) = o {
            bytes.extend(serde_json::to_vec(o).map_err(io::Error::other)?);
            bytes.push(b'\n');
        }
        fs::write(&tmp, bytes)?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(&self.root)?.sync_all()?;
        remove_if_there(&self.outcome_path(&e.id))
    }

    /// A record that cannot be read or written, moved aside as
    /// `<id>.json.broken` for the operator: the deposit it held has ended
    /// (see `worker::record_fault`) and must not look held any more.
    pub fn set_aside(&self, id: &str) -> io::Result<()> {
        let path = self.entry_path(id);
        fs::rename(&path, path.with_extension("json.broken"))
    }

    /// The entry of a deposit whose record cannot be read, as its archive's
    /// spool name tells (`<id>=<name>`), for a process that has no index
    /// (`--role worker`).
    pub fn entry_without_record(&self, id: &str) -> io::Result<Entry> {
        let prefix = format!("{id}=");
        let mut archive = None;
        for d in fs::read_dir(&self.root)? {
            let name = d?.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) || name == id {
                archive = Some(name);
                break;
            }
        }
        self.orphan_entry(id, archive.as_deref())
    }

    /// The deposit is rotated and its state recorded: forget it. The entry
    /// goes last, so that a crash half-way leaves something `list` mends.
    pub fn remove(&self, e: &Entry) -> io::Result<()> {
        let id = &e.id;
        // Temporary files a crash left are removed by `list` at start; a
        // 0.2 outcome file may have been read by a `--role worker` that
        // never lists.
        let others = other_sidecar_paths(&self.archive(e));
        for p in [self.archive(e), self.root.join(format!("{id}.md5"))].iter().chain(&others) {
            remove_if_there(p)?;
        }
        for p in [self.outcome_path(id), self.entry_path(id)] {
            remove_if_there(&p)?;
        }
        Ok(())
    }

    /// Every entry, oldest claim first. A claim that never completed (a
    /// crash before its sync) gives its files back to the producer's `new/`
    /// under their names, or is forgotten when nothing of it came in.
    pub fn list(&self) -> io::Result<Vec<Entry>> {
        // id → the archive's file name, if it is there.
        let mut ids = std::collections::BTreeMap::<String, Option<String>>::new();
        let mut strays = Vec::new();
        for d in fs::read_dir(&self.root)? {
            let d = d?;
            let name = d.file_name().to_string_lossy().into_owned();
            let id = id_of(&name).to_owned();
            if !jobs::deposit::is_id(&id) {
                continue;
            }
            // Half-written records of a crash (0.2 and `rewrite`).
            if name == format!("{id}.json.tmp") || name == format!("{id}.outcome.json.tmp") {
                remove_if_there(&d.path())?;
                continue;
            }
            if name == id && d.file_type()?.is_dir() {
                self.convert_folder(&id)?;
                ids.entry(id).or_default();
                continue;
            }
            if is_other_sidecar(&name) {
                // Follows its archive (give_back, remove); alone, removed below.
                strays.push((id.clone(), d.path()));
                ids.entry(id).or_default();
                continue;
            }
            let archive = (name == id || name.starts_with(&format!("{id}="))).then_some(name);
            let slot = ids.entry(id).or_default();
            if archive.is_some() {
                *slot = archive;
            }
        }
        let mut out = Vec::new();
        for (id, archive) in ids {
            // One record that cannot be read or mended (made a folder, an
            // I/O error) must not stop the recovery of every other one: it
            // is left for the operator, with a log line.
            // Out of descriptors is the host's moment, not the record's:
            // the whole listing fails, to be made again.
            match self.list_one(&id, archive, &strays, &mut out) {
                Err(e) if matches!(e.raw_os_error(), Some(23 | 24)) => return Err(e),
                Err(e) => {
                    warn!(deposit = %id, error = %e, "spool record unreadable: left in the spool for the operator")
                }
                Ok(()) => {}
            }
        }
        out.sort_by_key(|e| (e.claimed_ns, e.id.clone()));
        Ok(out)
    }

    /// One id of [`Spool::list`]: kept in `out`, given back, or forgotten
    /// (with its `strays`: `.sha256`/`.sha512` sidecars of a claim whose
    /// archive and record are gone).
    fn list_one(
        &self,
        id: &str,
        archive: Option<String>,
        strays: &[(String, PathBuf)],
        out: &mut Vec<Entry>,
    ) -> io::Result<()> {
        let id = id.to_owned();
        {
            match self.load_with_outcome(&id) {
                Ok(Some((e, o))) if o.is_some() || self.archive(&e).exists() => {
                    if self.outcome_path(&id).exists() {
                        self.rewrite(&e, o.as_ref())?;
                    }
                    out.push(e)
                }
                Ok(Some((e, _))) => self.give_back(&e)?,
                Ok(None) | Err(_) if let Some(e) = self.entry_from_outcome(&id)? => out.push(e),
                // The archive came in but its entry never reached the disk
                // (a power cut before the claim's sync): back to new/ under
                // the name it carries.
                Ok(None) | Err(_) if let Some(a) = archive => {
                    self.give_back_from(&self.orphan_entry(&id, Some(&a))?, &self.root.join(&a))?
                }
                Ok(None) | Err(_) => {
                    self.remove(&self.orphan_entry(&id, None)?)?;
                    remove_if_there(&self.outcome_path(&id))?;
                    for (_, p) in strays.iter().filter(|(i, _)| *i == id) {
                        remove_if_there(p)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// An entry for an archive whose entry file was lost, named as its spool
    /// file says (`<id>=<name>`), or after the id.
    fn orphan_entry(&self, id: &str, archive: Option<&str>) -> io::Result<Entry> {
        let name = archive.and_then(|a| a.split_once('=')).map_or_else(|| format!("{id}.zip"), |(_, n)| n.to_owned());
        let size = archive.map_or(Ok(0), |a| fs::symlink_metadata(self.root.join(a)).map(|m| m.len()))?;
        Ok(Entry {
            sidecar: self.root.join(format!("{id}.md5")).exists(),
            ..Entry::new(id, jobs::deposit::producer_of(id).unwrap_or_default(), &name, size)
        })
    }

    /// Files of an unfinished claim back to `new/`, then forget it.
    fn give_back(&self, e: &Entry) -> io::Result<()> {
        self.give_back_from(e, &self.archive(e))
    }

    /// Never over a file in `new/`: when the name (or its sidecar's) is
    /// taken there (a newer upload of the same name), the pair goes back
    /// under [`returned_name`] (`<name>.returned-<id>` and its `.md5`),
    /// with a log line, so that neither upload is lost or paired with the
    /// other's sidecar.
    fn give_back_from(&self, e: &Entry, archive: &Path) -> io::Result<()> {
        let new = self.root.parent().and_then(Path::parent).map(|d| d.join(&e.producer).join("new"));
        if let Some(new) = new.filter(|_| !e.producer.is_empty() && plain(&e.name)) {
            // Whatever is there, a link included (moved, never followed).
            let there = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir());
            let side = self.root.join(format!("{}.md5", e.id));
            let (has_side, has_archive) = (there(&side), there(archive));
            if has_side || has_archive {
                fs::create_dir_all(&new)?;
                let with_md5 = |n: &OsStr| {
                    let mut s = n.to_owned();
                    s.push(".md5");
                    s
                };
                let own = OsString::from(&e.name);
                let taken = |n: &OsStr| fs::symlink_metadata(new.join(n)).is_ok();
                let name = if (has_archive && taken(&own)) || (has_side && taken(&with_md5(&own))) {
                    let other = returned_name(&own, &e.id);
                    warn!(deposit = %e.id, taken = %new.join(&own).display(), kept_as = %new.join(&other).display(),
                        "a newer upload holds the name: the unfinished claim goes back beside it");
                    other
                } else {
                    own
                };
                if has_side {
                    return_to_new(&side, &new, &with_md5(&name), &e.id)?;
                }
                for (algo, p) in jobs::md5sums::Algo::OTHERS.into_iter().zip(other_sidecar_paths(archive)) {
                    if there(&p) {
                        let mut n = name.clone();
                        n.push(format!(".{}", algo.ext()));
                        return_to_new(&p, &new, &n, &e.id)?;
                    }
                }
                if has_archive {
                    return_to_new(archive, &new, &name, &e.id)?;
                }
            }
        }
        self.remove(e)
    }

    /// A deposit folder of a version before 0.2 (`<id>/deposit.json`,
    /// `<id>/<name>`, …) into the flat layout. A folder without a readable
    /// deposit.json gives its files back to `new/`, as it always did.
    fn convert_folder(&self, id: &str) -> io::Result<()> {
        let dir = self.root.join(id);
        let entry: Option<Entry> = read_json(&dir.join("deposit.json")).ok().flatten();
        match entry {
            Some(e) if !e.name.contains('/') => {
                for (from, to) in [
                    (dir.join(format!("{}.md5", e.name)), self.root.join(format!("{id}.md5"))),
                    (dir.join(&e.name), self.root.join(id).with_extension("archive.tmp")),
                    (dir.join("outcome.json"), self.outcome_path(id)),
                    (dir.join("deposit.json"), self.entry_path(id)),
                ] {
                    if from.is_file() {
                        fs::rename(from, to)?;
                    }
                }
                fs::remove_dir_all(&dir)?;
                let tmp = self.root.join(id).with_extension("archive.tmp");
                if tmp.is_file() {
                    fs::rename(tmp, self.archive(&e))?;
                }
            }
            _ => {
                let producer = jobs::deposit::producer_of(id).unwrap_or_default();
                let new = self.root.parent().and_then(Path::parent).map(|d| d.join(producer).join("new"));
                if let Some(new) = new.filter(|_| !producer.is_empty()) {
                    for f in fs::read_dir(&dir)? {
                        let f = f?;
                        let name = f.file_name();
                        if name != "deposit.json" && !name.as_bytes().ends_with(b".tmp") && f.file_type()?.is_file() {
                            fs::create_dir_all(&new)?;
                            return_to_new(&f.path(), &new, &name, id)?;
                        }
                    }
                }
                fs::remove_dir_all(&dir)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_half_claimed_entry_gives_its_file_back() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::new(tmp.path()).unwrap();
        let id = "20260101T000000Z-MSEC-0000abcd";
        // A folder of the old layout without its deposit.json.
        fs::create_dir_all(spool.root.join(id)).unwrap();
        fs::write(spool.root.join(id).join("MSEC_1.zip"), b"data").unwrap();
        assert!(spool.list().unwrap().is_empty());
        assert_eq!(fs::read(tmp.path().join("MSEC/new/MSEC_1.zip")).unwrap(), b"data");
        assert!(!spool.root.join(id).exists());
        // An entry whose archive never came in: its sidecar goes back.
        let new = tmp.path().join("MSEC/new");
        fs::write(new.join("b.zip.md5"), b"m").unwrap();
        fs::write(new.join("b.zip"), b"b").unwrap();
        let e = spool.claim("MSEC", &new.join("b.zip")).unwrap();
        fs::rename(spool.archive(&e), new.join("b.zip")).unwrap();
        assert!(spool.list().unwrap().is_empty());
        assert!(new.join("b.zip.md5").is_file() && new.join("b.zip").is_file());
        assert_eq!(fs::read_dir(&spool.root).unwrap().count(), 0);
        // An archive whose entry was lost: back under the name it carries.
        let e = spool.claim("MSEC", &new.join("b.zip")).unwrap();
        fs::remove_file(spool.root.join(format!("{}.json", e.id))).unwrap();
        assert!(spool.list().unwrap().is_empty());
        assert_eq!(fs::read(new.join("b.zip")).unwrap(), b"b");
        assert_eq!(fs::read(new.join("b.zip.md5")).unwrap(), b"m");
        assert_eq!(fs::read_dir(&spool.root).unwrap().count(), 0);
        // A name too long to ride along: the entry is synced instead, and
        // a lost one gives the archive back under its id.
        let long = format!("{}.zip", "x".repeat(240));
        fs::write(new.join(&long), b"l").unwrap();
        let e = spool.claim("MSEC", &new.join(&long)).unwrap();
        assert_eq!(spool.archive(&e), spool.root.join(&e.id));
        spool.sync(std::slice::from_ref(&e), tmp.path()).unwrap();
        assert_eq!(spool.list().unwrap(), vec![e.clone()]);
        fs::remove_file(spool.root.join(format!("{}.json", e.id))).unwrap();
        assert!(spool.list().unwrap().is_empty());
        assert_eq!(fs::read(new.join(format!("{}.zip", e.id))).unwrap(), b"l");
    }

    /// A spool and MSEC's new/ holding these files.
    fn site(files: &[(&str, &[u8])]) -> (tempfile::TempDir, Spool, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::new(tmp.path()).unwrap();
        let new = tmp.path().join("MSEC/new");
        fs::create_dir_all(&new).unwrap();
        for (name, bytes) in files {
            fs::write(new.join(name), bytes).unwrap();
        }
        (tmp, spool, new)
    }

    #[test]
    fn an_outcome_stands_in_for_a_lost_entry() {
        let (_tmp, spool, new) = site(&[("a.zip", b"a")]);
        let e = spool.claim("MSEC", &new.join("a.zip")).unwrap();
        let o = Outcome {
            state: "SUCCESS".into(),
            report: serde_json::json!({"accepted": true}),
            error_code: None,
            error: None,
            release: Some("r".into()),
            current: None,
            files: Some(1),
            bytes: Some(1),
            finished: "2026-01-01T00:00:00Z".into(),
        };
        // Version 0.2 kept the outcome (with the entry in it) in a file of
        // its own, and a power cut could lose the entry record.
        let mut old = serde_json::to_value(&o).unwrap();
        old["entry"] = serde_json::to_value(&e).unwrap();
        fs::write(spool.root.join(format!("{}.outcome.json", e.id)), old.to_string()).unwrap();
        fs::write(spool.root.join(format!("{}.json", e.id)), b"").unwrap();
        assert_eq!(spool.list().unwrap(), vec![e.clone()]);
        assert_eq!(spool.load_with_outcome(&e.id).unwrap(), Some((e.clone(), Some(o.clone()))));
        // Converted: one record holds both.
        assert!(!spool.root.join(format!("{}.outcome.json", e.id)).exists());
        spool.remove(&e).unwrap();
        assert_eq!(fs::read_dir(&spool.root).unwrap().count(), 0);
    }

    #[test]
    fn the_outcome_is_appended_to_the_entry() {
        let (_tmp, spool, new) = site(&[("a.zip", b"a")]);
        let e = spool.claim("MSEC", &new.join("a.zip")).unwrap();
        assert_eq!(spool.load_with_outcome(&e.id).unwrap(), Some((e.clone(), None)));
        let o = Outcome {
            state: "FAILURE".into(),
            report: serde_json::json!({"accepted": false}),
            error_code: Some("NOT_A_ZIP".into()),
            error: Some("not a zip".into()),
            release: None,
            current: None,
            files: None,
            bytes: None,
            finished: "2026-01-01T00:00:00Z".into(),
        };
        spool.set_outcome(&e, &o).unwrap();
        assert_eq!(spool.load_with_outcome(&e.id).unwrap(), Some((e.clone(), Some(o.clone()))));
        // Rotated (the archive left), not yet recorded: still listed.
        fs::remove_file(spool.archive(&e)).unwrap();
        assert_eq!(spool.list().unwrap(), vec![e.clone()]);
        // An outcome cut short by a crash is no outcome; the entry stands.
        let path = spool.root.join(format!("{}.json", e.id));
        let full = fs::read(&path).unwrap();
        fs::write(&path, &full[..full.len() - 10]).unwrap();
        assert_eq!(spool.load_with_outcome(&e.id).unwrap(), Some((e.clone(), None)));
        // A crash's temporary files go at start.
        fs::write(spool.root.join(format!("{}.json.tmp", e.id)), b"x").unwrap();
        fs::write(&path, &full).unwrap();
        assert_eq!(spool.list().unwrap(), vec![e.clone()]);
        assert!(!spool.root.join(format!("{}.json.tmp", e.id)).exists());
    }

    #[test]
    fn an_old_layout_folder_is_converted() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::new(tmp.path()).unwrap();
        let id = "20260101T000000Z-MSEC-0000abcd";
        let dir = spool.root.join(id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("MSEC_1.zip"), b"data").unwrap();
        fs::write(dir.join("MSEC_1.zip.md5"), b"m").unwrap();
        let e = Entry {
            claimed_ns: 1,
            sidecar: true,
            created: "2026-01-01T00:00:00Z".into(),
            ..Entry::new(id, "MSEC", "MSEC_1.zip", 4)
        };
        fs::write(dir.join("deposit.json"), serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(spool.list().unwrap(), vec![e.clone()]);
        assert_eq!(fs::read(spool.archive(&e)).unwrap(), b"data");
        assert_eq!(fs::read(spool.sidecar(&e).unwrap()).unwrap(), b"m");
        assert!(spool.holds(id));
        spool.remove(&e).unwrap();
        assert_eq!(fs::read_dir(&spool.root).unwrap().count(), 0);
    }

    #[test]
    fn claim_then_list() {
        let (_tmp, spool, new) = site(&[("a.zip", b"a"), ("a.zip.md5", b"m")]);
        let e = spool.claim("MSEC", &new.join("a.zip")).unwrap();
        assert!(e.sidecar && !new.join("a.zip").exists() && !new.join("a.zip.md5").exists());
        assert_eq!(spool.list().unwrap(), vec![e]);
    }

    #[test]
    fn sha_sidecars_travel_with_their_archive() {
        let (_tmp, spool, new) = site(&[("a.zip", b"a"), ("a.zip.sha256", b"s"), ("a.zip.sha512", b"t")]);
        let e = spool.claim("MSEC", &new.join("a.zip")).unwrap();
        assert_eq!(fs::read_dir(&new).unwrap().count(), 0, "a sidecar left in new/");
        let mut beside = spool.archive(&e).into_os_string();
        beside.push(".sha256");
        assert_eq!(fs::read(&beside).unwrap(), b"s");
        // Not taken for an archive of its own.
        assert_eq!(spool.list().unwrap(), vec![e.clone()]);
        // A claim whose record was lost gives them back with the archive.
        fs::remove_file(spool.entry_path(&e.id)).unwrap();
        assert_eq!(spool.list().unwrap(), vec![]);
        for n in ["a.zip", "a.zip.sha256", "a.zip.sha512"] {
            assert!(new.join(n).is_file(), "{n}");
        }
        untouched(&spool);
        // Claimed again, then forgotten: nothing left in the spool.
        let e = spool.claim("MSEC", &new.join("a.zip")).unwrap();
        spool.remove(&e).unwrap();
        untouched(&spool);
    }

    /// Nothing of `new/` moved, and no record left behind.
    fn untouched(spool: &Spool) {
        assert_eq!(fs::read_dir(&spool.root).unwrap().count(), 0);
    }

    #[test]
    fn links_and_special_files_are_never_claimed() {
        let (tmp, spool, new) = site(&[]);
        let outside = tmp.path().join("outside.zip");
        fs::write(&outside, b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, new.join("link.zip")).unwrap();
        let e = spool.claim("MSEC", &new.join("link.zip")).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        fs::hard_link(&outside, new.join("hard.zip")).unwrap();
        let e = spool.claim("MSEC", &new.join("hard.zip")).unwrap_err();
        assert!(e.to_string().contains("2 links"), "{e}");
        // A FIFO is opened without blocking, and refused.
        assert!(std::process::Command::new("mkfifo").arg(new.join("fifo.zip")).status().unwrap().success());
        let e = spool.claim("MSEC", &new.join("fifo.zip")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        untouched(&spool);
        assert!(new.join("link.zip").is_symlink() && new.join("hard.zip").is_file());
        assert_eq!(fs::read(&outside).unwrap(), b"secret");
    }

    #[test]
    fn an_archive_depot_cannot_read_is_claimed_all_the_same() {
        use std::os::unix::fs::PermissionsExt;
        // Failed by the pipeline, which cannot open it either, and reported;
        // left in new/ it was warned about at every pass, forever. (As
        // root the open succeeds: the same claim, by fstat.)
        let (_tmp, spool, new) = site(&[("a.zip", b"a")]);
        fs::set_permissions(new.join("a.zip"), fs::Permissions::from_mode(0o000)).unwrap();
        let e = spool.claim("MSEC", &new.join("a.zip")).unwrap();
        assert!(spool.archive(&e).is_file() && !new.join("a.zip").exists());
    }

    #[test]
    fn a_linked_sidecar_is_left_unread_and_the_deposit_goes_on() {
        let (tmp, spool, new) = site(&[("a.zip", b"a"), ("b.zip", b"b")]);
        let secret = tmp.path().join("secret.txt");
        fs::write(&secret, b"d41d8cd98f00b204e9800998ecf8427e TOPSECRET").unwrap();
        std::os::unix::fs::symlink(&secret, new.join("a.zip.md5")).unwrap();
        fs::hard_link(&secret, new.join("b.zip.md5")).unwrap();
        for n in ["a.zip", "b.zip"] {
            let e = spool.claim("MSEC", &new.join(n)).unwrap();
            assert!(!e.sidecar && spool.sidecar(&e).is_none());
            assert!(!spool.root.join(format!("{}.md5", e.id)).exists());
            assert_eq!(e.invalid_name, None);
        }
        assert!(new.join("a.zip.md5").is_symlink() && new.join("b.zip.md5").is_file());
    }

    #[test]
    fn the_claim_records_what_fstat_saw() {
        let (_tmp, spool, new) = site(&[("a.zip", b"abc")]);
        let m = fs::metadata(new.join("a.zip")).unwrap();
        let e = spool.claim("MSEC", &new.join("a.zip")).unwrap();
        assert_eq!((e.dev, e.ino, e.size), (Some(m.dev()), Some(m.ino()), 3));
        assert_eq!(e.mtime_ns, Some(m.mtime() * 1_000_000_000 + m.mtime_nsec()));
        assert_eq!(spool.load_with_outcome(&e.id).unwrap(), Some((e.clone(), None)));
        // A record of an older version (none of these fields) still reads.
        let old = r#"{"id":"20260101T000000Z-MSEC-0000abcd","producer":"MSEC","name":"a.zip","claimed_ns":1,"size":1,"sidecar":false,"created":"t"}"#;
        let e: Entry = serde_json::from_str(old).unwrap();
        assert_eq!((e.dev, e.ino, e.mtime_ns, e.invalid_name), (None, None, None, None));
    }

    #[test]
    fn names_that_cannot_be_stored_are_claimed_under_a_safe_name() {
        let (_tmp, spool, new) = site(&[]);
        let long = "x".repeat(248) + ".zip";
        let names: [(&[u8], &str); 4] = [
            (b"\xff\xfe.zip", "not UTF-8"),
            (b"\x1b[31m.zip", "control characters"),
            ("caf\u{85}.zip".as_bytes(), "control characters"),
            (long.as_bytes(), "longer than 251 bytes"),
        ];
        for (raw, why) in names {
            let path = new.join(OsStr::from_bytes(raw));
            fs::write(&path, b"zip").unwrap();
            let mut side = path.clone().into_os_string();
            side.push(".md5");
            if raw.len() < 250 {
                fs::write(&side, b"m").unwrap();
            }
            let e = spool.claim("MSEC", &path).unwrap();
            assert_eq!(e.name, format!("{}.zip", e.id));
            let msg = e.invalid_name.clone().unwrap();
            assert!(msg.contains(why) && msg.contains("rename the file"), "{msg}");
            assert!(!msg.chars().any(char::is_control), "{msg:?}");
            assert!(msg.contains(&format!("{:?}", OsStr::from_bytes(raw))), "{msg}");
            assert_eq!(fs::read(spool.archive(&e)).unwrap(), b"zip");
            assert_eq!(e.sidecar, raw.len() < 250);
            assert!(!path.exists() && !Path::new(&side).exists());
        }
        // Names of depot's own files beside a rejected archive.
        for reserved in ["report.json", "report.txt", "retried"] {
            let path = new.join(reserved);
            fs::write(&path, b"zip").unwrap();
            let e = spool.claim("MSEC", &path).unwrap();
            assert_eq!(e.name, format!("{}.zip", e.id));
            let msg = e.invalid_name.clone().unwrap();
            assert!(msg.contains("depot's own files") && msg.contains(reserved), "{msg}");
        }
        // A name of 251 bytes is stored as it is.
        let fits = "y".repeat(247) + ".zip";
        fs::write(new.join(&fits), b"zip").unwrap();
        let e = spool.claim("MSEC", &new.join(&fits)).unwrap();
        assert_eq!((e.name.as_str(), e.invalid_name.as_deref()), (fits.as_str(), None));
    }

    #[test]
    fn a_give_back_never_replaces_a_newer_upload() {
        let (_tmp, spool, new) = site(&[("a.zip", b"old"), ("a.zip.md5", b"old md5")]);
        let e = spool.claim("MSEC", &new.join("a.zip")).unwrap();
        // The claim never reached the disk's records; meanwhile a newer
        // upload of the same name arrived.
        fs::remove_file(spool.root.join(format!("{}.json", e.id))).unwrap();
        fs::write(new.join("a.zip"), b"newer").unwrap();
        assert!(spool.list().unwrap().is_empty());
        assert_eq!(fs::read(new.join("a.zip")).unwrap(), b"newer");
        assert!(!new.join("a.zip.md5").exists(), "the old sidecar must not pair with the newer upload");
        let kept = new.join(format!("a.zip.returned-{}", e.id));
        assert_eq!(fs::read(&kept).unwrap(), b"old");
        assert_eq!(fs::read(new.join(format!("a.zip.returned-{}.md5", e.id))).unwrap(), b"old md5");
        untouched(&spool);
        // Too long for the suffix: the id alone.
        let long = OsString::from("z".repeat(240));
        assert_eq!(returned_name(&long, &e.id), OsString::from(format!("{}.returned", e.id)));
        let mut long_md5 = long.clone();
        long_md5.push(".md5");
        assert_eq!(returned_name(&long_md5, &e.id), OsString::from(format!("{}.returned.md5", e.id)));
    }

    #[test]
    fn a_file_swapped_in_goes_back() {
        let (tmp, spool, new) = site(&[("a.zip", b"checked")]);
        let m = fs::metadata(new.join("a.zip")).unwrap();
        // What the claim does when the inode renamed in is not the one it
        // checked: back to new/, beside whatever took the name meanwhile.
        let swapped = spool.root.join("x");
        fs::write(tmp.path().join("other"), b"other").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("other"), &swapped).unwrap();
        assert!(!same_file(&swapped, &m));
        let back = return_to_new(&swapped, &new, OsStr::new("a.zip"), "20260101T000000Z-MSEC-0000abcd").unwrap();
        assert_eq!(back, new.join("a.zip.returned-20260101T000000Z-MSEC-0000abcd"));
        assert!(back.is_symlink() && fs::read(new.join("a.zip")).unwrap() == b"checked");
        assert!(same_file(&new.join("a.zip"), &m));
    }
}
