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

/// Lua prelude of every state change: the deposit's hash is made (CREATED,
/// with its event) if missing, so that one round trip both records a claim
/// and moves it on, and a Redis that came back empty is filled again.
/// KEYS: deposit, events, producer, deposits (zset), producers (set).
/// ARGV: maxlen, id, producer, score, n, then n create field/value args,
/// then the script's own args.
const ENSURE: &str = r#"
local n = tonumber(ARGV[5])
local rest = 6 + n
if redis.call('HSETNX', KEYS[1], 'id', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 6, 5 + n))
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
  redis.call('SADD', KEYS[5], ARGV[3])
  redis.call('HSET', KEYS[3], 'last_deposit', ARGV[2], 'last_state', 'CREATED')
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'id', ARGV[2], 'producer', ARGV[3], 'state', 'CREATED')
end
local s = redis.call('HGET', KEYS[1], 'state')
"#;

/// Move a deposit to a non-terminal state, unless it already ended: a late
/// writer (a scheduler that listed the spool just before the end) must not
/// turn a SUCCESS back into WAITING. ARGV[rest]: the state ('' = only make
/// sure it exists); then field/value pairs. Returns 0 when it had ended,
/// the `attempts` field when it moved to PROGRESS, else 1.
const ADVANCE: &str = r#"
local state = ARGV[rest]
if state == '' then return 1 end
if s == 'SUCCESS' or s == 'FAILURE' then return 0 end
redis.call('HSET', KEYS[1], 'state', state)
if #ARGV > rest then redis.call('HSET', KEYS[1], unpack(ARGV, rest + 1)) end
local r = 1
if state == 'PROGRESS' then r = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '1') or 1 end
redis.call('HSET', KEYS[3], 'last_state', state)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'id', ARGV[2], 'producer', ARGV[3], 'state', state)
return r
"#;

/// Record a terminal state once: a second call (a job run twice after a
/// crash) changes nothing and adds no event. ARGV[rest]: how many of the
/// pairs that follow go to the deposit; the others go to the producer.
const TERMINAL: &str = r#"
local m = tonumber(ARGV[rest])
local first = 0
if s ~= 'SUCCESS' and s ~= 'FAILURE' then
  -- A success after transient failures: their error is history, not the state.
  for i = rest + 1, rest + m, 2 do
    if ARGV[i] == 'state' and ARGV[i + 1] == 'SUCCESS' then redis.call('HDEL', KEYS[1], 'error_code', 'error') end
  end
  redis.call('HSET', KEYS[1], unpack(ARGV, rest + 1, rest + m))
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'id', ARGV[2], 'state', redis.call('HGET', KEYS[1], 'state'),
    'producer', ARGV[3], 'error_code', redis.call('HGET', KEYS[1], 'error_code') or '')
  first = 1
end
redis.call('HSET', KEYS[3], unpack(ARGV, rest + m + 1))
return first
"#;

static ADVANCE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(&format!("{ENSURE}{ADVANCE}")));

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
    /// Deposits an HTTP door without a scheduler of its own (`--role
    /// http`) claimed: a list the scheduler pops and takes into its index.
    pub fn door_claims_key(&self) -> String {
        format!("{}:door:claimed", self.prefix)
    }

    /// A script invocation with the ENSURE prelude's keys and arguments.
    fn invocation<'a>(&self, script: &'a redis::Script, e: &Entry) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(self.deposit_key(&e.id))
            .key(self.events_key())
            .key(self.producer_key(&e.producer))
            .key(self.deposits_key())
            .key(self.producers_key());
        let create: [(&str, String); 9] = [
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
        inv.arg(EVENTS_MAXLEN).arg(&e.id).arg(&e.producer).arg((e.claimed_ns / 1_000_000) as f64);
        inv.arg(create.len() * 2);
        for (k, v) in create {
            inv.arg(k).arg(v);
        }
        inv
    }

    async fn advance(&self, e: &Entry, state: &str, fields: &[(&str, String)]) -> redis::RedisResult<i64> {
        let mut inv = self.invocation(&ADVANCE_SCRIPT, e);
        inv.arg(state);
        for (k, v) in fields {
            inv.arg(*k).arg(v);
        }
        inv.invoke_async(&mut self.conn.clone()).await
    }

    /// Deposits were claimed: one pipeline for a whole batch. Idempotent:
    /// an existing hash is left alone (recovery after Redis came back, or
    /// a restart).
    pub async fn created(&self, entries: &[Entry]) -> redis::RedisResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let invocations: Vec<_> = entries
            .iter()
            .map(|e| {
                let mut inv = self.invocation(&ADVANCE_SCRIPT, e);
                inv.arg("");
                inv
            })
            .collect();
        let mut pipe = redis::pipe();
        pipe.load_script(&ADVANCE_SCRIPT).ignore();
        for inv in &invocations {
            pipe.invoke_script(inv).ignore();
        }
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// Move a non-terminal deposit to `state` with these fields (making its
    /// hash first if Redis lost it). False when it had already ended.
    pub async fn set(&self, e: &Entry, state: &str, fields: &[(&str, String)]) -> redis::RedisResult<bool> {
        Ok(self.advance(e, state, fields).await? != 0)
    }

    /// PROGRESS, with the attempt's number (counted in the spool record,
    /// which outlives Redis) among `fields`; None when the deposit had
    /// already ended.
    pub async fn start(&self, e: &Entry, fields: &[(&str, String)]) -> redis::RedisResult<Option<u32>> {
        let n = self.advance(e, PROGRESS, fields).await?;
        Ok((n > 0).then(|| u32::try_from(n).unwrap_or(u32::MAX)))
    }

    /// Progress within a state: no event, just the moving fields.
    pub async fn progress(&self, id: &str, fields: &[(&str, String)]) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        conn.hset_multiple(self.deposit_key(id), fields).await
    }

    /// SUCCESS or FAILURE, exactly once, with the producer's summary.
    /// `progress`: the job's last progress fields, written with it (the
    /// outcome's own figures win).
    pub async fn terminal(&self, e: &Entry, o: &Outcome, progress: &[(&str, String)]) -> redis::RedisResult<bool> {
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(&format!("{ENSURE}{TERMINAL}")));
        let mut fields: Vec<(&str, String)> = progress.to_vec();
        fields.extend([("state", o.state.clone()), ("finished", o.finished.clone())]);
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
        let mut p: Vec<(&str, String)> = vec![("last_deposit", e.id.clone()), ("last_state", o.state.clone())];
        if o.state == SUCCESS {
            if let Some(r) = o.current.as_ref().or(o.release.as_ref()) {
                p.push(("current_release", r.clone()));
            }
            p.push(("last_success", o.finished.clone()));
        }
        let mut inv = self.invocation(&SCRIPT, e);
        inv.arg(fields.len() * 2);
        for (k, v) in fields.iter().chain(&p) {
            inv.arg(*k).arg(v);
        }
        let first: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(first == 1)
    }

    /// A claim taken back (the file was still being written): it never
    /// became a deposit. Its hash and place in the deposits index go; the
    /// file is claimed again, under a new id, once its writer is done.
    pub async fn forget(&self, e: &Entry) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .del(self.deposit_key(&e.id))
            .ignore()
            .zrem(self.deposits_key(), &e.id)
            .ignore()
            .query_async(&mut conn)
            .await
    }

    pub async fn get(&self, key: &str) -> redis::RedisResult<HashMap<String, String>> {
        let mut conn = self.conn.clone();
        conn.hgetall(key).await
    }
}
