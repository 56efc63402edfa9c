//! The SPEC's status keys in Redis. Redis is the window operators look
//! through, not the record: every write here may fail while Redis is away,
//! and the spool keeps what is needed to write it again.

use std::collections::HashMap;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use crate::spool::{Entry, Outcome};

/// How many entries `<prefix>:events` keeps (approximately).
pub const EVENTS_MAXLEN: usize = 10_000;

pub const CREATED: &str = "CREATED";
pub const WAITING: &str = "WAITING";
pub const PROGRESS: &str = "PROGRESS";
pub const SUCCESS: &str = "SUCCESS";
pub const FAILURE: &str = "FAILURE";

#[derive(Clone)]
pub struct Status {
    pub conn: ConnectionManager,
    pub prefix: String,
}

/// Record a terminal state once: a second call (a job run twice after a
/// crash) changes nothing and adds no event.
const TERMINAL: &str = r#"
local s = redis.call('HGET', KEYS[1], 'state')
if s == 'SUCCESS' or s == 'FAILURE' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'id', ARGV[2], 'state', redis.call('HGET', KEYS[1], 'state'),
  'producer', redis.call('HGET', KEYS[1], 'producer') or '', 'error_code', redis.call('HGET', KEYS[1], 'error_code') or '')
return 1
"#;

/// Move a deposit to a non-terminal state, unless it already ended: a late
/// writer (a scheduler that listed the spool just before the end) must not
/// turn a SUCCESS back into WAITING.
const ADVANCE: &str = r#"
local s = redis.call('HGET', KEYS[1], 'state')
if s == 'SUCCESS' or s == 'FAILURE' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('HSET', KEYS[3], 'last_state', ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'id', ARGV[2], 'producer', redis.call('HGET', KEYS[1], 'producer') or '', 'state', ARGV[3])
return 1
"#;

impl Status {
    pub fn deposit_key(&self, id: &str) -> String {
        format!("{}:deposit:{id}", self.prefix)
    }
    pub fn producer_key(&self, p: &str) -> String {
        format!("{}:producer:{p}", self.prefix)
    }
    pub fn events_key(&self) -> String {
        format!("{}:events", self.prefix)
    }
    pub fn deposits_key(&self) -> String {
        format!("{}:deposits", self.prefix)
    }
    pub fn producers_key(&self) -> String {
        format!("{}:producers", self.prefix)
    }

    async fn event(&self, id: &str, producer: &str, state: &str, extra: &[(&str, &str)]) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let mut fields: Vec<(&str, &str)> = vec![("id", id), ("producer", producer), ("state", state)];
        fields.extend_from_slice(extra);
        let _: String = redis::cmd("XADD")
            .arg(self.events_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(EVENTS_MAXLEN)
            .arg("*")
            .arg(&fields)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// A deposit was claimed. Idempotent: an existing hash is left alone
    /// (recovery after Redis came back, or a restart).
    pub async fn created(&self, e: &Entry) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let key = self.deposit_key(&e.id);
        let fresh: bool = conn.hset_nx(&key, "id", &e.id).await?;
        if !fresh {
            return Ok(false);
        }
        let fields: Vec<(&str, String)> = vec![
            ("producer", e.producer.clone()),
            ("file", e.name.clone()),
            ("size", e.size.to_string()),
            ("state", CREATED.into()),
            ("stage", String::new()),
            ("attempts", "0".into()),
            ("created", e.created.clone()),
            ("bytes_total", "0".into()),
            ("bytes_done", "0".into()),
        ];
        let _: () = conn.hset_multiple(&key, &fields).await?;
        let _: () = conn.zadd(self.deposits_key(), &e.id, (e.claimed_ns / 1_000_000) as f64).await?;
        let _: () = conn.sadd(self.producers_key(), &e.producer).await?;
        let _: () = conn
            .hset_multiple(self.producer_key(&e.producer), &[("last_deposit", e.id.as_str()), ("last_state", CREATED)])
            .await?;
        self.event(&e.id, &e.producer, CREATED, &[]).await?;
        Ok(true)
    }

    /// Move a non-terminal deposit to `state` with these fields.
    pub async fn set(&self, e: &Entry, state: &str, fields: &[(&str, String)]) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let script = redis::Script::new(ADVANCE);
        let mut inv = script.prepare_invoke();
        inv.key(self.deposit_key(&e.id)).key(self.events_key()).key(self.producer_key(&e.producer));
        inv.arg(EVENTS_MAXLEN).arg(&e.id).arg(state).arg("state").arg(state);
        for (k, v) in fields {
            inv.arg(*k).arg(v);
        }
        let changed: i64 = inv.invoke_async(&mut conn).await?;
        Ok(changed == 1)
    }

    /// Progress within a state: no event, just the moving fields.
    pub async fn progress(&self, id: &str, fields: &[(&str, String)]) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        conn.hset_multiple(self.deposit_key(id), fields).await
    }

    pub async fn incr_attempts(&self, id: &str) -> redis::RedisResult<u32> {
        let mut conn = self.conn.clone();
        conn.hincr(self.deposit_key(id), "attempts", 1).await
    }

    /// SUCCESS or FAILURE, exactly once, with the producer's summary.
    pub async fn terminal(&self, e: &Entry, o: &Outcome) -> redis::RedisResult<bool> {
        self.created(e).await?;
        let mut conn = self.conn.clone();
        let mut fields: Vec<(&str, String)> = vec![("state", o.state.clone()), ("finished", o.finished.clone())];
        if let Some(c) = &o.error_code {
            fields.push(("error_code", c.clone()));
        }
        if let Some(m) = &o.error {
            fields.push(("error", m.clone()));
        }
        if let Some(r) = &o.release {
            fields.push(("release", r.clone()));
        }
        if let Some(f) = o.files {
            fields.push(("files", f.to_string()));
        }
        if let Some(b) = o.bytes {
            fields.push(("bytes_done", b.to_string()));
        }
        let script = redis::Script::new(TERMINAL);
        let mut inv = script.prepare_invoke();
        inv.key(self.deposit_key(&e.id)).key(self.events_key()).arg(EVENTS_MAXLEN).arg(&e.id);
        for (k, v) in &fields {
            inv.arg(*k).arg(v);
        }
        let first: i64 = inv.invoke_async(&mut conn).await?;
        let mut p: Vec<(&str, String)> = vec![("last_deposit", e.id.clone()), ("last_state", o.state.clone())];
        if o.state == SUCCESS {
            if let Some(r) = &o.release {
                p.push(("current_release", r.clone()));
            }
            p.push(("last_success", o.finished.clone()));
        }
        let _: () = conn.hset_multiple(self.producer_key(&e.producer), &p).await?;
        Ok(first == 1)
    }

    pub async fn get(&self, key: &str) -> redis::RedisResult<HashMap<String, String>> {
        let mut conn = self.conn.clone();
        conn.hgetall(key).await
    }
}
