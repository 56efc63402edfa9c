//! The Theia/OZCAR profile: a pivot json describing datasets and their
//! observations, and one zip per dataset.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::error::{Code, Error, Result, Stage};

#[derive(Debug, Deserialize)]
pub struct Pivot {
    pub producer: PivotProducer,
    pub datasets: Vec<PivotDataset>,
}

#[derive(Debug, Deserialize)]
pub struct PivotProducer {
    #[serde(rename = "producerId")]
    pub producer_id: String,
}

#[derive(Debug, Deserialize)]
pub struct PivotDataset {
    #[serde(rename = "datasetId")]
    pub dataset_id: String,
    #[serde(default)]
    pub observations: Vec<Observation>,
}

#[derive(Debug, Deserialize)]
pub struct Observation {
    #[serde(rename = "observationId", default)]
    pub observation_id: Option<String>,
    pub result: ObservationResult,
}

#[derive(Debug, Deserialize)]
pub struct ObservationResult {
    #[serde(rename = "dataFile")]
    pub data_file: DataFile,
}

#[derive(Debug, Deserialize)]
pub struct DataFile {
    pub name: String,
}

/// What a top-level name of a Theia deposit is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopName {
    /// `<P>_<lang>.json`
    Pivot { lang: String },
    /// `<P>_DAT_<x>.zip`, with its dataset id.
    Dataset { id: String },
}

/// Classify a top-level entry name for producer `p`.
pub fn classify(name: &str, p: &str) -> Result<TopName> {
    let reject = |code, msg: String| Error::reject(code, Stage::Unpack, Some(name), msg);
    if name.contains('/') {
        return Err(reject(
            Code::NameInvalid,
            format!(
                "{name}: a Theia deposit holds files at its top level only ({p}_<lang>.json, {p}_DAT_*.zip, MD5SUMS)"
            ),
        ));
    }
    if let Some(stem) = name.strip_suffix(".json")
        && let Some((owner, lang)) = stem.rsplit_once('_')
        && lang.len() == 2
        && lang.bytes().all(|b| b.is_ascii_lowercase())
    {
        if owner != p {
            return Err(reject(
                Code::ProducerMismatch,
                format!("{name}: pivot of producer {owner} in the drop folder of {p}"),
            ));
        }
        return Ok(TopName::Pivot { lang: lang.to_owned() });
    }
    if let Some(stem) = name.strip_suffix(".zip") {
        let prefix = format!("{p}_DAT_");
        if stem.len() > prefix.len() && stem.starts_with(&prefix) {
            return Ok(TopName::Dataset { id: stem.to_owned() });
        }
        return Err(reject(
            Code::DatasetMismatch,
            format!("{name}: dataset zips of producer {p} are named {p}_DAT_<id>.zip"),
        ));
    }
    Err(reject(
        Code::NameInvalid,
        format!("{name}: not expected in a Theia deposit (only {p}_<lang>.json, {p}_DAT_*.zip and MD5 manifests)"),
    ))
}

/// Parse a pivot and check it belongs to producer `p`.
pub fn parse_pivot(bytes: &[u8], name: &str, p: &str) -> Result<Pivot> {
    let pivot: Pivot = serde_json::from_slice(bytes)
        .map_err(|e| Error::reject(Code::PivotInvalid, Stage::Unpack, Some(name), format!("{name}: {e}")))?;
    if pivot.producer.producer_id != p {
        return Err(Error::reject(
            Code::ProducerMismatch,
            Stage::Unpack,
            Some(name),
            format!("{name}: producer.producerId is {:?}, the drop folder is {p}", pivot.producer.producer_id),
        ));
    }
    let prefix = format!("{p}_DAT_");
    for d in &pivot.datasets {
        if !d.dataset_id.starts_with(&prefix) {
            return Err(Error::reject(
                Code::DatasetMismatch,
                Stage::Unpack,
                Some(name),
                format!("{name}: datasetId {:?} does not start with {prefix}", d.dataset_id),
            ));
        }
    }
    Ok(pivot)
}

/// Cross-check the pivot with the dataset zips: every zip is a dataset of
/// the pivot, every dataset has its zip, and every observation's data file
/// sits at the root of its dataset's zip.
pub fn check_datasets(pivot: &Pivot, pivot_name: &str, zips: &BTreeMap<String, BTreeSet<String>>) -> Result<()> {
    let reject = |entry: &str, msg: String| Error::reject(Code::DatasetMismatch, Stage::Unpack, Some(entry), msg);
    let listed: BTreeSet<&str> = pivot.datasets.iter().map(|d| d.dataset_id.as_str()).collect();
    for id in zips.keys() {
        if !listed.contains(id.as_str()) {
            let entry = format!("{id}.zip");
            return Err(reject(&entry, format!("{entry}: dataset {id} is not in {pivot_name}")));
        }
    }
    for d in &pivot.datasets {
        let Some(files) = zips.get(&d.dataset_id) else {
            return Err(reject(
                pivot_name,
                format!("{pivot_name}: dataset {} has no {}.zip in the deposit", d.dataset_id, d.dataset_id),
            ));
        };
        for o in &d.observations {
            let f = &o.result.data_file.name;
            if !files.contains(f) {
                let entry = format!("{}.zip/{f}", d.dataset_id);
                return Err(reject(
                    &entry,
                    format!(
                        "observation {} names data file {f:?}, which is not at the root of {}.zip",
                        o.observation_id.as_deref().unwrap_or("(no id)"),
                        d.dataset_id
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_top_names() {
        assert_eq!(classify("MSEC_en.json", "MSEC").unwrap(), TopName::Pivot { lang: "en".into() });
        assert_eq!(classify("MSEC_DAT_1.zip", "MSEC").unwrap(), TopName::Dataset { id: "MSEC_DAT_1".into() });
        assert_eq!(classify("ABCD_en.json", "MSEC").unwrap_err().code(), Code::ProducerMismatch);
        assert_eq!(classify("ABCD_DAT_1.zip", "MSEC").unwrap_err().code(), Code::DatasetMismatch);
        assert_eq!(classify("readme.txt", "MSEC").unwrap_err().code(), Code::NameInvalid);
        assert_eq!(classify("d/MSEC_en.json", "MSEC").unwrap_err().code(), Code::NameInvalid);
    }
}
