//! Moving the deposit out of the way once it has an outcome: `previous/`
//! keeps the last good one, `rejected/` the failed ones with their reports.

use std::fs::{self, DirBuilder, File};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Code, IoContext, Result, Stage};
use crate::report::Report;

pub const PREVIOUS: &str = "previous";
pub const REJECTED: &str = "rejected";

/// The deposit's files as they are now (in the spool or wherever `depot
/// ingest` was pointed at), and the name they were dropped under.
pub struct Deposited<'a> {
    pub archive: &'a Path,
    pub sidecar: Option<&'a Path>,
    pub name: &'a str,
}

/// Rename, or copy + fsync + remove when the deposit sits on another
/// filesystem (`depot ingest /tmp/x.zip`).
pub fn move_file(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(18) => {
            let tmp =
                to.with_file_name(format!(".{}.moving", to.file_name().map_or("f".into(), |n| n.to_string_lossy())));
            fs::copy(from, &tmp)?;
            File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, to)?;
            fs::remove_file(from)
        }
        Err(e) => Err(e),
    }
}

fn ensure_dir(p: &Path) -> Result<()> {
    DirBuilder::new().recursive(true).mode(0o755).create(p).ctx(Stage::Rotate, || format!("create {}", p.display()))
}

fn sync_dir(p: &Path) -> Result<()> {
    File::open(p).and_then(|f| f.sync_all()).ctx(Stage::Rotate, || format!("fsync {}", p.display()))
}

/// Success: the deposit (and sidecar) replace whatever `previous/` held.
pub fn to_previous(producer_dir: &Path, d: &Deposited<'_>) -> Result<PathBuf> {
    let prev = producer_dir.join(PREVIOUS);
    ensure_dir(&prev)?;
    let keep = [d.name.to_owned(), format!("{}.md5", d.name)];
    for ent in fs::read_dir(&prev).ctx(Stage::Rotate, || format!("list {}", prev.display()))? {
        let ent = ent.ctx(Stage::Rotate, || format!("list {}", prev.display()))?;
        let n = ent.file_name().to_string_lossy().into_owned();
        if keep.contains(&n) {
            continue; // replaced by the rename below
        }
        let p = ent.path();
        let r = if ent.file_type().is_ok_and(|t| t.is_dir()) { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
        r.ctx(Stage::Rotate, || format!("remove {}", p.display()))?;
    }
    let dest = prev.join(d.name);
    move_file(d.archive, &dest).ctx(Stage::Rotate, || format!("move deposit to {}", dest.display()))?;
    let side = prev.join(format!("{}.md5", d.name));
    match d.sidecar {
        Some(s) => move_file(s, &side).ctx(Stage::Rotate, || format!("move sidecar to {}", side.display()))?,
        None => fs::remove_file(&side)
            .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
            .ctx(Stage::Rotate, || format!("remove {}", side.display()))?,
    }
    sync_dir(&prev)?;
    Ok(dest)
}

/// Where the json report of a rejected deposit named `name` lies: the
/// daemon tells `notify.command` even when rotation ran in an earlier life.
pub fn report_path(producer_dir: &Path, name: &str) -> PathBuf {
    producer_dir.join(REJECTED).join(format!("{name}.report.json"))
}

/// Failure: the deposit goes to `rejected/` with `<name>.report.json` and
/// `<name>.report.txt`. Returns the json report's path.
pub fn to_rejected(producer_dir: &Path, d: &Deposited<'_>, report: &Report) -> Result<PathBuf> {
    let rej = producer_dir.join(REJECTED);
    ensure_dir(&rej)?;
    let advice = report.code.and_then(Code::parse).map(Code::advice);
    let json = report_path(producer_dir, d.name);
    let txt = rej.join(format!("{}.report.txt", d.name));
    write_atomic(&json, report.to_json().as_bytes())?;
    write_atomic(&txt, report.to_text(advice).as_bytes())?;
    let dest = rej.join(d.name);
    move_file(d.archive, &dest).ctx(Stage::Rotate, || format!("move deposit to {}", dest.display()))?;
    if let Some(s) = d.sidecar {
        let side = rej.join(format!("{}.md5", d.name));
        move_file(s, &side).ctx(Stage::Rotate, || format!("move sidecar to {}", side.display()))?;
    }
    sync_dir(&rej)?;
    Ok(json)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().map_or("r".into(), |n| n.to_string_lossy())));
    let mut f = File::create(&tmp).ctx(Stage::Rotate, || format!("create {}", tmp.display()))?;
    f.write_all(bytes).ctx(Stage::Rotate, || format!("write {}", tmp.display()))?;
    f.sync_all().ctx(Stage::Rotate, || format!("fsync {}", tmp.display()))?;
    fs::rename(&tmp, path).ctx(Stage::Rotate, || format!("rename {}", path.display()))
}
