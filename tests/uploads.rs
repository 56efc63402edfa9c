//! Uploads are taken only when complete (issue 13, the watcher's side):
//! a writer that pauses with the file open, a file still written after its
//! claim, sidecars that come late or right after their archive. Real
//! redis-server, real folders, the real binary; the writers are this test
//! process holding real descriptors (tests/transport.rs drives the real
//! sftp, scp and rsync).

#[path = "../jobs/tests/support/mod.rs"]
mod support;

mod common;

use std::fs;
use std::io::Write;
use std::time::Duration;

use common::*;
use support::*;

fn by_file(redis: &Redis, file: &str) -> Vec<std::collections::HashMap<String, String>> {
    redis.deposits().into_iter().filter(|d| d.get("file").map(String::as_str) == Some(file)).collect()
}

fn rejected_count(site: &Site, p: &str) -> usize {
    fs::read_dir(site.root().join(format!("drop/{p}/rejected"))).map_or(0, |d| d.count())
}

/// A Theia deposit big enough to write in two halves.
fn deposit(p: &str) -> Vec<u8> {
    let inner = RawZip::new().stored("big.bin", (0..2u32 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>()).build();
    RawZip::new()
        .file(format!("{p}_en.json"), pivot(p, &[(&format!("{p}_DAT_1"), &["big.bin"])]))
        .stored(format!("{p}_DAT_1.zip"), inner)
        .build()
}

#[test]
fn a_writer_that_pauses_with_the_file_open_is_waited_for() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    // The producer's folder exists before the upload, as on a real host:
    // inotify watches it from the start.
    let path = site.new_dir("STLL").join("STLL_THEIA.zip");
    let daemon = site.start();
    wait_for(&site, "ready", 30, || site.log().contains("ready"));
    let bytes = deposit("STLL");
    let mut f = fs::File::create(&path).unwrap();
    f.write_all(&bytes[..bytes.len() / 2]).unwrap();
    // A stalled session: the descriptor stays open far past settle_ms (300).
    std::thread::sleep(Duration::from_secs(3));
    assert!(path.exists(), "claimed while its writer held it open:\n{}", site.log());
    assert!(redis.deposits().is_empty());
    f.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(f);
    wait_for(&site, "SUCCESS", 30, || by_file(&redis, "STLL_THEIA.zip").iter().any(|d| d["state"] == "SUCCESS"));
    assert_eq!(by_file(&redis, "STLL_THEIA.zip").len(), 1);
    assert_eq!(rejected_count(&site, "STLL"), 0);
    let big = fs::read(site.root().join("publish/STLL/current/STLL_DAT_1/big.bin")).unwrap();
    assert_eq!(big.len(), 2 << 20);
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn a_file_still_written_after_its_claim_is_given_back_not_judged() {
    let redis = Redis::start();
    // Polling: only the settle rule, so the paused upload is claimed while
    // its writer still holds it (as after a restart, or on NFS).
    let site = Site::new(&redis.url(), "");
    let cfg = fs::read_to_string(&site.config).unwrap().replace("[watch]\n", "[watch]\npoll_ms = 100\n");
    fs::write(&site.config, cfg).unwrap();
    let watcher = site.start_role("watcher");
    let bytes = deposit("CHNG");
    let path = site.new_dir("CHNG").join("CHNG_THEIA.zip");
    let mut f = fs::File::create(&path).unwrap();
    f.write_all(&bytes[..bytes.len() / 2]).unwrap();
    // Claimed (into the spool) while the descriptor is still open.
    wait_for(&site, "claim", 30, || !path.exists() && redis.deposits().len() == 1);
    let first = redis.deposits();
    assert_eq!(first.len(), 1);
    let first_id = first[0]["id"].clone();
    // The writer goes on: into the spool file, through its descriptor.
    f.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(f);
    let worker = site.start_role("worker");
    wait_for(&site, "SUCCESS", 60, || by_file(&redis, "CHNG_THEIA.zip").iter().any(|d| d["state"] == "SUCCESS"));
    let logs = || {
        let read = |r: &str| fs::read_to_string(site.root().join(format!("{r}.log"))).unwrap_or_default();
        format!("watcher:\n{}\nworker:\n{}", read("watcher"), read("worker"))
    };
    assert!(logs().contains("given back to new/"), "{}", logs());
    // The first claim is forgotten, the second one is the deposit.
    let all = by_file(&redis, "CHNG_THEIA.zip");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_ne!(all[0]["id"], first_id);
    assert_eq!(rejected_count(&site, "CHNG"), 0, "{}", logs());
    let big = fs::read(site.root().join("publish/CHNG/current/CHNG_DAT_1/big.bin")).unwrap();
    assert_eq!(big.len(), 2 << 20);
    assert_eq!(stop(worker), Some(0));
    assert_eq!(stop(watcher), Some(0));
}

#[test]
fn a_cut_short_upload_never_resumed_is_rejected_in_plain_words() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let daemon = site.start();
    let bytes = deposit("CUTS");
    let path = site.new_dir("CUTS").join("CUTS_THEIA.zip");
    let mut f = fs::File::create(&path).unwrap();
    f.write_all(&bytes[..bytes.len() * 2 / 3]).unwrap();
    drop(f); // closed, never resumed
    wait_for(&site, "FAILURE", 30, || by_file(&redis, "CUTS_THEIA.zip").iter().any(|d| d["state"] == "FAILURE"));
    let d = &by_file(&redis, "CUTS_THEIA.zip")[0];
    assert_eq!(d["error_code"], "ZIP_CORRUPT");
    let txt = fs::read_to_string(site.root().join(format!("drop/CUTS/rejected/{}/report.txt", d["id"]))).unwrap();
    assert!(txt.contains("cut short"), "{txt}");
    assert_eq!(stop(daemon), Some(0));
}

/// `sha256sum`/`sha512sum` of `bytes`, as a producer makes a sidecar.
fn sum_line(tool: &str, bytes: &[u8], name: &str) -> String {
    let mut c = std::process::Command::new(tool)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = c.wait_with_output().unwrap();
    let hex = String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned();
    format!("{hex}  {name}\n")
}

#[test]
fn sha_sidecars_travel_with_their_archive_and_are_checked() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let daemon = site.start();
    wait_for(&site, "ready", 30, || site.log().contains("ready"));
    let new = site.new_dir("SHAS");
    // Sidecar first, then the archive: right, so accepted, and the sidecar
    // ends beside the archive in previous/, never claimed as a deposit.
    let a = good_theia("SHAS", "a");
    fs::write(new.join("SHAS_1.zip.sha256"), sum_line("sha256sum", &a, "SHAS_1.zip")).unwrap();
    fs::write(new.join("SHAS_1.zip"), &a).unwrap();
    wait_for(&site, "SHAS_1 ended", 30, || {
        by_file(&redis, "SHAS_1.zip")
            .iter()
            .any(|d| d["state"] != "WAITING" && d["state"] != "PROGRESS" && d["state"] != "CREATED")
    });
    assert_eq!(by_file(&redis, "SHAS_1.zip")[0]["state"], "SUCCESS");
    assert!(site.root().join("drop/SHAS/previous/SHAS_1.zip.sha256").is_file());
    // A wrong SHA-512 sidecar: CHECKSUM_MISMATCH, kept with its archive.
    let b = good_theia("SHAS", "b");
    fs::write(new.join("SHAS_2.zip.sha512"), sum_line("sha512sum", &a, "SHAS_2.zip")).unwrap();
    fs::write(new.join("SHAS_2.zip"), &b).unwrap();
    wait_for(&site, "SHAS_2 ended", 30, || by_file(&redis, "SHAS_2.zip").iter().any(|d| d["state"] == "FAILURE"));
    let d = &by_file(&redis, "SHAS_2.zip")[0];
    assert_eq!(d["error_code"], "CHECKSUM_MISMATCH");
    let dir = site.root().join(format!("drop/SHAS/rejected/{}", d["id"]));
    assert!(dir.join("SHAS_2.zip.sha512").is_file() && dir.join("SHAS_2.zip").is_file());
    assert_eq!(fs::read_dir(&new).unwrap().count(), 0, "something left in new/");
    assert_eq!(redis.deposits().len(), 2, "a sidecar was taken for a deposit");
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn a_sidecar_right_after_its_archive_is_used_and_a_late_one_never_fails_the_next() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let daemon = site.start();
    wait_for(&site, "ready", 30, || site.log().contains("ready"));
    let new = site.new_dir("SIDE");
    // Archive closed, its sidecar 100 ms later (within settle_ms = 300):
    // used (a wrong one is the verdict, so it shows).
    let a = good_theia("SIDE", "a");
    fs::write(new.join("SIDE_1.zip"), &a).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    fs::write(new.join("SIDE_1.zip.md5"), "0123456789abcdef0123456789abcdef  SIDE_1.zip\n").unwrap();
    wait_for(&site, "SIDE_1 ended", 30, || by_file(&redis, "SIDE_1.zip").iter().any(|d| d["state"] == "FAILURE"));
    assert_eq!(by_file(&redis, "SIDE_1.zip")[0]["error_code"], "MD5_MISMATCH");
    // The report names what the producer uploaded, never depot's spool file
    // (<deposit-id>.md5), which the producer never saw.
    let error = by_file(&redis, "SIDE_1.zip")[0]["error"].clone();
    assert!(error.contains("SIDE_1.zip.md5 says 0123456789abcdef"), "{error}");
    assert!(!error.contains("-SIDE-"), "{error}");
    // A good upload, then its sidecar long after it was taken (late).
    fs::write(new.join("SIDE_2.zip"), good_theia("SIDE", "b")).unwrap();
    wait_for(&site, "SIDE_2 ended", 30, || by_file(&redis, "SIDE_2.zip").iter().any(|d| d["state"] == "SUCCESS"));
    fs::write(new.join("SIDE_2.zip.md5"), "0123456789abcdef0123456789abcdef  SIDE_2.zip\n").unwrap();
    wait_for(&site, "late sidecar moved out", 30, || !new.join("SIDE_2.zip.md5").exists());
    let rej: Vec<_> =
        fs::read_dir(site.root().join("drop/SIDE/rejected")).unwrap().flatten().map(|e| e.path()).collect();
    let late = rej.iter().find(|d| d.join("SIDE_2.zip.md5").is_file()).expect("the late sidecar kept in rejected/");
    let txt = fs::read_to_string(late.join("report.txt")).unwrap();
    assert!(txt.contains("arrived after SIDE_2.zip had already been taken"), "{txt}");
    // The next upload of the same name is not failed by it.
    fs::write(new.join("SIDE_2.zip"), good_theia("SIDE", "c")).unwrap();
    wait_for(&site, "next SIDE_2", 30, || {
        by_file(&redis, "SIDE_2.zip").iter().filter(|d| d["state"] == "SUCCESS").count() == 2
    });
    assert_eq!(stop(daemon), Some(0));
}

/// A folder in new/ (what `rsync -r … host:new/` makes) is not a deposit:
/// logged as a folder, never as "not a regular file (link, FIFO…)", and the
/// producer told once, through a report in rejected/; the folder untouched.
#[test]
fn a_folder_in_new_is_said_to_be_a_folder_and_the_producer_told_once() {
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    // One folder there before the start (found by the scan), one made
    // while the daemon runs (found through its events).
    let new = site.new_dir("FOLD");
    fs::create_dir(new.join("before")).unwrap();
    let daemon = site.start();
    wait_for(&site, "ready", 30, || site.log().contains("ready"));
    fs::create_dir(new.join("FOLD_data")).unwrap();
    fs::write(new.join("FOLD_data/a.csv"), b"1,2\n").unwrap();
    let rejected = site.root().join("drop/FOLD/rejected");
    let reports = || -> Vec<String> {
        fs::read_dir(&rejected)
            .map(|d| d.flatten().filter_map(|e| fs::read_to_string(e.path().join("report.txt")).ok()).collect())
            .unwrap_or_default()
    };
    wait_for(&site, "both reports", 30, || reports().len() == 2);
    // A good deposit beside them goes through.
    fs::write(new.join("FOLD_1.zip"), good_theia("FOLD", "1")).unwrap();
    wait_for(&site, "FOLD_1", 30, || by_file(&redis, "FOLD_1.zip").iter().any(|d| d["state"] == "SUCCESS"));
    let all = reports();
    assert_eq!(all.len(), 2, "one report per folder: {all:?}");
    let txt = all.iter().find(|t| t.contains("FOLD_data")).unwrap();
    assert!(txt.contains("NAME_INVALID") && txt.contains("FOLD_data is a folder") && txt.contains("zip -r"), "{txt}");
    assert!(new.join("FOLD_data/a.csv").is_file() && new.join("before").is_dir());
    let log = site.log();
    assert!(log.contains("a folder: folders are not deposits"), "{log}");
    assert!(!log.contains("link, FIFO"), "{log}");
    // Nothing in Redis: a folder is not a deposit.
    assert_eq!(redis.deposits().len(), 1);
    assert_eq!(stop(daemon), Some(0));
}
