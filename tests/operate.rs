//! Operating depot day to day (issue 14): the config every command finds,
//! logs for a file and for the journal, retention of rejected deposits,
//! status and history that tell the truth, metrics and alert rules, words
//! for scientists, the operator's mistakes `depot config check` catches,
//! sample deposits, and the notify hook in the unit's sandbox. The real
//! binary, a private redis-server per test.

#[path = "../jobs/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

mod common;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_depot");

/// `depot ARGS` in `cwd`, with no config from the environment unless given.
fn depot_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("DEPOT_CONFIG")
        .env_remove("JOURNAL_STREAM")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

/// /etc/depot/config.toml is the last place every command looks: a machine
/// that has one (an archive host) cannot show "no config found".
fn system_config() -> bool {
    Path::new("/etc/depot/config.toml").exists()
}

/// A Theia deposit with no MD5 at all: accepted unless checks.require_md5.
fn theia_without_md5(p: &str) -> Vec<u8> {
    theia(p, &[(&format!("{p}_DAT_1"), vec![("obs.txt", b"1,2\n".to_vec())])], false)
}

fn old_mtime(path: &Path) {
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    fs::File::options().write(true).open(path).unwrap().set_modified(old).unwrap();
}

// ---------------------------------------------------------------- point 1

#[test]
fn every_command_finds_its_config_the_same_way() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[checks]\nrequire_md5 = true\n");
    let a = site.root();
    let elsewhere = tempfile::tempdir().unwrap();
    let b = elsewhere.path();
    let cfg = site.config.to_str().unwrap();
    fs::create_dir_all(a.join("drop/MSEC/new")).unwrap();
    let archive = a.join("MSEC_X.zip");
    fs::write(&archive, theia_without_md5("MSEC")).unwrap();
    let arc = archive.to_str().unwrap();
    let code = |o: &Output| o.status.code();

    // check: ./config.toml, $DEPOT_CONFIG, -c and --config all give its
    // require_md5, so a producer's check agrees with the daemon.
    let o = depot_in(a, &["check", "MSEC_X.zip", "--json"], &[]);
    assert_eq!(code(&o), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("MD5_MISSING"), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("./config.toml"), "{}", text(&o));
    for (args, env) in [
        (vec!["check", arc], vec![("DEPOT_CONFIG", cfg)]),
        (vec!["check", arc, "-c", cfg], vec![]),
        (vec!["check", arc, "--config", cfg], vec![]),
    ] {
        let o = depot_in(b, &args, &env);
        assert_eq!(code(&o), Some(1), "{args:?} {env:?}: {}", text(&o));
    }
    if !system_config() {
        let o = depot_in(b, &["check", arc], &[]);
        assert_eq!(code(&o), Some(0), "{}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains("built-in defaults"), "{}", text(&o));
    }

    // status from another folder: $DEPOT_CONFIG; from the site: ./config.toml.
    let o = depot_in(b, &["status"], &[("DEPOT_CONFIG", cfg)]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let o = depot_in(a, &["status"], &[]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let o = depot_in(b, &["status", "-c", cfg], &[]);
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    if !system_config() {
        let o = depot_in(b, &["status"], &[]);
        assert_eq!(code(&o), Some(2), "{}", text(&o));
        assert!(text(&o).contains("no config found") && text(&o).contains("DEPOT_CONFIG"), "{}", text(&o));
    }
    // $DEPOT_CONFIG naming a file that is not there is an error that says so.
    let o = depot_in(a, &["status"], &[("DEPOT_CONFIG", "/nonexistent/depot.toml")]);
    assert_eq!(code(&o), Some(2), "{}", text(&o));
    assert!(text(&o).contains("$DEPOT_CONFIG") && text(&o).contains("/nonexistent/depot.toml"), "{}", text(&o));

    // Every other command the same way.
    for args in [
        vec!["config", "check"],
        vec!["history", "MSEC"],
        vec!["status", "MSEC"],
        vec!["sample", "MSEC", "s.zip"],
        vec!["producer", "list"],
    ] {
        let o = depot_in(b, &args, &[("DEPOT_CONFIG", cfg)]);
        assert_eq!(code(&o), Some(0), "{args:?}: {}", text(&o));
    }
    let o = depot_in(a, &["config", "check"], &[]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("# effective configuration of config.toml"), "{}", text(&o));
    let o = depot_in(b, &["ingest", arc, "--producer", "MSEC"], &[("DEPOT_CONFIG", cfg)]);
    assert_eq!(code(&o), Some(1), "require_md5 from $DEPOT_CONFIG: {}", text(&o));
    // The daemon too: it starts on ./config.toml and stops on SIGTERM.
    let daemon = Daemon(Some(
        Command::new(BIN)
            .arg("run")
            .current_dir(a)
            .env_remove("DEPOT_CONFIG")
            .stderr(fs::File::create(a.join("daemon.log")).unwrap())
            .spawn()
            .unwrap(),
    ));
    wait_for(&site, "the daemon ready", 20, || site.log().contains("ready"));
    assert!(site.log().contains(&format!("drop_root={}", a.join("drop").display())), "{}", site.log());
    assert_eq!(stop(daemon), Some(0));
}

// ---------------------------------------------------------------- point 2

/// The log lines written after `from` bytes.
fn lines_after(log: &str, from: usize) -> Vec<String> {
    log.get(from..).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn logs_are_plain_failures_warn_and_a_redis_outage_is_two_lines() {
    let port = free_port();
    let redis = Redis::start_on(port);
    let site = Site::new(&redis.url(), "");
    let daemon = site.start();
    let worker = site.start_role("worker");
    let worker_log = || fs::read_to_string(site.root().join("worker.log")).unwrap_or_default();
    wait_for(&site, "ready", 20, || site.log().contains("ready"));
    site.drop_rsync("LOGS", "LOGS_1.zip", b"not a zip");
    wait_for(&site, "the failure", 30, || redis.deposits().iter().any(terminal));
    let both = || format!("{}{}", site.log(), worker_log());
    wait_for(&site, "the finished line", 10, || both().contains("finished"));
    let all = both();
    assert!(!all.contains('\u{1b}'), "escape codes in a log file:\n{all}");
    let finished: Vec<&str> = all.lines().filter(|l| l.contains("finished") && l.contains("state=FAILURE")).collect();
    assert!(finished.len() == 1 && finished[0].contains(" WARN "), "{all}");
    assert!(finished[0].contains("error_code=NOT_A_ZIP") && finished[0].contains("producer=LOGS"), "{all}");
    assert!(!all.contains("Redis is back"), "a normal start is not a return:\n{all}");
    assert!(!all.contains("apalis"), "the queue library's own lines:\n{all}");

    // Every key under the prefix but the one apalis-redis keeps for itself,
    // which the README names.
    let mut c = redis.conn().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    let outside: Vec<&String> = keys.iter().filter(|k| !k.starts_with("depot:")).collect();
    assert_eq!(outside, ["core:apalis:queues:list"], "{keys:?}");
    let reference = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reference.md")).unwrap();
    assert!(reference.contains("`core:apalis:queues:list`"));

    // Ten seconds without Redis: one line when it goes, one when it is
    // back, in each process (the worker-only one has no scheduler to say it).
    let (d0, w0) = (site.log().len(), worker_log().len());
    drop(redis);
    std::thread::sleep(Duration::from_secs(10));
    let redis = Redis::start_on(port);
    wait_for(&site, "Redis is back", 30, || site.log()[d0..].contains("Redis is back"));
    wait_for(&site, "the worker back", 30, || worker_log()[w0..].contains("Redis is back"));
    std::thread::sleep(Duration::from_secs(2));
    let (dl, wl) = (lines_after(&site.log(), d0), lines_after(&worker_log(), w0));
    assert_eq!(dl.len(), 2, "{dl:#?}");
    assert!(dl[0].contains(" WARN ") && dl[0].contains("Redis unreachable"), "{dl:#?}");
    assert!(dl[1].contains(" INFO ") && dl[1].contains("Redis is back"), "{dl:#?}");
    assert_eq!(wl.len(), 2, "{wl:#?}");
    assert!(wl[0].contains("Redis unreachable") && wl[1].contains("Redis is back"), "{wl:#?}");
    // And the workers work again.
    site.drop_rsync("LOGS", "LOGS_2.zip", &good_theia("LOGS", "2"));
    wait_for(&site, "a deposit after the outage", 30, || {
        redis.deposits().iter().any(|d| d.get("state").map(String::as_str) == Some("SUCCESS"))
    });
    assert_eq!(stop(worker), Some(0));
    assert_eq!(stop(daemon), Some(0));
}

/// Under systemd, the journal gets every field: a real systemd-journald in
/// a mount namespace of its own (its sockets and files on tmpfs), the
/// daemon's stderr named by JOURNAL_STREAM as systemd does. Without root,
/// unshare or journald, the unit test `logging::tests` checks the field
/// set the layer is given.
#[test]
fn journal_fields_with_a_real_journald() {
    let journald = ["/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(journald) = journald.filter(|_| is_root() && have("unshare") && have("journalctl")) else {
        eprintln!(
            "skipped: needs root, unshare, journalctl and systemd-journald (the field set is checked by logging::tests)"
        );
        return;
    };
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let root = site.root().display();
    let script = format!(
        r#"set -e
mount --make-rprivate /
mkdir -p /run/systemd/journal /run/log
mount -t tmpfs tmpfs /run/systemd/journal
mount -t tmpfs tmpfs /run/log
{journald} &
j=$!
for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.1; done
cd {root}
: > stderr.txt
JOURNAL_STREAM="$(stat -c '%d:%i' stderr.txt)" RUST_LOG=info {BIN} run -c config.toml 2>>stderr.txt &
d=$!
mkdir -p drop/JRNL/new
printf 'not a zip' > drop/JRNL/new/.JRNL_1.zip.tmp && mv drop/JRNL/new/.JRNL_1.zip.tmp drop/JRNL/new/JRNL_1.zip
for i in $(seq 300); do [ -n "$(ls drop/JRNL/rejected 2>/dev/null)" ] && break; sleep 0.1; done
sleep 1
kill -TERM $d; wait $d || true
id="$(ls drop/JRNL/rejected)"
echo "$id" > id.txt
journalctl -D /run/log/journal --no-pager -o json PRODUCER=JRNL > producer.json
journalctl -D /run/log/journal --no-pager -o json DEPOSIT="$id" > deposit.json
kill $j
"#
    );
    let out = Command::new("unshare").args(["-m", "sh", "-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let root = site.root();
    let id = fs::read_to_string(root.join("id.txt")).unwrap().trim().to_owned();
    assert!(id.contains("-JRNL-"), "{id}");
    let read = |f: &str| -> Vec<HashMap<String, serde_json::Value>> {
        fs::read_to_string(root.join(f)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let s =
        |e: &HashMap<String, serde_json::Value>, k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let by_producer = read("producer.json");
    let by_deposit = read("deposit.json");
    assert!(by_deposit.len() >= 4, "claimed, queued, started, finished: {by_deposit:#?}");
    assert!(by_deposit.iter().all(|e| s(e, "DEPOSIT") == id && s(e, "PRODUCER") == "JRNL"), "{by_deposit:#?}");
    assert_eq!(by_producer.len(), by_deposit.len(), "{by_producer:#?}");
    let finished = by_deposit.iter().find(|e| s(e, "MESSAGE").starts_with("finished")).expect("a finished line");
    assert_eq!(s(finished, "PRIORITY"), "4", "FAILURE at WARN: {finished:#?}");
    assert_eq!(s(finished, "ERROR_CODE"), "NOT_A_ZIP");
    assert_eq!(s(finished, "STATE"), "FAILURE");
    assert_eq!(s(finished, "SYSLOG_IDENTIFIER"), "depot");
    // The message is the whole line: `journalctl -u depot` alone tells it.
    assert!(s(finished, "MESSAGE").contains(&format!("deposit={id}")), "{finished:#?}");
    // Nothing went to stderr: the journal has it all, once.
    assert_eq!(fs::read_to_string(root.join("stderr.txt")).unwrap(), "");
}

// ---------------------------------------------------------------- point 3

#[test]
fn rejected_deposits_are_pruned_after_the_retention() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[retention]\nrejected_days = 30\n");
    let rej = site.root().join("drop/PRUN/rejected");
    let old = "20200101T000000Z-PRUN-0000abcd";
    let young = "20200102T000000Z-PRUN-0000abce";
    for (id, finished) in [(old, "2020-01-01T00:00:05Z".to_owned()), (young, now_rfc3339(Duration::from_secs(86_400)))]
    {
        fs::create_dir_all(rej.join(id)).unwrap();
        fs::write(rej.join(id).join("PRUN_1.zip"), b"x").unwrap();
        fs::write(
            rej.join(id).join("report.json"),
            format!("{{\"state\": \"FAILURE\", \"finished\": \"{finished}\"}}"),
        )
        .unwrap();
    }
    let daemon = site.start();
    wait_for(&site, "the old folder pruned", 30, || !rej.join(old).exists());
    assert!(rej.join(young).join("PRUN_1.zip").is_file(), "a deposit rejected yesterday stays");
    assert!(site.log().contains("removed rejected deposits older than retention.rejected_days"), "{}", site.log());
    assert_eq!(stop(daemon), Some(0));
}

/// RFC 3339 UTC of now minus `ago`, by the shell's date (no time crate here).
fn now_rfc3339(ago: Duration) -> String {
    let out = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!(
                "@{}",
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - ago.as_secs()
            ),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

// ---------------------------------------------------------------- point 4

#[test]
fn status_and_history_tell_the_truth() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let root = site.root();
    let cfg = site.config.to_str().unwrap().to_owned();
    let run = |args: &[&str]| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["-c", &cfg]);
        depot_in(root, &a, &[])
    };
    fs::write(root.join("TRUE_THEIA.zip"), good_theia("TRUE", "1")).unwrap();
    fs::write(root.join("TRUE_BAD.zip"), b"not a zip").unwrap();
    let o = run(&["ingest", "TRUE_THEIA.zip", "--producer", "TRUE", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let good: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let good_id = good["deposit"].as_str().unwrap().to_owned();
    let o = run(&["ingest", "TRUE_BAD.zip", "--producer", "TRUE", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let bad_id =
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["deposit"].as_str().unwrap().to_owned();

    // depot ingest recorded both, under the daemon's keys.
    let h = redis.hgetall(&format!("depot:deposit:{good_id}"));
    assert_eq!(h["state"], "SUCCESS", "{h:?}");
    assert_eq!((h["file"].as_str(), h["via"].as_str()), ("TRUE_THEIA.zip", "depot ingest"), "{h:?}");
    assert!(h["release"].ends_with(&format!("TRUE/releases/{good_id}")), "{h:?}");
    let p = redis.hgetall("depot:producer:TRUE");
    assert_eq!(p["current_release"], h["release"], "{p:?}");
    assert_eq!((p["last_state"].as_str(), p["last_deposit"].as_str()), ("FAILURE", bad_id.as_str()), "{p:?}");
    let states: Vec<String> =
        redis.events().into_iter().filter(|e| e["id"] == good_id).map(|e| e["state"].clone()).collect();
    assert_eq!(states, ["CREATED", "PROGRESS", "SUCCESS"]);
    assert_eq!(redis.hgetall(&format!("depot:deposit:{bad_id}"))["error_code"], "NOT_A_ZIP");

    // status: file, state, code and time per deposit.
    let o = run(&["status", "TRUE"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let line = |id: &str| out.lines().find(|l| l.starts_with(id)).unwrap_or_default().to_owned();
    let (g, b) = (line(&good_id), line(&bad_id));
    assert!(g.contains("TRUE_THEIA.zip") && g.contains("SUCCESS") && g.contains('T') && g.ends_with('Z'), "{out}");
    assert!(b.contains("TRUE_BAD.zip") && b.contains("FAILURE") && b.contains("NOT_A_ZIP"), "{out}");
    for args in [vec!["status", "--failed"], vec!["status", "TRUE", "--failed"]] {
        let out = String::from_utf8_lossy(&run(&args).stdout).into_owned();
        let ids: Vec<&str> = out.lines().filter_map(|l| l.split(' ').next()).filter(|w| w.contains("-TRUE-")).collect();
        assert_eq!(ids, [bad_id.as_str()], "{args:?}: {out}");
    }
    let o = run(&["status"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("TRUE_BAD.zip"), "{}", text(&o));
    // Headers that say what each column is.
    let head = String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_owned();
    assert!(head.starts_with("PRODUCER") && head.contains("LAST STATE") && head.contains("LAST FILE"), "{head}");
    let out = String::from_utf8_lossy(&run(&["status", "--failed"]).stdout).into_owned();
    assert!(out.lines().next().unwrap_or_default().contains("PRODUCER"), "{out}");
    let row = out.lines().find(|l| l.starts_with(&bad_id)).unwrap_or_default();
    assert!(row.split_whitespace().nth(1) == Some("TRUE"), "{out}");
    // --json: numbers are numbers.
    let v: serde_json::Value = serde_json::from_slice(&run(&["status", &good_id, "--json"]).stdout).unwrap();
    assert!(v["size"].is_u64() && v["attempts"].is_u64() && v["files"].is_u64() && v["bytes_done"].is_u64(), "{v}");
    assert_eq!(v["state"], "SUCCESS");
    let v: serde_json::Value = serde_json::from_slice(&run(&["status", "TRUE", "--json"]).stdout).unwrap();
    assert!(v["deposits"].as_array().unwrap().iter().any(|d| d["files"].is_u64()), "{v}");
    // Unknown producer or id: exit 2.
    for args in [vec!["status", "NOPE"], vec!["status", "nope"], vec!["status", "20200101T000000Z-TRUE-deadbeef"]] {
        assert_eq!(run(&args).status.code(), Some(2), "{args:?}");
    }
    assert_eq!(run(&["history", "NOPE"]).status.code(), Some(2));
    assert_eq!(run(&["history", "nope"]).status.code(), Some(2));

    // history: from Redis, then from the folders once Redis is emptied.
    let o = run(&["history", "TRUE"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains(&good_id) && out.contains(&bad_id) && !out.contains("(from"), "{out}");
    redis.cmd(&["FLUSHALL"]).unwrap();
    let o = run(&["history", "TRUE"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(out.contains("Redis has no record"), "{out}");
    let (g, b) = (
        out.lines().find(|l| l.starts_with(&good_id)).unwrap_or_default(),
        out.lines().find(|l| l.starts_with(&bad_id)).unwrap_or_default(),
    );
    assert!(g.contains("SUCCESS") && g.contains("TRUE_THEIA.zip") && g.contains("(from releases/"), "{out}");
    assert!(b.contains("FAILURE") && b.contains("NOT_A_ZIP") && b.contains("TRUE_BAD.zip"), "{out}");
    assert!(b.contains(&format!("(from rejected/{bad_id})")), "{out}");
    let v: serde_json::Value = serde_json::from_slice(&run(&["history", "TRUE", "--json"]).stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert!(rows.iter().any(|r| r["files"].is_u64()), "{v}");
    // A deposit Redis forgot: status finds it in its folder.
    let o = run(&["status", &bad_id]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("NOT_A_ZIP"));

    // Redis away: ingest goes on and says it is not recorded.
    drop(redis);
    fs::write(root.join("TRUE_2.zip"), good_theia("TRUE", "2")).unwrap();
    let o = run(&["ingest", "TRUE_2.zip", "--producer", "TRUE"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not recorded in Redis"), "{}", text(&o));
    // A deposit waiting in the spool (claimed by a daemon, Redis down
    // since), as the daemon writes it.
    let waiting = "20991231T000000Z-TRUE-0000abcd";
    let spool = root.join("drop/.depot/spool");
    fs::create_dir_all(&spool).unwrap();
    fs::write(spool.join(format!("{waiting}=TRUE_3.zip")), good_theia("TRUE", "3")).unwrap();
    fs::write(
        spool.join(format!("{waiting}.json")),
        format!(
            r#"{{"id":"{waiting}","producer":"TRUE","name":"TRUE_3.zip","claimed_ns":1,"size":1,"sidecar":false,"created":"2099-12-31T00:00:00Z"}}"#
        ),
    )
    .unwrap();
    // history still answers, from disk, and says why.
    let o = run(&["history", "TRUE"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains(&bad_id), "{out}");
    assert!(out.contains("Redis is unreachable") && !out.contains("Redis has no record"), "{out}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("Redis is unreachable"), "{}", text(&o));
    let w = out.lines().find(|l| l.starts_with(waiting)).unwrap_or_default();
    assert!(w.contains("TRUE_3.zip") && w.contains("WAITING") && w.contains("(from spool)"), "{out}");
    // Every row read from disk has its FILE, an older release's too: the
    // archive's name, from its manifest.json.
    let old = out.lines().find(|l| l.starts_with(&good_id)).unwrap_or_default();
    assert!(old.contains("TRUE_THEIA.zip") && old.contains("(from releases/"), "{out}");
    let manifest = root.join(format!("publish/TRUE/releases/{good_id}/manifest.json"));
    let m: serde_json::Value = serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["archive"], "TRUE_THEIA.zip");
    // The spool was only read.
    assert!(spool.join(format!("{waiting}=TRUE_3.zip")).is_file());
}

// ---------------------------------------------------------------- point 5

fn metric(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// The operator guide's alert rules, as written there.
fn readme_rules() -> String {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operator-guide.md")).unwrap();
    let start = readme.find("```yaml\ngroups:").expect("the operator guide's alert rules") + "```yaml\n".len();
    let end = readme[start..].find("```").unwrap() + start;
    readme[start..end].to_owned()
}

const RULES_TEST: &str = r#"rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'depot_last_success_timestamp_seconds{producer="QUIE",instance="h:9187",job="depot"}'
        values: '0x13200'
      - series: 'depot_last_success_timestamp_seconds{producer="BUSY",instance="h:9187",job="depot"}'
        values: '0+60x13200'
    alert_rule_test:
      - eval_time: 7d
        alertname: DepotProducerQuiet
        exp_alerts: []
      - eval_time: 9d
        alertname: DepotProducerQuiet
        exp_alerts:
          - exp_labels: {severity: warning, producer: QUIE, instance: "h:9187", job: depot}
            exp_annotations:
              summary: "QUIE: no successful deposit for 9d 0h 0m 0s"
  - interval: 1m
    input_series:
      - series: 'depot_redis_up{instance="h:9187",job="depot"}'
        values: '1 1 0x20'
      - series: 'up{instance="h:9187",job="depot"}'
        values: '1x5 0x20'
    alert_rule_test:
      - eval_time: 4m
        alertname: DepotRedisDown
        exp_alerts: []
      - eval_time: 10m
        alertname: DepotRedisDown
        exp_alerts:
          - exp_labels: {severity: critical, instance: "h:9187", job: depot}
            exp_annotations:
              summary: "depot on h:9187 cannot reach Redis: deposits wait in new/ and the spool"
      - eval_time: 15m
        alertname: DepotDown
        exp_alerts:
          - exp_labels: {severity: critical, instance: "h:9187", job: depot}
            exp_annotations:
              summary: "depot on h:9187 does not answer /metrics"
"#;

#[test]
fn metrics_to_alert_on_and_the_readme_rules() {
    let redis = Redis::start();
    let port = free_port();
    let site = Site::new(&redis.url(), &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let daemon = site.start();
    site.drop_rsync("QUIE", "QUIE_1.zip", &good_theia("QUIE", "1"));
    wait_for(&site, "success", 30, || redis.deposits().iter().any(terminal));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let body = http_get(port, "/metrics");
    let last = metric(&body, "depot_last_success_timestamp_seconds{producer=\"QUIE\"}").expect(&body);
    assert!((now - last).abs() < 60.0, "{last} vs {now}\n{body}");
    assert!(body.contains("# TYPE depot_deposit_duration_seconds histogram"), "{body}");
    assert_eq!(metric(&body, "depot_deposit_duration_seconds_count"), Some(1.0), "{body}");
    assert_eq!(metric(&body, "depot_deposit_duration_seconds_bucket{le=\"+Inf\"}"), Some(1.0), "{body}");
    assert!(metric(&body, "depot_deposit_duration_seconds_sum").is_some_and(|s| s > 0.0 && s < 60.0), "{body}");
    assert_eq!(stop(daemon), Some(0));
    // A restart keeps each producer's last success (from Redis), so a quiet
    // producer stays quiet and a busy one does not look quiet.
    let daemon = site.start();
    wait_for(&site, "metrics after a restart", 20, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && metric(&http_get(port, "/metrics"), "depot_last_success_timestamp_seconds{producer=\"QUIE\"}").is_some()
    });
    let again = metric(&http_get(port, "/metrics"), "depot_last_success_timestamp_seconds{producer=\"QUIE\"}").unwrap();
    assert!((again - last).abs() <= 1.0, "{again} vs {last}");
    assert_eq!(stop(daemon), Some(0));

    // The README's rules: every metric they use is one depot serves.
    let rules = readme_rules();
    for m in ["depot_last_success_timestamp_seconds", "depot_redis_up"] {
        assert!(rules.contains(m) && body.contains(&format!("# TYPE {m} gauge")), "{m}");
    }
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("rules.yml"), &rules).unwrap();
    fs::write(dir.path().join("test.yml"), RULES_TEST).unwrap();
    if have("promtool") {
        for args in [vec!["check", "rules", "rules.yml"], vec!["test", "rules", "test.yml"]] {
            let o = Command::new("promtool").args(&args).current_dir(dir.path()).output().unwrap();
            assert!(o.status.success(), "promtool {args:?}:\n{}", text(&o));
        }
    } else {
        // No promtool (.ci/run installs it): the structure, by hand.
        eprintln!("promtool not found: the rules are parsed, not evaluated");
        let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
        assert_eq!(alerts, ["DepotProducerQuiet", "DepotRedisDown", "DepotDown"]);
        assert_eq!(rules.lines().filter(|l| l.trim().starts_with("expr: ")).count(), 3);
        assert!(rules.starts_with("groups:\n") && !rules.contains('\t'));
    }
}

// ---------------------------------------------------------------- point 6

#[test]
fn check_speaks_to_scientists() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = dir.join("config.toml");
    fs::write(
        &cfg,
        concat!(
            "drop_root = \"drop\"\npublish_root = \"publish\"\n[producers.PLAN]\nprofile = \"plain\"\n[producers.LIMT]\nprofile = \"plain\"\n[producers.LIMT.limits]\nmax_entries = 1\n[producers.BAGS]\nprofile = \"bagit\"\n",
            "[producers.FMTI]\nprofile = \"plain\"\n[[producers.FMTI.checks.validators]]\ncommand = [\"grep\", \"-q\", \"^good\", \"{}\"]\n",
            "[producers.VIRS]\nprofile = \"plain\"\n[[producers.VIRS.checks.validators]]\nscope = \"release\"\ncode = \"VIRUS_FOUND\"\n",
            "command = [\"sh\", \"-c\", \"! grep -rq EICAR \\\"$1\\\"\", \"sh\", \"{}\"]\n",
        ),
    )
    .unwrap();
    // A missing file, a folder: usage errors (exit 2), no report.
    for (what, path) in [("missing", dir.join("MSEC_NONE.zip")), ("folder", dir.to_path_buf())] {
        let o = depot_in(dir, &["check", path.to_str().unwrap(), "--producer", "MSEC"], &[]);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o));
        assert!(o.stdout.is_empty(), "{what}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("internal problem") && err.contains(path.to_str().unwrap()), "{what}: {err}");
    }
    if !is_root() {
        let locked = dir.join("MSEC_LOCKED.zip");
        fs::write(&locked, good_theia("MSEC", "1")).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        let o = depot_in(dir, &["check", locked.to_str().unwrap()], &[]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("cannot read"), "{}", text(&o));
    }
    let mut symlink = RawEntry::new("link", "target.txt", STORED);
    symlink.external_attr = 0o120777 << 16;
    let mut encrypted = RawEntry::new("secret.txt", "x", STORED);
    encrypted.flags |= 1;
    let bzip2 = RawEntry::new("b.txt", "BZh9", 12);
    let good = good_theia("MSEC", "1");
    let mut cut = good.clone();
    cut.truncate(good.len() - 30);
    let md5 = |d: &[u8]| md5hex(d);
    let dat = |files: &[(&str, &str)]| {
        let mut z = RawZip::new();
        for (n, d) in files {
            z = z.file(n, *d);
        }
        z.build()
    };
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("NOT_A_ZIP", "PLAN", b"these are my data".to_vec()),
        ("ZIP_CORRUPT", "MSEC", cut),
        ("UNSAFE_PATH", "PLAN", RawZip::new().file("../escape.txt", "x").build()),
        ("SYMLINK", "PLAN", RawZip::new().raw(symlink).build()),
        ("ENCRYPTED", "PLAN", RawZip::new().raw(encrypted).build()),
        ("UNSUPPORTED_METHOD", "PLAN", RawZip::new().raw(bzip2).build()),
        ("LIMIT_EXCEEDED", "LIMT", RawZip::new().file("a.txt", "a").file("b.txt", "b").build()),
        ("NAME_CONFLICT", "PLAN", RawZip::new().file("data.txt", "a").file("DATA.txt", "b").build()),
        ("NAME_INVALID", "PLAN", RawZip::new().file("CON.txt", "a").build()),
        (
            "MD5_MISMATCH",
            "PLAN",
            RawZip::new().file("a.txt", "a").file("MD5SUMS", format!("{}  a.txt\n", md5(b"b"))).build(),
        ),
        (
            "CHECKSUM_MISMATCH",
            "PLAN",
            RawZip::new().file("a.txt", "a").file("SHA256SUMS", format!("{}  a.txt\n", "0".repeat(64))).build(),
        ),
        (
            "MD5_MISSING",
            "PLAN",
            RawZip::new()
                .file("a.txt", "a")
                .file("MD5SUMS", format!("{}  a.txt\n{}  gone.txt\n", md5(b"a"), md5(b"g")))
                .build(),
        ),
        (
            "MD5_UNLISTED",
            "PLAN",
            RawZip::new()
                .file("a.txt", "a")
                .file("b.txt", "b")
                .file("MD5SUMS", format!("{}  a.txt\n", md5(b"a")))
                .build(),
        ),
        ("PIVOT_MISSING", "MSEC", RawZip::new().stored("MSEC_DAT_1.zip", dat(&[("o.txt", "1")])).build()),
        (
            "PIVOT_INVALID",
            "MSEC",
            RawZip::new()
                .file("MSEC_en.json", "{\"producer\": ")
                .stored("MSEC_DAT_1.zip", dat(&[("o.txt", "1")]))
                .build(),
        ),
        ("PRODUCER_MISMATCH", "MSEC", RawZip::new().file("MSEC_en.json", pivot("ABCD", &[])).build()),
        ("EMPTY_DEPOSIT", "PLAN", RawZip::new().dir("a/").build()),
        ("BAG_INVALID", "BAGS", RawZip::new().file("bag/data/a.txt", "a").build()),
        ("FORMAT_INVALID", "FMTI", RawZip::new().file("a.nc", "bad").build()),
        ("VIRUS_FOUND", "VIRS", RawZip::new().file("a.txt", "EICAR").build()),
        (
            "DATASET_MISMATCH",
            "MSEC",
            RawZip::new()
                .file("MSEC_en.json", pivot("MSEC", &[("MSEC_DAT_1", &["o.txt"])]))
                .stored("MSEC_DAT_2.zip", dat(&[("o.txt", "1")]))
                .build(),
        ),
    ];
    let mut seen = Vec::new();
    for (code, p, bytes) in cases {
        let path = dir.join(format!("{p}_{code}.zip"));
        fs::write(&path, bytes).unwrap();
        let args = ["check", path.to_str().unwrap(), "-c", cfg.to_str().unwrap()];
        let o = depot_in(dir, &args, &[]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(o.status.code(), Some(1), "{code}: {}", text(&o));
        let c = jobs::Code::parse(code).unwrap();
        assert!(out.contains(&format!("Error code:     {code} ")), "{code}: {out}");
        assert!(out.contains("would be REJECTED"), "{code}: {out}");
        assert!(out.contains(&format!("What was wrong: {}", c.summary())), "{code}: {out}");
        assert!(out.contains(&format!("What to do: {}", c.advice())), "{code}: {out}");
        let details = out.lines().find_map(|l| l.strip_prefix("Details:")).unwrap_or_default().trim();
        assert!(details.len() > 5, "{code}: {out}");
        for word in ["Received", "previous release", "internal problem", "check (id", "-check-", "Deposit id"] {
            assert!(!out.contains(word), "{code}: {word:?} in\n{out}");
        }
        seen.push(c);
    }
    // Every code a deposit can be refused with has been shown here.
    for c in jobs::Code::ALL {
        assert!(
            seen.contains(&c) || matches!(c, jobs::Code::IoError | jobs::Code::NoSpace | jobs::Code::ValidatorFailed),
            "{c} not shown"
        );
    }
    // An accepted one, in the same words.
    let ok = dir.join("MSEC_THEIA.zip");
    fs::write(&ok, good_theia("MSEC", "1")).unwrap();
    let o = depot_in(dir, &["check", ok.to_str().unwrap(), "-c", cfg.to_str().unwrap()], &[]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.starts_with("MSEC_THEIA.zip would be ACCEPTED: 4 files,") && !out.contains("Received"), "{out}");
}

// ---------------------------------------------------------------- point 7

#[test]
fn config_check_catches_operator_mistakes() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let root = site.root();
    let base = fs::read_to_string(&site.config).unwrap();
    let check = |text: &str| {
        let c = root.join("variant.toml");
        fs::write(&c, text).unwrap();
        let o = depot_in(root, &["config", "check", "-c", c.to_str().unwrap()], &[]);
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
    };
    let (code, out) = check(&base);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("# ok: drop_root and publish_root are apart"), "{out}");
    // A site under /tmp (1777) with a producer: sshd's chroot rule is
    // broken above drop_root, and said so without advice to chown or
    // chmod /tmp, a folder that is not depot's.
    fs::create_dir_all(root.join("drop/MSEC/new")).unwrap();
    let (_, out) = check(&base);
    assert!(!out.contains("chmod go-w /tmp") && !out.contains("chown root:root /tmp "), "{out}");
    if root.starts_with("/tmp") && fs::metadata("/tmp").is_ok_and(|m| m.permissions().mode() & 0o002 != 0) {
        assert!(out.contains("/tmp is not depot's to change"), "{out}");
    }
    fs::remove_dir_all(root.join("drop/MSEC")).unwrap();

    let one = base.replace("publish_root = \"publish\"", "publish_root = \"drop\"");
    let (code, out) = check(&one);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("# FAILED: drop_root and publish_root are one folder"), "{out}");
    fs::create_dir_all(root.join("drop/pub")).unwrap();
    let nested = base.replace("publish_root = \"publish\"", "publish_root = \"drop/pub\"");
    let (code, out) = check(&nested);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("# FAILED: publish_root") && out.contains("is inside drop_root"), "{out}");
    fs::remove_dir(root.join("drop/pub")).unwrap();
    // depot run refuses them too.
    fs::write(root.join("variant.toml"), &one).unwrap();
    let o = depot_in(root, &["run", "-c", "variant.toml"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("one folder"), "{}", text(&o));

    let hook = root.join("hook.sh");
    fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o644)).unwrap();
    for (command, says) in [
        ("/nonexistent/notify-producer".to_owned(), "notify.command: /nonexistent/notify-producer: No such file"),
        (hook.display().to_string(), "is not executable"),
        ("no-such-notify-hook-on-path".to_owned(), "not in PATH"),
    ] {
        let (code, out) = check(&format!("{base}[notify]\ncommand = [{command:?}]\n"));
        assert_eq!(code, Some(2), "{out}");
        assert!(out.contains("# FAILED: notify.command") && out.contains(says), "{says}: {out}");
    }
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let (code, out) = check(&format!("{base}[notify]\ncommand = [{:?}]\n", hook.display().to_string()));
    assert_eq!(code, Some(0), "{out}");

    // A folder the pattern does not take, and a producer's folders that
    // are not as the README's table gives them: warned, exit 0.
    fs::create_dir_all(root.join("drop/Msec/new")).unwrap();
    fs::create_dir_all(root.join("drop/MSEC/new")).unwrap();
    fs::set_permissions(root.join("drop/MSEC/new"), fs::Permissions::from_mode(0o777)).unwrap();
    let (code, out) = check(&base);
    assert_eq!(code, Some(0), "{out}");
    let warn = |needle: &str| out.lines().any(|l| l.starts_with("# warning: ") && l.contains(needle));
    assert!(warn("Msec does not match producers.pattern") && warn("did you mean MSEC/?"), "{out}");
    assert!(warn("producer MSEC: "), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("# warning: ") && l.contains("/.depot")), "{out}");
}

// ---------------------------------------------------------------- point 8

#[test]
fn sample_deposits_are_accepted_and_shown_in_the_readme() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(
        dir.join("config.toml"),
        "drop_root = \"drop\"\npublish_root = \"publish\"\n[producers.IGNF]\nprofile = \"plain\"\n",
    )
    .unwrap();
    for p in ["MSEC", "ABCD", "IGNF"] {
        let out = format!("{p}_sample.zip");
        let o = depot_in(dir, &["sample", p, &out], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let o = depot_in(dir, &["check", &out, "--json"], &[]);
        assert_eq!(o.status.code(), Some(0), "{p}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(v["file_count"].as_u64().unwrap() >= 3, "{v}");
    }
    // IGNF's is plain (its profile in the config): folders, no pivot.
    let listing = Command::new("unzip").args(["-Z1", "IGNF_sample.zip"]).current_dir(dir).output();
    if let Some(l) = listing.ok().filter(|l| l.status.success()) {
        let names = String::from_utf8_lossy(&l.stdout).into_owned();
        assert!(names.contains("data/station_1.csv") && !names.contains(".json"), "{names}");
        let l = Command::new("unzip").args(["-Z1", "MSEC_sample.zip"]).current_dir(dir).output().unwrap();
        let names = String::from_utf8_lossy(&l.stdout).into_owned();
        assert_eq!(names.lines().collect::<Vec<_>>(), ["MSEC_en.json", "MSEC_DAT_1.zip", "MD5SUMS"]);
    }
    // --profile wins; an existing file is never replaced.
    let o = depot_in(dir, &["sample", "MSEC", "MSEC_plain.zip", "--profile", "plain"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let before = fs::read(dir.join("MSEC_sample.zip")).unwrap();
    let o = depot_in(dir, &["sample", "IGNF", "MSEC_sample.zip"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(fs::read(dir.join("MSEC_sample.zip")).unwrap(), before);

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for guide in ["docs/producer-guide.md", "docs/guide-producteur.md"] {
        let text = fs::read_to_string(root.join(guide)).unwrap();
        for word in ["**theia**", "**plain**", "depot sample", "MSEC_en.json", "MSEC_DAT_1.zip", "MD5SUMS", "dataFile"]
        {
            assert!(text.contains(word), "{guide}: {word}");
        }
    }
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let quick = &readme[readme.find("## Quick start").unwrap()..];
    let quick = &quick[..quick[3..].find("\n## ").unwrap() + 3];
    assert!(quick.contains("depot sample MSEC var/drop/MSEC/new/"), "{quick}");
}

// ---------------------------------------------------------------- point 9

/// A tiny HTTP server: every request's body, answered 200.
struct Webhook {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Webhook {
    fn start() -> Webhook {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
        let b = bodies.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let b = b.clone();
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
                        if let Some(h) = head_end {
                            let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if buf.len() >= h + 4 + len {
                                b.lock().unwrap().push(String::from_utf8_lossy(&buf[h + 4..h + 4 + len]).into_owned());
                                let _ =
                                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                                return;
                            }
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Webhook { port, bodies }
    }
}

/// What could be applied here of depot.service's sandbox, as a command
/// prefix (and what it is), or none.
fn sandbox(rw: &[&Path]) -> Option<(Vec<String>, &'static str)> {
    if !(is_root() && have("unshare") && have("setpriv")) {
        return None;
    }
    // User=: an unprivileged account (nobody); NoNewPrivileges=yes,
    // CapabilityBoundingSet= (empty), AmbientCapabilities= (empty);
    // ProtectSystem=strict + ReadWritePaths=: the whole tree read-only but
    // the site (its roots). Not applicable without systemd: IPAddressDeny/
    // Allow (cgroup BPF; curl to localhost is what IPAddressAllow=localhost
    // lets through anyway), SystemCallFilter, RestrictAddressFamilies,
    // MemoryDenyWriteExecute, PrivateUsers, PrivateTmp (the site lives in
    // /tmp here), ProtectKernel*, ProtectProc.
    let binds: String = rw.iter().map(|p| format!("mount --bind {0} {0} && ", p.display())).collect();
    let script = format!(
        "mount --make-rprivate / && {binds}mount -o remount,bind,ro / && \
         exec setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all \"$@\""
    );
    Some((
        ["unshare", "-m", "sh", "-c", &script, "sandbox"].map(String::from).to_vec(),
        "user nobody, no new privileges, no capabilities, file system read-only but the site",
    ))
}

#[test]
fn notify_hooks_are_bounded_clean_and_a_webhook_runs_in_the_sandbox() {
    let redis = Redis::start();
    let hook_server = Webhook::start();
    let tmp = tempfile::tempdir().unwrap();
    let marks = tmp.path().join("marks");
    fs::create_dir_all(&marks).unwrap();
    // The hook: post to the webhook (curl, as the README's), record its
    // environment and when it ran, and what it may do.
    let script = format!(
        r#"set -e
echo "start $(date +%s%N)" >> {m}/times.$$
env | grep '^DEPOT_' > {m}/env.$DEPOT_DEPOSIT
{{ id -u; grep -E '^(NoNewPrivs|CapBnd|CapEff):' /proc/self/status; touch /etc/depot-hook-probe 2>/dev/null && echo etc-writable || echo etc-read-only; }} > {m}/sandbox.$DEPOT_DEPOSIT
curl -sS --fail --max-time 10 -H 'Content-Type: text/plain' \
  --data-binary "$DEPOT_PRODUCER|$DEPOT_STATE|$DEPOT_FILE|$DEPOT_ERROR_CODE" http://127.0.0.1:{port}/depot
sleep 0.4
echo "end $(date +%s%N)" >> {m}/times.$$
"#,
        m = marks.display(),
        port = hook_server.port
    );
    let site = Site::new(
        &redis.url(),
        &format!("[notify]\ncommand = [\"/bin/sh\", \"-c\", {script:?}]\ntimeout_s = 20\nmax_running = 2\n"),
    );
    let producers = ["HKAA", "HKAB", "HKAC", "HKAD", "HKAE", "HKAF", "HKAG"];
    let dirs: Vec<PathBuf> = producers.iter().map(|p| site.new_dir(p)).collect();
    let applied = sandbox(&[site.root(), tmp.path()]);
    let daemon = match &applied {
        Some((prefix, what)) => {
            eprintln!("sandbox: {what}");
            let chown = |p: &Path| {
                assert!(Command::new("chown").args(["-R", "nobody:nogroup"]).arg(p).status().unwrap().success());
            };
            chown(site.root());
            chown(tmp.path());
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
            Daemon(Some(
                Command::new(&prefix[0])
                    .args(&prefix[1..])
                    .arg(BIN)
                    .args(["run", "-c"])
                    .arg(&site.config)
                    .env("RUST_LOG", "info")
                    .stderr(fs::File::create(site.root().join("daemon.log")).unwrap())
                    .spawn()
                    .unwrap(),
            ))
        }
        None => {
            eprintln!("sandbox skipped (needs root, unshare and setpriv): the hook runs unconfined");
            site.start()
        }
    };
    wait_for(&site, "ready", 20, || site.log().contains("ready"));
    // Seven deposits end at once: seven hooks, two at a time. The last
    // one's name holds a control character: claimed under a safe name, and
    // its hook's environment is clean.
    for (i, (p, d)) in producers.iter().zip(&dirs).enumerate() {
        let (name, bytes) = match i {
            6 => (format!("{p}_\u{1b}[31m.zip"), b"junk".to_vec()),
            _ if i % 2 == 0 => (format!("{p}_1.zip"), good_theia(p, "1")),
            _ => (format!("{p}_x.zip"), b"junk".to_vec()),
        };
        let tmp = d.join(format!(".{i}.tmp"));
        fs::write(&tmp, bytes).unwrap();
        old_mtime(&tmp);
        fs::rename(&tmp, d.join(&name)).unwrap();
    }
    wait_for(&site, "seven deposits ended", 60, || redis.deposits().iter().filter(|d| terminal(d)).count() == 7);
    wait_for(&site, "seven webhook calls", 60, || hook_server.bodies.lock().unwrap().len() == 7);
    wait_for(&site, "seven hooks done", 30, || {
        fs::read_dir(&marks)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("times."))
            .filter(|e| fs::read_to_string(e.path()).unwrap_or_default().contains("end "))
            .count()
            == 7
    });
    // The webhook heard of every deposit.
    let bodies = hook_server.bodies.lock().unwrap().clone();
    for p in producers {
        assert!(bodies.iter().any(|b| b.starts_with(&format!("{p}|"))), "{p}: {bodies:#?}");
    }
    assert!(bodies.iter().any(|b| b.starts_with("HKAA|SUCCESS|HKAA_1.zip|")), "{bodies:#?}");
    assert!(bodies.iter().any(|b| b.starts_with("HKAB|FAILURE|HKAB_x.zip|NOT_A_ZIP")), "{bodies:#?}");
    // Never more than notify.max_running at once.
    let mut events: Vec<(u128, i32)> = Vec::new();
    for e in fs::read_dir(&marks).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("times.") {
            for l in fs::read_to_string(e.path()).unwrap().lines() {
                let (kind, t) = l.split_once(' ').unwrap();
                events.push((t.parse().unwrap(), if kind == "start" { 1 } else { -1 }));
            }
        }
    }
    events.sort();
    let (mut now, mut peak) = (0, 0);
    for (_, d) in &events {
        now += d;
        peak = peak.max(now);
    }
    assert!(peak <= 2, "{peak} hooks at once: {events:?}");
    assert!(peak == 2, "seven hooks of 0.4 s never overlapped: {events:?}");
    // Their environment holds no control character.
    for e in fs::read_dir(&marks).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("env.") {
            let env = fs::read_to_string(e.path()).unwrap();
            for l in env.lines() {
                assert!(l.starts_with("DEPOT_") && !l.chars().any(char::is_control), "{l:?}");
            }
        }
    }
    // And the sandbox was in effect for the hooks.
    if applied.is_some() {
        for e in fs::read_dir(&marks).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("sandbox.") {
                let s = fs::read_to_string(e.path()).unwrap();
                assert!(s.starts_with("65534\n"), "{s}");
                assert!(s.contains("NoNewPrivs:\t1") && s.contains("CapBnd:\t0000000000000000"), "{s}");
                assert!(s.contains("etc-read-only"), "{s}");
            }
        }
    }
    assert!(!site.log().contains("notify.command failed"), "{}", site.log());
    assert_eq!(stop(daemon), Some(0));
}
