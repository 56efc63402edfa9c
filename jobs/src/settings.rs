//! What the pipeline needs to know about one producer. The daemon's config
//! layer merges global and per-producer tables into one of these.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Theia/OZCAR: pivot json + one zip per dataset, unpacked one level.
    #[default]
    Theia,
    /// IGN archive: the archive's files published as they are.
    Plain,
    /// One BagIt bag (RFC 8493), validated and published as it is.
    Bagit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// The deposit is the producer's complete state.
    #[default]
    Replace,
    /// The new release is the current one plus the delivered files.
    Merge,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Checks {
    pub case_insensitive: bool,
    pub flat_names: bool,
    pub require_md5: bool,
    /// Refuse names Windows cannot store (`NUL.txt`, `a./b`): releases are
    /// downloaded on every system, and such a file silently fails or changes
    /// name there.
    pub portable_names: bool,
    /// Accept an archive with no file to publish. Off: an empty archive is
    /// more often a mistake than a wish, and in `replace` mode it would
    /// publish an empty release over the producer's current one.
    pub allow_empty: bool,
    /// `[[checks.validators]]`: programs run over the staged files before
    /// publish (a producer's own are added to the global ones).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub validators: Vec<crate::validate::Validator>,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            case_insensitive: true,
            flat_names: false,
            require_md5: false,
            portable_names: true,
            allow_empty: false,
            validators: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Size of the uploaded archive file.
    pub max_archive_bytes: u64,
    /// Sum of every published file's size (both zip levels), plus the
    /// inflated size of each compressed dataset zip: those are written out
    /// to scratch to be read, and that disk is spent before their content is.
    pub max_unpacked_bytes: u64,
    /// Entries in the archive plus entries in every dataset zip.
    pub max_entries: u64,
    /// Bytes of a published path, relative to the release root.
    pub max_path_len: u64,
    /// Free space the publish filesystem must keep after the release is written.
    pub min_free_bytes: u64,
    /// Pivots, checksum manifests and the sidecar of one deposit, together:
    /// they are read into memory, so this bounds what one deposit's
    /// metadata can cost a worker, whatever the archive declares.
    pub max_metadata_bytes: u64,
    /// Deposits one producer may have claimed and not ended (the daemon's
    /// spool index costs memory per deposit); the rest wait in `new/`,
    /// costing nothing, and are claimed in drop order as these end.
    pub max_backlog: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_archive_bytes: 64 << 30,
            max_unpacked_bytes: 256 << 30,
            max_entries: 100_000,
            max_path_len: 1024,
            min_free_bytes: 1 << 30,
            max_metadata_bytes: 16 << 20,
            max_backlog: 10_000,
        }
    }
}

/// Where releases go (SPEC "Publish targets").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PublishTarget {
    /// `<publish_root>/<P>/releases/…` and the `current` symlink.
    #[default]
    Fs,
    /// `[publish.s3]`: a bucket, with `<prefix>/<P>/current` a JSON document.
    S3,
}

/// `[publish.s3]`. Credentials are not here: they are read from the file
/// named (or the environment) when a deposit is published, never kept in
/// the config that is logged or shown.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// `http(s)://host[:port]`; the bucket is addressed path-style.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Key prefix under which `<P>/…` go; may be empty.
    pub prefix: String,
    /// An AWS-style shared credentials file; without one, the environment.
    pub credentials_file: Option<std::path::PathBuf>,
    pub profile: String,
    /// Bytes of one multipart part, also the largest object sent in one
    /// PutObject. One part per unpack thread is held in memory.
    pub part_size: u64,
    /// PEM certificates of the CA(s) an https endpoint is checked against,
    /// instead of the public (Mozilla) roots: an archive's own S3 behind
    /// its own CA.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            prefix: String::new(),
            credentials_file: None,
            profile: "default".into(),
            part_size: 8 << 20,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Publish {
    pub target: PublishTarget,
    pub s3: S3Settings,
    pub mode: PublishMode,
    pub keep_releases: u32,
    /// Off only for throwaway test roots: without it a power cut can leave
    /// `current` pointing at files that never reached the disk.
    pub fsync: bool,
}

impl Default for Publish {
    fn default() -> Self {
        Publish {
            target: PublishTarget::Fs,
            s3: S3Settings::default(),
            mode: PublishMode::Replace,
            keep_releases: 3,
            fsync: true,
        }
    }
}

/// Everything the pipeline reads from configuration for one producer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Settings {
    pub profile: Profile,
    pub checks: Checks,
    pub limits: Limits,
    pub publish: Publish,
    /// Worker threads one deposit may use (datasets run in parallel).
    pub threads: usize,
    /// `[producers.P] names`: every published path must match it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<crate::scheme::Scheme>,
    /// `[producers.P] deposit_names`: the uploaded archive's own name must match it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deposit_names: Option<crate::scheme::Scheme>,
}

impl Settings {
    pub fn threads(&self) -> usize {
        // Asked once: std reads the cgroup files on every call, and this is
        // asked once per deposit.
        static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        if self.threads > 0 {
            self.threads
        } else {
            *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        }
    }

    /// Impossible values, named by their config key.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_archive_bytes", l.max_archive_bytes),
            ("limits.max_unpacked_bytes", l.max_unpacked_bytes),
            ("limits.max_entries", l.max_entries),
            ("limits.max_path_len", l.max_path_len),
            ("limits.max_metadata_bytes", l.max_metadata_bytes),
            ("limits.max_backlog", l.max_backlog),
        ] {
            if v == 0 {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        if self.publish.target == PublishTarget::S3 {
            let s3 = &self.publish.s3;
            if !(s3.endpoint.starts_with("http://") || s3.endpoint.starts_with("https://")) {
                return Err("publish.s3.endpoint must be http(s)://host[:port] when publish.target = \"s3\"".into());
            }
            if s3.bucket.is_empty() {
                return Err("publish.s3.bucket must be set when publish.target = \"s3\"".into());
            }
            if s3.region.is_empty() {
                return Err("publish.s3.region must not be empty".into());
            }
            // S3's own bounds: parts but the last are at least 5 MiB, and
            // one PutObject or part is at most 5 GiB.
            if !(5 << 20..=5 << 30).contains(&s3.part_size) {
                return Err("publish.s3.part_size must be between 5 MiB (5242880) and 5 GiB".into());
            }
            if s3.prefix.split('/').any(|c| c == "." || c == "..") {
                return Err("publish.s3.prefix must not hold `.` or `..` components".into());
            }
        }
        if self.profile == Profile::Bagit && self.publish.mode == PublishMode::Merge {
            // A merged release is the current one plus the delivered files:
            // its manifests would not list the kept ones, so it would not
            // be a bag.
            return Err("publish.mode = \"merge\" cannot be used with profile = \"bagit\": every release must be the bag itself (use publish.mode = \"replace\")".into());
        }
        for (i, v) in self.checks.validators.iter().enumerate() {
            if let Some(why) = v.problem() {
                return Err(format!("checks.validators[{i}]: {why}"));
            }
        }
        if self.publish.keep_releases == 0 {
            return Err("publish.keep_releases must be at least 1 (the current release)".into());
        }
        Ok(())
    }
}
