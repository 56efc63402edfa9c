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
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

use crate::error::{Code, Error, Result, Stage};
use crate::md5sums::Digest;
use crate::names;
use crate::settings::Limits;

const UTF8_FLAG: u16 = 0x0800;
const ZIP_MAGIC: [&[u8; 4]; 3] = [b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"];

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

/// Open the deposit, telling "this is not a zip at all" from "a damaged zip".
pub fn open_outer(path: &Path, limits: &Limits) -> Result<(Section, ZipArchive<Section>)> {
    let file = File::open(path).map_err(|e| Error::io(Stage::Unpack, format!("open {}", path.display()), e))?;
    let len = file.metadata().map_err(|e| Error::io(Stage::Unpack, format!("stat {}", path.display()), e))?.len();
    if len == 0 {
        return Err(Error::reject(Code::NotAZip, Stage::Unpack, None, "the file is empty"));
    }
    if len > limits.max_archive_bytes {
        return Err(Error::reject(
            Code::LimitExceeded,
            Stage::Unpack,
            None,
            format!("the archive is {len} bytes; limits.max_archive_bytes is {}", limits.max_archive_bytes),
        ));
    }
    let mut magic = [0u8; 4];
    let n = file.read_at(&mut magic, 0).map_err(|e| Error::io(Stage::Unpack, "read archive", e))?;
    let looks_zip = n == 4 && ZIP_MAGIC.iter().any(|m| **m == magic);
    let src = Section::new(Arc::new(file), 0, len);
    let zip = ZipArchive::new(src.clone()).map_err(|e| match e {
        ZipError::Io(e) if e.raw_os_error().is_some() => Error::io(Stage::Unpack, "read archive", e),
        e if looks_zip => Error::reject(Code::ZipCorrupt, Stage::Unpack, None, format!("damaged zip: {e}")),
        _ => Error::reject(Code::NotAZip, Stage::Unpack, None, "not a zip archive (no zip signature found)"),
    })?;
    Ok((src, zip))
}

/// Open a dataset zip found inside the deposit.
pub fn open_inner(reader: Section, container: &str) -> Result<ZipArchive<Section>> {
    ZipArchive::new(reader).map_err(|e| match e {
        ZipError::Io(e) if e.raw_os_error().is_some() => Error::io(Stage::Unpack, format!("read {container}"), e),
        e => Error::reject(
            Code::ZipCorrupt,
            Stage::Unpack,
            Some(container),
            format!("dataset zip {container} is not a readable zip: {e}"),
        ),
    })
}

/// List and judge every entry of one zip: names, links, encryption, methods,
/// repeated names and overlapping bodies. Nothing is inflated here.
pub fn list(zip: &mut ZipArchive<Section>, src: &Section, container: &str, limits: &Limits) -> Result<Vec<Entry>> {
    let corrupt = |e: ZipError| match e {
        ZipError::Io(e) if e.raw_os_error().is_some() => Error::io(Stage::Unpack, "read central directory", e),
        e => Error::reject(
            Code::ZipCorrupt,
            Stage::Unpack,
            (!container.is_empty()).then_some(container),
            format!("damaged zip{}: {e}", if container.is_empty() { String::new() } else { format!(" {container}") }),
        ),
    };
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
        let f = zip.by_index_raw(index).map_err(corrupt)?;
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
            return Err(reject(Code::ZipCorrupt, "folder entry with content"));
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
    if zip.has_overlapping_entries().map_err(corrupt)? {
        return Err(Error::reject(
            Code::ZipCorrupt,
            Stage::Unpack,
            (!container.is_empty()).then_some(container),
            format!(
                "{}: several entries share the same bytes (overlapping entries, a zip-bomb technique)",
                if container.is_empty() { "archive" } else { container }
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
    let what = if text.contains("checksum") {
        "CRC32 does not match the data (corrupted entry)".to_owned()
    } else {
        format!("cannot inflate: {e}")
    };
    Error::reject(Code::ZipCorrupt, Stage::Unpack, Some(entry), format!("{entry}: {what}"))
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
            format!("{entry}: {size} bytes of data, {declared} declared (truncated)"),
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
        e => Error::reject(Code::ZipCorrupt, Stage::Unpack, Some(entry), format!("{entry}: {e}")),
    })
}
