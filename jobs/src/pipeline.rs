//! One deposit from "a worker took it" to "published" or "rejected", in the
//! SPEC's stages. `check` runs every check and writes nothing outside a
//! scratch folder; `ingest` also publishes; `finish` rotates and reports.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Code, Error, IoContext, Result, Stage};
use crate::md5sums::{Algo, Digest, Sum, Want};
use crate::plan::{self, Plan};
use crate::publish::{self, Published, Request, Staging, Step};
use crate::report::{Report, ReportBase};
use crate::rotate::{self, Deposited};
use crate::s3::{self, Bucket, Locks};
use crate::settings::Settings;
use crate::unpack::{self, FileRecord, Progress, Store, Target, Unpacked};
use crate::validate;
use crate::verify::{self, Sidecar};

/// One deposit, as handed to a worker.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    pub id: &'a str,
    pub producer: &'a str,
    /// Where the archive is now.
    pub archive: &'a Path,
    /// The name it was dropped under (reports, `previous/`).
    pub name: &'a str,
    /// `<name>.md5` beside it, if the producer sent one.
    pub sidecar: Option<&'a Path>,
    pub settings: &'a Settings,
}

/// What an accepted deposit holds.
#[derive(Debug, Clone)]
pub struct Summary {
    pub files: Vec<FileRecord>,
    pub file_count: u64,
    pub total_bytes: u64,
    /// What the deposit should have done otherwise, without being refused
    /// for it (a bag's RFC "SHOULD"s).
    pub warnings: Vec<String>,
}

/// The sidecar is tiny; more than this is not an md5 line.
const MAX_SIDECAR: u64 = 4096;

/// A sidecar as read: its digest and the bytes it took in memory.
struct SidecarMd5 {
    md5: Digest,
    bytes: u64,
}

/// A `<name>.sha256` / `<name>.sha512` sidecar as read.
struct SidecarSum {
    name: String,
    sum: Sum,
    bytes: u64,
}

/// The `.sha256`/`.sha512` sidecars of the archive: beside it, named as
/// its `.md5` sidecar is (`<archive>.sha256`: the spool keeps them under
/// the deposit id, `depot check` finds them beside the archive).
fn other_sidecars(job: &Job<'_>, mut budget: u64, progress: &dyn Progress) -> Result<Vec<SidecarSum>> {
    let mut out = Vec::new();
    for algo in Algo::OTHERS {
        let mut path = job.archive.as_os_str().to_owned();
        path.push(".");
        path.push(algo.ext());
        let path = PathBuf::from(path);
        if fs::symlink_metadata(&path).is_err() {
            continue;
        }
        let name = format!("{}.{}", job.name, algo.ext());
        let Some((text, bytes)) = read_sidecar_text(&path, &name, budget, algo, progress)? else { continue };
        budget = budget.saturating_sub(bytes);
        let sum = verify::parse_sidecar_as(&text, &name, algo)?;
        out.push(SidecarSum { name, sum, bytes });
    }
    Ok(out)
}

/// Read the sidecar, never through a symlink and never when it is not a
/// regular file (a FIFO would block, a device could be anything): such a
/// sidecar is ignored, as if there were none, and the operator is warned.
/// Its bytes count against `limits.max_metadata_bytes`, from its size
/// before they are read.
/// `name` is what the producer uploaded (`<archive>.md5`), which reports
/// say: the path may be depot's spool file.
fn read_sidecar(path: &Path, name: &str, max_metadata: u64, progress: &dyn Progress) -> Result<Option<SidecarMd5>> {
    let Some((text, bytes)) = read_sidecar_text(path, name, max_metadata, Algo::Md5, progress)? else {
        return Ok(None);
    };
    Ok(Some(SidecarMd5 { md5: verify::parse_sidecar(&text, name)?, bytes }))
}

/// A sidecar's text and its size, as [`read_sidecar`] says; `name` as the
/// producer uploaded it.
fn read_sidecar_text(
    path: &Path,
    name: &str,
    max_metadata: u64,
    algo: Algo,
    progress: &dyn Progress,
) -> Result<Option<(String, u64)>> {
    use rustix::fs::{Mode, OFlags};
    let io_err = |e: std::io::Error| Error::io(Stage::Verify, format!("read {}", path.display()), e);
    let ignored = |why: &str| {
        progress.warn(&format!("sidecar {name} ignored: {why}; the archive is checked without it"));
        Ok(None)
    };
    // NONBLOCK: opening a FIFO for reading would wait for a writer.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => return ignored("it is a symbolic link"),
        // A socket cannot be opened at all.
        Err(rustix::io::Errno::NXIO) => return ignored("it is not a regular file"),
        Err(e) => return Err(io_err(e.into())),
    };
    let file = fs::File::from(fd);
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return ignored("it is not a regular file");
    }
    let bytes = meta.len().min(MAX_SIDECAR);
    if bytes > max_metadata {
        return Err(Error::reject(
            Code::LimitExceeded,
            Stage::Unpack,
            Some(name),
            format!("{name}: {bytes} bytes of metadata; limits.max_metadata_bytes is {max_metadata}"),
        ));
    }
    let mut raw = Vec::with_capacity(bytes as usize);
    file.take(bytes).read_to_end(&mut raw).map_err(io_err)?;
    let text = String::from_utf8(raw)
        .map_err(|_| Error::reject(algo.mismatch(), Stage::Verify, Some(name), format!("{name}: not text")))?;
    Ok(Some((text, bytes)))
}

/// Unpack (to `root`, or nowhere), verify and check; nothing published.
/// With a sidecar, a deposit that fails for any other reason is first
/// checked against it: when the archive does not match its sidecar, that
/// is the verdict (it was damaged on its way), not what the damage made
/// look wrong inside.
/// Where the unpack pass writes: a staging folder (`root`, with the current
/// release as `base` to link unchanged files to), an object store, or
/// nothing.
#[derive(Clone, Copy, Default)]
struct Dest<'a> {
    root: Option<&'a Path>,
    base: Option<&'a Path>,
    store: Option<&'a dyn Store>,
}

fn examine(job: &Job<'_>, dest: Dest<'_>, scratch: &Path, kept: &[String], progress: &dyn Progress) -> Result<Summary> {
    check_deposit_name(job)?;
    progress.stage(Stage::Unpack);
    // The sidecar is parsed first so a malformed one costs no unpacking.
    let max_metadata = job.settings.limits.max_metadata_bytes;
    let sidecar = match job.sidecar {
        Some(p) => read_sidecar(p, &sidecar_name(job), max_metadata, progress)?,
        None => None,
    };
    let others = other_sidecars(job, max_metadata.saturating_sub(sidecar.as_ref().map_or(0, |s| s.bytes)), progress)?;
    let validators = &job.settings.checks.validators;
    // Validators read files on local disk: the staging folder, or (for
    // `depot check` and the S3 target, which stage nothing) a copy of
    // the files they select, kept in scratch as they stream past.
    let selection = validate::Selection::new(validators);
    let local = scratch.join("validate");
    let keep = validate::Keep { inner: dest.store, root: &local, selection: &selection };
    let (dest, staged) = match dest.root {
        _ if validators.is_empty() => (dest, None),
        Some(root) => (dest, Some(root)),
        None => (Dest { store: Some(&keep), ..dest }, Some(local.as_path())),
    };
    let result = examine_with(job, dest, scratch, kept, sidecar.as_ref(), &others, progress).and_then(|summary| {
        if let Some(root) = staged {
            let files: Vec<&str> = summary.files.iter().filter_map(|f| f.published.as_deref()).collect();
            let run = validate::Run {
                root,
                tmp: &scratch.join("tmp"),
                producer: job.producer,
                deposit: job.id,
                threads: job.settings.threads(),
            };
            validate::run(validators, &files, &run, progress)?;
        }
        Ok(summary)
    });
    let archive_level = |r: &crate::error::Rejection| {
        r.entry.as_deref() == Some(job.name) && matches!(r.code, Code::Md5Mismatch | Code::ChecksumMismatch)
    };
    match result {
        Err(Error::Rejected(r)) if (sidecar.is_some() || !others.is_empty()) && !archive_level(&r) => {
            Err(sidecar_verdict(job, sidecar.as_ref().map(|s| &s.md5), &others)?.unwrap_or(Error::Rejected(r)))
        }
        result => result,
    }
}

/// `deposit_names`: judged on the name alone, before the archive is opened.
fn check_deposit_name(job: &Job<'_>) -> Result<()> {
    match &job.settings.deposit_names {
        Some(scheme) if !scheme.admits(job.name) => Err(Error::reject(
            Code::NameInvalid,
            Stage::Conflicts,
            Some(job.name),
            format!(
                "{} does not follow the naming scheme of {} for deposits: {}; upload it again under a name that does (producers.{}.deposit_names)",
                job.name,
                job.producer,
                scheme.explain("the uploaded archive's name"),
                job.producer
            ),
        )),
        _ => Ok(()),
    }
}

/// The mismatch of the archive against its sidecars, if there is one.
/// An archive over `limits.max_archive_bytes` is not read for it: that
/// limit is what a deposit may cost to look at.
fn sidecar_verdict(job: &Job<'_>, md5: Option<&Digest>, others: &[SidecarSum]) -> Result<Option<Error>> {
    let size = fs::metadata(job.archive).ctx(Stage::Verify, || format!("stat {}", job.archive.display()))?.len();
    if size > job.settings.limits.max_archive_bytes {
        return Ok(None);
    }
    let mut buf = vec![0u8; 256 << 10];
    let mut want = Want::default();
    for o in others {
        want.add(o.sum.algo);
    }
    let (actual, extra) = plan::file_sums(job.archive, &mut buf, md5.is_some(), want, |_| {})
        .ctx(Stage::Verify, || format!("read {}", job.archive.display()))?;
    if let (Some(given), Some(actual)) = (md5, actual)
        && actual != *given
    {
        return Ok(Some(verify::archive_mismatch(job.name, &actual, &sidecar_name(job), given)));
    }
    Ok(others_mismatch(job, others, &extra))
}

/// The first `.sha256`/`.sha512` sidecar the archive does not match.
fn others_mismatch(job: &Job<'_>, others: &[SidecarSum], extra: &crate::md5sums::Extra) -> Option<Error> {
    others.iter().find_map(|o| {
        let actual = extra.get(o.sum.algo)?;
        (actual != &o.sum.bytes[..]).then(|| verify::archive_mismatch_sum(job.name, actual, &o.name, &o.sum))
    })
}

/// The sidecar as the producer named it: `<archive>.md5` beside the name it
/// uploaded, not depot's spool file (`<deposit-id>.md5`), which the producer
/// never saw.
fn sidecar_name(job: &Job<'_>) -> String {
    format!("{}.md5", job.name)
}

fn examine_with(
    job: &Job<'_>,
    dest: Dest<'_>,
    scratch: &Path,
    kept: &[String],
    sidecar: Option<&SidecarMd5>,
    others: &[SidecarSum],
    progress: &dyn Progress,
) -> Result<Summary> {
    let s = job.settings;
    let mut want_archive = Want::default();
    for o in others {
        want_archive.add(o.sum.algo);
    }
    let plan: Plan = plan::build(&plan::Input {
        archive: job.archive,
        producer: job.producer,
        settings: s,
        scratch,
        has_sidecar: sidecar.is_some(),
        sidecar_bytes: sidecar.map_or(0, |s| s.bytes) + others.iter().map(|o| o.bytes).sum::<u64>(),
        kept,
    })?;
    progress.totals(plan.total_bytes, plan.total_files);
    // Now the unpacked size is known from the central directories: refuse
    // before writing rather than fill the publish filesystem.
    if let Some(root) = dest.root {
        progress.reserve(root, plan.total_bytes, s.limits.min_free_bytes)?;
    }
    let target = Target { root: dest.root, store: dest.store, fsync: s.publish.fsync, base: dest.base };
    let mut got: Unpacked =
        unpack::run(&plan, job.archive, sidecar.is_some(), want_archive, target, s.threads(), progress)?;
    for c in &plan.containers {
        if let Some(copied) = c.copied {
            let e = &plan.levels[0].entries[c.outer_entry];
            got.files.push(FileRecord {
                level: 0,
                name: e.name.clone(),
                published: None,
                size: copied.size,
                md5: Some(copied.md5),
                extra: c.extra.clone(),
            });
        }
    }
    progress.stage(Stage::Verify);
    let side_name = sidecar_name(job);
    let sidecar = sidecar.map(|side| Sidecar { name: &side_name, md5: side.md5 });
    let pair = match (&sidecar, &got.archive_md5) {
        (Some(s), Some(a)) => Some((s, a)),
        _ => None,
    };
    // An archive damaged on its way is the verdict, before its content:
    // its MD5 sidecar first (as before), then the others.
    if let Some((given, actual)) = pair
        && given.md5 != *actual
    {
        return Err(verify::archive_mismatch(job.name, actual, given.name, &given.md5));
    }
    if let Some(e) = others_mismatch(job, others, &got.archive_extra) {
        return Err(e);
    }
    verify::check(&plan, &got.files, pair, job.name, s.limits.max_path_len, s.checks.portable_names)?;
    if let Some(bag) = &plan.bag {
        crate::bagit::verify(bag, &got.files)?;
    }
    let files: Vec<FileRecord> = got.files.into_iter().filter(|f| f.published.is_some()).collect();
    // Last, so that what is wrong with the names or checksums it does
    // hold is said first.
    if files.is_empty() && !s.checks.allow_empty {
        return Err(Error::reject(
            Code::EmptyDeposit,
            Stage::Verify,
            None,
            format!(
                "the archive holds no file to publish ({} entries, none a file to publish); checks.allow_empty is off for producer {}",
                plan.levels.iter().map(|l| l.entries.len()).sum::<usize>(),
                job.producer
            ),
        ));
    }
    let warnings = plan.bag.map(|b| b.warnings).unwrap_or_default();
    Ok(Summary { file_count: files.len() as u64, total_bytes: files.iter().map(|f| f.size).sum(), files, warnings })
}

/// Every check, nothing written but in a private temp folder (compressed
/// dataset zips have to be copied out to be read).
pub fn check(job: &Job<'_>, progress: &dyn Progress) -> Result<Summary> {
    let scratch = tempfile_dir()?;
    let r = examine(job, Dest::default(), scratch.path(), &[], progress);
    drop(scratch);
    r
}

fn tempfile_dir() -> Result<TempDir> {
    let base = std::env::temp_dir();
    let p = base.join(format!(".depot-check-{}-{}", std::process::id(), crate::deposit::new_id("x")));
    fs::create_dir(&p).ctx(Stage::Unpack, || format!("create {}", p.display()))?;
    Ok(TempDir(p))
}

/// A folder removed when dropped.
struct TempDir(PathBuf);
impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Options of `ingest` that only tests and the daemon care about.
#[derive(Debug, Default, Clone, Copy)]
pub struct IngestOptions {
    pub fail_after: Option<Step>,
}

/// Unpack, verify, check and publish one deposit. On any error staging is
/// removed and `current` is as it was.
pub fn ingest(job: &Job<'_>, publish_root: &Path, opts: IngestOptions, progress: &dyn Progress) -> Result<Published> {
    let s = job.settings;
    // One publisher per producer, from reading `current` (merge, links to
    // unchanged files) to switching it: the daemon's workers and `depot
    // ingest` alike.
    let _lock = publish::lock_producer(publish_root, job.producer, &|| progress.cancelled())?;
    let kept = publish::merge_base(publish_root, job.producer, s.publish.mode)?;
    let staging = Staging::create(publish_root, job.id)?;
    let result = (|| {
        let base = publish::current_dir(publish_root, job.producer);
        let dest = Dest { root: Some(&staging.dir), base: base.as_deref(), store: None };
        let summary = examine(job, dest, &staging.scratch, &kept, progress)?;
        Ok::<_, Error>(summary)
    })();
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = staging.discard();
            return Err(e);
        }
    };
    progress.stage(Stage::Publish);
    let req = Request {
        publish_root,
        producer: job.producer,
        deposit_id: job.id,
        archive: job.name,
        mode: s.publish.mode,
        keep_releases: s.publish.keep_releases,
        fsync: s.publish.fsync,
        fail_after: opts.fail_after,
    };
    let published = publish::publish(&req, staging, &summary.files, s.checks.case_insensitive)?;
    Ok(Published { warnings: summary.warnings, ..published })
}

/// [`ingest`] to a bucket (`publish.target = "s3"`): the same checks, the
/// files streamed from the inflater into objects of
/// `<prefix>/<P>/releases/<id>/`, `manifest.json` last, then `current`
/// switched under the producer's cross-host lease. `scratch_root` holds
/// compressed dataset zips copied out (and this deposit's staging lock).
///
/// A failure removes the release's objects; what a crash leaves (a
/// release without `manifest.json`, uploads never completed) is removed
/// under the next lease of the producer, this same deposit's retry
/// included, which then publishes it once. A retry that finds its own
/// `manifest.json` already there only checks the deposit again and
/// switches `current`.
pub fn ingest_s3(
    job: &Job<'_>,
    bucket: &Bucket,
    locks: &dyn Locks,
    scratch_root: &Path,
    opts: IngestOptions,
    progress: &dyn Progress,
) -> Result<Published> {
    // A key is at most 1,024 bytes on S3: a published path gets what the
    // release's prefix leaves, checked with the names (LIMIT_EXCEEDED),
    // before a byte is sent.
    let room = S3_MAX_KEY.saturating_sub(bucket.release_key(job.producer, job.id).len() as u64);
    let narrowed;
    let job = &if room < job.settings.limits.max_path_len {
        let mut n = job.settings.clone();
        n.limits.max_path_len = room;
        narrowed = n;
        Job { settings: &narrowed, ..job.clone() }
    } else {
        job.clone()
    };
    let (s, p, id) = (job.settings, job.producer, job.id);
    let fail_after = |step: Step| publish::injected(opts.fail_after, step);
    let floor = bucket.current(p)?.map_or(0, |(cur, _)| cur.fence);
    let lease = locks.lock(p, floor, &|| progress.cancelled())?;
    bucket.clean_debris(p, &*lease)?;
    let base = match (bucket.current(p)?, s.publish.mode) {
        (Some((cur, _)), crate::settings::PublishMode::Merge) => {
            bucket.manifest(p, &cur.release)?.map(|m| (cur.release, m))
        }
        _ => None,
    };
    let kept: Vec<String> = base.iter().flat_map(|(_, m)| m.files.iter().map(|f| f.path.clone())).collect();
    // An earlier attempt got as far as the commit point; unless a
    // publisher that had lost its lease wrote it over objects removed as
    // debris since: then it is debris too.
    let committed = match bucket.manifest(p, id)? {
        Some(m) if bucket.complete(p, id, &m)? => Some(m),
        Some(_) => {
            bucket.remove_release(p, id, &*lease)?;
            None
        }
        None => None,
    };
    let staging = Staging::create(scratch_root, id)?;
    let leased = Leased { inner: progress, lease: &*lease };
    let result = match &committed {
        Some(_) => examine(job, Dest::default(), &staging.scratch, &kept, &leased),
        None => {
            let sink = bucket.sink(p, id);
            examine(job, Dest { store: Some(&sink), ..Dest::default() }, &staging.scratch, &kept, &leased)
        }
    };
    let _ = staging.discard();
    let result = match result {
        Err(Error::Cancelled) if lease.lost() => Err(lease_lost(p)),
        r => r,
    };
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            if committed.is_none() && opts.fail_after.is_none() {
                // Best effort: the next lease cleans what this leaves.
                let _ = bucket.remove_release(p, id, &*lease);
            }
            return Err(e);
        }
    };
    progress.stage(Stage::Publish);
    let manifest = match committed {
        Some(m) => m,
        None => {
            let mut files = publish::manifest_files(&summary.files);
            if let Some((from, m)) = &base {
                let kept = publish::kept_files(&m.files, &files, s.checks.case_insensitive)?;
                bucket.copy_files(p, from, id, &kept)?;
                files.extend(kept);
            }
            fail_after(Step::Linked)?;
            let m = publish::ReleaseManifest {
                archive: job.name.to_owned(),
                ..publish::ReleaseManifest::new(id, p, files)
            };
            // The commit point, only while the lease is ours: another
            // holder may have removed this release's objects as debris.
            lease.check()?;
            bucket.put_manifest(p, id, &m)?;
            m
        }
    };
    fail_after(Step::ManifestWritten)?;
    let newer = bucket.switch(p, id, &*lease)?;
    fail_after(Step::Switched)?;
    bucket.prune(p, newer.as_deref().unwrap_or(id), s.publish.keep_releases, &*lease)?;
    Ok(Published {
        release: PathBuf::from(bucket.url(bucket.release_key(p, id).trim_end_matches('/'))),
        file_count: manifest.file_count,
        total_bytes: manifest.total_bytes,
        superseded_by: newer,
        warnings: summary.warnings,
    })
}

/// The longest key S3 takes.
const S3_MAX_KEY: u64 = 1024;

fn lease_lost(p: &str) -> Error {
    Error::io(
        Stage::Publish,
        format!("producer {p}'s publish lock was lost while uploading (Redis restarted, or unreachable for 25 s)"),
        std::io::Error::other("lease lost"),
    )
}

/// The caller's progress, and the lease: uploading stops (as if cancelled)
/// once the lease is known lost, since another holder may be removing
/// this release as debris.
struct Leased<'a> {
    inner: &'a dyn Progress,
    lease: &'a dyn s3::Lease,
}

impl Progress for Leased<'_> {
    fn stage(&self, stage: Stage) {
        self.inner.stage(stage)
    }
    fn totals(&self, bytes: u64, files: u64) {
        self.inner.totals(bytes, files)
    }
    fn advance(&self, bytes: u64, files: u64) {
        self.inner.advance(bytes, files)
    }
    fn cancelled(&self) -> bool {
        self.inner.cancelled() || self.lease.lost()
    }
    fn warn(&self, msg: &str) {
        self.inner.warn(msg)
    }
    fn reserve(&self, root: &Path, need: u64, margin: u64) -> Result<()> {
        self.inner.reserve(root, need, margin)
    }
}

/// Check free space before reading the archive at all (its own size is a
/// floor; the unpacked size is checked again once the directory is read).
pub fn preflight(job: &Job<'_>, publish_root: &Path, progress: &dyn Progress) -> Result<()> {
    fs::create_dir_all(publish_root).ctx(Stage::Unpack, || format!("create {}", publish_root.display()))?;
    let size = fs::metadata(job.archive).ctx(Stage::Unpack, || format!("stat {}", job.archive.display()))?.len();
    // Unknown until the directory is read; the archive's size is a floor.
    // Asked as a reservation: beside running deposits, a shortfall is a
    // wait for them to end, not this deposit's verdict.
    progress.reserve(publish_root, size, job.settings.limits.min_free_bytes)
}

/// Move the deposit to `previous/` or `rejected/` and write the reports.
/// Returns the report (and the path of report.json for a failure).
pub fn finish(
    job: &Job<'_>,
    producer_dir: &Path,
    started: &str,
    outcome: &Result<Published>,
) -> Result<(Report, Option<PathBuf>)> {
    let base = ReportBase {
        deposit: job.id.to_owned(),
        producer: job.producer.to_owned(),
        archive: job.name.to_owned(),
        started: started.to_owned(),
    };
    let d = Deposited { archive: job.archive, sidecar: job.sidecar, name: job.name };
    match outcome {
        Ok(p) => {
            let report = Report::success(base, p.file_count, p.total_bytes, Some(p.release.display().to_string()))
                .warned(&p.warnings);
            rotate::to_previous(producer_dir, &d)?;
            Ok((report, None))
        }
        Err(e) => {
            let report = Report::failure(base, e);
            let path = rotate::to_rejected(producer_dir, &d, &report)?;
            Ok((report, Some(path)))
        }
    }
}
