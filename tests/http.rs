//! The HTTP door end to end: the real `curl` over TLS (a private CA made
//! with openssl), users files made by Apache's own `htpasswd`, a private
//! redis-server, the real binary.

#[path = "../jobs/tests/support/mod.rs"]
mod support;

mod common;

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use support::*;

const IDLE_S: u64 = 2;

struct Door {
    site: Site,
    daemon: Option<Daemon>,
    port: u16,
}

impl Door {
    fn start(redis: &Redis, extra: &str) -> Door {
        Self::start_idle(redis, extra, IDLE_S)
    }
    fn start_idle(redis: &Redis, extra: &str, idle_s: u64) -> Door {
        let port = free_port();
        let site = Site::new(
            &redis.url(),
            &format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\nusers_file = \"users\"\nidle_timeout_s = {idle_s}\noperators = [\"ops\"]\n{extra}"
            ),
        );
        private_ca(site.root());
        let users = site.root().join("users");
        htpasswd(&users, "-B", "MSEC", "pw");
        htpasswd(&users, "-m", "OTHR", "pw2");
        htpasswd(&users, "-B", "ops", "opw");
        htpasswd(&users, "-m", "ann", "apw");
        let mut d = Door { site, daemon: None, port };
        d.run();
        d
    }
    fn run(&mut self) {
        self.daemon = Some(self.site.start());
        let port = self.port;
        wait_for(&self.site, "the door to listen", 30, || TcpStream::connect(("127.0.0.1", port)).is_ok());
    }
    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
    fn ca(&self) -> PathBuf {
        self.site.root().join("ca.pem")
    }
    /// curl with the test CA; (status, body).
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "--cacert"])
            .arg(self.ca())
            .args(["-o", "-", "-w", "\n%{http_code}"])
            .args(args)
            .current_dir(self.site.root())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
    fn get(&self, user: &str, path: &str) -> (u16, String) {
        self.curl(&["-u", user, &self.url(path)])
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.site.root().join(name);
        fs::write(&p, bytes).unwrap();
        p
    }
    fn new_dir(&self, p: &str) -> PathBuf {
        self.site.root().join("drop").join(p).join("new")
    }
    fn leftovers(&self, p: &str) -> Vec<String> {
        fs::read_dir(self.new_dir(p))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }
    /// A curl PUT of `bytes` (rate-limited), still running.
    fn slow_put(&self, user: &str, p: &str, name: &str, bytes: &[u8], rate: &str) -> Child {
        let f = self.file(&format!("slow-{name}"), bytes);
        Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(self.ca())
            .args(["-u", user, "--limit-rate", rate, "-T"])
            .arg(&f)
            .arg(self.url(&format!("/data/{p}/new/{name}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

fn state(redis: &Redis, id: &str) -> String {
    redis.hgetall(&format!("depot:deposit:{id}")).get("state").cloned().unwrap_or_default()
}

fn wait_until(door: &Door, what: &str, f: impl FnMut() -> bool) {
    wait_for(&door.site, what, 30, f);
}

/// Theia's own command, verbatim (`-k`), then with the archive's CA: each
/// deposit published, moved to previous/, and readable back.
#[test]
fn theias_curl_command_deposits_and_reads_back() {
    let redis = Redis::start();
    let door = Door::start(&redis, "");
    let zip = door.file("MSEC_THEIA.zip", &good_theia("MSEC", "one"));
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -k -u \"MSEC\":\"pw\" -T {} https://127.0.0.1:{}/data/\"MSEC\"/new/ -D headers",
            zip.display(),
            door.port
        ))
        .current_dir(door.site.root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let headers = fs::read_to_string(door.site.root().join("headers")).unwrap();
    // curl sends `Expect: 100-continue`: the 201 follows the 100.
    assert!(headers.contains("HTTP/1.1 201 Created"), "{headers}");
    let v = json(&String::from_utf8_lossy(&out.stdout));
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(v["state"], "CREATED");
    assert!(
        headers.to_ascii_lowercase().contains(&format!("location: /data/msec/deposits/{}", id.to_ascii_lowercase())),
        "{headers}"
    );
    wait_until(&door, "SUCCESS", || state(&redis, &id) == "SUCCESS");
    let prev = door.site.root().join("drop/MSEC/previous/MSEC_THEIA.zip");
    wait_until(&door, "previous/", || prev.is_file());
    assert!(door.leftovers("MSEC").is_empty(), "{:?}", door.leftovers("MSEC"));

    // The same with the CA instead of -k, a second deposit after the first.
    let zip2 = door.file("MSEC_THEIA.zip", &good_theia("MSEC", "two"));
    let (code, body) = door.curl(&["-u", "MSEC:pw", "-T", zip2.to_str().unwrap(), &door.url("/data/MSEC/new/")]);
    assert_eq!(code, 201, "{body}");
    let id2 = json(&body)["id"].as_str().unwrap().to_owned();
    wait_until(&door, "second SUCCESS", || state(&redis, &id2) == "SUCCESS");

    // previous/: JSON listing with the MD5, the file itself, HTML for a browser.
    let (code, body) =
        door.curl(&["-u", "MSEC:pw", "-H", "Accept: application/json", &door.url("/data/MSEC/previous/")]);
    assert_eq!(code, 200, "{body}");
    let list = json(&body);
    let entry = list.as_array().unwrap().iter().find(|e| e["name"] == "MSEC_THEIA.zip").expect(&body);
    let bytes = fs::read(&zip2).unwrap();
    assert_eq!(entry["size"], bytes.len() as u64);
    assert_eq!(entry["md5"], md5_hex(&bytes));
    let (code, html) = door.get("MSEC:pw", "/data/MSEC/previous/");
    assert!(code == 200 && html.contains("<a href=\"MSEC%5FTHEIA%2Ezip\">MSEC_THEIA.zip</a>"), "{html}");
    let got = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(door.ca())
        .args(["-u", "MSEC:pw", &door.url("/data/MSEC/previous/MSEC_THEIA.zip")])
        .output()
        .unwrap();
    assert_eq!(got.stdout, bytes);

    // History, one deposit, its report.
    let (code, body) = door.get("MSEC:pw", "/data/MSEC/deposits");
    assert_eq!(code, 200, "{body}");
    let mut ids: Vec<String> =
        json(&body).as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    let mut want = vec![id.clone(), id2.clone()];
    want.sort();
    assert_eq!(ids, want);
    let (code, body) = door.get("MSEC:pw", &format!("/data/MSEC/deposits/{id}"));
    assert_eq!((code, json(&body)["state"].as_str()), (200, Some("SUCCESS")), "{body}");
    let (code, body) = door.get("MSEC:pw", &format!("/data/MSEC/deposits/{id}/report.txt"));
    assert!(code == 200 && body.contains("SUCCESS"), "{body}");
}

fn md5_hex(b: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn b64(b: &[u8]) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("base64 -w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Every answer of the SPEC's table, each with its reason in words, and
/// nothing kept after a refusal.
#[test]
fn every_answer_code() {
    let redis = Redis::start();
    // Long enough for curl --limit-rate's pauses: the slow upload stays.
    let door = Door::start_idle(
        &redis,
        "max_uploads_per_producer = 1\n[limits]\nmax_archive_bytes = 200000\n[producers.FULL.limits]\nmin_free_bytes = 1000000000000000000\n[producers.MSEC]\nhttp_users = [\"ann\"]\n",
        20,
    );
    let small = door.file("MSEC_A.zip", &good_theia("MSEC", "a"));
    let put = |user: &str, path: &str, extra: &[&str]| {
        let mut a = vec!["-u", user, "-T", small.to_str().unwrap()];
        a.extend_from_slice(extra);
        let url = door.url(path);
        a.push(&url);
        door.curl(&a)
    };
    // 401: none, wrong password, unknown user; logged for fail2ban, counted.
    let (code, body) = door.curl(&["-T", small.to_str().unwrap(), &door.url("/data/MSEC/new/")]);
    assert_eq!(code, 401, "{body}");
    assert_eq!(put("MSEC:nope", "/data/MSEC/new/", &[]).0, 401);
    assert_eq!(put("NOBODY:pw", "/data/MSEC/new/", &[]).0, 401);
    let log = door.site.log();
    assert!(log.contains("HTTP login failed: user=\"MSEC\" from=127.0.0.1"), "{log}");
    let (_, metrics) = door.curl(&[&door.url("/metrics")]);
    assert!(metrics.contains("depot_http_login_failures_total 2"), "{metrics}");
    // 403: another producer's folder (apr1 user of htpasswd -m).
    let (code, body) = put("OTHR:pw2", "/data/MSEC/new/", &[]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("OTHR does not deposit for producer MSEC"), "{body}");
    // 400: names that cannot be deposits.
    for name in [".hidden.zip", "x.part", "%2e%2e", "a%2fb.zip", "%2e%2e%2fconfig.toml"] {
        let (code, body) = put("MSEC:pw", &format!("/data/MSEC/new/{name}"), &[]);
        assert_eq!(code, 400, "{name}: {body}");
    }
    // 400: Content-MD5 mismatch, nothing kept.
    let wrong = b64(&[0u8; 16]);
    let (code, body) = put("MSEC:pw", "/data/MSEC/new/", &["-H", &format!("Content-MD5: {wrong}")]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("MD5_MISMATCH"), "{body}");
    assert!(door.leftovers("MSEC").is_empty(), "{:?}", door.leftovers("MSEC"));
    // 413: over limits.max_archive_bytes, by Content-Length and chunked.
    let big = door.file("MSEC_BIG.zip", &vec![7u8; 300_000]);
    let (code, body) = door.curl(&["-u", "MSEC:pw", "-T", big.to_str().unwrap(), &door.url("/data/MSEC/new/")]);
    assert_eq!(code, 413, "{body}");
    let (code, body) = door.curl(&[
        "-u",
        "MSEC:pw",
        "-H",
        "Transfer-Encoding: chunked",
        "-T",
        big.to_str().unwrap(),
        &door.url("/data/MSEC/new/"),
    ]);
    assert_eq!(code, 413, "{body}");
    assert!(door.leftovers("MSEC").is_empty(), "{:?}", door.leftovers("MSEC"));
    // 507: not enough free space for the producer's margin.
    let (code, body) = put("ops:opw", "/data/FULL/new/FULL_A.zip", &[]);
    assert_eq!(code, 507, "{body}");
    // 409 and 429: an upload of MSEC still running.
    let slow = door.slow_put("ann:apw", "MSEC", "MSEC_SLOW.zip", &vec![1u8; 150_000], "5k");
    wait_until(&door, "the slow upload", || door.leftovers("MSEC").iter().any(|n| n.starts_with(".depot-http-")));
    let (code, body) = put("MSEC:pw", "/data/MSEC/new/MSEC_SLOW.zip", &[]);
    assert_eq!(code, 409, "{body}");
    let (code, body) = put("MSEC:pw", "/data/MSEC/new/MSEC_OTHER.zip", &[]);
    assert_eq!(code, 429, "{body}");
    kill(slow);
    wait_until(&door, "the killed upload removed", || door.leftovers("MSEC").is_empty());
    // 201 for a delegated user (http_users) once the way is clear.
    let (code, body) = put("ann:apw", "/data/MSEC/new/", &[]);
    assert_eq!(code, 201, "{body}");
    // A Content-MD5 that matches is accepted.
    let good = b64(&md5_bytes(&fs::read(&small).unwrap()));
    let (code, body) = put("MSEC:pw", "/data/MSEC/new/MSEC_B.zip", &["-H", &format!("Content-MD5: {good}")]);
    assert!(code == 201 || code == 429, "{body}");
}

fn md5_bytes(b: &[u8]) -> Vec<u8> {
    use md5::Digest;
    md5::Md5::digest(b).to_vec()
}

/// A client killed mid-body, and depot killed mid-upload: nothing left
/// in new/, after the restart too.
#[test]
fn cut_uploads_leave_nothing() {
    let redis = Redis::start();
    // Not the idle timeout: the closed connection itself removes the upload.
    let mut door = Door::start_idle(&redis, "", 60);
    let slow = door.slow_put("MSEC:pw", "MSEC", "MSEC_CUT.zip", &vec![3u8; 400_000], "20k");
    wait_until(&door, "the upload to start", || door.leftovers("MSEC").iter().any(|n| n.starts_with(".depot-")));
    std::thread::sleep(Duration::from_millis(500));
    let pid = slow.id().to_string();
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    kill(slow);
    wait_until(&door, "the cut upload removed", || door.leftovers("MSEC").is_empty());

    // depot itself killed -9 while a body comes in.
    let slow = door.slow_put("MSEC:pw", "MSEC", "MSEC_CRASH.zip", &vec![4u8; 400_000], "20k");
    wait_until(&door, "the upload to start", || door.leftovers("MSEC").iter().any(|n| n.starts_with(".depot-")));
    let mut d = door.daemon.take().unwrap();
    let mut child = d.0.take().unwrap();
    assert!(Command::new("kill").args(["-KILL", &child.id().to_string()]).status().unwrap().success());
    let _ = child.wait();
    kill(slow);
    assert!(!door.leftovers("MSEC").is_empty(), "the crash left its partial file (the test's premise)");
    door.run();
    wait_until(&door, "leftovers removed at start", || door.leftovers("MSEC").is_empty());
    assert!(door.site.log().contains("removed an upload a crash cut short"), "{}", door.site.log());
    assert!(redis.deposits().is_empty());
}

/// 300 idle connections: a request is still answered, and each idle one is
/// closed within idle_timeout_s plus a margin.
#[test]
fn idle_connections_do_not_hold_the_door() {
    let redis = Redis::start();
    // Long enough that an answer after the idle ones were cut cannot pass
    // for one given at once, even on a loaded machine.
    let idle_s = 6;
    let door = Door::start_idle(&redis, "", idle_s);
    let idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(("127.0.0.1", door.port)).unwrap()).collect();
    let t0 = Instant::now();
    let (code, body) = door.curl(&[&door.url("/data/availability")]);
    assert_eq!(code, 200, "{body}");
    assert!(t0.elapsed() < Duration::from_secs(idle_s), "answered only after the idle ones were cut");
    std::thread::sleep(Duration::from_secs(idle_s + 3).saturating_sub(t0.elapsed()));
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("an idle connection is still open: {other:?}"),
        }
    }
}

/// `..`, encoded dots and slashes, links in previous/: never outside the
/// producer's folders.
#[test]
fn traversal_is_refused() {
    let redis = Redis::start();
    let door = Door::start(&redis, "");
    let prev = door.site.root().join("drop/MSEC/previous");
    fs::create_dir_all(&prev).unwrap();
    fs::create_dir_all(door.site.root().join("drop/OTHR/previous")).unwrap();
    fs::write(door.site.root().join("drop/OTHR/previous/secret.zip"), b"other's").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", prev.join("link.zip")).unwrap();
    std::os::unix::fs::symlink("../../OTHR/previous/secret.zip", prev.join("other.zip")).unwrap();
    for path in [
        "/data/MSEC/previous/link.zip",
        "/data/MSEC/previous/other.zip",
        "/data/MSEC/previous/..%2f..%2fOTHR%2fprevious%2fsecret.zip",
        "/data/MSEC/previous/%2e%2e",
        "/data/MSEC/previous/../../OTHR/previous/secret.zip",
        "/data/MSEC/../OTHR/previous/secret.zip",
        "/data/MSEC/previous/%2e%2e/%2e%2e/config.toml",
    ] {
        let (code, body) = door.curl(&["--path-as-is", "-u", "MSEC:pw", &door.url(path)]);
        assert!(code == 404 || code == 403 || code == 400, "{path}: {code} {body}");
        assert!(!body.contains("root:") && !body.contains("other's"), "{path}: {body}");
    }
    let (code, body) =
        door.curl(&["-u", "MSEC:pw", "-H", "Accept: application/json", &door.url("/data/MSEC/previous/")]);
    assert_eq!((code, body.trim()), (200, "[]"));
    // A PUT never writes through a link either.
    let zip = door.file("MSEC_L.zip", b"zip");
    for path in ["/data/MSEC/new/..%2f..%2fOTHR%2fnew%2fx.zip", "/data/MSEC/new/%2e%2e"] {
        let (code, body) = door.curl(&["--path-as-is", "-u", "MSEC:pw", "-T", zip.to_str().unwrap(), &door.url(path)]);
        assert_eq!(code, 400, "{path}: {body}");
    }
    assert!(!door.site.root().join("drop/OTHR/new").exists());
}

/// /data/availability: 200 while Redis answers, 503 naming it when not.
#[test]
fn availability_follows_redis() {
    let mut redis = Redis::start();
    let door = Door::start(&redis, "");
    let (code, body) = door.curl(&[&door.url("/data/availability")]);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    for k in ["redis", "watcher", "workers", "free_space"] {
        assert_eq!(v["checks"][k]["ok"], true, "{k}: {body}");
    }
    let port = redis.port;
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    wait_until(&door, "503", || door.curl(&[&door.url("/data/availability")]).0 == 503);
    let (_, body) = door.curl(&[&door.url("/data/availability")]);
    assert_eq!(json(&body)["checks"]["redis"]["ok"], false, "{body}");
    redis = Redis::start_on(port);
    wait_until(&door, "200 again", || door.curl(&[&door.url("/data/availability")]).0 == 200);
    drop(redis);
}

/// A producer never sees another's deposits; an operator sees both.
#[test]
fn producers_see_only_their_own() {
    let redis = Redis::start();
    let door = Door::start(&redis, "");
    let a = door.file("MSEC_1.zip", &good_theia("MSEC", "1"));
    let b = door.file("OTHR_1.zip", &good_theia("OTHR", "1"));
    let (code, body) = door.curl(&["-u", "MSEC:pw", "-T", a.to_str().unwrap(), &door.url("/data/MSEC/new/")]);
    assert_eq!(code, 201, "{body}");
    let ida = json(&body)["id"].as_str().unwrap().to_owned();
    let (code, body) = door.curl(&["-u", "OTHR:pw2", "-T", b.to_str().unwrap(), &door.url("/data/OTHR/new/")]);
    assert_eq!(code, 201, "{body}");
    let idb = json(&body)["id"].as_str().unwrap().to_owned();
    wait_until(&door, "both ended", || state(&redis, &ida) == "SUCCESS" && state(&redis, &idb) == "SUCCESS");
    for path in [
        "/data/OTHR/deposits".to_owned(),
        format!("/data/OTHR/deposits/{idb}"),
        format!("/data/OTHR/deposits/{idb}/report.txt"),
        "/data/OTHR/previous/".to_owned(),
        "/data/OTHR/previous/OTHR_1.zip".to_owned(),
    ] {
        let (code, body) = door.get("MSEC:pw", &path);
        assert_eq!(code, 403, "{path}: {body}");
    }
    let (code, _) = door.get("MSEC:pw", &format!("/data/MSEC/deposits/{idb}"));
    assert_eq!(code, 404);
    let (_, body) = door.get("MSEC:pw", "/data/MSEC/deposits");
    assert!(body.contains(&ida) && !body.contains(&idb), "{body}");
    let (code, body) = door.get("ops:opw", "/data/OTHR/deposits");
    assert!(code == 200 && body.contains(&idb), "{body}");
}

/// `depot producer add P --http-user NAME` writes a bcrypt line Apache's
/// htpasswd verifies, the password read from standard input.
#[test]
fn producer_add_http_user() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    fs::write(
        &cfg,
        "drop_root = \"drop\"\npublish_root = \"publish\"\n[http]\nlisten = \"127.0.0.1:1\"\nusers_file = \"users\"\n",
    )
    .unwrap();
    let run = |user: &str, pw: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_depot"))
            .args(["producer", "add", "MSEC", "--http-user", user, "--config"])
            .arg(&cfg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(format!("{pw}\n").as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    let out = run("MSEC", "first");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run("bob", "second");
    assert!(String::from_utf8_lossy(&out.stdout).contains("http_users"), "{out:?}");
    let out = run("MSEC", "changed");
    assert!(out.status.success());
    let users = dir.path().join("users");
    let text = fs::read_to_string(&users).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().all(|l| l.contains(":$2y$")), "{text}");
    let verify = |u: &str, p: &str| {
        Command::new("htpasswd").arg("-vb").arg(&users).args([u, p]).output().unwrap().status.success()
    };
    assert!(verify("MSEC", "changed") && verify("bob", "second") && !verify("MSEC", "first"));
}

/// `--role http` serves the door alone; the watcher and the workers run
/// elsewhere (here: two other processes on the same folders and Redis)
/// and take its deposits.
#[test]
fn role_http_hands_deposits_to_the_scheduler_elsewhere() {
    let redis = Redis::start();
    let port = free_port();
    let site = Site::new(
        &redis.url(),
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\nusers_file = \"users\"\nidle_timeout_s = {IDLE_S}\n"),
    );
    htpasswd(&site.root().join("users"), "-B", "MSEC", "pw");
    let _watcher = site.start_role("watcher");
    let _worker = site.start_role("worker");
    let _http = site.start_role("http");
    wait_for(&site, "the door", 30, || TcpStream::connect(("127.0.0.1", port)).is_ok());
    let zip = site.root().join("MSEC_R.zip");
    fs::write(&zip, good_theia("MSEC", "r")).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-u", "MSEC:pw", "-T"])
        .arg(&zip)
        .arg(format!("http://127.0.0.1:{port}/data/MSEC/new/"))
        .output()
        .unwrap();
    let v = json(&String::from_utf8_lossy(&out.stdout));
    let id = v["id"].as_str().unwrap().to_owned();
    wait_for(&site, "SUCCESS", 30, || state(&redis, &id) == "SUCCESS");
    let log = fs::read_to_string(site.root().join("watcher.log")).unwrap();
    assert!(log.contains("claimed by the HTTP door"), "{log}");
    assert!(site.root().join("drop/MSEC/previous/MSEC_R.zip").is_file());
}

/// A non-loopback address without TLS is refused by `depot config check`
/// and at start, naming the key; behind_proxy allows it.
#[test]
fn clear_text_off_loopback_is_refused() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[http]\nlisten = \"0.0.0.0:18480\"\n");
    let out = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(["config", "check", "--config"])
        .arg(&site.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("http.listen") && err.contains("behind_proxy"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_depot")).args(["run", "--config"]).arg(&site.config).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.listen"));
    let site = Site::new(&redis.url(), "[http]\nlisten = \"0.0.0.0:18480\"\nbehind_proxy = true\n");
    let out = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(["config", "check", "--config"])
        .arg(&site.config)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("http.listen"), "{out:?}");
}

/// SIGHUP reads the certificate again: new connections get the new one,
/// an upload running across the reload still ends in 201.
#[test]
fn tls_certificate_reloads_on_sighup() {
    let redis = Redis::start();
    // curl --limit-rate sends in bursts, seconds apart.
    let door = Door::start_idle(&redis, "", 20);
    let slow = door.file("slow.zip", &vec![5u8; 200_000]);
    let running = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(door.ca())
        .args(["-u", "MSEC:pw", "--limit-rate", "20k", "-T"])
        .arg(&slow)
        .arg(door.url("/data/MSEC/new/MSEC_SLOW.zip"))
        .args(["-o", "-", "-w", "\n%{http_code}"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(&door, "the slow upload", || door.leftovers("MSEC").iter().any(|n| n.starts_with(".depot-")));
    // A new CA and certificate in place of the old ones.
    let ca2 = door.site.root().join("ca2");
    fs::create_dir_all(&ca2).unwrap();
    private_ca(&ca2);
    fs::copy(ca2.join("server.pem"), door.site.root().join("server.pem")).unwrap();
    fs::copy(ca2.join("server.key"), door.site.root().join("server.key")).unwrap();
    let pid = door.daemon.as_ref().unwrap().0.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    wait_until(&door, "the new certificate", || {
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--cacert"])
            .arg(ca2.join("ca.pem"))
            .arg(door.url("/data/availability"))
            .status()
            .unwrap()
            .success()
    });
    let (code, _) = door.curl(&[&door.url("/data/availability")]);
    assert_eq!(code, 0, "the old CA no longer verifies the door");
    let out = running.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.trim_end().ends_with("201"), "{text}");
    assert!(door.site.log().contains("TLS certificate reloaded"));
}

/// A sidecar PUT before its archive pairs with it, as over sftp: the
/// listing of previous/ gives its MD5, the file is served with Content-MD5.
#[test]
fn sidecar_before_archive_pairs() {
    let redis = Redis::start();
    let door = Door::start(&redis, "");
    let bytes = good_theia("MSEC", "side");
    let zip = door.file("MSEC_S.zip", &bytes);
    let side = door.file("MSEC_S.zip.md5", format!("{}  MSEC_S.zip\n", md5_hex(&bytes)).as_bytes());
    let (code, body) = door.curl(&["-u", "MSEC:pw", "-T", side.to_str().unwrap(), &door.url("/data/MSEC/new/")]);
    assert_eq!(code, 201, "{body}");
    let (code, body) = door.curl(&["-u", "MSEC:pw", "-T", zip.to_str().unwrap(), &door.url("/data/MSEC/new/")]);
    assert_eq!(code, 201, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_owned();
    wait_until(&door, "SUCCESS", || state(&redis, &id) == "SUCCESS");
    let prev = door.site.root().join("drop/MSEC/previous");
    wait_until(&door, "both in previous/", || {
        prev.join("MSEC_S.zip.md5").is_file() && prev.join("MSEC_S.zip").is_file()
    });
    let (_, headers) =
        door.curl(&["-u", "MSEC:pw", "-D", "-", "-o", "/dev/null", &door.url("/data/MSEC/previous/MSEC_S.zip")]);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains(&format!("content-md5: {}", b64(&md5_bytes(&bytes)).to_ascii_lowercase())),
        "{headers}"
    );
    // The fail2ban line ends with the address.
    assert_eq!(door.curl(&["-u", "MSEC:bad", &door.url("/data/MSEC/deposits")]).0, 401);
    let log = door.site.log();
    assert!(log.lines().any(|l| l.trim_end().ends_with("HTTP login failed: user=\"MSEC\" from=127.0.0.1")), "{log}");
}

/// A body that stops coming: dropped after idle_timeout_s, nothing kept,
/// 408 to the client.
#[test]
fn idle_body_leaves_nothing() {
    use std::io::Write;
    let redis = Redis::start();
    let door = Door::start(&redis, "");
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &format!("127.0.0.1:{}", door.port), "-CAfile"])
        .arg(door.ca())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    write!(
        stdin,
        "PUT /data/MSEC/new/MSEC_IDLE.zip HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nContent-Length: 100000\r\n\r\n",
        b64(b"MSEC:pw")
    )
    .unwrap();
    stdin.write_all(&[9u8; 1000]).unwrap();
    stdin.flush().unwrap();
    wait_until(&door, "the upload to start", || door.leftovers("MSEC").iter().any(|n| n.starts_with(".depot-")));
    let t0 = Instant::now();
    wait_until(&door, "the idle upload removed", || door.leftovers("MSEC").is_empty());
    assert!(t0.elapsed() >= Duration::from_secs(IDLE_S - 1), "removed before the client was idle long enough");
    let mut out = String::new();
    client.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    drop(stdin);
    kill(client);
    assert!(redis.deposits().is_empty());
}

/// http.max_connections: one address holds at most half; over that a
/// connection is closed at once, and the door takes it again once the
/// idle ones are gone.
#[test]
fn connection_cap_per_address() {
    let redis = Redis::start();
    let door = Door::start(&redis, "max_connections = 8\n");
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(("127.0.0.1", door.port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut over = TcpStream::connect(("127.0.0.1", door.port)).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(IDLE_S))).unwrap();
    let mut b = [0u8; 1];
    match over.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a fifth connection from one address was kept: {other:?}"),
    }
    assert!(door.site.log().contains("http.max_connections reached"), "{}", door.site.log());
    wait_until(&door, "the door to take connections again", || door.curl(&[&door.url("/data/availability")]).0 == 200);
    drop(held);
}

/// `depot config check` loads the certificate and reads the users file.
#[test]
fn config_check_reads_the_door_files() {
    let redis = Redis::start();
    let site = Site::new(
        &redis.url(),
        "[http]\nlisten = \"127.0.0.1:18481\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\nusers_file = \"users\"\noperators = [\"ops\"]\n[producers.MSEC]\nhttp_users = [\"ann\"]\n",
    );
    private_ca(site.root());
    let users = site.root().join("users");
    htpasswd(&users, "-B", "MSEC", "pw");
    htpasswd(&users, "-p", "plain", "pw");
    let check = || {
        let out = Command::new(env!("CARGO_BIN_EXE_depot"))
            .args(["config", "check", "--config"])
            .arg(&site.config)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("http.tls_cert") && out.contains("load"), "{out}");
    assert!(out.contains("use a scheme depot refuses") && out.contains("plain"), "{out}");
    assert!(out.contains("no line for ann, ops"), "{out}");
    // A key that is not the certificate's.
    let other = site.root().join("other");
    fs::create_dir_all(&other).unwrap();
    private_ca(&other);
    fs::copy(other.join("server.key"), site.root().join("server.key")).unwrap();
    let (code, out) = check();
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("do not make a pair"), "{out}");
}
