//! Basic auth against an Apache htpasswd file (`http.users_file`): the
//! file an archive's Apache has today works as it is. bcrypt (`htpasswd
//! -B`, `$2y$`) through the `bcrypt` crate, apr1 (`htpasswd -m`,
//! `$apr1$`) computed here with md-5 as Apache's apr_md5.c does; other
//! schemes (crypt, SHA1, plain) are refused, never compared.
//!
//! The file is read again when it changes (`depot producer add
//! --http-user` takes effect without a reload). Hashes are checked on the
//! blocking pool, two at a time: a flood of wrong passwords costs two
//! cores' worth of bcrypt at most and never stalls the runtime; one client
//! address waits for at most two of those places at once.

use std::collections::HashMap;
use std::time::SystemTime;

use std::net::IpAddr;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use md5::{Digest, Md5};
use tracing::warn;

use super::{Door, answer};
use crate::state::lock;

#[derive(Default)]
struct Cache {
    /// (mtime, length) of the file the map was read from.
    stamp: Option<(SystemTime, u64)>,
    hashes: HashMap<String, String>,
}

/// Cheap to clone: the lookup runs on the blocking pool (it stats, and
/// may read, the users file).
#[derive(Clone)]
pub struct Users {
    cache: std::sync::Arc<std::sync::Mutex<Cache>>,
    /// Each client address's turn at the password checks: at most
    /// [`PER_ADDRESS`] of its checks wait for one of the door's two places
    /// at once. The places are given first come, first served: a flood of
    /// wrong passwords from many connections of one address put every
    /// other client's login behind all of it (with a `-C 10` hash, 64
    /// connections made a login take 4 s instead of 0.06 s). Its own
    /// requests now queue among themselves.
    turns: std::sync::Arc<std::sync::Mutex<HashMap<IpAddr, std::sync::Arc<tokio::sync::Semaphore>>>>,
}

/// Password checks of one client address waiting for a place at once.
const PER_ADDRESS: usize = 2;

impl Users {
    pub fn new() -> Users {
        Users { cache: std::sync::Arc::default(), turns: std::sync::Arc::default() }
    }

    /// `addr`'s turn, waited for; given back when dropped.
    async fn turn(&self, addr: IpAddr) -> Option<Turn> {
        let sem = {
            let mut m = lock(&self.turns);
            // An address whose last waiter gave up before its turn came
            // keeps an idle entry: swept before the map grows large.
            if m.len() >= 4096 {
                m.retain(|_, s| std::sync::Arc::strong_count(s) > 1);
            }
            m.entry(addr).or_insert_with(|| tokio::sync::Semaphore::new(PER_ADDRESS).into()).clone()
        };
        let permit = sem.clone().acquire_owned().await.ok()?;
        Some(Turn { users: self.clone(), addr, sem, permit: Some(permit) })
    }
}

/// A client address's place in line for a password check.
struct Turn {
    users: Users,
    addr: IpAddr,
    sem: std::sync::Arc<tokio::sync::Semaphore>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.permit.take());
        // The address's entry goes with its last waiter (clones are only
        // made under this lock: the map's and ours are the only ones).
        let mut m = lock(&self.users.turns);
        if std::sync::Arc::strong_count(&self.sem) == 2 {
            m.remove(&self.addr);
        }
    }
}

impl Users {
    /// `user`'s hash in `path`, the file read again if it changed.
    fn hash_of(&self, path: &str, user: &str) -> std::io::Result<Option<String>> {
        let m = std::fs::metadata(path)?;
        let stamp = (m.modified()?, m.len());
        let mut c = lock(&self.cache);
        if c.stamp != Some(stamp) {
            let text = std::fs::read_to_string(path)?;
            c.hashes = parse(&text);
            c.stamp = Some(stamp);
        }
        Ok(c.hashes.get(user).cloned())
    }
}

/// `user:hash` lines; blank lines and `#` comments skipped.
pub fn parse(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(u, h)| (u.to_owned(), h.to_owned()))
        .collect()
}

/// A hash of a scheme [`verify`] checks.
pub fn supported(hash: &str) -> bool {
    ["$2y$", "$2b$", "$2a$", "$apr1$"].iter().any(|p| hash.starts_with(p))
}

/// Does `password` match an htpasswd `hash`?
pub fn verify(hash: &str, password: &str) -> bool {
    if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
        return bcrypt::verify(password, hash).unwrap_or(false);
    }
    if let Some(rest) = hash.strip_prefix("$apr1$") {
        let salt = rest.split('$').next().unwrap_or_default();
        let ours = apr1(password.as_bytes(), salt.as_bytes());
        // Same length for every wrong password; compared without an early exit.
        return ours.len() == hash.len() && ours.bytes().zip(hash.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
    }
    false
}

/// A bcrypt line's hash, as `htpasswd -B` writes it (cost 10 here; `$2y$`).
pub fn hash_bcrypt(password: &str) -> anyhow::Result<String> {
    let h = bcrypt::hash_with_result(password, 10)?;
    Ok(h.format_for_version(bcrypt::Version::TwoY))
}

const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Apache's MD5 crypt (`$apr1$<salt>$<22 chars>`), as apr_md5_encode
/// computes it: FreeBSD's MD5 crypt with the `$apr1$` magic.
fn apr1(pw: &[u8], salt: &[u8]) -> String {
    let salt = &salt[..salt.len().min(8)];
    let mut ctx = Md5::new();
    ctx.update(pw);
    ctx.update(b"$apr1$");
    ctx.update(salt);
    let alt = Md5::new().chain_update(pw).chain_update(salt).chain_update(pw).finalize();
    let mut left = pw.len();
    while left > 0 {
        ctx.update(&alt[..left.min(16)]);
        left = left.saturating_sub(16);
    }
    let mut i = pw.len();
    while i != 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&pw[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for i in 0..1000 {
        let mut c = Md5::new();
        if i & 1 == 1 {
            c.update(pw);
        } else {
            c.update(fin);
        }
        if i % 3 != 0 {
            c.update(salt);
        }
        if i % 7 != 0 {
            c.update(pw);
        }
        if i & 1 == 1 {
            c.update(fin);
        } else {
            c.update(pw);
        }
        fin = c.finalize();
    }
    let mut out = format!("$apr1${}$", String::from_utf8_lossy(salt));
    let mut to64 = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        to64((u32::from(fin[a]) << 16) | (u32::from(fin[b]) << 8) | u32::from(fin[c]), 4);
    }
    to64(u32::from(fin[11]), 2);
    out
}

fn unauthorized(why: &str) -> Response {
    let mut r = answer(StatusCode::UNAUTHORIZED, why);
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"depot\""));
    r
}

/// The user the request's Basic credentials prove, or 401. A refused
/// login is one warning line, in a form fail2ban matches (`login failed:
/// user="…" from=<address>`, the address last), and counted.
pub async fn check(door: &Door, headers: &HeaderMap, addr: IpAddr) -> Result<String, Response> {
    let creds = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Some(creds) = creds else {
        return Err(unauthorized("credentials needed: curl -u PRODUCER:PASSWORD …"));
    };
    let (user, password) = creds.split_once(':').unwrap_or((&creds, ""));
    let (user, password) = (user.to_owned(), password.to_owned());
    let path = door.shared.config().http.users_file.clone();
    let ok = if path.is_empty() {
        false
    } else {
        let Some(_turn) = door.users.turn(addr).await else {
            return Err(unauthorized("the door is stopping"));
        };
        let Ok(_permit) = door.verifying.acquire().await else {
            return Err(unauthorized("the door is stopping"));
        };
        let users = door.users.clone();
        let u = user.clone();
        tokio::task::spawn_blocking(move || {
            let hash = match users.hash_of(&path, &u) {
                Ok(h) => h,
                Err(e) => {
                    warn!(users_file = %path, error = %e, "cannot read http.users_file: every login is refused");
                    None
                }
            };
            match hash {
                Some(h) => verify(&h, &password),
                None => {
                    // An unknown user costs a bcrypt too: timing does not
                    // tell which users exist.
                    let _ = verify(&DUMMY, &password);
                    false
                }
            }
        })
        .await
        .unwrap_or(false)
    };
    if !ok {
        door.shared.metrics.login_failed();
        // Bounded: the name is the client's, up to a whole header long.
        let shown: String = user.chars().take(64).collect();
        warn!("HTTP login failed: user={shown:?} from={addr}");
        return Err(unauthorized("wrong user or password"));
    }
    Ok(user)
}

/// A bcrypt hash of a random password, at `htpasswd -B`'s default cost (5).
static DUMMY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let mut r = [0u8; 16];
    let _ = getrandom::fill(&mut r);
    bcrypt::hash(super::upload::hex(&r), 5).unwrap_or_default()
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apr1_as_apache_computes_it() {
        // `openssl passwd -apr1 -salt …` (the same algorithm, the salt
        // fixed); tests/http.rs checks lines of Apache's own htpasswd.
        assert_eq!(apr1(b"password", b"HRaEyrF6"), "$apr1$HRaEyrF6$ot8uKlfWvfLstPzqSNnwc/");
        assert_eq!(apr1("p@ss wörd longer than sixteen bytes".as_bytes(), b"ab"), "$apr1$ab$eK7ZjpHNT5zTGDad8apxd0");
        assert!(verify("$apr1$HRaEyrF6$ot8uKlfWvfLstPzqSNnwc/", "password"));
        assert!(!verify("$apr1$HRaEyrF6$ot8uKlfWvfLstPzqSNnwc/", "passwore"));
    }

    #[test]
    fn bcrypt_lines_and_other_schemes() {
        let h = hash_bcrypt("s3cret").unwrap();
        assert!(h.starts_with("$2y$10$"), "{h}");
        assert!(verify(&h, "s3cret") && !verify(&h, "s3cre"));
        // Plain text and SHA1 lines are never compared.
        assert!(!verify("s3cret", "s3cret"));
        assert!(!verify("{SHA}6gRdLSVeCTHXxWQAtG2yXnVgtyQ=", "s3cret"));
        assert!(DUMMY.starts_with("$2b$05$") && !verify(&DUMMY, ""));
        let m = parse("# c\nann:$apr1$x$y\n\nbob:$2y$05$abc\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m["bob"], "$2y$05$abc");
    }
}
