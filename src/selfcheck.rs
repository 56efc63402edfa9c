//! The start-up checks shared by `depot config check` and `depot run`: a
//! daemon that starts on a root it cannot write, or with a spool on another
//! filesystem than the drop folders (claims would copy instead of rename and
//! stop being atomic), would fail deposit after deposit instead of once, at
//! start, with a message an operator can act on.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::spool;

pub struct Finding {
    pub ok: bool,
    /// Worth a look, but depot works (`# warning:`; the exit code stays 0).
    pub warning: bool,
    pub what: String,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Finding {
        Finding { ok: true, warning: false, what: what.into() }
    }
    fn fail(what: impl Into<String>) -> Finding {
        Finding { ok: false, warning: false, what: what.into() }
    }
    fn warn(what: impl Into<String>) -> Finding {
        Finding { ok: true, warning: true, what: what.into() }
    }
}

/// Exists, is a folder, and a file can be created in it.
fn writable_dir(key: &str, dir: &Path) -> Finding {
    match fs::metadata(dir) {
        Err(e) => return Finding::fail(format!("{key} {}: {e} (create it, owned by depot's user)", dir.display())),
        Ok(m) if !m.is_dir() => return Finding::fail(format!("{key} {} is not a folder", dir.display())),
        Ok(_) => {}
    }
    let probe = dir.join(format!(".depot-write-check-{}", std::process::id()));
    match fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Finding::ok(format!("{key} {} exists and is writable", dir.display()))
        }
        Err(e) => Finding::fail(format!("{key} {} is not writable: {e}", dir.display())),
    }
}

/// drop_root exists and depot can keep its spool there: `<drop_root>/.depot`
/// writable (made if missing, which needs drop_root writable).
fn spool_dir(drop_root: &Path) -> Finding {
    match fs::metadata(drop_root) {
        Err(e) => return Finding::fail(format!("drop_root {}: {e} (create it)", drop_root.display())),
        Ok(m) if !m.is_dir() => return Finding::fail(format!("drop_root {} is not a folder", drop_root.display())),
        Ok(_) => {}
    }
    let own = drop_root.join(".depot");
    if let Err(e) = fs::create_dir_all(&own) {
        return Finding::fail(format!(
            "drop_root {}: cannot make {} ({e}); make it owned by depot's user, mode 0750",
            drop_root.display(),
            own.display()
        ));
    }
    match writable_dir("drop_root's spool", &own) {
        f if f.ok => {
            Finding::ok(format!("drop_root {} exists and its spool {} is writable", drop_root.display(), own.display()))
        }
        f => f,
    }
}

fn dev(p: &Path) -> Option<u64> {
    fs::symlink_metadata(p).ok().map(|m| m.dev())
}

/// Every existing folder of `others` is on the filesystem of `anchor`.
fn one_filesystem(what: &str, anchor: &Path, others: &[PathBuf]) -> Finding {
    let Some(a) = dev(anchor) else {
        return Finding::fail(format!("{what}: cannot stat {}", anchor.display()));
    };
    let apart: Vec<String> =
        others.iter().filter(|o| dev(o).is_some_and(|d| d != a)).map(|o| o.display().to_string()).collect();
    if apart.is_empty() {
        Finding::ok(format!("{what}: one filesystem"))
    } else {
        Finding::fail(format!(
            "{what}: {} on another filesystem than {} (renames would not be atomic; mount them together)",
            apart.join(", "),
            anchor.display()
        ))
    }
}

/// The producer folders present now, with `sub` appended (`new`, `releases`).
fn producer_dirs(cfg: &Config, root: &Path, subs: &[&str]) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(root) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if cfg.is_producer(&name) && e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(e.path());
            out.extend(subs.iter().map(|s| e.path().join(s)));
        }
    }
    out
}

/// Every producer's `previous/` and `rejected/`, where they exist, is a
/// folder itself, not a symlink: rotation moves deposits into them and
/// removes files from `previous/`, and through a link both would land
/// wherever it points. Rotation refuses them too; this says so once, at
/// start, naming each one.
fn real_folders(cfg: &Config) -> Finding {
    let mut bad = Vec::new();
    for dir in producer_dirs(cfg, &cfg.drop_root, &[jobs::rotate::PREVIOUS, jobs::rotate::REJECTED]) {
        let is_sub = dir.file_name().is_some_and(|n| n == jobs::rotate::PREVIOUS || n == jobs::rotate::REJECTED);
        match jobs::rotate::check_real_dir(&dir) {
            Err(e) if is_sub && e.kind() != std::io::ErrorKind::NotFound => bad.push(match e.raw_os_error() {
                Some(_) => format!("{}: {e}", dir.display()),
                None => e.to_string(),
            }),
            _ => {}
        }
    }
    if bad.is_empty() {
        Finding::ok("previous/ and rejected/ folders are real folders")
    } else {
        Finding::fail(format!("{} (rotation refuses them: make each a real folder)", bad.join("; ")))
    }
}

/// The path as the system resolves it, as far as it exists.
fn resolved(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
}

/// drop_root and publish_root apart: one inside the other (or both one
/// folder) mixes producers' uploads with releases (a release folder looks
/// like a producer, staging like an upload).
fn roots_apart(cfg: &Config) -> Finding {
    let (d, p) = (resolved(&cfg.drop_root), resolved(&cfg.publish_root));
    if d == p {
        Finding::fail(format!("drop_root and publish_root are one folder ({}): give each its own", d.display()))
    } else if p.starts_with(&d) || d.starts_with(&p) {
        let (outer, inner) =
            if p.starts_with(&d) { ("drop_root", "publish_root") } else { ("publish_root", "drop_root") };
        Finding::fail(format!(
            "{inner} ({}) is inside {outer} ({}): put them side by side (e.g. /srv/depot/drop and /srv/depot/publish)",
            if inner == "drop_root" { d.display() } else { p.display() },
            if outer == "drop_root" { d.display() } else { p.display() },
        ))
    } else {
        Finding::ok("drop_root and publish_root are apart")
    }
}

/// `notify.command`'s program exists and can be run: a hook that cannot
/// start fails for every deposit, silently for the producers.
fn notify_command(cfg: &Config) -> Option<Finding> {
    use std::os::unix::fs::PermissionsExt;
    let program = cfg.notify.command.first()?;
    let found: Option<PathBuf> = if program.contains('/') {
        Some(PathBuf::from(program))
    } else {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(program))
            .find(|c| c.is_file())
    };
    Some(match found.as_deref().map(|p| (p, fs::metadata(p))) {
        None => Finding::fail(format!("notify.command: {program} is not in PATH")),
        Some((p, Err(e))) => Finding::fail(format!("notify.command: {}: {e}", p.display())),
        Some((p, Ok(m))) if !m.is_file() => Finding::fail(format!("notify.command: {} is not a file", p.display())),
        Some((p, Ok(m))) if m.permissions().mode() & 0o111 == 0 => {
            Finding::fail(format!("notify.command: {} is not executable (chmod 755 {0})", p.display()))
        }
        Some((p, Ok(_))) => Finding::ok(format!("notify.command {} is an executable file", p.display())),
    })
}

/// Every validator's program exists and can be run (a missing one would
/// fail every deposit it applies to, as VALIDATOR_FAILED after retries),
/// named by the key it was written under; and whether validators get a
/// network namespace of their own on this kernel.
fn validators(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let global = cfg.settings_for_default().checks.validators;
    let mut lists = vec![(String::new(), global.clone(), 0)];
    for p in cfg.overridden() {
        lists.push((format!("producers.{p}."), cfg.settings_for(p).checks.validators, global.len()));
    }
    for (prefix, list, skip) in lists {
        for (i, v) in list.iter().enumerate().skip(skip) {
            let key = format!("{prefix}checks.validators[{}].command", i - skip);
            let Some(program) = v.command.first() else { continue };
            out.push(match jobs::validate::find_program(program) {
                Ok(p) => Finding::ok(format!("{key}: {} is an executable file", p.display())),
                Err(why) => Finding::fail(format!("{key}: {why}")),
            });
        }
    }
    if !out.is_empty() && !jobs::validate::limits(&jobs::unpack::Quiet) {
        out.push(Finding::warn(
            "validators' memory_mb cannot be applied: setrlimit is refused here (systemd's SystemCallFilter=~@resources); the service's MemoryMax= still bounds them",
        ));
    }
    if !out.is_empty() {
        out.push(if jobs::validate::isolation_available() {
            Finding::ok("validators run without network (a user and network namespace of their own)")
        } else {
            Finding::warn(
                "validators will run WITH network access: this kernel refuses unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone, or systemd's RestrictNamespaces=)",
            )
        });
    }
    out
}

/// The filesystem checks; the Redis one is [`redis`].
pub fn filesystem(cfg: &Config) -> Vec<Finding> {
    // drop_root itself is root's (OpenSSH's chroot rule: see the README's
    // producer section); depot writes only in its spool there.
    let mut out = vec![spool_dir(&cfg.drop_root), writable_dir("publish_root", &cfg.publish_root)];
    out.push(roots_apart(cfg));
    out.extend(notify_command(cfg));
    out.extend(validators(cfg));
    if !out.iter().all(|f| f.ok) {
        return out;
    }
    // The spool is made inside drop_root at start; if it is there already
    // it may be a mount of its own.
    let spool = cfg.drop_root.join(spool::SPOOL);
    let anchor = if spool.exists() { spool } else { cfg.drop_root.clone() };
    let mut drops = vec![cfg.drop_root.clone()];
    drops.extend(producer_dirs(cfg, &cfg.drop_root, &["new", "previous", "rejected"]));
    out.push(one_filesystem("spool and drop folders", &anchor, &drops));
    out.push(real_folders(cfg));
    let staging = cfg.publish_root.join(".staging");
    let anchor = if staging.exists() { staging } else { cfg.publish_root.clone() };
    let mut publish = vec![cfg.publish_root.clone()];
    publish.extend(producer_dirs(cfg, &cfg.publish_root, &["releases"]));
    out.push(one_filesystem("staging and releases", &anchor, &publish));
    out
}

/// Every bucket the config publishes to: where, with which key (the
/// secret shown as `***`), and whether it answers a listing with it.
/// Blocking (a few HTTP requests).
pub fn buckets(cfg: &Config) -> Vec<Finding> {
    crate::target::s3_targets(cfg)
        .into_iter()
        .map(|s3| {
            let place =
                format!("s3://{}/{} at {} (region {})", s3.bucket, s3.prefix.trim_matches('/'), s3.endpoint, s3.region);
            let creds = match jobs::s3::credentials(&s3) {
                Ok(c) => c,
                Err(e) => return Finding::fail(format!("publish.s3 {place}: {e}")),
            };
            let from = match &s3.credentials_file {
                Some(f) => format!("{} [{}]", f.display(), s3.profile),
                None => "the environment".into(),
            };
            let who = format!("key {} (secret ***, from {from})", creds.key_id);
            match jobs::s3::Bucket::with_credentials(&s3, creds).and_then(|b| b.probe()) {
                Ok(()) => Finding::ok(format!("publish.s3 {place} answers to {who}")),
                Err(e) => Finding::fail(format!("publish.s3 {place} with {who}: {}", e.message())),
            }
        })
        .collect()
}

pub async fn redis(cfg: &Config) -> Finding {
    match crate::state::connect(cfg).await {
        Ok(_) => Finding::ok(format!("Redis at {} answers", crate::config::redacted(&cfg.redis.url))),
        Err(e) => Finding::fail(format!("{e:#}")),
    }
}

/// What an operator may have got wrong that does not stop depot (warned):
/// folders under drop_root that no producer pattern takes (uploads there
/// are never picked up: `Msec/` for `MSEC/`), and each producer's account
/// and folders against the README's owners and modes (what `depot producer
/// list` shows). `depot config check` only.
pub fn operator(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let drop_root = resolved(&cfg.drop_root);
    let Ok(rd) = fs::read_dir(&drop_root) else { return out };
    let mut names: Vec<(String, bool)> = rd
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.file_type().is_ok_and(|t| t.is_dir())))
        .collect();
    names.sort();
    let mut producers = Vec::new();
    for (name, is_dir) in names {
        // depot's own (.depot, .locks) and a filesystem's lost+found.
        if name.starts_with('.') || name == "lost+found" {
            continue;
        }
        let path = drop_root.join(&name);
        if !is_dir {
            out.push(Finding::warn(format!(
                "{} is not a folder: only producer folders belong in drop_root",
                path.display()
            )));
        } else if !cfg.producers.pattern.is_match(&name) {
            out.push(Finding::warn(format!(
                "{} does not match producers.pattern ({}): uploads there are never picked up{}",
                path.display(),
                cfg.producers.pattern.as_str(),
                suggestion(cfg, &name)
            )));
        } else if !cfg.is_producer(&name) {
            out.push(Finding::warn(format!(
                "{} is not in producers.allow: uploads there are never picked up",
                path.display()
            )));
        } else {
            producers.push(name);
        }
    }
    if !producers.is_empty()
        && let Some(why) = crate::producer::chroot_path_problem(&drop_root)
    {
        out.push(Finding::warn(format!("drop_root: {why}")));
    }
    for p in producers {
        match crate::producer::folder_problems(&drop_root, &p) {
            Some(why) => out.push(Finding::warn(format!(
                "producer {p}: {why} (docs/operator-guide.md, \"Onboarding producers\"; `depot producer add {p}` sets them)"
            ))),
            None => out.push(Finding::ok(format!("producer {p}: account and folders as the operator guide gives them"))),
        }
    }
    out
}

/// ` (did you mean MSEC/?)` when the name in upper case is a producer.
fn suggestion(cfg: &Config, name: &str) -> String {
    let up = name.to_uppercase();
    if up != name && cfg.is_producer(&up) { format!(" (did you mean {up}/?)") } else { String::new() }
}

/// `# ok: …` / `# warning: …` / `# FAILED: …` lines: comments, so that
/// `depot config check` output stays a valid TOML file.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::from("\n# checks\n");
    for f in findings {
        s.push_str(if !f.ok {
            "# FAILED: "
        } else if f.warning {
            "# warning: "
        } else {
            "# ok: "
        });
        s.push_str(&f.what);
        s.push('\n');
    }
    s
}
