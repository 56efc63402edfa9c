//! The "archive" check: no two published paths may land on one name.
//! Runs on names from the central directories, before any data is written.

use std::collections::HashMap;

use crate::error::{Code, Error, Result, Stage};
use crate::names::{basename, conflict_key};
use crate::settings::Checks;

/// File name the release keeps for itself.
pub const RELEASE_MANIFEST: &str = "manifest.json";

/// One name to be published, with what to call it in a message.
#[derive(Debug, Clone)]
pub struct Name<'a> {
    pub path: &'a str,
    pub is_dir: bool,
    /// Where it came from, as the producer knows it.
    pub label: &'a str,
}

fn conflict(a: &str, b: &str, why: &str) -> Error {
    Error::reject(Code::NameConflict, Stage::Conflicts, Some(b), format!("{b} and {a} {why}"))
}

/// Check every published name against every other.
pub fn check(names: &[Name<'_>], checks: &Checks) -> Result<()> {
    let ci = checks.case_insensitive;
    let mut files: HashMap<String, &str> = HashMap::new();
    let mut dirs: HashMap<String, &str> = HashMap::new();
    let mut bases: HashMap<String, &str> = HashMap::new();
    for n in names {
        let key = conflict_key(n.path, ci);
        if n.is_dir {
            dirs.entry(key).or_insert(n.label);
            continue;
        }
        if key == RELEASE_MANIFEST {
            return Err(Error::reject(
                Code::NameConflict,
                Stage::Conflicts,
                Some(n.label),
                format!("{}: {RELEASE_MANIFEST} at the top level is reserved for the release manifest", n.label),
            ));
        }
        if let Some(prev) = files.insert(key.clone(), n.label) {
            let why = if ci {
                "publish to the same name (equal after Unicode normalisation and case folding)"
            } else {
                "publish to the same name (equal after Unicode normalisation)"
            };
            return Err(conflict(prev, n.label, why));
        }
        // Every folder above a file is a folder, implicitly.
        let mut k = key.as_str();
        while let Some(i) = k.rfind('/') {
            k = &k[..i];
            dirs.entry(k.to_owned()).or_insert(n.label);
        }
        if checks.flat_names {
            let base = basename(&key).to_owned();
            if let Some(prev) = bases.insert(base, n.label) {
                return Err(conflict(prev, n.label, "have the same file name (checks.flat_names)"));
            }
        }
    }
    for (key, label) in &files {
        if let Some(dir_label) = dirs.get(key) {
            return Err(conflict(dir_label, label, "make one name both a file and a folder"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(paths: &[&'static str]) -> Vec<Name<'static>> {
        paths.iter().map(|p| Name { path: p.trim_end_matches('/'), is_dir: p.ends_with('/'), label: p }).collect()
    }

    fn code(paths: &[&'static str], checks: &Checks) -> Option<Code> {
        check(&names(paths), checks).err().map(|e| e.code())
    }

    #[test]
    fn finds_collisions() {
        let c = Checks::default();
        assert_eq!(code(&["a.txt", "b.txt", "d/a.txt"], &c), None);
        assert_eq!(code(&["A.txt", "a.txt"], &c), Some(Code::NameConflict));
        assert_eq!(code(&["caf\u{e9}", "cafe\u{301}"], &c), Some(Code::NameConflict));
        assert_eq!(code(&["x", "x/y"], &c), Some(Code::NameConflict));
        assert_eq!(code(&["x", "X/"], &c), Some(Code::NameConflict));
        assert_eq!(code(&["manifest.json"], &c), Some(Code::NameConflict));
        let cs = Checks { case_insensitive: false, ..c.clone() };
        assert_eq!(code(&["A.txt", "a.txt"], &cs), None);
        let flat = Checks { flat_names: true, ..c };
        assert_eq!(code(&["a/x.txt", "b/x.txt"], &flat), Some(Code::NameConflict));
    }

    #[test]
    fn case_folding_is_full() {
        let c = Checks::default();
        assert_eq!(code(&["\u{3c3}.txt", "\u{3c2}.txt"], &c), Some(Code::NameConflict));
        assert_eq!(code(&["\u{3a3}.txt", "\u{3c2}.txt"], &c), Some(Code::NameConflict));
        assert_eq!(code(&["stra\u{df}e.csv", "STRASSE.csv"], &c), Some(Code::NameConflict));
        assert_eq!(code(&["\u{df}/a", "SS"], &c), Some(Code::NameConflict));
        assert_eq!(code(&["MANIFEST.JSON"], &c), Some(Code::NameConflict));
        let cs = Checks { case_insensitive: false, ..c };
        assert_eq!(code(&["\u{3c3}.txt", "\u{3c2}.txt", "stra\u{df}e", "strasse"], &cs), None);
    }
}
