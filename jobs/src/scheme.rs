//! Per-producer naming schemes (SPEC "Naming schemes"): METAMOD2 accepts in
//! a folder only the names its owner's pattern admits, so a producer's
//! misnamed file is refused at the door rather than found by a user later.

use regex::Regex;
use serde::{Serialize, Serializer};
use unicode_normalization::UnicodeNormalization;

/// A pattern a whole name must match. The producer writes it as they
/// think of it (`[A-Z]+_DAT_[0-9]+/.*`), anchored or not: it is always
/// matched against the whole name, never a part of it.
#[derive(Debug, Clone)]
pub struct Scheme {
    source: String,
    full: Regex,
}

impl Scheme {
    /// The pattern is compiled alone first: wrapped at once in `^(?:…)$`,
    /// an unbalanced `a)|(.*` would compile into a pattern admitting anything.
    pub fn new(source: &str) -> Result<Scheme, String> {
        let err = |e: regex::Error| format!("not a regular expression: {e}");
        Regex::new(source).map_err(err)?;
        let full = Regex::new(&format!("^(?:{source})$")).map_err(err)?;
        Ok(Scheme { source: source.to_owned(), full })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The whole of `name`, after NFC (as published names are compared),
    /// matches.
    pub fn admits(&self, name: &str) -> bool {
        let nfc: String = name.nfc().collect();
        self.full.is_match(&nfc)
    }

    /// The rule in words a producer can act on.
    pub fn explain(&self, what: &str) -> String {
        format!("{what} must match the regular expression {} (the whole name, not a part of it)", self.source)
    }
}

impl PartialEq for Scheme {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}
impl Eq for Scheme {}

impl Serialize for Scheme {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_name_must_match() {
        let s = Scheme::new("[A-Z]{4}_DAT_[0-9]+/.*\\.nc").unwrap();
        assert!(s.admits("MSEC_DAT_1/a.nc"));
        assert!(!s.admits("MSEC_DAT_1/a.nc.bak"), "a prefix match is not enough");
        assert!(!s.admits("xMSEC_DAT_1/a.nc"), "a suffix match is not enough");
        assert!(!s.admits("MSEC_DAT_1/a.txt"));
        // Anchors the producer wrote change nothing.
        assert!(Scheme::new("^a|b$").unwrap().admits("b") && !Scheme::new("^a|b$").unwrap().admits("ab"));
    }

    #[test]
    fn names_are_matched_in_nfc() {
        let s = Scheme::new("caf\u{e9}\\.txt").unwrap();
        assert!(s.admits("cafe\u{301}.txt"));
    }

    #[test]
    fn an_unbalanced_pattern_is_refused_not_widened() {
        assert!(Scheme::new("a)|(.*").is_err());
        assert!(Scheme::new("(").is_err());
    }
}
