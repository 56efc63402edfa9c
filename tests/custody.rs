//! Custody against a hostile producer, end to end (real binary, real
//! redis-server, real folders): the producer controls the bytes, names,
//! links and timing of what is in its `new/`; nothing it does there may
//! make depot follow a link, read a file it cannot read, lose a deposit,
//! replace a file, or stall its queue.

#[path = "../jobs/tests/support/mod.rs"]
mod support;

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use support::*;

const SECRET: &str = "d41d8cd98f00b204e9800998ecf8427e TOPSECRET";

fn depot(site: &Site, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_depot")).args(args).arg("--config").arg(&site.config).output().unwrap()
}

fn of(redis: &Redis, p: &str) -> Vec<HashMap<String, String>> {
    let mut d: Vec<_> = redis.deposits().into_iter().filter(|d| d["producer"] == p).collect();
    d.sort_by(|a, b| a["id"].cmp(&b["id"]));
    d
}

/// Wait until producer `p` has `n` deposits, all terminal; returns them.
fn ended(site: &Site, redis: &Redis, p: &str, n: usize) -> Vec<HashMap<String, String>> {
    wait_for(site, &format!("{n} terminal deposits of {p}"), 60, || {
        let d = of(redis, p);
        d.len() == n && d.iter().all(terminal)
    });
    of(redis, p)
}

fn rejected(site: &Site, p: &str, id: &str) -> PathBuf {
    site.root().join("drop").join(p).join("rejected").join(id)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Every regular file under `dir`, links never followed.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files_under(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

#[test]
fn a_linked_sidecar_is_never_read_and_the_deposit_goes_on() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let outside = site.root().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret.txt"), SECRET).unwrap();
    let new = site.new_dir("SIDE");
    symlink(outside.join("secret.txt"), new.join("SIDE_THEIA.zip.md5")).unwrap();
    let daemon = site.start();
    site.drop_rsync("SIDE", "SIDE_THEIA.zip", &good_theia("SIDE", "s1"));
    let d = ended(&site, &redis, "SIDE", 1);
    assert_eq!(d[0]["state"], "SUCCESS", "{:?}\n{}", d[0], site.log());
    assert!(site.root().join("drop/SIDE/previous/SIDE_THEIA.zip").is_file());
    assert!(!site.root().join("drop/SIDE/previous/SIDE_THEIA.zip.md5").exists());
    // The link stayed where the producer put it, a link; never in the spool.
    assert!(new.join("SIDE_THEIA.zip.md5").is_symlink());
    assert_eq!(fs::read_dir(site.root().join("drop/.depot/spool")).unwrap().count(), 0);
    assert_eq!(stop(daemon), Some(0));
    // The secret is nowhere depot writes: folders, reports, Redis, log.
    let mut files = Vec::new();
    files_under(&site.root().join("drop"), &mut files);
    files_under(&site.root().join("publish"), &mut files);
    for f in files {
        let bytes = fs::read(&f).unwrap();
        assert!(!bytes.windows(9).any(|w| w == b"TOPSECRET"), "secret in {}", f.display());
    }
    let mut c = redis.conn().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    for k in keys {
        let dump: Option<Vec<u8>> = redis::cmd("DUMP").arg(&k).query(&mut c).unwrap();
        assert!(!dump.unwrap_or_default().windows(9).any(|w| w == b"TOPSECRET"), "secret in Redis key {k}");
    }
    let log = site.log();
    assert!(!log.contains("TOPSECRET"), "{log}");
    assert!(log.contains("sidecar ignored"), "{log}");
}

#[test]
fn a_linked_or_hard_linked_deposit_is_never_claimed() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let outside = site.root().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("LINK_OUT.zip"), good_theia("LINK", "outside")).unwrap();
    let new = site.new_dir("LINK");
    symlink(outside.join("LINK_OUT.zip"), new.join("LINK_1.zip")).unwrap();
    fs::hard_link(outside.join("LINK_OUT.zip"), new.join("LINK_2.zip")).unwrap();
    let daemon = site.start();
    site.drop_rsync("LINK", "LINK_3.zip", &good_theia("LINK", "mine"));
    let d = ended(&site, &redis, "LINK", 1);
    assert_eq!((d[0]["file"].as_str(), d[0]["state"].as_str()), ("LINK_3.zip", "SUCCESS"), "{}", site.log());
    // Several scan passes later, still nothing else claimed.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(of(&redis, "LINK").len(), 1);
    let obs = fs::read_to_string(site.root().join("publish/LINK/current/LINK_DAT_1/obs1.txt")).unwrap();
    assert_eq!(obs, "a,b\n1,mine\n");
    assert!(new.join("LINK_1.zip").is_symlink() && new.join("LINK_2.zip").is_file());
    assert!(outside.join("LINK_OUT.zip").is_file());
    assert_eq!(names_in(&site.root().join("drop/LINK/previous")), ["LINK_3.zip"]);
    assert_eq!(stop(daemon), Some(0));
    // Warned once each, not at every pass.
    let log = site.log();
    for n in ["LINK_1.zip", "LINK_2.zip"] {
        let warned = log.lines().filter(|l| l.contains("skipping") && l.contains(n)).count();
        assert_eq!(warned, 1, "{n}: {log}");
    }
}

#[test]
fn a_failing_upload_with_a_long_name_ends_once_and_the_next_goes_on() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let long = format!("LONG_{}.zip", "x".repeat(236));
    assert_eq!(long.len(), 245);
    let daemon = site.start();
    site.drop_rsync("LONG", &long, b"not a zip at all");
    let d = ended(&site, &redis, "LONG", 1);
    assert_eq!((d[0]["state"].as_str(), d[0]["error_code"].as_str()), ("FAILURE", "NOT_A_ZIP"), "{}", site.log());
    assert_eq!(d[0]["file"], long);
    let dir = rejected(&site, "LONG", &d[0]["id"]);
    assert_eq!(names_in(&dir), [long.as_str(), "report.json", "report.txt"]);
    let report: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!((report["deposit"].as_str(), report["code"].as_str()), (Some(d[0]["id"].as_str()), Some("NOT_A_ZIP")));
    site.drop_rsync("LONG", "LONG_THEIA.zip", &good_theia("LONG", "next"));
    let failed = d[0]["id"].clone();
    let d = ended(&site, &redis, "LONG", 2);
    let good = d.iter().find(|x| x["file"] == "LONG_THEIA.zip").unwrap();
    assert_eq!(good["state"], "SUCCESS", "{good:?}\n{}", site.log());
    let ends = redis.events().iter().filter(|e| e["id"] == failed && e["state"] == "FAILURE").count();
    assert_eq!(ends, 1);
    // Only a FAILURE can be retried.
    let out = depot(&site, &["retry", &good["id"]]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only FAILURE"), "{out:?}");
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn names_that_cannot_be_stored_fail_at_once_and_the_next_goes_on() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let new = site.new_dir("NAME");
    let daemon = site.start();
    let bad: [&[u8]; 2] = [b"NAME_\xff\xfe.zip", b"\x1b[31m.zip"];
    for raw in bad {
        let name = OsStr::from_bytes(raw);
        let tmp = new.join(".upload.tmp");
        fs::write(&tmp, good_theia("NAME", "bad")).unwrap();
        fs::write(new.join(".upload.md5.tmp"), b"anything").unwrap();
        let mut side = name.to_owned();
        side.push(".md5");
        fs::rename(new.join(".upload.md5.tmp"), new.join(side)).unwrap();
        fs::rename(&tmp, new.join(name)).unwrap();
    }
    let d = ended(&site, &redis, "NAME", 2);
    for dep in &d {
        assert_eq!(
            (dep["state"].as_str(), dep["error_code"].as_str(), dep["stage"].as_str()),
            ("FAILURE", "NAME_INVALID", "unpack"),
            "{dep:?}\n{}",
            site.log()
        );
        let id = &dep["id"];
        let safe = format!("{id}.zip");
        assert_eq!(dep["file"], safe);
        assert!(dep["error"].contains("rename the file"), "{dep:?}");
        let dir = rejected(&site, "NAME", id);
        assert_eq!(names_in(&dir), [safe.clone(), format!("{safe}.md5"), "report.json".into(), "report.txt".into()]);
        let txt = fs::read_to_string(dir.join("report.txt")).unwrap();
        assert!(txt.contains("NAME_INVALID") && !txt.contains('\x1b'), "{txt}");
    }
    // Named, escaped: which is which does not depend on claim order.
    let errors: Vec<&str> = d.iter().map(|x| x["error"].as_str()).collect();
    assert!(errors.iter().any(|e| e.contains(r"NAME_\xFF\xFE.zip")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains(r"\u{1b}[31m.zip")), "{errors:?}");
    assert!(errors.iter().all(|e| !e.contains('\x1b')));
    // Nothing of them left in new/, and the producer's next deposit goes on.
    assert!(names_in(&new).is_empty(), "{:?}", names_in(&new));
    site.drop_rsync("NAME", "NAME_THEIA.zip", &good_theia("NAME", "good"));
    let d = ended(&site, &redis, "NAME", 3);
    assert!(d.iter().any(|x| x["file"] == "NAME_THEIA.zip" && x["state"] == "SUCCESS"), "{d:?}");
    assert_eq!(stop(daemon), Some(0));
    assert!(!site.log().contains("\x1b[31m.zip"));
}

#[test]
fn two_failures_of_one_name_keep_two_folders() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let daemon = site.start();
    site.drop_rsync("TWOF", "TWOF_BAD.zip", b"first, not a zip");
    ended(&site, &redis, "TWOF", 1);
    site.drop_rsync("TWOF", "TWOF_BAD.zip", b"second, not a zip");
    let d = ended(&site, &redis, "TWOF", 2);
    let mut bodies = Vec::new();
    for dep in &d {
        assert_eq!(dep["state"], "FAILURE");
        let dir = rejected(&site, "TWOF", &dep["id"]);
        assert_eq!(names_in(&dir), ["TWOF_BAD.zip", "report.json", "report.txt"]);
        bodies.push(fs::read_to_string(dir.join("TWOF_BAD.zip")).unwrap());
    }
    bodies.sort();
    assert_eq!(bodies, ["first, not a zip", "second, not a zip"]);
    assert_eq!(names_in(&site.root().join("drop/TWOF/rejected")).len(), 2);
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn retry_never_replaces_a_newer_upload_and_runs_once() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let daemon = site.start();
    site.drop_rsync("RTRY", "RTRY_1.zip.md5", b"0123  RTRY_1.zip\n");
    site.drop_rsync("RTRY", "RTRY_1.zip.sha256", b"ab  RTRY_1.zip\n");
    site.drop_rsync("RTRY", "RTRY_1.zip", b"not a zip");
    let d = ended(&site, &redis, "RTRY", 1);
    assert_eq!(d[0]["state"], "FAILURE");
    let id = d[0]["id"].clone();
    // The daemon away, a newer upload of the same name waits in new/.
    assert_eq!(stop(daemon), Some(0));
    let new = site.new_dir("RTRY");
    fs::write(new.join("RTRY_1.zip"), b"newer upload").unwrap();
    let out = depot(&site, &["retry", &id]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("newer upload"), "{out:?}");
    assert_eq!(fs::read(new.join("RTRY_1.zip")).unwrap(), b"newer upload");
    let dir = rejected(&site, "RTRY", &id);
    assert_eq!(names_in(&dir), ["RTRY_1.zip", "RTRY_1.zip.md5", "RTRY_1.zip.sha256", "report.json", "report.txt"]);
    assert!(!new.join("RTRY_1.zip.md5").exists() && !new.join("RTRY_1.zip.sha256").exists(), "nothing moved");
    assert!(!redis.hgetall(&format!("depot:deposit:{id}")).contains_key("retried"));
    // The way clear, it goes back once.
    fs::rename(new.join("RTRY_1.zip"), site.root().join("kept.zip")).unwrap();
    let out = depot(&site, &["retry", &id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(fs::read(new.join("RTRY_1.zip")).unwrap(), b"not a zip");
    assert_eq!(fs::read(new.join("RTRY_1.zip.md5")).unwrap(), b"0123  RTRY_1.zip\n");
    assert_eq!(fs::read(new.join("RTRY_1.zip.sha256")).unwrap(), b"ab  RTRY_1.zip\n");
    assert_eq!(names_in(&dir), ["report.json", "report.txt", "retried"]);
    assert!(redis.hgetall(&format!("depot:deposit:{id}")).contains_key("retried"));
    let out = depot(&site, &["retry", &id]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already retried"), "{out:?}");
    // Either mark alone refuses it: Redis forgetting is not enough.
    redis.cmd(&["HDEL", &format!("depot:deposit:{id}"), "retried"]).unwrap();
    fs::write(dir.join("RTRY_1.zip"), b"put back by hand").unwrap();
    let out = depot(&site, &["retry", &id]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already retried"), "{out:?}");
    assert_eq!(fs::read(new.join("RTRY_1.zip")).unwrap(), b"not a zip");
}

#[test]
fn a_linked_previous_folder_stops_the_start() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    site.new_dir("PREV");
    let elsewhere = site.root().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let prev = site.root().join("drop/PREV/previous");
    symlink(&elsewhere, &prev).unwrap();
    let out = depot(&site, &["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("# FAILED:") && l.contains(&prev.display().to_string())), "{stdout}");
    let out = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(["run", "--config"])
        .arg(&site.config)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&prev.display().to_string()) && stderr.contains("symlink"), "{stderr}");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn uploads_named_like_depot_s_own_files_never_touch_its_reports() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let daemon = site.start();
    let names = ["report.json", "report.txt", "retried"];
    for n in names {
        site.drop_rsync("RSRV", n, format!("archive named {n}").as_bytes());
    }
    let d = ended(&site, &redis, "RSRV", 3);
    assert_eq!(stop(daemon), Some(0));
    for dep in &d {
        assert_eq!((dep["state"].as_str(), dep["error_code"].as_str()), ("FAILURE", "NAME_INVALID"), "{dep:?}");
        assert!(dep["error"].contains("depot's own files"), "{dep:?}");
        let id = &dep["id"];
        let dir = rejected(&site, "RSRV", id);
        let kept = format!("{id}.zip");
        assert_eq!(names_in(&dir), [kept.as_str(), "report.json", "report.txt"]);
        let json: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("report.json")).unwrap()).unwrap();
        assert_eq!((json["deposit"].as_str(), json["code"].as_str()), (Some(id.as_str()), Some("NAME_INVALID")));
        let txt = fs::read_to_string(dir.join("report.txt")).unwrap();
        assert!(txt.contains("REJECTED") && txt.contains("depot's own files"), "{txt}");
        let body = fs::read_to_string(dir.join(&kept)).unwrap();
        assert!(body.starts_with("archive named "), "{body}");
        // A retry moves the archive (under the name it was kept by), never a report.
        let out = depot(&site, &["retry", id]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(fs::read_to_string(site.new_dir("RSRV").join(&kept)).unwrap(), body);
        assert_eq!(names_in(&dir), ["report.json", "report.txt", "retried"]);
    }
    for n in names {
        assert!(!site.new_dir("RSRV").join(n).exists(), "{n}");
    }
}

/// An archive kept in previous/ or rejected/<id>/ is depot's from its
/// rotation on (a rename keeps the producer as owner, who could rewrite
/// it over sftp after the verdict): readable, not the producer's.
#[test]
fn kept_archives_stop_being_the_producer_s_files() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = fs::metadata("/proc/self").unwrap().uid();
    if me != 0 {
        eprintln!("skipped: a file of another uid needs root to make");
        return;
    }
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[producers.OWNR]\nprofile = \"plain\"\n");
    let new = site.new_dir("OWNR");
    for (name, bytes) in [("good.zip", RawZip::new().file("a.txt", "a").build()), ("bad.zip", b"not a zip".to_vec())] {
        let p = new.join(name);
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
        std::os::unix::fs::chown(&p, Some(12345), Some(12345)).unwrap();
    }
    let daemon = site.start();
    let d = ended(&site, &redis, "OWNR", 2);
    assert_eq!(stop(daemon), Some(0));
    let bad = d.iter().find(|d| d["file"] == "bad.zip").unwrap();
    for kept in [site.root().join("drop/OWNR/previous/good.zip"), rejected(&site, "OWNR", &bad["id"]).join("bad.zip")] {
        let m = fs::metadata(&kept).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (me, 0o644), "{}", kept.display());
    }
}

/// A name holding terminal escapes reaches people escaped: report.txt,
/// `depot status` and `depot history` (report.json and `--json` keep it
/// as it is, JSON escapes it).
#[test]
fn names_with_terminal_escapes_are_shown_escaped() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[producers.ESCP]\nprofile = \"plain\"\n");
    let daemon = site.start();
    let evil = "a\x1b]2;PWNED\x07b.txt";
    site.drop_rsync("ESCP", "e.zip", &RawZip::new().file(evil, "x").build());
    let d = ended(&site, &redis, "ESCP", 1);
    assert_eq!(stop(daemon), Some(0));
    assert_eq!(d[0]["error_code"], "NAME_INVALID");
    let id = &d[0]["id"];
    let dir = rejected(&site, "ESCP", id);
    let txt = fs::read_to_string(dir.join("report.txt")).unwrap();
    assert!(txt.contains("File concerned: a\\x1b]2;PWNED\\x07b.txt"), "{txt}");
    let json: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["entry"], evil);
    for args in [vec!["status", id.as_str()], vec!["status", "ESCP"], vec!["history", "ESCP"], vec!["status"]] {
        let out = depot(&site, &args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(!s.contains('\x1b') && !s.contains('\x07'), "{args:?}: {s:?}");
    }
    for w in txt.chars() {
        assert!(!w.is_control() || w == '\n', "{txt:?}");
    }
}
