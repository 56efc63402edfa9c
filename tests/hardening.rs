//! One producer cannot stall, starve or harm the others: every deposit
//! ends, whatever fails, and the daemon backs off instead of spinning.
//! Real redis-server, real folders, the real binary (see tests/common).

#[path = "../jobs/tests/support/mod.rs"]
mod support;

mod common;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use support::*;

fn deposit(redis: &Redis, id: &str) -> std::collections::HashMap<String, String> {
    redis.hgetall(&format!("depot:deposit:{id}"))
}

fn by_file(redis: &Redis, file: &str) -> Option<std::collections::HashMap<String, String>> {
    redis.deposits().into_iter().find(|d| d.get("file").map(String::as_str) == Some(file))
}

fn kill9(d: &mut Daemon) {
    if let Some(mut c) = d.0.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn ended_in_redis_but_still_in_the_spool_does_not_wedge_its_producer() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    // A crash after the terminal state reached Redis, before the spool
    // entry was removed.
    let id = "20260101T000000Z-WEDG-0000abcd";
    let spool = site.root().join("drop/.depot/spool");
    fs::create_dir_all(&spool).unwrap();
    let bytes = good_theia("WEDG", "w");
    fs::write(spool.join(format!("{id}=WEDG_1.zip")), &bytes).unwrap();
    fs::write(
        spool.join(format!("{id}.json")),
        format!(
            "{{\"id\":\"{id}\",\"producer\":\"WEDG\",\"name\":\"WEDG_1.zip\",\"claimed_ns\":1,\"size\":{},\"sidecar\":false,\"created\":\"2026-01-01T00:00:00Z\"}}\n",
            bytes.len()
        ),
    )
    .unwrap();
    redis.cmd(&["HSET", &format!("depot:deposit:{id}"), "id", id, "producer", "WEDG", "state", "SUCCESS"]).unwrap();
    let daemon = site.start();
    wait_for(&site, "the spool entry finished", 30, || !spool.join(format!("{id}.json")).exists());
    assert!(site.log().contains("ended in Redis, still in the spool"), "{}", site.log());
    // The producer's next deposit goes on.
    site.drop_rsync("WEDG", "WEDG_2.zip", &good_theia("WEDG", "x"));
    wait_for(&site, "next deposit", 30, || by_file(&redis, "WEDG_2.zip").is_some_and(|d| d["state"] == "SUCCESS"));
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn a_queued_job_lost_in_redis_is_queued_again() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    // Watcher alone: the job waits in the queue, then Redis loses it.
    let watcher = site.start_role("watcher");
    site.drop_rsync("LOST", "LOST_1.zip", &good_theia("LOST", "l"));
    wait_for(&site, "WAITING", 30, || by_file(&redis, "LOST_1.zip").is_some_and(|d| d["state"] == "WAITING"));
    let mut c = redis.conn().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("depot:queue:*").query(&mut c).unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL").arg(&keys).query(&mut c).unwrap();
    let worker = site.start_role("worker");
    wait_for(&site, "SUCCESS", 60, || by_file(&redis, "LOST_1.zip").is_some_and(|d| d["state"] == "SUCCESS"));
    let log = fs::read_to_string(site.root().join("watcher.log")).unwrap();
    assert!(log.contains("gone from Redis"), "{log}");
    assert_eq!(stop(worker), Some(0));
    assert_eq!(stop(watcher), Some(0));
}

#[test]
fn a_deposit_that_kills_its_worker_ends_after_max_attempts() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[workers]\nmax_attempts = 2\n");
    let mut daemon = site.start();
    site.drop_rsync("KILL", "KILL_1.zip", &big_deposit("KILL", 300));
    // Two runs, each killed mid-job (as an out-of-memory kill would).
    for round in 1..=2 {
        wait_for(&site, "PROGRESS", 60, || {
            by_file(&redis, "KILL_1.zip")
                .is_some_and(|d| d["state"] == "PROGRESS" && d["attempts"] == round.to_string())
        });
        kill9(&mut daemon);
        daemon = site.start();
    }
    wait_for(&site, "FAILURE", 60, || by_file(&redis, "KILL_1.zip").is_some_and(|d| d["state"] == "FAILURE"));
    let d = by_file(&redis, "KILL_1.zip").unwrap();
    assert_eq!(d["error_code"], "IO_ERROR");
    assert!(d["error"].contains("2 attempts were started and none finished"), "{d:?}");
    assert!(!site.root().join("publish/KILL/current").exists());
    let rejected = site.root().join("drop/KILL/rejected");
    assert!(fs::read_dir(&rejected).unwrap().count() > 0, "the deposit is kept in rejected/");
    // The producer's next deposit goes on.
    site.drop_rsync("KILL", "KILL_2.zip", &good_theia("KILL", "k"));
    wait_for(&site, "next deposit", 30, || by_file(&redis, "KILL_2.zip").is_some_and(|d| d["state"] == "SUCCESS"));
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn a_rotation_that_keeps_failing_backs_off_then_ends() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[workers]\nmax_attempts = 3\n");
    let daemon = site.start();
    // previous/ is made impossible after the start-up checks.
    wait_for(&site, "ready", 30, || site.log().contains("ready"));
    site.new_dir("ROTA");
    fs::write(site.root().join("drop/ROTA/previous"), b"not a folder").unwrap();
    let t0 = Instant::now();
    site.drop_rsync("ROTA", "ROTA_1.zip", &good_theia("ROTA", "r"));
    site.drop_rsync("GOOD", "GOOD_1.zip", &good_theia("GOOD", "g"));
    wait_for(&site, "ROTA terminal", 60, || by_file(&redis, "ROTA_1.zip").is_some_and(|d| d["state"] == "SUCCESS"));
    // Backed off between tries (2 s then 4 s, each ×0.5 to ×1.5), not spun.
    let log = site.log();
    let tries = log.matches("rotation failed; will retry").count();
    assert_eq!(tries, 2, "{log}");
    assert!(t0.elapsed() >= Duration::from_secs(3), "no backoff: {:?}", t0.elapsed());
    assert!(log.contains("the deposit is parked in the spool"), "{log}");
    assert_eq!(by_file(&redis, "GOOD_1.zip").unwrap()["state"], "SUCCESS");
    // Parked: not run again, even after a restart (previous/ mended, or
    // the start-up checks refuse to start).
    assert_eq!(stop(daemon), Some(0));
    fs::remove_file(site.root().join("drop/ROTA/previous")).unwrap();
    fs::create_dir(site.root().join("drop/ROTA/previous")).unwrap();
    let daemon = site.start();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(site.log().matches("rotation failed").count(), 0, "{}", site.log());
    let spool = site.root().join("drop/.depot/spool");
    assert!(fs::read_dir(&spool).unwrap().flatten().any(|f| f.file_name().to_string_lossy().contains("ROTA_1.zip")));
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn depot_ingest_and_the_daemon_publish_one_producer_one_at_a_time() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let daemon = site.start();
    let big = site.root().join("LOCK_big.zip");
    fs::write(&big, big_deposit("LOCK", 300)).unwrap();
    let mut ingest = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(["ingest", "--quiet", "--producer", "LOCK", "--config"])
        .arg(&site.config)
        .arg(&big)
        .spawn()
        .unwrap();
    // Once ingest is publishing, the daemon gets a deposit of the same producer.
    let staging = site.root().join("publish/.staging");
    wait_for(&site, "ingest staging", 30, || fs::read_dir(&staging).is_ok_and(|mut d| d.next().is_some()));
    site.drop_rsync("LOCK", "LOCK_small.zip", &good_theia("LOCK", "s"));
    let st = ingest.wait().unwrap();
    let ingest_done = Instant::now();
    assert!(st.code().is_some_and(|c| c == 0), "{st:?}");
    wait_for(&site, "daemon deposit", 60, || {
        by_file(&redis, "LOCK_small.zip").is_some_and(|d| d["state"] == "SUCCESS")
    });
    let d = by_file(&redis, "LOCK_small.zip").unwrap();
    let id = &d["id"];
    // The daemon's deposit was published after ingest's, and is current.
    let link = fs::read_link(site.root().join("publish/LOCK/current")).unwrap();
    assert!(link.ends_with(id), "{link:?}");
    let releases: Vec<_> = fs::read_dir(site.root().join("publish/LOCK/releases")).unwrap().flatten().collect();
    assert_eq!(releases.len(), 2);
    let _ = ingest_done;
    assert_eq!(deposit(&redis, id)["state"], "SUCCESS");
    assert_eq!(stop(daemon), Some(0));
}

/// A small filesystem of its own (tmpfs), unmounted when dropped; None
/// where this process may not mount (not root).
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(at: &std::path::Path, mib: u64) -> Option<SmallFs> {
        fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs(at.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn deposits_that_cannot_all_fit_take_turns_instead_of_all_failing() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[workers]\nmax_attempts = 2\n[limits]\nmin_free_bytes = 1048576\n");
    // publish_root on a 48 MiB filesystem: each 30 MiB deposit fits alone,
    // both together do not.
    let publish = site.root().join("publish");
    let Some(_fs) = SmallFs::mount(&publish, 48) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let daemon = site.start();
    wait_for(&site, "ready", 30, || site.log().contains("ready"));
    let (a, b) = (big_deposit("SPCA", 30), big_deposit("SPCB", 30));
    site.drop_rsync("SPCA", "SPCA_1.zip", &a);
    site.drop_rsync("SPCB", "SPCB_1.zip", &b);
    wait_for(&site, "both ended", 90, || {
        ["SPCA_1.zip", "SPCB_1.zip"]
            .iter()
            .all(|f| by_file(&redis, f).is_some_and(|d| d["state"] == "SUCCESS" || d["state"] == "FAILURE"))
    });
    let states: Vec<(String, String)> = ["SPCA_1.zip", "SPCB_1.zip"]
        .iter()
        .map(|f| {
            let d = by_file(&redis, f).unwrap();
            (d["state"].clone(), d.get("error_code").cloned().unwrap_or_default())
        })
        .collect();
    let ok = states.iter().filter(|(s, _)| s == "SUCCESS").count();
    assert_eq!(ok, 1, "exactly one fits: {states:?}\n{}", site.log());
    let failed = states.iter().find(|(s, _)| s == "FAILURE").unwrap();
    assert_eq!(failed.1, "NO_SPACE", "{states:?}");
    // When the two ran side by side, the second waited for the first's
    // space instead of failing at once; when the first had already ended
    // before the second started (a fast machine), its release holds the
    // space and there is nothing to wait for.
    let log = site.log();
    let winner = if states[0].0 == "SUCCESS" { "SPCA" } else { "SPCB" };
    let loser = if winner == "SPCA" { "SPCB" } else { "SPCA" };
    let at = |what: &str, p: &str| {
        log.lines().position(|l| l.contains(what) && l.contains(&format!("producer={p}"))).unwrap_or(usize::MAX)
    };
    if at("started deposit=", loser) < at("finished deposit=", winner) {
        assert!(log.contains("waiting for disk space"), "{log}");
    }
    // Nothing of the failed one in staging.
    let staging = publish.join(".staging");
    assert!(fs::read_dir(&staging).map_or(true, |d| d.count() == 0));
    assert_eq!(stop(daemon), Some(0));
}
