//! Publishing a release so that `current` only ever points at a complete
//! one: build in staging (same filesystem), fsync, rename into `releases/`,
//! then swap the `current` symlink with a rename. A crash anywhere leaves
//! `current` on the old release or the new one, never on a half.

use std::fs::{self, DirBuilder, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

use crate::conflicts::RELEASE_MANIFEST;
use crate::error::{Error, IoContext, Result, Stage};
use crate::md5sums;
use crate::names;
use crate::settings::PublishMode;
use crate::unpack::{DIR_MODE, FILE_MODE, FileRecord};

pub const STAGING: &str = ".staging";
/// Old releases on their way out, same filesystem (see [`prune`]).
pub const PRUNED: &str = ".pruned";

/// `manifest.json` of a release (public format, see SPEC).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseManifest {
    pub deposit: String,
    pub producer: String,
    /// The name the producer uploaded the deposit under: what `depot
    /// history` shows once Redis has forgotten the deposit (only the
    /// current release's archive stays in `previous/`). Absent from
    /// manifests of older versions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub archive: String,
    pub created: String,
    pub file_count: u64,
    pub total_bytes: u64,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    pub md5: String,
    /// Only where the producer gave one and it was verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

pub fn releases_dir(publish_root: &Path, producer: &str) -> PathBuf {
    publish_root.join(producer).join("releases")
}

pub fn current_link(publish_root: &Path, producer: &str) -> PathBuf {
    publish_root.join(producer).join("current")
}

/// A release under construction, locked against `clean_stale` for as long
/// as this value lives (another process's cleanup must not eat it). The
/// lock is an flock on the staging folder itself: a lock file and an eager
/// scratch folder were two more inodes made and removed per deposit, and on
/// ext4 without a journal every removed inode slows the next creations.
#[derive(Debug)]
pub struct Staging {
    pub dir: PathBuf,
    /// Beside `dir`, never published, made on first use: compressed
    /// dataset zips copied out.
    pub scratch: PathBuf,
    _lock: File,
}

fn lock_dir(dir: &Path) -> io::Result<Option<File>> {
    let f = File::open(dir)?;
    match flock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(f)),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Staging {
    pub fn create(publish_root: &Path, deposit_id: &str) -> Result<Staging> {
        let root = publish_root.join(STAGING);
        mkdir_p(&root, Stage::Unpack)?;
        let dir = root.join(deposit_id);
        let busy = || {
            Error::io(
                Stage::Unpack,
                format!("deposit {deposit_id} is being processed by another process"),
                io::Error::from(io::ErrorKind::WouldBlock),
            )
        };
        // A previous attempt of this same deposit may have left a half;
        // a live one holds its lock.
        match lock_dir(&dir) {
            Ok(Some(_stale)) => remove_any(&dir).ctx(Stage::Unpack, || format!("remove stale {}", dir.display()))?,
            Ok(None) => return Err(busy()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(Stage::Unpack, format!("open {}", dir.display()), e)),
        }
        let scratch = root.join(format!("{deposit_id}.scratch"));
        remove_any(&scratch).ctx(Stage::Unpack, || format!("remove stale {}", scratch.display()))?;
        match DirBuilder::new().mode(DIR_MODE).create(&dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(busy()),
            r => r.ctx(Stage::Unpack, || format!("create {}", dir.display()))?,
        }
        let lock = lock_dir(&dir).ctx(Stage::Unpack, || format!("lock {}", dir.display()))?.ok_or_else(busy)?;
        Ok(Staging { dir, scratch, _lock: lock })
    }

    /// Remove what is left (after a failure, or after the rename).
    pub fn discard(self) -> io::Result<()> {
        remove_any(&self.dir)?;
        remove_any(&self.scratch)
    }
}

/// Lock files of [`lock_producer`], one per producer.
pub const LOCKS: &str = ".locks";

/// The right to publish for one producer, from staging to `current`:
/// held by the daemon's workers and by `depot ingest` alike, across
/// processes (and across hosts whose shared filesystem honours `flock`, as
/// NFSv4 and CephFS do). Released when dropped (or when the process dies:
/// a crash never leaves a stale lock).
#[derive(Debug)]
pub struct ProducerLock {
    _file: File,
}

/// Wait for the producer's publish lock. `cancelled` is asked while
/// waiting, so that a shutdown is not held up by another process's long
/// publish; the wait backs off to 500 ms between tries.
pub fn lock_producer(publish_root: &Path, producer: &str, cancelled: &dyn Fn() -> bool) -> Result<ProducerLock> {
    let dir = publish_root.join(LOCKS);
    mkdir_p(&dir, Stage::Unpack)?;
    let path = dir.join(format!("{producer}.lock"));
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .ctx(Stage::Unpack, || format!("open {}", path.display()))?;
    let mut wait = std::time::Duration::from_millis(10);
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(ProducerLock { _file: file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {}
            Err(e) => return Err(Error::io(Stage::Unpack, format!("lock {}", path.display()), e.into())),
        }
        if cancelled() {
            return Err(Error::Cancelled);
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(std::time::Duration::from_millis(500));
    }
}

/// The time part of a deposit id (`yyyymmddThhmmssZ`), which sorts.
pub fn id_time(id: &str) -> &str {
    id.get(..16).unwrap_or(id)
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) }
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) => ignore_missing(e),
    }
}

/// Remove staging left by crashed runs: every folder whose lock nobody
/// holds, a scratch folder with its release folder. Lock files of older
/// versions (`<id>.lock`) go too when nobody holds them. Returns what was
/// removed.
pub fn clean_stale(publish_root: &Path) -> io::Result<Vec<PathBuf>> {
    let root = publish_root.join(STAGING);
    let mut removed = Vec::new();
    let rd = match fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for ent in rd {
        let ent = ent?;
        let path = ent.path();
        let name = ent.file_name();
        let name = name.to_string_lossy();
        // Deposit ids are plain names: `<id>`, `<id>.scratch`, `<id>.lock`.
        let stem = name.split('.').next().unwrap_or(&name);
        let held = match lock_dir(&root.join(stem)) {
            Ok(lock) => lock.is_none(),
            Err(_) => {
                // No release folder: an old-style lock file may still guard it.
                match File::open(root.join(format!("{stem}.lock"))) {
                    Ok(f) => flock(&f, FlockOperation::NonBlockingLockExclusive).is_err(),
                    Err(_) => false,
                }
            }
        };
        if !held && fs::symlink_metadata(&path).is_ok() {
            remove_any(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

fn mkdir_p(p: &Path, stage: Stage) -> Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(p).ctx(stage, || format!("create {}", p.display()))
}

fn fsync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

/// The steps of a publish, for tests that inject a failure after each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Linked,
    ManifestWritten,
    Synced,
    Renamed,
    Switched,
    Pruned,
}

pub struct Request<'a> {
    pub publish_root: &'a Path,
    pub producer: &'a str,
    pub deposit_id: &'a str,
    /// The archive's name as uploaded, for the manifest.
    pub archive: &'a str,
    pub mode: PublishMode,
    pub keep_releases: u32,
    pub fsync: bool,
    /// Test hook: fail right after this step, as a crash would.
    pub fail_after: Option<Step>,
}

impl Request<'_> {
    fn step(&self, s: Step) -> Result<()> {
        injected(self.fail_after, s)
    }
}

/// The test hook of both targets: fail right after step `s`, as a crash would.
pub fn injected(fail_after: Option<Step>, s: Step) -> Result<()> {
    if fail_after == Some(s) {
        return Err(Error::io(Stage::Publish, format!("injected failure after {s:?}"), io::Error::other("injected")));
    }
    Ok(())
}

/// The delivered files as a release manifest lists them.
pub fn manifest_files(delivered: &[FileRecord]) -> Vec<ManifestFile> {
    delivered
        .iter()
        .filter_map(|f| {
            Some(ManifestFile {
                path: f.published.clone()?,
                size: f.size,
                md5: f.md5.as_ref().map(md5sums::hex)?,
                sha256: f.extra.sha256.as_deref().map(md5sums::hex_of),
            })
        })
        .collect()
}

/// What a merge keeps of the current release: its files whose names the
/// delivered ones do not take. The names come from our own manifest but
/// are checked anyway: the manifest is a file (or an object) like any other.
pub fn kept_files(
    current: &[ManifestFile],
    delivered: &[ManifestFile],
    case_insensitive: bool,
) -> Result<Vec<ManifestFile>> {
    let taken: std::collections::HashSet<String> =
        delivered.iter().map(|f| names::conflict_key(&f.path, case_insensitive)).collect();
    let mut kept = Vec::new();
    for f in current {
        if taken.contains(&names::conflict_key(&f.path, case_insensitive)) {
            continue;
        }
        names::check_name(&f.path, u64::MAX).map_err(|e| {
            Error::io(Stage::Publish, format!("current release lists {:?}", f.path), io::Error::other(e.why))
        })?;
        kept.push(f.clone());
    }
    Ok(kept)
}

impl ReleaseManifest {
    /// A release's manifest, its files sorted by path.
    pub fn new(deposit: &str, producer: &str, mut files: Vec<ManifestFile>) -> ReleaseManifest {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        ReleaseManifest {
            deposit: deposit.to_owned(),
            producer: producer.to_owned(),
            archive: String::new(),
            created: crate::deposit::now_rfc3339(),
            file_count: files.len() as u64,
            total_bytes: files.iter().map(|f| f.size).sum(),
            files,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Published {
    pub release: PathBuf,
    pub file_count: u64,
    pub total_bytes: u64,
    /// `current` was left on this newer release (see [`publish`]).
    pub superseded_by: Option<String>,
    /// What the deposit should have done otherwise, without being refused
    /// for it (a bag without Payload-Oxum): for the report.
    pub warnings: Vec<String>,
}

/// The folder `current` points at, if any.
pub fn current_dir(publish_root: &Path, producer: &str) -> Option<PathBuf> {
    let link = current_link(publish_root, producer);
    let target = fs::read_link(&link).ok()?;
    Some(link.parent().unwrap_or(publish_root).join(target))
}

/// The release `current` points at, if any, with its manifest.
pub fn read_current(publish_root: &Path, producer: &str) -> Result<Option<(PathBuf, ReleaseManifest)>> {
    let link = current_link(publish_root, producer);
    let target = match fs::read_link(&link) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(Stage::Publish, format!("read {}", link.display()), e)),
    };
    let dir = link.parent().unwrap_or(publish_root).join(target);
    let path = dir.join(RELEASE_MANIFEST);
    let bytes = fs::read(&path).ctx(Stage::Publish, || format!("read {}", path.display()))?;
    let m = serde_json::from_slice(&bytes)
        .map_err(|e| Error::io(Stage::Publish, format!("parse {}", path.display()), io::Error::other(e)))?;
    Ok(Some((dir, m)))
}

/// Paths of the current release that a merge keeps (all of them; the
/// delivered files replace their namesakes later).
pub fn merge_base(publish_root: &Path, producer: &str, mode: PublishMode) -> Result<Vec<String>> {
    if mode != PublishMode::Merge {
        return Ok(Vec::new());
    }
    Ok(read_current(publish_root, producer)?
        .map(|(_, m)| m.files.into_iter().map(|f| f.path).collect())
        .unwrap_or_default())
}

/// Turn a filled staging folder into the current release.
pub fn publish(
    req: &Request<'_>,
    staging: Staging,
    delivered: &[FileRecord],
    case_insensitive: bool,
) -> Result<Published> {
    let counts = match build_release(req, &staging, delivered, case_insensitive) {
        Ok(c) => c,
        // An injected failure plays a crash: staging stays for `clean_stale`.
        Err(e) if req.fail_after.is_some() => return Err(e),
        Err(e) => {
            let _ = staging.discard();
            return Err(e);
        }
    };
    let (file_count, total_bytes) = counts;
    let releases = releases_dir(req.publish_root, req.producer);
    mkdir_p(&releases, Stage::Publish)?;
    let release = releases.join(req.deposit_id);
    if release.join(RELEASE_MANIFEST).exists() {
        // An earlier attempt of this deposit got this far: its release is
        // complete (it got here by rename); keep it and go on.
        staging.discard().ctx(Stage::Publish, || "remove staging".into())?;
    } else {
        remove_any(&release).ctx(Stage::Publish, || format!("remove {}", release.display()))?;
        fs::rename(&staging.dir, &release).ctx(Stage::Publish, || format!("rename into {}", release.display()))?;
        if req.fsync {
            fsync_dir(&releases).ctx(Stage::Publish, || "fsync releases".into())?;
        }
        staging.discard().ctx(Stage::Publish, || "remove staging lock".into())?;
    }
    req.step(Step::Renamed)?;

    // `current` never moves back: a deposit dropped before one that was
    // published first (by `depot ingest`, or a retry) is kept as a release
    // but does not replace the newer state.
    // An id dated in the future is not newer: the clock was stepped back
    // since it was made, and every deposit until the clock caught up would
    // otherwise leave `current` behind a SUCCESS.
    let now = crate::deposit::stamp_now();
    let newer = current_dir(req.publish_root, req.producer)
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|cur| id_time(cur) > id_time(req.deposit_id) && id_time(cur) <= now.as_str());
    if newer.is_none() {
        switch_current(req.publish_root, req.producer, req.deposit_id, req.fsync)?;
    }
    req.step(Step::Switched)?;

    prune(req.publish_root, req.producer, newer.as_deref().unwrap_or(req.deposit_id), req.keep_releases)
        .ctx(Stage::Publish, || "remove old releases".into())?;
    req.step(Step::Pruned)?;
    Ok(Published { release, file_count, total_bytes, superseded_by: newer, warnings: Vec::new() })
}

/// Folders 0755 whatever the umask, and their entries on disk.
fn settle_dirs(dir: &Path, fsync: bool) -> io::Result<()> {
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        if ent.file_type()?.is_dir() {
            settle_dirs(&ent.path(), fsync)?;
        }
    }
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
    if fsync {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Point `current` at `releases/<id>`: a new symlink renamed over the old,
/// which is atomic on POSIX filesystems.
///
/// The old link is first hard-linked into [`PRUNED`], so the rename does
/// not free its inode in the middle of a burst: every symlink made in that
/// folder's group would otherwise scan past it for a minute or more (see
/// [`prune`]); measured as 13% of the daemon's CPU time over 2,000 small
/// deposits. It goes when the trash is emptied.
fn switch_current(publish_root: &Path, producer: &str, id: &str, fsync: bool) -> Result<()> {
    let pdir = publish_root.join(producer);
    let tmp = pdir.join(format!(".current.{id}.tmp"));
    let cur = pdir.join("current");
    remove_any(&tmp).ctx(Stage::Publish, || format!("remove {}", tmp.display()))?;
    symlink(Path::new("releases").join(id), &tmp).ctx(Stage::Publish, || format!("symlink {}", tmp.display()))?;
    // Best effort: without it the old link is freed by the rename, as usual.
    let _ = trash_dir(publish_root)
        .and_then(|trash| fs::hard_link(&cur, trash.join(format!("{producer}-{id}.current-before"))));
    fs::rename(&tmp, &cur).ctx(Stage::Publish, || "switch current".into())?;
    if fsync {
        fsync_dir(&pdir).ctx(Stage::Publish, || format!("fsync {}", pdir.display()))?;
    }
    Ok(())
}

/// Keep the newest `keep` releases and never the one `current` points at.
/// Newest by folder mtime (set when its manifest was written; one
/// producer's publishes are serialised), then by id: two deposits of one
/// second have ids that do not sort by drop order.
///
/// An old release leaves `releases/` by a rename into [`PRUNED`]; it is
/// deleted later by [`empty_pruned`] (the daemon does it when idle or every
/// half minute). On ext4 without a journal each deleted inode makes every
/// inode created in its group for the next minute (up to six while its
/// inode table block is dirty) slower, `recently_deleted` being a linear
/// scan: deleting five inodes per deposit in the middle of a burst of small
/// deposits slowed the deposits after them (bench/daemon.py).
fn prune(publish_root: &Path, producer: &str, current_id: &str, keep: u32) -> io::Result<()> {
    let releases = releases_dir(publish_root, producer);
    let mut rels: Vec<(std::time::SystemTime, String)> = fs::read_dir(&releases)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| {
            let t = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
            (t, e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    rels.sort();
    let excess = rels.len().saturating_sub(keep as usize);
    for (_, id) in rels.into_iter().take(excess) {
        if id != current_id {
            let trash = trash_dir(publish_root)?;
            let dst = trash.join(format!("{producer}-{id}"));
            remove_any(&dst)?;
            fs::rename(releases.join(&id), &dst)?;
        }
    }
    Ok(())
}

/// [`PRUNED`], made if missing.
fn trash_dir(publish_root: &Path) -> io::Result<PathBuf> {
    let trash = publish_root.join(PRUNED);
    match DirBuilder::new().mode(0o700).create(&trash) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(trash),
    }
}

/// Delete the releases [`prune`] set aside (and the old `current` links
/// [`switch_current`] kept). Returns how many.
pub fn empty_pruned(publish_root: &Path) -> io::Result<usize> {
    let rd = match fs::read_dir(publish_root.join(PRUNED)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for ent in rd {
        remove_any(&ent?.path())?;
        n += 1;
    }
    Ok(n)
}

/// Refuse to start when the publish filesystem would drop below the margin.
pub fn check_free_space(publish_root: &Path, need: u64, margin: u64) -> Result<()> {
    let st = rustix::fs::statvfs(publish_root)
        .map_err(io::Error::from)
        .ctx(Stage::Unpack, || format!("statvfs {}", publish_root.display()))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < need.saturating_add(margin) {
        return Err(Error::io(
            Stage::Unpack,
            format!(
                "{} has {free} bytes free; the deposit needs {need} plus limits.min_free_bytes {margin}",
                publish_root.display()
            ),
            io::Error::from_raw_os_error(28),
        ));
    }
    Ok(())
}

/// Everything up to a complete, synced release folder in staging.
fn build_release(
    req: &Request<'_>,
    staging: &Staging,
    delivered: &[FileRecord],
    case_insensitive: bool,
) -> Result<(u64, u64)> {
    let mut files = manifest_files(delivered);
    if req.mode == PublishMode::Merge
        && let Some((dir, current)) = read_current(req.publish_root, req.producer)?
    {
        for f in kept_files(&current.files, &files, case_insensitive)? {
            let dst = staging.dir.join(&f.path);
            if let Some(parent) = dst.parent() {
                mkdir_p(parent, Stage::Publish)?;
            }
            fs::hard_link(dir.join(&f.path), &dst).ctx(Stage::Publish, || format!("link {}", f.path))?;
            files.push(f);
        }
    }
    req.step(Step::Linked)?;

    let manifest = ReleaseManifest {
        archive: req.archive.to_owned(),
        ..ReleaseManifest::new(req.deposit_id, req.producer, files)
    };
    let (file_count, total_bytes) = (manifest.file_count, manifest.total_bytes);
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::io(Stage::Publish, "encode manifest", io::Error::other(e)))?;
    let mpath = staging.dir.join(RELEASE_MANIFEST);
    let mut mf = File::create(&mpath).ctx(Stage::Publish, || "create manifest.json".into())?;
    mf.write_all(&json).ctx(Stage::Publish, || "write manifest.json".into())?;
    mf.set_permissions(Permissions::from_mode(FILE_MODE)).ctx(Stage::Publish, || "chmod manifest.json".into())?;
    if req.fsync {
        mf.sync_all().ctx(Stage::Publish, || "fsync manifest.json".into())?;
    }
    drop(mf);
    req.step(Step::ManifestWritten)?;

    settle_dirs(&staging.dir, req.fsync).ctx(Stage::Publish, || "fsync staging folders".into())?;
    req.step(Step::Synced)?;
    Ok((file_count, total_bytes))
}
