//! The web page in a real browser: Debian's headless Chromium loads the
//! operator's page and a producer's page from the real daemon (its own
//! redis-server, users made by Apache's `htpasswd`), and the test reads
//! the DOM Chromium built. Its screenshots are the ones the README shows:
//! with `DEPOT_SCREENSHOTS=docs` they are written there.

#[path = "../jobs/tests/support/mod.rs"]
mod support;

mod common;

use std::collections::HashMap;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use support::*;

const CHROMIUM: &str = "chromium";

/// Chromium, headless, with a profile of its own in a temp folder; its
/// standard output. Killed by its pid when it hangs.
fn chromium(args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().join("stdout");
    let mut child = Command::new(CHROMIUM)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium must be installed (apt-get install -y chromium; scripts/test.sh does)");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success(), "chromium {args:?} {url}: {s}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} {url} hung: killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    fs::read_to_string(&out_path).unwrap()
}

fn dom(url: &str) -> String {
    chromium(&["--dump-dom"], url)
}

fn screenshot(url: &str, file: &Path) {
    let _ = fs::remove_file(file);
    chromium(&[&format!("--screenshot={}", file.display()), "--window-size=1200,900", "--hide-scrollbars"], url);
    let png = fs::read(file).unwrap_or_default();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "{}: {} bytes", file.display(), png.len());
}

/// curl's status code and body for `path` as `user` (None: anonymous).
fn curl(port: u16, user: Option<&str>, path: &str) -> (u16, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-D", "-", "-o", "-"]);
    if let Some(u) = user {
        cmd.args(["-u", u]);
    }
    let out = cmd.arg(format!("http://127.0.0.1:{port}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

fn by_file(redis: &Redis, p: &str, file: &str) -> Vec<HashMap<String, String>> {
    redis
        .deposits()
        .into_iter()
        .filter(|d| d.get("producer").map(String::as_str) == Some(p) && d.get("file").map(String::as_str) == Some(file))
        .collect()
}

/// Waits until a deposit of `p`'s `file` other than those `seen` ended
/// (ids sort by the second only: two deposits of one second are told
/// apart by what was seen before); its hash.
fn ended(
    site: &Site,
    redis: &Redis,
    p: &str,
    file: &str,
    seen: &[&HashMap<String, String>],
) -> HashMap<String, String> {
    let new = || by_file(redis, p, file).into_iter().find(|d| terminal(d) && !seen.iter().any(|s| s["id"] == d["id"]));
    wait_for(site, &format!("a new deposit of {p} {file} to end"), 60, || new().is_some());
    new().unwrap()
}

/// A Theia deposit whose dataset's MD5SUMS is wrong: MD5_MISMATCH.
fn bad_md5(p: &str) -> Vec<u8> {
    let dat = format!("{p}_DAT_1");
    RawZip::new()
        .file(format!("{p}_en.json"), pivot(p, &[(&dat, &["a.txt"])]))
        .stored(
            format!("{dat}.zip"),
            RawZip::new().file("a.txt", "data").file("MD5SUMS", "0123456789abcdef0123456789abcdef  a.txt\n").build(),
        )
        .build()
}

#[test]
fn page_in_a_real_browser() {
    let redis = Redis::start();
    let port = free_port();
    let site = Site::new(
        &redis.url(),
        &format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\nusers_file = \"users\"\noperators = [\"ops\"]\n\
             [producers.MSEC]\nhttp_users = [\"ann\"]\n[producers.OTHR]\nhttp_users = [\"ann\"]\n"
        ),
    );
    let users = site.root().join("users");
    htpasswd(&users, "-B", "MSEC", "pw");
    htpasswd(&users, "-m", "OTHR", "pw2");
    htpasswd(&users, "-B", "ops", "opw");
    htpasswd(&users, "-m", "ann", "apw");
    let daemon = site.start();
    wait_for(&site, "the door to listen", 30, || TcpStream::connect(("127.0.0.1", port)).is_ok());

    // MSEC: one accepted deposit, then one whose MD5 is wrong.
    site.drop_rsync("MSEC", "MSEC_THEIA.zip", &good_theia("MSEC", "one"));
    let ok = ended(&site, &redis, "MSEC", "MSEC_THEIA.zip", &[]);
    assert_eq!(ok["state"], "SUCCESS", "{ok:?}");
    site.drop_rsync("MSEC", "MSEC_THEIA.zip", &bad_md5("MSEC"));
    let bad = ended(&site, &redis, "MSEC", "MSEC_THEIA.zip", &[&ok]);
    assert_eq!(bad["error_code"], "MD5_MISMATCH", "{bad:?}");
    // OTHR: one accepted, one not a zip under a name that is markup.
    let evil = "<img src=x onerror=alert(1)>.zip";
    site.drop_rsync("OTHR", "OTHR_THEIA.zip", &good_theia("OTHR", "one"));
    let othr = ended(&site, &redis, "OTHR", "OTHR_THEIA.zip", &[]);
    assert_eq!(othr["state"], "SUCCESS", "{othr:?}");
    site.drop_rsync("OTHR", evil, b"this is not a zip");
    let evil_d = ended(&site, &redis, "OTHR", evil, &[]);
    assert_eq!(evil_d["error_code"], "NOT_A_ZIP", "{evil_d:?}");
    let report = fs::read_to_string(site.root().join(format!("drop/MSEC/rejected/{}/report.txt", bad["id"]))).unwrap();
    let report_line = report.lines().find(|l| l.starts_with("Details:")).unwrap().to_owned();

    // Anonymous: 401 with a Basic challenge, so that a browser asks.
    for path in ["/", "/producers/MSEC"] {
        let (code, head, _) = curl(port, None, path);
        assert_eq!(code, 401, "{path}: {head}");
        assert!(head.to_ascii_lowercase().contains("www-authenticate: basic realm=\"depot\""), "{head}");
    }
    // Another producer's page: 403; an unknown one: 404.
    assert_eq!(curl(port, Some("OTHR:pw2"), "/producers/MSEC").0, 403);
    assert_eq!(curl(port, Some("ops:opw"), "/producers/nope").0, 404);
    let (_, head, _) = curl(port, Some("ops:opw"), "/");
    assert!(head.to_ascii_lowercase().contains("content-security-policy: default-src 'none'"), "{head}");
    // A producer opening / is sent to its own page.
    let (code, head, _) = curl(port, Some("MSEC:pw"), "/");
    assert!(code == 303 && head.contains("location: /producers/MSEC"), "{head}");
    // One who acts for several producers picks one.
    let (code, _, body) = curl(port, Some("ann:apw"), "/");
    assert!(
        code == 200 && body.contains("href=\"/producers/MSEC\"") && body.contains("href=\"/producers/OTHR\""),
        "{body}"
    );
    assert_eq!(curl(port, Some("ann:apw"), "/producers/OTHR").0, 200);

    // The operator's page, as Chromium builds it.
    let url = |cred: &str, path: &str| format!("http://{cred}@127.0.0.1:{port}{path}");
    let op = dom(&url("ops:opw", "/"));
    assert!(op.contains("depot: every producer"), "{op}");
    for p in ["MSEC", "OTHR"] {
        assert!(op.contains(&format!("<tr data-producer=\"{p}\">")), "{p}: {op}");
    }
    assert!(op.contains(&format!("data-deposit=\"{}\"", bad["id"])), "{op}");
    assert!(op.contains("MD5_MISMATCH") && op.contains("NOT_A_ZIP"), "{op}");
    // The report in words, as the producer reads it in report.txt.
    let shown = report_line.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    assert!(op.contains(&shown), "{shown}: {op}");
    assert!(op.contains("was REJECTED"), "{op}");
    // The producer's file name is text, never markup.
    assert!(!op.contains("<img"), "{op}");
    assert!(op.contains("&lt;img src=x onerror=alert(1)&gt;.zip"), "{op}");
    // Nothing runs: no refresh.
    assert!(!op.contains("http-equiv=\"refresh\""), "{op}");

    // MSEC's page, through the redirect from /: its deposits, none of OTHR's.
    let mine = dom(&url("MSEC:pw", "/"));
    assert!(mine.contains("depot: producer MSEC"), "{mine}");
    for d in [&ok, &bad] {
        assert!(mine.contains(&format!("<tr data-deposit=\"{}\">", d["id"])), "{}: {mine}", d["id"]);
    }
    assert!(!mine.contains("OTHR"), "{mine}");
    assert!(mine.contains(&format!("href=\"/data/MSEC/deposits/{}/report.txt\"", bad["id"])));
    assert!(mine.contains("href=\"/data/MSEC/previous/\"") && mine.contains("href=\"/data/pub/MSEC/\""), "{mine}");
    assert!(mine.contains("MD5_MISMATCH") && mine.contains("SUCCESS"), "{mine}");
    // An operator sees the same page; OTHR's own shows only OTHR's.
    assert!(dom(&url("ops:opw", "/producers/MSEC")).contains(&format!("data-deposit=\"{}\"", ok["id"])));
    let theirs = dom(&url("OTHR:pw2", "/producers/OTHR"));
    assert!(theirs.contains(&format!("data-deposit=\"{}\"", othr["id"])) && !theirs.contains("MSEC"), "{theirs}");

    // A deposit that runs: MSEC's publish lock is held (as another host's
    // depot would hold it), so its next deposit stays in PROGRESS. Both
    // pages show its progress and reload themselves while it runs.
    let holder = hold_publish_lock(&site, "MSEC");
    site.drop_rsync("MSEC", "MSEC_THEIA.zip", &good_theia("MSEC", "two"));
    let running = || by_file(&redis, "MSEC", "MSEC_THEIA.zip").into_iter().find(|d| d["state"] == "PROGRESS");
    wait_for(&site, "MSEC's third deposit in PROGRESS", 60, || running().is_some());
    let run = running().unwrap();
    let refresh = "<meta http-equiv=\"refresh\" content=\"5\">";
    let op = dom(&url("ops:opw", "/"));
    assert!(op.contains(refresh), "{op}");
    assert!(op.contains(&format!("<tr data-deposit=\"{}\">", run["id"])) && op.contains("<progress"), "{op}");
    let mine = dom(&url("MSEC:pw", "/producers/MSEC"));
    assert!(mine.contains(refresh) && mine.contains("<progress"), "{mine}");

    // Screenshots: into DEPOT_SCREENSHOTS when set (the README's), else a temp folder.
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = std::env::var_os("DEPOT_SCREENSHOTS").map_or_else(|| tmp.path().to_owned(), PathBuf::from);
    fs::create_dir_all(&dir).unwrap();
    screenshot(&url("ops:opw", "/"), &dir.join("page-operator.png"));
    screenshot(&url("MSEC:pw", "/producers/MSEC"), &dir.join("page-producer.png"));

    // Once it ended, the page stands still again.
    drop(holder);
    let two = ended(&site, &redis, "MSEC", "MSEC_THEIA.zip", &[&ok, &bad]);
    assert_eq!(two["state"], "SUCCESS", "{two:?}");
    let mine = dom(&url("MSEC:pw", "/producers/MSEC"));
    assert!(!mine.contains("http-equiv=\"refresh\"") && !mine.contains("<progress"), "{mine}");

    // Redis gone: the pages say so and show what the folders keep.
    let mut redis = redis;
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let op = dom(&url("ops:opw", "/"));
    assert!(op.contains("Redis could not be read"), "{op}");
    for p in ["MSEC", "OTHR"] {
        assert!(op.contains(&format!("<tr data-producer=\"{p}\">")), "{p}: {op}");
    }
    let mine = dom(&url("MSEC:pw", "/producers/MSEC"));
    assert!(mine.contains("Redis could not be read"), "{mine}");
    for d in [&ok, &bad, &two] {
        assert!(mine.contains(&format!("<tr data-deposit=\"{}\">", d["id"])), "{}: {mine}", d["id"]);
    }
    assert!(mine.contains("MD5_MISMATCH"), "{mine}");

    assert_eq!(stop(daemon), Some(0));
}

/// Producer `p`'s publish lock, held until dropped.
fn hold_publish_lock(site: &Site, p: &str) -> fs::File {
    let dir = site.root().join("publish/.locks");
    fs::create_dir_all(&dir).unwrap();
    let f =
        fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(format!("{p}.lock"))).unwrap();
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    f
}
