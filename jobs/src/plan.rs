//! Everything decided from the central directories, before a byte of data
//! is written: which entry becomes which published file, which entries are
//! manifests, pivots and dataset zips, and whether the deposit fits the
//! limits and the profile. A deposit that fails here costs no disk.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zip::ZipArchive;

use crate::archive::{self, Copied, Entry, Section, label};
use crate::bagit;
use crate::conflicts::{self, Name};
use crate::error::{Code, Error, IoContext, Result, Stage};
use crate::md5sums::{self, Digest, Line, Want, is_manifest_name};
use crate::names::{self, dirname};
use crate::settings::{Limits, Profile, Settings};
use crate::theia::{self, TopName};

/// One zip level: the deposit itself (level 0) or a dataset zip in it.
#[derive(Debug)]
pub struct Level {
    /// Name of the dataset zip in the deposit; empty for level 0.
    pub container: String,
    /// Where its bytes are: in place in the deposit, or a scratch copy.
    pub src: Source,
    pub entries: Vec<Entry>,
    pub roles: Vec<Role>,
}

/// Where a level's bytes are.
#[derive(Debug)]
pub enum Source {
    /// A window of the deposit file (level 0, stored dataset zips): one
    /// descriptor shared by every level.
    InPlace(Section),
    /// A compressed dataset zip inflated to this scratch file. It is opened
    /// only while it is read, so a deposit of thousands of compressed
    /// dataset zips does not hold a descriptor for each.
    Scratch(PathBuf),
}

impl Source {
    /// The bytes, with a cursor of their own.
    pub fn open(&self) -> Result<Section> {
        match self {
            Source::InPlace(s) => Ok(s.rewound()),
            Source::Scratch(path) => {
                let file = File::open(path).ctx(Stage::Unpack, || format!("open {}", path.display()))?;
                Section::whole(Arc::new(file)).ctx(Stage::Unpack, || format!("stat {}", path.display()))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Published at this path, relative to the release root.
    Data(String),
    /// A checksum manifest: read, checked against, not published.
    Manifest,
    /// A dataset zip, unpacked as this level.
    Container(usize),
    /// A folder entry: only its name matters (file/folder conflicts).
    Dir,
}

/// A parsed checksum manifest.
#[derive(Debug)]
pub struct Manifest {
    pub level: usize,
    /// Its folder inside its level; its lines are relative to it.
    pub dir: String,
    pub label: String,
    pub algo: md5sums::Algo,
    pub lines: Vec<Line>,
}

/// A dataset zip's own checksum, when it was already computed while
/// copying a compressed dataset zip out to scratch.
#[derive(Debug, Clone)]
pub struct Container {
    pub outer_entry: usize,
    pub level: usize,
    pub copied: Option<Copied>,
    /// The SHA digests a manifest asked of it, measured with `copied`.
    pub extra: md5sums::Extra,
}

#[derive(Debug)]
pub struct Plan {
    pub levels: Vec<Level>,
    pub manifests: Vec<Manifest>,
    /// Files already read into memory (pivots), published from there; with
    /// the manifests, bounded by `limits.max_metadata_bytes`.
    pub small: BTreeMap<(usize, usize), Vec<u8>>,
    pub containers: Vec<Container>,
    /// Level-0 names some manifest lists: only those containers need an MD5.
    pub listed_top: HashSet<String>,
    /// (level, name) of the files a SHA-256/SHA-512 manifest lists, with
    /// the digests to compute for them: the others cost only their MD5.
    pub wants: HashMap<(usize, String), Want>,
    /// Bytes of the files to publish.
    pub total_bytes: u64,
    pub total_files: u64,
    /// Bytes of compressed dataset zips inflated to scratch to be read; they
    /// count against `limits.max_unpacked_bytes` with `total_bytes`.
    pub scratch_bytes: u64,
    /// The bag of a `bagit` deposit, judged from its tag files: its
    /// digests are compared once the unpack pass measured them.
    pub bag: Option<bagit::Bag>,
}

impl Plan {
    /// The SHA digests a manifest gives for entry `name` of `level`.
    pub fn want(&self, level: usize, name: &str) -> Want {
        // Most deposits give no SHA at all: no key is built for them.
        if self.wants.is_empty() {
            return Want::default();
        }
        self.wants.get(&(level, name.to_owned())).copied().unwrap_or_default()
    }

    pub fn entry_label(&self, level: usize, entry: usize) -> String {
        label(&self.levels[level].container, &self.levels[level].entries[entry].name)
    }
}

/// Inputs of planning besides the archive.
pub struct Input<'a> {
    pub archive: &'a Path,
    pub producer: &'a str,
    pub settings: &'a Settings,
    /// Where compressed dataset zips are copied out to be read.
    pub scratch: &'a Path,
    /// A sidecar MD5 was given (counts for `checks.require_md5`).
    pub has_sidecar: bool,
    /// Bytes of the sidecar read into memory: they count against
    /// `limits.max_metadata_bytes` with the pivots and manifests.
    pub sidecar_bytes: u64,
    /// Published paths of the current release kept by a merge.
    pub kept: &'a [String],
}

/// Bytes of metadata (pivots, manifests, sidecar) one deposit holds in
/// memory, charged before each is read, from its declared size: an entry
/// cannot inflate past that (`copy_entry`), so the charge is a true bound.
struct Metadata {
    used: u64,
    max: u64,
}

impl Metadata {
    fn charge(&mut self, bytes: u64, entry: &str) -> Result<()> {
        let total = self.used.saturating_add(bytes);
        if total > self.max {
            return Err(Error::reject(
                Code::LimitExceeded,
                Stage::Unpack,
                Some(entry),
                format!(
                    "{entry}: {bytes} bytes of metadata; with the pivots, checksum manifests and sidecar before it, {total} bytes, over limits.max_metadata_bytes ({})",
                    self.max
                ),
            ));
        }
        self.used = total;
        Ok(())
    }

    /// Charge every entry of a level that is read into memory, before any
    /// of them is read: a deposit over the limit costs no inflating.
    fn charge_level(&mut self, lv: &Level, in_memory: impl Fn(&Role) -> bool) -> Result<()> {
        for (e, r) in lv.entries.iter().zip(&lv.roles) {
            if in_memory(r) {
                self.charge(e.size, &label(&lv.container, &e.name))?;
            }
        }
        Ok(())
    }
}

/// Bytes a level will publish.
fn data_bytes(lv: &Level) -> u64 {
    lv.entries
        .iter()
        .zip(&lv.roles)
        .filter(|(_, r)| matches!(r, Role::Data(_)))
        .fold(0u64, |n, (e, _)| n.saturating_add(e.size))
}

pub fn build(input: &Input<'_>) -> Result<Plan> {
    let limits = &input.settings.limits;
    let checks = &input.settings.checks;
    let (src, mut zip) = archive::open_outer(input.archive, limits)?;
    let entries = archive::list(&mut zip, &src, "", limits, checks)?;
    let mut plan = Plan {
        levels: Vec::new(),
        manifests: Vec::new(),
        small: BTreeMap::new(),
        containers: Vec::new(),
        listed_top: HashSet::new(),
        wants: HashMap::new(),
        total_bytes: 0,
        total_files: 0,
        scratch_bytes: 0,
        bag: None,
    };
    // The caller refused a sidecar over the limit on its own, before reading it.
    let mut meta = Metadata { used: input.sidecar_bytes, max: limits.max_metadata_bytes };
    let bag_root = match input.settings.profile {
        Profile::Bagit => Some(bagit::locate(&entries)?),
        _ => None,
    };
    let roles = match (input.settings.profile, &bag_root) {
        (Profile::Bagit, Some(root)) => bag_roles(&entries, root),
        (Profile::Plain | Profile::Bagit, _) => plain_roles(&entries),
        (Profile::Theia, _) => theia_roles(&entries, input.producer, &mut plan.containers)?,
    };
    plan.levels.push(Level { container: String::new(), src: Source::InPlace(src), entries, roles });
    // Level 0's data entries are the pivots in a Theia deposit (read and
    // kept to publish), and are streamed in a plain one.
    let theia = input.settings.profile == Profile::Theia;
    meta.charge_level(&plan.levels[0], |r| *r == Role::Manifest || (theia && matches!(r, Role::Data(_))))?;
    read_manifests(&mut plan, 0, &mut zip)?;
    if let Some(root) = &bag_root {
        read_bag(&mut plan, &mut zip, &mut meta, root)?;
    }
    for m in &plan.manifests {
        plan.listed_top.extend(m.lines.iter().map(|l| names::join(&m.dir, &l.path)));
    }
    if theia {
        let pivot = read_pivots(&mut plan, &mut zip, input.producer)?;
        open_containers(&mut plan, &mut zip, input, &mut meta)?;
        let mut zips = BTreeMap::new();
        for c in &plan.containers {
            let level = &plan.levels[c.level];
            let root_files: BTreeSet<String> =
                level.entries.iter().filter(|e| !e.is_dir && !e.name.contains('/')).map(|e| e.name.clone()).collect();
            let id = level.container.trim_end_matches(".zip").to_owned();
            zips.insert(id, root_files);
        }
        theia::check_datasets(&pivot.0, &pivot.1, &zips)?;
    }
    check_totals(&mut plan, input)?;
    check_names(&plan, input)?;
    Ok(plan)
}

fn plain_roles(entries: &[Entry]) -> Vec<Role> {
    entries
        .iter()
        .map(|e| {
            if e.is_dir {
                Role::Dir
            } else if is_manifest_name(&e.name) {
                Role::Manifest
            } else {
                Role::Data(e.name.clone())
            }
        })
        .collect()
}

/// Every file of the bag is published, at its path in the bag: the release
/// is the bag itself, its manifests and tag files included.
fn bag_roles(entries: &[Entry], root: &str) -> Vec<Role> {
    entries
        .iter()
        .map(|e| match e.name.strip_prefix(root) {
            Some(p) if !e.is_dir => Role::Data(p.to_owned()),
            _ => Role::Dir,
        })
        .collect()
}

/// Read and judge the bag's tag files (charged to the metadata budget
/// first), and ask the unpack pass for the digests its manifests give.
fn read_bag(plan: &mut Plan, zip: &mut ZipArchive<Section>, meta: &mut Metadata, root: &str) -> Result<()> {
    let lv = &plan.levels[0];
    let mut files = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    let mut tags = Vec::new();
    for (i, (e, r)) in lv.entries.iter().zip(&lv.roles).enumerate() {
        match r {
            Role::Data(p) => {
                files.insert(p.clone(), e.size);
                if bagit::is_parsed_tag(p) {
                    tags.push((i, p.clone()));
                }
            }
            _ => {
                if let Some(d) = e.name.strip_prefix(root) {
                    dirs.insert(d.to_owned());
                }
            }
        }
    }
    bagit::refuse_fetch(&files)?;
    for (i, _) in &tags {
        meta.charge(lv.entries[*i].size, &lv.entries[*i].name)?;
    }
    let mut texts = BTreeMap::new();
    let mut small = Vec::new();
    for (i, p) in tags {
        let (bytes, _) = read_small(zip, lv, i)?;
        texts.insert(p.clone(), bytes);
        small.push((i, p));
    }
    let bag = bagit::parse(root, &files, &dirs, &texts)?;
    for (name, algo) in bag.wants() {
        plan.wants.entry((0, name)).or_default().add(algo);
    }
    // Published from memory, hashed there (Unit::Small).
    for (i, p) in small {
        if let Some(bytes) = texts.remove(&p) {
            plan.small.insert((0, i), bytes);
        }
    }
    plan.bag = Some(bag);
    Ok(())
}

fn theia_roles(entries: &[Entry], producer: &str, containers: &mut Vec<Container>) -> Result<Vec<Role>> {
    let mut roles = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let role = if e.is_dir {
            return Err(Error::reject(
                Code::NameInvalid,
                Stage::Unpack,
                Some(&e.name),
                format!("{}/: a Theia deposit has no folders at its top level; datasets travel as zips", e.name),
            ));
        } else if is_manifest_name(&e.name) && !e.name.contains('/') {
            Role::Manifest
        } else {
            match theia::classify(&e.name, producer)? {
                TopName::Pivot { .. } => Role::Data(e.name.clone()),
                TopName::Dataset { .. } => {
                    let level = containers.len() + 1;
                    containers.push(Container { outer_entry: i, level, copied: None, extra: Default::default() });
                    Role::Container(level)
                }
            }
        };
        roles.push(role);
    }
    Ok(roles)
}

/// Read a small entry whole. Its declared size was charged to the metadata
/// budget, and `copy_entry` stops one byte past it.
fn read_small(zip: &mut ZipArchive<Section>, level: &Level, i: usize) -> Result<(Vec<u8>, Copied)> {
    let e = &level.entries[i];
    let entry = label(&level.container, &e.name);
    let mut out = Vec::with_capacity(usize::try_from(e.size).unwrap_or(0));
    let mut buf = vec![0u8; 64 << 10];
    let reader = archive::open_entry(zip, e.index, &entry)?;
    let copied = archive::copy_entry(reader, e.size, &entry, &mut out, &mut buf, |_| Ok(()))?;
    Ok((out, copied))
}

fn read_manifests(plan: &mut Plan, level: usize, zip: &mut ZipArchive<Section>) -> Result<()> {
    let lv = &plan.levels[level];
    for i in 0..lv.entries.len() {
        if lv.roles[i] != Role::Manifest {
            continue;
        }
        let entry = label(&lv.container, &lv.entries[i].name);
        let algo = md5sums::manifest_algo(&lv.entries[i].name).unwrap_or(md5sums::Algo::Md5);
        let (bytes, _) = read_small(zip, lv, i)?;
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::reject(
                algo.mismatch(),
                Stage::Verify,
                Some(&entry),
                format!("{entry}: checksum manifest is not UTF-8 text"),
            )
        })?;
        let lines = md5sums::parse_as(&text, algo).map_err(|e| {
            Error::reject(
                algo.mismatch(),
                Stage::Verify,
                Some(&entry),
                format!("{entry}: line {} is not `<{}>  <path>`: {}", e.line, algo.ext(), e.why),
            )
        })?;
        let dir = dirname(&lv.entries[i].name).to_owned();
        if algo != md5sums::Algo::Md5 {
            for l in &lines {
                let path = names::join(&dir, &l.path);
                let path = names::check_name(&path, u64::MAX).map_or(path.clone(), str::to_owned);
                plan.wants.entry((level, path)).or_default().add(algo);
            }
        }
        plan.manifests.push(Manifest { level, dir, label: entry, algo, lines });
    }
    Ok(())
}

/// Read and check every pivot; return the English one (the reference).
fn read_pivots(plan: &mut Plan, zip: &mut ZipArchive<Section>, producer: &str) -> Result<(theia::Pivot, String)> {
    let lv = &plan.levels[0];
    let reference = format!("{producer}_en.json");
    let mut found = None;
    for i in 0..lv.entries.len() {
        let Role::Data(name) = &lv.roles[i] else { continue };
        let (bytes, _) = read_small(zip, lv, i)?;
        let pivot = theia::parse_pivot(&bytes, name, producer)?;
        if *name == reference {
            found = Some((pivot, name.clone()));
        }
        plan.small.insert((0, i), bytes);
    }
    found.ok_or_else(|| {
        Error::reject(
            Code::PivotMissing,
            Stage::Unpack,
            Some(&reference),
            format!("no pivot metadata {reference} at the top level of the deposit"),
        )
    })
}

/// Find each dataset zip's bytes and list its entries. A stored dataset zip
/// is read in place; a compressed one is inflated once to scratch, hashing
/// on the way, because a zip can only be read with seeks. That scratch copy
/// is disk spent before any check of its content, so its declared size is
/// charged to `limits.max_unpacked_bytes` first (with everything counted
/// before it), and `copy_entry` stops it one byte past that size.
fn open_containers(
    plan: &mut Plan,
    zip: &mut ZipArchive<Section>,
    input: &Input<'_>,
    meta: &mut Metadata,
) -> Result<()> {
    let limits = &input.settings.limits;
    let mut published = data_bytes(&plan.levels[0]);
    let mut entries = plan.levels[0].entries.len() as u64;
    for c in 0..plan.containers.len() {
        let outer = plan.containers[c].outer_entry;
        let e = plan.levels[0].entries[outer].clone();
        let container = e.name.clone();
        let (src, source) = if e.stored {
            if e.compressed_size != e.size {
                return Err(Error::reject(
                    Code::ZipCorrupt,
                    Stage::Unpack,
                    Some(&container),
                    format!(
                        "{container}: a stored entry whose compressed and real sizes differ (damaged zip); upload it again"
                    ),
                ));
            }
            let Source::InPlace(deposit) = &plan.levels[0].src else {
                return Err(Error::io(Stage::Unpack, "read deposit", std::io::Error::other("level 0 is not in place")));
            };
            let src = deposit.sub(e.data_start, e.size);
            (src.clone(), Source::InPlace(src))
        } else {
            let scratch = plan.scratch_bytes.saturating_add(e.size);
            if published.saturating_add(scratch) > limits.max_unpacked_bytes {
                return Err(Error::reject(
                    Code::LimitExceeded,
                    Stage::Unpack,
                    Some(&container),
                    format!(
                        "{container} is compressed and would take {} bytes on disk to be read; with what the deposit already counts ({published} bytes to publish, {} bytes of dataset zips inflated before it) that is over limits.max_unpacked_bytes ({})",
                        e.size, plan.scratch_bytes, limits.max_unpacked_bytes
                    ),
                ));
            }
            plan.scratch_bytes = scratch;
            let want = plan.want(0, &e.name);
            let (copied, extra, file, path) = inflate_to_scratch(zip, &e, input.scratch, want)?;
            plan.containers[c].copied = Some(copied);
            plan.containers[c].extra = extra;
            let src = Section::whole(Arc::new(file)).ctx(Stage::Unpack, || format!("stat {}", path.display()))?;
            (src, Source::Scratch(path))
        };
        let mut inner = archive::open_inner(src.clone(), &container, limits.max_entries, entries)?;
        let listed = archive::list(&mut inner, &src, &container, limits, &input.settings.checks)?;
        entries = entries.saturating_add(listed.len() as u64);
        let prefix = container.trim_end_matches(".zip").to_owned();
        let roles = listed
            .iter()
            .map(|e| {
                if e.is_dir {
                    Role::Dir
                } else if is_manifest_name(&e.name) {
                    Role::Manifest
                } else {
                    Role::Data(names::join(&prefix, &e.name))
                }
            })
            .collect();
        let level = plan.levels.len();
        plan.levels.push(Level { container, src: source, entries: listed, roles });
        published = published.saturating_add(data_bytes(&plan.levels[level]));
        // Before the next dataset zip is inflated: a deposit over the limit
        // stops here, not after filling scratch with the rest.
        check_unpacked(published, plan.scratch_bytes, limits)?;
        meta.charge_level(&plan.levels[level], |r| *r == Role::Manifest)?;
        read_manifests(plan, level, &mut inner)?;
        // `inner` and `src` close a scratch copy's descriptor here.
    }
    Ok(())
}

/// Inflate one compressed dataset zip to a fresh scratch file.
fn inflate_to_scratch(
    zip: &mut ZipArchive<Section>,
    e: &Entry,
    scratch: &Path,
    want: Want,
) -> Result<(Copied, md5sums::Extra, File, PathBuf)> {
    // Made on first use: most deposits store their dataset zips.
    match DirBuilder::new().mode(0o700).create(scratch) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(Error::io(Stage::Unpack, format!("create {}", scratch.display()), err));
        }
        _ => {}
    }
    let path = scratch.join(format!("container-{}.zip", e.index));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .ctx(Stage::Unpack, || format!("create {}", path.display()))?;
    let mut buf = vec![0u8; 256 << 10];
    let reader = archive::open_entry(zip, e.index, &e.name)?;
    let mut tee = md5sums::Tee { inner: &mut file, hashers: md5sums::Hashers::new(want) };
    let copied = archive::copy_entry(reader, e.size, &e.name, &mut tee, &mut buf, |_| Ok(()))?;
    let extra = tee.hashers.finish();
    Ok((copied, extra, file, path))
}

/// Refuse a deposit whose published bytes and scratch copies, as counted so
/// far, are over `limits.max_unpacked_bytes`.
fn check_unpacked(published: u64, scratch: u64, limits: &Limits) -> Result<()> {
    let total = published.saturating_add(scratch);
    if total <= limits.max_unpacked_bytes {
        return Ok(());
    }
    let scratch = if scratch > 0 {
        format!(" (and its compressed dataset zips take {scratch} bytes to be read: {total} bytes in all)")
    } else {
        String::new()
    };
    Err(Error::reject(
        Code::LimitExceeded,
        Stage::Unpack,
        None,
        format!(
            "the deposit unpacks to {published} bytes{scratch}; limits.max_unpacked_bytes is {}",
            limits.max_unpacked_bytes
        ),
    ))
}

fn check_totals(plan: &mut Plan, input: &Input<'_>) -> Result<()> {
    let limits = &input.settings.limits;
    let mut entries = 0u64;
    for lv in &plan.levels {
        entries += lv.entries.len() as u64;
        for (e, r) in lv.entries.iter().zip(&lv.roles) {
            if matches!(r, Role::Data(_)) {
                plan.total_bytes = plan.total_bytes.saturating_add(e.size);
                plan.total_files += 1;
            }
        }
    }
    if entries > limits.max_entries {
        return Err(Error::reject(
            Code::LimitExceeded,
            Stage::Unpack,
            None,
            format!(
                "{entries} entries in the deposit and its dataset zips; limits.max_entries is {}",
                limits.max_entries
            ),
        ));
    }
    check_unpacked(plan.total_bytes, plan.scratch_bytes, limits)?;
    // A bag always gives checksums: its payload manifests.
    if input.settings.checks.require_md5 && plan.manifests.is_empty() && !input.has_sidecar && plan.bag.is_none() {
        return Err(Error::reject(
            Code::Md5Missing,
            Stage::Verify,
            None,
            "no MD5 given (no <archive>.md5 sidecar, no MD5SUMS/*.md5/manifest-md5.txt inside) and checks.require_md5 is on",
        ));
    }
    Ok(())
}

/// Published paths against each other (and against the current release's
/// in a merge), and against the name rules.
fn check_names(plan: &Plan, input: &Input<'_>) -> Result<()> {
    let mut labels = Vec::new();
    for lv in &plan.levels {
        for (e, r) in lv.entries.iter().zip(&lv.roles) {
            let path = match r {
                Role::Data(p) => p.clone(),
                // A bag's folder is published as the release root.
                Role::Dir if lv.container.is_empty() => match &plan.bag {
                    Some(bag) => match e.name.strip_prefix(&bag.root) {
                        Some(p) => p.to_owned(),
                        None => continue,
                    },
                    None => e.name.clone(),
                },
                Role::Dir => names::join(lv.container.trim_end_matches(".zip"), &e.name),
                _ => continue,
            };
            let shown = label(&lv.container, &e.name);
            // Entry names were judged when listed; a published path also
            // holds its dataset's folder (`MSEC_DAT_x.` from `MSEC_DAT_x..zip`).
            names::check_rules(&path, input.settings.checks.portable_names).map_err(|err| {
                Error::reject(
                    err.code,
                    Stage::Conflicts,
                    Some(&shown),
                    format!("{shown:?} publishes as {path:?}: {}", err.why),
                )
            })?;
            if let (Role::Data(_), Some(scheme)) = (r, &input.settings.names)
                && !scheme.admits(&path)
            {
                return Err(scheme_refused(input.producer, &shown, &path, scheme));
            }
            labels.push((path, matches!(r, Role::Dir), shown));
        }
    }
    let mut names: Vec<Name<'_>> = labels.iter().map(|(p, d, l)| Name { path: p, is_dir: *d, label: l }).collect();
    // A merge keeps the current files the deposit does not replace; they
    // must not clash with the delivered ones either (file vs folder).
    let delivered: HashSet<String> =
        names.iter().map(|n| names::conflict_key(n.path, input.settings.checks.case_insensitive)).collect();
    for k in input.kept {
        if !delivered.contains(&names::conflict_key(k, input.settings.checks.case_insensitive)) {
            names.push(Name { path: k, is_dir: false, label: k });
        }
    }
    conflicts::check(&names, &input.settings.checks)
}

/// A published path outside the producer's naming scheme.
fn scheme_refused(producer: &str, shown: &str, path: &str, scheme: &crate::scheme::Scheme) -> Error {
    let published = if shown == path { String::new() } else { format!(" (published as {path})") };
    Error::reject(
        Code::NameInvalid,
        Stage::Conflicts,
        Some(shown),
        format!(
            "{shown}{published} does not follow the naming scheme of {producer}: {}; rename it or ask the archive team to change the scheme (producers.{producer}.names)",
            scheme.explain("published paths, relative to the release root with / between folders,")
        ),
    )
}

/// MD5 (when `md5`) and the `want`ed digests of the whole deposit file, in
/// one read, for its sidecars.
pub fn file_sums(
    path: &Path,
    buf: &mut [u8],
    md5: bool,
    want: Want,
    mut on_bytes: impl FnMut(u64),
) -> std::io::Result<(Option<Digest>, md5sums::Extra)> {
    use md5::{Digest as _, Md5};
    let mut f = File::open(path)?;
    let mut h = md5.then(Md5::new);
    let mut others = md5sums::Hashers::new(want);
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            break;
        }
        if let Some(h) = h.as_mut() {
            h.update(&buf[..n]);
        }
        others.update(&buf[..n]);
        on_bytes(n as u64);
    }
    Ok((h.map(|h| h.finalize().into()), others.finish()))
}

/// Digest of the whole deposit file, for the sidecar check.
pub fn file_md5(path: &Path, buf: &mut [u8], mut on_bytes: impl FnMut(u64)) -> std::io::Result<Digest> {
    use md5::{Digest as _, Md5};
    let mut f = File::open(path)?;
    let mut h = Md5::new();
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        on_bytes(n as u64);
    }
    Ok(h.finalize().into())
}
