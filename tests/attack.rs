//! A hostile reviewer's findings (issue 13 review): what a producer that
//! controls the bytes, names, links and timing of its own `new/` can do to
//! the daemon and to other producers. Each test reproduces one finding
//! against the real binary and a real redis-server; those marked `ignore`
//! fail until the finding is fixed.

#[path = "../jobs/tests/support/mod.rs"]
mod support;

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use support::*;

fn by_file(redis: &Redis, file: &str) -> Vec<HashMap<String, String>> {
    redis.deposits().into_iter().filter(|d| d.get("file").map(String::as_str) == Some(file)).collect()
}

fn set_mtime(path: &Path, t: SystemTime) {
    fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
}

/// What `rsync -t` does on the receiving side: the file under a hidden
/// temporary name, its mtime set to the source's, then a rename.
fn rsync_t(new: &Path, name: &str, bytes: &[u8], mtime: SystemTime) {
    let tmp = new.join(format!(".{name}.Qz81Xk"));
    fs::write(&tmp, bytes).unwrap();
    set_mtime(&tmp, mtime);
    fs::rename(&tmp, new.join(name)).unwrap();
}

/// A Theia deposit big enough to write in two halves.
fn halves(p: &str) -> Vec<u8> {
    let inner = RawZip::new().stored("big.bin", (0..1u32 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>()).build();
    RawZip::new()
        .file(format!("{p}_en.json"), pivot(p, &[(&format!("{p}_DAT_1"), &["big.bin"])]))
        .stored(format!("{p}_DAT_1.zip"), inner)
        .build()
}

/// Finding 1. Producer NOIS creates (and deletes) many files under names
/// the daemon ignores (hidden, `.part`, `.tmp`): each leaves a "closed
/// after writing" mark in the settler's `writing` map, which is never
/// forgotten (ignored names are never judged) and is bounded by evicting
/// the oldest mark, whoever's it is. Producer STLL's stalled sftp upload
/// (its descriptor still open) loses its "open" mark, falls back to the
/// settle rule, is claimed half written and rejected as ZIP_CORRUPT. (An
/// inotify queue overflow, which the same churn can cause, clears every
/// mark at once and does the same.)
#[test]

fn another_producers_file_churn_never_gets_a_stalled_upload_claimed() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let stalled = site.new_dir("STLL").join("STLL_THEIA.zip");
    let nois = site.new_dir("NOIS");
    let daemon = site.start();
    wait_for(&site, "ready", 30, || site.log().contains("ready"));
    let bytes = halves("STLL");
    let mut f = fs::File::create(&stalled).unwrap();
    f.write_all(&bytes[..bytes.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(stalled.exists(), "claimed while its writer held it open:\n{}", site.log());
    // NOIS: 70,000 short-lived hidden files, paced so that inotify's queue
    // (16,384 events) need not overflow.
    for i in 0..70_000u32 {
        let p = nois.join(format!(".junk{i}"));
        fs::File::create(&p).unwrap();
        fs::remove_file(&p).unwrap();
        if i % 2000 == 1999 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // A marker after the churn: once it has ended, the daemon has seen
    // every event before it.
    fs::write(nois.join("marker.zip"), b"not a zip").unwrap();
    wait_for(&site, "marker ended", 120, || by_file(&redis, "marker.zip").iter().any(terminal));
    std::thread::sleep(Duration::from_secs(2));
    let claimed = !stalled.exists();
    let log = site.log();
    // The writer comes back and finishes its upload.
    f.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(f);
    assert!(
        !claimed,
        "STLL's upload was claimed while its writer still held it open; deposits: {:?}\n{log}",
        redis.deposits()
    );
    wait_for(&site, "STLL SUCCESS", 30, || by_file(&redis, "STLL_THEIA.zip").iter().any(|d| d["state"] == "SUCCESS"));
    assert_eq!(stop(daemon), Some(0));
}

/// Finding 2. The README's rsync upload (`rsync -t`, archive then its
/// `.md5`, which sorts after it): the archive is renamed in with the
/// source's old mtime, is "settled" at first sight and claimed within
/// milliseconds, before its sidecar lands. The sidecar, also carrying an
/// old mtime, is not recognised as late (the late rule compares its mtime
/// with the claim time) nor as an orphan (younger than an hour), so it
/// stays in new/ and pairs with the next upload of that name: a good
/// deposit fails MD5_MISMATCH. And the first deposit was judged without
/// the checksum its producer sent.
#[test]

fn rsync_t_archive_and_sidecar_pair_and_never_fail_the_next_upload() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let new = site.new_dir("RSYN");
    let daemon = site.start();
    wait_for(&site, "ready", 30, || site.log().contains("ready"));
    // The producer made both files ten minutes ago and sends them now; a
    // network round trip (100 ms) between the two renames.
    let made = SystemTime::now() - Duration::from_secs(600);
    let a = good_theia("RSYN", "first");
    rsync_t(&new, "RSYN_THEIA.zip", &a, made);
    std::thread::sleep(Duration::from_millis(100));
    rsync_t(&new, "RSYN_THEIA.zip.md5", format!("{}  RSYN_THEIA.zip\n", md5hex(&a)).as_bytes(), made);
    wait_for(&site, "first ended", 30, || by_file(&redis, "RSYN_THEIA.zip").iter().any(terminal));
    std::thread::sleep(Duration::from_secs(2));
    let paired = !new.join("RSYN_THEIA.zip.md5").exists();
    // The next day's deposit, the same way.
    let made = SystemTime::now() - Duration::from_secs(300);
    let b = good_theia("RSYN", "second");
    rsync_t(&new, "RSYN_THEIA.zip", &b, made);
    std::thread::sleep(Duration::from_millis(100));
    rsync_t(&new, "RSYN_THEIA.zip.md5", format!("{}  RSYN_THEIA.zip\n", md5hex(&b)).as_bytes(), made);
    wait_for(&site, "second ended", 30, || {
        by_file(&redis, "RSYN_THEIA.zip").iter().filter(|d| terminal(d)).count() == 2
    });
    let all = by_file(&redis, "RSYN_THEIA.zip");
    let failed: Vec<_> = all.iter().filter(|d| d["state"] != "SUCCESS").collect();
    assert!(failed.is_empty(), "a good rsync upload failed: {failed:?}\n{}", site.log());
    assert!(paired, "the first archive was judged without the sidecar sent with it (left in new/)");
    assert_eq!(stop(daemon), Some(0));
}

/// Finding 3. Every sidecar without its archive is judged at the next
/// scan (any event on it puts it in the "lone" set, and every 60 s all of
/// them are), and judging one that is older than an hour lists its whole
/// `new/` and stats each entry (`sidecars::folder_busy`), on the
/// scheduler's own path: no claim and no queueing for anyone meanwhile.
/// Producer SWEP keeps 2,000 old `.md5` files without archives and 20,000
/// old hidden files (never claimed, never removed) plus one fresh one (so
/// that nothing is ever moved out), and touches its sidecars: every scan
/// costs about 2,000 x 10,000 stats, and producer GOOD's deposits wait.
#[test]

fn lone_sidecars_never_stall_other_producers() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let swep = site.new_dir("SWEP");
    let good = site.new_dir("GOOD");
    let old = SystemTime::now() - Duration::from_secs(7200);
    for i in 0..20_000 {
        let p = swep.join(format!(".pad{i}"));
        fs::write(&p, b"").unwrap();
        set_mtime(&p, old);
    }
    fs::write(swep.join(".fresh"), b"").unwrap();
    let sides: Vec<_> = (0..2_000).map(|i| swep.join(format!("s{i}.zip.md5"))).collect();
    for s in &sides {
        fs::write(s, b"d41d8cd98f00b204e9800998ecf8427e  x\n").unwrap();
        set_mtime(s, old);
    }
    let t0 = Instant::now();
    let daemon = site.start();
    wait_for(&site, "ready", 300, || site.log().contains("ready"));
    let to_ready = t0.elapsed();
    let stop_touching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let toucher = {
        let (sides, stop) = (sides.clone(), stop_touching.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for s in &sides {
                    let _ = fs::File::options().write(true).open(s).and_then(|f| f.set_modified(old));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let mut worst = Duration::ZERO;
    for i in 0..2 {
        let name = format!("GOOD_{i}.zip");
        let t = Instant::now();
        fs::write(good.join(&name), good_theia("GOOD", &i.to_string())).unwrap();
        wait_for(&site, "GOOD deposit", 600, || by_file(&redis, &name).iter().any(|d| d["state"] == "SUCCESS"));
        worst = worst.max(t.elapsed());
    }
    stop_touching.store(true, std::sync::atomic::Ordering::Relaxed);
    toucher.join().unwrap();
    assert_eq!(stop(daemon), Some(0));
    assert!(
        to_ready < Duration::from_secs(10) && worst < Duration::from_secs(5),
        "start to ready {to_ready:?}; GOOD's slowest deposit took {worst:?} from drop to SUCCESS (settle_ms 300)"
    );
}

fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let out =
        std::process::Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y%m%dT%H%M%SZ"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Finding 4. `rotate::to_previous` moves the archive, then the sidecar.
/// A kill -9 between the two leaves the archive in `previous/` (over the
/// last deposit's), its sidecar in the spool, and the outcome in the
/// record. At the next start `finalize` sees the archive gone from the
/// spool, takes the rotation as done, and `Spool::remove` deletes the
/// sidecar: `previous/` ends with the new archive beside the OLD deposit's
/// `.md5` (a pair that does not match), and the sidecar the producer sent
/// is lost. This test lays out exactly what that kill leaves (the window
/// is two renames wide) and starts the daemon on it.
#[test]

fn a_kill_inside_rotation_never_pairs_the_new_archive_with_the_old_sidecar() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let new = site.new_dir("PREV");
    let prev = site.root().join("drop/PREV/previous");
    let daemon = site.start();
    wait_for(&site, "ready", 30, || site.log().contains("ready"));
    let v1 = good_theia("PREV", "v1");
    fs::write(new.join("PREV_THEIA.zip.md5"), format!("{}  PREV_THEIA.zip\n", md5hex(&v1))).unwrap();
    fs::write(new.join("PREV_THEIA.zip"), &v1).unwrap();
    wait_for(&site, "v1", 30, || by_file(&redis, "PREV_THEIA.zip").iter().any(|d| d["state"] == "SUCCESS"));
    assert!(fs::read_to_string(prev.join("PREV_THEIA.zip.md5")).unwrap().contains(&md5hex(&v1)));
    assert_eq!(stop(daemon), Some(0));

    // v2 was claimed, judged SUCCESS (outcome appended), and the kill
    // came after its archive's rename into previous/, before its sidecar's.
    let v2 = good_theia("PREV", "v2");
    let side2 = format!("{}  PREV_THEIA.zip\n", md5hex(&v2));
    let id = format!("{}-PREV-0badc0de", utc_stamp(SystemTime::now()));
    let spool = site.root().join("drop/.depot/spool");
    let entry = serde_json::json!({"id": id, "producer": "PREV", "name": "PREV_THEIA.zip",
        "claimed_ns": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64,
        "size": v2.len(), "sidecar": true, "created": "2026-12-01T00:00:00Z"});
    let outcome = serde_json::json!({"state": "SUCCESS", "report": {"accepted": true}, "error_code": null, "error": null,
        "release": format!("releases/{id}"), "files": 3, "bytes": 10, "finished": "2026-12-01T00:00:01Z"});
    fs::write(spool.join(format!("{id}.json")), format!("{entry}\n{{\"attempt\":{{\"n\":1}}}}\n{outcome}\n")).unwrap();
    fs::write(spool.join(format!("{id}.md5")), &side2).unwrap();
    fs::write(prev.join("PREV_THEIA.zip"), &v2).unwrap();

    let daemon = site.start();
    wait_for(&site, "v2 recorded", 30, || {
        redis.hgetall(&format!("depot:deposit:{id}")).get("state").is_some_and(|s| s == "SUCCESS")
    });
    wait_for(&site, "spool emptied", 30, || !spool.join(format!("{id}.json")).exists());
    assert_eq!(stop(daemon), Some(0));
    assert_eq!(fs::read(prev.join("PREV_THEIA.zip")).unwrap(), v2);
    let side = fs::read_to_string(prev.join("PREV_THEIA.zip.md5")).unwrap_or_default();
    assert_eq!(
        side, side2,
        "previous/ holds v2's archive beside v1's sidecar; v2's sidecar was deleted from the spool"
    );
}

/// Finding 5. "current never moves back" compares the time part of
/// deposit ids, which is the wall clock at claim time. When the host's
/// clock is stepped back (an NTP correction after the clock ran ahead, a
/// VM restored from a snapshot), every deposit claimed before the clock
/// catches up gets an id that sorts before the release `current` points
/// at: each is published and reported SUCCESS, Redis's
/// `depot:producer:<P> current_release` names it, yet `current` stays on
/// the older state for as long as the step (an hour here). This test lays
/// out what a deposit published an hour "ahead" leaves (its release and
/// `current` on it), then drops a new deposit.
#[test]

fn a_clock_stepped_back_never_leaves_current_behind_a_success() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let new = site.new_dir("CLCK");
    let ahead = format!("{}-CLCK-0000beef", utc_stamp(SystemTime::now() + Duration::from_secs(3600)));
    let rel = site.root().join(format!("publish/CLCK/releases/{ahead}"));
    fs::create_dir_all(&rel).unwrap();
    fs::write(rel.join("old.txt"), b"yesterday").unwrap();
    let manifest = serde_json::json!({"deposit": ahead, "producer": "CLCK", "created": "2026-12-01T00:00:00Z",
        "file_count": 1, "total_bytes": 9, "files": [{"path": "old.txt", "size": 9, "md5": md5hex(b"yesterday")}]});
    fs::write(rel.join("manifest.json"), manifest.to_string()).unwrap();
    std::os::unix::fs::symlink(format!("releases/{ahead}"), site.root().join("publish/CLCK/current")).unwrap();
    let daemon = site.start();
    wait_for(&site, "ready", 30, || site.log().contains("ready"));
    fs::write(new.join("CLCK_THEIA.zip"), good_theia("CLCK", "today")).unwrap();
    wait_for(&site, "today", 30, || by_file(&redis, "CLCK_THEIA.zip").iter().any(terminal));
    let d = by_file(&redis, "CLCK_THEIA.zip").remove(0);
    assert_eq!(d["state"], "SUCCESS");
    let current = fs::read_link(site.root().join("publish/CLCK/current")).unwrap();
    let said = redis.hgetall("depot:producer:CLCK").get("current_release").cloned().unwrap_or_default();
    assert_eq!(stop(daemon), Some(0));
    assert!(
        current.ends_with(&d["id"]),
        "SUCCESS reported for {} (Redis current_release {said}), but current -> {}",
        d["id"],
        current.display()
    );
}

/// Finding 6 (the producer's own queue). A sidecar, sent while its archive
/// settles, renamed away while its writer still holds it (a client that uploads under the final name and
/// renames on error, or a cleanup script) leaves its "being written" mark
/// on the old name for ever: the close comes under the new name, and
/// nothing forgets a sidecar's mark but its archive's own claim or
/// disappearance. The archive of that name then never settles, and being
/// the producer's oldest upload it stops the producer's walk: every later
/// upload waits, silently, until the daemon restarts.
#[test]

fn a_sidecar_renamed_while_open_never_stalls_its_producer_for_good() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let new = site.new_dir("STUK");
    let daemon = site.start();
    wait_for(&site, "ready", 30, || site.log().contains("ready"));
    // The archive, then (within settle_ms) its sidecar, which is renamed
    // away while open, then closed and removed.
    fs::write(new.join("STUK_1.zip"), good_theia("STUK", "1")).unwrap();
    let mut side = fs::File::create(new.join("STUK_1.zip.md5")).unwrap();
    side.write_all(b"0123").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    fs::rename(new.join("STUK_1.zip.md5"), new.join("aside.md5")).unwrap();
    drop(side);
    fs::remove_file(new.join("aside.md5")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    fs::write(new.join("STUK_2.zip"), good_theia("STUK", "2")).unwrap();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) && by_file(&redis, "STUK_2.zip").iter().all(|d| !terminal(d)) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let ended = |f: &str| by_file(&redis, f).iter().any(terminal);
    let (one, two) = (ended("STUK_1.zip"), ended("STUK_2.zip"));
    assert_eq!(stop(daemon), Some(0));
    assert!(
        one && two,
        "after 15 s: STUK_1 ended {one}, STUK_2 ended {two}; both still in new/: {}",
        new.join("STUK_1.zip").exists()
    );
}
