//! Operator commands that read and write the daemon's Redis keys and its
//! folders: `depot status`, `depot history`, `depot retry`; what `depot
//! ingest` records in Redis; and the pruning of old `rejected/` folders
//! (`retention.rejected_days`), run by the daemon once a minute.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use redis::AsyncCommands;

use crate::config::Config;
use crate::spool::{Entry, Outcome};
use crate::status::{self, Status};

async fn status_handle(config: Option<&Path>) -> Result<(Config, Status)> {
    let cfg = crate::config::find_and_load(config)?;
    let conn = crate::state::connect(&cfg).await?;
    let st = Status { conn, prefix: cfg.redis.prefix.clone() };
    Ok((cfg, st))
}

/// Exit code of a lookup that found nothing (an unknown producer or id).
pub const NOT_FOUND: u8 = 2;

/// Fields of a deposit's hash that are numbers (`--json` prints them so).
const NUMERIC: [&str; 5] = ["size", "attempts", "bytes_total", "bytes_done", "files"];

/// A deposit's hash as JSON: numbers as numbers, the rest as strings.
pub fn typed(h: &HashMap<String, String>) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    let mut keys: Vec<&String> = h.keys().collect();
    keys.sort();
    for k in keys {
        let v = &h[k];
        let val = match v.parse::<u64>() {
            Ok(n) if NUMERIC.contains(&k.as_str()) => serde_json::Value::from(n),
            _ => serde_json::Value::from(v.clone()),
        };
        m.insert(k.clone(), val);
    }
    serde_json::Value::Object(m)
}

/// One deposit as a row: what `status` and `history` print.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Row {
    pub id: String,
    pub producer: String,
    pub file: String,
    pub state: String,
    pub code: String,
    /// Finished, else started, else created.
    pub time: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub release: String,
    /// "redis", or the folder it was read from when Redis had no record.
    pub source: String,
}

impl Row {
    fn from_hash(h: &HashMap<String, String>) -> Row {
        let g = |k: &str| h.get(k).cloned().unwrap_or_default();
        let time = [g("finished"), g("started"), g("created")].into_iter().find(|t| !t.is_empty()).unwrap_or_default();
        let num = |k: &str| h.get(k).and_then(|v| v.parse().ok());
        Row {
            id: g("id"),
            producer: g("producer"),
            file: g("file"),
            state: g("state"),
            code: g("error_code"),
            time,
            error: g("error"),
            files: num("files"),
            bytes: if g("state") == status::SUCCESS { num("bytes_done") } else { None },
            release: g("release"),
            source: "redis".into(),
        }
    }
}

/// A row as shown to a person: names and messages with their control
/// characters escaped (see `jobs::names::printable`); `--json` keeps them raw.
fn shown(r: &Row) -> Row {
    let p = |s: &str| jobs::names::printable(s).into_owned();
    Row {
        id: p(&r.id),
        producer: p(&r.producer),
        file: p(&r.file),
        state: p(&r.state),
        code: p(&r.code),
        time: p(&r.time),
        error: p(&r.error),
        release: p(&r.release),
        source: p(&r.source),
        ..r.clone()
    }
}

fn print_rows(rows: &[Row]) {
    print_rows_of(rows, false)
}

/// With `producer`, a PRODUCER column (rows of several producers:
/// `depot status --failed`).
fn print_rows_of(rows: &[Row], producer: bool) {
    let rows: Vec<Row> = rows.iter().map(shown).collect();
    let w = |f: fn(&Row) -> &str, min: usize| rows.iter().map(|r| f(r).chars().count()).max().unwrap_or(0).max(min);
    let (wid, wfile, wstate, wcode) = (w(|r| &r.id, 2), w(|r| &r.file, 4), w(|r| &r.state, 5), w(|r| &r.code, 4));
    let wp = if producer { w(|r| &r.producer, 8) } else { 0 };
    let p = |v: &str| if producer { format!("{v:<wp$}  ") } else { String::new() };
    println!("{:<wid$}  {}{:<wfile$}  {:<wstate$}  {:<wcode$}  TIME", "ID", p("PRODUCER"), "FILE", "STATE", "CODE");
    for r in &rows {
        let from = if r.source == "redis" { String::new() } else { format!("  (from {})", r.source) };
        println!(
            "{:<wid$}  {}{:<wfile$}  {:<wstate$}  {:<wcode$}  {}{from}",
            r.id,
            p(&r.producer),
            r.file,
            r.state,
            r.code,
            r.time
        );
    }
}

fn print_hash(title: &str, h: &HashMap<String, String>) {
    println!("{title}");
    let mut keys: Vec<_> = h.keys().collect();
    keys.sort();
    for k in keys {
        println!("  {:<16} {}", jobs::names::printable(k), jobs::names::printable(&h[k]));
    }
}

pub fn producer_of(id: &str) -> &str {
    jobs::deposit::producer_of(id).unwrap_or_default()
}

/// The newest deposits (newest first) whose id passes `by_id` (a cheap
/// test: ids hold their producer) and whose hash passes `keep`, reading
/// the deposits index back from its newest end, at most 100,000 ids.
pub async fn recent(
    st: &Status,
    by_id: impl Fn(&str) -> bool,
    keep: impl Fn(&HashMap<String, String>) -> bool,
    limit: usize,
) -> Result<Vec<Row>> {
    const BATCH: isize = 500;
    const SCAN: isize = 100_000;
    let mut conn = st.conn.clone();
    let mut out = Vec::new();
    let mut start = 0isize;
    while out.len() < limit && start < SCAN {
        let ids: Vec<String> = conn.zrevrange(st.deposits_key(), start, start + BATCH - 1).await?;
        if ids.is_empty() {
            break;
        }
        start += BATCH;
        let ids: Vec<String> = ids.into_iter().filter(|id| by_id(id)).collect();
        if ids.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(st.deposit_key(id));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        for h in hashes {
            if !h.is_empty() && keep(&h) {
                out.push(Row::from_hash(&h));
                if out.len() >= limit {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// Is `p` a producer depot knows of: a name this config serves, with a
/// folder, a release or a record in Redis.
fn known_on_disk(cfg: &Config, p: &str) -> bool {
    cfg.drop_root.join(p).is_dir() || cfg.publish_root.join(p).is_dir()
}

/// `depot status [P | DEPOSIT_ID] [--failed] [--json]`.
pub async fn status(config: Option<&Path>, what: Option<&str>, failed: bool, json: bool) -> Result<u8> {
    let (cfg, st) = status_handle(config).await?;
    let mut conn = st.conn.clone();
    match what {
        Some(id) if jobs::deposit::is_id(id) => {
            let h = st.get(&st.deposit_key(id)).await?;
            if h.is_empty() {
                // Redis may have been emptied, or the hash trimmed: the
                // folders still know a finished deposit.
                if let Some(r) = from_disk(&cfg, producer_of(id)).into_iter().find(|r| r.id == id) {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&r)?);
                    } else {
                        println!("deposit {id} (no record in Redis; from {})", r.source);
                        print_rows(&[r]);
                    }
                    return Ok(0);
                }
                eprintln!("depot: no deposit {id}: not in Redis, nor in rejected/ or releases/");
                return Ok(NOT_FOUND);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&typed(&h))?);
            } else {
                print_hash(&format!("deposit {id}"), &h);
            }
        }
        Some(p) => {
            if !cfg.is_producer(p) {
                eprintln!(
                    "depot: {p:?} is neither a deposit id nor a producer of this config (producers.pattern {}{})",
                    cfg.producers.pattern.as_str(),
                    if cfg.producers.allow.is_some() { ", producers.allow" } else { "" }
                );
                return Ok(NOT_FOUND);
            }
            let h = st.get(&st.producer_key(p)).await?;
            let rows = recent(
                &st,
                |id| producer_of(id) == p,
                |d| !failed || d.get("state").map(String::as_str) == Some(status::FAILURE),
                20,
            )
            .await?;
            if h.is_empty() && rows.is_empty() && !known_on_disk(&cfg, p) {
                eprintln!("depot: no producer {p}: no folder under drop_root or publish_root, and nothing in Redis");
                return Ok(NOT_FOUND);
            }
            if json {
                let mut v = serde_json::Map::new();
                v.insert("producer".into(), p.into());
                for (k, val) in &h {
                    v.insert(k.clone(), val.clone().into());
                }
                v.insert("deposits".into(), serde_json::to_value(&rows)?);
                println!("{}", serde_json::to_string_pretty(&serde_json::Value::Object(v))?);
            } else {
                print_hash(&format!("producer {p}"), &h);
                if rows.is_empty() {
                    println!(
                        "{} (depot history {p} also reads rejected/ and releases/ on disk)",
                        if failed { "no failed deposit in Redis" } else { "no deposit in Redis" }
                    );
                } else {
                    println!("{}:", if failed { "recent failures" } else { "recent deposits" });
                    print_rows(&rows);
                }
            }
        }
        None if failed => {
            let rows =
                recent(&st, |_| true, |d| d.get("state").map(String::as_str) == Some(status::FAILURE), 50).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!("no failed deposit in Redis");
            } else {
                print_rows_of(&rows, true);
            }
        }
        None => {
            let mut producers: Vec<String> = conn.smembers(st.producers_key()).await?;
            producers.sort();
            let mut all = serde_json::Map::new();
            let mut rows = Vec::new();
            for p in &producers {
                let h = st.get(&st.producer_key(p)).await?;
                let g = |k: &str| h.get(k).cloned().unwrap_or_default();
                let last = st.get(&st.deposit_key(&g("last_deposit"))).await?;
                let mut row = Row::from_hash(&last);
                row.producer = p.clone();
                if row.state.is_empty() {
                    row.state = g("last_state");
                    row.id = g("last_deposit");
                }
                let mut v = serde_json::Map::new();
                for (k, val) in &h {
                    v.insert(k.clone(), val.clone().into());
                }
                v.insert("last".into(), typed(&last));
                all.insert(p.clone(), serde_json::Value::Object(v));
                rows.push((row, g("current_release")));
            }
            if json {
                println!("{}", serde_json::Value::Object(all));
            } else if producers.is_empty() {
                println!("no deposits yet");
            } else {
                let wp = rows.iter().map(|(r, _)| r.producer.len()).max().unwrap_or(0).max(8);
                let wf =
                    rows.iter().map(|(r, _)| jobs::names::printable(&r.file).chars().count()).max().unwrap_or(0).max(9);
                println!(
                    "{:<wp$}  {:<10}  {:<wf$}  {:<18}  {:<20}  CURRENT RELEASE",
                    "PRODUCER", "LAST STATE", "LAST FILE", "CODE", "TIME"
                );
                for (r, cur) in rows {
                    let (r, cur) = (shown(&r), jobs::names::printable(&cur));
                    println!(
                        "{:<wp$}  {:<10}  {:<wf$}  {:<18}  {:<20}  {cur}",
                        r.producer, r.state, r.file, r.code, r.time
                    );
                }
            }
        }
    }
    Ok(0)
}

/// The FILE of a release read from disk whose manifest does not name its
/// archive (an older version's) and whose archive is no longer in
/// `previous/` (only the current release's is).
const NOT_KEPT: &str = "(name not kept)";

/// What the folders know of producer `p`'s finished deposits: each
/// `rejected/<id>/report.json`, each release's `manifest.json`, and the
/// archive name in `previous/` (the current release's deposit).
pub fn from_disk(cfg: &Config, p: &str) -> Vec<Row> {
    from_disk_newest(cfg, p, usize::MAX, |_| true)
}

/// [`from_disk`], reading the reports of only the `newest` rejected
/// deposits whose id `wanted` accepts (ids sort by time). The door's pages
/// show 50 deposits, or one: a producer may pile up tens of thousands of
/// failures, and reading every report on each request made each request
/// cost in proportion to the pile.
pub fn from_disk_newest(cfg: &Config, p: &str, newest: usize, wanted: impl Fn(&str) -> bool) -> Vec<Row> {
    #[derive(serde::Deserialize)]
    struct Report {
        #[serde(default)]
        archive: String,
        #[serde(default)]
        state: String,
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        finished: String,
    }
    #[derive(serde::Deserialize)]
    struct Manifest {
        deposit: String,
        #[serde(default)]
        archive: String,
        created: String,
        file_count: u64,
        total_bytes: u64,
    }
    let mut rows = Vec::new();
    if !cfg.is_producer(p) {
        return rows;
    }
    let pdir = cfg.drop_root.join(p);
    let rejected = pdir.join(jobs::rotate::REJECTED);
    let mut ids: Vec<String> = std::fs::read_dir(&rejected)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|id| jobs::deposit::is_id(id) && wanted(id))
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids.truncate(newest);
    for id in ids {
        let r: Option<Report> = std::fs::read(rejected.join(&id).join(jobs::rotate::REPORT_JSON))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(r) = r else { continue };
        rows.push(Row {
            producer: p.to_owned(),
            file: r.archive,
            state: if r.state.is_empty() { status::FAILURE.into() } else { r.state },
            code: r.code.unwrap_or_default(),
            time: r.finished,
            error: r.message.unwrap_or_default(),
            source: format!("rejected/{id}"),
            id,
            ..Row::default()
        });
    }
    let releases = jobs::publish::releases_dir(&cfg.publish_root, p);
    let current = jobs::publish::current_dir(&cfg.publish_root, p);
    let previous: Option<String> = std::fs::read_dir(pdir.join(jobs::rotate::PREVIOUS))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| crate::sidecars::strip_sidecar_suffix(n).is_none());
    for e in std::fs::read_dir(&releases).into_iter().flatten().flatten() {
        // Streamed, its `files` skipped as they come: read whole, a
        // release of 100,000 long names held 100 MB for each page load.
        let m: Option<Manifest> = std::fs::File::open(e.path().join("manifest.json"))
            .ok()
            .and_then(|f| serde_json::from_reader(std::io::BufReader::new(f)).ok());
        let Some(m) = m else { continue };
        let is_current = current.as_deref().and_then(|c| c.file_name()) == Some(e.file_name().as_os_str());
        rows.push(Row {
            producer: p.to_owned(),
            // The manifest names the archive; one of an older version does
            // not, and only the current release's archive stays in
            // previous/: the others say so rather than show nothing.
            file: match (m.archive, is_current) {
                (a, _) if !a.is_empty() => a,
                (_, true) => previous.clone().unwrap_or_default(),
                (_, false) => NOT_KEPT.into(),
            },
            state: status::SUCCESS.into(),
            time: m.created,
            files: Some(m.file_count),
            bytes: Some(m.total_bytes),
            release: e.path().display().to_string(),
            source: format!("releases/{}", m.deposit),
            id: m.deposit,
            ..Row::default()
        });
    }
    rows.sort_by(|a, b| b.id.cmp(&a.id));
    rows
}

/// Producer `p`'s deposits in depot's spool (`<drop_root>/.depot/spool/`):
/// claimed, not yet ended and moved out. Read only: the records are
/// parsed, nothing is changed (the daemon owns the spool).
pub fn in_spool(cfg: &Config, p: &str) -> Vec<Row> {
    let dir = cfg.drop_root.join(crate::spool::SPOOL);
    let mut rows = Vec::new();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json") else { continue };
        if !jobs::deposit::is_id(id) || producer_of(id) != p {
            continue;
        }
        let Some(entry) = crate::spool::read_entry(&e.path()) else { continue };
        rows.push(Row {
            producer: p.to_owned(),
            file: entry.name,
            state: status::WAITING.into(),
            time: entry.created,
            source: "spool".into(),
            id: entry.id,
            ..Row::default()
        });
    }
    rows
}

/// `depot history P [--json] [--limit N]`: the producer's deposits, newest
/// first, from Redis; whatever Redis does not know (it was emptied, or the
/// hashes were trimmed after `redis.keep_deposits_days`) from the folders.
pub async fn history(config: Option<&Path>, p: &str, limit: usize, json: bool) -> Result<u8> {
    let cfg = crate::config::find_and_load(config)?;
    if !cfg.is_producer(p) {
        eprintln!(
            "depot: {p:?} is not a producer of this config (producers.pattern {})",
            cfg.producers.pattern.as_str()
        );
        return Ok(NOT_FOUND);
    }
    let mut unreachable = false;
    let redis_rows = match crate::state::connect(&cfg).await {
        Ok(conn) => {
            let st = Status { conn, prefix: cfg.redis.prefix.clone() };
            recent(&st, |id| producer_of(id) == p, |_| true, limit).await.unwrap_or_else(|e| {
                unreachable = true;
                eprintln!("depot: Redis is unreachable ({e}); showing what the folders keep");
                Vec::new()
            })
        }
        Err(e) => {
            unreachable = true;
            eprintln!(
                "depot: Redis is unreachable at {} ({}); showing what the folders keep",
                crate::config::redacted(&cfg.redis.url),
                e.root_cause()
            );
            Vec::new()
        }
    };
    let from_redis = redis_rows.len();
    // Deposits waiting or running: the spool holds them whatever Redis
    // says (they have no report or release yet).
    let mut disk = from_disk(&cfg, p);
    disk.extend(in_spool(&cfg, p));
    let rows = merge_history(redis_rows, disk, limit);
    if rows.is_empty() && !known_on_disk(&cfg, p) {
        eprintln!("depot: no producer {p}: no folder under drop_root or publish_root, and nothing in Redis");
        return Ok(NOT_FOUND);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no deposit of {p} recorded (Redis, rejected/, releases/)");
    } else {
        if unreachable {
            println!("Redis is unreachable: {p}'s deposits as the spool, rejected/ and releases/ on disk keep them");
        } else if from_redis == 0 {
            println!("Redis has no record of {p}'s deposits: from the spool, rejected/ and releases/ on disk");
        }
        print_rows(&rows);
    }
    Ok(0)
}

/// A producer's history, newest first: Redis' rows, and the folders' for
/// what Redis no longer knows (`depot history --json`, `GET
/// /data/P/deposits`).
pub fn merge_history(redis_rows: Vec<Row>, disk: Vec<Row>, limit: usize) -> Vec<Row> {
    let mut by_id: BTreeMap<String, Row> = redis_rows.into_iter().map(|r| (r.id.clone(), r)).collect();
    for r in disk {
        by_id.entry(r.id.clone()).or_insert(r);
    }
    by_id.into_values().rev().take(limit).collect()
}

/// A FAILURE deposit goes back to `new/` (with its sidecar) from its
/// `rejected/<id>/` folder, and will be claimed again as a new deposit; its
/// old record says where it went. Refused (exit 2, nothing changed) when
/// the deposit is not in FAILURE, was retried already (the `retried` field
/// in Redis, or the `retried` mark in its folder: either alone suffices,
/// so that neither an emptied Redis nor a lost folder lets one deposit go
/// back twice), or when `new/` holds a newer upload of the same name: the
/// moves never replace a file (renameat2 RENAME_NOREPLACE).
pub async fn retry(config: Option<&Path>, id: &str) -> Result<u8> {
    if !jobs::deposit::is_id(id) {
        bail!("{id:?} is not a deposit id");
    }
    let (cfg, st) = status_handle(config).await?;
    let h = st.get(&st.deposit_key(id)).await?;
    let get = |k: &str| h.get(k).cloned().unwrap_or_default();
    // Without a hash (Redis was emptied), the folder's own report speaks.
    let p = if h.is_empty() { producer_of(id).to_owned() } else { get("producer") };
    if !cfg.is_producer(&p) {
        bail!("deposit {id} has no producer of this config ({p:?})");
    }
    let pdir = cfg.drop_root.join(&p);
    let dir = jobs::rotate::rejected_dir(&pdir, id);
    let (state, name) = if h.is_empty() {
        let report: serde_json::Value = std::fs::read(dir.join(jobs::rotate::REPORT_JSON))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .with_context(|| format!("no deposit {id} in Redis, and no readable report in {}", dir.display()))?;
        let s = |k: &str| report.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        (s("state"), s("archive"))
    } else {
        (get("state"), get("file"))
    };
    if state != "FAILURE" {
        bail!("deposit {id} is {state:?}; only FAILURE deposits can be retried");
    }
    if !get("retried").is_empty() {
        bail!("deposit {id} was already retried ({}); its archive went back to new/ then", get("retried"));
    }
    let mark = dir.join(jobs::rotate::RETRIED);
    if std::fs::symlink_metadata(&mark).is_ok() {
        bail!("deposit {id} was already retried ({} exists)", mark.display());
    }
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || jobs::rotate::reserved_name(&name) {
        bail!("deposit {id} has no usable file name ({name:?})");
    }
    let src = dir.join(&name);
    if !std::fs::symlink_metadata(&src).is_ok_and(|m| m.file_type().is_file()) {
        bail!("{} is not there: nothing to retry", src.display());
    }
    let new = pdir.join("new");
    // Its sidecars (`.md5`, `.sha256`, `.sha512`) go back with it.
    let sides: Vec<(PathBuf, PathBuf)> = ["md5", "sha256", "sha512"]
        .iter()
        .map(|ext| (dir.join(format!("{name}.{ext}")), new.join(format!("{name}.{ext}"))))
        .filter(|(s, _)| std::fs::symlink_metadata(s).is_ok_and(|m| m.file_type().is_file()))
        .collect();
    std::fs::create_dir_all(&new)?;
    let dst = new.join(&name);
    for taken in std::iter::once(&dst).chain(sides.iter().map(|(_, d)| d)) {
        if std::fs::symlink_metadata(taken).is_ok() {
            bail!(
                "{} already holds a newer upload of that name; it is left as it is (nothing was moved)",
                taken.display()
            );
        }
    }
    // The mark first: once the archive is back in new/, this deposit can
    // never be sent there again, whatever fails after.
    write_mark(&mark).with_context(|| format!("cannot write {}", mark.display()))?;
    let moved = (|| -> Result<()> {
        // Sidecar first, archive last: the archive's arrival is what the
        // watcher notices, and its sidecar must already be there.
        for (i, (s, d)) in sides.iter().enumerate() {
            if let Err(e) = jobs::rotate::rename_noreplace(s, d) {
                for (s, d) in &sides[..i] {
                    let _ = jobs::rotate::rename_noreplace(d, s);
                }
                return Err(e).with_context(|| format!("moving the sidecar to {}", d.display()));
            }
        }
        if let Err(e) = jobs::rotate::rename_noreplace(&src, &dst) {
            for (s, d) in &sides {
                let _ = jobs::rotate::rename_noreplace(d, s);
            }
            return Err(e).with_context(|| format!("moving the deposit to {}", dst.display()));
        }
        Ok(())
    })();
    if let Err(e) = moved {
        // Nothing went back: the deposit may be retried once the way is clear.
        let _ = std::fs::remove_file(&mark);
        return Err(e);
    }
    if !h.is_empty() {
        let mut conn = st.conn.clone();
        let r: redis::RedisResult<()> = conn.hset(st.deposit_key(id), "retried", jobs::deposit::now_rfc3339()).await;
        if let Err(e) = r {
            // Moved all the same; the mark in the folder refuses a second retry.
            eprintln!("depot: warning: cannot record `retried` in Redis ({e}); {} says it", mark.display());
        }
    }
    println!("{name} moved back to {}; it will be ingested as a new deposit", new.display());
    Ok(0)
}

/// `rejected/<id>/retried`: when, made new (never over another) and synced
/// with its folder before anything moves.
fn write_mark(mark: &Path) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(mark)?;
    std::io::Write::write_all(&mut f, format!("{}\n", jobs::deposit::now_rfc3339()).as_bytes())?;
    f.sync_all()?;
    match mark.parent() {
        Some(d) => std::fs::File::open(d)?.sync_all(),
        None => Ok(()),
    }
}

/// `depot ingest`'s deposit in Redis, under the daemon's keys (hash,
/// events, producer hash), so that `depot status` never shows an older
/// release or state than what was published.
pub struct Recorder {
    st: Status,
    entry: Entry,
}

impl Recorder {
    /// CREATED then PROGRESS; Err (with why) when Redis cannot be reached
    /// within a few seconds: the ingest goes on unrecorded.
    pub async fn begin(cfg: &Config, id: &str, producer: &str, name: &str, size: u64) -> Result<Recorder> {
        let conn = crate::state::connect(cfg).await?;
        let st = Status { conn, prefix: cfg.redis.prefix.clone() };
        let claimed_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let entry = Entry { claimed_ns, attempts: 1, ..Entry::new(id, producer, name, size) };
        let r = Recorder { st, entry };
        let fields = [
            ("started", r.entry.created.clone()),
            ("stage", "unpack".to_owned()),
            ("attempts", "1".to_owned()),
            ("via", "depot ingest".to_owned()),
        ];
        tokio::time::timeout(Duration::from_secs(10), async {
            r.st.created(std::slice::from_ref(&r.entry)).await?;
            r.st.start(&r.entry, &fields).await
        })
        .await
        .map_err(|_| anyhow::anyhow!("no answer from Redis within 10 s"))??;
        Ok(r)
    }

    /// SUCCESS or FAILURE, with the report's figures.
    pub async fn end(&self, report: &jobs::report::Report) -> Result<()> {
        let o = Outcome {
            state: report.state.to_owned(),
            report: serde_json::to_value(report).unwrap_or_default(),
            error_code: report.code.map(str::to_owned),
            error: report.message.clone(),
            release: report.release.clone(),
            current: None,
            files: report.file_count,
            bytes: report.total_bytes,
            finished: report.finished.clone(),
        };
        let stage = report.stage.map_or("rotate", |s| s.as_str()).to_owned();
        tokio::time::timeout(Duration::from_secs(10), self.st.terminal(&self.entry, &o, &[("stage", stage)]))
            .await
            .map_err(|_| anyhow::anyhow!("no answer from Redis within 10 s"))??;
        Ok(())
    }
}

/// The time a rejected folder counts from: its report's `finished`, else
/// the time in its deposit id (its claim).
fn rejected_at(dir: &Path, id: &str) -> Option<f64> {
    let finished = std::fs::read(dir.join(jobs::rotate::REPORT_JSON))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("finished").and_then(|f| f.as_str()).and_then(crate::metrics::rfc3339_s));
    finished.or_else(|| {
        // 20261122T101500Z → 2026-11-22T10:15:00Z
        let t = id.get(..16)?;
        let iso = format!("{}-{}-{}T{}:{}:{}Z", &t[0..4], &t[4..6], &t[6..8], &t[9..11], &t[11..13], &t[13..15]);
        crate::metrics::rfc3339_s(&iso)
    })
}

/// `retention.rejected_days`: remove every producer's `rejected/<id>/`
/// folder older than that (0: keep them forever). Only folders named as
/// deposit ids, never through a link; a folder that cannot be removed is
/// logged and tried again next time. Blocking; returns the folders removed.
pub fn prune_rejected(cfg: &Config) -> Vec<PathBuf> {
    let days = cfg.retention.rejected_days;
    let mut removed = Vec::new();
    if days == 0 {
        return removed;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let cutoff = now - days as f64 * 86_400.0;
    for p in std::fs::read_dir(&cfg.drop_root).into_iter().flatten().flatten() {
        let name = p.file_name().to_string_lossy().into_owned();
        if !cfg.is_producer(&name) || !p.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let rej = p.path().join(jobs::rotate::REJECTED);
        if jobs::rotate::check_real_dir(&rej).is_err() {
            continue;
        }
        for e in std::fs::read_dir(&rej).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            // file_type() is the entry's own (lstat): a link is never followed.
            if !jobs::deposit::is_id(&id) || !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = e.path();
            if rejected_at(&dir, &id).is_some_and(|t| t < cutoff) {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => removed.push(dir),
                    Err(err) => {
                        tracing::warn!(path = %dir.display(), error = %err, "cannot remove an old rejected deposit")
                    }
                }
            }
        }
    }
    if !removed.is_empty() {
        tracing::info!(removed = removed.len(), days, "removed rejected deposits older than retention.rejected_days");
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_are_numbers() {
        let h: HashMap<String, String> =
            [("size", "12"), ("attempts", "1"), ("id", "0042"), ("error_code", "NOT_A_ZIP")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect();
        let v = typed(&h);
        assert_eq!(v["size"], 12);
        assert_eq!(v["attempts"], 1);
        assert_eq!(v["id"], "0042");
        assert_eq!(v["error_code"], "NOT_A_ZIP");
    }

    #[test]
    fn old_rejected_folders_are_pruned_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = Config::parse(
            "drop_root = \"drop\"\npublish_root = \"pub\"\n[retention]\nrejected_days = 30\n",
            &tmp.path().join("c.toml"),
        )
        .unwrap();
        let rej = tmp.path().join("drop/MSEC/rejected");
        let old = "20200101T000000Z-MSEC-0000abcd";
        let young = jobs::deposit::new_id("MSEC");
        // An old id, but it failed yesterday (a retry of an old upload):
        // the report's time counts.
        let old_id_recent_report = "20200102T000000Z-MSEC-0000abce";
        for id in [old, young.as_str(), old_id_recent_report] {
            std::fs::create_dir_all(rej.join(id)).unwrap();
            std::fs::write(rej.join(id).join("a.zip"), b"x").unwrap();
        }
        std::fs::write(
            rej.join(old_id_recent_report).join("report.json"),
            format!("{{\"finished\": \"{}\"}}", jobs::deposit::now_rfc3339()),
        )
        .unwrap();
        // Not depot's: left alone.
        std::fs::create_dir_all(rej.join("20200101T000000Z-notes")).unwrap();
        let elsewhere = tmp.path().join("elsewhere/20200101T000000Z-MSEC-0000abcf");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, rej.join("20200101T000000Z-MSEC-0000abcf")).unwrap();
        let removed = prune_rejected(&cfg);
        assert_eq!(removed, vec![rej.join(old)]);
        assert!(rej.join(&young).is_dir() && rej.join(old_id_recent_report).is_dir());
        assert!(rej.join("20200101T000000Z-notes").is_dir() && elsewhere.is_dir());
        let keep_all = Config::parse(
            "drop_root = \"drop\"\npublish_root = \"pub\"\n[retention]\nrejected_days = 0\n",
            &tmp.path().join("c.toml"),
        )
        .unwrap();
        std::fs::create_dir_all(rej.join(old)).unwrap();
        assert!(prune_rejected(&keep_all).is_empty());
    }
}
