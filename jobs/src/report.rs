//! What a deposit's end looks like to people: `report.json` for machines,
//! `report.txt` for the producer who has to fix something.

use serde::Serialize;

use crate::error::{Error, Stage};

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
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }

    /// Plain words for the producer.
    pub fn to_text(&self, advice: Option<&str>) -> String {
        let mut t = String::new();
        if self.accepted {
            t.push_str(&format!("Deposit {} (id {}) was ACCEPTED.\n\n", self.archive, self.deposit));
            if let (Some(n), Some(b)) = (self.file_count, self.total_bytes) {
                t.push_str(&format!("Files: {n}, {b} bytes.\n"));
            }
        } else {
            t.push_str(&format!("Deposit {} (id {}) was REJECTED.\n\n", self.archive, self.deposit));
            t.push_str(&format!("What was wrong: {}\n", self.message.as_deref().unwrap_or("-")));
            if let Some(e) = &self.entry {
                t.push_str(&format!("File concerned: {e}\n"));
            }
            t.push_str(&format!(
                "Error code:     {} (during {})\n\n",
                self.code.unwrap_or("-"),
                self.stage.map_or("-", Stage::as_str)
            ));
            if let Some(a) = advice {
                t.push_str(&format!("What to do: {a}\n\n"));
            }
            t.push_str("Nothing from this deposit was published; the archive still serves your previous release.\n");
        }
        t.push_str(&format!(
            "\nProducer: {}\nReceived: {}\nFinished: {}\n",
            self.producer, self.started, self.finished
        ));
        t
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
