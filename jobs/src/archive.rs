//! Reading zips: opening, listing the central directory under the SPEC's
//! rules, and streaming one entry with its checks. Everything the zip crate
//! says about an untrusted file goes through here, so that the mapping from
//! "what went wrong" to an error code lives in one place.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use md5::{Digest as _, Md5};
use zip::read::{ArchiveOffset, Config};
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

use crate::error::{Code, Error, Result, Stage};
use crate::md5sums::Digest;
use crate::names;
use crate::settings::{Checks, Limits};

const UTF8_FLAG: u16 = 0x0800;
const LOCAL_SIG: [u8; 4] = *b"PK\x03\x04";
const END_SIG: [u8; 4] = *b"PK\x05\x06";
const ZIP64_END_SIG: [u8; 4] = *b"PK\x06\x06";
const ZIP64_LOCATOR_SIG: [u8; 4] = *b"PK\x06\x07";
/// Fixed part of the end record; the comment (at most 65535 bytes) follows.
const END_LEN: u64 = 22;
const MAX_COMMENT: u64 = u16::MAX as u64;
const ZIP64_LOCATOR_LEN: u64 = 20;
/// Fixed part of the zip64 end record, signature included.
const ZIP64_END_LEN: u64 = 56;
/// The zip crate reads a zip64 end record's "extensible data" into memory;
/// no writer puts more than a few bytes there.
const MAX_ZIP64_EXTRA: u64 = 64 << 10;

/// A window of a file, read with `pread` so several readers can share one
/// file without sharing a cursor. This is how a stored dataset zip is read
/// in place, without copying it out of the deposit.
#[derive(Debug, Clone)]
pub struct Section {
    file: Arc<File>,
    start: u64,
    len: u64,
    pos: u64,
}

impl Section {
    pub fn new(file: Arc<File>, start: u64, len: u64) -> Self {
        Section { file, start, len, pos: 0 }
    }

    /// A whole file.
    pub fn whole(file: Arc<File>) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Section::new(file, 0, len))
    }

    /// The same bytes from their start, with a cursor of its own.
    pub fn rewound(&self) -> Self {
        Section { pos: 0, ..self.clone() }
    }

    /// A window inside this one.
    pub fn sub(&self, start: u64, len: u64) -> Self {
        Section::new(self.file.clone(), self.start + start, len.min(self.len.saturating_sub(start)))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fill `buf` from `at` (relative to this window), which must lie inside it.
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        if at.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of a zip"));
        }
        self.file.read_exact_at(buf, self.start + at)
    }
}

impl Read for Section {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for Section {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        Ok(self.pos)
    }
}

/// One central-directory entry that passed the name, type and method rules.
#[derive(Debug, Clone)]
pub struct Entry {
    pub index: usize,
    /// Checked name, without a directory's trailing slash.
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    pub compressed_size: u64,
    pub crc32: u32,
    pub stored: bool,
    /// Offset of the entry's data in the archive (for in-place reading).
    pub data_start: u64,
}

/// How to name an entry in messages: `MSEC_DAT_1.zip/obs.txt` for an entry
/// of a dataset zip, the bare name for the deposit's own entries.
pub fn label(container: &str, name: &str) -> String {
    if container.is_empty() { name.to_owned() } else { format!("{container}/{name}") }
}

/// How a zip is called in messages: the deposit itself, or one of its
/// dataset zips.
fn what(container: &str) -> String {
    if container.is_empty() { "the archive".to_owned() } else { format!("dataset zip {container}") }
}

fn corrupt(container: &str, message: String) -> Error {
    Error::reject(Code::ZipCorrupt, Stage::Unpack, (!container.is_empty()).then_some(container), message)
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// What a zip's end record says, once it is known to be this zip's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// Entries the central directory holds, by the end record.
    pub entries: u64,
    pub cd_offset: u64,
    pub cd_size: u64,
}

/// The parts of one end-record candidate.
struct Record {
    disk: u64,
    cd_disk: u64,
    entries_here: u64,
    entries: u64,
    cd_size: u64,
    cd_offset: u64,
    comment_len: u64,
}

impl Record {
    fn parse(b: &[u8]) -> Record {
        Record {
            disk: le16(b, 4),
            cd_disk: le16(b, 6),
            entries_here: le16(b, 8),
            entries: le16(b, 10),
            cd_size: le32(b, 12),
            cd_offset: le32(b, 16),
            comment_len: le16(b, 20),
        }
    }

    /// The same test the zip crate makes before it looks for zip64 records.
    fn may_be_zip64(&self) -> bool {
        self.entries == u64::from(u16::MAX)
            || self.cd_size == u64::from(u32::MAX)
            || self.cd_offset == u64::from(u32::MAX)
    }
}

/// Read and judge a zip's end record ourselves, before the zip crate parses
/// anything: the crate searches backwards for any end record and adjusts
/// for bytes before the archive, so a cut-short deposit of stored dataset
/// zips would be read as the last dataset zip, and it allocates for every
/// entry the record announces. Here the record must be the file's last
/// bytes (but for its comment), the central directory must end where the
/// end records start (nothing before the archive shifts its offsets), and
/// the file must start with a zip header. At most the last 64 KiB and a
/// zip64 record are read.
pub fn read_end(src: &Section, container: &str, max_entries: u64, counted: u64) -> Result<End> {
    let it = what(container);
    let io_err = |e| Error::io(Stage::Unpack, format!("read {it}"), e);
    let len = src.len();
    let mut head = [0u8; 4];
    let head = if len >= 4 {
        src.read_exact_at(&mut head, 0).map_err(io_err)?;
        Some(head)
    } else {
        None
    };
    let tail_len = len.min(END_LEN + MAX_COMMENT);
    let tail_start = len - tail_len;
    let mut tail = vec![0u8; tail_len as usize];
    src.read_exact_at(&mut tail, tail_start).map_err(io_err)?;
    // Complete end records in the tail, the last one first.
    let sigs: Vec<usize> =
        (0..tail.len().saturating_sub(END_LEN as usize - 1)).rev().filter(|&i| tail[i..i + 4] == END_SIG).collect();
    let exact = sigs.iter().position(|&i| i as u64 + END_LEN + le16(&tail, i + 20) == tail_len);
    let starts_local = head == Some(LOCAL_SIG);
    let cut_short = || {
        corrupt(
            container,
            if container.is_empty() {
                "the archive ends before its table of contents: the upload was probably cut short; upload it again"
                    .to_owned()
            } else {
                format!(
                    "{it} ends before its table of contents: it was damaged or cut short when it was made; rebuild it and upload the deposit again"
                )
            },
        )
    };
    let not_at_start = |before: Option<u64>| {
        let n = before.map_or_else(String::new, |n| format!(" ({n} bytes before it)"));
        corrupt(
            container,
            format!(
                "{it} does not start with a zip header{n}: something was written in front of the zip (a self-extractor, or another file joined to it); upload the zip file itself"
            ),
        )
    };
    let Some(k) = exact else {
        if sigs.is_empty() && !starts_local && head != Some(END_SIG) {
            if container.is_empty() {
                return Err(Error::reject(
                    Code::NotAZip,
                    Stage::Unpack,
                    None,
                    "the file is not a zip archive: it has neither a zip header at its start nor a zip table of contents at its end",
                ));
            }
            return Err(corrupt(
                container,
                format!(
                    "{it} is not a zip archive: it has neither a zip header at its start nor a zip table of contents at its end"
                ),
            ));
        }
        // An end record whose directory ends right before it, followed by
        // bytes it does not announce as its comment: something was appended.
        for &i in &sigs {
            let r = Record::parse(&tail[i..]);
            let at = tail_start + i as u64;
            let end = at + END_LEN + r.comment_len;
            if end < len && r.cd_offset.checked_add(r.cd_size) == Some(at) && starts_local {
                return Err(corrupt(
                    container,
                    format!(
                        "{it} has {} bytes after its end that are not part of it (not a zip comment): something was appended to the zip; upload the zip file itself",
                        len - end
                    ),
                ));
            }
        }
        return Err(if starts_local || head == Some(END_SIG) { cut_short() } else { not_at_start(None) });
    };
    if k != 0 {
        return Err(corrupt(
            container,
            format!(
                "{it}'s comment holds another end record, so where its table of contents is cannot be told; rebuild the zip"
            ),
        ));
    }
    let i = sigs[k];
    let at = tail_start + i as u64;
    let r = Record::parse(&tail[i..]);
    let split = || {
        corrupt(container, format!("{it} is one part of a split (multi-volume) zip; upload it as a single zip file"))
    };
    if r.disk != 0 || r.cd_disk != 0 || r.entries_here != r.entries {
        return Err(split());
    }
    // A zip64 locator right before the end record points at the zip64 end
    // record, which then sits between the directory and the locator. When
    // the end record gives its values itself (no "see zip64" marker) and
    // its directory ends right at the end record, the 20 bytes before it
    // are the directory's own (the last entry's comment), whatever they
    // look like: no locator can be there.
    let mut dir_end = at;
    let mut end = End { entries: r.entries, cd_offset: r.cd_offset, cd_size: r.cd_size };
    let mut locator = [0u8; ZIP64_LOCATOR_LEN as usize];
    let plain_end = !r.may_be_zip64() && r.cd_offset.checked_add(r.cd_size) == Some(at);
    if !plain_end
        && at >= ZIP64_LOCATOR_LEN
        && src.read_exact_at(&mut locator, at - ZIP64_LOCATOR_LEN).is_ok()
        && locator[..4] == ZIP64_LOCATOR_SIG
    {
        let loc_at = at - ZIP64_LOCATOR_LEN;
        let z64_at = le64(&locator, 8);
        if le32(&locator, 4) != 0 || le32(&locator, 16) > 1 {
            return Err(split());
        }
        let mut z = [0u8; ZIP64_END_LEN as usize];
        let fits = z64_at.checked_add(ZIP64_END_LEN).is_some_and(|e| e <= loc_at);
        if !fits || src.read_exact_at(&mut z, z64_at).is_err() || z[..4] != ZIP64_END_SIG {
            return Err(if starts_local { cut_short() } else { not_at_start(None) });
        }
        let record_end = le64(&z, 4).checked_add(12).and_then(|n| n.checked_add(z64_at));
        if record_end != Some(loc_at) {
            return Err(corrupt(
                container,
                format!("{it}'s zip64 end record does not end where its locator starts (damaged zip); rebuild the zip"),
            ));
        }
        if le64(&z, 4) > ZIP64_END_LEN - 12 + MAX_ZIP64_EXTRA {
            return Err(corrupt(
                container,
                format!(
                    "{it}'s zip64 end record carries {} bytes of extra data, more than any zip tool writes (damaged or hand-made zip); rebuild the zip",
                    le64(&z, 4) - (ZIP64_END_LEN - 12)
                ),
            ));
        }
        if le32(&z, 16) != 0 || le32(&z, 20) != 0 || le64(&z, 24) != le64(&z, 32) {
            return Err(split());
        }
        dir_end = z64_at;
        end = End { entries: le64(&z, 32), cd_offset: le64(&z, 48), cd_size: le64(&z, 40) };
        // Each end-record field holds its value, or says "see zip64"
        // (all ones); anything else contradicts the zip64 record.
        let fields = [
            ("number of entries", r.entries, end.entries, u64::from(u16::MAX)),
            ("size of the table of contents", r.cd_size, end.cd_size, u64::from(u32::MAX)),
            ("offset of the table of contents", r.cd_offset, end.cd_offset, u64::from(u32::MAX)),
        ];
        if let Some((what, old, new, _)) = fields.iter().find(|&&(_, old, new, marker)| old != marker && old != new) {
            return Err(corrupt(
                container,
                format!(
                    "{it}'s end record gives {old} as the {what} where its zip64 end record gives {new} (and does not say \"see zip64\"): the two records disagree (damaged zip); rebuild the zip"
                ),
            ));
        }
    }
    match end.cd_offset.checked_add(end.cd_size) {
        Some(e) if e == dir_end => {}
        // The record describes a zip that ends earlier in the file: either
        // bytes were put in front of the archive, or this is the end record
        // of a zip stored inside it and the archive's own end is missing.
        Some(e) if e < dir_end && !starts_local && head != Some(END_SIG) => {
            return Err(not_at_start(Some(dir_end - e)));
        }
        Some(e) if e < dir_end => return Err(cut_short()),
        _ => {
            return Err(corrupt(
                container,
                format!(
                    "{it}'s end record places its table of contents past the end of the file (damaged zip); upload it again"
                ),
            ));
        }
    }
    // An empty archive is its end record alone.
    let empty = head == Some(END_SIG) && at == 0;
    if !starts_local && !empty {
        return Err(not_at_start(None));
    }
    if end.entries.saturating_add(counted) > max_entries {
        let before = if counted > 0 { format!(" (with {counted} before it in the deposit)") } else { String::new() };
        return Err(Error::reject(
            Code::LimitExceeded,
            Stage::Unpack,
            (!container.is_empty()).then_some(container),
            format!("{it} holds {} entries{before}; limits.max_entries is {max_entries}", end.entries),
        ));
    }
    Ok(end)
}

/// Parse the central directory that [`read_end`] vouched for, at offset 0
/// exactly (no search for bytes in front), and check the crate found the
/// same one.
fn parse(src: Section, container: &str, end: &End) -> Result<ZipArchive<Section>> {
    let it = what(container);
    let zip =
        ZipArchive::with_config(Config { archive_offset: ArchiveOffset::Known(0) }, src).map_err(|e| match e {
            ZipError::Io(e) if e.raw_os_error().is_some() => Error::io(Stage::Unpack, format!("read {it}"), e),
            e => corrupt(container, format!("{it}'s table of contents is damaged and cannot be read (detail: {e})")),
        })?;
    if zip.offset() != 0 || zip.central_directory_start() != end.cd_offset {
        return Err(corrupt(
            container,
            format!("{it}'s table of contents is not where its end record says (damaged zip); upload it again"),
        ));
    }
    Ok(zip)
}

/// Open the deposit, telling "this is not a zip at all" from "a damaged zip".
pub fn open_outer(path: &Path, limits: &Limits) -> Result<(Section, ZipArchive<Section>)> {
    // Never through a link, and never a FIFO that would block: the
    // daemon checked this at claim, `depot check`/`ingest` are told here.
    let file = crate::rotate::open_nofollow(path).map_err(|e| {
        let why = if e.raw_os_error() == Some(40) {
            io::Error::other("it is a symbolic link; give the file itself")
        } else {
            e
        };
        Error::io(Stage::Unpack, format!("open {}", path.display()), why)
    })?;
    let meta = file.metadata().map_err(|e| Error::io(Stage::Unpack, format!("stat {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(Error::io(
            Stage::Unpack,
            format!("open {}", path.display()),
            io::Error::other("not a regular file"),
        ));
    }
    let len = meta.len();
    if len == 0 {
        return Err(Error::reject(
            Code::NotAZip,
            Stage::Unpack,
            None,
            "the file is empty (0 bytes): the upload carried nothing; upload the archive again",
        ));
    }
    if len > limits.max_archive_bytes {
        return Err(Error::reject(
            Code::LimitExceeded,
            Stage::Unpack,
            None,
            format!("the archive is {len} bytes; limits.max_archive_bytes is {}", limits.max_archive_bytes),
        ));
    }
    let src = Section::new(Arc::new(file), 0, len);
    let end = read_end(&src, "", limits.max_entries, 0)?;
    let zip = parse(src.clone(), "", &end)?;
    Ok((src, zip))
}

/// Open a zip inside the deposit (`container` names it; empty for the
/// deposit itself, read again), under the same rules as the deposit.
/// `counted` entries of the deposit were listed before this one, and the
/// whole deposit may hold `max_entries`.
pub fn open_inner(reader: Section, container: &str, max_entries: u64, counted: u64) -> Result<ZipArchive<Section>> {
    let end = read_end(&reader, container, max_entries, counted)?;
    parse(reader, container, &end)
}

/// List and judge every entry of one zip: names, links, encryption, methods,
/// repeated names and overlapping bodies. Nothing is inflated here.
pub fn list(
    zip: &mut ZipArchive<Section>,
    src: &Section,
    container: &str,
    limits: &Limits,
    checks: &Checks,
) -> Result<Vec<Entry>> {
    let it = what(container);
    let damaged = |e: ZipError| match e {
        ZipError::Io(e) if e.raw_os_error().is_some() => Error::io(Stage::Unpack, format!("read {it}"), e),
        e => corrupt(container, format!("{it}'s table of contents is damaged and cannot be read (detail: {e})")),
    };
    // read_end already refused this from the end record; kept as a guard
    // for callers that open a zip some other way.
    if zip.len() as u64 > limits.max_entries {
        return Err(Error::reject(
            Code::LimitExceeded,
            Stage::Unpack,
            (!container.is_empty()).then_some(container),
            format!("{} entries; limits.max_entries is {}", zip.len(), limits.max_entries),
        ));
    }
    if zip.has_duplicate_names() {
        let dup = duplicate_name(src.rewound(), zip.central_directory_start(), zip.len() + 1)
            .unwrap_or_else(|| "(unknown)".into());
        let entry = label(container, &dup);
        return Err(Error::reject(
            Code::NameConflict,
            Stage::Conflicts,
            Some(&entry),
            format!("{entry} appears more than once in the zip directory"),
        ));
    }
    let mut out = Vec::with_capacity(zip.len());
    for index in 0..zip.len() {
        let f = zip.by_index_raw(index).map_err(damaged)?;
        let utf8 = f.flags().as_u16() & UTF8_FLAG != 0;
        let raw_label = label(container, &String::from_utf8_lossy(f.name_raw()));
        let decoded = names::decode_name(f.name_raw(), utf8)
            .map_err(|e| Error::reject(e.code, Stage::Unpack, Some(&raw_label), format!("{raw_label:?}: {}", e.why)))?;
        let name = names::check_name(&decoded, limits.max_path_len)
            .map_err(|e| {
                Error::reject(
                    e.code,
                    Stage::Unpack,
                    Some(&label(container, &decoded)),
                    format!("{:?}: {}", label(container, &decoded), e.why),
                )
            })?
            .to_owned();
        let entry = label(container, &name);
        // Judged on the central directory, before any data is written; the
        // SPEC reports these under `conflicts`.
        names::check_rules(&name, checks.portable_names)
            .map_err(|e| Error::reject(e.code, Stage::Conflicts, Some(&entry), format!("{entry:?}: {}", e.why)))?;
        let reject = |code, msg: &str| Error::reject(code, Stage::Unpack, Some(&entry), format!("{entry}: {msg}"));
        if f.encrypted() {
            return Err(reject(Code::Encrypted, "entry is encrypted"));
        }
        if f.is_symlink() {
            return Err(reject(Code::Symlink, "entry is a symbolic link"));
        }
        let is_dir = f.is_dir();
        let method = f.compression();
        let stored = match method {
            CompressionMethod::Stored => true,
            CompressionMethod::Deflated | CompressionMethod::Deflate64 => false,
            other => {
                return Err(reject(
                    Code::UnsupportedMethod,
                    &format!("compression method {other} is not accepted (stored, deflate and deflate64 are)"),
                ));
            }
        };
        if is_dir && f.size() > 0 {
            return Err(reject(Code::ZipCorrupt, "a folder entry that holds data (a damaged or hand-made zip)"));
        }
        let data_start = f.data_start().unwrap_or(0);
        out.push(Entry {
            index,
            name,
            is_dir,
            size: f.size(),
            compressed_size: f.compressed_size(),
            crc32: f.crc32(),
            stored,
            data_start,
        });
    }
    if zip.has_overlapping_entries().map_err(damaged)? {
        return Err(corrupt(
            container,
            format!(
                "in {it} several entries share the same bytes (overlapping entries, a zip-bomb technique); rebuild the zip with an ordinary zip tool"
            ),
        ));
    }
    Ok(out)
}

/// The zip crate keeps one entry per name, so find the repeated one by
/// walking the raw central directory (bounded by the entry count).
fn duplicate_name(mut src: Section, cd_start: u64, max: usize) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    src.seek(SeekFrom::Start(cd_start)).ok()?;
    let mut head = [0u8; 46];
    for _ in 0..max.min(1 << 20) {
        src.read_exact(&mut head).ok()?;
        if head[..4] != *b"PK\x01\x02" {
            return None;
        }
        let le = |i: usize| u16::from_le_bytes([head[i], head[i + 1]]) as usize;
        let mut name = vec![0u8; le(28)];
        src.read_exact(&mut name).ok()?;
        src.seek(SeekFrom::Current((le(30) + le(32)) as i64)).ok()?;
        if !seen.insert(name.clone()) {
            return Some(String::from_utf8_lossy(&name).into_owned());
        }
    }
    None
}

/// Why reading an entry failed, before it becomes an [`Error`].
fn read_fault(e: io::Error, entry: &str) -> Error {
    if e.raw_os_error().is_some() {
        return Error::io(Stage::Unpack, format!("read {entry}"), e);
    }
    let text = e.to_string();
    if text.contains("larger than its declared") {
        // The zip crate caps reads at the declared size too; same verdict
        // as our own cap in `copy_entry`.
        return Error::reject(
            Code::LimitExceeded,
            Stage::Unpack,
            Some(entry),
            format!("{entry}: inflates past its declared size"),
        );
    }
    let why = if text.contains("checksum") {
        "its data does not match its CRC32 checksum: the entry was damaged (upload the archive again)".to_owned()
    } else {
        format!("its compressed data is damaged and cannot be unpacked (detail: {e})")
    };
    Error::reject(Code::ZipCorrupt, Stage::Unpack, Some(entry), format!("{entry}: {why}"))
}

/// What streaming one entry produced.
#[derive(Debug, Clone, Copy)]
pub struct Copied {
    pub size: u64,
    pub md5: Digest,
}

/// Stream one entry to `out`, hashing on the way, reading at most one byte
/// past the declared size so a lying header cannot inflate without bound.
/// The zip reader checks the CRC32 when the entry is read to its end.
pub fn copy_entry(
    reader: impl Read,
    declared: u64,
    entry: &str,
    out: &mut dyn Write,
    buf: &mut [u8],
    mut on_bytes: impl FnMut(u64) -> Result<()>,
) -> Result<Copied> {
    let mut limited = reader.take(declared.saturating_add(1));
    let mut md5 = Md5::new();
    let mut size = 0u64;
    loop {
        let n = match limited.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_fault(e, entry)),
        };
        size += n as u64;
        if size > declared {
            return Err(Error::reject(
                Code::LimitExceeded,
                Stage::Unpack,
                Some(entry),
                format!("{entry}: inflates past its declared size of {declared} bytes"),
            ));
        }
        md5.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| Error::io(Stage::Unpack, format!("write {entry}"), e))?;
        on_bytes(n as u64)?;
    }
    if size < declared {
        return Err(Error::reject(
            Code::ZipCorrupt,
            Stage::Unpack,
            Some(entry),
            format!(
                "{entry}: {size} bytes of data where {declared} are declared: the entry is cut short (damaged zip)"
            ),
        ));
    }
    Ok(Copied { size, md5: md5.finalize().into() })
}

/// Open entry `index` for reading its inflated content.
pub fn open_entry<'a, R: Read + Seek>(
    zip: &'a mut ZipArchive<R>,
    index: usize,
    entry: &str,
) -> Result<zip::read::ZipFile<'a, R>> {
    zip.by_index(index).map_err(|e| match e {
        ZipError::Io(e) => read_fault(e, entry),
        e => Error::reject(
            Code::ZipCorrupt,
            Stage::Unpack,
            Some(entry),
            format!("{entry}: its header in the zip is damaged and it cannot be read (detail: {e})"),
        ),
    })
}
