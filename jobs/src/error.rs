//! The SPEC's error codes as one typed error.
//!
//! Two families matter to the daemon: a [`Rejection`] is the producer's fault
//! and final (retrying cannot help), while [`Error::Io`] is the host's fault
//! and worth retrying. Keeping them apart in the type means the retry policy
//! is a `match`, not string inspection.

use std::fmt;
use std::io;

use serde::Serialize;

/// Stable error codes: public interface (reports, Redis, exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    NotAZip,
    ZipCorrupt,
    UnsafePath,
    Symlink,
    Encrypted,
    UnsupportedMethod,
    LimitExceeded,
    NameConflict,
    NameInvalid,
    Md5Mismatch,
    Md5Missing,
    Md5Unlisted,
    PivotMissing,
    PivotInvalid,
    ProducerMismatch,
    DatasetMismatch,
    IoError,
    NoSpace,
}

impl Code {
    pub const ALL: [Code; 18] = [
        Code::NotAZip,
        Code::ZipCorrupt,
        Code::UnsafePath,
        Code::Symlink,
        Code::Encrypted,
        Code::UnsupportedMethod,
        Code::LimitExceeded,
        Code::NameConflict,
        Code::NameInvalid,
        Code::Md5Mismatch,
        Code::Md5Missing,
        Code::Md5Unlisted,
        Code::PivotMissing,
        Code::PivotInvalid,
        Code::ProducerMismatch,
        Code::DatasetMismatch,
        Code::IoError,
        Code::NoSpace,
    ];

    /// The code named by its stable string (reports, Redis), if any.
    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Code::NotAZip => "NOT_A_ZIP",
            Code::ZipCorrupt => "ZIP_CORRUPT",
            Code::UnsafePath => "UNSAFE_PATH",
            Code::Symlink => "SYMLINK",
            Code::Encrypted => "ENCRYPTED",
            Code::UnsupportedMethod => "UNSUPPORTED_METHOD",
            Code::LimitExceeded => "LIMIT_EXCEEDED",
            Code::NameConflict => "NAME_CONFLICT",
            Code::NameInvalid => "NAME_INVALID",
            Code::Md5Mismatch => "MD5_MISMATCH",
            Code::Md5Missing => "MD5_MISSING",
            Code::Md5Unlisted => "MD5_UNLISTED",
            Code::PivotMissing => "PIVOT_MISSING",
            Code::PivotInvalid => "PIVOT_INVALID",
            Code::ProducerMismatch => "PRODUCER_MISMATCH",
            Code::DatasetMismatch => "DATASET_MISMATCH",
            Code::IoError => "IO_ERROR",
            Code::NoSpace => "NO_SPACE",
        }
    }

    /// What a producer should do about it, in plain words (report.txt).
    pub fn advice(self) -> &'static str {
        match self {
            Code::NotAZip => "The file is not a zip archive. Upload the deposit as a .zip file.",
            Code::ZipCorrupt => {
                "The archive is damaged (an upload cut short, bytes added before or after the zip, or a corrupted entry). Upload it again; check it with `unzip -t` first."
            }
            Code::UnsafePath => {
                "An entry name would escape the deposit (absolute path, `..`, backslash or drive letter). Rebuild the archive with relative paths only."
            }
            Code::Symlink => "The archive contains a symbolic link. Replace links by the files themselves.",
            Code::Encrypted => "The archive is password-protected. Upload it without encryption.",
            Code::UnsupportedMethod => {
                "An entry uses a compression method the archive does not accept. Use plain Deflate (the default of zip tools) or store."
            }
            Code::LimitExceeded => {
                "The deposit is larger than this archive accepts (size, unpacked size, number of files, size of its metadata and checksum files, or path length). Split it or contact the archive."
            }
            Code::NameConflict => {
                "Two files would be published under the same name (names equal except for case or Unicode form, a file and a folder with one name, or a repeated name). Rename one of them."
            }
            Code::NameInvalid => {
                "A file name is not acceptable (control or invisible characters, a name Windows reserves such as NUL or one ending in a dot or a space, over-long, or not expected at this place). Rename the file."
            }
            Code::Md5Mismatch => {
                "A file does not match the MD5 checksum given for it. Upload it again, or regenerate the checksum."
            }
            Code::Md5Missing => {
                "A checksum manifest names a file that is not in the deposit, or checksums are required and none was given. Fix the manifest or add the file."
            }
            Code::Md5Unlisted => {
                "A checksum manifest does not list every file of its folder. Regenerate it with `md5sum` over all files."
            }
            Code::PivotMissing => "The deposit has no pivot metadata file <P>_en.json at its top level. Add it.",
            Code::PivotInvalid => "The pivot metadata file is not valid JSON of the expected form. Fix it.",
            Code::ProducerMismatch => {
                "The deposit names another producer than the folder it was uploaded to. Upload it into your own folder, or fix producer.producerId."
            }
            Code::DatasetMismatch => {
                "A dataset zip and the pivot metadata disagree (dataset not in the pivot, of another producer, missing, or a data file the pivot names is missing). Make them agree."
            }
            Code::IoError => {
                "The archive host had an internal problem. Nothing is needed from you; the archive team is told."
            }
            Code::NoSpace => {
                "The archive host is out of disk space. Nothing is needed from you; the archive team is told."
            }
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Pipeline stages, as recorded in status and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Unpack,
    Verify,
    Conflicts,
    Publish,
    Rotate,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Unpack => "unpack",
            Stage::Verify => "verify",
            Stage::Conflicts => "conflicts",
            Stage::Publish => "publish",
            Stage::Rotate => "rotate",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A deposit that is not acceptable: final, the producer must act.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub code: Code,
    pub stage: Stage,
    pub message: String,
    /// The offending entry, as the producer named it (`outer/inner` for an
    /// entry inside a dataset zip).
    pub entry: Option<String>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.stage, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Rejected(Rejection),
    /// The host's fault: retry later; the deposit is kept.
    #[error("{stage}: {context}: {source}")]
    Io {
        stage: Stage,
        context: String,
        #[source]
        source: io::Error,
    },
    /// The work was stopped from outside (another part failed, or shutdown).
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    pub fn reject(code: Code, stage: Stage, entry: Option<&str>, message: impl Into<String>) -> Self {
        Error::Rejected(Rejection { code, stage, message: message.into(), entry: entry.map(str::to_owned) })
    }

    pub fn io(stage: Stage, context: impl Into<String>, source: io::Error) -> Self {
        Error::Io { stage, context: context.into(), source }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::Rejected(r) => r.code,
            Error::Io { source, .. } => io_code(source),
            Error::Cancelled => Code::IoError,
        }
    }

    pub fn stage(&self) -> Stage {
        match self {
            Error::Rejected(r) => r.stage,
            Error::Io { stage, .. } => *stage,
            Error::Cancelled => Stage::Unpack,
        }
    }

    /// True for faults a retry may cure (I/O, disk full).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Io { .. } | Error::Cancelled)
    }

    pub fn entry(&self) -> Option<&str> {
        match self {
            Error::Rejected(r) => r.entry.as_deref(),
            Error::Io { .. } | Error::Cancelled => None,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Error::Rejected(r) => r.message.clone(),
            Error::Io { context, source, .. } => format!("{context}: {source}"),
            Error::Cancelled => "cancelled".into(),
        }
    }
}

/// ENOSPC and EDQUOT both mean "no room": the operator's problem, not an I/O fault.
fn io_code(e: &io::Error) -> Code {
    match e.raw_os_error() {
        Some(28) | Some(122) => Code::NoSpace,
        _ if e.kind() == io::ErrorKind::StorageFull => Code::NoSpace,
        _ => Code::IoError,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach a stage and a context to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, stage: Stage, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, stage: Stage, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(stage, context(), e))
    }
}
