//! Moving the deposit out of the way once it has an outcome: `previous/`
//! keeps the last good one, `rejected/<deposit-id>/` each failed one with
//! its reports.
//!
//! Also the file primitives that custody needs wherever a producer's names
//! are handled (the daemon's claim and give-back, `depot retry`): a producer
//! controls the names, links and timing of what is in its `new/`, so a file
//! there is opened without following a link, and no rename replaces a name
//! it did not mean to.

use std::fs::{self, DirBuilder, File};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, Mode, OFlags, RenameFlags};

use crate::error::{Code, Error, IoContext, Result, Stage};
use crate::report::Report;

pub const PREVIOUS: &str = "previous";
pub const REJECTED: &str = "rejected";
/// In `rejected/<deposit-id>/`: the reports, and the mark `depot retry`
/// leaves before it moves the deposit back (a second retry is refused).
pub const REPORT_JSON: &str = "report.json";
pub const REPORT_TXT: &str = "report.txt";
pub const RETRIED: &str = "retried";

/// Names of depot's own files in `rejected/<deposit-id>/`: an upload of
/// one of these names cannot be kept there under its own name (it would
/// replace a report, or be taken for one by `depot retry`), so it is
/// treated as a name that cannot be stored (NAME_INVALID, kept under a
/// name of depot's own).
pub fn reserved_name(name: &str) -> bool {
    [REPORT_JSON, REPORT_TXT, RETRIED].contains(&name)
}

/// The deposit's files as they are now (in the spool or wherever `depot
/// ingest` was pointed at), and the name they were dropped under.
pub struct Deposited<'a> {
    pub archive: &'a Path,
    pub sidecar: Option<&'a Path>,
    pub name: &'a str,
}

/// Open for reading without following a link at the last component (ELOOP
/// instead), and without blocking: a FIFO swapped in for a file would
/// otherwise wait for a writer forever. The caller fstats what it got.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Rename that fails with `AlreadyExists` rather than replace what `to`
/// names (a newer upload, another deposit's file). renameat2's
/// RENAME_NOREPLACE; where the filesystem lacks it (NFS, CIFS: EINVAL), a
/// hard link then an unlink, which fails on an existing name just the same;
/// where that is refused too, a look before the rename (the one case with
/// a window, on filesystems that offer nothing better).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => match fs::hard_link(from, to) {
            Ok(()) => fs::remove_file(from),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
            Err(_) => match fs::symlink_metadata(to) {
                Ok(_) => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
                Err(_) => fs::rename(from, to),
            },
        },
        Err(e) => Err(e.into()),
    }
}

/// Move a file without replacing anything at `to`; across filesystems
/// (`depot ingest /tmp/x.zip`) a copy, fsynced, then renamed in the same
/// way, then the source removed.
pub fn move_file(from: &Path, to: &Path) -> io::Result<()> {
    move_with(from, to, rename_noreplace)
}

/// `previous/` only: what it held under the deposit's name is meant to go.
fn move_replacing(from: &Path, to: &Path) -> io::Result<()> {
    move_with(from, to, |a, b| fs::rename(a, b))
}

fn move_with(from: &Path, to: &Path, rename: impl Fn(&Path, &Path) -> io::Result<()>) -> io::Result<()> {
    match rename(from, to) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            // A short name of depot's own: `.<name>.moving` does not fit
            // beside a name of 250 bytes.
            let tmp = to.with_file_name(format!(".depot-moving-{}", std::process::id()));
            let copied = (|| {
                let mut src = open_nofollow(from)?;
                if !src.metadata()?.is_file() {
                    return Err(io::Error::other("not a regular file"));
                }
                let _ = fs::remove_file(&tmp); // a crash's leftover
                let mut dst = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
                io::copy(&mut src, &mut dst)?;
                dst.sync_all()?;
                rename(&tmp, to)
            })();
            if let Err(e) = copied {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            fs::remove_file(from)
        }
        r => r,
    }
}

/// Make the file at `path` depot's from now on: an archive kept in
/// `previous/` or `rejected/<id>/` arrived as the producer's file (a
/// rename keeps the owner), and the producer could otherwise rewrite its
/// bytes over sftp after the verdict. Given to this process's user when
/// the process may (root, CAP_CHOWN); else (the shipped unit grants no
/// capability) copied into a new file of depot's (copy_file_range through
/// `io::copy`, mtime kept) renamed over it, the producer's inode dropped.
/// Mode 0644 either way: the producer reads it, never changes it.
pub fn make_ours(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let f = open_nofollow(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
    let ours = m.uid() == uid.as_raw()
        || rustix::fs::fchown(&f, Some(uid), Some(gid))
            .is_ok_and(|()| f.metadata().is_ok_and(|m| m.uid() == uid.as_raw()));
    if ours {
        return f.set_permissions(fs::Permissions::from_mode(0o644));
    }
    copy_as_ours(f, &m, path)
}

/// The fallback of [`make_ours`]: a copy of depot's renamed over `path`.
pub fn copy_as_ours(mut f: File, m: &fs::Metadata, path: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_file_name(format!(".depot-owning-{}", std::process::id()));
    let _ = fs::remove_file(&tmp); // a crash's leftover
    let done = (|| {
        let mut dst = fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
        io::copy(&mut f, &mut dst)?;
        dst.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        dst.set_times(fs::FileTimes::new().set_modified(m.modified()?))?;
        dst.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if done.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    done
}

/// Is `p` a folder itself, not a symlink to one? `previous/` and
/// `rejected/` receive deposits and have files removed from them: a link
/// there would send both wherever it points. Used by the start-up checks
/// too, so that `depot run` refuses such a site rather than fail at every
/// rotation.
pub fn check_real_dir(p: &Path) -> io::Result<()> {
    let m = fs::symlink_metadata(p)?;
    if m.file_type().is_symlink() {
        Err(io::Error::other(format!("{} is a symlink; it must be a real folder", p.display())))
    } else if !m.is_dir() {
        Err(io::Error::other(format!("{} is not a folder", p.display())))
    } else {
        Ok(())
    }
}

/// `p` as a real folder, made if missing (its parent too: `depot ingest`
/// may be the first to touch a producer). An error is an I/O error, which
/// the daemon retries with backoff while the operator mends the folder.
fn ensure_real_dir(p: &Path) -> Result<()> {
    match check_real_dir(p) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(Error::io(Stage::Rotate, format!("refusing {}", p.display()), e));
        }
        Err(_) => {}
    }
    if let Some(parent) = p.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .ctx(Stage::Rotate, || format!("create {}", parent.display()))?;
    }
    match DirBuilder::new().mode(0o755).create(p) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(Error::io(Stage::Rotate, format!("create {}", p.display()), e))
        }
        // Made by us, or by someone in between: judged again either way.
        _ => check_real_dir(p).ctx(Stage::Rotate, || format!("refusing {}", p.display())),
    }
}

/// [`make_ours`] for a rotated file. `archive`: it must be there, a
/// regular file; a sidecar may be missing, or be a link or a special file
/// (kept as it came, never followed: it was never read either).
fn owned(p: &Path, archive: bool) -> Result<()> {
    match make_ours(p) {
        Err(_) if !archive && fs::symlink_metadata(p).map_or(true, |m| !m.is_file()) => Ok(()),
        r => r.ctx(Stage::Rotate, || format!("make {} depot's", p.display())),
    }
}

fn sync_dir(p: &Path) -> Result<()> {
    File::open(p).and_then(|f| f.sync_all()).ctx(Stage::Rotate, || format!("fsync {}", p.display()))
}

/// A name that stays one entry of the folder it is joined to.
fn plain_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::io(
            Stage::Rotate,
            format!("deposit name {name:?}"),
            io::Error::from(io::ErrorKind::InvalidInput),
        ));
    }
    Ok(())
}

/// Success: the deposit (and sidecar) replace whatever `previous/` held.
pub fn to_previous(producer_dir: &Path, d: &Deposited<'_>) -> Result<PathBuf> {
    plain_name(d.name)?;
    let prev = producer_dir.join(PREVIOUS);
    ensure_real_dir(&prev)?;
    let keep =
        [d.name.to_owned(), format!("{}.md5", d.name), format!("{}.sha256", d.name), format!("{}.sha512", d.name)];
    for ent in fs::read_dir(&prev).ctx(Stage::Rotate, || format!("list {}", prev.display()))? {
        let ent = ent.ctx(Stage::Rotate, || format!("list {}", prev.display()))?;
        let p = ent.path();
        // lstat: a link is removed as a link, never followed into a
        // folder elsewhere.
        let real_dir = fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_dir());
        if keep.iter().any(|k| ent.file_name() == k.as_str()) && !real_dir {
            continue; // replaced by the rename below
        }
        let r = if real_dir { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
        match r {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(Error::io(Stage::Rotate, format!("remove {}", p.display()), e));
            }
            _ => {}
        }
    }
    // The sidecar first: the archive leaving the spool is what says the
    // rotation is done, so a crash between the two must leave the archive
    // behind (the rotation runs again), never the sidecar (it would be
    // lost, and the new archive would sit beside the old deposit's .md5).
    // A sidecar already in place (moved by an attempt a crash cut short)
    // is passed as its own path: renaming it onto itself changes nothing.
    for (from, ext) in other_sidecars(d.archive) {
        let side = prev.join(format!("{}.{ext}", d.name));
        match from {
            Some(s) => {
                move_replacing(&s, &side).ctx(Stage::Rotate, || format!("move sidecar to {}", side.display()))?
            }
            None => fs::remove_file(&side)
                .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .ctx(Stage::Rotate, || format!("remove {}", side.display()))?,
        }
    }
    let side = prev.join(format!("{}.md5", d.name));
    match d.sidecar {
        Some(s) if s == side => {}
        Some(s) => move_replacing(s, &side).ctx(Stage::Rotate, || format!("move sidecar to {}", side.display()))?,
        None => fs::remove_file(&side)
            .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
            .ctx(Stage::Rotate, || format!("remove {}", side.display()))?,
    }
    let dest = prev.join(d.name);
    move_replacing(d.archive, &dest).ctx(Stage::Rotate, || format!("move deposit to {}", dest.display()))?;
    owned(&side, false)?;
    for ext in crate::md5sums::Algo::OTHERS.iter().map(|a| a.ext()) {
        owned(&prev.join(format!("{}.{ext}", d.name)), false)?;
    }
    owned(&dest, true)?;
    sync_dir(&prev)?;
    Ok(dest)
}

/// The `.sha256`/`.sha512` sidecars beside `archive` (the spool keeps them
/// as `<id>.sha256`), each with its extension; `None` where there is none.
fn other_sidecars(archive: &Path) -> Vec<(Option<PathBuf>, &'static str)> {
    crate::md5sums::Algo::OTHERS
        .iter()
        .map(|a| {
            let mut p = archive.as_os_str().to_owned();
            p.push(format!(".{}", a.ext()));
            let p = PathBuf::from(p);
            (fs::symlink_metadata(&p).is_ok().then_some(p), a.ext())
        })
        .collect()
}

/// The sidecar a rotation left in the spool when a crash came between its
/// two renames (versions before the sidecar went first moved the archive
/// first): into `previous/` beside the archive already there, replacing
/// the older deposit's. A failed deposit's goes into its rejected folder.
pub fn finish_sidecar(producer_dir: &Path, name: &str, sidecar: &Path, id: Option<&str>) -> Result<()> {
    plain_name(name)?;
    let dir = match id {
        None => producer_dir.join(PREVIOUS),
        Some(id) => rejected_dir(producer_dir, id),
    };
    check_real_dir(&dir).ctx(Stage::Rotate, || format!("refusing {}", dir.display()))?;
    let side = dir.join(format!("{name}.md5"));
    move_replacing(sidecar, &side).ctx(Stage::Rotate, || format!("move sidecar to {}", side.display()))?;
    owned(&side, false)?;
    sync_dir(&dir)
}

/// `rejected/<deposit-id>/`: one folder per failed deposit, so that two
/// failed uploads of one name never share (or overwrite) anything.
pub fn rejected_dir(producer_dir: &Path, id: &str) -> PathBuf {
    producer_dir.join(REJECTED).join(id)
}

/// Where the json report of the rejected deposit `id` lies: the daemon
/// tells `notify.command` even when rotation ran in an earlier life.
pub fn report_path(producer_dir: &Path, id: &str) -> PathBuf {
    rejected_dir(producer_dir, id).join(REPORT_JSON)
}

/// Failure: the deposit goes to `rejected/<deposit-id>/` under its own
/// name (its sidecar beside it), with `report.json` and `report.txt`.
/// Returns the json report's path. The folder is made with mkdir, not
/// create_dir_all: if it is there, an earlier attempt of this very deposit
/// made it (ids are unique), and this one finishes that attempt: what it
/// already wrote or moved stays as it is.
pub fn to_rejected(producer_dir: &Path, d: &Deposited<'_>, report: &Report) -> Result<PathBuf> {
    plain_name(d.name)?;
    if reserved_name(d.name) {
        return Err(Error::io(
            Stage::Rotate,
            format!("deposit name {:?} is one of depot's own in rejected/<id>/", d.name),
            io::Error::from(io::ErrorKind::InvalidInput),
        ));
    }
    let (rej, dir, json) = with_reports(producer_dir, report, true)?;
    // The sidecar first: the archive leaving the spool is what says the
    // rotation is done, and nothing may be left behind then.
    if let Some(s) = d.sidecar {
        let side = dir.join(format!("{}.md5", d.name));
        place(s, &side).ctx(Stage::Rotate, || format!("move sidecar to {}", side.display()))?;
    }
    for (from, ext) in other_sidecars(d.archive) {
        if let Some(s) = from {
            let side = dir.join(format!("{}.{ext}", d.name));
            place(&s, &side).ctx(Stage::Rotate, || format!("move sidecar to {}", side.display()))?;
        }
    }
    let dest = dir.join(d.name);
    place(d.archive, &dest).ctx(Stage::Rotate, || format!("move deposit to {}", dest.display()))?;
    for ext in std::iter::once("md5").chain(crate::md5sums::Algo::OTHERS.iter().map(|a| a.ext())) {
        owned(&dir.join(format!("{}.{ext}", d.name)), false)?;
    }
    owned(&dest, true)?;
    sync_dir(&dir)?;
    sync_dir(&rej)?;
    Ok(json)
}

/// A report with nothing to move (a folder dropped in `new/`, which is
/// never a deposit): `rejected/<id>/` with `report.json` and `report.txt`.
pub fn report_only(producer_dir: &Path, report: &Report) -> Result<PathBuf> {
    let (rej, dir, json) = with_reports(producer_dir, report, false)?;
    sync_dir(&dir)?;
    sync_dir(&rej)?;
    Ok(json)
}

/// `rejected/<deposit-id>/` made (a real folder under a real `rejected/`)
/// with the deposit's `report.json` and `report.txt`; `again`: the folder
/// may be there already, made by an earlier attempt of this deposit.
/// Returns `rejected/`, the folder and the path of report.json.
fn with_reports(producer_dir: &Path, report: &Report, again: bool) -> Result<(PathBuf, PathBuf, PathBuf)> {
    if !crate::deposit::is_id(&report.deposit) {
        return Err(Error::io(
            Stage::Rotate,
            format!("deposit id {:?}", report.deposit),
            io::Error::from(io::ErrorKind::InvalidInput),
        ));
    }
    let rej = producer_dir.join(REJECTED);
    ensure_real_dir(&rej)?;
    let dir = rejected_dir(producer_dir, &report.deposit);
    match DirBuilder::new().mode(0o755).create(&dir) {
        Err(e) if !(again && e.kind() == io::ErrorKind::AlreadyExists) => {
            return Err(Error::io(Stage::Rotate, format!("create {}", dir.display()), e));
        }
        _ => check_real_dir(&dir).ctx(Stage::Rotate, || format!("refusing {}", dir.display()))?,
    }
    let advice = report.code.and_then(Code::parse).map(Code::advice);
    let json = dir.join(REPORT_JSON);
    write_new(&json, report.to_json().as_bytes())?;
    write_new(&dir.join(REPORT_TXT), report.to_text(advice).as_bytes())?;
    Ok((rej, dir, json))
}

/// Into the deposit's own rejected folder. A name already there was put
/// there by an earlier attempt of this deposit (a copy across filesystems
/// that crashed before it removed its source): that one is complete (it is
/// renamed in only once fsynced), so the source is the duplicate.
fn place(from: &Path, to: &Path) -> io::Result<()> {
    match move_file(from, to) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => fs::remove_file(from),
        r => r,
    }
}

/// A report written whole (temporary file, fsync, rename) and never over
/// one an earlier attempt of the deposit already wrote: the outcome it
/// reports comes from the spool record, the same both times.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().map_or("r".into(), |n| n.to_string_lossy())));
    let mut f = File::create(&tmp).ctx(Stage::Rotate, || format!("create {}", tmp.display()))?;
    f.write_all(bytes).ctx(Stage::Rotate, || format!("write {}", tmp.display()))?;
    f.sync_all().ctx(Stage::Rotate, || format!("fsync {}", tmp.display()))?;
    match rename_noreplace(&tmp, path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp).ctx(Stage::Rotate, || format!("remove {}", tmp.display()))
        }
        r => r.ctx(Stage::Rotate, || format!("rename {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ReportBase;

    fn report(id: &str) -> Report {
        let base =
            ReportBase { deposit: id.into(), producer: "MSEC".into(), archive: "a.zip".into(), started: "t".into() };
        Report::failure(base, &Error::reject(Code::NotAZip, Stage::Unpack, None, "not a zip"))
    }

    #[test]
    fn rename_noreplace_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        fs::write(&a, b"old").unwrap();
        fs::write(&b, b"newer").unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&b).unwrap(), b"newer");
        assert_eq!(move_file(&a, &b).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        fs::remove_file(&b).unwrap();
        move_file(&a, &b).unwrap();
        assert_eq!(fs::read(&b).unwrap(), b"old");
    }

    #[test]
    fn open_nofollow_refuses_links_and_never_blocks() {
        use std::os::unix::fs::FileTypeExt;
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        fs::write(&target, b"secret").unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join("l")).unwrap();
        assert!(open_nofollow(&tmp.path().join("l")).is_err());
        let fifo = tmp.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // Opens at once (no writer needed), and says what it is.
        assert!(open_nofollow(&fifo).unwrap().metadata().unwrap().file_type().is_fifo());
    }

    #[test]
    fn kept_archives_become_depot_s() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let me = rustix::process::geteuid().as_raw();
        if me != 0 {
            eprintln!("skipped: a file of another uid needs root to make");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let pdir = tmp.path().join("MSEC");
        let stranger = |p: &Path, body: &[u8]| {
            fs::write(p, body).unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(0o666)).unwrap();
            std::os::unix::fs::chown(p, Some(12345), Some(12345)).unwrap();
        };
        let check = |p: &Path, body: &[u8]| {
            let m = fs::metadata(p).unwrap();
            assert_eq!((m.uid(), m.mode() & 0o7777), (me, 0o644), "{}", p.display());
            assert_eq!(fs::read(p).unwrap(), body);
        };
        let (a, side) = (tmp.path().join("a"), tmp.path().join("a.md5"));
        stranger(&a, b"good");
        stranger(&side, b"m");
        to_previous(&pdir, &Deposited { archive: &a, sidecar: Some(&side), name: "a.zip" }).unwrap();
        check(&pdir.join(PREVIOUS).join("a.zip"), b"good");
        check(&pdir.join(PREVIOUS).join("a.zip.md5"), b"m");
        stranger(&a, b"bad");
        let id = crate::deposit::new_id("MSEC");
        to_rejected(&pdir, &Deposited { archive: &a, sidecar: None, name: "a.zip" }, &report(&id)).unwrap();
        check(&rejected_dir(&pdir, &id).join("a.zip"), b"bad");
        // Without the right to chown (the shipped unit): a copy of depot's.
        let b = tmp.path().join("b");
        stranger(&b, b"copied");
        let ino = fs::metadata(&b).unwrap().ino();
        let f = open_nofollow(&b).unwrap();
        let m = f.metadata().unwrap();
        copy_as_ours(f, &m, &b).unwrap();
        check(&b, b"copied");
        let after = fs::metadata(&b).unwrap();
        assert_ne!(after.ino(), ino);
        assert_eq!(after.modified().unwrap(), m.modified().unwrap());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2, "a temporary file left");
    }

    #[test]
    fn two_failures_of_one_name_keep_two_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let pdir = tmp.path().join("MSEC");
        let mut ids = Vec::new();
        for body in [&b"first"[..], b"second"] {
            let spool = tmp.path().join("spool.zip");
            let side = tmp.path().join("spool.md5");
            fs::write(&spool, body).unwrap();
            fs::write(&side, b"m").unwrap();
            let id = crate::deposit::new_id("MSEC");
            let d = Deposited { archive: &spool, sidecar: Some(&side), name: "a.zip" };
            let json = to_rejected(&pdir, &d, &report(&id)).unwrap();
            assert_eq!(json, report_path(&pdir, &id));
            assert!(json.is_file() && rejected_dir(&pdir, &id).join(REPORT_TXT).is_file());
            assert_eq!(fs::read(rejected_dir(&pdir, &id).join("a.zip")).unwrap(), body);
            assert!(rejected_dir(&pdir, &id).join("a.zip.md5").is_file());
            ids.push(id);
        }
        assert_ne!(ids[0], ids[1]);
        assert_eq!(fs::read_dir(pdir.join(REJECTED)).unwrap().count(), 2);
    }

    #[test]
    fn a_rejection_cut_short_is_finished_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let pdir = tmp.path().join("MSEC");
        let id = crate::deposit::new_id("MSEC");
        let (spool, side) = (tmp.path().join("s.zip"), tmp.path().join("s.md5"));
        fs::write(&spool, b"zip").unwrap();
        // An earlier attempt made the folder, wrote the reports and moved
        // the sidecar, then stopped.
        let dir = rejected_dir(&pdir, &id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(REPORT_JSON), b"{\"first\": true}").unwrap();
        fs::write(dir.join("a.zip.md5"), b"m").unwrap();
        let d = Deposited { archive: &spool, sidecar: None, name: "a.zip" };
        to_rejected(&pdir, &d, &report(&id)).unwrap();
        assert_eq!(fs::read(dir.join(REPORT_JSON)).unwrap(), b"{\"first\": true}");
        assert_eq!(fs::read(dir.join("a.zip")).unwrap(), b"zip");
        assert!(dir.join("a.zip.md5").is_file() && dir.join(REPORT_TXT).is_file() && !spool.exists());
        // A copy across filesystems renamed in before its source was
        // removed: the source goes.
        fs::write(&spool, b"zip").unwrap();
        fs::write(&side, b"m").unwrap();
        let d = Deposited { archive: &spool, sidecar: Some(&side), name: "a.zip" };
        to_rejected(&pdir, &d, &report(&id)).unwrap();
        assert!(!spool.exists() && !side.exists());
    }

    #[test]
    fn sha_sidecars_travel_with_their_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let pdir = tmp.path().join("MSEC");
        let spool = tmp.path().join("id=a.zip");
        let beside = |ext: &str| tmp.path().join(format!("id=a.zip.{ext}"));
        fs::write(&spool, b"zip").unwrap();
        fs::write(beside("sha256"), b"s").unwrap();
        fs::write(beside("sha512"), b"t").unwrap();
        let d = Deposited { archive: &spool, sidecar: None, name: "a.zip" };
        to_previous(&pdir, &d).unwrap();
        let prev = pdir.join(PREVIOUS);
        assert_eq!(fs::read(prev.join("a.zip.sha256")).unwrap(), b"s");
        assert_eq!(fs::read(prev.join("a.zip.sha512")).unwrap(), b"t");
        assert!(!beside("sha256").exists() && !beside("sha512").exists());
        // The next deposit of that name, with no SHA-512: the old one goes.
        fs::write(&spool, b"zip2").unwrap();
        fs::write(beside("sha256"), b"s2").unwrap();
        to_previous(&pdir, &d).unwrap();
        assert_eq!(fs::read(prev.join("a.zip.sha256")).unwrap(), b"s2");
        assert!(!prev.join("a.zip.sha512").exists());
        // A rejected deposit keeps them in its folder.
        let id = crate::deposit::new_id("MSEC");
        fs::write(&spool, b"zip3").unwrap();
        fs::write(beside("sha512"), b"t3").unwrap();
        to_rejected(&pdir, &d, &report(&id)).unwrap();
        assert_eq!(fs::read(rejected_dir(&pdir, &id).join("a.zip.sha512")).unwrap(), b"t3");
        assert!(!beside("sha512").exists());
    }

    #[test]
    fn linked_previous_and_rejected_are_refused_and_old_links_removed_as_links() {
        let tmp = tempfile::tempdir().unwrap();
        let pdir = tmp.path().join("MSEC");
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        fs::write(elsewhere.join("keep.txt"), b"k").unwrap();
        fs::create_dir_all(&pdir).unwrap();
        std::os::unix::fs::symlink(&elsewhere, pdir.join(PREVIOUS)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, pdir.join(REJECTED)).unwrap();
        let a = tmp.path().join("a");
        fs::write(&a, b"a").unwrap();
        let d = Deposited { archive: &a, sidecar: None, name: "a.zip" };
        let e = to_previous(&pdir, &d).unwrap_err();
        assert!(e.is_transient() && e.message().contains("previous"), "{e}");
        let e = to_rejected(&pdir, &d, &report(&crate::deposit::new_id("MSEC"))).unwrap_err();
        assert!(e.is_transient() && e.message().contains("rejected"), "{e}");
        assert!(a.is_file() && elsewhere.join("keep.txt").is_file());
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 1);
        // A real previous/ holding a link to a folder elsewhere: the link
        // goes, the folder it points at stays whole.
        fs::remove_file(pdir.join(PREVIOUS)).unwrap();
        fs::create_dir(pdir.join(PREVIOUS)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, pdir.join(PREVIOUS).join("old")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, pdir.join(PREVIOUS).join("a.zip.md5")).unwrap();
        to_previous(&pdir, &d).unwrap();
        assert!(elsewhere.join("keep.txt").is_file());
        let left: Vec<_> = fs::read_dir(pdir.join(PREVIOUS)).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["a.zip"]);
    }
}
