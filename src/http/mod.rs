//! The HTTP door (SPEC "HTTP door"): producers deposit with `curl -T` and
//! read back their deposits and `previous/`; the data service serves the
//! published releases (`/data/pub/`, see `data`); people look at the web
//! page (`/`, `/producers/P`: see `page`); anyone reaching it reads
//! `/metrics` and `/data/availability`.
//!
//! Connections are served one by one with hyper's HTTP/1 builder rather
//! than `axum::serve`, so that the door owns what protects it: a cap on
//! connections (one client address holds at most half of them, so an idle
//! flood from one address leaves room for everyone else), a deadline on
//! the TLS handshake and on every request head (an idle keep-alive
//! connection is closed after `http.idle_timeout_s`), the idle timeout
//! on every body read (see `upload`) and on every write (see `stall`).

mod auth;
mod data;
mod page;
mod read;
mod stall;
mod tls;
mod upload;
pub mod users;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::state::{Shared, lock};

/// Which parts of depot run in this process besides the door: the door
/// claims an upload into this process's scheduler when there is one, and
/// availability reports the watcher and workers it can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    /// The whole daemon (`--role all`).
    Everything,
    /// The door alone (`--role http`): a scheduler elsewhere adopts its claims.
    DoorOnly,
}

/// What every request handler shares.
pub struct Door {
    shared: Arc<Shared>,
    serves: Serves,
    users: auth::Users,
    /// Uploads being received, per producer (`http.max_uploads_per_producer`).
    uploads: Mutex<HashMap<String, usize>>,
    /// (producer, name) of uploads being received: a second one is 409.
    receiving: Mutex<std::collections::HashSet<(String, String)>>,
    /// Password checks running at once: each costs a bcrypt, a burst of
    /// wrong passwords must not take every core.
    verifying: tokio::sync::Semaphore,
    /// MD5s of files in `previous/` without a sidecar, by (device, inode,
    /// size, mtime): a listing must not read a large archive each time.
    md5s: Mutex<HashMap<(u64, u64, u64, i64), String>>,
    /// Release manifests parsed for the data service (`/data/pub/`).
    data: data::Manifests,
}

type Shared_ = Arc<Door>;

/// The client's address, as the connection (or the proxy, with
/// `http.behind_proxy`) tells it.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub IpAddr);

/// Start the door on `addr`: bind now (a taken port is a start-up error),
/// serve in the background. `metrics_only`: the `metrics.listen` alias,
/// which answers `/metrics` and `/data/availability` and nothing else.
pub async fn serve(
    addr: &str,
    shared: Arc<Shared>,
    serves: Serves,
    metrics_only: bool,
) -> Result<tokio::task::JoinHandle<()>> {
    let cfg = shared.config();
    let key = if metrics_only { "metrics.listen" } else { "http.listen" };
    let listener = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("{key} {addr:?}: {e}"))?;
    let tls = if metrics_only || !cfg.http.tls() {
        None
    } else {
        Some(Arc::new(tls::Reloadable::new(&cfg.http.tls_cert, &cfg.http.tls_key)?))
    };
    if !metrics_only {
        let root = cfg.drop_root.clone();
        let removed = tokio::task::spawn_blocking(move || upload::remove_leftovers(&root, &|p| cfg.is_producer(p)))
            .await
            .context("removing unfinished uploads")?;
        for p in removed {
            info!(path = %p.display(), "removed an upload a crash cut short");
        }
    }
    let cfg = shared.config();
    let door = Arc::new(Door {
        users: auth::Users::new(),
        shared: shared.clone(),
        serves,
        uploads: Mutex::default(),
        receiving: Mutex::default(),
        verifying: tokio::sync::Semaphore::new(2),
        md5s: Mutex::default(),
        data: data::Manifests::default(),
    });
    let router = if metrics_only { metrics_router(door) } else { router(door) };
    info!(listen = %addr, tls = tls.is_some(), what = if metrics_only { "metrics" } else { "HTTP door" }, "listening");
    if let Some(t) = &tls {
        t.clone().reload_on_sighup(shared.clone());
    }
    let behind_proxy = cfg.http.behind_proxy;
    Ok(tokio::spawn(accept_loop(listener, router, tls, shared, behind_proxy)))
}

fn metrics_router(door: Shared_) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/data/availability", get(read::availability))
        .fallback(not_found)
        .with_state(door)
}

fn router(door: Shared_) -> Router {
    Router::new()
        .route("/", get(page::overview))
        .route("/producers/{p}", get(page::producer))
        .route("/metrics", get(metrics))
        .route("/data/availability", get(read::availability))
        .route("/data/{p}/new/", put(upload::no_name))
        .route("/data/{p}/new/{name}", put(upload::put))
        .route("/data/{p}/previous", get(read::previous_redirect))
        .route("/data/{p}/previous/", get(read::previous))
        .route("/data/{p}/previous/{name}", get(read::previous_file))
        .route("/data/{p}/deposits", get(read::deposits))
        .route("/data/{p}/deposits/{id}", get(read::deposit))
        .route("/data/{p}/deposits/{id}/report.txt", get(read::report))
        .route("/data/pub/{p}", get(data::redirect))
        .route("/data/pub/{p}/", get(data::manifest))
        .route("/data/pub/{p}/{*path}", get(data::file))
        .fallback(not_found)
        .with_state(door)
}

async fn not_found() -> Response {
    answer(StatusCode::NOT_FOUND, "nothing here: see docs/http.md, \"Depositing over HTTPS\"")
}

async fn metrics(State(door): State<Shared_>) -> Response {
    let body = door.shared.metrics.render(&door.shared.gauges());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

/// What `depot config check` says of the door: the certificate loads, the
/// users file is there and holds lines depot can check.
pub fn check(cfg: &crate::config::Config) -> Vec<crate::selfcheck::Finding> {
    use crate::selfcheck::Finding;
    let h = &cfg.http;
    let mut out = Vec::new();
    if h.listen.is_empty() {
        return out;
    }
    let ok = |what: String| Finding { ok: true, warning: false, what };
    let fail = |what: String| Finding { ok: false, warning: false, what };
    let warn = |what: String| Finding { ok: true, warning: true, what };
    if h.tls() {
        match tls::Reloadable::new(&h.tls_cert, &h.tls_key) {
            Ok(_) => out.push(ok(format!("http.tls_cert {} and http.tls_key load", h.tls_cert))),
            Err(e) => out.push(fail(format!("{e:#}"))),
        }
    }
    if h.users_file.is_empty() {
        out.push(warn("http.users_file is not set: the HTTP door refuses every login".into()));
        return out;
    }
    match std::fs::read_to_string(&h.users_file) {
        Err(e) => out.push(fail(format!("http.users_file {}: {e}", h.users_file))),
        Ok(text) => {
            let users = auth::parse(&text);
            let mut odd: Vec<&str> =
                users.iter().filter(|(_, hash)| !auth::supported(hash)).map(|(u, _)| u.as_str()).collect();
            odd.sort_unstable();
            if !odd.is_empty() {
                out.push(warn(format!(
                    "http.users_file: {} use a scheme depot refuses (only bcrypt `htpasswd -B` and apr1 `htpasswd -m`): {}",
                    odd.len(),
                    odd.join(", ")
                )));
            }
            let named = cfg.producers.http_users.values().flatten().chain(h.operators.iter());
            let mut missing: Vec<&str> = named.filter(|u| !users.contains_key(*u)).map(String::as_str).collect();
            missing.sort_unstable();
            missing.dedup();
            if !missing.is_empty() {
                out.push(warn(format!(
                    "http.users_file has no line for {} (named in http_users or http.operators)",
                    missing.join(", ")
                )));
            }
            out.push(ok(format!("http.users_file {}: {} users", h.users_file, users.len())));
        }
    }
    out
}

/// A one-line reason in plain words, as text: what a scientist reading
/// curl's output sees.
pub fn answer(code: StatusCode, why: &str) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{why}\n")).into_response()
}

/// Connections open now: in all, and per client address.
#[derive(Default)]
struct Conns {
    total: AtomicUsize,
    per_addr: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection's place, given back when it closes.
struct Slot {
    conns: Arc<Conns>,
    addr: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.total.fetch_sub(1, Ordering::Relaxed);
        let mut m = lock(&self.conns.per_addr);
        if let Some(n) = m.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.addr);
            }
        }
    }
}

impl Conns {
    /// A place for a connection from `addr`, if the caps allow one.
    fn take(self: &Arc<Self>, addr: IpAddr, max: usize, per_addr: bool) -> Option<Slot> {
        let mut m = lock(&self.per_addr);
        if self.total.load(Ordering::Relaxed) >= max {
            return None;
        }
        let n = m.entry(addr).or_default();
        if per_addr && *n >= max / 2 {
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Slot { conns: self.clone(), addr })
    }
}

/// `http.max_connections`, but never more than half the descriptors this
/// process may open: connections past that would take the descriptors a
/// deposit's spool, staging and rotation need (an operator's 1,024 under
/// `ulimit -n 1024` would have left none).
fn max_connections(configured: usize) -> usize {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    nofile.map_or(configured, |n| configured.min(usize::try_from(n / 2).unwrap_or(usize::MAX)).max(2))
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<tls::Reloadable>>,
    shared: Arc<Shared>,
    behind_proxy: bool,
) {
    let conns = Arc::new(Conns::default());
    let mut refused_logged = false;
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: wait rather than spin.
                warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let cfg = shared.config();
        // Behind a proxy every connection comes from the proxy: only the
        // overall cap applies.
        let Some(slot) = conns.take(peer.ip(), max_connections(cfg.http.max_connections), !behind_proxy) else {
            if !refused_logged {
                warn!(addr = %peer.ip(), "HTTP connection refused: http.max_connections reached (in all, or half of it from this address)");
                refused_logged = true;
            }
            drop(sock);
            continue;
        };
        refused_logged = false;
        let idle = Duration::from_secs(cfg.http.idle_timeout_s);
        let (router, tls) = (router.clone(), tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = sock.set_nodelay(true);
            // A client that stops taking the answer is cut off too.
            let sock = stall::WriteDeadline::new(sock, idle);
            match tls {
                Some(t) => match tokio::time::timeout(idle, t.acceptor().accept(sock)).await {
                    Ok(Ok(s)) => connection(TokioIo::new(s), router, peer, idle, behind_proxy).await,
                    Ok(Err(e)) => tracing::debug!(addr = %peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(addr = %peer, "TLS handshake timed out"),
                },
                None => connection(TokioIo::new(sock), router, peer, idle, behind_proxy).await,
            }
        });
    }
}

async fn connection<I>(io: TokioIo<I>, router: Router, peer: SocketAddr, idle: Duration, behind_proxy: bool)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let ip = if behind_proxy { forwarded_for(req.headers()).unwrap_or(peer.ip()) } else { peer.ip() };
        req.extensions_mut().insert(Peer(ip));
        let mut r = router.clone();
        tower_service::Service::call(&mut r, req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // From the connection's start and between requests: an idle
        // keep-alive connection or a slow head is closed after this.
        .header_read_timeout(idle)
        .max_buf_size(64 * 1024)
        .serve_connection(io, svc);
    if let Err(e) = conn.await {
        tracing::debug!(addr = %peer, error = %e, "HTTP connection ended");
    }
}

/// The client's address as a proxy on this host tells it: the last entry
/// of `X-Forwarded-For` (the one the proxy itself appended).
fn forwarded_for(h: &HeaderMap) -> Option<IpAddr> {
    h.get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .next_back()
}

fn json(code: StatusCode, v: &serde_json::Value) -> Response {
    let mut r = (code, format!("{v:#}\n")).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

impl Door {
    /// The user acting for producer `p`, or the answer that refuses it
    /// (401 without valid credentials, 403 for another producer's data).
    async fn acting_for(&self, h: &HeaderMap, peer: Peer, p: &str) -> Result<String, Response> {
        let user = auth::check(self, h, peer.0).await?;
        let cfg = self.shared.config();
        if !cfg.acts_for(&user, p) {
            return Err(answer(
                StatusCode::FORBIDDEN,
                &format!("user {user} does not deposit for producer {p}: ask the archive to add you to its http_users"),
            ));
        }
        Ok(user)
    }
}
