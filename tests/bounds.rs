//! Issue 19's bounds on what a hook, a listener, a fault or one producer
//! can cost the others: the real daemon, a private redis-server per test,
//! real folders.

#[path = "../jobs/tests/support/mod.rs"]
mod support;

use std::fs;
use std::time::{Duration, Instant};

use support::*;

mod common;
use common::*;

/// Pids a test's hooks wrote down, stopped (by pid) when the test ends,
/// whatever it asserted.
struct Pids(std::path::PathBuf);

impl Pids {
    fn list(&self) -> Vec<i32> {
        fs::read_to_string(&self.0).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
    }
    /// The listed pids still running `sleep` (a zombie is not running).
    fn alive(&self) -> Vec<i32> {
        self.list().into_iter().filter(|p| alive_sleep(*p)).collect()
    }
}

fn alive_sleep(pid: i32) -> bool {
    let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).unwrap_or("");
    cmd.starts_with(b"sleep\0987") && state != "Z"
}

impl Drop for Pids {
    fn drop(&mut self) {
        for p in self.alive() {
            let _ = std::process::Command::new("kill").args(["-KILL", &p.to_string()]).status();
        }
    }
}

fn by_producer(redis: &Redis, p: &str) -> Option<std::collections::HashMap<String, String>> {
    redis.deposits().into_iter().find(|d| d.get("producer").map(String::as_str) == Some(p))
}

/// notify.command runs in a process group of its own: its children die
/// with it at the timeout; a program that exits 0 while a child it left
/// holds its stderr is a success, not a timeout; and it sees PATH and the
/// DEPOT_* values only, never the daemon's secrets.
#[test]
fn a_hook_and_its_children_are_bounded_and_see_no_secret() {
    let redis = Redis::start();
    let port = free_port();
    let out = tempfile::tempdir().unwrap();
    let pids = Pids(out.path().join("pids"));
    let script = r#"env > "$1/$DEPOT_PRODUCER.env"
case "$DEPOT_PRODUCER" in
HANG) sleep 987 & echo $! >> "$1/pids"; sleep 987 & echo $! >> "$1/pids"; exec sleep 987 ;;
BGOK) sleep 987 & echo $! >> "$1/pids"; exit 0 ;;
esac"#;
    let site = Site::new(
        &redis.url(),
        &format!(
            "[notify]\ncommand = [\"/bin/sh\", \"-c\", {script:?}, \"sh\", {:?}]\ntimeout_s = 3\nmax_running = 4\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            out.path().to_str().unwrap()
        ),
    );
    let daemon = site.start_env(&[("AWS_SECRET_ACCESS_KEY", "s3cr3t-of-the-daemon")]);
    site.drop_rsync("HANG", "HANG_1.zip", &good_theia("HANG", "1"));
    site.drop_rsync("BGOK", "BGOK_1.zip", &good_theia("BGOK", "1"));
    wait_for(&site, "both deposits ended", 30, || {
        ["HANG", "BGOK"].iter().all(|p| by_producer(&redis, p).is_some_and(|d| terminal(&d)))
    });
    wait_for(&site, "both hooks started", 10, || pids.list().len() == 3);
    let bgok = by_producer(&redis, "BGOK").unwrap()["id"].clone();
    let hang = by_producer(&redis, "HANG").unwrap()["id"].clone();
    wait_for(&site, "the hung hook killed", 15, || {
        site.log().lines().any(|l| l.contains(&hang) && l.contains("notify.command timed out"))
    });
    // Its children went with it: none outlives the timeout by more than a
    // moment (they were started to sleep 987 s).
    let t0 = Instant::now();
    while !pids.alive().is_empty() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(pids.alive(), Vec::<i32>::new(), "hook children outlived the hook");
    // The hook that exited 0 succeeded, although a child kept its stderr.
    let log = site.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&bgok) && l.contains("notify.command")).collect();
    assert!(lines.iter().any(|l| l.contains("notify.command done")), "{lines:?}\n{}", site.log());
    assert!(!lines.iter().any(|l| l.contains("timed out") || l.contains("failed")), "{lines:?}");
    let metrics = http_get(port, "/metrics");
    assert!(metrics.contains("depot_notify_failures_total 1\n"), "{metrics}");
    // PATH and DEPOT_* only.
    for p in ["HANG", "BGOK"] {
        let env = fs::read_to_string(out.path().join(format!("{p}.env"))).unwrap();
        assert!(!env.contains("s3cr3t") && !env.contains("AWS_SECRET_ACCESS_KEY"), "{env}");
        for line in env.lines() {
            let key = line.split('=').next().unwrap_or("");
            // sh itself sets PWD (and dash OLDPWD? no): the rest must be ours.
            assert!(key == "PATH" || key == "PWD" || key.starts_with("DEPOT_"), "{p}: unexpected {line:?} in\n{env}");
        }
        assert!(env.contains(&format!("DEPOT_PRODUCER={p}")), "{env}");
    }
    assert_eq!(stop(daemon), Some(0));
}

/// A producer's publish lock held (as another host's depot would hold
/// it): that producer's deposit stays in PROGRESS, waiting for it.
struct LockHolder(#[allow(dead_code)] fs::File);

impl LockHolder {
    fn hold(site: &Site, p: &str) -> LockHolder {
        let dir = site.root().join("publish/.locks");
        fs::create_dir_all(&dir).unwrap();
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{p}.lock")))
            .unwrap();
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        LockHolder(f)
    }
}

/// SIGTERM while a deposit runs longer than workers.shutdown_timeout_s:
/// Redis says WAITING (interrupted, runs again), never a PROGRESS that is
/// not happening; the next start runs it to SUCCESS, the interrupted run
/// not counted as an attempt.
#[test]
fn a_deposit_interrupted_by_shutdown_is_waiting_and_runs_again() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[workers]\nshutdown_timeout_s = 1\n");
    let holder = LockHolder::hold(&site, "TERM");
    let daemon = site.start();
    site.drop_rsync("TERM", "TERM_1.zip", &good_theia("TERM", "1"));
    wait_for(&site, "PROGRESS", 30, || by_producer(&redis, "TERM").is_some_and(|d| d["state"] == "PROGRESS"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(stop(daemon), Some(0), "{}", site.log());
    let d = by_producer(&redis, "TERM").unwrap();
    assert_eq!(d["state"], "WAITING", "{d:?}\n{}", site.log());
    assert!(d.get("error").is_some_and(|e| e.contains("interrupted")), "{d:?}");
    let states: Vec<String> =
        redis.events().into_iter().filter(|e| e["id"] == d["id"]).map(|e| e["state"].clone()).collect();
    assert_eq!(states.last().map(String::as_str), Some("WAITING"), "{states:?}");
    drop(holder);
    let daemon = site.start();
    wait_for(&site, "SUCCESS after restart", 30, || {
        by_producer(&redis, "TERM").is_some_and(|d| d["state"] == "SUCCESS")
    });
    let d = by_producer(&redis, "TERM").unwrap();
    assert_eq!(d["attempts"], "1", "{d:?}");
    assert!(!d.contains_key("error"), "{d:?}");
    assert_eq!(stop(daemon), Some(0));
}

/// `depot run` with its descriptors bounded (`prlimit`: the daemon is the
/// process prlimit execs, so its pid is the child's).
fn start_limited(site: &Site, nofile: u32) -> Daemon {
    Daemon(Some(
        std::process::Command::new("prlimit")
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_depot"))
            .args(["run", "--config"])
            .arg(&site.config)
            .env("RUST_LOG", "info")
            .stderr(fs::File::create(site.root().join("daemon.log")).unwrap())
            .spawn()
            .unwrap(),
    ))
}

/// Idle connections to a port, kept at `n` (ones the server closed are
/// opened again) until dropped.
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Flood {
    fn start(port: u16, n: usize) -> Flood {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let mut held: Vec<std::net::TcpStream> = Vec::new();
            let mut peak = 0;
            while !s.load(Ordering::Relaxed) {
                held.retain(|c| {
                    let mut b = [0u8; 1];
                    !matches!(c.peek(&mut b), Ok(0) | Err(_))
                        || matches!(c.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                });
                let mut fails = 0;
                while held.len() < n && fails < 20 {
                    match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)) {
                        Ok(c) => {
                            c.set_nonblocking(true).unwrap();
                            held.push(c);
                        }
                        Err(_) => fails += 1,
                    }
                }
                peak = peak.max(held.len());
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        Flood { stop, thread: Some(thread) }
    }
    fn stop(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// 1,100 idle connections to the metrics port of a daemon that may open
/// 1,024 descriptors: the endpoint serves a bounded number at once, the
/// rest wait in the kernel; a deposit dropped meanwhile succeeds at its
/// first attempt.
#[test]
fn idle_metrics_connections_never_starve_a_deposit() {
    let redis = Redis::start();
    let port = free_port();
    let site = Site::new(&redis.url(), &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let daemon = start_limited(&site, 1024);
    wait_for(&site, "ready", 20, || site.log().contains("ready"));
    let flood = Flood::start(port, 1100);
    std::thread::sleep(Duration::from_secs(2));
    site.drop_rsync("FLOD", "FLOD_1.zip", &good_theia("FLOD", "1"));
    wait_for(&site, "the deposit ended", 40, || by_producer(&redis, "FLOD").is_some_and(|d| terminal(&d)));
    let d = by_producer(&redis, "FLOD").unwrap();
    let peak = flood.stop();
    // Past the endpoint's bound, connections wait in the accept queue
    // (somaxconn): the flood holds far fewer than it asked for, which is
    // the point.
    assert!(peak >= 100, "the flood held only {peak} connections");
    assert_eq!((d["state"].as_str(), d["attempts"].as_str()), ("SUCCESS", "1"), "{d:?}\n{}", site.log());
    assert!(!site.log().contains("Too many open files"), "{}", site.log());
    assert!(http_get(port, "/metrics").starts_with("HTTP/1.1 200"));
    assert_eq!(stop(daemon), Some(0));
}

fn by_file(redis: &Redis, file: &str) -> Option<std::collections::HashMap<String, String>> {
    redis.deposits().into_iter().find(|d| d.get("file").map(String::as_str) == Some(file))
}

/// A deposit whose spool record cannot be read (made a folder under it)
/// ends as FAILURE IO_ERROR after workers.max_attempts tries, instead of
/// being retried forever; the producer's next deposit goes on.
#[test]
fn a_spool_record_that_cannot_be_read_ends_its_deposit_and_the_next_goes_on() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[workers]\nmax_attempts = 2\n");
    let holder = LockHolder::hold(&site, "RECD");
    let daemon = site.start();
    site.drop_rsync("RECD", "RECD_1.zip", &good_theia("RECD", "1"));
    wait_for(&site, "the first in PROGRESS", 30, || {
        by_file(&redis, "RECD_1.zip").is_some_and(|d| d["state"] == "PROGRESS")
    });
    site.drop_rsync("RECD", "RECD_2.zip", &good_theia("RECD", "2"));
    wait_for(&site, "the second claimed", 30, || by_file(&redis, "RECD_2.zip").is_some());
    let id = by_file(&redis, "RECD_2.zip").unwrap()["id"].clone();
    let record = site.root().join(format!("drop/.depot/spool/{id}.json"));
    fs::remove_file(&record).unwrap();
    fs::create_dir(&record).unwrap();
    drop(holder);
    wait_for(&site, "the first SUCCESS", 30, || by_file(&redis, "RECD_1.zip").is_some_and(|d| d["state"] == "SUCCESS"));
    wait_for(&site, "the second ended", 60, || by_file(&redis, "RECD_2.zip").is_some_and(|d| terminal(&d)));
    let d = by_file(&redis, "RECD_2.zip").unwrap();
    assert_eq!((d["state"].as_str(), d["error_code"].as_str()), ("FAILURE", "IO_ERROR"), "{d:?}");
    // Moved aside for the operator: no scheduler takes it for one still held.
    wait_for(&site, "the record set aside", 10, || record.with_extension("json.broken").is_dir() && !record.exists());
    site.drop_rsync("RECD", "RECD_3.zip", &good_theia("RECD", "3"));
    wait_for(&site, "the next SUCCESS", 30, || by_file(&redis, "RECD_3.zip").is_some_and(|d| d["state"] == "SUCCESS"));
    assert_eq!(stop(daemon), Some(0));
    // A restart with the broken record still there recovers the rest.
    site.drop_rsync("RECD", "RECD_4.zip", &good_theia("RECD", "4"));
    let daemon = site.start();
    wait_for(&site, "SUCCESS after a restart", 30, || {
        by_file(&redis, "RECD_4.zip").is_some_and(|d| d["state"] == "SUCCESS")
    });
    assert_eq!(stop(daemon), Some(0));
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

fn set_nofile(pid: u32, soft: usize) {
    let ok = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .unwrap()
        .success();
    assert!(ok, "prlimit --pid {pid}");
}

/// The daemon runs out of descriptors in the middle of a deposit (its
/// limit lowered under it, as a flood from anywhere would): not the
/// deposit's attempt, even with workers.max_attempts = 1; it waits and
/// succeeds once descriptors are back, with attempts = 1.
#[test]
fn running_out_of_descriptors_is_never_a_deposits_attempt() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[workers]\nmax_attempts = 1\n");
    let holder = LockHolder::hold(&site, "FDEX");
    let daemon = site.start();
    let pid = daemon.0.as_ref().unwrap().id();
    site.drop_rsync("FDEX", "FDEX_1.zip", &good_theia("FDEX", "1"));
    wait_for(&site, "PROGRESS", 30, || by_file(&redis, "FDEX_1.zip").is_some_and(|d| d["state"] == "PROGRESS"));
    std::thread::sleep(Duration::from_millis(300));
    set_nofile(pid, open_fds(pid) - 1);
    drop(holder);
    wait_for(&site, "descriptors ran out", 20, || site.log().contains("Too many open files"));
    std::thread::sleep(Duration::from_millis(1500));
    set_nofile(pid, 4096);
    wait_for(&site, "the deposit ended", 60, || by_file(&redis, "FDEX_1.zip").is_some_and(|d| terminal(&d)));
    let d = by_file(&redis, "FDEX_1.zip").unwrap();
    assert_eq!((d["state"].as_str(), d["attempts"].as_str()), ("SUCCESS", "1"), "{d:?}\n{}", site.log());
    assert_eq!(stop(daemon), Some(0));
}

/// limits.max_backlog: what one producer may have claimed and not ended.
/// The rest waits in new/ and is claimed, in drop order, as the backlog
/// drains; every deposit ends.
#[test]
fn a_producers_backlog_is_bounded_and_drains_in_drop_order() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[limits]\nmax_backlog = 3\n");
    let holder = LockHolder::hold(&site, "BKLG");
    let daemon = site.start();
    let new = site.new_dir("BKLG");
    for i in 0..10 {
        site.drop_rsync("BKLG", &format!("BKLG_{i:02}.zip"), &good_theia("BKLG", &i.to_string()));
    }
    wait_for(&site, "three claimed", 30, || redis.deposits().len() == 3);
    // Held there: the first runs (waiting for the lock), two wait.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(redis.deposits().len(), 3);
    assert_eq!(fs::read_dir(&new).unwrap().count(), 7);
    drop(holder);
    let t0 = Instant::now();
    let mut peak = 0;
    loop {
        let d = redis.deposits();
        peak = peak.max(d.iter().filter(|d| !terminal(d)).count());
        if d.len() == 10 && d.iter().all(terminal) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "not all ended: {d:?}\n{}", site.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(peak <= 3, "{peak} claimed at once");
    let ends: Vec<String> =
        redis.events().into_iter().filter(|e| e["state"] == "SUCCESS").map(|e| by_id_file(&redis, &e["id"])).collect();
    let want: Vec<String> = (0..10).map(|i| format!("BKLG_{i:02}.zip")).collect();
    assert_eq!(ends, want);
    assert_eq!(fs::read_dir(&new).unwrap().count(), 0);
    assert_eq!(stop(daemon), Some(0));
}

fn by_id_file(redis: &Redis, id: &str) -> String {
    redis.hgetall(&format!("depot:deposit:{id}"))["file"].clone()
}

/// Polling mode (watch.poll_ms) has only the settle rule: a writer that
/// pauses longer than settle_ms gets its file claimed, and given back when
/// it writes again. Bounded: after watch.max_give_backs give-backs the
/// upload is judged as it is (here, once complete: SUCCESS), not claimed
/// and given back for as long as the writer goes on.
#[test]
fn a_pausing_writer_in_polling_mode_is_given_back_a_bounded_number_of_times() {
    use std::io::Write;
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[watch]\npoll_ms = 100\nmax_give_backs = 3\n");
    // settle_ms (300) comes from Site's own [watch] table: merged below.
    let text = fs::read_to_string(&site.config).unwrap().replacen("[watch]\nsettle_ms = 300\n", "", 1);
    let text = text.replacen("[watch]\npoll_ms = 100\n", "[watch]\nsettle_ms = 300\npoll_ms = 100\n", 1);
    fs::write(&site.config, text).unwrap();
    // The pipeline waits on the producer's lock, so that each claim is
    // still running when the writer writes again.
    let holder = LockHolder::hold(&site, "POLL");
    let daemon = site.start();
    wait_for(&site, "ready", 20, || site.log().contains("ready"));
    let bytes = good_theia("POLL", "1");
    let new = site.new_dir("POLL");
    let mut f = fs::File::create(new.join("POLL_1.zip")).unwrap();
    let pieces = 10;
    let step = bytes.len().div_ceil(pieces);
    for chunk in bytes.chunks(step) {
        f.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(900));
    }
    drop(f);
    let given_back = || site.log().lines().filter(|l| l.contains("given back to new/")).count();
    assert!(given_back() >= 1, "never given back:\n{}", site.log());
    assert!(given_back() <= 3, "given back {} times:\n{}", given_back(), site.log());
    drop(holder);
    wait_for(&site, "judged", 30, || by_file(&redis, "POLL_1.zip").is_some_and(|d| terminal(&d)));
    let d = by_file(&redis, "POLL_1.zip").unwrap();
    assert_eq!(d["state"], "SUCCESS", "{d:?}\n{}", site.log());
    assert!(given_back() <= 3);
    assert_eq!(stop(daemon), Some(0));
}

/// The "still open" marks are bounded per producer: one producer holding
/// more write handles than watch.max_open_marks only has its own further
/// uploads judged by the settle rule; another producer's stalled sftp
/// upload (its handle open, paused longer than settle_ms) still waits.
#[test]
fn one_producers_open_files_never_get_anothers_stalled_upload_claimed() {
    use std::io::Write;
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let text = fs::read_to_string(&site.config).unwrap();
    fs::write(&site.config, text.replacen("settle_ms = 300\n", "settle_ms = 300\nmax_open_marks = 8\n", 1)).unwrap();
    let hog = site.new_dir("HOGG");
    let stal = site.new_dir("STAL");
    let daemon = site.start();
    wait_for(&site, "ready", 20, || site.log().contains("ready"));
    // HOGG holds 20 files open for writing (never closed while this runs).
    let held: Vec<fs::File> = (0..20)
        .map(|i| {
            let mut f = fs::File::create(hog.join(format!("HOGG_{i:02}.zip"))).unwrap();
            f.write_all(b"x").unwrap();
            f
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // STAL's upload: half, a pause with the handle open, the rest.
    let bytes = good_theia("STAL", "1");
    let mut f = fs::File::create(stal.join("STAL_1.zip")).unwrap();
    f.write_all(&bytes[..bytes.len() / 2]).unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        assert!(by_file(&redis, "STAL_1.zip").is_none(), "a stalled upload was claimed:\n{}", site.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    f.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(f);
    wait_for(&site, "STAL judged", 30, || by_file(&redis, "STAL_1.zip").is_some_and(|d| terminal(&d)));
    let d = by_file(&redis, "STAL_1.zip").unwrap();
    assert_eq!(d["state"], "SUCCESS", "{d:?}");
    drop(held);
    assert_eq!(stop(daemon), Some(0));
}
