//! The one pass over the data: every file is inflated, hashed and written at
//! once, on as many threads as the deposit has independent pieces.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};

use md5::{Digest as _, Md5};
use zip::ZipArchive;

use crate::archive::{self, Section};
use crate::error::{Code, Error, IoContext, Result, Stage};
use crate::md5sums::{self, Digest, Extra, Hashers, Want};
use crate::plan::{Plan, Role, file_sums};

pub const FILE_MODE: u32 = 0o644;
pub const DIR_MODE: u32 = 0o755;
const BUF: usize = 256 << 10;
/// A unit of parallel work stops growing at this many bytes or files, so
/// two threads share even one big dataset.
const CHUNK_BYTES: u64 = 64 << 20;
const CHUNK_FILES: usize = 512;
/// Up to this much data, a deposit is unpacked on the calling thread.
const INLINE_BYTES: u64 = 1 << 20;
const INLINE_FILES: u64 = 64;
/// Written files waiting for the fsync thread, at most. Each holds its
/// descriptor until synced, so an unbounded queue held one per file of the
/// deposit (8,000 small files failed under `ulimit -n 1024`); past this,
/// writers wait for the disk, which is what they would wait for anyway.
const FSYNC_QUEUE: usize = 64;

/// Told how far a deposit has got; called from several threads.
pub trait Progress: Sync {
    fn stage(&self, _stage: Stage) {}
    fn totals(&self, _bytes: u64, _files: u64) {}
    fn advance(&self, _bytes: u64, _files: u64) {}
    /// Polled between buffers: true stops the work with [`Error::Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }
    /// Something the operator should know that does not change the verdict
    /// (e.g. a sidecar that is a symlink, ignored). The pipeline has no log
    /// of its own; the daemon and the CLI log or print these. The text never
    /// holds bytes from the deposit.
    fn warn(&self, _msg: &str) {}
    /// Room for `need` bytes under `root` (the publish filesystem) plus
    /// `margin`, asked once the central directories gave the deposit's size
    /// and before a byte of the release is written. The default looks at
    /// the free space now; the daemon also counts what the deposits running
    /// beside this one have reserved and not written yet, and waits for
    /// them rather than let several deposits that cannot all fit fail
    /// together.
    fn reserve(&self, root: &Path, need: u64, margin: u64) -> Result<()> {
        crate::publish::check_free_space(root, need, margin)
    }
}

/// For callers that do not watch.
pub struct Quiet;
impl Progress for Quiet {}

/// A file the deposit delivered, with what was measured of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub level: usize,
    /// Name inside its level.
    pub name: String,
    /// Path in the release; `None` for dataset zips (unpacked, not published).
    pub published: Option<String>,
    pub size: u64,
    pub md5: Option<Digest>,
    /// SHA-256/SHA-512, measured only when a manifest gives one.
    pub extra: Extra,
}

#[derive(Debug, Default)]
pub struct Unpacked {
    pub files: Vec<FileRecord>,
    /// MD5 of the whole deposit file, when a sidecar asked for it.
    pub archive_md5: Option<Digest>,
    /// SHA digests of the whole deposit file its sidecars asked for.
    pub archive_extra: Extra,
}

#[derive(Debug)]
enum Unit {
    ArchiveSums,
    Small(usize, usize),
    Container(usize),
    Extract(usize, Vec<usize>),
}

/// Where a release's files go when they do not go to a folder: an object
/// store. Called from several threads at once.
pub trait Store: Sync + std::fmt::Debug {
    /// A file whose bytes are all in memory, with their MD5.
    fn put(&self, rel: &str, bytes: &[u8], md5: &Digest) -> Result<()>;
    /// A file streamed from the inflater; nothing is visible until
    /// [`StoreWriter::commit`], and dropping the writer abandons it.
    fn writer<'s>(&'s self, rel: &str) -> Result<Box<dyn StoreWriter + 's>>;
}

pub trait StoreWriter: Write {
    /// The whole file was written; `md5` is what the unpack pass computed.
    fn commit(self: Box<Self>, md5: &Digest) -> Result<()>;
}

/// Where data goes: a staging folder, an object store, or nowhere
/// (`depot check`).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub root: Option<&'a Path>,
    /// Instead of `root`.
    pub store: Option<&'a dyn Store>,
    pub fsync: bool,
    /// The producer's current release: a small file equal, byte for byte,
    /// to its namesake there is hard-linked to it rather than written again.
    pub base: Option<&'a Path>,
}

/// Files up to this size are compared with their namesake in the current
/// release (read into memory, so memory stays bounded). A Theia producer
/// re-sends its complete state each time and most of it has not changed:
/// a link costs no new inode, no data write and no fsync, where a new file
/// cost all three (bench/daemon.py, where every deposit of a producer is
/// the same). Releases are never written after publication, so sharing an
/// inode between two of them is safe; merge mode already does it.
pub const LINK_MAX: u64 = 64 << 10;

/// Hard-link `root/rel` to `base/rel` when that is a regular file holding
/// exactly `bytes`. Any failure means "write it instead".
fn link_if_same(base: &Path, root: &Path, rel: &str, bytes: &[u8]) -> bool {
    let old = base.join(rel);
    let same = || -> io::Result<bool> {
        let m = std::fs::symlink_metadata(&old)?;
        if !m.is_file() || m.len() != bytes.len() as u64 {
            return Ok(false);
        }
        let mut cur = Vec::with_capacity(bytes.len());
        File::open(&old)?.take(LINK_MAX + 1).read_to_end(&mut cur)?;
        Ok(cur == bytes)
    };
    if !matches!(same(), Ok(true)) {
        return false;
    }
    let dst = root.join(rel);
    if let Some(parent) = dst.parent()
        && DirBuilder::new().recursive(true).mode(DIR_MODE).create(parent).is_err()
    {
        return false;
    }
    std::fs::hard_link(&old, &dst).is_ok()
}

pub fn run(
    plan: &Plan,
    archive_path: &Path,
    want_archive_md5: bool,
    want_archive: Want,
    target: Target<'_>,
    threads: usize,
    progress: &dyn Progress,
) -> Result<Unpacked> {
    let units = units(plan, want_archive_md5 || want_archive != Want::default());
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let done: Mutex<Unpacked> = Mutex::new(Unpacked::default());
    let first_error: Mutex<Option<(usize, Error)>> = Mutex::new(None);
    let threads = threads.clamp(1, units.len().max(1));
    let (units, next, stop, done, first_error) = (&units, &next, &stop, &done, &first_error);
    // A small deposit needs no 256 KiB buffer (an mmap and munmap each).
    let buf_len = usize::try_from(plan.total_bytes).unwrap_or(BUF).clamp(16 << 10, BUF);
    let work = |syncer: Option<mpsc::SyncSender<(File, String)>>| {
        let mut w = Worker {
            plan,
            target,
            buf: vec![0u8; buf_len],
            open: None,
            syncer,
            archive_want: (want_archive_md5, want_archive),
        };
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= units.len() || stop.load(Ordering::Relaxed) {
                break;
            }
            let cancelled = || stop.load(Ordering::Relaxed) || progress.cancelled();
            match w.run(&units[i], archive_path, progress, &cancelled) {
                Ok(Out::Files(f)) => lock(done).files.extend(f),
                Ok(Out::Archive(d, extra)) => {
                    let mut done = lock(done);
                    done.archive_md5 = d;
                    done.archive_extra = extra;
                }
                Err(Error::Cancelled) if stop.load(Ordering::Relaxed) => break,
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    let mut first = lock(first_error);
                    if first.as_ref().is_none_or(|(j, _)| i < *j) {
                        *first = Some((i, e));
                    }
                    break;
                }
            }
        }
    };
    let synced = if plan.total_bytes <= INLINE_BYTES && plan.total_files <= INLINE_FILES {
        // A small deposit is done before a thread would have started:
        // starting three per deposit cost more than the work (bench/daemon.py).
        work(None);
        Ok(())
    } else {
        // fsync waits on the disk, not the CPU: one thread does all of them
        // while the workers go on inflating the next files.
        let (tx, rx) = mpsc::sync_channel::<(File, String)>(FSYNC_QUEUE);
        let use_syncer = target.fsync && target.root.is_some();
        std::thread::scope(|s| {
            let syncer = use_syncer.then(|| s.spawn(move || drain_fsyncs(rx)));
            for _ in 0..threads {
                let tx = use_syncer.then(|| tx.clone());
                s.spawn(move || work(tx));
            }
            drop(tx);
            match syncer.map(|h| h.join()) {
                Some(Ok(r)) => r,
                Some(Err(_)) => Err(Error::io(Stage::Publish, "fsync thread", io::Error::other("panicked"))),
                None => Ok(()),
            }
        })
    };
    if let Some((_, e)) = lock(first_error).take() {
        return Err(e);
    }
    synced?;
    let mut out = std::mem::take(&mut *lock(done));
    out.files.sort_by(|a, b| (a.level, &a.name).cmp(&(b.level, &b.name)));
    Ok(out)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn units(plan: &Plan, want_archive: bool) -> Vec<Unit> {
    let mut units = Vec::new();
    if want_archive {
        units.push(Unit::ArchiveSums);
    }
    for &(level, i) in plan.small.keys() {
        units.push(Unit::Small(level, i));
    }
    for (c, container) in plan.containers.iter().enumerate() {
        if container.copied.is_none() {
            units.push(Unit::Container(c));
        }
    }
    for (level, lv) in plan.levels.iter().enumerate() {
        let mut chunk = Vec::new();
        let mut bytes = 0u64;
        for (i, (e, r)) in lv.entries.iter().zip(&lv.roles).enumerate() {
            if !matches!(r, Role::Data(_)) || plan.small.contains_key(&(level, i)) {
                continue;
            }
            chunk.push(i);
            bytes += e.size;
            if bytes >= CHUNK_BYTES || chunk.len() >= CHUNK_FILES {
                units.push(Unit::Extract(level, std::mem::take(&mut chunk)));
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            units.push(Unit::Extract(level, chunk));
        }
    }
    units
}

enum Out {
    Files(Vec<FileRecord>),
    Archive(Option<Digest>, Extra),
}

struct Worker<'p> {
    plan: &'p Plan,
    target: Target<'p>,
    buf: Vec<u8>,
    /// Each thread reads through its own archive handle (`pread`, no
    /// shared cursor), of the level it works on. Units come in level order,
    /// so one at a time is enough, and a scratch copy's descriptor is not
    /// kept for every level a thread has seen.
    open: Option<(usize, ZipArchive<Section>)>,
    /// Where written files go to be fsynced, when they must be.
    syncer: Option<mpsc::SyncSender<(File, String)>>,
    /// Which digests of the whole deposit file its sidecars ask for.
    archive_want: (bool, Want),
}

/// Mode 0644 whatever the umask; on disk before the release is renamed.
fn finish(syncer: &Option<mpsc::SyncSender<(File, String)>>, fsync: bool, f: File, rel: &str) -> Result<()> {
    f.set_permissions(Permissions::from_mode(FILE_MODE)).ctx(Stage::Unpack, || format!("chmod {rel}"))?;
    match syncer {
        Some(tx) => tx
            .send((f, rel.to_owned()))
            .map_err(|_| Error::io(Stage::Publish, "fsync thread", io::Error::other("gone"))),
        None if fsync => f.sync_data().ctx(Stage::Publish, || format!("fsync {rel}")),
        None => Ok(()),
    }
}

/// A file whose bytes are in memory: linked to its unchanged namesake in
/// the current release, or written.
fn place(
    target: &Target<'_>,
    syncer: &Option<mpsc::SyncSender<(File, String)>>,
    root: &Path,
    published: &str,
    bytes: &[u8],
) -> Result<()> {
    if target.base.is_some_and(|base| link_if_same(base, root, published, bytes)) {
        return Ok(());
    }
    let mut f = create(root, published)?;
    f.write_all(bytes).ctx(Stage::Unpack, || format!("write {published}"))?;
    finish(syncer, target.fsync, f, published)
}

impl Worker<'_> {
    fn run(
        &mut self,
        unit: &Unit,
        archive_path: &Path,
        progress: &dyn Progress,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Out> {
        match unit {
            Unit::ArchiveSums => {
                let mut stop = false;
                let (md5, want) = self.archive_want;
                let (d, extra) = file_sums(archive_path, &mut self.buf, md5, want, |_| stop = stop || cancelled())
                    .ctx(Stage::Verify, || format!("read {}", archive_path.display()))?;
                if stop {
                    return Err(Error::Cancelled);
                }
                Ok(Out::Archive(d, extra))
            }
            Unit::Small(level, i) => {
                let bytes = &self.plan.small[&(*level, *i)];
                let Role::Data(published) = &self.plan.levels[*level].roles[*i] else {
                    return Ok(Out::Files(Vec::new()));
                };
                let md5: Digest = Md5::digest(bytes).into();
                let e = &self.plan.levels[*level].entries[*i];
                let mut others = Hashers::new(self.plan.want(*level, &e.name));
                others.update(bytes);
                if let Some(store) = self.target.store {
                    store.put(published, bytes, &md5)?;
                } else if let Some(root) = self.target.root {
                    place(&self.target, &self.syncer, root, published, bytes)?;
                }
                progress.advance(bytes.len() as u64, 1);
                Ok(Out::Files(vec![FileRecord {
                    level: *level,
                    name: e.name.clone(),
                    published: Some(published.clone()),
                    size: bytes.len() as u64,
                    md5: Some(md5),
                    extra: others.finish(),
                }]))
            }
            Unit::Container(c) => self.container(*c, cancelled).map(|r| Out::Files(vec![r])),
            Unit::Extract(level, entries) => self.extract(*level, entries, progress, cancelled).map(Out::Files),
        }
    }

    /// A stored dataset zip is read in place; its own CRC32 (and MD5 when a
    /// manifest lists it) still has to be checked over its bytes.
    fn container(&mut self, c: usize, cancelled: &dyn Fn() -> bool) -> Result<FileRecord> {
        let info = &self.plan.containers[c];
        let e = &self.plan.levels[0].entries[info.outer_entry];
        let want_md5 = self.plan.listed_top.contains(&e.name);
        let mut src = self.plan.levels[info.level].src.open()?;
        let mut crc = crc32fast::Hasher::new();
        let mut md5 = want_md5.then(Md5::new);
        let mut others = Hashers::new(self.plan.want(0, &e.name));
        loop {
            let n = src.read(&mut self.buf).ctx(Stage::Unpack, || format!("read {}", e.name))?;
            if n == 0 {
                break;
            }
            crc.update(&self.buf[..n]);
            if let Some(h) = md5.as_mut() {
                h.update(&self.buf[..n]);
            }
            others.update(&self.buf[..n]);
            if cancelled() {
                return Err(Error::Cancelled);
            }
        }
        if crc.finalize() != e.crc32 {
            return Err(Error::reject(
                Code::ZipCorrupt,
                Stage::Unpack,
                Some(&e.name),
                format!(
                    "{}: its data does not match its CRC32 checksum: the entry was damaged (upload the archive again)",
                    e.name
                ),
            ));
        }
        Ok(FileRecord {
            level: 0,
            name: e.name.clone(),
            published: None,
            size: e.size,
            md5: md5.map(|h| h.finalize().into()),
            extra: others.finish(),
        })
    }

    fn extract(
        &mut self,
        level: usize,
        entries: &[usize],
        progress: &dyn Progress,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<FileRecord>> {
        let lv = &self.plan.levels[level];
        if self.open.as_ref().is_none_or(|(l, _)| *l != level) {
            // Same bytes as when planned: the entry count cannot have grown.
            self.open = None;
            let zip = archive::open_inner(lv.src.open()?, &lv.container, lv.entries.len() as u64, 0)?;
            self.open = Some((level, zip));
        }
        let Some((_, zip)) = self.open.as_mut() else {
            return Err(Error::io(Stage::Unpack, "open zip", io::Error::other("no archive handle")));
        };
        let mut out = Vec::with_capacity(entries.len());
        for &i in entries {
            let e = &lv.entries[i];
            let Role::Data(published) = &lv.roles[i] else { continue };
            let label = archive::label(&lv.container, &e.name);
            let mut others = Hashers::new(self.plan.want(level, &e.name));
            let reader = archive::open_entry(zip, e.index, &label)?;
            let on_bytes = |n| {
                progress.advance(n, 0);
                if cancelled() { Err(Error::Cancelled) } else { Ok(()) }
            };
            let buf = &mut self.buf;
            // The SHA digests (when wanted) are of the very bytes written.
            let copy = |out: &mut dyn Write| {
                let mut tee = md5sums::Tee { inner: out, hashers: std::mem::take(&mut others) };
                let c = archive::copy_entry(reader, e.size, &label, &mut tee, buf, on_bytes);
                others = tee.hashers;
                c
            };
            let copied = if let Some(store) = self.target.store {
                let mut w = store.writer(published)?;
                let c = copy(&mut w)?;
                w.commit(&c.md5)?;
                c
            } else {
                match self.target.root {
                    Some(root) if self.target.base.is_some() && e.size <= LINK_MAX => {
                        let mut bytes = Vec::with_capacity(e.size as usize);
                        let c = copy(&mut bytes)?;
                        place(&self.target, &self.syncer, root, published, &bytes)?;
                        c
                    }
                    Some(root) => {
                        let mut f = create(root, published)?;
                        let c = copy(&mut f)?;
                        finish(&self.syncer, self.target.fsync, f, published)?;
                        c
                    }
                    None => copy(&mut io::sink())?,
                }
            };
            progress.advance(0, 1);
            out.push(FileRecord {
                level,
                name: e.name.clone(),
                published: Some(published.clone()),
                size: copied.size,
                md5: Some(copied.md5),
                extra: others.finish(),
            });
        }
        Ok(out)
    }
}

/// Create a published file under `root`. The path was checked (relative,
/// no `..`, no conflicts) and staging holds nothing but what we made, so
/// `create_new` is a last guard rather than the check itself.
pub fn create(root: &Path, rel: &str) -> Result<File> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(parent)
            .ctx(Stage::Unpack, || format!("create folder for {rel}"))?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&path)
        .ctx(Stage::Unpack, || format!("create {rel}"))
}

/// fsync every file handed over; the first failure is the answer, but the
/// rest are still drained so no sender blocks.
fn drain_fsyncs(rx: mpsc::Receiver<(File, String)>) -> Result<()> {
    let mut result = Ok(());
    for (f, rel) in rx {
        if result.is_ok() {
            result = f.sync_data().ctx(Stage::Publish, || format!("fsync {rel}"));
        }
    }
    result
}
