//! Sidecars that lost their archive. A `<name>.md5` travels with its
//! archive when the archive is claimed; one that arrives after that (late),
//! or whose archive never comes, would otherwise wait in `new/` and be
//! paired with the next upload of the same name, failing a good deposit
//! with MD5_MISMATCH. Such a sidecar is moved out to
//! `<P>/rejected/<id>/<name>.md5` with a report the producer can read
//! (MD5_MISSING: a checksum for a file that is not there). It is not a
//! deposit: nothing is recorded in Redis.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use jobs::report::{Report, ReportBase};
use jobs::rotate::{self, Deposited};
use jobs::{Code, Error, Stage};

/// A sidecar alone in `new/` this long (by its mtime), with nothing else
/// in that folder written meanwhile, is an orphan: its archive is not
/// coming.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(3600);

/// How many recent claims are remembered per `new/` to recognise a late
/// sidecar (per folder: another producer's flood must not push them out).
const RECENT: usize = 256;

/// A sidecar this long after its archive's claim is late for it; one that
/// comes later is taken as the first half of the next upload (a producer
/// that sends the checksum first).
pub const LATE_WITHIN: Duration = Duration::from_secs(600);

/// Archives claimed lately: `new/<name>` → (deposit id, when).
#[derive(Default)]
pub struct Recent {
    by_path: HashMap<PathBuf, (String, SystemTime)>,
    /// Per `new/`, oldest first.
    order: HashMap<PathBuf, VecDeque<PathBuf>>,
}

impl Recent {
    pub fn claimed(&mut self, path: &Path, id: &str) {
        let dir = path.parent().unwrap_or(path).to_path_buf();
        if self.by_path.insert(path.to_path_buf(), (id.to_owned(), SystemTime::now())).is_none() {
            let order = self.order.entry(dir).or_default();
            order.push_back(path.to_path_buf());
            while order.len() > RECENT {
                if let Some(old) = order.pop_front() {
                    self.by_path.remove(&old);
                }
            }
        }
    }

    /// The deposit `archive` was claimed as, if the sidecar that arrived
    /// at `arrived` (its ctime: a rename in keeps the source's mtime) came
    /// after that claim (within a second: clocks are not finer).
    fn late_for(&self, archive: &Path, arrived: SystemTime) -> Option<&str> {
        let (id, at) = self.by_path.get(archive)?;
        let after = arrived + Duration::from_secs(1) >= *at;
        let soon = arrived.duration_since(*at).map_or(true, |d| d <= LATE_WITHIN);
        (after && soon).then_some(id.as_str())
    }
}

/// What to do with the sidecar `side` (in a producer's `new/`), now.
pub enum Verdict {
    /// Its archive is there (or may still come): leave it.
    Keep,
    /// Move it out, for this reason.
    Out(String),
}

/// Whether each `new/` had anything written lately, asked once per folder
/// per sweep (a folder of thousands of files is listed once, not once per
/// sidecar).
#[derive(Default)]
pub struct Busy(HashMap<PathBuf, bool>);

impl Busy {
    fn of(&mut self, dir: &Path, now: SystemTime) -> bool {
        *self.0.entry(dir.to_path_buf()).or_insert_with(|| folder_busy(Some(dir), now))
    }
}

/// Judge a sidecar of `new/`. `open`: a writer holds it open.
pub fn judge(side: &Path, recent: &Recent, open: bool, now: SystemTime, busy: &mut Busy) -> Verdict {
    let Some(name) = side.file_name().and_then(|n| n.to_str()) else { return Verdict::Keep };
    let Some(base) = strip_sidecar_suffix(name) else { return Verdict::Keep };
    let archive = side.with_file_name(base);
    if open || fs::symlink_metadata(&archive).is_ok() {
        return Verdict::Keep;
    }
    // A link or a FIFO is judged by lstat alone and moved as it is (a
    // rename), never read nor followed.
    let Ok(meta) = fs::symlink_metadata(side) else { return Verdict::Keep };
    let arrived = crate::watcher::changed_at(&meta);
    if let Some(id) = recent.late_for(&archive, arrived) {
        return Verdict::Out(format!(
            "{name} arrived after {base} had already been taken in (as deposit {id}), so it was not used to check it; \
             {base} was judged without it. Upload a sidecar before its archive is complete, or together with it"
        ));
    }
    let quiet = now.duration_since(arrived).is_ok_and(|age| age >= ORPHAN_AFTER);
    if quiet && !side.parent().is_none_or(|d| busy.of(d, now)) {
        return Verdict::Out(format!(
            "{name} waited {} minutes in new/ without its archive {base}; it was not used. Upload the archive and its \
             checksum again",
            ORPHAN_AFTER.as_secs() / 60
        ));
    }
    Verdict::Keep
}

/// The archive's name of a sidecar's (`a.zip.md5`, `a.zip.sha256`,
/// `a.zip.sha512` → `a.zip`); None for any other name.
pub fn strip_sidecar_suffix(name: &str) -> Option<&str> {
    ["md5", "sha256", "sha512"].iter().find_map(|ext| name.strip_suffix(ext)?.strip_suffix('.'))
}

/// Was anything in the folder written within [`ORPHAN_AFTER`] (an upload
/// under a temporary name, rsync's `.name.XXXXXX` or `.filepart`, may be
/// the archive on its way)?
fn folder_busy(dir: Option<&Path>, now: SystemTime) -> bool {
    let Some(dir) = dir else { return true };
    let Ok(rd) = fs::read_dir(dir) else { return true };
    rd.flatten().any(|e| {
        let n: OsString = e.file_name();
        strip_sidecar_suffix(&n.to_string_lossy().to_ascii_lowercase()).is_none()
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).map_or(true, |age| age < ORPHAN_AFTER))
    })
}

/// Move `side` out to `<producer_dir>/rejected/<id>/` with its report.
/// Returns the report's path.
pub fn move_out(producer_dir: &Path, producer: &str, side: &Path, why: &str) -> Result<PathBuf, Error> {
    let name = side.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let id = jobs::deposit::new_id(producer);
    let now = jobs::deposit::now_rfc3339();
    let base = ReportBase { deposit: id, producer: producer.to_owned(), archive: name.clone(), started: now };
    let err = Error::reject(Code::Md5Missing, Stage::Verify, Some(&name), why);
    let report = Report::failure(base, &err);
    let d = Deposited { archive: side, sidecar: None, name: &name };
    rotate::to_rejected(producer_dir, &d, &report)
}

/// The report telling a producer that the folder `path` (in its `new/`)
/// is not a deposit: `rejected/<id>/report.json` and `report.txt`, nothing
/// moved. Returns the json report's path.
pub fn folder_report(path: &Path) -> Result<PathBuf, Error> {
    let shown = |p: Option<&std::ffi::OsStr>| p.map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = shown(path.file_name());
    let producer_dir = path.parent().and_then(Path::parent).unwrap_or(path);
    let producer = shown(producer_dir.file_name());
    let id = jobs::deposit::new_id(&producer);
    let base = ReportBase {
        deposit: id,
        producer: producer.clone(),
        archive: name.clone(),
        started: jobs::deposit::now_rfc3339(),
    };
    let why = format!(
        "{name} is a folder: a deposit is one zip file, so a folder in new/ is never taken in. Zip it \
         (`zip -r {name}.zip {name}`), upload the zip file, and remove the folder from new/"
    );
    let err = Error::reject(Code::NameInvalid, Stage::Unpack, Some(&name), why);
    rotate::report_only(producer_dir, &Report::failure(base, &err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_and_orphaned_sidecars_go_out_others_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let new = tmp.path().join("MSEC/new");
        fs::create_dir_all(&new).unwrap();
        let side = new.join("a.zip.md5");
        fs::write(&side, b"d41d8cd98f00b204e9800998ecf8427e").unwrap();
        let mut recent = Recent::default();
        let now = SystemTime::now();
        // No archive, not claimed lately, fresh: it may still come.
        assert!(matches!(judge(&side, &recent, false, now, &mut Busy::default()), Verdict::Keep));
        // Its archive is there: it pairs.
        fs::write(new.join("a.zip"), b"zip").unwrap();
        assert!(matches!(judge(&side, &recent, false, now, &mut Busy::default()), Verdict::Keep));
        fs::remove_file(new.join("a.zip")).unwrap();
        // Its archive was claimed a moment ago: late.
        recent.claimed(&new.join("a.zip"), "20261201T000000Z-MSEC-00000001");
        assert!(
            matches!(judge(&side, &recent, false, now, &mut Busy::default()), Verdict::Out(w) if w.contains("20261201T000000Z-MSEC-00000001"))
        );
        // Still being written: left alone.
        assert!(matches!(judge(&side, &recent, true, now, &mut Busy::default()), Verdict::Keep));
        // Alone for over an hour, nothing else written: an orphan.
        let b = new.join("b.zip.md5");
        fs::write(&b, b"x").unwrap();
        let later = now + ORPHAN_AFTER + Duration::from_secs(60);
        assert!(matches!(judge(&b, &Recent::default(), false, later, &mut Busy::default()), Verdict::Out(_)));
        // Moved out with a report the producer can read.
        let report = move_out(&tmp.path().join("MSEC"), "MSEC", &b, "why").unwrap();
        let dir = report.parent().unwrap();
        assert!(dir.join("b.zip.md5").is_file() && dir.join("report.txt").is_file());
        assert!(!b.exists());
        // A SHA sidecar is judged the same way.
        let c = new.join("c.zip.sha256");
        fs::write(&c, b"x").unwrap();
        assert!(matches!(judge(&c, &Recent::default(), false, now, &mut Busy::default()), Verdict::Keep));
        recent.claimed(&new.join("c.zip"), "20261201T000000Z-MSEC-00000002");
        assert!(matches!(judge(&c, &recent, false, now, &mut Busy::default()), Verdict::Out(_)));
    }
}
