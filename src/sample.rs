//! `depot sample P OUT.zip`: a small deposit that depot accepts, for any
//! producer and either profile: what the README's "What a deposit looks
//! like" shows, to try the daemon with (quick start) or to start a
//! producer's own packaging from.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use md5::Digest as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    Theia,
    Plain,
}

fn md5hex(data: &[u8]) -> String {
    jobs::md5sums::hex(&md5::Md5::digest(data).into())
}

/// md5sum's format: `<md5>  <path>` per line.
fn md5sums(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    files.iter().map(|(n, d)| format!("{}  {n}\n", md5hex(d))).collect::<String>().into_bytes()
}

/// A zip of stored (uncompressed) entries, names flagged UTF-8, files
/// mode 0644: what any zip tool writes, kept small enough to read here.
pub fn zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    // 1980-01-01 00:00, the first date a zip can hold.
    let (time, date) = (0u16, 0x21u16);
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32fast::hash(data);
        let (n, size) = (name.len() as u16, data.len() as u32);
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed
            v.extend_from_slice(&0x0800u16.to_le_bytes()); // UTF-8 names
            v.extend_from_slice(&0u16.to_le_bytes()); // stored
            v.extend_from_slice(&time.to_le_bytes());
            v.extend_from_slice(&date.to_le_bytes());
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&n.to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra
        };
        out.extend_from_slice(&0x04034b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x02014b50u32.to_le_bytes());
        central.extend_from_slice(&0x031eu16.to_le_bytes()); // made by: unix, 3.0
        common(&mut central);
        central.extend_from_slice(&0u16.to_le_bytes()); // comment
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&(0o100644u32 << 16).to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let (cd_at, cd_len, count) = (out.len() as u32, central.len() as u32, entries.len() as u16);
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x06054b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // disk numbers
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&cd_len.to_le_bytes());
    out.extend_from_slice(&cd_at.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment
    out
}

/// The top-level entries of a sample deposit of producer `p`.
pub fn entries(p: &str, profile: Profile) -> Vec<(String, Vec<u8>)> {
    match profile {
        Profile::Theia => {
            let data = [
                (
                    format!("{p}_OBS_1.csv"),
                    b"time,temperature_C\n2026-01-01T00:00:00Z,4.2\n2026-01-01T01:00:00Z,4.0\n".to_vec(),
                ),
                (
                    format!("{p}_OBS_2.csv"),
                    b"time,discharge_m3s\n2026-01-01T00:00:00Z,1.31\n2026-01-01T01:00:00Z,1.29\n".to_vec(),
                ),
            ];
            let observations: Vec<serde_json::Value> = data
                .iter()
                .enumerate()
                .map(|(i, (name, _))| {
                    serde_json::json!({
                        "observationId": format!("{p}_OBS_{}", i + 1),
                        "result": {"dataFile": {"name": name}}
                    })
                })
                .collect();
            let pivot = serde_json::json!({
                "version": "1.1",
                "producer": {"producerId": p, "name": format!("{p} (sample producer)")},
                "datasets": [{
                    "datasetId": format!("{p}_DAT_1"),
                    "metadata": {"title": "Sample dataset: one station, two variables"},
                    "observations": observations
                }]
            });
            let mut dataset: Vec<(String, Vec<u8>)> = data.to_vec();
            dataset.push(("MD5SUMS".into(), md5sums(&data)));
            let mut top = vec![
                (format!("{p}_en.json"), serde_json::to_vec_pretty(&pivot).unwrap_or_default()),
                (format!("{p}_DAT_1.zip"), zip(&dataset)),
            ];
            let sums = md5sums(&top);
            top.push(("MD5SUMS".into(), sums));
            top
        }
        Profile::Plain => {
            let data = vec![
                (
                    "README.txt".to_owned(),
                    format!("Sample deposit of {p}: files published as they are.\n").into_bytes(),
                ),
                ("data/station_1.csv".to_owned(), b"time,value\n2026-01-01T00:00:00Z,1\n".to_vec()),
                ("data/station_2.csv".to_owned(), b"time,value\n2026-01-01T00:00:00Z,2\n".to_vec()),
            ];
            let mut top = data.clone();
            top.push(("MD5SUMS".into(), md5sums(&data)));
            top
        }
    }
}

/// Write the sample to `out` (never over an existing file).
pub fn write(p: &str, profile: Profile, out: &Path) -> Result<()> {
    if p.is_empty() || p.contains(['/', '\0']) || p.chars().any(char::is_control) {
        bail!("{p:?} cannot be a producer id");
    }
    let bytes = zip(&entries(p, profile));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    f.write_all(&bytes).and_then(|()| f.sync_all()).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}
