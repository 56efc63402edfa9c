//! What a deposit's end looks like to people: `report.json` for machines,
//! `report.txt` for the producer who has to fix something.

use serde::Serialize;

use crate::error::{Error, Stage};
use crate::names::printable;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub deposit: String,
    pub producer: String,
    /// The archive's file name as it was dropped.
    pub archive: String,
    pub accepted: bool,
    pub state: &'static str,
    pub stage: Option<Stage>,
    pub code: Option<&'static str>,
    pub message: Option<String>,
    pub entry: Option<String>,
    pub started: String,
    pub finished: String,
    pub file_count: Option<u64>,
    pub total_bytes: Option<u64>,
    pub release: Option<String>,
    /// What an accepted deposit should have done otherwise (a bag's RFC
    /// "SHOULD"s); absent when there is none, as in reports before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// A validator's first lines of output (FORMAT_INVALID, VIRUS_FOUND),
    /// each with its control characters escaped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
}

impl Report {
    pub fn success(base: ReportBase, file_count: u64, total_bytes: u64, release: Option<String>) -> Report {
        Report {
            deposit: base.deposit,
            producer: base.producer,
            archive: base.archive,
            accepted: true,
            state: "SUCCESS",
            stage: None,
            code: None,
            message: None,
            entry: None,
            started: base.started,
            finished: crate::deposit::now_rfc3339(),
            file_count: Some(file_count),
            total_bytes: Some(total_bytes),
            release,
            warnings: Vec::new(),
            output: Vec::new(),
        }
    }

    /// The same report, with the deposit's warnings.
    pub fn warned(self, warnings: &[String]) -> Report {
        Report { warnings: warnings.to_vec(), ..self }
    }

    fn warnings_text(&self, t: &mut String) {
        if !self.warnings.is_empty() {
            t.push_str("Warnings (accepted all the same; better fixed in your next deposit):\n");
            for w in &self.warnings {
                t.push_str(&format!("  - {}\n", printable(w)));
            }
        }
    }

    pub fn failure(base: ReportBase, err: &Error) -> Report {
        Report {
            deposit: base.deposit,
            producer: base.producer,
            archive: base.archive,
            accepted: false,
            state: "FAILURE",
            stage: Some(err.stage()),
            code: Some(err.code().as_str()),
            message: Some(err.message()),
            entry: err.entry().map(str::to_owned),
            started: base.started,
            finished: crate::deposit::now_rfc3339(),
            file_count: None,
            total_bytes: None,
            release: None,
            warnings: Vec::new(),
            output: err.output().to_vec(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }

    /// Plain words for the producer (`rejected/<deposit-id>/report.txt`):
    /// what was wrong, the detail, what to do, and the deposit's id for the
    /// archive team.
    pub fn to_text(&self, advice: Option<&str>) -> String {
        let mut t = String::new();
        if self.accepted {
            t.push_str(&format!("Deposit {} was ACCEPTED and published.\n\n", printable(&self.archive)));
            if let (Some(n), Some(b)) = (self.file_count, self.total_bytes) {
                t.push_str(&format!("Files: {n}, {b} bytes.\n"));
            }
            self.warnings_text(&mut t);
        } else {
            t.push_str(&format!("Deposit {} was REJECTED.\n\n", printable(&self.archive)));
            self.verdict(&mut t, advice);
            t.push_str("Nothing from this deposit was published; the archive still serves your previous release.\n");
        }
        t.push_str(&format!(
            "\nDeposit id: {}\nProducer:   {}\nReceived:   {}\nFinished:   {}\n",
            self.deposit,
            printable(&self.producer),
            self.started,
            self.finished
        ));
        t
    }

    /// `depot check` on the producer's own computer: the same verdict in
    /// words for a scientist before any upload, so no deposit id, no
    /// reception time and no mention of releases.
    pub fn to_text_check(&self) -> String {
        let mut t = String::new();
        if self.accepted {
            t.push_str(&format!("{} would be ACCEPTED", printable(&self.archive)));
            if let (Some(n), Some(b)) = (self.file_count, self.total_bytes) {
                t.push_str(&format!(": {n} files, {b} bytes"));
            }
            t.push_str(".\n");
            self.warnings_text(&mut t);
        } else {
            t.push_str(&format!("{} would be REJECTED.\n\n", printable(&self.archive)));
            let advice = self.code.and_then(crate::Code::parse).map(crate::Code::advice);
            self.verdict(&mut t, advice);
        }
        t.push_str(&format!(
            "\nChecked on this computer as a deposit of producer {}; nothing was uploaded or changed.\n",
            printable(&self.producer)
        ));
        t
    }

    fn verdict(&self, t: &mut String, advice: Option<&str>) {
        let code = self.code.and_then(crate::Code::parse);
        if let Some(c) = code {
            t.push_str(&format!("What was wrong: {}\n", c.summary()));
        }
        t.push_str(&format!("Details:        {}\n", printable(self.message.as_deref().unwrap_or("-"))));
        if let Some(e) = &self.entry {
            t.push_str(&format!("File concerned: {}\n", printable(e)));
        }
        if !self.output.is_empty() {
            t.push_str("The check program said (its first lines):\n");
            for l in &self.output {
                t.push_str(&format!("    {}\n", printable(l)));
            }
        }
        t.push_str(&format!(
            "Error code:     {} (during {})\n\n",
            self.code.unwrap_or("-"),
            self.stage.map_or("-", Stage::as_str)
        ));
        if let Some(a) = advice {
            t.push_str(&format!("What to do: {a}\n\n"));
        }
    }
}

/// The fields every report has.
#[derive(Debug, Clone)]
pub struct ReportBase {
    pub deposit: String,
    pub producer: String,
    pub archive: String,
    pub started: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    fn rejected() -> Report {
        let base = ReportBase {
            deposit: "20261122T101500Z-MSEC-1a2b3c4d".into(),
            producer: "MSEC".into(),
            archive: "MSEC_THEIA.zip".into(),
            started: "2026-11-22T10:15:00Z".into(),
        };
        Report::failure(
            base,
            &Error::reject(
                Code::PivotInvalid,
                Stage::Unpack,
                Some("MSEC_en.json"),
                "MSEC_en.json: expected value at line 3 column 5",
            ),
        )
    }

    #[test]
    fn the_check_text_speaks_to_a_scientist() {
        let t = rejected().to_text_check();
        for word in ["REJECTED", "What was wrong: The pivot", "line 3 column 5", "What to do: Fix", "PIVOT_INVALID"] {
            assert!(t.contains(word), "{word}: {t}");
        }
        for word in ["Received", "20261122T101500Z", "release", " id "] {
            assert!(!t.contains(word), "{word}: {t}");
        }
    }

    #[test]
    fn names_reach_people_without_their_control_characters() {
        let evil = "a\x1b]2;PWNED\x07b.txt";
        let base = ReportBase {
            deposit: "20261122T101500Z-MSEC-1a2b3c4d".into(),
            producer: "MSEC".into(),
            archive: format!("{evil}.zip"),
            started: "2026-11-22T10:15:00Z".into(),
        };
        let r = Report::failure(
            base,
            &Error::reject(Code::NameInvalid, Stage::Conflicts, Some(evil), format!("`{evil}`: control character")),
        );
        for t in [r.to_text(Some(Code::NameInvalid.advice())), r.to_text_check()] {
            assert!(!t.contains('\x1b') && !t.contains('\x07'), "{t:?}");
            assert!(t.contains("File concerned: a\\x1b]2;PWNED\\x07b.txt"), "{t}");
            assert!(t.contains("a\\x1b]2;PWNED\\x07b.txt.zip"), "{t}");
        }
        // The machine's copy keeps the name as it was (JSON escapes it).
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["entry"], evil);
        assert_eq!(crate::names::printable("x\u{202e}y\u{85}z"), "x\\u{202e}y\\x85z");
        assert_eq!(crate::names::printable("plain é"), "plain é");
    }

    #[test]
    fn the_report_file_keeps_the_id_for_the_archive_team() {
        let r = rejected();
        let t = r.to_text(Some(Code::PivotInvalid.advice()));
        for word in
            ["REJECTED", "What was wrong:", "What to do:", "Deposit id: 20261122T101500Z-MSEC-1a2b3c4d", "Received:"]
        {
            assert!(t.contains(word), "{word}: {t}");
        }
    }
}
