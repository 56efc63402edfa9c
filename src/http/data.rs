//! The data service (SPEC "HTTP door", `/data/pub/<P>/…`): what was
//! published, as CADC's data service serves it. A file of a release, with
//! the size and MD5 its manifest.json recorded at publish time (never
//! recomputed here: the manifest is the archive's word on the bytes, and a
//! client that checks Content-MD5 checks the whole chain), byte ranges and
//! conditional requests; with the S3 target a `307` to a presigned GET.
//!
//! Only paths the release's manifest.json lists are served: the URL picks
//! an entry of the manifest, never a path on disk. Every component, from
//! the producer's folder down to the file, is opened with `openat` and
//! `O_NOFOLLOW`, so a link planted anywhere in the publish tree leads
//! nowhere. The open file is kept for the whole response: a release
//! switched or pruned meanwhile (a rename, then an unlink) leaves the
//! download on the bytes it started with.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use jobs::publish::{ManifestFile, ReleaseManifest};
use md5::Digest as _;
use rustix::fs::{Mode, OFlags};
use serde::Deserialize;
use tracing::{error, warn};

use super::{Door, Peer, answer};
use crate::state::lock;

/// One read of a large file. 128 KiB: large enough that the blocking-pool
/// hop per chunk costs little next to the copy, small enough that 64
/// downloads at once (a chunk being read, one queued, one being written
/// by hyper each) stay far under 64 MiB: with 256 KiB a smoke run of
/// bench/http-pub.sh peaked at 55 MiB (VmHWM) for 64 downloads.
const CHUNK: usize = 128 * 1024;
/// A file (or range) up to this size is read in the same blocking call
/// that opens it, and answered from memory: one hop per small file.
const INLINE: u64 = 64 * 1024;
/// A manifest larger than this is not read (a release of a million files
/// has a manifest of about 150 MB; depot's own limits keep them far under).
const MAX_MANIFEST: u64 = 512 << 20;
/// Manifests kept parsed (releases are immutable: an entry never goes stale).
const CACHED: usize = 16;

/// A release's manifest, indexed by path.
pub struct Index {
    files: HashMap<String, ManifestFile>,
    /// About the memory it holds (its paths, twice, and each entry's
    /// overhead): what [`CACHED_BYTES`] counts.
    weight: usize,
}

/// Memory the cached manifests may hold together: a release of
/// `limits.max_entries` (100,000) files with long names has a manifest of
/// 100 MB, and sixteen of them cached would be gigabytes. The newest one is
/// kept whatever its size (a long download of it must not parse it again
/// for every file); the others go when it would not fit.
const CACHED_BYTES: usize = 256 << 20;

/// Parsed manifests by release (its folder's device, inode and release
/// id, or its S3 key): 2,000 small files fetched one after the other must
/// not parse the manifest 2,000 times.
#[derive(Default)]
pub struct Manifests {
    map: Mutex<HashMap<String, Arc<Index>>>,
    /// Held while a manifest is read and parsed, so that one is parsed at a
    /// time: the first requests of a large release, many at once, each
    /// parsed it and held it whole (24 at once held 38 times a 4 MB
    /// manifest's size); now they wait for the first and find it cached.
    loading: Mutex<()>,
    /// Each producer's S3 target (None: the filesystem), for the config
    /// they were worked out from: typing a producer's settings (its tables
    /// merged, its naming schemes compiled) on every request of a
    /// thousand-file download would cost more than serving the file.
    targets: Mutex<Targets>,
    /// Authorization headers that proved a user lately, with the user and
    /// when: a client fetching a release's 2,000 files over one connection
    /// sends the same header 2,000 times, and each check is a bcrypt (tens
    /// of ms at `htpasswd -B`'s costs, two at a time). As Apache's
    /// mod_authn_socache does; only successes are kept, for [`LOGIN_TTL`].
    logins: Mutex<HashMap<String, (String, Instant)>>,
}

/// How long a proven Authorization header is trusted without a new hash
/// check: a password changed or removed in `http.users_file` takes effect
/// for downloads within this.
const LOGIN_TTL: Duration = Duration::from_secs(60);
/// Headers kept at most (then the map starts over).
const LOGINS: usize = 1024;

/// The config the targets were worked out from, and each producer's.
type Targets = (Option<Arc<crate::config::Config>>, HashMap<String, Option<jobs::S3Settings>>);

impl Manifests {
    /// `publish.target = "s3"`'s bucket settings for producer `p`, if so.
    fn s3_target(&self, cfg: &Arc<crate::config::Config>, p: &str) -> Option<jobs::S3Settings> {
        let mut t = lock(&self.targets);
        if !t.0.as_ref().is_some_and(|c| Arc::ptr_eq(c, cfg)) {
            *t = (Some(cfg.clone()), HashMap::new());
        }
        t.1.entry(p.to_owned())
            .or_insert_with(|| {
                let s = cfg.settings_for(p).publish;
                (s.target == jobs::PublishTarget::S3).then_some(s.s3)
            })
            .clone()
    }

    fn get_or(
        &self,
        key: &str,
        load: impl FnOnce() -> Result<ReleaseManifest, Refusal>,
    ) -> Result<Arc<Index>, Refusal> {
        if let Some(i) = lock(&self.map).get(key) {
            return Ok(i.clone());
        }
        let _one_at_a_time = lock(&self.loading);
        if let Some(i) = lock(&self.map).get(key) {
            return Ok(i.clone());
        }
        let m = load()?;
        let weight = m.files.iter().map(|f| 2 * f.path.len() + 160).sum();
        let index = Arc::new(Index { files: m.files.into_iter().map(|f| (f.path.clone(), f)).collect(), weight });
        let mut map = lock(&self.map);
        if map.len() >= CACHED || map.values().map(|i| i.weight).sum::<usize>() + weight > CACHED_BYTES {
            map.clear();
        }
        map.insert(key.to_owned(), index.clone());
        Ok(index)
    }
}

/// A refusal: the status and a line in words.
struct Refusal(StatusCode, String);

impl Refusal {
    fn not_found(why: String) -> Refusal {
        Refusal(StatusCode::NOT_FOUND, why)
    }
    fn broken(what: String, e: impl std::fmt::Display) -> Refusal {
        error!(what, error = %e, "data service: a published release cannot be read");
        Refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what}: the archive cannot read it; its operators are told"),
        )
    }
    fn into_response(self) -> Response {
        answer(self.0, &self.1)
    }
}

#[derive(Deserialize, Default)]
pub struct Params {
    release: Option<String>,
}

/// Who may read P's releases: anyone when `[producers.P] public = true`,
/// else P's users and operators (401 without credentials, 403 for another
/// producer's user). Every name that is not public answers an anonymous
/// request alike, so a 401 tells nothing about whether P exists.
async fn may_read(door: &Door, headers: &HeaderMap, peer: Peer, p: &str) -> Result<(), Response> {
    let cfg = door.shared.config();
    if cfg.is_producer(p) && cfg.producers.public.contains(p) {
        return Ok(());
    }
    let raw = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(raw) = &raw {
        let recent =
            lock(&door.data.logins).get(raw).filter(|(_, at)| at.elapsed() < LOGIN_TTL).map(|(u, _)| u.clone());
        if recent.is_some_and(|user| cfg.acts_for(&user, p)) {
            return Ok(());
        }
    }
    let user = door.acting_for(headers, peer, p).await?;
    if let Some(raw) = raw {
        let mut logins = lock(&door.data.logins);
        if logins.len() >= LOGINS {
            logins.clear();
        }
        logins.insert(raw, (user, Instant::now()));
    }
    Ok(())
}

fn dir_at(dir: impl AsFd, name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// A regular file in `dir`, never through a link (and never blocking on
/// a FIFO), with its metadata.
fn file_at(dir: impl AsFd, name: &str) -> io::Result<(File, std::fs::Metadata)> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let f = File::from(fd);
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok((f, m))
}

/// A path a release may hold: relative, `/`-separated, no empty, `.` or
/// `..` component, no NUL or backslash. Anything else is refused before
/// the manifest is even looked at (`%2e%2e%2f` arrives here decoded).
fn plain_path(path: &str) -> bool {
    !path.is_empty() && !path.contains(['\0', '\\']) && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The release a request names: `current`'s, or `?release=<id>`.
fn release_id(cur_link: Option<String>, asked: Option<&str>, p: &str) -> Result<String, Refusal> {
    if let Some(id) = asked {
        if !jobs::deposit::is_id(id) || jobs::deposit::producer_of(id) != Some(p) {
            return Err(Refusal::not_found(format!("{id:?} is not a release id of producer {p}")));
        }
        return Ok(id.to_owned());
    }
    cur_link.ok_or_else(|| Refusal::not_found(format!("producer {p} has no published release")))
}

/// An open release folder on disk and its manifest.
struct Release {
    dir: OwnedFd,
    id: String,
    index: Arc<Index>,
}

fn open_release(cache: &Manifests, root: &Path, p: &str, asked: Option<&str>) -> Result<Release, Refusal> {
    let none = || Refusal::not_found(format!("producer {p} has no published release"));
    let root_fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Refusal::broken(format!("publish_root {}", root.display()), e))?;
    let pdir = dir_at(&root_fd, p).map_err(|_| none())?;
    let current = match rustix::fs::readlinkat(&pdir, "current", Vec::new()) {
        Ok(t) => {
            let t = t.to_string_lossy().into_owned();
            let id = t.strip_prefix("releases/").filter(|id| jobs::deposit::is_id(id)).map(str::to_owned);
            if id.is_none() {
                warn!(producer = p, target = %t, "data service: current points at something that is not releases/<id>");
            }
            id
        }
        Err(_) => None,
    };
    let id = release_id(current, asked, p)?;
    let gone = || Refusal::not_found(format!("no release {id} of producer {p} (not kept, or never published)"));
    let releases = dir_at(&pdir, "releases").map_err(|_| gone())?;
    let dir = dir_at(&releases, &id).map_err(|_| gone())?;
    let st = rustix::fs::fstat(&dir).map_err(|e| Refusal::broken(format!("release {id}"), e))?;
    // The producer and release id too: a pruned release's inode is handed
    // out again (ext4 does it at once), and the folder then on it is
    // another release with another manifest.
    let key = format!("fs:{}:{}:{p}/{id}", st.st_dev, st.st_ino);
    let index = cache.get_or(&key, || {
        let (mut f, m) = file_at(&dir, jobs::conflicts::RELEASE_MANIFEST).map_err(|_| gone())?;
        if m.len() > MAX_MANIFEST {
            return Err(Refusal::broken(format!("release {id}: manifest.json of {} bytes", m.len()), "too large"));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(m.len()).unwrap_or(0));
        f.read_to_end(&mut bytes).map_err(|e| Refusal::broken(format!("release {id}: manifest.json"), e))?;
        serde_json::from_slice(&bytes).map_err(|e| Refusal::broken(format!("release {id}: manifest.json"), e))
    })?;
    Ok(Release { dir, id, index })
}

/// The file `path` of the release, by its manifest entry, every folder on
/// the way opened without following a link.
fn open_listed(rel: &Release, p: &str, path: &str) -> Result<(File, std::fs::Metadata, ManifestFile), Refusal> {
    let missing = || Refusal::not_found(format!("release {} of producer {p} has no file {path}", rel.id));
    let entry = rel.index.files.get(path).filter(|_| plain_path(path)).ok_or_else(missing)?.clone();
    let mut parts: Vec<&str> = entry.path.split('/').collect();
    let name = parts.pop().ok_or_else(missing)?;
    let mut dir: Option<OwnedFd> = None;
    for c in parts {
        let next = match &dir {
            None => dir_at(&rel.dir, c),
            Some(d) => dir_at(d, c),
        };
        dir = Some(next.map_err(|e| Refusal::broken(format!("release {} of {p}: {path}", rel.id), e))?);
    }
    let opened = match &dir {
        None => file_at(&rel.dir, name),
        Some(d) => file_at(d, name),
    };
    let (f, m) = opened.map_err(|e| Refusal::broken(format!("release {} of {p}: {path}", rel.id), e))?;
    if m.len() != entry.size {
        return Err(Refusal::broken(
            format!("release {} of {p}: {path} has {} bytes, its manifest says {}", rel.id, m.len(), entry.size),
            "changed after publishing",
        ));
    }
    Ok((f, m, entry))
}

/// What a request gets, decided from its headers alone (no I/O): tested
/// below without a server.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    NotModified,
    /// 416, `Content-Range: bytes */LEN`.
    Unsatisfiable,
    /// 200 (whole) or 206 (`Some(range)`): first byte and length.
    Send(Option<(u64, u64)>),
}

/// The validators of a representation.
struct Validators<'a> {
    etag: &'a str,
    /// Whole seconds (HTTP dates have no finer grain).
    modified: u64,
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn http_secs(s: &str) -> Option<u64> {
    httpdate::parse_http_date(s).ok()?.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// RFC 9110 §13.2.2's order: If-None-Match (weak comparison; it makes
/// If-Modified-Since ignored), If-Modified-Since, then Range, which
/// If-Range may cancel (strong comparison of the ETag, or the exact
/// Last-Modified date).
fn decide(h: &HeaderMap, v: &Validators<'_>, len: u64) -> Decision {
    if let Some(inm) = header_str(h, header::IF_NONE_MATCH) {
        let hit = inm.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == v.etag);
        if hit {
            return Decision::NotModified;
        }
    } else if let Some(since) = header_str(h, header::IF_MODIFIED_SINCE).and_then(http_secs)
        && v.modified <= since
    {
        return Decision::NotModified;
    }
    let Some(range) = header_str(h, header::RANGE) else { return Decision::Send(None) };
    if let Some(ir) = h.get(header::IF_RANGE) {
        let ir = ir.to_str().unwrap_or_default().trim();
        let fresh = if ir.starts_with('"') { ir == v.etag } else { http_secs(ir) == Some(v.modified) };
        if !fresh {
            return Decision::Send(None);
        }
    }
    match parse_range(range, len) {
        Range::Ignored => Decision::Send(None),
        Range::Unsatisfiable => Decision::Unsatisfiable,
        Range::One(start, n) => Decision::Send(Some((start, n))),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// No range: the whole file (a syntax error, another unit, or several
    /// ranges, which RFC 9110 §14.2 lets a server answer with the whole
    /// representation; multipart/byteranges is not worth its complexity
    /// for files a client can fetch range by range).
    Ignored,
    Unsatisfiable,
    /// First byte and length.
    One(u64, u64),
}

/// A `Range` header of one byte range: `bytes=200-500`, `bytes=100-`,
/// `bytes=-2000`. Written here rather than taken from a crate: the rules
/// fit in a screen, and which answer each form gets (ignored, 416) is the
/// service's contract, tested below.
fn parse_range(h: &str, len: u64) -> Range {
    let Some((unit, set)) = h.trim().split_once('=') else { return Range::Ignored };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return Range::Ignored;
    }
    let Some((a, b)) = set.trim().split_once('-') else { return Range::Ignored };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    match (a.trim().is_empty(), num(a), num(b)) {
        // bytes=-N: the last N bytes.
        (true, None, Some(n)) => {
            if n == 0 || len == 0 {
                Range::Unsatisfiable
            } else {
                let n = n.min(len);
                Range::One(len - n, n)
            }
        }
        // bytes=A- and bytes=A-B.
        (false, Some(first), last) if last.is_some() || b.trim().is_empty() => {
            if last.is_some_and(|l| l < first) {
                return Range::Ignored;
            }
            if first >= len {
                return Range::Unsatisfiable;
            }
            let last = last.unwrap_or(u64::MAX).min(len - 1);
            Range::One(first, last - first + 1)
        }
        _ => Range::Ignored,
    }
}

/// `attachment; filename="…"`, with RFC 6266's `filename*=UTF-8''…` when
/// the name is not plain ASCII (the plain one then has `_` for what it
/// cannot hold): `wget --content-disposition` and browsers name the file.
/// A `%` is not plain either: some browsers percent-decode `filename`
/// (RFC 6266 appendix D), so a file named `100%41.csv` or `%2e%2e%2fx`
/// would be saved under another name; `filename*` says it exactly.
fn disposition(name: &str) -> String {
    let plain: String = name
        .chars()
        .map(|c| if c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '%') || c == ' ' { c } else { '_' })
        .collect();
    if plain == name {
        return format!("attachment; filename=\"{name}\"");
    }
    // RFC 8187 attr-char: ALPHA DIGIT ! # $ & + - . ^ _ ` | ~ stay.
    const ATTR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    let enc = percent_encoding::utf8_percent_encode(name, ATTR);
    format!("attachment; filename=\"{plain}\"; filename*=UTF-8''{enc}")
}

fn content_md5(md5_hex: &str) -> Option<String> {
    let bytes: Vec<u8> = (0..16).filter_map(|i| u8::from_str_radix(md5_hex.get(2 * i..2 * i + 2)?, 16).ok()).collect();
    (bytes.len() == 16).then(|| base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn set(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// What the blocking step found: the answer's head, and the bytes to
/// send (read already when small).
enum Found {
    Head(Response),
    Stream { head: Response, file: File, start: u64, len: u64 },
}

/// The answer to a GET/HEAD of one manifest-listed file.
fn respond(req: &HeaderMap, head_only: bool, file: File, m: &std::fs::Metadata, entry: &ManifestFile) -> Found {
    let etag = format!("\"{}\"", entry.md5);
    let modified = u64::try_from(m.mtime()).unwrap_or(0);
    let last_modified = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(modified));
    let len = entry.size;
    let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
    let decision = decide(req, &Validators { etag: &etag, modified }, len);
    let mut h = HeaderMap::new();
    set(&mut h, header::ETAG, &etag);
    set(&mut h, header::LAST_MODIFIED, &last_modified);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // A published file is the producer's bytes: an .html or .svg among them
    // must never run as a page of depot's origin, where the web page and
    // the operators' credentials are, even if a browser shows it in place.
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    let with = |status: StatusCode, h: HeaderMap, body: Body| {
        let mut r = Response::new(body);
        *r.status_mut() = status;
        *r.headers_mut() = h;
        r
    };
    let (status, start, n) = match decision {
        Decision::NotModified => return Found::Head(with(StatusCode::NOT_MODIFIED, h, Body::empty())),
        Decision::Unsatisfiable => {
            set(&mut h, header::CONTENT_RANGE, &format!("bytes */{len}"));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            return Found::Head(with(StatusCode::RANGE_NOT_SATISFIABLE, h, Body::empty()));
        }
        Decision::Send(None) => {
            // The whole file's MD5; a 206's body is a part, which this
            // MD5 does not describe (RFC 1864): there only the ETag is.
            if let Some(b64) = content_md5(&entry.md5) {
                set(&mut h, header::HeaderName::from_static("content-md5"), &b64);
            }
            (StatusCode::OK, 0, len)
        }
        Decision::Send(Some((start, n))) => {
            set(&mut h, header::CONTENT_RANGE, &format!("bytes {start}-{}/{len}", start + n - 1));
            (StatusCode::PARTIAL_CONTENT, start, n)
        }
    };
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    set(&mut h, header::CONTENT_TYPE, mime.essence_str());
    set(&mut h, header::CONTENT_DISPOSITION, &disposition(name));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    if head_only || n == 0 {
        return Found::Head(with(status, h, Body::empty()));
    }
    if n <= INLINE {
        let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0)];
        return match file.read_exact_at(&mut buf, start) {
            Ok(()) => Found::Head(with(status, h, Body::from(buf))),
            Err(e) => Found::Head(Refusal::broken(format!("{}: read", entry.path), e).into_response()),
        };
    }
    Found::Stream { head: with(status, h, Body::empty()), file, start, len: n }
}

/// The bytes `start..start+len` of `file`, read on the blocking pool a
/// chunk at a time, at most one chunk queued ahead of the connection: the
/// memory a download holds does not grow with the file, and a slow
/// client holds no thread (the reader waits on the queue, not in a read).
/// A client that takes nothing for `idle` (`http.idle_timeout_s`) is cut
/// off: the body ends short of its Content-Length, which makes hyper close
/// the connection (the client sees a short transfer, never a clean end).
fn stream(file: File, start: u64, len: u64, idle: Duration) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(1);
    tokio::spawn(async move {
        let file = Arc::new(file);
        let (mut off, end) = (start, start + len);
        while off < end {
            let n = usize::try_from((end - off).min(CHUNK as u64)).unwrap_or(CHUNK);
            let f = file.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                f.read_exact_at(&mut buf, off).map(|()| Bytes::from(buf))
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
            let failed = read.is_err();
            if let Err(e) = &read {
                warn!(error = %e, "data service: a download stopped: the file cannot be read");
            }
            // Sent even when failed: the body's error cuts the connection,
            // so the client sees a short transfer, never a clean end.
            match tokio::time::timeout(idle, tx.send(read)).await {
                Ok(Ok(())) if !failed => {}
                Ok(_) => return,
                Err(_) => {
                    tracing::debug!(
                        idle_s = idle.as_secs(),
                        "data service: a client took nothing for too long: cut off"
                    );
                    return;
                }
            }
            off += n as u64;
        }
    });
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) }))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(|e| answer(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))
}

/// `/data/pub/<P>`: the manifest is at `/data/pub/<P>/`.
pub async fn redirect(UrlPath(p): UrlPath<String>) -> Response {
    Redirect::permanent(&format!("/data/pub/{p}/")).into_response()
}

/// `GET`/`HEAD /data/pub/<P>/`: the release's manifest.json, served as the
/// file it is.
pub async fn manifest(
    door: State<Arc<Door>>,
    UrlPath(p): UrlPath<String>,
    params: Query<Params>,
    method: Method,
    headers: HeaderMap,
    peer: Extension<Peer>,
) -> Response {
    serve(door, p, None, params, method, headers, peer).await
}

/// `GET`/`HEAD /data/pub/<P>/<path>`: one file of the release.
pub async fn file(
    door: State<Arc<Door>>,
    UrlPath((p, path)): UrlPath<(String, String)>,
    params: Query<Params>,
    method: Method,
    headers: HeaderMap,
    peer: Extension<Peer>,
) -> Response {
    serve(door, p, Some(path), params, method, headers, peer).await
}

async fn serve(
    State(door): State<Arc<Door>>,
    p: String,
    path: Option<String>,
    Query(params): Query<Params>,
    method: Method,
    headers: HeaderMap,
    Extension(peer): Extension<Peer>,
) -> Response {
    if let Err(r) = may_read(&door, &headers, peer, &p).await {
        return r;
    }
    if let Some(path) = &path
        && !plain_path(path)
    {
        return answer(StatusCode::BAD_REQUEST, &format!("{path:?} is not a path of a release"));
    }
    let cfg = door.shared.config();
    let head_only = method == Method::HEAD;
    if let Some(s3) = door.data.s3_target(&cfg, &p) {
        let expires = Duration::from_secs(cfg.http.presign_s);
        let d = door.clone();
        return match blocking(move || presigned(&d.data, &s3, &p, path.as_deref(), params.release.as_deref(), expires))
            .await
        {
            Ok(Ok(url)) => {
                let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
                set(r.headers_mut(), header::LOCATION, &url);
                r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            Ok(Err(refusal)) => refusal.into_response(),
            Err(r) => r,
        };
    }
    let root = cfg.publish_root.clone();
    let idle = Duration::from_secs(cfg.http.idle_timeout_s);
    let d = door.clone();
    let found = blocking(move || -> Result<Found, Refusal> {
        let rel = open_release(&d.data, &root, &p, params.release.as_deref())?;
        match path {
            Some(path) => {
                let (f, m, entry) = open_listed(&rel, &p, &path)?;
                Ok(respond(&headers, head_only, f, &m, &entry))
            }
            None => {
                let what = || format!("release {} of {p}: manifest.json", rel.id);
                let (f, m) =
                    file_at(&rel.dir, jobs::conflicts::RELEASE_MANIFEST).map_err(|e| Refusal::broken(what(), e))?;
                // No manifest lists the manifest's own MD5: its ETag is an
                // MD5 of its release and size (it never changes), never
                // sent as Content-MD5.
                let tag = md5::Md5::digest(format!("{}:{}", rel.id, m.len()));
                let entry = ManifestFile {
                    path: jobs::conflicts::RELEASE_MANIFEST.to_owned(),
                    size: m.len(),
                    md5: super::upload::hex(&tag),
                    sha256: None,
                };
                let mut found = respond(&headers, head_only, f, &m, &entry);
                // Not a checksum of the bytes: no Content-MD5, shown inline.
                let h = match &mut found {
                    Found::Head(r) | Found::Stream { head: r, .. } => r.headers_mut(),
                };
                h.remove("content-md5");
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                h.remove(header::CONTENT_DISPOSITION);
                Ok(found)
            }
        }
    })
    .await;
    match found {
        Ok(Ok(Found::Head(r))) => r,
        Ok(Ok(Found::Stream { mut head, file, start, len })) => {
            *head.body_mut() = stream(file, start, len, idle);
            head
        }
        Ok(Err(refusal)) => refusal.into_response(),
        Err(r) => r,
    }
}

/// S3: the presigned GET of the file (or the manifest), found through
/// `current` (or `?release`) and the release's manifest.json in the bucket.
fn presigned(
    cache: &Manifests,
    s3: &jobs::S3Settings,
    p: &str,
    path: Option<&str>,
    asked: Option<&str>,
    expires: Duration,
) -> Result<String, Refusal> {
    let bucket =
        jobs::s3::Bucket::open(s3).map_err(|e| Refusal::broken(format!("bucket {}", s3.bucket), e.message()))?;
    let current = match asked {
        Some(_) => None,
        None => bucket
            .current(p)
            .map_err(|e| Refusal::broken(format!("s3 current of {p}"), e.message()))?
            .map(|(c, _)| c.release),
    };
    let id = release_id(current, asked, p)?;
    let base = bucket.release_key(p, &id);
    let key = format!("{}{base}", bucket.url(""));
    let index = cache.get_or(&key, || {
        bucket
            .manifest(p, &id)
            .map_err(|e| {
                Refusal::broken(format!("{}{}", bucket.url(&base), jobs::conflicts::RELEASE_MANIFEST), e.message())
            })?
            .ok_or_else(|| {
                Refusal::not_found(format!("no release {id} of producer {p} (not kept, or never published)"))
            })
    })?;
    let object = match path {
        None => jobs::conflicts::RELEASE_MANIFEST.to_owned(),
        Some(path) => index
            .files
            .get(path)
            .ok_or_else(|| Refusal::not_found(format!("release {id} of producer {p} has no file {path}")))?
            .path
            .clone(),
    };
    bucket
        .client()
        .presign_get(&format!("{base}{object}"), expires)
        .map_err(|e| Refusal::broken(format!("presign {}", bucket.url(&base)), e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges() {
        use Range::*;
        assert_eq!(parse_range("bytes=200-500", 1000), One(200, 301));
        assert_eq!(parse_range("bytes=-2000", 1000), One(0, 1000));
        assert_eq!(parse_range("bytes=-10", 1000), One(990, 10));
        assert_eq!(parse_range("bytes=100-", 1000), One(100, 900));
        assert_eq!(parse_range("bytes=900-5000", 1000), One(900, 100));
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=5000-6000", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        // Not one byte range: the whole file.
        for h in ["bytes=0-1,5-6", "items=0-1", "bytes=5-1", "bytes=a-b", "bytes=-", "bytes=1-2-3", "bytes=--5"] {
            assert_eq!(parse_range(h, 1000), Ignored, "{h}");
        }
    }

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn conditionals_in_rfc_order() {
        let v = Validators { etag: "\"abc\"", modified: 1_000_000 };
        let date = |s: u64| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(decide(&hm(&[("if-none-match", "\"abc\"")]), &v, 10), Decision::NotModified);
        assert_eq!(decide(&hm(&[("if-none-match", "\"x\", W/\"abc\"")]), &v, 10), Decision::NotModified);
        assert_eq!(decide(&hm(&[("if-none-match", "\"x\"")]), &v, 10), Decision::Send(None));
        // If-None-Match present: If-Modified-Since is not looked at.
        let both = hm(&[("if-none-match", "\"x\""), ("if-modified-since", &date(2_000_000))]);
        assert_eq!(decide(&both, &v, 10), Decision::Send(None));
        assert_eq!(decide(&hm(&[("if-modified-since", &date(1_000_000))]), &v, 10), Decision::NotModified);
        assert_eq!(decide(&hm(&[("if-modified-since", &date(999_999))]), &v, 10), Decision::Send(None));
        assert_eq!(decide(&hm(&[("range", "bytes=2-3")]), &v, 10), Decision::Send(Some((2, 2))));
        assert_eq!(decide(&hm(&[("range", "bytes=20-")]), &v, 10), Decision::Unsatisfiable);
        let ir = |val: &str| decide(&hm(&[("range", "bytes=2-3"), ("if-range", val)]), &v, 10);
        assert_eq!(ir("\"abc\""), Decision::Send(Some((2, 2))));
        assert_eq!(ir("\"old\""), Decision::Send(None));
        assert_eq!(ir("W/\"abc\""), Decision::Send(None));
        assert_eq!(ir(&date(1_000_000)), Decision::Send(Some((2, 2))));
        assert_eq!(ir(&date(999_000)), Decision::Send(None));
    }

    #[test]
    fn paths_and_names() {
        assert!(plain_path("MSEC_DAT_1/a.txt") && plain_path("a"));
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "a/./b", "a/", "a\\b", "a\0b"] {
            assert!(!plain_path(bad), "{bad:?}");
        }
        assert_eq!(disposition("a b.txt"), "attachment; filename=\"a b.txt\"");
        assert_eq!(
            disposition("données \"1\".nc"),
            "attachment; filename=\"donn_es _1_.nc\"; filename*=UTF-8''donn%C3%A9es%20%221%22.nc"
        );
        // Quotes, CR/LF, `%`: never raw in the header, the exact name in filename*.
        assert_eq!(
            disposition("a\"\r\nSet-Cookie: x=1;%2e%2e%2f.txt"),
            "attachment; filename=\"a___Set-Cookie: x=1;_2e_2e_2f.txt\"; filename*=UTF-8''a%22%0D%0ASet-Cookie%3A%20x%3D1%3B%252e%252e%252f.txt"
        );
        assert_eq!(content_md5("d41d8cd98f00b204e9800998ecf8427e").as_deref(), Some("1B2M2Y8AsgTpgAmY7PhCfg=="));
        assert_eq!(content_md5("nope"), None);
    }

    /// A release folder on the inode of one that is gone (ext4 hands a
    /// freed inode out again at once; a rename stands in for it here) is
    /// read with its own manifest, never the cached one of the old folder.
    #[test]
    fn a_reused_inode_never_brings_back_another_releases_manifest() {
        let root = tempfile::tempdir().unwrap();
        let rels = root.path().join("OPEN/releases");
        let manifest = |id: &str, md5: &str| {
            format!(
                "{{\"deposit\": \"{id}\", \"producer\": \"OPEN\", \"created\": \"2026-11-22T10:15:00Z\", \"file_count\": 1, \"total_bytes\": 3, \"files\": [{{\"path\": \"a.bin\", \"size\": 3, \"md5\": \"{md5}\"}}]}}"
            )
        };
        let (id1, id2) = ("20261122T101500Z-OPEN-1a2b3c4d", "20261122T101600Z-OPEN-5e6f7a8b");
        let (md1, md2) = ("acbd18db4cc2f85cedef654fccc4a4d8", "37b51d194a7513e45b56f6524f2d51f2");
        std::fs::create_dir_all(rels.join(id1)).unwrap();
        std::fs::write(rels.join(id1).join("manifest.json"), manifest(id1, md1)).unwrap();
        std::os::unix::fs::symlink(format!("releases/{id1}"), root.path().join("OPEN/current")).unwrap();
        let cache = Manifests::default();
        let rel = open_release(&cache, root.path(), "OPEN", None).map_err(|r| r.1).unwrap();
        assert_eq!(rel.index.files["a.bin"].md5, md1);
        // The old release goes, the new one gets its inode.
        std::fs::rename(rels.join(id1), rels.join(id2)).unwrap();
        std::fs::write(rels.join(id2).join("manifest.json"), manifest(id2, md2)).unwrap();
        std::fs::remove_file(root.path().join("OPEN/current")).unwrap();
        std::os::unix::fs::symlink(format!("releases/{id2}"), root.path().join("OPEN/current")).unwrap();
        let rel = open_release(&cache, root.path(), "OPEN", None).map_err(|r| r.1).unwrap();
        assert_eq!(rel.id, id2);
        assert_eq!(rel.index.files["a.bin"].md5, md2, "the manifest of the release that had the inode before");
    }

    /// A stand-in bucket answering `current` and one manifest; the paths
    /// it was asked for.
    fn fake_s3(id: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
                    head.push(b[0]);
                }
                let path = String::from_utf8_lossy(&head).split(' ').nth(1).unwrap_or_default().to_owned();
                s.lock().unwrap().push(path.clone());
                let body = if path == "/bk/pre/MSEC/current" {
                    format!("{{\"release\": \"{id}\"}}")
                } else if path == format!("/bk/pre/MSEC/releases/{id}/manifest.json") {
                    format!(
                        "{{\"deposit\": \"{id}\", \"producer\": \"MSEC\", \"created\": \"2026-11-22T10:15:00Z\", \"file_count\": 1, \"total_bytes\": 3, \"files\": [{{\"path\": \"d/é.txt\", \"size\": 3, \"md5\": \"acbd18db4cc2f85cedef654fccc4a4d8\"}}]}}"
                    )
                } else {
                    let r = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                    let _ = c.write_all(r.as_bytes());
                    continue;
                };
                let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = c.write_all(r.as_bytes());
            }
        });
        (url, seen)
    }

    #[test]
    fn s3_presigns_only_what_the_manifest_lists() {
        let id = "20261122T101500Z-MSEC-1a2b3c4d";
        let (endpoint, seen) = fake_s3(id);
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::write(&creds, "[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n").unwrap();
        let s3 = jobs::S3Settings {
            endpoint: endpoint.clone(),
            bucket: "bk".into(),
            prefix: "pre".into(),
            credentials_file: Some(creds),
            ..Default::default()
        };
        let cache = Manifests::default();
        let hour = Duration::from_secs(3600);
        let url = presigned(&cache, &s3, "MSEC", Some("d/é.txt"), None, hour).map_err(|r| r.1).unwrap();
        assert!(url.starts_with(&format!("{endpoint}/bk/pre/MSEC/releases/{id}/d/%C3%A9.txt?")), "{url}");
        assert!(url.contains("X-Amz-Expires=3600") && url.contains("X-Amz-Signature="), "{url}");
        let url = presigned(&cache, &s3, "MSEC", None, Some(id), hour).map_err(|r| r.1).unwrap();
        assert!(url.starts_with(&format!("{endpoint}/bk/pre/MSEC/releases/{id}/manifest.json?")), "{url}");
        // Not listed, not a release, not this producer's id: 404, nothing signed.
        for (path, rel) in [
            (Some("d/other.txt"), None),
            (Some("d/é.txt"), Some("20200101T000000Z-MSEC-00000000")),
            (Some("d/é.txt"), Some("20261122T101500Z-OTHR-1a2b3c4d")),
            (Some("d/é.txt"), Some("../x")),
        ] {
            let r = presigned(&cache, &s3, "MSEC", path, rel, hour).map(|_| ()).map_err(|r| r.0);
            assert_eq!(r, Err(StatusCode::NOT_FOUND), "{path:?} {rel:?}");
        }
        // The manifest was read once (then cached); `current` each time.
        let seen = seen.lock().unwrap().clone();
        let manifests = seen.iter().filter(|p| p.ends_with(&format!("{id}/manifest.json"))).count();
        assert_eq!(manifests, 1, "{seen:?}");
    }
}
