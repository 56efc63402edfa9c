//! What a producer reads back: `previous/` (listing and files), its
//! deposits (the data of `depot history --json` and `depot status ID
//! --json`, from Redis and from the folders when Redis lost it), a
//! deposit's report; and `/data/availability` for anyone.
//!
//! Files are opened without following a link, and must be regular files
//! in real folders: nothing outside the producer's folders is reached,
//! whatever the URL or the folder holds.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use md5::{Digest, Md5};
use serde_json::json as j;

use super::upload::hex;
use super::{Door, Peer, Serves, answer, json};
use crate::ops;
use crate::state::lock;

const CHUNK: usize = 256 * 1024;

/// `<drop_root>/<P>/<sub>`, if every folder on the way is a real one.
pub(super) fn real_folder(drop_root: &Path, p: &str, sub: &str) -> Option<PathBuf> {
    let pdir = drop_root.join(p);
    let dir = pdir.join(sub);
    [&pdir, &dir].iter().all(|d| std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir())).then_some(dir)
}

/// A regular file in `dir`, opened without following a link.
pub(super) fn open_regular(dir: &Path, name: &str) -> Option<(std::fs::File, std::fs::Metadata)> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return None;
    }
    let f = jobs::rotate::open_nofollow(&dir.join(name)).ok()?;
    let m = f.metadata().ok()?;
    m.is_file().then_some((f, m))
}

/// The MD5 a sidecar `<name>.md5` beside it states (md5sum format), if any.
fn sidecar_md5(dir: &Path, name: &str) -> Option<String> {
    let (mut f, m) = open_regular(dir, &format!("{name}.md5"))?;
    if m.len() > 64 * 1024 {
        return None;
    }
    let mut s = String::new();
    f.read_to_string(&mut s).ok()?;
    let h = s.split_whitespace().next()?.to_ascii_lowercase();
    (h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit())).then_some(h)
}

fn md5_of(mut f: std::fs::File) -> Option<String> {
    let mut h = Md5::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Some(hex(&h.finalize())),
            Ok(n) => h.update(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// Seconds since the epoch as RFC 3339 UTC (Howard Hinnant's civil date).
fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(|e| answer(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))
}

pub async fn previous_redirect(UrlPath(p): UrlPath<String>) -> Response {
    Redirect::permanent(&format!("/data/{p}/previous/")).into_response()
}

/// The listing: JSON (name, size, time, md5) for `Accept:
/// application/json`, a plain HTML page otherwise.
pub async fn previous(
    State(door): State<Arc<Door>>,
    UrlPath(p): UrlPath<String>,
    headers: HeaderMap,
    Extension(peer): Extension<Peer>,
) -> Response {
    if let Err(r) = door.acting_for(&headers, peer, &p).await {
        return r;
    }
    let root = door.shared.config().drop_root.clone();
    let pp = p.clone();
    let d = door.clone();
    let files = blocking(move || {
        let Some(dir) = real_folder(&root, &pp, jobs::rotate::PREVIOUS) else { return Vec::new() };
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| {
                let (f, m) = open_regular(&dir, &n)?;
                let md5 = if n.ends_with(".md5") { None } else { sidecar_md5(&dir, &n) };
                let key = (m.dev(), m.ino(), m.len(), m.mtime());
                let md5 = md5.or_else(|| lock(&d.md5s).get(&key).cloned()).or_else(|| {
                    let h = md5_of(f)?;
                    let mut cache = lock(&d.md5s);
                    if cache.len() >= 1024 {
                        cache.clear();
                    }
                    cache.insert(key, h.clone());
                    Some(h)
                });
                Some(j!({ "name": n, "size": m.len(), "time": rfc3339(m.mtime()), "md5": md5 }))
            })
            .collect()
    })
    .await;
    let files = match files {
        Ok(f) => f,
        Err(r) => return r,
    };
    let wants_json =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"));
    if wants_json {
        return json(StatusCode::OK, &serde_json::Value::Array(files));
    }
    let mut html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{p}: previous deposit</title></head><body>\n<h1>{p}: previous deposit</h1>\n<table>\n<tr><th>name</th><th>size</th><th>time</th><th>md5</th></tr>\n"
    );
    for f in &files {
        let s = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
        let name = escape(&s("name"));
        let href = percent_encoding::utf8_percent_encode(&s("name"), percent_encoding::NON_ALPHANUMERIC).to_string();
        html.push_str(&format!(
            "<tr><td><a href=\"{href}\">{name}</a></td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>\n",
            f["size"],
            escape(&s("time")),
            escape(&s("md5"))
        ));
    }
    html.push_str("</table>\n</body></html>\n");
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One file of `previous/`, streamed, with its size and (from its
/// sidecar) its MD5.
pub async fn previous_file(
    State(door): State<Arc<Door>>,
    UrlPath((p, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
    Extension(peer): Extension<Peer>,
) -> Response {
    if let Err(r) = door.acting_for(&headers, peer, &p).await {
        return r;
    }
    let root = door.shared.config().drop_root.clone();
    let (pp, n) = (p.clone(), name.clone());
    let found = blocking(move || {
        let dir = real_folder(&root, &pp, jobs::rotate::PREVIOUS)?;
        let (f, m) = open_regular(&dir, &n)?;
        Some((f, m.len(), m.mtime(), sidecar_md5(&dir, &n)))
    })
    .await;
    let (file, len, mtime, md5) = match found {
        Ok(Some(x)) => x,
        Ok(None) => return answer(StatusCode::NOT_FOUND, &format!("no file {name} in {p}'s previous/")),
        Err(r) => return r,
    };
    let stream = futures::stream::unfold(Some(file), |f| async move {
        let mut f = f?;
        let r = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; CHUNK];
            let n = f.read(&mut buf)?;
            buf.truncate(n);
            Ok::<_, std::io::Error>((f, buf))
        })
        .await;
        match r {
            Ok(Ok((_, buf))) if buf.is_empty() => None,
            Ok(Ok((f, buf))) => Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(f))),
            Ok(Err(e)) => Some((Err(e), None)),
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    // The producer's bytes: never sniffed into a page of depot's origin.
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    if let Ok(v) = HeaderValue::from_str(&rfc3339(mtime)) {
        h.insert("x-depot-time", v);
    }
    if let Some(m) = md5 {
        let bytes: Vec<u8> = (0..16).filter_map(|i| u8::from_str_radix(m.get(2 * i..2 * i + 2)?, 16).ok()).collect();
        if let Ok(v) = HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(bytes)) {
            h.insert("content-md5", v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("\"{m}\"")) {
            h.insert(header::ETAG, v);
        }
    }
    r
}

/// `GET /data/P/deposits`: the producer's history (as `depot history --json`).
pub async fn deposits(
    State(door): State<Arc<Door>>,
    UrlPath(p): UrlPath<String>,
    headers: HeaderMap,
    Extension(peer): Extension<Peer>,
) -> Response {
    if let Err(r) = door.acting_for(&headers, peer, &p).await {
        return r;
    }
    let st = &door.shared.status;
    let redis_rows =
        tokio::time::timeout(Duration::from_secs(5), ops::recent(st, |id| ops::producer_of(id) == p, |_| true, 50))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
    let cfg = door.shared.config();
    let pp = p.clone();
    let disk = match blocking(move || {
        let mut d = ops::from_disk_newest(&cfg, &pp, 50, |_| true);
        d.extend(ops::in_spool(&cfg, &pp));
        d
    })
    .await
    {
        Ok(d) => d,
        Err(r) => return r,
    };
    let rows = ops::merge_history(redis_rows, disk, 50);
    json(StatusCode::OK, &serde_json::to_value(rows).unwrap_or_default())
}

/// One deposit of P: its Redis hash (as `depot status ID --json`), or what
/// the folders know of it.
async fn lookup(door: &Door, p: &str, id: &str) -> Option<serde_json::Value> {
    if !jobs::deposit::is_id(id) || ops::producer_of(id) != p {
        return None;
    }
    let st = &door.shared.status;
    let h = tokio::time::timeout(Duration::from_secs(5), st.get(&st.deposit_key(id))).await.ok().and_then(Result::ok);
    if let Some(h) = h.filter(|h| !h.is_empty()) {
        return (h.get("producer").map(String::as_str) == Some(p)).then(|| ops::typed(&h));
    }
    let cfg = door.shared.config();
    let (pp, i) = (p.to_owned(), id.to_owned());
    let row = tokio::task::spawn_blocking(move || {
        ops::from_disk_newest(&cfg, &pp, 1, |x| x == i).into_iter().find(|r| r.id == i)
    })
    .await
    .ok()??;
    serde_json::to_value(row).ok()
}

pub async fn deposit(
    State(door): State<Arc<Door>>,
    UrlPath((p, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
    Extension(peer): Extension<Peer>,
) -> Response {
    if let Err(r) = door.acting_for(&headers, peer, &p).await {
        return r;
    }
    match lookup(&door, &p, &id).await {
        Some(v) => json(StatusCode::OK, &v),
        None => answer(StatusCode::NOT_FOUND, &format!("no deposit {id} of producer {p}")),
    }
}

/// The report in words: `rejected/<id>/report.txt` for a failed deposit,
/// else a few lines from its status.
pub async fn report(
    State(door): State<Arc<Door>>,
    UrlPath((p, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
    Extension(peer): Extension<Peer>,
) -> Response {
    if let Err(r) = door.acting_for(&headers, peer, &p).await {
        return r;
    }
    let Some(v) = lookup(&door, &p, &id).await else {
        return answer(StatusCode::NOT_FOUND, &format!("no deposit {id} of producer {p}"));
    };
    let root = door.shared.config().drop_root.clone();
    let (pp, i) = (p.clone(), id.clone());
    let text = blocking(move || {
        let dir = real_folder(&root, &pp, jobs::rotate::REJECTED)?;
        let dir = {
            let d = dir.join(&i);
            std::fs::symlink_metadata(&d).ok()?.is_dir().then_some(d)?
        };
        let (mut f, m) = open_regular(&dir, jobs::rotate::REPORT_TXT)?;
        if m.len() > 16 << 20 {
            return None;
        }
        let mut s = String::new();
        f.read_to_string(&mut s).ok()?;
        Some(s)
    })
    .await
    .ok()
    .flatten();
    let text = text.unwrap_or_else(|| {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_owned();
        let mut t = format!("deposit {id} of {p}: {}\n", s("state"));
        for k in ["file", "error_code", "error", "created", "finished"] {
            if !s(k).is_empty() {
                t.push_str(&format!("{k}: {}\n", s(k)));
            }
        }
        if let Some(n) = v.get("files").and_then(serde_json::Value::as_u64) {
            t.push_str(&format!("files: {n}\n"));
        }
        t
    });
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

/// `200` when Redis answers, the watcher runs and every root has its
/// free-space margin, else `503`; each check named.
pub async fn availability(State(door): State<Arc<Door>>) -> Response {
    let sh = &door.shared;
    let cfg = sh.config();
    let mut conn = sh.status.conn.clone();
    let ping = tokio::time::timeout(Duration::from_secs(2), redis::cmd("PING").query_async::<String>(&mut conn)).await;
    let redis = match ping {
        Ok(Ok(_)) => (true, "answers".to_owned()),
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (false, "no answer within 2 s".to_owned()),
    };
    let watcher = match door.serves {
        Serves::Everything => {
            let age = sh.beat.age();
            (age < Duration::from_secs(30), format!("last turn {} ms ago", age.as_millis()))
        }
        Serves::DoorOnly => (true, "runs in another process (--role http)".to_owned()),
    };
    let workers = match door.serves {
        Serves::Everything if sh.stopping.load(Ordering::Relaxed) => (false, "stopping".to_owned()),
        Serves::Everything => (true, format!("{} running", sh.running.load(Ordering::Relaxed))),
        Serves::DoorOnly => (true, "run in another process (--role http)".to_owned()),
    };
    let margin = cfg.settings_for_default().limits.min_free_bytes;
    let roots = [("drop_root", cfg.drop_root.clone()), ("publish_root", cfg.publish_root.clone())];
    let space = tokio::task::spawn_blocking(move || {
        let mut bad = Vec::new();
        for (k, r) in roots {
            if let Err(e) = jobs::publish::check_free_space(&r, 0, margin) {
                bad.push(format!("{k}: {}", e.message()));
            }
        }
        bad
    })
    .await
    .unwrap_or_else(|e| vec![e.to_string()]);
    let space =
        (space.is_empty(), if space.is_empty() { "every root has its margin".to_owned() } else { space.join("; ") });
    let checks = [("redis", redis), ("watcher", watcher), ("workers", workers), ("free_space", space)];
    let ok = checks.iter().all(|(_, (ok, _))| *ok);
    let mut map = serde_json::Map::new();
    for (k, (ok, detail)) in checks {
        map.insert(k.into(), j!({ "ok": ok, "detail": detail }));
    }
    json(if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &j!({ "available": ok, "checks": map }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_from_unix_time() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_342_500), "2026-11-22T10:15:00Z");
        assert_eq!(super::rfc3339(951_868_799), "2000-02-29T23:59:59Z");
    }
}
