//! The S3 publish target against a real Garage server of the test's own
//! (tests/common/garage.rs), looked at from outside with curl's SigV4:
//! layout, `current`, merge, prune, crash debris, two publishers, wrong
//! credentials and a server that goes away for a while.

#[path = "../jobs/tests/support/mod.rs"]
mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

mod common;
use common::garage::Garage;
use common::s3::*;
use common::*;

#[test]
fn a_deposit_is_published_as_objects_with_current_last() {
    let redis = Redis::start();
    let g = Garage::start();
    let port = free_port();
    let site = s3_site(&redis, &g, "", &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let daemon = site.start();
    site.drop_rsync("STOR", "STOR_1.zip", &good_theia("STOR", "v1"));
    let d = wait_state(&site, &redis, "STOR_1.zip", "SUCCESS", 60);
    let id = d["id"].clone();
    let url = format!("s3://{}/{PREFIX}/STOR/releases/{id}", g.bucket);
    assert_eq!(d["release"], url, "the release is named by its S3 URL");
    assert_eq!(redis.hgetall("depot:producer:STOR")["current_release"], url);
    assert_eq!(current(&g, "STOR").as_deref(), Some(id.as_str()));
    let m = assert_complete(&g, "STOR", &id);
    assert_eq!(m["file_count"], 4, "{m}");
    assert!(g.get(&format!("{PREFIX}/STOR/releases/{id}/STOR_DAT_1/obs1.txt")).unwrap().ends_with(b"1,v1\n"));
    // Nothing went to the filesystem target.
    assert!(!site.root().join("publish/STOR").exists());
    assert!(site.root().join("drop/STOR/previous/STOR_1.zip").is_file());

    // A file bigger than a part goes up in parts (12 MiB, 5 MiB parts).
    site.drop_rsync("STOR", "STOR_2.zip", &big_deposit("STOR", 12));
    let d2 = wait_state(&site, &redis, "STOR_2.zip", "SUCCESS", 60);
    let m2 = assert_complete(&g, "STOR", &d2["id"]);
    let big = m2["files"].as_array().unwrap().iter().find(|f| f["path"] == "STOR_DAT_1/big.bin").unwrap();
    assert_eq!(big["size"], 12 << 20);
    assert_eq!(current(&g, "STOR").as_deref(), Some(d2["id"].as_str()));
    assert_eq!(uploads(&g, PREFIX), 0);
    // What the server accepted is counted.
    let metrics = http_get(port, "/metrics");
    let sent: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("depot_s3_bytes_sent_total "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!(sent >= 12 << 20, "{sent}");

    // A hostile deposit: FAILURE with its code, not an object written.
    let bad = RawZip::new()
        .file("STOR_en.json", pivot("STOR", &[("STOR_DAT_1", &["a.txt"])]))
        .stored(
            "STOR_DAT_1.zip",
            RawZip::new().file("a.txt", "data").file("MD5SUMS", "0123456789abcdef0123456789abcdef  a.txt\n").build(),
        )
        .build();
    site.drop_rsync("STOR", "STOR_3.zip", &bad);
    let d3 = wait_state(&site, &redis, "STOR_3.zip", "FAILURE", 60);
    assert_eq!(d3["error_code"], "MD5_MISMATCH", "{d3:?}");
    assert!(g.keys(&format!("{PREFIX}/STOR/releases/{}/", d3["id"])).is_empty());
    assert_eq!(current(&g, "STOR").as_deref(), Some(d2["id"].as_str()));

    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn merge_copies_the_current_files_and_prune_keeps_the_newest() {
    let redis = Redis::start();
    let g = Garage::start();
    let site = s3_site(&redis, &g, "mode = \"merge\"\nkeep_releases = 2", "");
    let daemon = site.start();
    site.drop_rsync("MERG", "MERG_1.zip", &good_theia("MERG", "v1"));
    let d1 = wait_state(&site, &redis, "MERG_1.zip", "SUCCESS", 60);
    let third = theia("MERG", &[("MERG_DAT_3", vec![("new.txt", b"new".to_vec())])], true);
    site.drop_rsync("MERG", "MERG_2.zip", &third);
    let d2 = wait_state(&site, &redis, "MERG_2.zip", "SUCCESS", 60);
    let m = assert_complete(&g, "MERG", &d2["id"]);
    let paths: Vec<&str> = m["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"MERG_DAT_1/obs1.txt") && paths.contains(&"MERG_DAT_3/new.txt"), "{paths:?}");
    // The kept file is the first release's bytes, copied in the bucket.
    assert_eq!(
        g.get(&format!("{PREFIX}/MERG/releases/{}/MERG_DAT_1/obs1.txt", d2["id"])),
        g.get(&format!("{PREFIX}/MERG/releases/{}/MERG_DAT_1/obs1.txt", d1["id"]))
    );
    // A third release: only the newest two are kept (by when they were
    // published: ids of one second do not sort by drop order).
    site.drop_rsync("MERG", "MERG_3.zip", &theia("MERG", &[("MERG_DAT_4", vec![("four.txt", b"4".to_vec())])], true));
    let d3 = wait_state(&site, &redis, "MERG_3.zip", "SUCCESS", 60);
    let mut want = vec![d2["id"].clone(), d3["id"].clone()];
    want.sort();
    assert_eq!(release_ids(&g, PREFIX, "MERG"), want);
    assert_eq!(current(&g, "MERG").as_deref(), Some(d3["id"].as_str()));
    let m3 = assert_complete(&g, "MERG", &d3["id"]);
    let paths: Vec<&str> = m3["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    for p in ["MERG_DAT_1/obs1.txt", "MERG_DAT_3/new.txt", "MERG_DAT_4/four.txt"] {
        assert!(paths.contains(&p), "{p} not in {paths:?}");
    }
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn kill_9_mid_upload_then_restart_publishes_once_and_leaves_no_debris() {
    let redis = Redis::start();
    let g = Garage::start();
    let site = s3_site(&redis, &g, "", "");
    let mut daemon = site.start();
    site.drop_rsync("KILL", "KILL_0.zip", &good_theia("KILL", "old"));
    let d0 = wait_state(&site, &redis, "KILL_0.zip", "SUCCESS", 60);
    site.drop_rsync("KILL", "KILL_1.zip", &big_deposit("KILL", 300));
    // Killed once parts are on the server and before the end.
    wait_for(&site, "upload under way", 120, || {
        by_file(&redis, "KILL_1.zip")
            .and_then(|d| d.get("bytes_done")?.parse::<u64>().ok())
            .is_some_and(|b| b > 20 << 20)
    });
    let child = daemon.0.as_mut().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // Cut mid-upload: parts or objects of the new release are there.
    let cut = by_file(&redis, "KILL_1.zip").unwrap()["id"].clone();
    let debris = g.keys(&format!("{PREFIX}/KILL/releases/{cut}/")).len() + uploads(&g, PREFIX);
    assert!(debris > 0, "the kill left nothing to clean: not mid-upload");
    assert!(manifest_at(&g, PREFIX, "KILL", &cut).is_none());
    // Whatever was cut, `current` is a complete release: the old one.
    assert_eq!(current(&g, "KILL").as_deref(), Some(d0["id"].as_str()));
    assert_complete(&g, "KILL", &d0["id"]);
    let _daemon = site.start();
    let d1 = wait_state(&site, &redis, "KILL_1.zip", "SUCCESS", 180);
    let m = assert_complete(&g, "KILL", &d1["id"]);
    let big = m["files"].as_array().unwrap().iter().find(|f| f["path"] == "KILL_DAT_1/big.bin").unwrap();
    assert_eq!(big["size"], 300u64 << 20);
    assert_eq!(current(&g, "KILL").as_deref(), Some(d1["id"].as_str()));
    // Published once: two releases, both whole; no upload left open.
    let mut want = vec![d0["id"].clone(), d1["id"].clone()];
    want.sort();
    assert_eq!(release_ids(&g, PREFIX, "KILL"), want);
    assert_eq!(uploads(&g, PREFIX), 0, "multipart uploads left open");
    let ends = redis.events().into_iter().filter(|e| e["state"] == "SUCCESS").count();
    assert_eq!(ends, 2);
}

#[test]
fn two_publishers_of_one_producer_never_move_current_back() {
    let redis = Redis::start();
    let g = Garage::start();
    let site = s3_site(&redis, &g, "", "");
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("RACE_big.zip");
    fs::write(&big, big_deposit("RACE", 120)).unwrap();
    let small = dir.path().join("RACE_small.zip");
    fs::write(&small, good_theia("RACE", "new")).unwrap();
    let ingest = |archive: &Path| {
        Command::new(env!("CARGO_BIN_EXE_depot"))
            .args(["ingest", "--quiet", "--json", "--producer", "RACE", "--config"])
            .arg(&site.config)
            .arg(archive)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The older deposit (its id a second earlier) is the slow one.
    let a = ingest(&big);
    std::thread::sleep(Duration::from_millis(1500));
    let b = ingest(&small);
    let mut seen: Vec<String> = Vec::new();
    let (mut a, mut b) = (Some(a), Some(b));
    let mut outs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while a.is_some() || b.is_some() {
        assert!(Instant::now() < deadline, "ingests did not end");
        if let Some(cur) = current(&g, "RACE")
            && seen.last() != Some(&cur)
        {
            seen.push(cur);
        }
        for c in [&mut a, &mut b] {
            if c.as_mut().is_some_and(|ch| ch.try_wait().unwrap().is_some()) {
                outs.push(c.take().unwrap().wait_with_output().unwrap());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut ids = Vec::new();
    for o in &outs {
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        ids.push(r["deposit"].as_str().unwrap().to_owned());
    }
    ids.sort();
    let newest = ids.last().unwrap().clone();
    if let Some(cur) = current(&g, "RACE")
        && seen.last() != Some(&cur)
    {
        seen.push(cur);
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "current moved backwards: {seen:?}");
    assert_eq!(seen.last(), Some(&newest));
    for id in &ids {
        assert_complete(&g, "RACE", id);
    }
    assert_eq!(redis.cmd(&["EXISTS", "depot:lock:RACE"]).ok(), Some(redis::Value::Int(0)), "lease left behind");
}

#[test]
fn wrong_credentials_wait_with_a_clear_error_and_lose_nothing() {
    let redis = Redis::start();
    let g = Garage::start();
    let site = s3_site(&redis, &g, "", "[workers]\nmax_attempts = 20\n");
    let creds = site.root().join("s3.credentials");
    write_credentials(&creds, &g.key_id, "0000000000000000000000000000000000000000000000000000000000000000");
    let daemon = site.start();
    site.drop_rsync("CRED", "CRED_1.zip", &good_theia("CRED", "v1"));
    wait_for(&site, "the credentials refused", 60, || site.log().contains("refused depot's credentials"));
    assert!(!site.log().contains("0000000000000000"), "the secret was logged");
    let st = state(&redis, "CRED_1.zip");
    assert!(!matches!(st.as_deref(), Some("SUCCESS" | "FAILURE")), "{st:?}");
    assert!(g.keys(&format!("{PREFIX}/CRED/")).is_empty());
    // Fixed: the next try publishes it (credentials are read per deposit).
    write_credentials(&creds, &g.key_id, &g.secret);
    let d = wait_state(&site, &redis, "CRED_1.zip", "SUCCESS", 90);
    assert_complete(&g, "CRED", &d["id"]);
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn a_bucket_away_for_a_while_is_retried_with_backoff() {
    let redis = Redis::start();
    let mut g = Garage::start();
    let site = s3_site(&redis, &g, "", "[workers]\nmax_attempts = 20\n");
    let daemon = site.start();
    g.stop();
    site.drop_rsync("AWAY", "AWAY_1.zip", &good_theia("AWAY", "v1"));
    wait_for(&site, "a failed attempt", 60, || site.log().contains("transient failure"));
    let log = site.log();
    let line = log.lines().find(|l| l.contains("transient failure")).unwrap();
    assert!(line.contains("Connection refused") && line.contains("retry_in_ms"), "{line}");
    assert!(!matches!(state(&redis, "AWAY_1.zip").as_deref(), Some("SUCCESS" | "FAILURE")));
    g.restart();
    let d = wait_state(&site, &redis, "AWAY_1.zip", "SUCCESS", 120);
    assert!(d["attempts"].parse::<u32>().unwrap() >= 2, "{d:?}");
    assert_complete(&g, "AWAY", &d["id"]);
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn config_check_shows_the_bucket_and_never_the_secret() {
    let redis = Redis::start();
    let g = Garage::start();
    let site = s3_site(&redis, &g, "", "");
    let out = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(["config", "check", "--config"])
        .arg(&site.config)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("s3://{}/{PREFIX}", g.bucket)) && text.contains("answers"), "{text}");
    assert!(text.contains("***") && text.contains(&g.key_id), "{text}");
    assert!(!text.contains(&g.secret), "{text}");

    write_credentials(&site.root().join("s3.credentials"), &g.key_id, "wrong");
    let out = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(["config", "check", "--config"])
        .arg(&site.config)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("refused depot's credentials"), "{text}");
}

/// A lease of a given grant, still held or not (the switch's guards, one by one).
struct FakeLease(u64, bool);
impl jobs::s3::Lease for FakeLease {
    fn fence(&self) -> u64 {
        self.0
    }
    fn check(&self) -> jobs::Result<()> {
        if self.1 { Ok(()) } else { Err(jobs::Error::io(jobs::Stage::Publish, "lease", std::io::Error::other("lost"))) }
    }
    fn lost(&self) -> bool {
        !self.1
    }
}

/// A lease that holds for its first `n` checks, then is lost (a holder
/// paused past its grant wakes up between two deletes).
struct LapsingLease(std::sync::atomic::AtomicU32);
impl jobs::s3::Lease for LapsingLease {
    fn fence(&self) -> u64 {
        1
    }
    fn check(&self) -> jobs::Result<()> {
        let left = self.0.load(std::sync::atomic::Ordering::SeqCst);
        if left == 0 {
            return Err(jobs::Error::io(jobs::Stage::Publish, "lease", std::io::Error::other("lost")));
        }
        self.0.store(left - 1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn lost(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst) == 0
    }
}

/// depot's own client on the test's Garage, under [`PREFIX`].
fn test_bucket(g: &Garage) -> jobs::s3::Bucket {
    let s3 = jobs::S3Settings {
        endpoint: g.endpoint.clone(),
        region: g.region.clone(),
        bucket: g.bucket.clone(),
        prefix: PREFIX.into(),
        ..Default::default()
    };
    let creds = jobs::s3::Credentials { key_id: g.key_id.clone(), secret: g.secret.clone() };
    jobs::s3::Bucket::with_credentials(&s3, creds).unwrap()
}

/// A release as depot writes one: its objects, then `manifest.json`
/// listing them.
fn put_release(g: &Garage, bucket: &jobs::s3::Bucket, p: &str, id: &str, files: &[(&str, &[u8])]) {
    let mut listed = Vec::new();
    for (path, bytes) in files {
        g.put(&format!("{PREFIX}/{p}/releases/{id}/{path}"), bytes);
        listed.push(jobs::publish::ManifestFile {
            path: (*path).into(),
            size: bytes.len() as u64,
            md5: md5hex(bytes),
            sha256: None,
        });
    }
    bucket.put_manifest(p, id, &jobs::publish::ReleaseManifest::new(id, p, listed)).unwrap();
}

#[test]
fn current_is_never_written_back_nor_over_a_later_grant_nor_without_the_lease() {
    let g = Garage::start();
    let bucket = test_bucket(&g);
    let (old, mid, new) =
        ("20261101T000000Z-FENC-aaaaaaaa", "20261102T000000Z-FENC-bbbbbbbb", "20261103T000000Z-FENC-cccccccc");
    for id in [old, mid, new] {
        put_release(&g, &bucket, "FENC", id, &[("a.txt", id.as_bytes())]);
    }
    assert_eq!(bucket.switch("FENC", mid, &FakeLease(5, true)).unwrap(), None);
    assert_eq!(current(&g, "FENC").as_deref(), Some(mid));
    // An older deposit id, even under a later grant: left on the newer one.
    assert_eq!(bucket.switch("FENC", old, &FakeLease(6, true)).unwrap().as_deref(), Some(mid));
    // A holder whose grant was overtaken (5 is in current, 4 is ours): stops.
    let e = bucket.switch("FENC", new, &FakeLease(4, true)).unwrap_err();
    assert!(e.message().contains("lost the producer's lock"), "{}", e.message());
    // A lease that lapsed: not written.
    assert!(bucket.switch("FENC", new, &FakeLease(7, false)).is_err());
    assert_eq!(current(&g, "FENC").as_deref(), Some(mid));
    assert_eq!(bucket.switch("FENC", new, &FakeLease(7, true)).unwrap(), None);
    assert_eq!(current(&g, "FENC").as_deref(), Some(new));
}

/// Finding 7 of issue 19, the switch's side: a holder whose lease lapsed
/// could remove objects of the next holder's release as debris, and that
/// holder then pointed `current` at a release with missing files. Now
/// `current` moves only to a release whose every listed object is there
/// with its size.
#[test]
fn current_never_moves_to_a_release_with_missing_or_cut_objects() {
    let g = Garage::start();
    let bucket = test_bucket(&g);
    let (a, b) = ("20261101T000000Z-HOLE-aaaaaaaa", "20261102T000000Z-HOLE-bbbbbbbb");
    put_release(&g, &bucket, "HOLE", a, &[("x.txt", b"x")]);
    assert_eq!(bucket.switch("HOLE", a, &FakeLease(1, true)).unwrap(), None);
    put_release(&g, &bucket, "HOLE", b, &[("d/one.txt", b"one"), ("d/two.txt", b"two")]);
    // One object removed (as the lapsed holder's cleanup did).
    g.delete(&format!("{PREFIX}/HOLE/releases/{b}/d/two.txt"));
    let e = bucket.switch("HOLE", b, &FakeLease(2, true)).unwrap_err();
    assert!(e.is_transient() && e.message().contains("not complete"), "{}", e.message());
    assert_eq!(current(&g, "HOLE").as_deref(), Some(a), "current moved to a release with a missing file");
    // One object of another size than listed: not that release either.
    g.put(&format!("{PREFIX}/HOLE/releases/{b}/d/two.txt"), b"tw");
    assert!(bucket.switch("HOLE", b, &FakeLease(2, true)).is_err());
    // No manifest.json at all: not a release.
    let none = "20261103T000000Z-HOLE-cccccccc";
    g.put(&format!("{PREFIX}/HOLE/releases/{none}/x.txt"), b"x");
    assert!(bucket.switch("HOLE", none, &FakeLease(2, true)).is_err());
    assert_eq!(current(&g, "HOLE").as_deref(), Some(a));
    // Whole again: it moves.
    g.put(&format!("{PREFIX}/HOLE/releases/{b}/d/two.txt"), b"two");
    assert_eq!(bucket.switch("HOLE", b, &FakeLease(2, true)).unwrap(), None);
    assert_eq!(current(&g, "HOLE").as_deref(), Some(b));
    assert_complete(&g, "HOLE", b);
}

/// Finding 7 of issue 19, the cleaner's side: debris cleanup ignored its
/// lease, so a holder whose lease lapsed went on deleting. Now it checks
/// the lease before every delete and stops once it is lost.
#[test]
fn debris_cleanup_deletes_nothing_once_its_lease_is_lost() {
    let g = Garage::start();
    let bucket = test_bucket(&g);
    let (a, b) = ("20261101T000000Z-DEBR-aaaaaaaa", "20261102T000000Z-DEBR-bbbbbbbb");
    for id in [a, b] {
        for f in ["one.txt", "d/two.txt"] {
            g.put(&format!("{PREFIX}/DEBR/releases/{id}/{f}"), b"partial");
        }
    }
    // Lapsed before it began: nothing deleted.
    assert!(bucket.clean_debris("DEBR", &FakeLease(1, false)).is_err());
    assert_eq!(release_ids(&g, PREFIX, "DEBR"), [a, b]);
    assert_eq!(g.keys(&format!("{PREFIX}/DEBR/")).len(), 4);
    // Lapsed after its first delete: the rest is left to the next holder.
    let lapsing = LapsingLease(std::sync::atomic::AtomicU32::new(1));
    assert!(bucket.clean_debris("DEBR", &lapsing).is_err());
    assert_eq!(release_ids(&g, PREFIX, "DEBR").len(), 1, "went on deleting once the lease was lost");
    // Held: all gone.
    let left = release_ids(&g, PREFIX, "DEBR");
    assert_eq!(bucket.clean_debris("DEBR", &FakeLease(2, true)).unwrap(), left);
    assert!(g.keys(&format!("{PREFIX}/DEBR/")).is_empty());
}

/// The URL the data service redirects a reader to (`307`): any client,
/// with no credentials, GETs the object with it, names that SigV4 must
/// encode included; a URL altered or signed with another secret is
/// refused.
#[test]
fn a_presigned_get_is_taken_by_the_server_without_credentials() {
    let g = Garage::start();
    let bucket = test_bucket(&g);
    let key = format!("{PREFIX}/PSGN/releases/x/d ir/caf\u{e9}+%&'.txt");
    g.put(&key, b"presigned bytes");
    let url = bucket.client().presign_get(&key, Duration::from_secs(120)).unwrap();
    assert!(url.starts_with(&g.endpoint) && url.contains("X-Amz-Signature="), "{url}");
    let plain = |url: &str| {
        let o = Command::new("curl").args(["-sS", "-w", "\n%{http_code}", url]).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_owned(), body.to_owned())
    };
    assert_eq!(plain(&url), ("200".to_owned(), "presigned bytes".to_owned()));
    let sig = url.rsplit_once("X-Amz-Signature=").unwrap().1.split('&').next().unwrap().to_owned();
    let forged = url.replace(&sig, &"0".repeat(sig.len()));
    assert_eq!(plain(&forged).0, "403", "a forged signature was taken");
    let other = jobs::s3::Bucket::with_credentials(
        &jobs::S3Settings {
            endpoint: g.endpoint.clone(),
            region: g.region.clone(),
            bucket: g.bucket.clone(),
            prefix: PREFIX.into(),
            ..Default::default()
        },
        jobs::s3::Credentials { key_id: g.key_id.clone(), secret: "not the secret".into() },
    )
    .unwrap();
    assert_eq!(plain(&other.client().presign_get(&key, Duration::from_secs(120)).unwrap()).0, "403");
    assert!(bucket.client().presign_get(&key, Duration::from_secs(8 * 86_400)).is_err(), "S3 allows 7 days at most");
}

/// An S3 of the archive's own behind its own CA: Garage behind a TLS proxy
/// (python3's ssl) whose certificate a private CA signed. With
/// `publish.s3.ca_file` naming that CA the deposit is published; without
/// it the endpoint is not trusted (the public roots do not know the CA).
#[test]
fn an_https_endpoint_behind_a_private_ca_with_ca_file() {
    let redis = Redis::start();
    let g = Garage::start();
    let tls = tempfile::tempdir().unwrap();
    private_ca(tls.path());
    let port = free_port();
    let backend = g.endpoint.trim_start_matches("http://127.0.0.1:").to_owned();
    let proxy = r#"
import socket, ssl, sys, threading
port, backend, d = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(d + "/server.pem", d + "/server.key")
srv = socket.create_server(("127.0.0.1", port))
def pipe(a, b):
    try:
        while (data := a.recv(65536)):
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
def serve(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
    except (ssl.SSLError, OSError):
        c.close(); return
    up = socket.create_connection(("127.0.0.1", backend))
    threading.Thread(target=pipe, args=(up, t), daemon=True).start()
    pipe(t, up)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
    // Killed (by its pid) when dropped, whatever happens.
    let _proxy = Daemon(Some(
        std::process::Command::new("python3")
            .args(["-c", proxy, &port.to_string(), &backend])
            .arg(tls.path())
            .spawn()
            .expect("python3 (apt-get install -y python3)"),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the TLS proxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let https = format!("https://127.0.0.1:{port}");
    let ca = tls.path().join("ca.pem");
    let site = s3_site(&redis, &g, "", &format!("ca_file = \"{}\"\n", ca.display()));
    let text = fs::read_to_string(&site.config).unwrap().replace(&g.endpoint, &https);
    fs::write(&site.config, &text).unwrap();
    let daemon = site.start();
    site.drop_rsync("TLSP", "TLSP_1.zip", &good_theia("TLSP", "v1"));
    let d = wait_state(&site, &redis, "TLSP_1.zip", "SUCCESS", 60);
    assert_eq!(current(&g, "TLSP").as_deref(), Some(d["id"].as_str()));
    assert_complete(&g, "TLSP", &d["id"]);
    assert_eq!(stop(daemon), Some(0));
    // Without the CA: not trusted, and `config check` says so.
    fs::write(&site.config, text.replace(&format!("ca_file = \"{}\"\n", ca.display()), "")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(["config", "check", "--config"])
        .arg(&site.config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("publish.s3") && said.to_lowercase().contains("certificate"),
        "{said}"
    );
}
