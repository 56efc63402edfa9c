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

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub const SPOOL: &str = ".depot/spool";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub producer: String,
    /// The archive's name as dropped.
    pub name: String,
    /// Claim time (ns since the epoch): one producer's deposits run in this order.
    pub claimed_ns: u128,
    pub size: u64,
    pub sidecar: bool,
    pub created: String,
}

/// What the pipeline decided, kept until rotation and Redis both know it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    pub state: String,
    pub report: serde_json::Value,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub release: Option<String>,
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

pub struct Spool {
    pub root: PathBuf,
}

/// The entry and, if one was appended, the outcome: `<id>.json` is a
/// stream of JSON values (the entry, pretty-printed by older versions, then
/// one line per outcome). An outcome cut short by a crash is no outcome:
/// only its fdatasync made it count.
fn read_record(path: &Path) -> io::Result<Option<(Entry, Option<Outcome>)>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut values = serde_json::Deserializer::from_slice(&bytes).into_iter::<serde_json::Value>();
    let entry = match values.next() {
        Some(v) => serde_json::from_value(v.map_err(io::Error::other)?).map_err(io::Error::other)?,
        None => return Err(io::Error::other("empty spool entry")),
    };
    let outcome = values.next().and_then(Result::ok).and_then(|v| serde_json::from_value(v).ok());
    Ok(Some((entry, outcome)))
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
    pub fn claim(&self, producer: &str, path: &Path) -> io::Result<Entry> {
        let name =
            path.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| io::Error::other("no name"))?;
        let size = fs::symlink_metadata(path)?.len();
        let claimed_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let side_src = path.with_file_name(format!("{name}.md5"));
        let entry = Entry {
            id: jobs::deposit::new_id(producer),
            producer: producer.to_owned(),
            name,
            claimed_ns,
            size,
            sidecar: side_src.is_file(),
            created: jobs::deposit::now_rfc3339(),
        };
        // Written in place, not through a temporary file: a record cut
        // short by a crash before the batch's sync reads as lost, and
        // `list` gives the archive back under the name it carries.
        let mut line = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        line.push(b'\n');
        fs::write(self.entry_path(&entry.id), line)?;
        if let Some(dst) = self.sidecar(&entry)
            && let Err(e) = fs::rename(&side_src, dst)
        {
            let _ = fs::remove_file(self.entry_path(&entry.id));
            return Err(e);
        }
        if let Err(e) = fs::rename(path, self.archive(&entry)) {
            if let Some(side) = self.sidecar(&entry) {
                let _ = fs::rename(side, &side_src);
            }
            let _ = fs::remove_file(self.entry_path(&entry.id));
            return Err(e);
        }
        Ok(entry)
    }

    /// Make a batch of claims durable: the spool folder (the renamed-in
    /// files, whose names carry the names they were dropped under) and each
    /// `new/` a file left (so that it is not in both places after a crash);
    /// an entry file only when its name could not go into the archive's.
    /// Not syncfs(2): that walks every cached inode of the filesystem and
    /// waits for every other writer's dirty data, a big deposit's included
    /// (measured: slower than the fsyncs, and unbounded).
    pub fn sync(&self, claimed: &[Entry], drop_root: &Path) -> io::Result<()> {
        for e in claimed.iter().filter(|e| archive_name(&e.id, &e.name).is_none()) {
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
        let mut line = serde_json::to_vec(o).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = fs::OpenOptions::new().append(true).open(self.entry_path(&e.id))?;
        io::Write::write_all(&mut f, &line)?;
        f.sync_data()
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

    /// The deposit is rotated and its state recorded: forget it. The entry
    /// goes last, so that a crash half-way leaves something `list` mends.
    pub fn remove(&self, e: &Entry) -> io::Result<()> {
        let id = &e.id;
        // Temporary files a crash left are removed by `list` at start; a
        // 0.2 outcome file may have been read by a `--role worker` that
        // never lists.
        for p in [self.archive(e), self.root.join(format!("{id}.md5")), self.outcome_path(id), self.entry_path(id)] {
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
            let archive = (name == id || name.starts_with(&format!("{id}="))).then_some(name);
            let slot = ids.entry(id).or_default();
            if archive.is_some() {
                *slot = archive;
            }
        }
        let mut out = Vec::new();
        for (id, archive) in ids {
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
                }
            }
        }
        out.sort_by_key(|e| (e.claimed_ns, e.id.clone()));
        Ok(out)
    }

    /// An entry for an archive whose entry file was lost, named as its spool
    /// file says (`<id>=<name>`), or after the id.
    fn orphan_entry(&self, id: &str, archive: Option<&str>) -> io::Result<Entry> {
        let name = archive.and_then(|a| a.split_once('=')).map_or_else(|| format!("{id}.zip"), |(_, n)| n.to_owned());
        let size = archive.map_or(Ok(0), |a| fs::metadata(self.root.join(a)).map(|m| m.len()))?;
        Ok(Entry {
            id: id.to_owned(),
            producer: id.split('-').nth(1).unwrap_or_default().to_owned(),
            name,
            claimed_ns: 0,
            size,
            sidecar: self.root.join(format!("{id}.md5")).exists(),
            created: jobs::deposit::now_rfc3339(),
        })
    }

    /// Files of an unfinished claim back to `new/`, then forget it.
    fn give_back(&self, e: &Entry) -> io::Result<()> {
        self.give_back_from(e, &self.archive(e))
    }

    fn give_back_from(&self, e: &Entry, archive: &Path) -> io::Result<()> {
        let new = self.root.parent().and_then(Path::parent).map(|d| d.join(&e.producer).join("new"));
        if let Some(new) = new.filter(|_| !e.producer.is_empty() && !e.name.contains('/')) {
            for (src, name) in [
                (self.root.join(format!("{}.md5", e.id)), format!("{}.md5", e.name)),
                (archive.to_path_buf(), e.name.clone()),
            ] {
                if src.is_file() {
                    fs::create_dir_all(&new)?;
                    fs::rename(&src, new.join(name))?;
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
                let producer = id.split('-').nth(1).unwrap_or_default();
                let new = self.root.parent().and_then(Path::parent).map(|d| d.join(producer).join("new"));
                if let Some(new) = new.filter(|_| !producer.is_empty()) {
                    for f in fs::read_dir(&dir)? {
                        let f = f?;
                        let name = f.file_name().to_string_lossy().into_owned();
                        if name != "deposit.json" && !name.ends_with(".tmp") && f.file_type()?.is_file() {
                            fs::create_dir_all(&new)?;
                            fs::rename(f.path(), new.join(&name))?;
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
            id: id.into(),
            producer: "MSEC".into(),
            name: "MSEC_1.zip".into(),
            claimed_ns: 1,
            size: 4,
            sidecar: true,
            created: "2026-01-01T00:00:00Z".into(),
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
}
