//! `PUT /data/<P>/new/<name>`: the body is written under a hidden name in
//! `new/` (`.depot-http-…`: the watcher ignores hidden names), its MD5
//! computed on the way, and only once the body is complete does it become
//! a deposit, through the spool's own claim (the watcher's), under the
//! name the producer gave. Whatever stops it before (a body cut short, a
//! client idle past `http.idle_timeout_s`, a wrong Content-MD5, a limit)
//! removes the hidden file; what a crash of depot leaves is removed at the
//! next start ([`remove_leftovers`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use futures::StreamExt;
use tracing::{info, warn};

use super::{Door, Peer, Serves, answer, json};
use crate::spool::Entry;
use crate::state::lock;
use crate::status;

/// Hidden names of uploads being received: `.depot-http-<random>`.
pub const PARTIAL_PREFIX: &str = ".depot-http-";

/// Bytes gathered from the body before one write (off the runtime).
const WRITE_BATCH: usize = 1 << 19;

/// A sidecar is a line of md5sum output: anything much longer is not one.
const MAX_SIDECAR: u64 = 64 * 1024;

/// What a crash of depot left in every producer's `new/`: removed at start.
pub fn remove_leftovers(drop_root: &Path, is_producer: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for p in std::fs::read_dir(drop_root).into_iter().flatten().flatten() {
        let name = p.file_name().to_string_lossy().into_owned();
        if !is_producer(&name) {
            continue;
        }
        for f in std::fs::read_dir(p.path().join("new")).into_iter().flatten().flatten() {
            if f.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX)
                && f.file_type().is_ok_and(|t| t.is_file())
                && std::fs::remove_file(f.path()).is_ok()
            {
                removed.push(f.path());
            }
        }
    }
    removed
}

/// Why `name` cannot be a deposit's (or its sidecar's) name, in words.
fn bad_name(name: &str) -> Option<String> {
    let base = name.strip_suffix(".md5").unwrap_or(name);
    let why = if base.is_empty() {
        "it is empty"
    } else if name.len() > 251 {
        "it is longer than 251 bytes"
    } else if name.contains(['/', '\\']) {
        "it holds a slash"
    } else if name.chars().any(char::is_control) {
        "it holds control characters"
    } else if name.starts_with('.') {
        "it starts with a dot (hidden names are never deposits)"
    } else if crate::watcher::ignored(base) {
        "it ends in .part, .filepart or .tmp (names of unfinished uploads)"
    } else {
        return None;
    };
    Some(format!("the name {name:?} cannot be a deposit: {why}; rename the file and upload it again"))
}

pub async fn no_name(UrlPath(_p): UrlPath<String>) -> Response {
    answer(StatusCode::BAD_REQUEST, "the URL must end with the file's name (curl -T FILE URL/ adds it)")
}

/// Given back when the upload ends, however it ends.
struct Claims {
    door: Arc<Door>,
    key: (String, String),
}

impl Drop for Claims {
    fn drop(&mut self) {
        lock(&self.door.receiving).remove(&self.key);
        let mut u = lock(&self.door.uploads);
        if let Some(n) = u.get_mut(&self.key.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                u.remove(&self.key.0);
            }
        }
    }
}

/// The hidden file, removed unless it was claimed (or renamed).
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // Off the runtime when there is one (a dropped request's future).
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn_blocking(move || {
                        let _ = std::fs::remove_file(p);
                    });
                }
                Err(_) => {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
}

/// The MD5 of an upload body, by OpenSSL: on a large PUT the hash is the
/// door's bottleneck (see Cargo.toml).
struct Md5(openssl::hash::Hasher);

impl Md5 {
    fn new() -> std::io::Result<Md5> {
        openssl::hash::Hasher::new(openssl::hash::MessageDigest::md5()).map(Md5).map_err(std::io::Error::other)
    }

    fn update(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.0.update(b).map_err(std::io::Error::other)
    }

    fn finalize(mut self) -> std::io::Result<[u8; 16]> {
        let d = self.0.finish().map_err(std::io::Error::other)?;
        <[u8; 16]>::try_from(&d[..]).map_err(|_| std::io::Error::other("an MD5 of other than 16 bytes"))
    }
}

/// The open hidden file and the MD5 so far: moved onto the blocking pool
/// for each batch of body bytes.
struct Sink {
    file: std::fs::File,
    md5: Md5,
}

fn no_space(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(28) || e.raw_os_error() == Some(122)
}

fn refused_space(why: &str) -> Response {
    answer(
        StatusCode::INSUFFICIENT_STORAGE,
        &format!("not enough free space for this archive now ({why}); try again later"),
    )
}

/// How many batches may wait for the writer, and for the hasher behind
/// it: receiving runs ahead of writing, and writing ahead of hashing, by
/// at most this many (memory per upload is about
/// `(2 * QUEUED + 3) * WRITE_BATCH`).
const QUEUED: usize = 2;

/// The writer of one upload, on the blocking pool: writes each batch (and
/// hands it to a hashing thread) while the runtime goes on receiving the
/// next one, so that MD5 and the disk overlap the network and each other
/// instead of following them. With `margin` (a
/// body of unknown length) it refuses to go on once the drop filesystem is
/// down to it. Ends when the sender is dropped (the body ended, or the
/// request was dropped) or at the first error.
fn writer(
    sink: Sink,
    mut rx: tokio::sync::mpsc::Receiver<Vec<Bytes>>,
    margin: Option<(PathBuf, u64)>,
) -> tokio::task::JoinHandle<std::io::Result<Sink>> {
    tokio::task::spawn_blocking(move || {
        let Sink { mut file, md5 } = sink;
        // The MD5 on a thread of its own: hashing (the slower) and writing
        // overlap instead of following each other.
        let (to_hash, batches) = std::sync::mpsc::sync_channel::<Vec<Bytes>>(QUEUED);
        let hashing = std::thread::spawn(move || -> std::io::Result<Md5> {
            let mut md5 = md5;
            for batch in batches {
                for b in &batch {
                    md5.update(b)?;
                }
            }
            Ok(md5)
        });
        let hashed = |h: std::thread::JoinHandle<std::io::Result<Md5>>| {
            h.join().map_err(|_| std::io::Error::other("an upload's MD5 panicked"))?
        };
        let mut flushing: Option<std::thread::JoinHandle<std::io::Result<()>>> = None;
        let mut unflushed = 0usize;
        while let Some(batch) = rx.blocking_recv() {
            let n: usize = batch.iter().map(Bytes::len).sum();
            if let Some((root, margin)) = &margin
                && jobs::publish::check_free_space(root, n as u64, *margin).is_err()
            {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            if to_hash.send(batch.clone()).is_err() {
                // The hasher only stops early on its own error.
                drop(to_hash);
                return Err(hashed(hashing)
                    .err()
                    .unwrap_or_else(|| std::io::Error::other("the upload's MD5 stopped early")));
            }
            for b in &batch {
                file.write_all(b)?;
            }
            unflushed += n;
            if unflushed >= FLUSH_EVERY && flushing.as_ref().is_none_or(|f| f.is_finished()) {
                if let Some(f) = flushing.take() {
                    flushed(f)?;
                }
                let dup = file.try_clone()?;
                flushing = Some(std::thread::spawn(move || dup.sync_data()));
                unflushed = 0;
            }
        }
        if let Some(f) = flushing {
            flushed(f)?;
        }
        drop(to_hash);
        Ok(Sink { file, md5: hashed(hashing)? })
    })
}

/// Bytes written between two early flushes of an upload. The disk starts
/// writing a large upload while the rest is still arriving, so the final
/// `sync_all` before the 201 waits for the tail only, not for the whole
/// archive (512 MiB took 0.3 to 0.4 s to flush here). 8 MiB rather than
/// 32: bench/http.sh 1.15x and 1.05x Apache against 1.04x and 0.97x.
const FLUSH_EVERY: usize = 8 << 20;

/// An early flush's own error: it shares the file description with the
/// final `sync_all`, which would not report a write-back error again.
fn flushed(f: std::thread::JoinHandle<std::io::Result<()>>) -> std::io::Result<()> {
    f.join().map_err(|_| std::io::Error::other("an upload's flush panicked"))?
}

/// The writer's error, once a batch could not be handed over to it.
async fn writer_failed(w: tokio::task::JoinHandle<std::io::Result<Sink>>) -> std::io::Error {
    match w.await {
        Ok(Err(e)) => e,
        Ok(Ok(_)) => std::io::Error::other("the upload's writer stopped early"),
        Err(e) => std::io::Error::other(e),
    }
}

pub async fn put(
    State(door): State<Arc<Door>>,
    UrlPath((p, name)): UrlPath<(String, String)>,
    Extension(peer): Extension<Peer>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let user = match door.acting_for(&parts.headers, peer, &p).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Some(why) = bad_name(&name) {
        return answer(StatusCode::BAD_REQUEST, &why);
    }
    let cfg = door.shared.config();
    let limits = cfg.settings_for(&p).limits;
    let sidecar = name.ends_with(".md5");
    let max = if sidecar { MAX_SIDECAR } else { limits.max_archive_bytes };
    let length =
        match parts.headers.get(header::CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok())) {
            None => None,
            Some(Some(n)) => Some(n),
            Some(None) => return answer(StatusCode::BAD_REQUEST, "the Content-Length header is not a number"),
        };
    if let Some(n) = length.filter(|n| *n > max) {
        return too_large(n, max, sidecar);
    }
    let want_md5 = match parts.headers.get("content-md5") {
        None => None,
        Some(v) => {
            match v.to_str().ok().and_then(|s| base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()) {
                Some(b) if b.len() == 16 => Some(b),
                _ => {
                    return answer(
                        StatusCode::BAD_REQUEST,
                        "the Content-MD5 header must be the base64 of the 16-byte MD5 (RFC 1864: openssl md5 -binary FILE | base64)",
                    );
                }
            }
        }
    };
    // Free space before the first byte, when the size is known.
    let (root, need, margin) = (cfg.drop_root.clone(), length.unwrap_or(0), limits.min_free_bytes);
    match tokio::task::spawn_blocking(move || jobs::publish::check_free_space(&root, need, margin)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return refused_space(&e.message()),
        Err(e) => return answer(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot check free space: {e}")),
    }
    let new_dir = cfg.drop_root.join(&p).join("new");
    let (dir, n) = (new_dir.clone(), name.clone());
    let taken = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
        // Real folders only: a link in the producer's folders is never followed.
        let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        for d in [&parent, &dir] {
            match std::fs::symlink_metadata(d) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(std::io::Error::other(format!("{} is not a real folder", d.display()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(d)?,
                Err(e) => return Err(e),
            }
        }
        Ok(std::fs::symlink_metadata(dir.join(&n)).is_ok())
    })
    .await;
    let taken = match taken {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            warn!(producer = %p, error = %e, "HTTP upload refused: the producer's new/ folder is not usable");
            return answer(StatusCode::INTERNAL_SERVER_ERROR, "the archive cannot take deposits for this producer now");
        }
        Err(e) => return answer(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let waiting = taken
        || lock(&door.shared.index).get(&p).is_some_and(|m| m.values().any(|e| e.name == name))
        || lock(&door.receiving).contains(&(p.clone(), name.clone()));
    if waiting {
        return answer(
            StatusCode::CONFLICT,
            &format!("{name} is already waiting to be ingested; upload it again once that deposit has ended"),
        );
    }
    {
        let mut u = lock(&door.uploads);
        let n = u.entry(p.clone()).or_default();
        if *n >= cfg.http.max_uploads_per_producer {
            return answer(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "producer {p} already has {n} uploads running (at most {}); try again when one has ended",
                    cfg.http.max_uploads_per_producer
                ),
            );
        }
        *n += 1;
    }
    lock(&door.receiving).insert((p.clone(), name.clone()));
    let _claims = Claims { door: door.clone(), key: (p.clone(), name.clone()) };

    let hidden = new_dir.join(format!("{PARTIAL_PREFIX}{}", jobs::deposit::new_id("u")));
    let h = hidden.clone();
    let file = match tokio::task::spawn_blocking(move || std::fs::File::create_new(&h)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) if no_space(&e) => return refused_space(&e.to_string()),
        Ok(Err(e)) => return answer(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot store the upload: {e}")),
        Err(e) => return answer(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut partial = Partial(Some(hidden.clone()));
    // The answer is sent only once a refused upload's file is gone: a
    // client (or a test) that looks right after its 4xx finds nothing.
    let r: Response = async {
    let idle = Duration::from_secs(cfg.http.idle_timeout_s);
    let addr = peer.0;
    let mut body = body.into_data_stream();
    let margin = length.is_none().then(|| (cfg.drop_root.clone(), limits.min_free_bytes));
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(QUEUED);
    let store_failed = |e: std::io::Error, p: &str| {
        if no_space(&e) {
            return refused_space(&e.to_string());
        }
        warn!(producer = %p, error = %e, "cannot write an HTTP upload");
        answer(StatusCode::INTERNAL_SERVER_ERROR, "the archive could not store the upload")
    };
    let md5 = match Md5::new() {
        Ok(m) => m,
        Err(e) => return store_failed(e, &p),
    };
    let mut writing = writer(Sink { file, md5 }, rx, margin);
    let (mut total, mut batch, mut batched) = (0u64, Vec::new(), 0usize);
    loop {
        let chunk = match tokio::time::timeout(idle, body.next()).await {
            Err(_) => {
                info!(producer = %p, file = %name, addr = %addr, bytes = total, "HTTP upload idle too long: dropped");
                return answer(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!("nothing came for {} s: the upload was dropped, nothing was kept", idle.as_secs()),
                );
            }
            Ok(None) => None,
            Ok(Some(Err(e))) => {
                info!(producer = %p, file = %name, addr = %addr, bytes = total, error = %e, "HTTP upload cut short: dropped");
                return answer(StatusCode::BAD_REQUEST, "the upload was cut short: nothing was kept");
            }
            Ok(Some(Ok(b))) => Some(b),
        };
        let end = chunk.is_none();
        if let Some(b) = chunk {
            total += b.len() as u64;
            if total > max {
                return too_large(total, max, sidecar);
            }
            batched += b.len();
            batch.push(b);
        }
        if batched >= WRITE_BATCH || (end && !batch.is_empty()) {
            // Waiting here for room is the back-pressure that keeps a fast
            // client from outrunning the disk.
            if tx.send(std::mem::take(&mut batch)).await.is_err() {
                return store_failed(writer_failed(writing).await, &p);
            }
            batched = 0;
        }
        if end {
            break;
        }
    }
    drop(tx);
    let sink = match (&mut writing).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return store_failed(e, &p),
        Err(e) => return answer(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    if length.is_some_and(|n| n != total) {
        return answer(StatusCode::BAD_REQUEST, "the upload was cut short: nothing was kept");
    }
    let Sink { file, md5 } = sink;
    let got = match md5.finalize() {
        Ok(g) => g,
        Err(e) => return store_failed(e, &p),
    };
    if let Some(want) = want_md5
        && want.as_slice() != got.as_slice()
    {
        return answer(
            StatusCode::BAD_REQUEST,
            &format!(
                "MD5_MISMATCH: the archive received has MD5 {}, the Content-MD5 header says {}: it was damaged on the way; nothing was kept, upload it again",
                hex(&got),
                hex(&want)
            ),
        );
    }
    let md5_hex = hex(&got);
    let shared = door.shared.clone();
    let (pp, nn, h) = (p.clone(), name.clone(), hidden.clone());
    let drop_root = cfg.drop_root.clone();
    let claimed = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Entry>> {
        file.sync_all()?;
        drop(file);
        if sidecar {
            jobs::rotate::rename_noreplace(&h, &h.with_file_name(&nn))?;
            return Ok(None);
        }
        // The watcher's own claim, under the name the producer gave.
        let e = shared.spool.claim_as(&pp, &h, std::ffi::OsStr::new(&nn))?;
        if let Err(err) = shared.spool.sync(std::slice::from_ref(&e), &drop_root) {
            warn!(error = %err, "cannot sync the spool");
        }
        Ok(Some(e))
    })
    .await;
    let e = match claimed {
        Ok(Ok(Some(e))) => e,
        Ok(Ok(None)) => {
            partial.0 = None;
            info!(producer = %p, file = %name, user = %user, addr = %addr, "sidecar received over HTTP");
            return json(StatusCode::CREATED, &serde_json::json!({ "sidecar": name, "md5": md5_hex }));
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return answer(StatusCode::CONFLICT, &format!("{name} is already waiting to be ingested"));
        }
        Ok(Err(e)) if no_space(&e) => return refused_space(&e.to_string()),
        Ok(Err(e)) => {
            warn!(producer = %p, file = %name, error = %e, "cannot claim an HTTP upload");
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the archive could not take the deposit in; try again later",
            );
        }
        Err(e) => return answer(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    partial.0 = None;
    door.claimed(&e).await;
    info!(deposit = %e.id, producer = %p, file = %name, user = %user, addr = %addr, size = total, state = status::CREATED, "claimed (HTTP upload)");
    let location = format!("/data/{p}/deposits/{}", e.id);
    let mut r = json(
        StatusCode::CREATED,
        &serde_json::json!({
            "id": e.id, "state": status::CREATED, "producer": p, "file": name, "size": total, "md5": md5_hex,
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
    }
    .await;
    if let Some(p) = partial.0.take() {
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(p)).await;
    }
    r
}

fn too_large(n: u64, max: u64, sidecar: bool) -> Response {
    let what = if sidecar { "a sidecar" } else { "an archive (limits.max_archive_bytes)" };
    answer(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!(
            "LIMIT_EXCEEDED: the upload is {n} bytes or more; this archive accepts at most {max} bytes for {what}; nothing was kept"
        ),
    )
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Door {
    /// A claim of the door's, told to whoever schedules: this process's
    /// scheduler, or (`--role http`) the one elsewhere, through Redis.
    async fn claimed(&self, e: &Entry) {
        let sh = &self.shared;
        sh.metrics.claimed(&e.producer);
        sh.metrics.http_upload(&e.producer);
        let wait = Duration::from_secs(5);
        match tokio::time::timeout(wait, sh.status.created(std::slice::from_ref(e))).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!(deposit = %e.id, error = %err, "cannot record CREATED; the scheduler records it"),
            Err(_) => warn!(deposit = %e.id, "Redis did not answer; the scheduler records CREATED"),
        }
        match self.serves {
            Serves::Everything => {
                sh.index_add(e);
                sh.wake.notify_one();
            }
            Serves::DoorOnly => {
                let mut conn = sh.status.conn.clone();
                let mut cmd = redis::cmd("LPUSH");
                cmd.arg(sh.status.door_claims_key()).arg(&e.id);
                if !matches!(tokio::time::timeout(wait, cmd.query_async::<i64>(&mut conn)).await, Ok(Ok(_))) {
                    // In the spool all the same: the scheduler's next start
                    // (or Redis resync) finds it.
                    warn!(deposit = %e.id, "cannot tell the scheduler through Redis; it finds the deposit at its next resync");
                }
            }
        }
    }
}
