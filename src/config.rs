//! `config.toml`: every key has a default, unknown keys and impossible
//! values are errors that name the key. Per-producer tables
//! (`[producers.MSEC]`, `[producers.MSEC.limits]`, …) are laid over the
//! global `checks`/`limits`/`publish` tables before they are typed, so an
//! override is checked exactly like the key it overrides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use jobs::{Checks, Limits, Profile, Publish, Settings};
use regex::Regex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::Table;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Redis {
    pub url: String,
    pub prefix: String,
    /// Finished queue tasks (apalis' done/dead sets and their meta) kept;
    /// apalis-redis never expires them itself.
    pub keep_finished_jobs: u64,
    /// Days a finished deposit's status hash stays in Redis (0: forever).
    /// The reports in rejected/ and the releases are the lasting record.
    pub keep_deposits_days: u64,
}

impl Default for Redis {
    fn default() -> Self {
        Redis {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "depot".into(),
            keep_finished_jobs: 1000,
            keep_deposits_days: 90,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Watch {
    pub settle_ms: u64,
    pub sidecar_marks_done: bool,
    /// 0: inotify. Otherwise poll every this many ms (NFS/CIFS).
    pub poll_ms: u64,
    /// Polling only: a file given back this many times (it changed after
    /// each claim: a writer pausing longer than settle_ms) is judged as it
    /// is at its next claim, rather than claimed and given back for as
    /// long as the writer goes on (each cycle adds events).
    pub max_give_backs: u32,
    /// Inotify: files one producer may have marked open for writing at
    /// once. Past it, that producer's own further uploads are judged by
    /// the settle rule alone; other producers' marks are untouched.
    pub max_open_marks: usize,
}

impl Default for Watch {
    fn default() -> Self {
        Watch { settle_ms: 2000, sidecar_marks_done: true, poll_ms: 0, max_give_backs: 5, max_open_marks: 8192 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workers {
    pub concurrency: usize,
    pub max_attempts: u32,
    pub shutdown_timeout_s: u64,
    /// Threads one deposit may use; 0 = one per core.
    pub threads_per_deposit: usize,
}

impl Default for Workers {
    fn default() -> Self {
        Workers { concurrency: 8, max_attempts: 5, shutdown_timeout_s: 60, threads_per_deposit: 0 }
    }
}

/// `[notify]`: a program run once per terminal state (mail, webhook, …).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Notify {
    /// argv, no shell; empty = off.
    pub command: Vec<String>,
    pub timeout_s: u64,
    /// Hooks running at once; the others wait their turn (a burst of
    /// deposits must not fork a thousand mail processes).
    pub max_running: usize,
}

impl Default for Notify {
    fn default() -> Self {
        Notify { command: Vec::new(), timeout_s: 30, max_running: 4 }
    }
}

/// `[retention]`: how long what depot keeps on disk for people stays.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Days a `rejected/<deposit-id>/` folder is kept (0: forever).
    pub rejected_days: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { rejected_days: 30 }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// `host:port`; empty = off.
    pub listen: String,
}

/// `[http]`: the HTTP door (SPEC "HTTP door").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    /// `host:port`; empty = off.
    pub listen: String,
    /// PEM certificate chain and key; both or neither. Reloaded on SIGHUP.
    pub tls_cert: String,
    pub tls_key: String,
    /// An Apache htpasswd file (bcrypt `$2y$` and apr1 `$apr1$` lines).
    pub users_file: String,
    /// Users who act for every producer.
    pub operators: Vec<String>,
    /// A connection that sends nothing for this long (no request head, no
    /// body byte) is closed, and an upload it left is removed.
    pub idle_timeout_s: u64,
    /// Uploads of one producer being received at once.
    pub max_uploads_per_producer: usize,
    /// A TLS-terminating proxy (nginx, Apache) on this host forwards to a
    /// plain listen address: allowed without tls_cert/tls_key.
    pub behind_proxy: bool,
    /// Connections open at once; one client address holds at most half.
    pub max_connections: usize,
    /// Seconds a presigned GET of the data service (S3 target) stays valid.
    pub presign_s: u64,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            users_file: String::new(),
            operators: Vec::new(),
            idle_timeout_s: 30,
            max_uploads_per_producer: 4,
            behind_proxy: false,
            max_connections: 1024,
            presign_s: 3600,
        }
    }
}

impl Http {
    /// Checked at load: a bad address, half a TLS pair, credentials in
    /// clear over a non-loopback address.
    fn check(&self) -> Result<()> {
        if !(1..=7 * 24 * 3600).contains(&self.presign_s) {
            bail!("http.presign_s must be 1 to 604800 (7 days, S3's longest presigned URL)");
        }
        if self.listen.is_empty() {
            return Ok(());
        }
        let addr: std::net::SocketAddr = self.listen.parse().map_err(|_| {
            anyhow!("http.listen must be host:port with a numeric host (e.g. 127.0.0.1:8480), or empty for off")
        })?;
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            bail!("http.tls_cert and http.tls_key go together: set both, or neither");
        }
        if self.tls_cert.is_empty() && !addr.ip().is_loopback() && !self.behind_proxy {
            bail!(
                "http.listen {} is not a loopback address and there is no http.tls_cert/http.tls_key: passwords would cross the network in clear (set both, or http.behind_proxy = true when a TLS proxy on this host forwards to it)",
                self.listen
            );
        }
        if self.idle_timeout_s == 0 {
            bail!("http.idle_timeout_s must be at least 1");
        }
        if self.max_uploads_per_producer == 0 {
            bail!("http.max_uploads_per_producer must be at least 1");
        }
        if self.max_connections < 2 {
            bail!("http.max_connections must be at least 2");
        }
        Ok(())
    }

    pub fn tls(&self) -> bool {
        !self.tls_cert.is_empty()
    }
}

/// The whole file, typed.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub drop_root: PathBuf,
    pub publish_root: PathBuf,
    pub redis: Redis,
    pub watch: Watch,
    pub workers: Workers,
    pub producers: Producers,
    pub notify: Notify,
    pub metrics: Metrics,
    pub http: Http,
    pub retention: Retention,
    /// The untyped global tables, kept to merge per-producer overrides in.
    base: BTreeMap<&'static str, Table>,
}

#[derive(Debug, Clone)]
pub struct Producers {
    pub pattern: Regex,
    pub allow: Option<Vec<String>>,
    pub profile: Profile,
    /// `[producers.<P>]` tables, checked at load.
    overrides: BTreeMap<String, Table>,
    /// `[producers.<P>] http_users`: who else deposits for P over HTTP.
    pub http_users: BTreeMap<String, Vec<String>>,
    /// `[producers.<P>] public = true`: anyone reads P's releases
    /// (`/data/pub/<P>/…`) without credentials.
    pub public: std::collections::BTreeSet<String>,
}

const MERGED: [&str; 3] = ["checks", "limits", "publish"];

fn typed<T: DeserializeOwned>(table: Table, key: &str) -> Result<T> {
    T::deserialize(table).map_err(|e| anyhow!("{}", worded(key, e.to_string().trim())))
}

/// serde's "invalid type: string \"x\", expected usize\nin `concurrency`"
/// in an operator's words: "workers.concurrency: expected a whole number,
/// got a string (\"x\")". Anything else is kept as serde said it.
fn worded(section: &str, raw: &str) -> String {
    let (what, key) = match raw.rsplit_once("\nin `") {
        Some((what, rest)) => (what.trim(), Some(rest.trim_end_matches('`'))),
        None => (raw, None),
    };
    let full = match key {
        Some(k) => format!("{section}.{k}"),
        None => section.to_owned(),
    };
    let parsed = what
        .strip_prefix("invalid type: ")
        .map(|r| (r, true))
        .or_else(|| what.strip_prefix("invalid value: ").map(|r| (r, false)))
        .and_then(|(r, wrong_type)| r.rsplit_once(", expected ").map(|(got, want)| (got, want, wrong_type)));
    let Some((got, want, wrong_type)) = parsed else { return format!("{full}: {what}") };
    let want = match want {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number, 0 or more",
        "i64" | "i32" => "a whole number",
        "f64" | "f32" => "a number",
        "a boolean" => "true or false",
        "a string" => "a string, in quotes",
        "a sequence" => "a list, [ ... ]",
        "a map" => "a table",
        w => w,
    };
    // "string \"x\"", "integer `-1`", "boolean `true`": the kind in words,
    // the value as written.
    let (kind, value) = got.split_once(' ').unwrap_or((got, ""));
    let value = value.trim_matches('`');
    let got = match (kind, wrong_type) {
        ("string", true) => format!("a string ({value})"),
        ("integer", true) => format!("a whole number ({value})"),
        ("floating", true) => format!("a number with a fraction ({})", value.trim_start_matches("point ")),
        ("boolean", true) => format!("true or false ({value})"),
        ("sequence", true) => "a list".to_owned(),
        ("map", true) => "a table".to_owned(),
        (_, true) => got.to_owned(),
        (_, false) => value.to_owned(),
    };
    format!("{full}: expected {want}, got {got}")
}

fn take_table(root: &mut Table, key: &str) -> Result<Table> {
    match root.remove(key) {
        None => Ok(Table::new()),
        Some(toml::Value::Table(t)) => Ok(t),
        Some(_) => bail!("{key} must be a table ([{key}])"),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(&text, path).with_context(|| format!("invalid config {}", path.display()))
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let mut root: Table = text.parse().map_err(|e: toml::de::Error| anyhow!("{}", e.to_string().trim()))?;
        // Absolute, so that paths from inotify (always absolute) compare.
        let base_dir =
            std::path::absolute(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
                .unwrap_or_default();
        let root_path = |root: &mut Table, key: &str| -> Result<PathBuf> {
            match root.remove(key) {
                Some(toml::Value::String(s)) if !s.is_empty() => Ok(base_dir.join(s)),
                Some(_) => bail!("{key} must be a non-empty path string"),
                None => bail!("{key} is required"),
            }
        };
        let drop_root = root_path(&mut root, "drop_root")?;
        let publish_root = root_path(&mut root, "publish_root")?;
        let redis: Redis = typed(take_table(&mut root, "redis")?, "redis")?;
        let watch: Watch = typed(take_table(&mut root, "watch")?, "watch")?;
        let workers: Workers = typed(take_table(&mut root, "workers")?, "workers")?;
        let producers = parse_producers(take_table(&mut root, "producers")?)?;
        let notify: Notify = typed(take_table(&mut root, "notify")?, "notify")?;
        let metrics: Metrics = typed(take_table(&mut root, "metrics")?, "metrics")?;
        let mut http: Http = typed(take_table(&mut root, "http")?, "http")?;
        http.check()?;
        for f in [&mut http.tls_cert, &mut http.tls_key, &mut http.users_file] {
            if !f.is_empty() {
                *f = base_dir.join(&*f).display().to_string();
            }
        }
        let retention: Retention = typed(take_table(&mut root, "retention")?, "retention")?;
        let mut base = BTreeMap::new();
        for key in MERGED {
            base.insert(key, take_table(&mut root, key)?);
        }
        if let Some(k) = root.keys().next() {
            bail!("unknown key `{k}`");
        }
        if !redis.url.starts_with("redis://")
            && !redis.url.starts_with("rediss://")
            && !redis.url.starts_with("unix://")
        {
            bail!("redis.url must start with redis://, rediss:// or unix://");
        }
        if redis.prefix.is_empty() || redis.prefix.contains(char::is_whitespace) {
            bail!("redis.prefix must be a non-empty word");
        }
        if workers.concurrency == 0 {
            bail!("workers.concurrency must be at least 1");
        }
        if workers.max_attempts == 0 {
            bail!("workers.max_attempts must be at least 1");
        }
        if notify.command.first().is_some_and(|c| c.is_empty()) {
            bail!("notify.command: the program (first element) must not be empty");
        }
        if notify.timeout_s == 0 {
            bail!("notify.timeout_s must be at least 1");
        }
        if notify.max_running == 0 {
            bail!("notify.max_running must be at least 1");
        }
        if !metrics.listen.is_empty() && metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            bail!("metrics.listen must be host:port with a numeric host (e.g. 127.0.0.1:9187), or empty for off");
        }
        let cfg = Config {
            path: path.to_path_buf(),
            drop_root,
            publish_root,
            redis,
            watch,
            workers,
            producers,
            notify,
            metrics,
            http,
            retention,
            base,
        };
        cfg.settings_for_inner(None)?;
        for p in cfg.producers.overrides.keys() {
            cfg.settings_for_inner(Some(p))?;
        }
        Ok(cfg)
    }

    /// The pipeline settings of producer `p`: global tables with its
    /// overrides laid on top.
    pub fn settings_for(&self, p: &str) -> Settings {
        // Every combination was typed at load, so this cannot fail; fall
        // back to the global settings rather than panic if it ever did.
        self.settings_for_inner(Some(p)).or_else(|_| self.settings_for_inner(None)).unwrap_or_default()
    }

    /// The settings of a producer without a table of its own.
    pub fn settings_for_default(&self) -> Settings {
        self.settings_for_inner(None).unwrap_or_default()
    }

    /// Producers with a `[producers.<P>]` table.
    pub fn overridden(&self) -> impl Iterator<Item = &str> {
        self.producers.overrides.keys().map(String::as_str)
    }

    fn settings_for_inner(&self, p: Option<&str>) -> Result<Settings> {
        let over = p.and_then(|p| self.producers.overrides.get(p));
        let mut merged = self.base.clone();
        let mut profile = self.producers.profile;
        let (mut names, mut deposit_names) = (None, None);
        let prefix = p.map(|p| format!("producers.{p}.")).unwrap_or_default();
        if let Some(over) = over {
            for (k, v) in over {
                match (k.as_str(), v) {
                    ("http_users" | "public", _) => {}
                    ("profile", v) => {
                        profile = typed(Table::from_iter([("v".to_string(), v.clone())]), &format!("{prefix}profile"))
                            .map(|w: Wrap<Profile>| w.v)?;
                    }
                    ("names" | "deposit_names", v) => {
                        let key = format!("{prefix}{k}");
                        let src = v.as_str().ok_or_else(|| anyhow!("{key} must be a string (a regular expression)"))?;
                        let scheme = jobs::scheme::Scheme::new(src).map_err(|e| anyhow!("{key}: {e}"))?;
                        *(if k == "names" { &mut names } else { &mut deposit_names }) = Some(scheme);
                    }
                    (k, toml::Value::Table(t)) if MERGED.contains(&k) => {
                        if let Some(m) = merged.get_mut(k) {
                            for (kk, vv) in t {
                                // `[producers.P.publish.s3]` sets some keys
                                // of `[publish.s3]`, not all of them.
                                match (m.get_mut(kk), vv) {
                                    // A producer's validators run besides
                                    // the global ones, never instead.
                                    (Some(toml::Value::Array(all)), toml::Value::Array(more))
                                        if k == "checks" && kk == "validators" =>
                                    {
                                        all.extend(more.iter().cloned());
                                    }
                                    (Some(toml::Value::Table(inner)), toml::Value::Table(over)) => {
                                        inner.extend(over.iter().map(|(a, b)| (a.clone(), b.clone())));
                                    }
                                    _ => {
                                        m.insert(kk.clone(), vv.clone());
                                    }
                                }
                            }
                        }
                    }
                    (k, _) => bail!(
                        "unknown key `{prefix}{k}` (a producer table may set profile, http_users, public, names, deposit_names, [checks], [limits], [publish])"
                    ),
                }
            }
        }
        let get = |k: &str| merged.get(k).cloned().unwrap_or_default();
        let checks: Checks = typed(get("checks"), &format!("{prefix}checks"))?;
        let limits: Limits = typed(get("limits"), &format!("{prefix}limits"))?;
        let mut publish: Publish = typed(get("publish"), &format!("{prefix}publish"))?;
        // Relative to the config file's folder, as the roots are.
        let dir =
            std::path::absolute(self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")))
                .unwrap_or_default();
        for f in [&mut publish.s3.credentials_file, &mut publish.s3.ca_file].into_iter().flatten() {
            *f = dir.join(&*f);
        }
        // Named by the table they were written in: the global ones come
        // first in a producer's list.
        let global = match self.base.get("checks").and_then(|c| c.get("validators")) {
            Some(toml::Value::Array(a)) if p.is_some() => a.len(),
            _ => 0,
        };
        for (i, v) in checks.validators.iter().enumerate() {
            if let Some(why) = v.problem() {
                match i.checked_sub(global) {
                    Some(j) => bail!("{prefix}checks.validators[{j}]: {why}"),
                    None => bail!("checks.validators[{i}]: {why}"),
                }
            }
        }
        let s = Settings {
            profile,
            checks,
            limits,
            publish,
            threads: self.workers.threads_per_deposit,
            names,
            deposit_names,
        };
        s.validate().map_err(|e| anyhow!("{prefix}{e}"))?;
        Ok(s)
    }

    /// The effective configuration, every default spelled out, as TOML.
    pub fn effective(&self) -> String {
        #[derive(Serialize)]
        struct View<'a> {
            drop_root: &'a Path,
            publish_root: &'a Path,
            redis: Redis,
            watch: &'a Watch,
            workers: &'a Workers,
            producers: ProducersView<'a>,
            notify: &'a Notify,
            metrics: &'a Metrics,
            http: &'a Http,
            retention: &'a Retention,
            checks: Checks,
            limits: Limits,
            publish: Publish,
        }
        #[derive(Serialize)]
        struct ProducersView<'a> {
            pattern: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            allow: Option<&'a Vec<String>>,
            profile: Profile,
            #[serde(flatten)]
            overrides: BTreeMap<&'a str, Settings>,
        }
        let global = self.settings_for_inner(None).unwrap_or_default();
        let overrides = self.producers.overrides.keys().map(|p| (p.as_str(), self.settings_for(p))).collect();
        let view = View {
            drop_root: &self.drop_root,
            publish_root: &self.publish_root,
            redis: Redis { url: redacted(&self.redis.url), ..self.redis.clone() },
            watch: &self.watch,
            workers: &self.workers,
            producers: ProducersView {
                pattern: self.producers.pattern.as_str(),
                allow: self.producers.allow.as_ref(),
                profile: self.producers.profile,
                overrides,
            },
            notify: &self.notify,
            metrics: &self.metrics,
            http: &self.http,
            retention: &self.retention,
            checks: global.checks,
            limits: global.limits,
            publish: global.publish,
        };
        let mut out = format!("# effective configuration of {}\n", self.path.display());
        out.push_str(&toml::to_string(&view).unwrap_or_else(|e| format!("# cannot render: {e}\n")));
        out
    }

    /// May `user` act for producer `p` over HTTP: its own name, one of its
    /// `http_users`, or an operator.
    pub fn acts_for(&self, user: &str, p: &str) -> bool {
        self.is_producer(p)
            && (user == p
                || self.http.operators.iter().any(|o| o == user)
                || self.producers.http_users.get(p).is_some_and(|u| u.iter().any(|x| x == user)))
    }

    /// Is `name` a producer folder this config serves?
    ///
    /// A name the pattern matches but that is not a safe producer name
    /// (`jobs::deposit::unsafe_producer`) never is one, whatever the
    /// pattern: the load refuses patterns that could admit one, and this
    /// is the second line, logged once per name.
    pub fn is_producer(&self, name: &str) -> bool {
        if !self.producers.pattern.is_match(name)
            || !self.producers.allow.as_ref().is_none_or(|a| a.iter().any(|x| x == name))
        {
            return false;
        }
        match jobs::deposit::unsafe_producer(name) {
            None => true,
            Some(why) => {
                static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
                if let Ok(mut w) = WARNED.lock()
                    && w.len() < 1024
                    && !w.iter().any(|n| n == name)
                {
                    w.push(name.to_owned());
                    tracing::warn!(folder = %jobs::names::printable(name), why, "matches producers.pattern but is not a safe producer name: never taken as a producer");
                }
                false
            }
        }
    }
}

/// Where the system-wide config lives (the packaged one).
pub const SYSTEM_CONFIG: &str = "/etc/depot/config.toml";

/// How a command found its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `-c/--config FILE`
    Flag,
    /// `$DEPOT_CONFIG`
    Env,
    /// `./config.toml`
    Cwd,
    /// `/etc/depot/config.toml`
    System,
}

impl Source {
    pub fn describe(self) -> &'static str {
        match self {
            Source::Flag => "--config",
            Source::Env => "$DEPOT_CONFIG",
            Source::Cwd => "./config.toml",
            Source::System => SYSTEM_CONFIG,
        }
    }
}

/// The lookup every command makes (SPEC "Configuration"): `-c/--config
/// FILE`, else `$DEPOT_CONFIG`, else `./config.toml` if it exists, else
/// `/etc/depot/config.toml`. None when the last one does not exist either
/// (`depot check` then runs on built-in defaults; every other command
/// fails to load it and says where it looked).
pub fn locate(flag: Option<&Path>) -> Option<(PathBuf, Source)> {
    if let Some(f) = flag {
        return Some((f.to_path_buf(), Source::Flag));
    }
    if let Some(e) = std::env::var_os("DEPOT_CONFIG").filter(|e| !e.is_empty()) {
        return Some((PathBuf::from(e), Source::Env));
    }
    let cwd = Path::new("config.toml");
    if cwd.is_file() {
        return Some((cwd.to_path_buf(), Source::Cwd));
    }
    let system = Path::new(SYSTEM_CONFIG);
    system.exists().then(|| (system.to_path_buf(), Source::System))
}

/// The lookup, then the load; an error says where the file came from, or
/// every place that was looked at.
pub fn find_and_load(flag: Option<&Path>) -> Result<Config> {
    match locate(flag) {
        Some((path, Source::Flag | Source::System)) => Config::load(&path),
        Some((path, src)) => Config::load(&path).with_context(|| format!("config from {}", src.describe())),
        None => bail!(
            "no config found: pass -c/--config FILE, set DEPOT_CONFIG, or put config.toml in the current folder or at {SYSTEM_CONFIG}"
        ),
    }
}

/// The URL with its password (if any) replaced, for logs and output.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

#[derive(Deserialize)]
struct Wrap<T> {
    v: T,
}

fn parse_producers(mut t: Table) -> Result<Producers> {
    let pattern_src = match t.remove("pattern") {
        None => "^[A-Z]{4}$".to_string(),
        Some(toml::Value::String(s)) => s,
        Some(_) => bail!("producers.pattern must be a string"),
    };
    let pattern = Regex::new(&pattern_src).map_err(|e| anyhow!("producers.pattern: {e}"))?;
    if let Some(why) = crate::pattern::problem(&pattern_src) {
        bail!("producers.pattern {pattern_src:?} {why}");
    }
    let allow = match t.remove("allow") {
        None => None,
        Some(v) => {
            Some(Vec::<String>::deserialize(v).map_err(|e| anyhow!("producers.allow must be a list of names: {e}"))?)
        }
    };
    let profile = match t.remove("profile") {
        None => Profile::default(),
        Some(v) => typed::<Wrap<Profile>>(Table::from_iter([("v".to_string(), v)]), "producers.profile")?.v,
    };
    if let Some(a) = &allow
        && let Some(bad) = a.iter().find(|p| !pattern.is_match(p))
    {
        bail!("producers.allow: {bad:?} does not match producers.pattern");
    }
    let mut overrides = BTreeMap::new();
    let mut http_users = BTreeMap::new();
    let mut public = std::collections::BTreeSet::new();
    for (k, v) in t {
        match v {
            toml::Value::Table(tab) if pattern.is_match(&k) => {
                if let Some(u) = tab.get("http_users") {
                    let users = Vec::<String>::deserialize(u.clone())
                        .map_err(|e| anyhow!("producers.{k}.http_users must be a list of user names: {e}"))?;
                    http_users.insert(k.clone(), users);
                }
                match tab.get("public") {
                    None | Some(toml::Value::Boolean(false)) => {}
                    Some(toml::Value::Boolean(true)) => {
                        public.insert(k.clone());
                    }
                    Some(_) => bail!("producers.{k}.public must be true or false"),
                }
                overrides.insert(k, tab);
            }
            toml::Value::Table(_) => bail!("producers.{k}: not a producer name (producers.pattern is {pattern_src})"),
            _ => bail!("unknown key `producers.{k}`"),
        }
    }
    Ok(Producers { pattern, allow, profile, overrides, http_users, public })
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrong_types_named_in_words() {
        let p = std::path::Path::new("c.toml");
        let e = |t: &str| format!("{:#}", super::Config::parse(t, p).err().unwrap());
        let base = "drop_root = \"d\"\npublish_root = \"p\"\n";
        let m = e(&format!("{base}[workers]\nconcurrency = \"8\"\n"));
        assert!(m.contains("workers.concurrency: expected a whole number, 0 or more, got a string (\"8\")"), "{m}");
        assert!(!m.contains("usize"), "{m}");
        let m = e(&format!("{base}[limits]\nmax_entries = -1\n"));
        assert!(m.contains("limits.max_entries: expected a whole number, 0 or more, got -1"), "{m}");
        let m = e(&format!("{base}[checks]\ncase_insensitive = 1\n"));
        assert!(m.contains("checks.case_insensitive: expected true or false, got a whole number (1)"), "{m}");
    }

    use super::*;

    fn parse(s: &str) -> Result<Config> {
        Config::parse(s, Path::new("/etc/depot/config.toml"))
    }

    const MIN: &str = "drop_root = \"/d\"\npublish_root = \"/p\"\n[redis]\nurl = \"redis://127.0.0.1:6379\"\n";

    #[test]
    fn minimal_file_works() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.drop_root, Path::new("/d"));
        assert_eq!(c.settings_for("MSEC"), Settings::default());
        assert!(c.is_producer("MSEC"));
        assert!(!c.is_producer("msec"));
    }

    #[test]
    fn unknown_keys_are_named() {
        for (extra, key) in [
            ("bogus = 1\n", "bogus"),
            ("[limits]\nmax_entriez = 3\n", "max_entriez"),
            ("[producers.MSEC]\nfoo = 1\n", "producers.MSEC.foo"),
            ("[producers.MSEC.limits]\nnope = 1\n", "nope"),
            ("[watch]\nsettle = 1\n", "settle"),
        ] {
            let err = format!("{:#}", parse(&format!("{MIN}{extra}")).unwrap_err());
            assert!(err.contains(key), "{extra}: {err}");
        }
    }

    #[test]
    fn impossible_values_are_named() {
        for (extra, key) in [
            ("[limits]\nmax_entries = 0\n", "limits.max_entries"),
            ("[publish]\nkeep_releases = 0\n", "publish.keep_releases"),
            ("[publish]\nmode = \"mix\"\n", "publish"),
            ("[workers]\nconcurrency = 0\n", "workers.concurrency"),
            ("[producers]\npattern = \"(\"\n", "producers.pattern"),
            ("[producers.MSEC.limits]\nmax_entries = 0\n", "producers.MSEC.limits.max_entries"),
        ] {
            let err = format!("{:#}", parse(&format!("{MIN}{extra}")).unwrap_err());
            assert!(err.contains(key), "{extra}: {err}");
        }
    }

    #[test]
    fn naming_schemes_are_per_producer_and_a_bad_one_is_named() {
        let c = parse(&format!(
            "{MIN}[producers.MSEC]\nnames = '(MSEC_en\\.json|MSEC_DAT_[0-9]+/.*)'\ndeposit_names = 'MSEC_.*\\.zip'\n"
        ))
        .unwrap();
        let s = c.settings_for("MSEC");
        assert!(s.names.as_ref().is_some_and(|n| n.admits("MSEC_DAT_1/a.txt") && !n.admits("x/a.txt")));
        assert!(s.deposit_names.as_ref().is_some_and(|n| n.admits("MSEC_1.zip")));
        // Another producer has none.
        assert_eq!(c.settings_for("IGNF").names, None);
        for (text, key) in [
            ("[producers.MSEC]\nnames = '('\n", "producers.MSEC.names"),
            ("[producers.MSEC]\ndeposit_names = 'a)|(.*'\n", "producers.MSEC.deposit_names"),
            ("[producers.MSEC]\nnames = 3\n", "producers.MSEC.names"),
        ] {
            let e = format!("{:#}", parse(&format!("{MIN}{text}")).unwrap_err());
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn a_producers_validators_run_besides_the_global_ones() {
        let c = parse(&format!(
            "{MIN}[[checks.validators]]\nglob = \"*.nc\"\ncommand = [\"ncdump\", \"-h\", \"{{}}\"]\n\
             [[producers.MSEC.checks.validators]]\nscope = \"release\"\ncode = \"VIRUS_FOUND\"\ncommand = [\"clamscan\", \"{{}}\"]\nreject_exits = [1, \"3-4\"]\n"
        ))
        .unwrap();
        let m = c.settings_for("MSEC").checks.validators;
        assert_eq!(m.iter().map(|v| v.command[0].as_str()).collect::<Vec<_>>(), ["ncdump", "clamscan"]);
        assert_eq!((m[0].timeout_s, m[0].memory_mb, m[0].rejects(1), m[0].rejects(2)), (60, 2048, true, false));
        assert_eq!(m[1].code, jobs::validate::Verdict::VirusFound);
        assert!(m[1].rejects(4) && !m[1].rejects(2));
        assert_eq!(c.settings_for("IGNF").checks.validators.len(), 1);
        // Shown by `depot config show`.
        assert!(c.effective().contains("[[producers.MSEC.checks.validators]]"), "{}", c.effective());
    }

    #[test]
    fn producer_tables_override() {
        let c = parse(&format!(
            "{MIN}[limits]\nmax_entries = 10\n[producers.IGNF]\nprofile = \"plain\"\n[producers.IGNF.publish]\nmode = \"merge\"\n[producers.IGNF.checks]\nflat_names = true\n"
        ))
        .unwrap();
        let s = c.settings_for("IGNF");
        assert_eq!(s.profile, Profile::Plain);
        assert_eq!(s.publish.mode, jobs::PublishMode::Merge);
        assert!(s.checks.flat_names);
        assert_eq!(s.limits.max_entries, 10);
        assert_eq!(c.settings_for("MSEC").profile, Profile::Theia);
    }

    #[test]
    fn bagit_profile_and_what_it_cannot_be_combined_with() {
        let c = parse(&format!("{MIN}[producers]\nprofile = \"bagit\"\n")).unwrap();
        assert_eq!(c.settings_for("MSEC").profile, Profile::Bagit);
        let c = parse(&format!("{MIN}[producers.LOCB]\nprofile = \"bagit\"\n")).unwrap();
        assert_eq!(c.settings_for("LOCB").profile, Profile::Bagit);
        // A merged release would not be a bag: refused, naming the keys.
        for (text, key) in [
            (
                "[producers.LOCB]\nprofile = \"bagit\"\n[producers.LOCB.publish]\nmode = \"merge\"\n",
                "producers.LOCB.publish.mode",
            ),
            ("[publish]\nmode = \"merge\"\n[producers]\nprofile = \"bagit\"\n", "publish.mode"),
        ] {
            let e = format!("{:#}", parse(&format!("{MIN}{text}")).unwrap_err());
            assert!(e.contains(key) && e.contains("bagit"), "{text}: {e}");
        }
    }

    #[test]
    fn allow_empty_is_off_and_set_per_producer() {
        let c = parse(&format!(
            "{MIN}[producers.IGNF.checks]
allow_empty = true
"
        ))
        .unwrap();
        assert!(c.settings_for("IGNF").checks.allow_empty);
        assert!(!c.settings_for("MSEC").checks.allow_empty);
        let c = parse(&format!(
            "{MIN}[checks]
allow_empty = true
"
        ))
        .unwrap();
        assert!(c.settings_for("MSEC").checks.allow_empty);
    }

    #[test]
    fn a_folder_the_pattern_matches_but_no_producer_can_be_named_is_none() {
        let mut c = parse(MIN).unwrap();
        // A pattern the load would refuse, set behind its back: the second
        // line still holds.
        c.producers.pattern = Regex::new("^.{1,40}$").unwrap();
        assert!(c.is_producer("MSEC") && c.is_producer("AB-CD"));
        for bad in [".depot", ".staging", "..", "-x", "a b", &"A".repeat(31)] {
            assert!(!c.is_producer(bad), "{bad}");
        }
    }

    #[test]
    fn a_producer_sets_some_keys_of_publish_s3() {
        let c = parse(&format!(
            "{MIN}[publish]\ntarget = \"s3\"\n[publish.s3]\nendpoint = \"http://h:3900\"\nbucket = \"main\"\nprefix = \"a\"\n\
             [producers.IGNF.publish]\ntarget = \"fs\"\n[producers.THEI.publish.s3]\nbucket = \"other\"\n"
        ))
        .unwrap();
        assert_eq!(c.settings_for("IGNF").publish.target, jobs::PublishTarget::Fs);
        let t = c.settings_for("THEI").publish;
        assert_eq!(
            (t.target, t.s3.bucket.as_str(), t.s3.endpoint.as_str()),
            (jobs::PublishTarget::S3, "other", "http://h:3900")
        );
        assert_eq!(c.settings_for("MSEC").publish.s3.bucket, "main");
        let err = format!("{:#}", parse(&format!("{MIN}[publish]\ntarget = \"s3\"\n")).unwrap_err());
        assert!(err.contains("publish.s3.endpoint"), "{err}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redacted("redis://:s3cret@host:6380/2"), "redis://:***@host:6380/2");
        assert_eq!(redacted("rediss://depot:s3cret@host/0"), "rediss://depot:***@host/0");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        let c = parse("drop_root = \"/d\"\npublish_root = \"/p\"\n[redis]\nurl = \"redis://:pw@h:1/3\"\n").unwrap();
        assert!(!c.effective().contains("pw@"));
    }

    #[test]
    fn notify_and_metrics_are_checked() {
        for (extra, key) in [
            ("[notify]\ncommand = [\"\"]\n", "notify.command"),
            ("[notify]\ntimeout_s = 0\n", "notify.timeout_s"),
            ("[metrics]\nlisten = \"nowhere\"\n", "metrics.listen"),
            ("[metrics]\nport = 1\n", "port"),
        ] {
            let err = format!("{:#}", parse(&format!("{MIN}{extra}")).unwrap_err());
            assert!(err.contains(key), "{extra}: {err}");
        }
    }

    #[test]
    fn notify_max_running_and_retention() {
        let c = parse(MIN).unwrap();
        assert_eq!((c.notify.max_running, c.retention.rejected_days), (4, 30));
        let c = parse(&format!("{MIN}[notify]\nmax_running = 2\n[retention]\nrejected_days = 0\n")).unwrap();
        assert_eq!((c.notify.max_running, c.retention.rejected_days), (2, 0));
        for (extra, key) in [
            ("[notify]\nmax_running = 0\n", "notify.max_running"),
            ("[retention]\nrejected = 1\n", "rejected"),
            ("[retention]\nrejected_days = -1\n", "retention"),
        ] {
            let err = format!("{:#}", parse(&format!("{MIN}{extra}")).unwrap_err());
            assert!(err.contains(key), "{extra}: {err}");
        }
        assert!(c.effective().contains("[retention]"));
    }

    #[test]
    fn http_is_checked_and_safe_by_default() {
        let c = parse(&format!("{MIN}[http]\nlisten = \"127.0.0.1:8480\"\noperators = [\"ops\"]\n[producers.MSEC]\nhttp_users = [\"ann\"]\n")).unwrap();
        assert!(c.acts_for("MSEC", "MSEC") && c.acts_for("ann", "MSEC") && c.acts_for("ops", "IGNF"));
        assert!(!c.acts_for("ann", "IGNF") && !c.acts_for("IGNF", "MSEC"));
        for (extra, key) in [
            ("[http]\nlisten = \"0.0.0.0:8480\"\n", "http.listen"),
            ("[http]\nlisten = \"127.0.0.1:8480\"\ntls_cert = \"c.pem\"\n", "http.tls_key"),
            ("[http]\nlisten = \"here\"\n", "http.listen"),
            ("[http]\nlisten = \"127.0.0.1:1\"\nidle_timeout_s = 0\n", "http.idle_timeout_s"),
            ("[producers.MSEC]\nhttp_users = \"ann\"\n", "producers.MSEC.http_users"),
        ] {
            let err = format!("{:#}", parse(&format!("{MIN}{extra}")).unwrap_err());
            assert!(err.contains(key), "{extra}: {err}");
        }
        parse(&format!("{MIN}[http]\nlisten = \"0.0.0.0:8480\"\nbehind_proxy = true\n")).unwrap();
        parse(&format!("{MIN}[http]\nlisten = \"0.0.0.0:8480\"\ntls_cert = \"c\"\ntls_key = \"k\"\n")).unwrap();
    }

    #[test]
    fn public_producers_and_presign_expiry() {
        let c = parse(&format!("{MIN}[producers.OPEN]\npublic = true\n[producers.MSEC]\npublic = false\n")).unwrap();
        assert!(c.producers.public.contains("OPEN") && !c.producers.public.contains("MSEC"));
        assert_eq!(c.http.presign_s, 3600);
        // Not a pipeline setting: the producer's settings still type.
        assert_eq!(c.settings_for("OPEN"), Settings::default());
        for (extra, key) in [
            ("[producers.OPEN]\npublic = \"yes\"\n", "producers.OPEN.public"),
            ("[http]\npresign_s = 0\n", "http.presign_s"),
            ("[http]\npresign_s = 604801\n", "http.presign_s"),
        ] {
            let err = format!("{:#}", parse(&format!("{MIN}{extra}")).unwrap_err());
            assert!(err.contains(key), "{extra}: {err}");
        }
    }

    #[test]
    fn packaged_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/depot.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.drop_root, Path::new("/srv/depot/drop"));
        assert_eq!(c.publish_root, Path::new("/srv/depot/publish"));
    }

    #[test]
    fn repository_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        Config::load(&path).unwrap();
    }
}
