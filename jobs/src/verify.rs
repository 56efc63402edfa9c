//! The "standard" check: the MD5s the producer gave against the ones we
//! measured while unpacking. Nothing is read again here.

use std::collections::{HashMap, HashSet};

use crate::error::{Code, Error, Result, Stage};
use crate::md5sums::{self, Algo, Digest, Sum};
use crate::names::{self, check_name, check_rules};
use crate::plan::Plan;
use crate::unpack::FileRecord;

/// What the sidecar said, if there was one: its file name and digest.
pub struct Sidecar<'a> {
    pub name: &'a str,
    pub md5: Digest,
}

/// Parse a sidecar: `<md5>` or an md5sum line; the name in it is not
/// checked, since the deposit may have been renamed on its way.
pub fn parse_sidecar(text: &str, name: &str) -> Result<Digest> {
    text.split_whitespace().next().and_then(md5sums::parse_hex).ok_or_else(|| {
        Error::reject(
            Code::Md5Mismatch,
            Stage::Verify,
            Some(name),
            format!("{name}: does not start with an MD5 (32 hex digits)"),
        )
    })
}

/// Parse a `.sha256`/`.sha512` (or `.md5`) sidecar: the digest, alone or
/// as an md5sum-style line.
pub fn parse_sidecar_as(text: &str, name: &str, algo: Algo) -> Result<Sum> {
    text.split_whitespace().next().and_then(|t| md5sums::parse_sum(t, algo)).ok_or_else(|| {
        Error::reject(
            algo.mismatch(),
            Stage::Verify,
            Some(name),
            format!("{name}: does not start with a {} ({} hex digits)", algo.label(), algo.bytes() * 2),
        )
    })
}

/// [`archive_mismatch`] for any algorithm.
pub fn archive_mismatch_sum(archive_name: &str, actual: &[u8], sidecar_name: &str, given: &Sum) -> Error {
    Error::reject(
        given.algo.mismatch(),
        Stage::Verify,
        Some(archive_name),
        format!(
            "{archive_name}: {} is {}, {sidecar_name} says {}: the archive was damaged on its way (or the sidecar belongs to another upload); upload both again",
            given.algo.label(),
            md5sums::hex_of(actual),
            given.hex()
        ),
    )
}

/// The archive does not match its sidecar: the verdict on the deposit,
/// whatever else looks wrong in it.
pub fn archive_mismatch(archive_name: &str, actual: &Digest, sidecar_name: &str, given: &Digest) -> Error {
    Error::reject(
        Code::Md5Mismatch,
        Stage::Verify,
        Some(archive_name),
        format!(
            "{archive_name}: MD5 is {}, {sidecar_name} says {}: the archive was damaged on its way (or the sidecar belongs to another upload); upload both again",
            md5sums::hex(actual),
            md5sums::hex(given)
        ),
    )
}

fn under(dir: &str, path: &str) -> bool {
    dir.is_empty() || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

pub fn check(
    plan: &Plan,
    files: &[FileRecord],
    sidecar: Option<(&Sidecar<'_>, &Digest)>,
    archive_name: &str,
    max_path_len: u64,
    portable_names: bool,
) -> Result<()> {
    if let Some((given, actual)) = sidecar
        && given.md5 != *actual
    {
        return Err(archive_mismatch(archive_name, actual, given.name, &given.md5));
    }
    let by_name: HashMap<(usize, &str), &FileRecord> = files.iter().map(|f| ((f.level, f.name.as_str()), f)).collect();
    let mut listed: HashSet<(usize, String)> = HashSet::new();
    for m in &plan.manifests {
        for line in &m.lines {
            let path = names::join(&m.dir, &line.path);
            let entry = plan.levels[m.level].container.clone();
            let shown = crate::archive::label(&entry, &path);
            // The same rules as entry names: a listed path that could not be
            // an entry is the manifest's fault, named as such.
            let path = check_name(&path, max_path_len)
                .and_then(|p| check_rules(p, portable_names).map(|()| p))
                .map_err(|e| {
                    Error::reject(
                        if e.code == Code::LimitExceeded { Code::Md5Missing } else { e.code },
                        Stage::Verify,
                        Some(&m.label),
                        format!("{} line {}: {:?}: {}", m.label, line.number, line.path, e.why),
                    )
                })?
                .to_owned();
            let Some(rec) = by_name.get(&(m.level, path.as_str())) else {
                return Err(Error::reject(
                    Code::Md5Missing,
                    Stage::Verify,
                    Some(&shown),
                    format!("{} line {} names {shown}, which is not in the deposit", m.label, line.number),
                ));
            };
            let algo = line.sum.algo;
            let actual = match algo {
                Algo::Md5 => rec.md5.as_ref().map(|d| &d[..]),
                _ => rec.extra.get(algo),
            };
            if actual != Some(&line.sum.bytes[..]) {
                let actual = actual.map_or_else(|| "?".into(), md5sums::hex_of);
                return Err(Error::reject(
                    algo.mismatch(),
                    Stage::Verify,
                    Some(&shown),
                    format!(
                        "{shown}: {} is {actual}, {} line {} says {}",
                        algo.label(),
                        m.label,
                        line.number,
                        line.sum.hex()
                    ),
                ));
            }
            listed.insert((m.level, path));
        }
    }
    // A manifest covers its folder: every data file below it must be listed
    // (by it or by another manifest of the same zip above the file).
    for f in files {
        let covering = plan.manifests.iter().find(|m| m.level == f.level && under(&m.dir, &f.name));
        if let Some(m) = covering
            && !listed.contains(&(f.level, f.name.clone()))
        {
            let shown = crate::archive::label(&plan.levels[f.level].container, &f.name);
            return Err(Error::reject(
                Code::Md5Unlisted,
                Stage::Verify,
                Some(&shown),
                format!("{shown} is in the folder {} covers but not listed in it", m.label),
            ));
        }
    }
    Ok(())
}
