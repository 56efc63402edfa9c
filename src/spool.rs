//! Custody of deposits between `new/` and their outcome. The spool, not the
//! queue, is the source of truth: an entry exists from the moment a deposit
//! is claimed (an atomic rename out of `new/`) until it has been rotated and
//! its terminal state recorded. Whatever Redis forgets, a restart finds here.
//!
//! `<drop_root>/.depot/spool/<id>/` holds `deposit.json`, the archive under
//! the name it was dropped as, its `.md5` sidecar if any, and, once the
//! pipeline has spoken, `outcome.json`.

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

pub struct Spool {
    pub root: PathBuf,
}

fn write_json(path: &Path, value: &impl Serialize) -> io::Result<()> {
    write_json_with(path, value, true)
}

fn write_json_with(path: &Path, value: &impl Serialize, fsync: bool) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    fs::write(&tmp, bytes)?;
    if fsync {
        fs::File::open(&tmp)?.sync_all()?;
    }
    fs::rename(&tmp, path)
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

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub fn archive(&self, e: &Entry) -> PathBuf {
        self.dir(&e.id).join(&e.name)
    }

    pub fn sidecar(&self, e: &Entry) -> Option<PathBuf> {
        e.sidecar.then(|| self.dir(&e.id).join(format!("{}.md5", e.name)))
    }

    /// Take `path` (a settled file in `<P>/new/`) into custody. The rename is
    /// the claim: once it succeeds the deposit is ours. Nothing is fsynced
    /// here: claims come in batches and [`Spool::sync`] makes a whole batch
    /// durable (one fsync per entry, not three) before anyone is told. A
    /// crash before that sync leaves each file in `new/` or in an entry
    /// whose deposit.json may be missing or empty, which [`Spool::list`]
    /// gives back to `new/`: never lost.
    pub fn claim(&self, producer: &str, path: &Path) -> io::Result<Entry> {
        let name =
            path.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| io::Error::other("no name"))?;
        let size = fs::symlink_metadata(path)?.len();
        let id = jobs::deposit::new_id(producer);
        let dir = self.dir(&id);
        fs::create_dir(&dir)?;
        let claimed_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let side_src = path.with_file_name(format!("{name}.md5"));
        let mut entry = Entry {
            id,
            producer: producer.to_owned(),
            name,
            claimed_ns,
            size,
            sidecar: false,
            created: jobs::deposit::now_rfc3339(),
        };
        write_json_with(&dir.join("deposit.json"), &entry, false)?;
        if let Err(e) = fs::rename(path, self.archive(&entry)) {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        if side_src.is_file() {
            entry.sidecar = true;
            if let Some(dst) = self.sidecar(&entry) {
                fs::rename(&side_src, dst)?;
            }
            write_json_with(&dir.join("deposit.json"), &entry, false)?;
        }
        Ok(entry)
    }

    /// Make a batch of claims durable: each entry folder (the archive's
    /// new name), the spool folder (the entries) and each `new/` a file
    /// left (so that it is not in both places after a crash). Not
    /// syncfs(2): that walks every cached inode of the filesystem and waits
    /// for every other writer's dirty data, a big deposit's included
    /// (measured: slower than the fsyncs, and unbounded).
    pub fn sync(&self, claimed: &[Entry], drop_root: &Path) -> io::Result<()> {
        let mut dirs: Vec<PathBuf> = claimed.iter().map(|e| self.dir(&e.id)).collect();
        dirs.push(self.root.clone());
        let mut producers: Vec<&str> = claimed.iter().map(|e| e.producer.as_str()).collect();
        producers.sort_unstable();
        producers.dedup();
        dirs.extend(producers.iter().map(|p| drop_root.join(p).join("new")));
        for d in dirs {
            fs::File::open(&d)?.sync_all()?;
        }
        Ok(())
    }

    pub fn load(&self, id: &str) -> io::Result<Option<Entry>> {
        if !jobs::deposit::is_id(id) {
            return Ok(None);
        }
        read_json(&self.dir(id).join("deposit.json"))
    }

    pub fn outcome(&self, id: &str) -> io::Result<Option<Outcome>> {
        read_json(&self.dir(id).join("outcome.json"))
    }

    pub fn set_outcome(&self, id: &str, o: &Outcome) -> io::Result<()> {
        write_json(&self.dir(id).join("outcome.json"), o)
    }

    /// The deposit is rotated and its state recorded: forget it.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        match fs::remove_dir_all(self.dir(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every entry, oldest claim first. An entry whose claim never
    /// completed (a crash before deposit.json was on disk) gives its files
    /// back to the producer's `new/` (the producer is in the id), never
    /// deletes them.
    pub fn list(&self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for d in fs::read_dir(&self.root)? {
            let d = d?;
            let id = d.file_name().to_string_lossy().into_owned();
            if !jobs::deposit::is_id(&id) {
                continue;
            }
            match self.load(&id) {
                Ok(Some(e)) if self.archive(&e).exists() || self.outcome(&id)?.is_some() => out.push(e),
                Ok(Some(_)) => self.remove(&id)?,
                Ok(None) | Err(_) => self.give_back(&id)?,
            }
        }
        out.sort_by_key(|e| (e.claimed_ns, e.id.clone()));
        Ok(out)
    }

    fn give_back(&self, id: &str) -> io::Result<()> {
        let dir = self.dir(id);
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
        self.remove(id)
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
        fs::create_dir_all(spool.dir(id)).unwrap();
        fs::write(spool.dir(id).join("MSEC_1.zip"), b"data").unwrap();
        assert!(spool.list().unwrap().is_empty());
        assert_eq!(fs::read(tmp.path().join("MSEC/new/MSEC_1.zip")).unwrap(), b"data");
        assert!(!spool.dir(id).exists());
    }

    #[test]
    fn claim_then_list() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::new(tmp.path()).unwrap();
        let new = tmp.path().join("MSEC/new");
        fs::create_dir_all(&new).unwrap();
        fs::write(new.join("a.zip"), b"a").unwrap();
        fs::write(new.join("a.zip.md5"), b"m").unwrap();
        let e = spool.claim("MSEC", &new.join("a.zip")).unwrap();
        assert!(e.sidecar && !new.join("a.zip").exists() && !new.join("a.zip.md5").exists());
        assert_eq!(spool.list().unwrap(), vec![e]);
    }
}
