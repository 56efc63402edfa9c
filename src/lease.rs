//! The per-producer publish lock of the S3 target, across hosts: a lease in
//! Redis (`<prefix>:lock:<P>`), renewed while held, with a fencing number
//! (`<prefix>:lock:<P>:fence`, incremented at every grant) that the
//! publisher writes into `current`.
//!
//! Why a lease alone is not enough (SPEC: "a lock that can expire during a
//! long publish is not enough by itself"): a holder paused past its lease
//! (a stopped VM, a swap storm) wakes up believing it still holds it. So
//! `current` is switched only after (1) the lease is checked to be ours
//! with at least [`MARGIN`] left, and (2) `current` is read and carries no
//! later fencing number than ours; then the write is conditional on the
//! ETag just read where the server honours it (S3 does; Garage does not).
//! What is left on Garage is a pause of more than [`MARGIN`] between that
//! check and the PUT of a 100-byte document; the README says so.
//!
//! Blocking (sync Redis connection): it is used from the pipeline's
//! threads, which have no runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jobs::s3::{Lease, Locks};
use jobs::{Error, Stage};

/// How long a grant lasts without renewal.
const TTL: Duration = Duration::from_secs(30);
/// Renewed this often.
const RENEW: Duration = Duration::from_secs(5);
/// What must be left of the lease to switch `current`.
const MARGIN: Duration = Duration::from_secs(15);

/// The fencing number never goes below `ARGV[3]`, the one `current` holds:
/// a Redis that lost its data (restarted empty) starts the counter again
/// at 1, and every grant would otherwise look older than the last writer's.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local f = redis.call('INCR', KEYS[2])
  local floor = tonumber(ARGV[3])
  if f <= floor then
    f = floor + 1
    redis.call('SET', KEYS[2], f)
  end
  return f
end
return 0";
const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return redis.call('PTTL', KEYS[1])
end
return -3";
const PTTL_IF_OURS: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PTTL', KEYS[1]) end
return -3";
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

pub struct RedisLocks {
    client: redis::Client,
    prefix: String,
}

fn transient(what: &str, e: impl std::fmt::Display) -> Error {
    Error::io(Stage::Publish, format!("publish lock in Redis: {what}"), std::io::Error::other(e.to_string()))
}

impl RedisLocks {
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<RedisLocks> {
        Ok(RedisLocks { client: redis::Client::open(url)?, prefix: prefix.to_owned() })
    }

    fn conn(&self) -> jobs::Result<redis::Connection> {
        let c = self.client.get_connection_with_timeout(Duration::from_secs(5)).map_err(|e| transient("connect", e))?;
        let t = Some(Duration::from_secs(5));
        c.set_read_timeout(t).and_then(|()| c.set_write_timeout(t)).map_err(|e| transient("connect", e))?;
        Ok(c)
    }
}

impl Locks for RedisLocks {
    fn lock(&self, producer: &str, floor: u64, cancelled: &dyn Fn() -> bool) -> jobs::Result<Box<dyn Lease>> {
        let key = format!("{}:lock:{producer}", self.prefix);
        let fence_key = format!("{key}:fence");
        let mut raw = [0u8; 12];
        getrandom::fill(&mut raw).map_err(|e| transient("random token", e))?;
        let token: String = format!(
            "{}:{}:{}",
            hostname(),
            std::process::id(),
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let mut conn = self.conn()?;
        let mut wait = Duration::from_millis(20);
        let fence: u64 = loop {
            let got: u64 = redis::Script::new(ACQUIRE)
                .key(&key)
                .key(&fence_key)
                .arg(&token)
                .arg(TTL.as_millis() as u64)
                .arg(floor)
                .invoke(&mut conn)
                .map_err(|e| transient("acquire", e))?;
            if got > 0 {
                break got;
            }
            if cancelled() {
                return Err(Error::Cancelled);
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_millis(500));
        };
        let lost = Arc::new(AtomicBool::new(false));
        let born = Instant::now();
        let renewed = Arc::new(AtomicU64::new(0));
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let renewer = {
            let (client, key, token) = (self.client.clone(), key.clone(), token.clone());
            let (lost, renewed) = (lost.clone(), renewed.clone());
            std::thread::Builder::new()
                .name("depot-lease".into())
                .spawn(move || renew_until_stopped(&client, &key, &token, &lost, &renewed, born, &stop_rx))
                .map_err(|e| transient("renewal thread", e))?
        };
        Ok(Box::new(RedisLease {
            locks_client: self.client.clone(),
            key,
            token,
            fence,
            lost,
            born,
            renewed,
            stop: Some(stop_tx),
            renewer: Some(renewer),
        }))
    }
}

fn renew_until_stopped(
    client: &redis::Client,
    key: &str,
    token: &str,
    lost: &AtomicBool,
    renewed: &AtomicU64,
    born: Instant,
    stop: &mpsc::Receiver<()>,
) {
    let mut conn = None;
    loop {
        match stop.recv_timeout(RENEW) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if conn.is_none() {
            conn = client.get_connection_with_timeout(Duration::from_secs(2)).ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        let r: redis::RedisResult<i64> =
            redis::Script::new(RENEW_SCRIPT).key(key).arg(token).arg(TTL.as_millis() as u64).invoke(c);
        match r {
            Ok(-3) => {
                lost.store(true, Ordering::Relaxed);
                return;
            }
            Ok(_) => renewed.store(born.elapsed().as_millis() as u64, Ordering::Relaxed),
            // Redis away: try again next round; check() will judge by the TTL.
            Err(_) => conn = None,
        }
    }
}

struct RedisLease {
    locks_client: redis::Client,
    key: String,
    token: String,
    fence: u64,
    lost: Arc<AtomicBool>,
    born: Instant,
    /// Milliseconds after `born` of the last renewal that Redis took.
    renewed: Arc<AtomicU64>,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl Lease for RedisLease {
    fn fence(&self) -> u64 {
        self.fence
    }

    fn lost(&self) -> bool {
        // Not renewed for so long that it may lapse before the next try.
        let quiet = self.born.elapsed().as_millis() as u64 - self.renewed.load(Ordering::Relaxed);
        self.lost.load(Ordering::Relaxed) || quiet > (TTL - RENEW).as_millis() as u64
    }

    fn check(&self) -> jobs::Result<()> {
        if self.lost() {
            return Err(transient("check", format!("the lease {} was lost", self.key)));
        }
        let mut c =
            self.locks_client.get_connection_with_timeout(Duration::from_secs(2)).map_err(|e| transient("check", e))?;
        let left: i64 = redis::Script::new(PTTL_IF_OURS)
            .key(&self.key)
            .arg(&self.token)
            .invoke(&mut c)
            .map_err(|e| transient("check", e))?;
        if left < MARGIN.as_millis() as i64 {
            return Err(transient(
                "check",
                format!("the lease {} is no longer ours or ends in {left} ms; not switching current", self.key),
            ));
        }
        Ok(())
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.renewer.take() {
            let _ = h.join();
        }
        if let Ok(mut c) = self.locks_client.get_connection_with_timeout(Duration::from_secs(2)) {
            let _: redis::RedisResult<i64> = redis::Script::new(RELEASE).key(&self.key).arg(&self.token).invoke(&mut c);
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "host".into())
}
