//! Building zips byte by byte, so that tests can make exactly the hostile
//! archive they need (lying sizes, shared bodies, odd flags) — things no
//! well-behaved zip writer will produce.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::DeflateEncoder;
use jobs::pipeline::{self, IngestOptions, Job};
use jobs::publish::Published;
use jobs::report::Report;
use jobs::{Error, Settings};

pub const STORED: u16 = 0;
pub const DEFLATED: u16 = 8;

#[derive(Clone, Debug)]
pub struct RawEntry {
    pub name: Vec<u8>,
    pub data: Vec<u8>,
    pub method: u16,
    pub flags: u16,
    /// Overrides of what the headers declare.
    pub crc: Option<u32>,
    pub size: Option<u32>,
    pub external_attr: u32,
    /// Replace the body bytes after compression (corruption tests).
    pub body: Option<Vec<u8>>,
    /// The entry's comment in the central directory.
    pub comment: Vec<u8>,
}

impl RawEntry {
    pub fn new(name: impl AsRef<[u8]>, data: impl Into<Vec<u8>>, method: u16) -> Self {
        RawEntry {
            name: name.as_ref().to_vec(),
            data: data.into(),
            method,
            flags: 0x0800,
            crc: None,
            size: None,
            external_attr: 0o100644 << 16,
            body: None,
            comment: Vec::new(),
        }
    }
}

#[derive(Default, Clone, Debug)]
pub struct RawZip {
    entries: Vec<RawEntry>,
    /// Extra central-directory records pointing at entry `.0`'s body.
    aliases: Vec<(usize, Vec<u8>)>,
}

pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}

pub fn md5hex(data: &[u8]) -> String {
    use md5::Digest;
    jobs::md5sums::hex(&md5::Md5::digest(data).into())
}

impl RawZip {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn file(mut self, name: impl AsRef<[u8]>, data: impl Into<Vec<u8>>) -> Self {
        self.entries.push(RawEntry::new(name, data, DEFLATED));
        self
    }
    pub fn stored(mut self, name: impl AsRef<[u8]>, data: impl Into<Vec<u8>>) -> Self {
        self.entries.push(RawEntry::new(name, data, STORED));
        self
    }
    pub fn dir(mut self, name: &str) -> Self {
        let mut e = RawEntry::new(name, Vec::new(), STORED);
        e.external_attr = (0o040755 << 16) | 0x10;
        self.entries.push(e);
        self
    }
    pub fn raw(mut self, e: RawEntry) -> Self {
        self.entries.push(e);
        self
    }
    pub fn alias(mut self, of: usize, name: &str) -> Self {
        self.aliases.push((of, name.as_bytes().to_vec()));
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        let mut records = Vec::new();
        for e in &self.entries {
            let body =
                e.body.clone().unwrap_or_else(|| if e.method == DEFLATED { deflate(&e.data) } else { e.data.clone() });
            let crc = e.crc.unwrap_or_else(|| crc32(&e.data));
            let size = e.size.unwrap_or(e.data.len() as u32);
            let offset = out.len() as u32;
            out.extend_from_slice(b"PK\x03\x04");
            for v in [20u16, e.flags, e.method, 0, 0x21] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            for v in [crc, body.len() as u32, size] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&e.name);
            out.extend_from_slice(&body);
            records.push((e.clone(), crc, body.len() as u32, size, offset));
        }
        let mut all: Vec<(RawEntry, u32, u32, u32, u32)> = records.clone();
        for (of, name) in &self.aliases {
            let mut r = records[*of].clone();
            r.0.name = name.clone();
            all.push(r);
        }
        for (e, crc, csize, size, offset) in &all {
            central.extend_from_slice(b"PK\x01\x02");
            for v in [(3u16 << 8) | 20, 20, e.flags, e.method, 0, 0x21] {
                central.extend_from_slice(&v.to_le_bytes());
            }
            for v in [*crc, *csize, *size] {
                central.extend_from_slice(&v.to_le_bytes());
            }
            for v in [e.name.len() as u16, 0, e.comment.len() as u16, 0, 0] {
                central.extend_from_slice(&v.to_le_bytes());
            }
            central.extend_from_slice(&e.external_attr.to_le_bytes());
            central.extend_from_slice(&offset.to_le_bytes());
            central.extend_from_slice(&e.name);
            central.extend_from_slice(&e.comment);
        }
        let cd_offset = out.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(b"PK\x05\x06");
        for v in [0u16, 0, all.len() as u16, all.len() as u16] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_offset.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }
}

/// `md5sum` output for these files.
pub fn md5sums(files: &[(&str, &[u8])]) -> Vec<u8> {
    files.iter().map(|(n, d)| format!("{}  {n}\n", md5hex(d))).collect::<String>().into_bytes()
}

pub fn pivot(p: &str, datasets: &[(&str, &[&str])]) -> Vec<u8> {
    let ds: Vec<serde_json::Value> = datasets
        .iter()
        .map(|(id, files)| {
            let obs: Vec<serde_json::Value> = files
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    serde_json::json!({"observationId": format!("{p}_OBS_{id}_{i}"), "result": {"dataFile": {"name": f}}})
                })
                .collect();
            serde_json::json!({"datasetId": id, "metadata": {"title": "t"}, "observations": obs})
        })
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({
        "version": "1.1",
        "producer": {"producerId": p, "name": "test producer"},
        "datasets": ds,
    }))
    .unwrap()
}

/// A well-formed Theia deposit: `<P>_en.json`, one stored zip per dataset,
/// MD5SUMS at both levels when `md5` is set.
/// A dataset: its id and its files (name, content).
pub type Dataset<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>);

pub fn theia(p: &str, datasets: &[Dataset<'_>], md5: bool) -> Vec<u8> {
    let names: Vec<(&str, Vec<&str>)> =
        datasets.iter().map(|(id, files)| (*id, files.iter().map(|(n, _)| *n).collect())).collect();
    let refs: Vec<(&str, &[&str])> = names.iter().map(|(id, f)| (*id, f.as_slice())).collect();
    let pivot = pivot(p, &refs);
    let mut outer = RawZip::new().file(format!("{p}_en.json"), pivot.clone());
    let mut top: Vec<(String, Vec<u8>)> = vec![(format!("{p}_en.json"), pivot)];
    for (id, files) in datasets {
        let mut z = RawZip::new();
        for (n, d) in files {
            z = z.file(n, d.clone());
        }
        if md5 {
            let list: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
            z = z.file("MD5SUMS", md5sums(&list));
        }
        let bytes = z.build();
        outer = outer.stored(format!("{id}.zip"), bytes.clone());
        top.push((format!("{id}.zip"), bytes));
    }
    if md5 {
        let list: Vec<(&str, &[u8])> = top.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        outer = outer.file("MD5SUMS", md5sums(&list));
    }
    outer.build()
}

/// A small good Theia deposit.
pub fn good_theia(p: &str, tag: &str) -> Vec<u8> {
    theia(
        p,
        &[
            (
                &format!("{p}_DAT_1"),
                vec![("obs1.txt", format!("a,b\n1,{tag}\n").into_bytes()), ("obs2.csv", b"x\n".to_vec())],
            ),
            (&format!("{p}_DAT_2"), vec![("obs3.txt", b"hello".to_vec())]),
        ],
        true,
    )
}

/// A sandbox: drop and publish roots under one temp dir.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub drop_root: PathBuf,
    pub publish_root: PathBuf,
}

pub struct Outcome {
    pub result: Result<Published, Error>,
    pub report: Report,
    pub id: String,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let drop_root = tmp.path().join("drop");
        let publish_root = tmp.path().join("publish");
        fs::create_dir_all(&drop_root).unwrap();
        fs::create_dir_all(&publish_root).unwrap();
        Env { tmp, drop_root, publish_root }
    }

    /// Put an archive where a worker would find it (the spool).
    pub fn put(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let dir = self.drop_root.join(".depot").join("spool");
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    pub fn ingest(&self, p: &str, name: &str, bytes: &[u8], settings: &Settings) -> Outcome {
        self.ingest_with(p, name, bytes, None, settings, IngestOptions::default())
    }

    pub fn ingest_with(
        &self,
        p: &str,
        name: &str,
        bytes: &[u8],
        sidecar: Option<&str>,
        settings: &Settings,
        opts: IngestOptions,
    ) -> Outcome {
        let archive = self.put(name, bytes);
        let side = sidecar.map(|s| {
            let sp = archive.with_file_name(format!("{name}.md5"));
            fs::write(&sp, s).unwrap();
            sp
        });
        let id = jobs::deposit::new_id(p);
        let job = Job { id: &id, producer: p, archive: &archive, name, sidecar: side.as_deref(), settings };
        let started = jobs::deposit::now_rfc3339();
        let result = pipeline::ingest(&job, &self.publish_root, opts, &jobs::unpack::Quiet);
        let (report, _) = if result.as_ref().is_err_and(|e| e.is_transient()) {
            (
                Report::failure(
                    jobs::report::ReportBase { deposit: id.clone(), producer: p.into(), archive: name.into(), started },
                    result.as_ref().err().unwrap(),
                ),
                None,
            )
        } else {
            pipeline::finish(&job, &self.drop_root.join(p), &started, &result).unwrap()
        };
        Outcome { result, report, id }
    }

    pub fn current(&self, p: &str) -> Option<PathBuf> {
        fs::read_link(self.publish_root.join(p).join("current")).ok()
    }

    /// Every path under `root` with its size, for before/after comparisons.
    pub fn tree(root: &Path) -> BTreeMap<PathBuf, u64> {
        let mut out = BTreeMap::new();
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, u64>) {
            let Ok(rd) = fs::read_dir(dir) else { return };
            for e in rd.flatten() {
                let p = e.path();
                let m = fs::symlink_metadata(&p).unwrap();
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), if m.is_file() { m.len() } else { 0 });
                if m.is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        walk(root, root, &mut out);
        out
    }

    pub fn staging_is_empty(&self) -> bool {
        fs::read_dir(self.publish_root.join(".staging")).map_or(true, |mut d| d.next().is_none())
    }
}

pub fn plain() -> Settings {
    Settings {
        profile: jobs::Profile::Plain,
        publish: jobs::Publish { fsync: false, ..Default::default() },
        ..Default::default()
    }
}

pub fn theia_settings() -> Settings {
    Settings { publish: jobs::Publish { fsync: false, ..Default::default() }, ..Default::default() }
}

/// `zip` (as `RawZip::build` makes it: no comment) with a zip comment.
pub fn with_comment(zip: &[u8], comment: &[u8]) -> Vec<u8> {
    let mut out = zip.to_vec();
    let n = out.len();
    out[n - 2..].copy_from_slice(&(comment.len() as u16).to_le_bytes());
    out.extend_from_slice(comment);
    out
}

/// `zip` (as `RawZip::build` makes it) ended the zip64 way: a zip64 end
/// record and its locator before an end record whose fields say "see
/// zip64". `entries` overrides the count the zip64 record gives.
pub fn with_zip64_end(zip: &[u8], entries: Option<u64>) -> Vec<u8> {
    let eocd = zip.len() - 22;
    let le16 = |i: usize| u16::from_le_bytes([zip[i], zip[i + 1]]) as u64;
    let le32 = |i: usize| u32::from_le_bytes([zip[i], zip[i + 1], zip[i + 2], zip[i + 3]]) as u64;
    let count = entries.unwrap_or(le16(eocd + 10));
    let (cd_size, cd_offset) = (le32(eocd + 12), le32(eocd + 16));
    let mut out = zip[..eocd].to_vec();
    let z64_at = out.len() as u64;
    out.extend_from_slice(b"PK\x06\x06");
    out.extend_from_slice(&44u64.to_le_bytes());
    for v in [45u16, 45] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [0u32, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [count, count, cd_size, cd_offset] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(b"PK\x06\x07");
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&z64_at.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(b"PK\x05\x06");
    for v in [0u16, 0, 0xffff, 0xffff] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [u32::MAX, u32::MAX] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A deflated entry `name` whose content is a zip holding one stored file
/// `inner` of `n` zero bytes: a dataset zip that is small in the deposit
/// and `n` bytes once inflated. Built streaming, so a test can make a big
/// one without holding it.
pub fn zip_of_zeros_deflated(name: &str, inner: &str, n: u32) -> RawEntry {
    struct Crc<W: Write> {
        out: W,
        crc: crc32fast::Hasher,
        len: u64,
    }
    impl<W: Write> Write for Crc<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = self.out.write(b)?;
            self.crc.update(&b[..n]);
            self.len += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.out.flush()
        }
    }
    let zeros = vec![0u8; 1 << 20];
    let mut data_crc = crc32fast::Hasher::new();
    let mut left = n as usize;
    while left > 0 {
        let k = left.min(zeros.len());
        data_crc.update(&zeros[..k]);
        left -= k;
    }
    let data_crc = data_crc.finalize();
    let mut w =
        Crc { out: DeflateEncoder::new(Vec::new(), Compression::fast()), crc: crc32fast::Hasher::new(), len: 0 };
    let header = |w: &mut Crc<DeflateEncoder<Vec<u8>>>, sig: &[u8], central: bool| {
        w.write_all(sig).unwrap();
        if central {
            w.write_all(&((3u16 << 8) | 20).to_le_bytes()).unwrap();
        }
        for v in [20u16, 0x0800, 0, 0, 0x21] {
            w.write_all(&v.to_le_bytes()).unwrap();
        }
        for v in [data_crc, n, n] {
            w.write_all(&v.to_le_bytes()).unwrap();
        }
        w.write_all(&(inner.len() as u16).to_le_bytes()).unwrap();
        w.write_all(&0u16.to_le_bytes()).unwrap();
        if central {
            for v in [0u16, 0, 0] {
                w.write_all(&v.to_le_bytes()).unwrap();
            }
            w.write_all(&(0o100644u32 << 16).to_le_bytes()).unwrap();
            w.write_all(&0u32.to_le_bytes()).unwrap();
        }
        w.write_all(inner.as_bytes()).unwrap();
    };
    header(&mut w, b"PK\x03\x04", false);
    let mut left = n as usize;
    while left > 0 {
        let k = left.min(zeros.len());
        w.write_all(&zeros[..k]).unwrap();
        left -= k;
    }
    let cd_at = w.len as u32;
    header(&mut w, b"PK\x01\x02", true);
    let cd_size = w.len as u32 - cd_at;
    w.write_all(b"PK\x05\x06").unwrap();
    for v in [0u16, 0, 1, 1] {
        w.write_all(&v.to_le_bytes()).unwrap();
    }
    for v in [cd_size, cd_at] {
        w.write_all(&v.to_le_bytes()).unwrap();
    }
    w.write_all(&0u16.to_le_bytes()).unwrap();
    let size = w.len;
    let crc = w.crc.clone().finalize();
    let body = w.out.finish().unwrap();
    let mut e = RawEntry::new(name, Vec::new(), DEFLATED);
    e.crc = Some(crc);
    e.size = Some(size as u32);
    e.body = Some(body);
    e
}

/// Keeps what the pipeline warned about.
#[derive(Default)]
pub struct Recorder {
    pub warnings: std::sync::Mutex<Vec<String>>,
}

impl jobs::unpack::Progress for Recorder {
    fn warn(&self, msg: &str) {
        self.warnings.lock().unwrap().push(msg.to_owned());
    }
}

impl Env {
    /// Like `ingest_with`, but the sidecar is whatever `sidecar` makes
    /// beside the archive (a link, a FIFO...), and progress is watched.
    pub fn ingest_with_sidecar_path(
        &self,
        p: &str,
        name: &str,
        bytes: &[u8],
        sidecar: impl FnOnce(&Path) -> PathBuf,
        settings: &Settings,
        progress: &dyn jobs::unpack::Progress,
    ) -> Outcome {
        let archive = self.put(name, bytes);
        let side = sidecar(&archive);
        let id = jobs::deposit::new_id(p);
        let job = Job { id: &id, producer: p, archive: &archive, name, sidecar: Some(&side), settings };
        let started = jobs::deposit::now_rfc3339();
        let result = pipeline::ingest(&job, &self.publish_root, IngestOptions::default(), progress);
        let (report, _) = pipeline::finish(&job, &self.drop_root.join(p), &started, &result).unwrap();
        Outcome { result, report, id }
    }
}

/// A Theia deposit with one big stored file (`mib` MiB in `<P>_DAT_1.zip`):
/// slow enough for the daemon's tests to catch it mid-job.
pub fn big_deposit(p: &str, mib: usize) -> Vec<u8> {
    let inner = RawZip::new().stored("big.bin", vec![7u8; mib << 20]).build();
    RawZip::new()
        .file(format!("{p}_en.json"), pivot(p, &[(&format!("{p}_DAT_1"), &["big.bin"])]))
        .stored(format!("{p}_DAT_1.zip"), inner)
        .build()
}
