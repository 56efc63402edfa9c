//! The web page (SPEC "HTTP door", `GET /`): what an operator on call, or
//! a producer asking "did my deposit go through, and if not why", looks at
//! instead of redis-cli.
//!
//! Server-rendered HTML (maud: every value is escaped, and producer and
//! file names are the producers' own), no JavaScript, no outside resource:
//! the page works from a phone on the archive's network. It reads what
//! `depot status` and `depot history` read (Redis, the spool, the
//! folders); folder reads run on the blocking pool. The page refreshes
//! itself only while a deposit is in PROGRESS, so an idle page costs
//! nothing.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use redis::AsyncCommands;

use super::read::{open_regular, real_folder};
use super::{Door, Peer, answer, auth};
use crate::config::Config;
use crate::metrics::rfc3339_s;
use crate::ops::{self, Row};
use crate::status::{self, Status};

/// How long one page waits for Redis before showing what the folders know.
const REDIS_WAIT: Duration = Duration::from_secs(5);
/// Failures shown with their reports on the operator's page.
const NEWEST_FAILURES: usize = 10;
/// Deposits shown on a producer's page.
const DEPOSITS_SHOWN: usize = 50;
/// A report longer than this is cut on the page (the link has it whole).
const REPORT_SHOWN: usize = 4096;
/// Deposits looked at for "failures in the last 24 h": the newest claims
/// of the last week (a deposit retried with backoff may end a day after
/// its claim), bounded so that one page load stays cheap.
const FAILURE_WINDOW_S: i64 = 7 * 86_400;
const FAILURE_SCAN: isize = 20_000;
/// Backlog deposits whose state is read from Redis; more are counted only.
const BACKLOG_READ: usize = 2_000;

/// A deposit claimed and not ended (CREATED, WAITING, PROGRESS).
#[derive(Debug, Clone, Default)]
struct Running {
    id: String,
    producer: String,
    file: String,
    state: String,
    stage: String,
    bytes_done: u64,
    bytes_total: u64,
    time: String,
}

/// One producer's line on the operator's page.
#[derive(Debug, Clone, Default)]
struct Line {
    producer: String,
    last_state: String,
    last_time: String,
    last_deposit: String,
    last_success: String,
    current_release: String,
    failures_24h: usize,
    backlog: usize,
}

/// A failure shown with its report.
#[derive(Debug, Clone, Default)]
struct Failure {
    row: Row,
    report: Option<String>,
}

/// What the operator's page shows.
#[derive(Debug, Default)]
struct Overview {
    now: i64,
    user: String,
    lines: Vec<Line>,
    running: Vec<Running>,
    failures: Vec<Failure>,
    /// Why Redis could not be read, when it could not.
    trouble: Option<String>,
}

/// One deposit on a producer's page.
#[derive(Debug, Clone, Default)]
struct Deposit {
    row: Row,
    size: Option<u64>,
    stage: String,
    bytes_done: u64,
    bytes_total: u64,
}

/// What a producer's page shows.
#[derive(Debug, Default)]
struct ProducerPage {
    now: i64,
    user: String,
    producer: String,
    last_state: String,
    last_success: String,
    current_release: String,
    deposits: Vec<Deposit>,
    trouble: Option<String>,
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn html_response(m: Markup) -> Response {
    let mut r = (StatusCode::OK, m.into_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    // The page changes with every deposit: never a stale copy.
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // It needs no script and nothing from elsewhere: should a name ever
    // slip through as markup, the browser still runs nothing, and no other
    // site can frame the page.
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'",
        ),
    );
    r
}

/// A Redis read that gives up after [`REDIS_WAIT`]: the page then says so
/// and shows what the folders keep.
async fn redis_read<T>(f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(REDIS_WAIT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("Redis: {e}")),
        Err(_) => Err(format!("Redis did not answer within {} s", REDIS_WAIT.as_secs())),
    }
}

/// The producers this config serves that have a folder under drop_root,
/// sorted (blocking: lists a folder).
fn producer_folders(cfg: &Config) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(&cfg.drop_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| cfg.is_producer(n))
        .collect();
    v.sort();
    v
}

/// Ids of the spool's records (claimed deposits not moved out yet), by
/// producer (blocking: lists the spool folder, reads no record).
fn spool_ids(drop_root: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in std::fs::read_dir(drop_root.join(crate::spool::SPOOL)).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
        if jobs::deposit::is_id(id) {
            out.entry(ops::producer_of(id).to_owned()).or_default().push(id.to_owned());
        }
    }
    for ids in out.values_mut() {
        ids.sort();
    }
    out
}

/// `rejected/<id>/report.txt`, cut at [`REPORT_SHOWN`] bytes (blocking).
fn report_text(drop_root: &Path, p: &str, id: &str) -> Option<String> {
    let dir = real_folder(drop_root, p, jobs::rotate::REJECTED)?.join(id);
    if !std::fs::symlink_metadata(&dir).ok()?.is_dir() {
        return None;
    }
    let (f, _) = open_regular(&dir, jobs::rotate::REPORT_TXT)?;
    let mut buf = Vec::new();
    f.take(REPORT_SHOWN as u64 + 1).read_to_end(&mut buf).ok()?;
    let cut = buf.len() > REPORT_SHOWN;
    buf.truncate(REPORT_SHOWN);
    let mut s = String::from_utf8_lossy(&buf).into_owned();
    if cut {
        s.push_str("\n[…]");
    }
    Some(s)
}

/// `GET /`: operators see every producer; anyone else is sent to the page
/// of the producer it acts for (or picks one, when it acts for several).
pub async fn overview(State(door): State<Arc<Door>>, headers: HeaderMap, Extension(peer): Extension<Peer>) -> Response {
    let user = match auth::check(&door, &headers, peer.0).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let cfg = door.shared.config();
    if !cfg.http.operators.iter().any(|o| o == &user) {
        let c = cfg.clone();
        let mut mine: Vec<String> = match tokio::task::spawn_blocking(move || producer_folders(&c)).await {
            Ok(v) => v,
            Err(e) => return answer(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        // A producer whose folder is not made yet still has its page.
        if cfg.is_producer(&user) && !mine.contains(&user) {
            mine.push(user.clone());
        }
        mine.retain(|p| cfg.acts_for(&user, p));
        mine.sort();
        return match mine.as_slice() {
            [] => answer(
                StatusCode::FORBIDDEN,
                &format!("user {user} is neither an operator nor acting for a producer: ask the archive"),
            ),
            [p] => Redirect::to(&producer_href(p)).into_response(),
            several => html_response(choose(&user, several)),
        };
    }
    let ov = gather_overview(&door, &cfg, user).await;
    html_response(render_overview(&ov))
}

fn producer_href(p: &str) -> String {
    format!("/producers/{}", segment(p))
}

async fn gather_overview(door: &Door, cfg: &Arc<Config>, user: String) -> Overview {
    let now = now_s();
    let st = &door.shared.status;
    let c = cfg.clone();
    let (folders, spool) =
        tokio::task::spawn_blocking(move || (producer_folders(&c), spool_ids(&c.drop_root))).await.unwrap_or_default();
    let mut ov = Overview { now, user, ..Overview::default() };
    let mut trouble = Vec::new();
    let mut producers: Vec<String> = folders;
    let mut conn = st.conn.clone();
    let members: Result<Vec<String>, String> = redis_read(conn.smembers(st.producers_key())).await;
    match members {
        Ok(v) => producers.extend(v.into_iter().filter(|p| cfg.is_producer(p))),
        Err(e) => trouble.push(e),
    }
    producers.extend(spool.keys().filter(|p| cfg.is_producer(p)).cloned());
    producers.sort();
    producers.dedup();

    // Each producer's summary and its last deposit's time.
    let mut hashes: Vec<HashMap<String, String>> = Vec::new();
    if trouble.is_empty() {
        let mut pipe = redis::pipe();
        for p in &producers {
            pipe.hgetall(st.producer_key(p));
        }
        match redis_read(pipe.query_async::<Vec<HashMap<String, String>>>(&mut conn)).await {
            Ok(h) => hashes = h,
            Err(e) => trouble.push(e),
        }
    }
    let last_ids: Vec<String> = hashes.iter().map(|h| h.get("last_deposit").cloned().unwrap_or_default()).collect();
    let mut last_times: Vec<String> = vec![String::new(); last_ids.len()];
    if trouble.is_empty() && !last_ids.is_empty() {
        let mut pipe = redis::pipe();
        for id in &last_ids {
            pipe.cmd("HMGET").arg(st.deposit_key(id)).arg(&["finished", "started", "created"][..]);
        }
        match redis_read(pipe.query_async::<Vec<Vec<Option<String>>>>(&mut conn)).await {
            Ok(v) => {
                last_times = v
                    .into_iter()
                    .map(|t| t.into_iter().flatten().find(|s| !s.is_empty()).unwrap_or_default())
                    .collect();
            }
            Err(e) => trouble.push(e),
        }
    }

    // Failures in the last 24 h, by producer, and the newest ones.
    let mut failures: HashMap<String, usize> = HashMap::new();
    let mut newest = Vec::new();
    if trouble.is_empty() {
        match recent_failures(st, now).await {
            Ok((f, rows)) => (failures, newest) = (f, rows),
            Err(e) => trouble.push(e),
        }
    }

    // The backlog: the spool's records whose state has not ended.
    let ids: Vec<&String> = spool.values().flatten().take(BACKLOG_READ).collect();
    let mut states: HashMap<String, HashMap<String, String>> = HashMap::new();
    if trouble.is_empty() && !ids.is_empty() {
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(st.deposit_key(id));
        }
        match redis_read(pipe.query_async::<Vec<HashMap<String, String>>>(&mut conn)).await {
            Ok(v) => states = ids.iter().map(|s| (*s).clone()).zip(v).collect(),
            Err(e) => trouble.push(e),
        }
    }
    let mut backlog: HashMap<String, usize> = HashMap::new();
    for (p, ids) in &spool {
        for id in ids {
            let h = states.get(id);
            let state = h.and_then(|h| h.get("state")).map(String::as_str).unwrap_or(status::WAITING);
            if state == status::SUCCESS || state == status::FAILURE {
                continue;
            }
            *backlog.entry(p.clone()).or_default() += 1;
            let g = |k: &str| h.and_then(|h| h.get(k)).cloned().unwrap_or_default();
            let n = |k: &str| h.and_then(|h| h.get(k)).and_then(|v| v.parse().ok()).unwrap_or(0);
            ov.running.push(Running {
                id: id.clone(),
                producer: p.clone(),
                file: g("file"),
                state: state.to_owned(),
                stage: g("stage"),
                bytes_done: n("bytes_done"),
                bytes_total: n("bytes_total"),
                time: [g("started"), g("created")].into_iter().find(|t| !t.is_empty()).unwrap_or_default(),
            });
        }
    }

    for (i, p) in producers.iter().enumerate() {
        let h = hashes.get(i);
        let g = |k: &str| h.and_then(|h| h.get(k)).cloned().unwrap_or_default();
        ov.lines.push(Line {
            producer: p.clone(),
            last_state: g("last_state"),
            last_time: last_times.get(i).cloned().unwrap_or_default(),
            last_deposit: g("last_deposit"),
            last_success: g("last_success"),
            current_release: g("current_release"),
            failures_24h: failures.get(p).copied().unwrap_or(0),
            backlog: backlog.get(p).copied().unwrap_or(0),
        });
    }

    let root = cfg.drop_root.clone();
    ov.failures = tokio::task::spawn_blocking(move || {
        newest.into_iter().map(|row| Failure { report: report_text(&root, &row.producer, &row.id), row }).collect()
    })
    .await
    .unwrap_or_default();
    ov.trouble = trouble.into_iter().next();
    ov
}

/// Failures of the deposits claimed in the last [`FAILURE_WINDOW_S`]
/// (newest [`FAILURE_SCAN`]): how many ended in the last 24 h, by
/// producer, and the newest [`NEWEST_FAILURES`] of them as rows. Bounded,
/// unlike `depot status --failed`'s walk of the whole index: the page may
/// be reloaded every 5 s.
async fn recent_failures(st: &Status, now: i64) -> Result<(HashMap<String, usize>, Vec<Row>), String> {
    let mut conn = st.conn.clone();
    let ids: Vec<String> = redis_read(
        redis::cmd("ZREVRANGEBYSCORE")
            .arg(st.deposits_key())
            .arg("+inf")
            .arg((now - FAILURE_WINDOW_S).saturating_mul(1000))
            .arg("LIMIT")
            .arg(0)
            .arg(FAILURE_SCAN)
            .query_async(&mut conn),
    )
    .await?;
    let mut counts = HashMap::new();
    let mut newest = Vec::new();
    for chunk in ids.chunks(500) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("HMGET").arg(st.deposit_key(id)).arg(&["state", "finished", "producer"][..]);
        }
        let v: Vec<Vec<Option<String>>> = redis_read(pipe.query_async(&mut conn)).await?;
        for (id, f) in chunk.iter().zip(v) {
            let [Some(state), Some(fin), Some(p)] = f.as_slice() else { continue };
            if state != status::FAILURE {
                continue;
            }
            if newest.len() < NEWEST_FAILURES {
                newest.push(id.clone());
            }
            if rfc3339_s(fin).is_some_and(|t| t as i64 >= now - 86_400) {
                *counts.entry(p.clone()).or_default() += 1;
            }
        }
    }
    let mut pipe = redis::pipe();
    for id in &newest {
        pipe.hgetall(st.deposit_key(id));
    }
    let hashes: Vec<HashMap<String, String>> =
        if newest.is_empty() { Vec::new() } else { redis_read(pipe.query_async(&mut conn)).await? };
    let rows = hashes
        .into_iter()
        .zip(newest)
        .map(|(h, id)| {
            let g = |k: &str| h.get(k).cloned().unwrap_or_default();
            Row {
                id,
                producer: g("producer"),
                file: g("file"),
                state: g("state"),
                code: g("error_code"),
                time: g("finished"),
                error: g("error"),
                source: "redis".into(),
                ..Row::default()
            }
        })
        .collect();
    Ok((counts, rows))
}

/// `GET /producers/<P>`: P's deposits with their reports; P's users and
/// operators only.
pub async fn producer(
    State(door): State<Arc<Door>>,
    UrlPath(p): UrlPath<String>,
    headers: HeaderMap,
    Extension(peer): Extension<Peer>,
) -> Response {
    let user = match auth::check(&door, &headers, peer.0).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let cfg = door.shared.config();
    if !cfg.is_producer(&p) {
        return answer(StatusCode::NOT_FOUND, "no such producer");
    }
    if !cfg.acts_for(&user, &p) {
        return answer(StatusCode::FORBIDDEN, &format!("user {user} does not act for producer {p}"));
    }
    let page = gather_producer(&door, &cfg, user, p).await;
    html_response(render_producer(&page))
}

async fn gather_producer(door: &Door, cfg: &Arc<Config>, user: String, p: String) -> ProducerPage {
    let st = &door.shared.status;
    let mut page = ProducerPage { now: now_s(), user, producer: p.clone(), ..ProducerPage::default() };
    let mut trouble = Vec::new();
    match redis_read(st.get(&st.producer_key(&p))).await {
        Ok(h) => {
            let g = |k: &str| h.get(k).cloned().unwrap_or_default();
            page.last_state = g("last_state");
            page.last_success = g("last_success");
            page.current_release = g("current_release");
        }
        Err(e) => trouble.push(e),
    }
    let mut redis_rows = Vec::new();
    if trouble.is_empty() {
        let pp = p.clone();
        match tokio::time::timeout(
            REDIS_WAIT,
            ops::recent(st, move |id| ops::producer_of(id) == pp, |_| true, DEPOSITS_SHOWN),
        )
        .await
        {
            Ok(Ok(r)) => redis_rows = r,
            Ok(Err(e)) => trouble.push(format!("Redis: {e}")),
            Err(_) => trouble.push("Redis did not answer".into()),
        }
    }
    let c = cfg.clone();
    let pp = p.clone();
    let disk = tokio::task::spawn_blocking(move || {
        let mut d = ops::from_disk_newest(&c, &pp, DEPOSITS_SHOWN, |_| true);
        d.extend(ops::in_spool(&c, &pp));
        d
    })
    .await
    .unwrap_or_default();
    let rows = ops::merge_history(redis_rows, disk, DEPOSITS_SHOWN);
    // Size and progress, which the history rows do not carry.
    let from_redis: Vec<&Row> = rows.iter().filter(|r| r.source == "redis").collect();
    let mut extra: HashMap<String, Vec<Option<String>>> = HashMap::new();
    if trouble.is_empty() && !from_redis.is_empty() {
        let mut pipe = redis::pipe();
        for r in &from_redis {
            pipe.cmd("HMGET").arg(st.deposit_key(&r.id)).arg(&["size", "stage", "bytes_done", "bytes_total"][..]);
        }
        let mut conn = st.conn.clone();
        match redis_read(pipe.query_async::<Vec<Vec<Option<String>>>>(&mut conn)).await {
            Ok(v) => extra = from_redis.iter().map(|r| r.id.clone()).zip(v).collect(),
            Err(e) => trouble.push(e),
        }
    }
    page.deposits = rows
        .into_iter()
        .map(|row| {
            let x = extra.get(&row.id);
            let f = |i: usize| x.and_then(|x| x.get(i)).cloned().flatten();
            let n = |i: usize| f(i).and_then(|v| v.parse().ok());
            Deposit {
                size: n(0),
                stage: f(1).unwrap_or_default(),
                bytes_done: n(2).unwrap_or(0),
                bytes_total: n(3).unwrap_or(0),
                row,
            }
        })
        .collect();
    page.trouble = trouble.into_iter().next();
    page
}

// ---- rendering -------------------------------------------------------

const CSS: &str = "
:root{color-scheme:light dark;--ok:#1a7f37;--bad:#cf222e;--run:#9a6700;--mute:#6e7781}
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;padding:0.8rem;max-width:78rem;line-height:1.4}
h1{font-size:1.4rem;margin:0.2rem 0 0.6rem}h2{font-size:1.1rem;margin:1.4rem 0 0.4rem}
header{display:flex;flex-wrap:wrap;justify-content:space-between;gap:0.5rem;align-items:baseline;border-bottom:1px solid #8884;padding-bottom:0.4rem}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;font-size:0.92rem}
th,td{text-align:left;padding:0.3rem 0.5rem;border-bottom:1px solid #8883;vertical-align:top}
th{font-weight:600;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.SUCCESS{color:var(--ok);font-weight:600}.FAILURE{color:var(--bad);font-weight:600}
.PROGRESS,.WAITING,.CREATED{color:var(--run);font-weight:600}
.age,.mute{color:var(--mute);font-size:0.85em}
.age{white-space:nowrap}
.file{overflow-wrap:break-word;min-width:8rem}
code{font-size:0.9em}
pre{white-space:pre-wrap;word-break:break-word;background:#8881;padding:0.5rem;border-radius:4px;font-size:0.85rem;margin:0.3rem 0}
.failure{border-left:3px solid var(--bad);padding-left:0.6rem;margin:0.8rem 0}
.trouble{background:#cf222e22;border:1px solid var(--bad);padding:0.5rem;border-radius:4px}
progress{width:8rem;vertical-align:middle}
nav a{margin-right:1rem}
time{white-space:nowrap}
@media (max-width:40rem){body{padding:0.4rem}
table.cards thead{display:none}
table.cards,table.cards tbody,table.cards tr,table.cards td{display:block}
table.cards tr{border-bottom:1px solid #8886;padding:0.3rem 0}
table.cards td{border:none;padding:0.1rem 0.2rem;text-align:left}
table.cards td:empty{display:none}
table.cards td[data-label]::before{content:attr(data-label) \": \";color:var(--mute);font-size:0.85em}}
";

fn layout(title: &str, refresh: bool, user: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh { meta http-equiv="refresh" content="5"; }
                title { (title) " · depot" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    h1 { (title) }
                    span.mute { "signed in as " (user) }
                }
                (body)
            }
        }
    }
}

/// "3 min ago" for a time `secs` before now.
fn age(secs: i64) -> String {
    match secs {
        s if s < 0 => "just now".into(),
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86_400 => format!("{} h ago", s / 3600),
        s if s < 2 * 86_400 => "1 day ago".into(),
        s => format!("{} days ago", s / 86_400),
    }
}

/// An RFC 3339 time in UTC with its age; "-" when there is none.
fn when(t: &str, now: i64) -> Markup {
    match rfc3339_s(t) {
        Some(s) => html! {
            time datetime=(t) { (t.replacen('T', " ", 1).trim_end_matches('Z')) " UTC" }
            " " span.age { "(" (age(now - s as i64)) ")" }
        },
        None if t.is_empty() => html! { span.mute { "-" } },
        None => html! { (t) },
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[i]) }
}

/// A release by its deposit id: `current_release` holds the release's
/// folder (or key), whose host path tells a reader nothing.
fn release_id(r: &str) -> &str {
    r.trim_end_matches('/').rsplit('/').next().unwrap_or(r)
}

fn state(s: &str) -> Markup {
    let s = if s.is_empty() { "-" } else { s };
    html! { span class=(s) { (s) } }
}

/// A running deposit's bar: bytes_done of bytes_total, or a bar without
/// a value (the browser shows it as busy) before the size is known.
fn progress(done: u64, total: u64, stage: &str) -> Markup {
    html! {
        @if total > 0 {
            @let pct = (done.min(total) as f64 * 100.0 / total as f64).floor() as u64;
            progress value=(done.min(total)) max=(total) { (pct) "%" }
            " " (pct) "% " span.mute { (bytes(done)) " of " (bytes(total)) }
        } @else {
            progress { "running" }
        }
        @if !stage.is_empty() { " " span.mute { "(" (stage) ")" } }
    }
}

/// What a path segment keeps unencoded: producer names and deposit ids
/// read as they are.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// The report's link; none for an id that is not one (a hand-edited Redis).
fn report_href(p: &str, id: &str) -> Option<String> {
    jobs::deposit::is_id(id).then(|| format!("/data/{}/deposits/{id}/report.txt", segment(p)))
}

fn trouble(t: &Option<String>) -> Markup {
    html! {
        @if let Some(t) = t {
            p.trouble { "Redis could not be read (" (t) "): this page shows what the folders keep." }
        }
    }
}

fn render_overview(ov: &Overview) -> Markup {
    let refresh = ov.running.iter().any(|r| r.state == status::PROGRESS);
    let body = html! {
        (trouble(&ov.trouble))
        h2 { "Producers" }
        @if ov.lines.is_empty() {
            p.mute { "No producer yet: none has a folder under drop_root." }
        } @else {
            div.scroll { table.cards #producers {
                thead { tr {
                    th { "producer" } th { "last state" } th { "when" } th { "last success" }
                    th { "failures (24 h)" } th { "backlog" } th { "current release" }
                } }
                tbody { @for l in &ov.lines {
                    tr data-producer=(l.producer) {
                        td { a href=(producer_href(&l.producer)) { (l.producer) } }
                        td title=(l.last_deposit) data-label="last state" { (state(&l.last_state)) }
                        td data-label="when" { (when(&l.last_time, ov.now)) }
                        td data-label="last success" { (when(&l.last_success, ov.now)) }
                        td.num data-label="failures (24 h)" { @if l.failures_24h > 0 { span.FAILURE { (l.failures_24h) } } @else { "0" } }
                        td.num data-label="backlog" { (l.backlog) }
                        td data-label="current release" { @if l.current_release.is_empty() { span.mute { "-" } } @else { code { (release_id(&l.current_release)) } } }
                    }
                } }
            } }
        }
        @if !ov.running.is_empty() {
            h2 { "Running and waiting" }
            div.scroll { table.cards #running {
                thead { tr { th { "producer" } th { "file" } th { "state" } th { "progress" } th { "since" } } }
                tbody { @for r in &ov.running {
                    tr data-deposit=(r.id) {
                        td { a href=(producer_href(&r.producer)) { (r.producer) } }
                        td.file data-label="file" { (r.file) }
                        td data-label="state" { (state(&r.state)) }
                        td data-label="progress" { @if r.state == status::PROGRESS { (progress(r.bytes_done, r.bytes_total, &r.stage)) } }
                        td data-label="since" { (when(&r.time, ov.now)) }
                    }
                } }
            } }
        }
        h2 { "Newest failures" }
        @if ov.failures.is_empty() {
            p.mute { "No failure among the deposits of the last 7 days." }
        }
        @for f in &ov.failures {
            div.failure data-deposit=(f.row.id) {
                div {
                    a href=(producer_href(&f.row.producer)) { (f.row.producer) } " · "
                    span.file { (f.row.file) } " · "
                    code { (f.row.code) } " · "
                    (when(&f.row.time, ov.now))
                }
                @if !f.row.error.is_empty() { div { (f.row.error) } }
                @if let Some(r) = &f.report { pre { (r) } }
                div {
                    @if let Some(h) = report_href(&f.row.producer, &f.row.id) { a href=(h) { "report.txt" } " " }
                    span.mute { code { (f.row.id) } }
                }
            }
        }
        p.mute { "Times in UTC. " @if refresh { "This page refreshes every 5 s while a deposit runs." } }
    };
    layout("depot: every producer", refresh, &ov.user, body)
}

fn render_producer(pg: &ProducerPage) -> Markup {
    let refresh = pg.deposits.iter().any(|d| d.row.state == status::PROGRESS);
    let p = &pg.producer;
    let enc = segment(p);
    let body = html! {
        (trouble(&pg.trouble))
        nav {
            a href={ "/data/" (enc) "/previous/" } { "previous/ (the last accepted deposit)" }
            a href={ "/data/pub/" (enc) "/" } { "current release (manifest.json)" }
        }
        p {
            "Last state " (state(&pg.last_state)) "; last success " (when(&pg.last_success, pg.now))
            @if !pg.current_release.is_empty() { "; current release " code { (release_id(&pg.current_release)) } }
            "."
        }
        h2 { "Deposits" }
        @if pg.deposits.is_empty() {
            p.mute { "No deposit yet." }
        } @else {
            div.scroll { table.cards #deposits {
                thead { tr { th { "state" } th { "file" } th { "size" } th { "time" } th { "code" } th { "report" } } }
                tbody { @for d in &pg.deposits {
                    tr data-deposit=(d.row.id) {
                        td {
                            (state(&d.row.state))
                            @if d.row.state == status::PROGRESS { br; (progress(d.bytes_done, d.bytes_total, &d.stage)) }
                        }
                        td.file data-label="file" { (d.row.file) }
                        td.num data-label="size" { @if let Some(s) = d.size.or(d.row.bytes) { (bytes(s)) } }
                        td data-label="time" { (when(&d.row.time, pg.now)) }
                        td data-label="code" {
                            @if !d.row.code.is_empty() { code { (d.row.code) } }
                            @if !d.row.error.is_empty() { div.mute { (d.row.error) } }
                        }
                        td data-label="report" { @if let Some(h) = report_href(p, &d.row.id) { a href=(h) title=(d.row.id) { "report.txt" } } }
                    }
                } }
            } }
        }
        p.mute { "Times in UTC. " @if refresh { "This page refreshes every 5 s while a deposit runs." } }
    };
    layout(&format!("depot: producer {p}"), refresh, &pg.user, body)
}

/// For a user acting for several producers: which one.
fn choose(user: &str, producers: &[String]) -> Markup {
    let body = html! {
        h2 { "Your producers" }
        ul { @for p in producers { li { a href=(producer_href(p)) { (p) } } } }
    };
    layout("depot", false, user, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, state: &str, file: &str) -> Row {
        Row {
            id: id.into(),
            producer: "MSEC".into(),
            file: file.into(),
            state: state.into(),
            time: "2026-11-22T10:15:00Z".into(),
            source: "redis".into(),
            ..Row::default()
        }
    }

    #[test]
    fn page_ages_in_words() {
        assert_eq!(age(-3), "just now");
        assert_eq!(age(42), "42 s ago");
        assert_eq!(age(3 * 60 + 5), "3 min ago");
        assert_eq!(age(2 * 3600), "2 h ago");
        assert_eq!(age(86_400 + 5), "1 day ago");
        assert_eq!(age(9 * 86_400), "9 days ago");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        let now = rfc3339_s("2026-11-22T10:18:00Z").unwrap() as i64;
        let w = when("2026-11-22T10:15:00Z", now).into_string();
        assert!(w.contains("2026-11-22 10:15:00 UTC") && w.contains("(3 min ago)"), "{w}");
    }

    #[test]
    fn page_refreshes_only_while_a_deposit_runs() {
        let mut pg = ProducerPage { producer: "MSEC".into(), user: "MSEC".into(), ..ProducerPage::default() };
        pg.deposits
            .push(Deposit { row: row("20261122T101500Z-MSEC-aaaaaaaa", "SUCCESS", "a.zip"), ..Deposit::default() });
        let idle = render_producer(&pg).into_string();
        assert!(!idle.contains("http-equiv=\"refresh\""), "{idle}");
        assert!(idle.contains("name=\"viewport\""));
        pg.deposits.push(Deposit {
            row: row("20261122T101600Z-MSEC-bbbbbbbb", "PROGRESS", "b.zip"),
            stage: "unpack".into(),
            bytes_done: 250,
            bytes_total: 1000,
            ..Deposit::default()
        });
        let busy = render_producer(&pg).into_string();
        assert!(busy.contains("<meta http-equiv=\"refresh\" content=\"5\">"), "{busy}");
        assert!(busy.contains("<progress value=\"250\" max=\"1000\">"), "{busy}");
        assert!(busy.contains("25%"));
        pg.deposits[1].bytes_total = 0;
        let unknown = render_producer(&pg).into_string();
        assert!(unknown.contains("<progress>running</progress>"), "{unknown}");
        assert!(busy.contains("/data/MSEC/deposits/20261122T101600Z-MSEC-bbbbbbbb/report.txt"), "{busy}");
    }

    #[test]
    fn page_escapes_what_producers_name() {
        let mut ov = Overview { user: "ops".into(), ..Overview::default() };
        let mut r = row("20261122T101500Z-MSEC-aaaaaaaa", "FAILURE", "<img src=x onerror=alert(1)>.zip");
        r.code = "NOT_A_ZIP".into();
        r.error = "\"<script>\" is not a zip".into();
        ov.failures.push(Failure { row: r, report: Some("Deposit <b>x</b> was REJECTED.".into()) });
        ov.lines.push(Line { producer: "MSEC".into(), last_state: "FAILURE".into(), ..Line::default() });
        let h = render_overview(&ov).into_string();
        assert!(!h.contains("<img") && !h.contains("<script") && !h.contains("<b>x"), "{h}");
        assert!(h.contains("&lt;img src=x onerror=alert(1)&gt;.zip"), "{h}");
        assert!(h.contains("Deposit &lt;b&gt;x&lt;/b&gt; was REJECTED."), "{h}");
        assert!(!h.contains("http-equiv"));
    }
}
