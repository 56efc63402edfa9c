//! `depot run` end to end: a private redis-server per test on a free
//! loopback port, real folders, real zips, the real binary.

#[path = "../jobs/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

mod common;
use common::*;

#[test]
fn deposits_of_several_producers_each_end_once_in_drop_order() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let daemon = site.start();
    let producers = ["AAAA", "BBBB", "CCCC"];
    let mut n = 0;
    for round in 0..3 {
        for p in producers {
            site.drop_rsync(p, &format!("{p}_{round}.zip"), &good_theia(p, &format!("r{round}")));
            n += 1;
        }
    }
    // A hostile deposit next to the good ones.
    site.drop_rsync("DDDD", "DDDD_evil.zip", &RawZip::new().file("../evil.txt", "x").build());
    n += 1;
    wait_for(&site, "all deposits terminal", 60, || {
        let d = redis.deposits();
        d.len() == n && d.iter().all(terminal)
    });
    let deposits = redis.deposits();
    for d in &deposits {
        let expect = if d["producer"] == "DDDD" { "FAILURE" } else { "SUCCESS" };
        assert_eq!(d["state"], expect, "{d:?}");
    }
    let evil = deposits.iter().find(|d| d["producer"] == "DDDD").unwrap();
    assert_eq!(evil["error_code"], "UNSAFE_PATH");
    assert!(site.root().join(format!("drop/DDDD/rejected/{}/report.txt", evil["id"])).is_file());
    assert!(!site.root().join("drop/DDDD/evil.txt").exists() && !site.root().join("evil.txt").exists());
    // Exactly one terminal event per deposit.
    let events = redis.events();
    for d in &deposits {
        let ends = events
            .iter()
            .filter(|e| e["id"] == d["id"] && (e["state"] == "SUCCESS" || e["state"] == "FAILURE"))
            .count();
        assert_eq!(ends, 1, "{}", d["id"]);
    }
    for p in producers {
        // Published in drop order: the current release is the last round's.
        let obs = fs::read_to_string(site.root().join(format!("publish/{p}/current/{p}_DAT_1/obs1.txt"))).unwrap();
        assert_eq!(obs, "a,b\n1,r2\n", "{}", site.log());
        // Ids and times have one-second resolution; the event stream has order.
        let mine: Vec<&HashMap<String, String>> = events
            .iter()
            .filter(|e| e["producer"] == p && e["state"] == "SUCCESS")
            .map(|e| deposits.iter().find(|d| d["id"] == e["id"]).unwrap())
            .collect();
        let files: Vec<&str> = mine.iter().map(|d| d["file"].as_str()).collect();
        assert_eq!(files, [format!("{p}_0.zip"), format!("{p}_1.zip"), format!("{p}_2.zip")]);
        let prev: Vec<_> = fs::read_dir(site.root().join(format!("drop/{p}/previous")))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(prev, [format!("{p}_2.zip").as_str()]);
        let producer = redis.hgetall(&format!("depot:producer:{p}"));
        assert_eq!(producer["last_state"], "SUCCESS");
        assert!(producer["current_release"].contains(&mine[2]["id"]));
    }
    // The spool is empty: every deposit left it.
    assert_eq!(fs::read_dir(site.root().join("drop/.depot/spool")).unwrap().count(), 0);
    assert_eq!(stop(daemon), Some(0), "{}", site.log());
}

#[test]
fn a_slow_upload_is_taken_only_once_it_stopped_growing() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let daemon = site.start();
    let bytes = good_theia("SLOW", "slow");
    let path = site.new_dir("SLOW").join("SLOW_1.zip");
    let mut f = fs::File::create(&path).unwrap();
    use std::io::Write;
    for chunk in bytes.chunks(bytes.len() / 8 + 1) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    drop(f);
    wait_for(&site, "slow deposit terminal", 30, || redis.deposits().iter().any(terminal));
    let d = redis.deposits();
    assert_eq!(d.len(), 1, "claimed more than once: {d:?}");
    assert_eq!(d[0]["state"], "SUCCESS", "{:?}", d[0]);
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn a_spool_entry_left_by_a_crash_is_finished_at_start() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    // What a crash right after the claim leaves: a spool entry, no status.
    let id = "20260101T000000Z-CRSH-0000abcd";
    let spool = site.root().join("drop/.depot/spool");
    fs::create_dir_all(&spool).unwrap();
    let bytes = good_theia("CRSH", "c");
    // The size a claim recorded is the file's (a file of another size is
    // one still being written after its claim, given back, not judged).
    let entry = |id: &str, name: &str, ns: u32, size: usize| {
        format!(
            "{{\"id\":\"{id}\",\"producer\":\"CRSH\",\"name\":\"{name}\",\"claimed_ns\":{ns},\"size\":{size},\"sidecar\":false,\"created\":\"2026-01-01T00:00:00Z\"}}"
        )
    };
    fs::write(spool.join(format!("{id}=CRSH_1.zip")), &bytes).unwrap();
    fs::write(spool.join(format!("{id}.json")), entry(id, "CRSH_1.zip", 1, bytes.len())).unwrap();
    // And one claimed by a version that kept a folder per deposit.
    let old = "20260101T000000Z-CRSH-0000abce";
    fs::create_dir_all(spool.join(old)).unwrap();
    let d = good_theia("CRSH", "d");
    fs::write(spool.join(old).join("CRSH_2.zip"), &d).unwrap();
    fs::write(spool.join(old).join("deposit.json"), entry(old, "CRSH_2.zip", 2, d.len())).unwrap();
    // And stale staging from a crash mid-publish.
    fs::create_dir_all(site.root().join("publish/.staging/20250101T000000Z-CRSH-00000001/x")).unwrap();
    let daemon = site.start();
    wait_for(&site, "recovered deposits terminal", 30, || {
        [id, old].iter().all(|i| terminal(&redis.hgetall(&format!("depot:deposit:{i}"))))
    });
    assert_eq!(redis.hgetall(&format!("depot:deposit:{id}"))["state"], "SUCCESS");
    assert_eq!(redis.hgetall(&format!("depot:deposit:{old}"))["state"], "SUCCESS");
    assert!(site.root().join(format!("publish/CRSH/releases/{id}/CRSH_DAT_2/obs3.txt")).is_file());
    assert!(site.root().join("publish/CRSH/current").read_link().unwrap().ends_with(old));
    assert!(site.root().join("drop/CRSH/previous/CRSH_2.zip").is_file());
    assert_eq!(fs::read_dir(&spool).unwrap().count(), 0);
    assert!(!site.root().join("publish/.staging/20250101T000000Z-CRSH-00000001").exists());
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn redis_restarted_empty_loses_nothing() {
    let port = free_port();
    let redis = Redis::start_on(port);
    let site = Site::new(&redis.url(), "");
    let daemon = site.start();
    site.drop_rsync("RDIS", "RDIS_0.zip", &good_theia("RDIS", "0"));
    wait_for(&site, "first deposit", 30, || redis.deposits().iter().any(terminal));
    drop(redis);
    // Dropped while Redis is away: they wait.
    site.drop_rsync("RDIS", "RDIS_1.zip", &good_theia("RDIS", "1"));
    site.drop_rsync("QQQQ", "QQQQ_1.zip", &good_theia("QQQQ", "1"));
    std::thread::sleep(Duration::from_secs(3));
    let redis = Redis::start_on(port);
    wait_for(&site, "deposits after the outage", 60, || {
        let d = redis.deposits();
        d.len() == 2 && d.iter().all(terminal)
    });
    assert!(redis.deposits().iter().all(|d| d["state"] == "SUCCESS"));
    let obs = fs::read_to_string(site.root().join("publish/RDIS/current/RDIS_DAT_1/obs1.txt")).unwrap();
    assert_eq!(obs, "a,b\n1,1\n");
    let log = site.log();
    assert!(log.matches("Redis unreachable").count() <= 2, "{log}");
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn unreachable_redis_at_start_is_one_clear_line() {
    let site = Site::new(&format!("redis://127.0.0.1:{}", free_port()), "");
    let out = Command::new(env!("CARGO_BIN_EXE_depot")).args(["run", "--config"]).arg(&site.config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach Redis") && err.contains("redis-server"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Its cause said once, not once per layer of the error.
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
}

#[test]
fn status_and_retry_commands() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let daemon = site.start();
    site.drop_rsync("STAT", "STAT_1.zip", b"not a zip");
    wait_for(&site, "failure", 30, || redis.deposits().iter().any(terminal));
    let id = redis.deposits()[0]["id"].clone();
    let cfg = site.config.to_str().unwrap().to_owned();
    let out =
        Command::new(env!("CARGO_BIN_EXE_depot")).args(["status", &id, "--json", "--config", &cfg]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error_code"], "NOT_A_ZIP");
    let out = Command::new(env!("CARGO_BIN_EXE_depot")).args(["status", "STAT", "--config", &cfg]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILURE"));
    let out = Command::new(env!("CARGO_BIN_EXE_depot")).args(["retry", &id, "--config", &cfg]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for(&site, "second deposit", 30, || {
        let d = redis.deposits();
        d.len() == 2 && d.iter().all(terminal)
    });
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn two_hundred_deposits_over_ten_producers() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[workers]\nconcurrency = 4\n");
    let daemon = site.start();
    let producers: Vec<String> = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF", "GGG", "HHH", "III", "JJJ"]
        .iter()
        .map(|s| format!("M{s}"))
        .collect();
    for round in 0..20 {
        for p in &producers {
            site.drop_rsync(p, &format!("{p}_{round:02}.zip"), &good_theia(p, &format!("r{round}")));
        }
    }
    wait_for(&site, "200 deposits terminal", 120, || {
        let d = redis.deposits();
        d.len() == 200 && d.iter().all(terminal)
    });
    let deposits = redis.deposits();
    assert!(deposits.iter().all(|d| d["state"] == "SUCCESS"));
    let events = redis.events();
    for p in &producers {
        let order: Vec<String> = events
            .iter()
            .filter(|e| &e["producer"] == p && e["state"] == "SUCCESS")
            .map(|e| deposits.iter().find(|d| d["id"] == e["id"]).unwrap()["file"].clone())
            .collect();
        let want: Vec<String> = (0..20).map(|r| format!("{p}_{r:02}.zip")).collect();
        assert_eq!(order, want, "{p} published out of drop order");
        let obs = fs::read_to_string(site.root().join(format!("publish/{p}/current/{p}_DAT_1/obs1.txt"))).unwrap();
        assert_eq!(obs, "a,b\n1,r19\n");
        // publish.keep_releases (10 here) stay; the others were set aside.
        assert_eq!(fs::read_dir(site.root().join(format!("publish/{p}/releases"))).unwrap().count(), 10);
    }
    // ... and deleted once the daemon had nothing left to do.
    wait_for(&site, "pruned releases deleted", 20, || {
        fs::read_dir(site.root().join("publish/.pruned")).map_or(0, |d| d.count()) == 0
    });
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn a_watcher_and_a_worker_in_two_processes() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let watcher = site.start_role("watcher");
    let worker = site.start_role("worker");
    let producers = ["WRKA", "WRKB"];
    for round in 0..5 {
        for p in producers {
            site.drop_rsync(p, &format!("{p}_{round}.zip"), &good_theia(p, &format!("r{round}")));
        }
    }
    let logs = || {
        let read = |r: &str| fs::read_to_string(site.root().join(format!("{r}.log"))).unwrap_or_default();
        format!("watcher:\n{}\nworker:\n{}", read("watcher"), read("worker"))
    };
    wait_for(&site, "10 deposits terminal", 60, || {
        let d = redis.deposits();
        d.len() == 10 && d.iter().all(terminal)
    });
    let deposits = redis.deposits();
    assert!(deposits.iter().all(|d| d["state"] == "SUCCESS"), "{}", logs());
    let events = redis.events();
    for p in producers {
        let order: Vec<String> = events
            .iter()
            .filter(|e| e["producer"] == p && e["state"] == "SUCCESS")
            .map(|e| deposits.iter().find(|d| d["id"] == e["id"]).unwrap()["file"].clone())
            .collect();
        let want: Vec<String> = (0..5).map(|r| format!("{p}_{r}.zip")).collect();
        assert_eq!(order, want, "{}", logs());
        let obs = fs::read_to_string(site.root().join(format!("publish/{p}/current/{p}_DAT_1/obs1.txt"))).unwrap();
        assert_eq!(obs, "a,b\n1,r4\n");
    }
    // Claims were the watcher's, jobs the worker's.
    let (w, k) = (
        fs::read_to_string(site.root().join("watcher.log")).unwrap(),
        fs::read_to_string(site.root().join("worker.log")).unwrap(),
    );
    assert!(w.contains("claimed") && !w.contains("pipeline done"), "{}", logs());
    assert!(k.contains("pipeline done") && !k.contains("claimed"), "{}", logs());
    wait_for(&site, "spool empty", 20, || fs::read_dir(site.root().join("drop/.depot/spool")).unwrap().count() == 0);
    assert_eq!(stop(worker), Some(0), "{}", logs());
    assert_eq!(stop(watcher), Some(0), "{}", logs());
}

fn state_of(redis: &Redis) -> Option<String> {
    redis.deposits().first().and_then(|d| d.get("state").cloned())
}

#[test]
fn sigterm_mid_job_exits_zero_and_the_job_resumes() {
    let redis = Redis::start();
    // No grace at all: the running job is interrupted, never half-published.
    let site = Site::new(&redis.url(), "[workers]\nshutdown_timeout_s = 0\n");
    let daemon = site.start();
    site.drop_rsync("TERM", "TERM_1.zip", &big_deposit("TERM", 400));
    wait_for(&site, "PROGRESS", 60, || state_of(&redis).as_deref() == Some("PROGRESS"));
    let t0 = Instant::now();
    assert_eq!(stop(daemon), Some(0), "{}", site.log());
    assert!(t0.elapsed() < Duration::from_secs(20));
    let st = state_of(&redis).unwrap();
    assert!(st == "SUCCESS" || st == "WAITING", "{st}");
    if st != "SUCCESS" {
        assert!(!site.root().join("publish/TERM/current").exists(), "half a release visible");
    }
    // Taken up again at the next start.
    let daemon = site.start();
    wait_for(&site, "SUCCESS after restart", 60, || state_of(&redis).as_deref() == Some("SUCCESS"));
    assert_eq!(fs::metadata(site.root().join("publish/TERM/current/TERM_DAT_1/big.bin")).unwrap().len(), 400 << 20);
    let ends = redis.events().iter().filter(|e| e["state"] == "SUCCESS").count();
    assert_eq!(ends, 1);
    assert_eq!(stop(daemon), Some(0));
    assert_eq!(fs::read_dir(site.root().join("publish/.staging")).map(|d| d.count()).unwrap_or(0), 0);
}

#[test]
fn sigkill_mid_job_then_restart_ends_success_once() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let mut daemon = site.start();
    site.drop_rsync("KILL", "KILL_0.zip", &good_theia("KILL", "old"));
    wait_for(&site, "first release", 30, || state_of(&redis).as_deref() == Some("SUCCESS"));
    site.drop_rsync("KILL", "KILL_1.zip", &big_deposit("KILL", 400));
    wait_for(&site, "PROGRESS", 60, || redis.deposits().iter().any(|d| d["state"] == "PROGRESS"));
    let child = daemon.0.as_mut().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever was killed, `current` is a complete release.
    let cur = site.root().join("publish/KILL/current");
    let m: serde_json::Value = serde_json::from_slice(&fs::read(cur.join("manifest.json")).unwrap()).unwrap();
    for f in m["files"].as_array().unwrap() {
        assert_eq!(fs::metadata(cur.join(f["path"].as_str().unwrap())).unwrap().len(), f["size"].as_u64().unwrap());
    }
    let daemon = site.start();
    wait_for(&site, "both terminal", 60, || {
        let d = redis.deposits();
        d.len() == 2 && d.iter().all(|d| d["state"] == "SUCCESS")
    });
    let ends: Vec<_> = redis.events().into_iter().filter(|e| e["state"] == "SUCCESS").collect();
    assert_eq!(ends.len(), 2);
    assert!(cur.join("KILL_DAT_1/big.bin").is_file());
    assert_eq!(stop(daemon), Some(0));
    assert_eq!(fs::read_dir(site.root().join("publish/.staging")).map(|d| d.count()).unwrap_or(0), 0);
    assert_eq!(fs::read_dir(site.root().join("drop/.depot/spool")).unwrap().count(), 0);
}

#[test]
fn sighup_reloads_and_a_bad_config_is_kept_out() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "[producers]\nallow = [\"HUPA\"]\n");
    let daemon = site.start();
    let pid = daemon.0.as_ref().unwrap().id().to_string();
    site.drop_rsync("HUPB", "HUPB_1.zip", &good_theia("HUPB", "b"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(redis.deposits().is_empty(), "a producer outside producers.allow was served");
    let cfg = fs::read_to_string(&site.config).unwrap().replace("allow = [\"HUPA\"]", "allow = [\"HUPA\", \"HUPB\"]");
    fs::write(&site.config, cfg).unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    wait_for(&site, "HUPB after reload", 30, || redis.deposits().iter().any(terminal));
    fs::write(&site.config, "this is = = not toml").unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    site.drop_rsync("HUPA", "HUPA_1.zip", &good_theia("HUPA", "a"));
    wait_for(&site, "HUPA with the kept config", 30, || {
        let d = redis.deposits();
        d.len() == 2 && d.iter().all(|d| d["state"] == "SUCCESS")
    });
    assert!(site.log().contains("reload failed"), "{}", site.log());
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn old_finished_deposit_status_is_trimmed() {
    let redis = Redis::start();
    let site = Site::with_redis_keys(&redis.url(), "keep_deposits_days = 1", "");
    // Claimed long ago: one finished, one that never did.
    for (id, state) in [("20200101T000000Z-OLDD-00000001", "SUCCESS"), ("20200101T000000Z-OLDD-00000002", "PROGRESS")] {
        redis.cmd(&["HSET", &format!("depot:deposit:{id}"), "id", id, "state", state]).unwrap();
        redis.cmd(&["ZADD", "depot:deposits", "1577836800000", id]).unwrap();
    }
    let daemon = site.start();
    site.drop_rsync("NEWD", "NEWD_1.zip", &good_theia("NEWD", "n"));
    wait_for(&site, "new deposit terminal and old status trimmed", 30, || {
        let d = redis.deposits();
        d.len() == 2 && d.iter().any(|d| d["id"].contains("NEWD") && terminal(d))
    });
    let ids: Vec<String> = redis.deposits().iter().map(|d| d["id"].clone()).collect();
    assert!(ids.contains(&"20200101T000000Z-OLDD-00000002".to_owned()), "{ids:?}");
    let mut c = redis.conn().unwrap();
    let n: usize = redis::cmd("ZCARD").arg("depot:deposits").query(&mut c).unwrap();
    assert_eq!(n, 2);
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn finished_queue_tasks_are_trimmed() {
    let redis = Redis::start();
    let site = Site::with_redis_keys(&redis.url(), "keep_finished_jobs = 2", "");
    let daemon = site.start();
    for i in 0..6 {
        site.drop_rsync("TRIM", &format!("TRIM_{i}.zip"), &good_theia("TRIM", &i.to_string()));
    }
    wait_for(&site, "six deposits", 60, || {
        let d = redis.deposits();
        d.len() == 6 && d.iter().all(terminal)
    });
    assert_eq!(stop(daemon), Some(0));
    let count = |pattern: &str| -> usize {
        let mut c = redis.conn().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap();
        keys.len()
    };
    assert!(count("depot:queue:meta:*") >= 6);
    // Trimmed at the next start (and every minute while running).
    let daemon = site.start();
    wait_for(&site, "trim", 30, || count("depot:queue:meta:*") <= 2);
    let mut c = redis.conn().unwrap();
    let done: usize = redis::cmd("SCARD").arg("depot:queue:done").query(&mut c).unwrap();
    assert!(done <= 2);
    // Deposit records are not the queue's: all six remain.
    assert_eq!(redis.deposits().len(), 6);
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn more_than_ten_thousand_deposits_keep_the_queue_bounded() {
    let redis = Redis::start();
    let producers: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "Q{}",
                [
                    "AAA", "AAB", "AAC", "AAD", "AAE", "AAF", "AAG", "AAH", "AAI", "AAJ", "AAK", "AAL", "AAM", "AAN",
                    "AAO", "AAP", "AAQ", "AAR", "AAS", "AAT"
                ][i]
            )
        })
        .collect();
    let site = Site::new(&redis.url(), "[producers]\nprofile = \"plain\"\n[workers]\nconcurrency = 4\n");
    // Dropped before the daemon starts: the whole backlog is there at once.
    let zip = RawZip::new().stored("a.txt", "a").build();
    let per = 505;
    for p in &producers {
        let d = site.new_dir(p);
        for i in 0..per {
            fs::write(d.join(format!("{p}_{i:04}.zip")), &zip).unwrap();
        }
    }
    let total = per * producers.len();
    assert!(total > 10_000);
    let daemon = site.start();
    let mut max_queued = 0usize;
    wait_for(&site, "all deposits terminal", 600, || {
        let mut c = redis.conn().unwrap();
        let active: usize = redis::cmd("LLEN").arg("depot:queue:active").query(&mut c).unwrap();
        let scheduled: usize = redis::cmd("ZCARD").arg("depot:queue:scheduled").query(&mut c).unwrap();
        max_queued = max_queued.max(active + scheduled);
        let spool = fs::read_dir(site.root().join("drop/.depot/spool")).map(|d| d.count()).unwrap_or(1);
        let left: usize = producers.iter().map(|p| fs::read_dir(site.new_dir(p)).unwrap().count()).sum();
        std::thread::sleep(Duration::from_millis(400));
        spool == 0 && left == 0
    });
    let log = site.log();
    assert!(max_queued <= producers.len(), "queue grew to {max_queued}: {log}");
    let mut c = redis.conn().unwrap();
    let n: usize = redis::cmd("ZCARD").arg("depot:deposits").query(&mut c).unwrap();
    assert_eq!(n, total);
    assert_eq!(stop(daemon), Some(0));
}

/// systemd's side of `Type=notify`: READY=1 only once Redis answered and a
/// deposit left in new/ while depot was down has been claimed and queued,
/// WATCHDOG=1 at half of WATCHDOG_USEC while it runs, STOPPING=1 on SIGTERM.
#[test]
fn systemd_notify_ready_watchdog_stopping() {
    use std::os::unix::net::UnixDatagram;
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let d = site.new_dir("SDNT");
    let f = d.join("SDNT_1.zip");
    fs::write(&f, good_theia("SDNT", "1")).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    fs::File::options().write(true).open(&f).unwrap().set_modified(old).unwrap();
    // Left there while depot was down: past settle_ms (300) since it came
    // (its ctime, which a test cannot set back).
    std::thread::sleep(Duration::from_millis(500));
    let sock_path = site.root().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t0 = Instant::now();
    let daemon = site.start_env(&[("NOTIFY_SOCKET", sock_path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")]);
    let mut buf = [0u8; 4096];
    // A recv(2) with SO_RCVTIMEO fails with EINTR when the process is
    // stopped and continued, even with no signal handler (signal(7)): a
    // retry, not a missing notification. Seen once in CI.
    let mut recv = || -> String {
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("no notification: {e}; log:\n{}", site.log()),
            }
        }
    };
    // Watchdog pings may come first; READY=1 must come, and by then the
    // deposit that waited in new/ is known to Redis.
    loop {
        if recv().contains("READY=1") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no READY=1");
    }
    let known = redis.deposits();
    assert_eq!(known.len(), 1, "READY=1 before the waiting deposit was claimed and queued");
    assert!(["WAITING", "PROGRESS", "SUCCESS"].contains(&known[0]["state"].as_str()), "{known:?}");
    // At least two watchdog pings within ~1 s (every 200 ms).
    let t1 = Instant::now();
    let mut pings = 0;
    while pings < 2 {
        if recv().contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(t1.elapsed() < Duration::from_secs(3), "watchdog pings too slow");
    let pid = daemon.0.as_ref().unwrap().id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    loop {
        if recv().contains("STOPPING=1") {
            break;
        }
    }
    assert_eq!(stop(daemon), Some(0));
}

/// notify.command runs once per terminal state with the DEPOT_* environment;
/// a command that hangs is killed at notify.timeout_s and changes nothing.
/// metrics.listen serves the counters.
#[test]
fn notify_command_and_metrics() {
    let redis = Redis::start();
    let port = free_port();
    let out = tempfile::tempdir().unwrap();
    let script = "env | grep '^DEPOT_' | sort > \"$1/$DEPOT_DEPOSIT.env\"; [ \"$DEPOT_STATE\" = SUCCESS ] || sleep 30";
    let site = Site::new(
        &redis.url(),
        &format!(
            "[notify]\ncommand = [\"/bin/sh\", \"-c\", {script:?}, \"sh\", {:?}]\ntimeout_s = 1\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            out.path().to_str().unwrap()
        ),
    );
    let daemon = site.start();
    site.drop_rsync("GOOD", "GOOD_1.zip", &good_theia("GOOD", "1"));
    site.drop_rsync("BADD", "BADD_1.zip", b"this is not a zip");
    wait_for(&site, "two terminal states", 30, || redis.deposits().iter().filter(|d| terminal(d)).count() == 2);
    wait_for(&site, "two notify runs", 10, || fs::read_dir(out.path()).unwrap().count() == 2);
    wait_for(&site, "the hung command killed", 10, || site.log().contains("notify.command timed out"));
    let mut envs = HashMap::new();
    for e in fs::read_dir(out.path()).unwrap() {
        let text = fs::read_to_string(e.unwrap().path()).unwrap();
        let kv: HashMap<String, String> =
            text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        envs.insert(kv["DEPOT_PRODUCER"].clone(), kv);
    }
    let good = &envs["GOOD"];
    assert_eq!(good["DEPOT_STATE"], "SUCCESS");
    assert_eq!(good["DEPOT_FILE"], "GOOD_1.zip");
    assert!(good["DEPOT_RELEASE"].contains("GOOD/releases/"), "{good:?}");
    assert!(good["DEPOT_DEPOSIT"].contains("-GOOD-"));
    let bad = &envs["BADD"];
    assert_eq!(bad["DEPOT_STATE"], "FAILURE");
    assert_eq!(bad["DEPOT_ERROR_CODE"], "NOT_A_ZIP");
    assert!(Path::new(&bad["DEPOT_REPORT"]).is_file(), "{bad:?}");
    // The command's failure left the deposit as it was.
    let states: Vec<String> = redis.deposits().iter().map(|d| d["state"].clone()).collect();
    assert!(states.contains(&"SUCCESS".to_owned()) && states.contains(&"FAILURE".to_owned()));

    let metrics = http_get(port, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for line in [
        "depot_deposits_total{producer=\"GOOD\",state=\"SUCCESS\"} 1",
        "depot_deposits_total{producer=\"BADD\",state=\"FAILURE\"} 1",
        "depot_failures_total{producer=\"BADD\",code=\"NOT_A_ZIP\"} 1",
        "depot_claimed_total{producer=\"GOOD\"} 1",
        "depot_stage_seconds_count{stage=\"publish\"} 1",
        "depot_notify_failures_total 1",
        "depot_queue_depth 0",
        "depot_redis_up 1",
    ] {
        assert!(metrics.contains(line), "missing {line}:\n{metrics}");
    }
    assert!(http_get(port, "/other").starts_with("HTTP/1.1 404"));
    assert_eq!(stop(daemon), Some(0));
}

/// `depot config check` runs every start-up check; `depot run` refuses a
/// failed one with a line that names it.
#[test]
fn config_check_and_start_up_checks() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_depot"))
            .args(["config", "check", "--config"])
            .arg(&site.config)
            .output()
            .unwrap()
    };
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for l in [
        "# ok: drop_root",
        "# ok: publish_root",
        "# ok: spool and drop folders",
        "# ok: staging and releases",
        "# ok: Redis",
    ] {
        assert!(text.contains(l), "missing {l}:\n{text}");
    }
    // The output is a config file itself.
    let again = site.root().join("effective.toml");
    fs::write(&again, text.as_bytes()).unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_depot")).args(["config", "check", "--config"]).arg(&again).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    fs::remove_dir(site.root().join("publish")).unwrap();
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("# FAILED: publish_root"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_depot")).args(["run", "--config"]).arg(&site.config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("publish_root") && err.trim().lines().count() == 1, "{err}");

    // Redis gone: config check says so (and exits 2).
    fs::create_dir(site.root().join("publish")).unwrap();
    drop(redis);
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("# FAILED: cannot reach Redis"), "{text}");
}

/// A Redis with a password, a database number and a key prefix of the
/// operator's choosing; the password never appears in output.
#[test]
fn redis_password_database_and_prefix() {
    let redis = Redis::start_with(free_port(), Some("s3cr3t-pw"));
    let url = format!("{}/3", redis.url());
    let site = Site::with_redis_keys(&url, "prefix = \"arch\"", "");
    let out = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(["config", "check", "--config"])
        .arg(&site.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("s3cr3t-pw"), "{text}");
    let daemon = site.start();
    site.drop_rsync("PASS", "PASS_1.zip", &good_theia("PASS", "1"));
    let mut c = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    wait_for(&site, "SUCCESS in db 3 under arch:", 30, || {
        let keys: Vec<String> = redis::cmd("KEYS").arg("arch:deposit:*").query(&mut c).unwrap();
        keys.first().is_some_and(|k| {
            let h: HashMap<String, String> = redis::cmd("HGETALL").arg(k).query(&mut c).unwrap();
            h.get("state").is_some_and(|s| s == "SUCCESS")
        })
    });
    let db0: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis.conn().unwrap()).unwrap();
    assert!(db0.is_empty(), "database 0 untouched: {db0:?}");
    assert_eq!(stop(daemon), Some(0));
    assert!(!site.log().contains("s3cr3t-pw"));
}

/// `rediss://`: a redis-server that only speaks TLS, its certificate signed
/// by a CA of the test's own (trusted through SSL_CERT_FILE, as an operator
/// would point at a private CA); the daemon runs a deposit through it.
#[test]
fn redis_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    private_ca(d);
    let port = free_port();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-cert-file", "server.pem", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.pem"])
        .args(["--tls-auth-clients", "no"])
        .current_dir(d)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut server);
    let site = Site::new(&format!("rediss://127.0.0.1:{port}/0"), "");
    let ca = d.join("ca.pem");
    let depot = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_depot"))
            .args(args)
            .arg("--config")
            .arg(&site.config)
            .env("SSL_CERT_FILE", &ca)
            .output()
            .unwrap()
    };
    wait_for(&site, "Redis answering over TLS", 20, || depot(&["config", "check"]).status.success());
    let daemon = site.start_env(&[("SSL_CERT_FILE", ca.to_str().unwrap())]);
    site.drop_rsync("TLSS", "TLSS_1.zip", &good_theia("TLSS", "1"));
    wait_for(&site, "SUCCESS over TLS", 30, || {
        let out = depot(&["status", "TLSS", "--json"]);
        String::from_utf8_lossy(&out.stdout).contains("SUCCESS")
    });
    assert_eq!(stop(daemon), Some(0));
}

/// The shell commands of a Markdown file of the repository (README.md,
/// docs/*.md), with continuations joined and multi-line commands kept whole
/// (a line is added until `sh -n` accepts the text).
fn doc_commands(file: &str) -> Vec<String> {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let mut out = Vec::new();
    let mut in_block = false;
    let mut block: Vec<String> = Vec::new();
    for line in readme.lines() {
        if !in_block {
            in_block = line.trim() == "```sh";
            continue;
        }
        if line.trim() == "```" {
            in_block = false;
            if block.first().is_some_and(|l| l.starts_with("#!")) {
                // A script shown whole: one "command".
                out.push(block.join("\n"));
                block.clear();
                continue;
            }
            let mut acc = String::new();
            for l in block.drain(..) {
                let l = l.trim();
                if l.starts_with('#') || l.is_empty() {
                    continue;
                }
                let code = l.split("  #").next().unwrap_or(l).trim_end();
                if !acc.is_empty() {
                    acc.push('\n');
                }
                acc.push_str(code.strip_suffix('\\').unwrap_or(code));
                let complete = !code.ends_with('\\')
                    && Command::new("sh").args(["-n", "-c", &acc]).stderr(Stdio::null()).status().unwrap().success();
                if complete {
                    out.push(std::mem::take(&mut acc));
                }
            }
            assert!(acc.is_empty(), "{file}: incomplete command {acc:?}");
            continue;
        }
        block.push(line.to_owned());
    }
    out
}

/// Every command the README and the docs (docs/*.md) show is run here, or
/// listed below with the place that runs it (or why it cannot run on a CI
/// machine); a new command without a home fails this test. The README's
/// run in the quick start's folder, after its deposits ended; each doc's in
/// a folder of its own, in order (`depot sample` then `depot check`).
#[test]
fn readme_commands_run() {
    const ELSEWHERE: &[(&str, &str)] = &[
        ("depot run", "this test runs the daemon on the repository's config.toml"),
        ("depot sample MSEC var/drop/MSEC/new/", "this test: the quick start's sample, into its new/"),
        ("cp README.md var/drop/MSEC/new/MSEC_BAD.zip", "this test drops the quick start's bad deposit (not a zip)"),
        ("scripts/test.sh", ".ci/run"),
        ("scripts/deb.sh", ".ci/run, which also lists the package's files"),
        ("cargo install garage --locked", "scripts/test.sh, when garage is missing"),
        ("cargo install --path . --locked", ".ci/run, into a temporary root"),
        ("systemd-sysusers depot.conf", "tests/systemd.rs applies depot.sysusers to a private root"),
        ("systemd-tmpfiles --create depot.conf", "tests/systemd.rs applies depot.tmpfiles to a private root"),
        ("install -m 0644 systemd/", "host only: root on a systemd host (the files are tested in tests/systemd.rs)"),
        (
            "install -m 0640 -g depot systemd/depot.toml",
            "host only: root, user depot (the file: packaged_config_is_valid)",
        ),
        ("cargo install cargo-deb --locked", ".ci/run"),
        ("apt-get install ./target/debian/", "host only: installs a system service"),
        ("systemctl", "host only: systemd as PID 1"),
        ("journalctl", "host only: systemd as PID 1"),
        ("depot producer add", "tests/transport.rs onboards its producers with it (it makes system accounts)"),
        ("sftp ", "tests/transport.rs, against an sshd of its own"),
        ("scp ", "tests/transport.rs, against an sshd of its own"),
        ("rsync ", "tests/transport.rs, through rrsync on an sshd of its own"),
        ("md5sum ", "the producer's machine; tests/uploads.rs sends sidecars"),
        (
            "#!/bin/sh\n# a local Garage",
            "the S3 recipe: tests/common/garage.rs runs Garage the same way for tests/s3.rs",
        ),
        (
            "#!/bin/sh",
            "example notify scripts: need an SMTP server, jq and a webhook (tests/operate.rs runs a webhook hook)",
        ),
        ("bench/ingest.sh", "benchmark, run by hand"),
        ("bench/s3.sh", "benchmark, run by hand (Garage, rclone)"),
        ("bench/http.sh", "benchmark, run by hand (Debian's apache2, mod_dav)"),
        ("bench/http-pub.sh", "benchmark, run by hand (Debian's apache2)"),
        ("bench/sha.sh", "benchmark, run by hand"),
        ("python3 bench/daemon.py", "benchmark, run by hand"),
        ("python3 bench/flood.py", "benchmark, run by hand"),
        ("python3 bench/limits.py", "benchmark, run by hand"),
        ("PROPTEST_CASES=", "long fuzzing run, by hand"),
        ("depot check bag.zip --profile bagit", "tests/cli.rs makes a bag (sha256sum, zip -r) and checks it so"),
    ];
    let mut docs: Vec<String> = fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"))
        .unwrap()
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".md"))
        .collect();
    docs.sort();
    let commands = doc_commands("README.md");
    assert!(commands.len() > 15, "{commands:#?}");

    // The quick start's main job: the repository's config.toml as it is,
    // but for the Redis URL (a private server) and the folders (a temp dir).
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let text = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml")).unwrap();
    assert!(text.contains("url = \"redis://127.0.0.1:6379\""));
    let text = text.replace("url = \"redis://127.0.0.1:6379\"", &format!("url = {:?}", redis.url()));
    // The HTTP door on a free port (tests run side by side).
    assert!(text.contains("listen = \"127.0.0.1:8480\""));
    let door = free_port();
    let text = text.replace("listen = \"127.0.0.1:8480\"", &format!("listen = \"127.0.0.1:{door}\""));
    let config = dir.path().join("config.toml");
    fs::write(&config, text).unwrap();
    fs::create_dir_all(dir.path().join("var/drop")).unwrap();
    fs::create_dir_all(dir.path().join("var/publish")).unwrap();
    let site = Site { dir, config };
    let daemon = site.start();
    let d = site.root().join("var/drop/MSEC/new");
    fs::create_dir_all(&d).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    // The quick start's deposit: `depot sample` into new/.
    let out = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(["sample", "MSEC", "var/drop/MSEC/new/MSEC_THEIA.zip"])
        .current_dir(site.root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fs::write(d.join("MSEC_BAD.zip"), b"not a zip").unwrap();
    for name in ["MSEC_THEIA.zip", "MSEC_BAD.zip"] {
        fs::File::options().write(true).open(d.join(name)).unwrap().set_modified(old).unwrap();
    }
    wait_for(&site, "both deposits", 60, || redis.deposits().iter().filter(|d| terminal(d)).count() == 2);
    let id = redis.deposits().into_iter().find(|d| d["state"] == "SUCCESS").unwrap()["id"].clone();
    // The quick start serves the HTTP door.
    let avail = http_get(door, "/data/availability");
    assert!(avail.starts_with("HTTP/1.1 200"), "{avail}");

    let bin = env!("CARGO_BIN_EXE_depot");
    let cfg = site.config.to_str().unwrap();
    let man = Command::new("man").arg("--version").output().is_ok_and(|o| o.status.success());
    let mut ran = 0;
    let mut files = vec![("README.md".to_owned(), commands, site.root().to_path_buf())];
    for d in docs {
        let folder = site.root().join(d.replace('/', "-"));
        fs::create_dir_all(&folder).unwrap();
        files.push((d.clone(), doc_commands(&d), folder));
    }
    for (file, commands, folder) in &files {
        for c in commands {
            let c = c.replace("20261122T101500Z-MSEC-1a2b3c4d", &id);
            let elsewhere = ELSEWHERE.iter().any(|(prefix, _)| c.starts_with(prefix));
            let script = if elsewhere {
                continue;
            } else if let Some(dir) = c.strip_prefix("depot man ") {
                // Into the site, not the home folder; `man depot` reads it.
                assert_eq!(dir, "~/.cargo/share/man", "{file}: {c}");
                format!("{bin} man {}", site.root().join("man").display())
            } else if c == "man depot" {
                if !man {
                    eprintln!("man is not installed (scripts/test.sh installs man-db): `man depot` not run");
                    continue;
                }
                format!("MANPAGER=cat man -M {} depot", site.root().join("man").display())
            } else if c.starts_with("depot ") {
                let c = c.replace("/etc/depot/config.toml", cfg);
                let c = format!("{bin}{}", &c["depot".len()..]);
                if c.contains("--config") { c } else { format!("{c} --config {cfg}") }
            } else if c.starts_with("redis-cli ") {
                c.replace("redis-cli", &format!("redis-cli -p {}", redis.port))
            } else if c.starts_with("cat var/drop/") {
                c.clone()
            } else {
                panic!("{file}: command run nowhere (run it here or list it in ELSEWHERE): {c}");
            };
            let out = Command::new("sh").args(["-c", &script]).current_dir(folder).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && !stdout.trim().is_empty(),
                "{file}: command failed or printed nothing: {c}\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The quick start's bad deposit: its report, in words.
            if c.starts_with("cat var/drop/MSEC/rejected/") {
                assert!(stdout.contains("NOT_A_ZIP") && stdout.contains("MSEC_BAD.zip"), "{stdout}");
            }
            ran += 1;
        }
    }
    assert!(ran >= 20, "only {ran} README and docs commands ran");
    assert_eq!(stop(daemon), Some(0));
}
