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
    EmptyDeposit,
    IoError,
    NoSpace,
    ChecksumMismatch,
    BagInvalid,
    FormatInvalid,
    VirusFound,
    ValidatorFailed,
}

impl Code {
    pub const ALL: [Code; 24] = [
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
        Code::EmptyDeposit,
        Code::IoError,
        Code::NoSpace,
        Code::ChecksumMismatch,
        Code::BagInvalid,
        Code::FormatInvalid,
        Code::VirusFound,
        Code::ValidatorFailed,
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
            Code::EmptyDeposit => "EMPTY_DEPOSIT",
            Code::IoError => "IO_ERROR",
            Code::NoSpace => "NO_SPACE",
            Code::ChecksumMismatch => "CHECKSUM_MISMATCH",
            Code::BagInvalid => "BAG_INVALID",
            Code::FormatInvalid => "FORMAT_INVALID",
            Code::VirusFound => "VIRUS_FOUND",
            Code::ValidatorFailed => "VALIDATOR_FAILED",
        }
    }

    /// What was wrong, in plain words, for people who never read a zip
    /// specification (report.txt, `depot check`). The report's message
    /// then names the file and the detail.
    pub fn summary(self) -> &'static str {
        match self {
            Code::NotAZip => "The file is not a zip archive (or it is empty).",
            Code::ZipCorrupt => {
                "The zip archive is damaged: the upload was cut short, bytes were added before or after it, or an entry does not read back as it was stored."
            }
            Code::UnsafePath => {
                "A name in the archive would place a file outside the deposit (an absolute path, `..`, a backslash or a drive letter)."
            }
            Code::Symlink => "The archive contains a symbolic link instead of a file.",
            Code::Encrypted => "The archive (or an entry in it) is protected by a password.",
            Code::UnsupportedMethod => "An entry is compressed with a method this archive does not accept.",
            Code::LimitExceeded => {
                "The deposit is larger than this archive accepts: its size, unpacked size, number of files, size of its metadata and checksum files, or the length of a path."
            }
            Code::NameConflict => {
                "Two files would be published under the same name: names that differ only in case or Unicode form, a file and a folder of one name, or a name given twice."
            }
            Code::NameInvalid => {
                "A file name is not acceptable: control or invisible characters, a name Windows reserves (such as NUL or COM1) or one ending in a dot or a space, a name that is too long, or a file not expected at this place."
            }
            Code::Md5Mismatch => {
                "A file does not match the MD5 checksum given for it, or a checksum file is not in md5sum format."
            }
            Code::Md5Missing => {
                "A checksum file lists a file that is not in the deposit, or checksums are required here and none were given."
            }
            Code::Md5Unlisted => "A checksum file does not list every file of its folder.",
            Code::PivotMissing => "The deposit has no pivot metadata file <P>_en.json at its top level.",
            Code::PivotInvalid => {
                "The pivot metadata file is not valid JSON, or lacks producer.producerId, datasets or an observation's result.dataFile.name."
            }
            Code::ProducerMismatch => "The deposit belongs to another producer than the folder it was uploaded to.",
            Code::DatasetMismatch => {
                "A dataset zip and the pivot metadata disagree: a dataset zip not listed in the pivot, a dataset of the pivot without its zip, or a data file named by the pivot missing from its zip."
            }
            Code::EmptyDeposit => {
                "The archive holds no file to publish (it is empty, or holds only folders or checksum files)."
            }
            Code::IoError => {
                "The archive host could not read or write a file (a fault of the host, not of the deposit)."
            }
            Code::NoSpace => "The archive host is out of disk space (a fault of the host, not of the deposit).",
            Code::ChecksumMismatch => {
                "A file does not match the SHA-256 or SHA-512 checksum given for it, or a checksum file is not in sha256sum/sha512sum format."
            }
            Code::BagInvalid => {
                "The archive is not a valid BagIt bag (RFC 8493): a required file is missing or malformed, a manifest and the files disagree, or a path leads outside the bag."
            }
            Code::FormatInvalid => {
                "A file is not valid in its format: the archive's check program for such files (for example a netCDF or FITS reader) refused it."
            }
            Code::VirusFound => "The archive's virus scanner found malicious software in the deposit.",
            Code::ValidatorFailed => {
                "A check program of the archive host failed (it crashed, ran too long or could not start): a fault of the host, not of the deposit."
            }
        }
    }

    /// What to do about it, in plain words (report.txt, `depot check`).
    pub fn advice(self) -> &'static str {
        match self {
            Code::NotAZip => {
                "Pack the deposit as a .zip file (zip, 7-Zip or your system's \"compress\") and upload that."
            }
            Code::ZipCorrupt => {
                "Upload the archive again, whole. Test it first with `unzip -t` (or `depot check`) on your side."
            }
            Code::UnsafePath => {
                "Rebuild the archive from inside the deposit's folder, so that every name is a relative path."
            }
            Code::Symlink => "Replace each link by the file it points to, then rebuild the archive.",
            Code::Encrypted => "Rebuild the archive without a password.",
            Code::UnsupportedMethod => {
                "Rebuild the archive with plain Deflate (the default of zip tools) or without compression."
            }
            Code::LimitExceeded => {
                "Split the deposit into smaller ones, shorten the paths, or ask the archive team for a higher limit."
            }
            Code::NameConflict => "Rename one of the two files (the message names both) and rebuild the archive.",
            Code::NameInvalid => "Rename the file the message names (or remove it) and rebuild the archive.",
            Code::Md5Mismatch => {
                "If the file is right, regenerate its checksum (`md5sum FILE`); otherwise upload it again: it was damaged on its way."
            }
            Code::Md5Missing => {
                "Fix the checksum file so that it lists only files in the deposit, or add the missing file; where checksums are required, add an MD5SUMS file (`md5sum * > MD5SUMS`)."
            }
            Code::Md5Unlisted => "Regenerate the checksum file over all files of its folder (`md5sum * > MD5SUMS`).",
            Code::PivotMissing => {
                "Add the pivot file, named after your producer id (for example MSEC_en.json), at the top of the archive."
            }
            Code::PivotInvalid => {
                "Fix the pivot file at the line and column the message gives, then rebuild the archive."
            }
            Code::ProducerMismatch => {
                "Upload into your own folder, or correct producer.producerId and the file names to your producer id."
            }
            Code::DatasetMismatch => {
                "Make the dataset zips and the pivot agree: one <P>_DAT_<id>.zip per dataset of the pivot, holding every data file its observations name."
            }
            Code::EmptyDeposit => {
                "Check that the files were added when the archive was made (`unzip -l` lists them), then upload it again; if an empty deposit is really meant, ask the archive team to allow it."
            }
            Code::IoError => {
                "Nothing is needed from you: the deposit is kept and tried again, and the archive team is told."
            }
            Code::NoSpace => "Nothing is needed from you: the deposit is kept and tried again once there is room.",
            Code::ChecksumMismatch => {
                "If the file is right, regenerate its checksum (`sha256sum FILE` or `sha512sum FILE`); otherwise upload it again: it was damaged on its way."
            }
            Code::BagInvalid => {
                "Fix the file and rule the message names, or make the bag again with a BagIt tool (bagit-python: `bagit.py --sha256 mybag`), then zip it with `zip -r bag.zip mybag/`."
            }
            Code::FormatInvalid => {
                "Open the file named with the program the report quotes (for example `ncdump -h FILE` or `fitsverify FILE`), correct or regenerate it, and rebuild the archive."
            }
            Code::VirusFound => {
                "Scan your computer and the deposit's files with an up-to-date antivirus, remove or clean the infected file, rebuild the archive and upload it again."
            }
            Code::ValidatorFailed => {
                "Nothing is needed from you: the deposit is kept and tried again, and the archive team is told."
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
    /// The first lines a validator printed, control characters escaped
    /// (FORMAT_INVALID, VIRUS_FOUND): the tool's own words on what is wrong.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
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
        Error::Rejected(Rejection {
            code,
            stage,
            message: message.into(),
            entry: entry.map(str::to_owned),
            output: Vec::new(),
        })
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

    /// A validator's output lines, for the report.
    pub fn output(&self) -> &[String] {
        match self {
            Error::Rejected(r) => &r.output,
            Error::Io { .. } | Error::Cancelled => &[],
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

/// ENOSPC and EDQUOT both mean "no room": the operator's problem, not an
/// I/O fault. A validator's own fault is carried as an I/O error (it is
/// transient the same way) and named by its type.
fn io_code(e: &io::Error) -> Code {
    if e.get_ref().is_some_and(|r| r.is::<crate::validate::ValidatorFault>()) {
        return Code::ValidatorFailed;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code tells a scientist what was wrong and what to do, in
    /// sentences, and never with jargon a producer cannot act on.
    #[test]
    fn every_code_says_what_was_wrong_and_what_to_do() {
        for c in Code::ALL {
            let (what, todo) = (c.summary(), c.advice());
            for t in [what, todo] {
                assert!(t.len() > 30 && t.ends_with('.') && t.starts_with(char::is_uppercase), "{c}: {t:?}");
                for jargon in ["EOCD", "central directory", "errno", "os error", "Received"] {
                    assert!(!t.contains(jargon), "{c}: {t:?}");
                }
            }
            assert_ne!(what, todo, "{c}");
            assert_eq!(Code::parse(c.as_str()), Some(c));
        }
    }
}
