//! Attacks on the S3 publish target (SPEC "Publish targets"), against a
//! real Garage server and a real redis-server of the test's own: hostile
//! names, deposits that fail after objects went up, SIGTERM mid-upload,
//! Redis restarted empty under a publish, many small files, merge with
//! `keep_releases = 1`, a prefix equal to a producer's name.
//!
//! Two of these found bugs, since fixed (see the two tests' comments).

#[path = "../jobs/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

mod common;
use common::garage::Garage;
use common::s3::*;
use common::*;

/// `<P>_en.json` plus one stored dataset zip per dataset, no MD5SUMS.
fn theia_no_md5(p: &str, datasets: &[Dataset<'_>]) -> Vec<u8> {
    theia(p, datasets, false)
}

/// `depot ingest ARCHIVE --producer P --json`, to the end.
fn ingest(site: &Site, p: &str, archive: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(["ingest", "--quiet", "--json", "--producer", p, "--config"])
        .arg(&site.config)
        .arg(archive)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Names that stress SigV4's path encoding (`+`, `%`, spaces, `~`, `%2F`
/// that must not become a `/`), the XML of listings and DeleteObjects
/// (`&`, `'`, `"`, `<`, `>`), a URL's query and fragment (`?`, `#`),
/// Unicode, and a deep folder.
const HOSTILE_NAMES: &[&str] = &[
    "with space.txt",
    "plus+sign.txt",
    "pct%20enc.txt",
    "a%2Fb.txt",
    "amp&and.txt",
    "quote'single.txt",
    "dq\"uote.txt",
    "lt<gt>.txt",
    "paren(1).txt",
    "q?mark.txt",
    "hash#frag.txt",
    "semi;colon=eq,comma.txt",
    "star*pipe|colon:.txt",
    "tilde~.txt",
    "caf\u{e9}.txt",
    "\u{65e5}\u{672c}/\u{30c7}\u{30fc}\u{30bf}.csv",
    "emoji-\u{1f600}.bin",
    "d1/d2/d3/d4/d5/d6/d7/d8/d9/d10/d11/d12/d13/d14/d15/d16/d17/d18/d19/d20/deep file+%&'.txt",
    "@at$dollar!bang.txt",
    "[brackets]{braces}^caret`tick.txt",
];

#[test]
fn hostile_names_are_published_byte_exact_and_listed() {
    let redis = Redis::start();
    let g = Garage::start();
    // Names Windows cannot store (`"`, `<`, `?`, `*`, `|`, `:`) are what
    // this test sends to S3: checks.portable_names would refuse them.
    let site = s3_site(&redis, &g, "", "[producers]\nprofile = \"plain\"\n[checks]\nportable_names = false\n");
    let daemon = site.start();
    let mut zip = RawZip::new();
    let mut want: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, name) in HOSTILE_NAMES.iter().enumerate() {
        let data = format!("{i}: {name}\n").repeat(i + 1).into_bytes();
        zip = zip.file(name, data.clone());
        want.push(((*name).to_owned(), data));
    }
    site.drop_rsync("NAME", "NAME_1.zip", &zip.build());
    let d = wait_terminal(&site, &redis, "NAME_1.zip", 90);
    assert_eq!(d["state"], "SUCCESS", "{d:?}\n{}", site.log());
    let id = d["id"].clone();
    assert_eq!(current(&g, "NAME").as_deref(), Some(id.as_str()));
    let m = assert_complete(&g, "NAME", &id);
    let mut listed = paths(&m);
    listed.sort();
    let mut names: Vec<String> = want.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(listed, names, "manifest.json lists every name as it was given");
    // Byte-exact through an independent client, and the keys a listing
    // shows are the names (no `%2F` turned into a folder, no `+` into a space).
    for (name, data) in &want {
        let got = g.get(&format!("{PREFIX}/NAME/releases/{id}/{name}"));
        assert_eq!(got.as_deref(), Some(data.as_slice()), "{name}");
    }
    let base = format!("{PREFIX}/NAME/releases/{id}/");
    let mut keys: Vec<String> = g.keys(&base).iter().map(|k| k.strip_prefix(&base).unwrap().to_owned()).collect();
    keys.sort();
    let mut with_manifest = names.clone();
    with_manifest.push("manifest.json".into());
    with_manifest.sort();
    assert_eq!(keys, with_manifest);
    assert!(g.get(&format!("{PREFIX}/NAME/releases/{id}/a/b.txt")).is_none(), "a%2Fb.txt became a folder");

    // Removal goes through DeleteObjects' XML: with keep_releases = 10 a
    // prune would not touch it, so a failed deposit of the same names
    // (last file's MD5 wrong) has to delete them all.
    let mut bad = RawZip::new();
    let mut lines = String::new();
    for (name, data) in &want {
        bad = bad.file(name, data.clone());
        lines.push_str(&format!("{}  {name}\n", md5hex(data)));
    }
    let lines = lines.replacen(&md5hex(&want[0].1), "0123456789abcdef0123456789abcdef", 1);
    bad = bad.file("MD5SUMS", lines);
    site.drop_rsync("NAME", "NAME_2.zip", &bad.build());
    let d2 = wait_terminal(&site, &redis, "NAME_2.zip", 90);
    eprintln!(
        "hostile names, failed by MD5SUMS: {} {}",
        d2["state"],
        d2.get("error_code").cloned().unwrap_or_default()
    );
    assert_eq!(d2["state"], "FAILURE", "{d2:?}");
    assert!(g.keys(&format!("{PREFIX}/NAME/releases/{}/", d2["id"])).is_empty(), "objects of a failed deposit left");
    assert_eq!(current(&g, "NAME").as_deref(), Some(id.as_str()));
    assert_eq!(uploads(&g, PREFIX), 0);
    assert_eq!(stop(daemon), Some(0));
}

/// A path of 1,000 bytes is within `limits.max_path_len` (1024) but its key
/// (`archive/LONG/releases/<id>/` + path) would be over 1,024 bytes, S3's
/// limit of a key (Garage took it; AWS would refuse it, a transient loop
/// ending IO_ERROR). The limit is now narrowed to what the release's
/// prefix leaves: LIMIT_EXCEEDED, the producer's code, nothing sent.
#[test]
fn a_path_at_max_path_len_makes_a_key_over_1024_bytes() {
    let redis = Redis::start();
    let g = Garage::start();
    let site = s3_site(&redis, &g, "", "[producers]\nprofile = \"plain\"\n[workers]\nmax_attempts = 1\n");
    let daemon = site.start();
    let comp = "x".repeat(199);
    let long = format!("{comp}/{comp}/{comp}/{comp}/{}.txt", "y".repeat(196));
    assert_eq!(long.len(), 1000);
    site.drop_rsync("LONG", "LONG_1.zip", &RawZip::new().file(&long, "long").build());
    let d = wait_terminal(&site, &redis, "LONG_1.zip", 60);
    let key_len = format!("{PREFIX}/LONG/releases/{}/{long}", d["id"]).len();
    eprintln!(
        "1000-byte path, {key_len}-byte key: {} {} {}",
        d["state"],
        d.get("error_code").cloned().unwrap_or_default(),
        d.get("error").cloned().unwrap_or_default()
    );
    assert!(key_len > 1024);
    assert_eq!((d["state"].as_str(), d["error_code"].as_str()), ("FAILURE", "LIMIT_EXCEEDED"), "{d:?}");
    assert!(g.keys(&format!("{PREFIX}/LONG/")).is_empty());
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn a_deposit_failing_after_uploads_leaves_no_object_and_no_upload() {
    let redis = Redis::start();
    let g = Garage::start();
    let site = s3_site(&redis, &g, "", "[workers]\nmax_attempts = 1\n");
    let daemon = site.start();
    site.drop_rsync("FAIL", "FAIL_0.zip", &good_theia("FAIL", "v0"));
    let d0 = wait_state(&site, &redis, "FAIL_0.zip", "SUCCESS", 60);
    let check_clean = |file: &str, code: &str| {
        let d = wait_terminal(&site, &redis, file, 120);
        assert_eq!(d["state"], "FAILURE", "{d:?}");
        assert_eq!(d["error_code"], code, "{d:?}");
        let left = g.keys(&format!("{PREFIX}/FAIL/releases/{}/", d["id"]));
        assert!(left.is_empty(), "{file}: {} objects left, e.g. {:?}", left.len(), left.first());
        assert_eq!(uploads(&g, PREFIX), 0, "{file}: multipart uploads left open");
        assert_eq!(current(&g, "FAIL").as_deref(), Some(d0["id"].as_str()), "{file} moved current");
    };

    // 1. A big first file (30 MiB: 6 parts), then a file whose MD5 in the
    // dataset's MD5SUMS is wrong: found at verify, after every upload.
    let big = vec![3u8; 30 << 20];
    let last = b"the last file".to_vec();
    let ds1 = RawZip::new().stored("big.bin", big.clone()).build();
    let ds2 = RawZip::new()
        .file("last.txt", last.clone())
        .file("MD5SUMS", "0123456789abcdef0123456789abcdef  last.txt\n")
        .build();
    let z = RawZip::new()
        .file("FAIL_en.json", pivot("FAIL", &[("FAIL_DAT_1", &["big.bin"]), ("FAIL_DAT_2", &["last.txt"])]))
        .stored("FAIL_DAT_1.zip", ds1.clone())
        .stored("FAIL_DAT_2.zip", ds2)
        .build();
    site.drop_rsync("FAIL", "FAIL_1.zip", &z);
    check_clean("FAIL_1.zip", "MD5_MISMATCH");

    // 2. The same big file, then a 7 MiB file (two parts: the first is on
    // the server) whose CRC32 is wrong: found at its end, mid-multipart.
    let mut bad = RawEntry::new("bad.bin", vec![9u8; 7 << 20], STORED);
    bad.crc = Some(0xdead_beef);
    let ds2 = RawZip::new().raw(bad).build();
    let z = RawZip::new()
        .file("FAIL_en.json", pivot("FAIL", &[("FAIL_DAT_1", &["big.bin"]), ("FAIL_DAT_2", &["bad.bin"])]))
        .stored("FAIL_DAT_1.zip", ds1)
        .stored("FAIL_DAT_2.zip", ds2)
        .build();
    site.drop_rsync("FAIL", "FAIL_2.zip", &z);
    check_clean("FAIL_2.zip", "ZIP_CORRUPT");

    // 3. 1,500 files go up (more than one page of a listing, more than one
    // DeleteObjects), then one MD5 of MD5SUMS is wrong.
    let files: Vec<(String, Vec<u8>)> =
        (0..1500).map(|i| (format!("f{i:05}.txt"), format!("file {i}\n").into_bytes())).collect();
    let mut list: String = files.iter().map(|(n, d)| format!("{}  {n}\n", md5hex(d))).collect();
    list = list.replacen(&md5hex(&files[1499].1), "0123456789abcdef0123456789abcdef", 1);
    let mut ds = RawZip::new();
    for (n, d) in &files {
        ds = ds.file(n, d.clone());
    }
    let ds = ds.file("MD5SUMS", list).build();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    let z = RawZip::new()
        .file("FAIL_en.json", pivot("FAIL", &[("FAIL_DAT_1", &names)]))
        .stored("FAIL_DAT_1.zip", ds)
        .build();
    site.drop_rsync("FAIL", "FAIL_3.zip", &z);
    check_clean("FAIL_3.zip", "MD5_MISMATCH");

    assert_complete(&g, "FAIL", &d0["id"]);
    assert_eq!(release_ids(&g, PREFIX, "FAIL"), vec![d0["id"].clone()]);
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn sigterm_mid_upload_exits_0_and_the_restart_publishes_once() {
    let redis = Redis::start();
    let g = Garage::start();
    // One second of grace: the running job is interrupted mid-upload.
    let site = s3_site(&redis, &g, "", "[workers]\nshutdown_timeout_s = 1\n");
    let daemon = site.start();
    site.drop_rsync("TERM", "TERM_0.zip", &good_theia("TERM", "old"));
    let d0 = wait_state(&site, &redis, "TERM_0.zip", "SUCCESS", 60);
    site.drop_rsync("TERM", "TERM_1.zip", &big_deposit("TERM", 200));
    wait_for(&site, "upload under way", 120, || {
        by_file(&redis, "TERM_1.zip")
            .and_then(|d| d.get("bytes_done")?.parse::<u64>().ok())
            .is_some_and(|b| b > 20 << 20)
    });
    let t = Instant::now();
    assert_eq!(stop(daemon), Some(0), "SIGTERM mid-upload: {}", site.log());
    let cut = by_file(&redis, "TERM_1.zip").unwrap();
    let (left, open) = (g.keys(&format!("{PREFIX}/TERM/releases/{}/", cut["id"])).len(), uploads(&g, PREFIX));
    eprintln!(
        "SIGTERM mid-upload: exit 0 after {:?}; state {}, bytes_done {}; left behind: {left} objects, {open} open uploads",
        t.elapsed(),
        cut["state"],
        cut["bytes_done"]
    );
    assert!(!terminal(&cut), "the job was not interrupted: {cut:?}");
    assert_eq!(current(&g, "TERM").as_deref(), Some(d0["id"].as_str()));
    let _daemon = site.start();
    let d1 = wait_state(&site, &redis, "TERM_1.zip", "SUCCESS", 120);
    assert_eq!(d1["id"], cut["id"]);
    let m = assert_complete(&g, "TERM", &d1["id"]);
    let big = m["files"].as_array().unwrap().iter().find(|f| f["path"] == "TERM_DAT_1/big.bin").unwrap();
    assert_eq!(big["size"], 200u64 << 20);
    assert_eq!(current(&g, "TERM").as_deref(), Some(d1["id"].as_str()));
    let mut want = vec![d0["id"].clone(), d1["id"].clone()];
    want.sort();
    assert_eq!(release_ids(&g, PREFIX, "TERM"), want, "published once");
    assert_eq!(uploads(&g, PREFIX), 0, "multipart uploads left open");
    assert_eq!(redis.events().into_iter().filter(|e| e["state"] == "SUCCESS").count(), 2);
}

/// Redis restarted empty (no persistence) while a deposit uploads: the
/// lease and its fencing counter vanish. Seen: the upload goes on (the
/// lease is only checked before `current`), the switch finds the lease
/// lost, the retry gets a new grant from the empty Redis.
#[test]
fn redis_restarted_empty_mid_publish_ends_and_current_never_goes_back() {
    let redis = Redis::start();
    let port = redis.port;
    let g = Garage::start();
    let site = s3_site(&redis, &g, "", "[workers]\nmax_attempts = 10\n");
    let daemon = site.start();
    site.drop_rsync("REDI", "REDI_0.zip", &good_theia("REDI", "old"));
    let d0 = wait_state(&site, &redis, "REDI_0.zip", "SUCCESS", 60);
    site.drop_rsync("REDI", "REDI_1.zip", &big_deposit("REDI", 120));
    wait_for(&site, "upload under way", 120, || {
        by_file(&redis, "REDI_1.zip")
            .and_then(|d| d.get("bytes_done")?.parse::<u64>().ok())
            .is_some_and(|b| b > 10 << 20)
    });
    let id1 = by_file(&redis, "REDI_1.zip").unwrap()["id"].clone();
    drop(redis);
    let redis = Redis::start_on(port);
    let t = Instant::now();
    let mut seen = vec![d0["id"].clone()];
    let done = site.root().join("drop/REDI/previous/REDI_1.zip");
    let rejected = site.root().join(format!("drop/REDI/rejected/{id1}"));
    let deadline = Instant::now() + Duration::from_secs(90);
    while !done.exists() && !rejected.exists() {
        assert!(Instant::now() < deadline, "the deposit did not end; log:\n{}", site.log());
        if let Some(cur) = current(&g, "REDI")
            && seen.last() != Some(&cur)
        {
            seen.push(cur);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(cur) = current(&g, "REDI")
        && seen.last() != Some(&cur)
    {
        seen.push(cur);
    }
    let log = site.log();
    let retries: Vec<&str> = log.lines().filter(|l| l.contains("transient failure")).collect();
    eprintln!(
        "Redis restarted empty mid-upload: ended in {:?}, {} transient failures: {:#?}\ncurrent went {seen:?}",
        t.elapsed(),
        retries.len(),
        retries
    );
    assert!(done.exists(), "the deposit failed: {log}");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "current moved backwards");
    assert_eq!(current(&g, "REDI").as_deref(), Some(id1.as_str()));
    assert_complete(&g, "REDI", &id1);
    assert_eq!(uploads(&g, PREFIX), 0);
    // The new Redis knows the deposit ended (not the whole story: it
    // was emptied).
    let d1 = by_file(&redis, "REDI_1.zip");
    eprintln!("its status hash in the new Redis: {d1:?}");
    assert_eq!(stop(daemon), Some(0));
}

/// Was a bug, fixed: the lease's fencing number is now never below the one
/// `current` holds (src/lease.rs ACQUIRE takes it as a floor).
///
/// After Redis lost its data (restart without persistence, failover to an
/// empty replica, FLUSHALL), the fencing counter `<prefix>:lock:<P>:fence`
/// starts again at 1, while `current` still carries the last grant. Every
/// new grant is then below it, and `switch` takes each attempt for "a
/// publisher that lost the producer's lock": a producer that had more
/// publishes than `workers.max_attempts` can no longer publish; each of its
/// deposits ends in FAILURE IO_ERROR until the counter has climbed back.
#[test]
fn after_redis_lost_its_data_a_producer_still_publishes() {
    let redis = Redis::start();
    let port = redis.port;
    let g = Garage::start();
    let site = s3_site(&redis, &g, "", "[workers]\nmax_attempts = 3\n");
    let daemon = site.start();
    for i in 0..4 {
        let f = format!("FENC_{i}.zip");
        site.drop_rsync("FENC", &f, &good_theia("FENC", &i.to_string()));
        wait_state(&site, &redis, &f, "SUCCESS", 60);
    }
    let fence_before = current_doc(&g, PREFIX, "FENC").unwrap()["fence"].as_u64().unwrap();
    drop(redis);
    let redis = Redis::start_on(port);
    site.drop_rsync("FENC", "FENC_9.zip", &good_theia("FENC", "after"));
    let d = wait_terminal(&site, &redis, "FENC_9.zip", 60);
    eprintln!(
        "fence in current before the flush: {fence_before}; the next deposit: {} {} attempts={} {}",
        d["state"],
        d.get("error_code").cloned().unwrap_or_default(),
        d.get("attempts").cloned().unwrap_or_default(),
        d.get("error").cloned().unwrap_or_default()
    );
    assert_eq!(d["state"], "SUCCESS", "{d:?}");
    assert_eq!(current(&g, "FENC").as_deref(), Some(d["id"].as_str()));
    assert_eq!(stop(daemon), Some(0));
}

/// Was a bug, fixed: uploading stops once the lease is known lost, the
/// lease is checked before `manifest.json`, and a retry that finds its own
/// `manifest.json` checks every listed object is there (else the release is
/// debris and is uploaded again).
///
/// The lease vanishes (Redis restarted empty) while deposit A uploads; A
/// goes on uploading (the lease is only checked before `current`). Another
/// publisher of the producer (`depot ingest` here; a worker on another host
/// alike) gets the lease from the empty Redis and cleans "crash debris":
/// A's release has no manifest.json yet, so its objects are deleted. A
/// then writes the rest and its manifest.json, fails its switch (lease
/// lost), and its retry finds its manifest "already committed" and
/// switches `current` to it: `current` names a release whose files are
/// not in the bucket.
#[test]
fn a_lost_lease_never_lets_current_name_a_release_with_missing_files() {
    let redis = Redis::start();
    let port = redis.port;
    let g = Garage::start();
    let site = s3_site(&redis, &g, "", "[workers]\nmax_attempts = 10\n");
    let daemon = site.start();
    // Dataset 1: one 40 MiB file, done first; dataset 2: 4,000 small files
    // (one PutObject each), still going after it.
    let small: Vec<(String, Vec<u8>)> =
        (0..4000).map(|i| (format!("s{i:05}.txt"), format!("{i}\n").repeat(200).into_bytes())).collect();
    let small_refs: Vec<(&str, Vec<u8>)> = small.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let a = theia_no_md5("LOST", &[("LOST_DAT_1", vec![("big.bin", vec![5u8; 40 << 20])]), ("LOST_DAT_2", small_refs)]);
    site.drop_rsync("LOST", "LOST_1.zip", &a);
    let mut id = String::new();
    wait_for(&site, "big.bin uploaded, small files going", 120, || {
        if let Some(d) = by_file(&redis, "LOST_1.zip") {
            id = d["id"].clone();
        }
        !id.is_empty() && g.get(&format!("{PREFIX}/LOST/releases/{id}/LOST_DAT_1/big.bin")).is_some()
    });
    assert!(manifest_at(&g, PREFIX, "LOST", &id).is_none(), "too late: A already committed");
    drop(redis);
    let redis = Redis::start_on(port);
    // B: a deposit of the same producer that fails its checks (current is
    // not moved by it), taking the free lease of the empty Redis.
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("LOST_b.zip");
    let bad_ds = RawZip::new().file("x.txt", "x").file("MD5SUMS", "0123456789abcdef0123456789abcdef  x.txt\n").build();
    fs::write(
        &b,
        RawZip::new()
            .file("LOST_en.json", pivot("LOST", &[("LOST_DAT_1", &["x.txt"])]))
            .stored("LOST_DAT_1.zip", bad_ds)
            .build(),
    )
    .unwrap();
    let out = ingest(&site, "LOST", &b);
    let committed_before_b = manifest_at(&g, PREFIX, "LOST", &id).is_some();
    eprintln!(
        "depot ingest B: {:?} {}; A's big.bin still there: {}; A committed before B ended: {committed_before_b}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        g.get(&format!("{PREFIX}/LOST/releases/{id}/LOST_DAT_1/big.bin")).is_some()
    );
    let done = site.root().join("drop/LOST/previous/LOST_1.zip");
    wait_for(&site, "A ends", 120, || done.exists() || site.root().join(format!("drop/LOST/rejected/{id}")).exists());
    let cur = current(&g, "LOST");
    eprintln!("A ended; current = {cur:?}; A's status in the new Redis: {:?}", by_file(&redis, "LOST_1.zip"));
    if cur.as_deref() == Some(id.as_str()) {
        assert_complete(&g, "LOST", &id);
    }
    assert_eq!(stop(daemon), Some(0));
}

#[test]
fn two_thousand_small_files() {
    let redis = Redis::start();
    let g = Garage::start();
    let site = s3_site(&redis, &g, "", "[producers]\nprofile = \"plain\"\n");
    let daemon = site.start();
    let mut z = RawZip::new();
    for i in 0..2000 {
        let mut data = format!("{i:06}").into_bytes();
        data.resize(1024, b'.');
        z = z.file(format!("d{}/f{i:05}.dat", i % 20), data);
    }
    let t = Instant::now();
    site.drop_rsync("MANY", "MANY_1.zip", &z.build());
    let d = wait_state(&site, &redis, "MANY_1.zip", "SUCCESS", 120);
    let wall = t.elapsed();
    let m = manifest_at(&g, PREFIX, "MANY", &d["id"]).unwrap();
    assert_eq!(m["file_count"], 2000);
    let keys = g.keys(&format!("{PREFIX}/MANY/releases/{}/", d["id"]));
    assert_eq!(keys.len(), 2001);
    let log = site.log();
    let pipeline_ms = log
        .lines()
        .find(|l| l.contains("pipeline done") && l.contains(&d["id"]))
        .and_then(|l| l.split("elapsed_ms=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next().map(str::to_owned));
    eprintln!("2,000 files of 1 KiB to S3: {wall:?} from drop to SUCCESS (pipeline elapsed_ms={pipeline_ms:?})");
    // A sample, byte-exact.
    for i in [0, 999, 1999] {
        let got = g.get(&format!("{PREFIX}/MANY/releases/{}/d{}/f{i:05}.dat", d["id"], i % 20)).unwrap();
        assert_eq!(got.len(), 1024);
        assert!(got.starts_with(format!("{i:06}").as_bytes()));
    }
    assert_eq!(stop(daemon), Some(0));
}

/// Merge with `keep_releases = 1`, three deposits dropped at once (ids of
/// one second, run one at a time in drop order): every release is the
/// previous one plus its files, only the current one is kept, and it is
/// complete (its copies were made before the prune).
#[test]
fn merge_with_keep_one_and_ids_of_one_second() {
    let redis = Redis::start();
    let g = Garage::start();
    let site = s3_site(&redis, &g, "mode = \"merge\"\nkeep_releases = 1", "");
    let daemon = site.start();
    site.drop_rsync("KEEP", "KEEP_0.zip", &good_theia("KEEP", "v0"));
    wait_state(&site, &redis, "KEEP_0.zip", "SUCCESS", 60);
    for i in 1..=3 {
        let ds = format!("KEEP_DAT_{}", i + 2);
        let z = theia("KEEP", &[(&ds, vec![(&format!("n{i}.txt"), format!("new {i}").into_bytes())])], true);
        site.drop_rsync("KEEP", &format!("KEEP_{i}.zip"), &z);
    }
    let ds: Vec<HashMap<String, String>> =
        (1..=3).map(|i| wait_state(&site, &redis, &format!("KEEP_{i}.zip"), "SUCCESS", 60)).collect();
    let last = &ds[2]["id"];
    eprintln!("merge ids: {:?}", ds.iter().map(|d| d["id"].as_str()).collect::<Vec<_>>());
    assert_eq!(current(&g, "KEEP").as_deref(), Some(last.as_str()));
    assert_eq!(release_ids(&g, PREFIX, "KEEP"), vec![last.clone()], "keep_releases = 1");
    let m = assert_complete(&g, "KEEP", last);
    let p = paths(&m);
    for want in
        ["KEEP_DAT_1/obs1.txt", "KEEP_DAT_2/obs3.txt", "KEEP_DAT_3/n1.txt", "KEEP_DAT_4/n2.txt", "KEEP_DAT_5/n3.txt"]
    {
        assert!(p.contains(&want.to_owned()), "{want} not in {p:?}");
    }
    assert_eq!(uploads(&g, PREFIX), 0);
    assert_eq!(stop(daemon), Some(0));
}

/// The prefix is a producer's name: `ABCD/ABCD/releases/...`, and a second
/// producer beside it. Debris cleaning at start and prune must each stay
/// in their producer.
#[test]
fn a_prefix_equal_to_a_producer_name() {
    let redis = Redis::start();
    let g = Garage::start();
    let site = s3_site_prefix(&redis, &g, "ABCD", "keep_releases = 1", "");
    let daemon = site.start();
    site.drop_rsync("ABCD", "ABCD_1.zip", &good_theia("ABCD", "a1"));
    let a1 = wait_state(&site, &redis, "ABCD_1.zip", "SUCCESS", 60);
    site.drop_rsync("EFGH", "EFGH_1.zip", &good_theia("EFGH", "e1"));
    let e1 = wait_state(&site, &redis, "EFGH_1.zip", "SUCCESS", 60);
    assert_eq!(stop(daemon), Some(0));
    // Debris of ABCD under the prefix and a foreign object at the bucket's
    // top, named like a release of ABCD with no prefix: neither is depot's
    // to judge but the first.
    g.put("ABCD/ABCD/releases/20260101T000000Z-ABCD-deadbeef/x.txt", b"debris");
    g.put("ABCD/releases/20260101T000000Z-ABCD-deadbeef/x.txt", b"not depot's");
    let daemon = site.start();
    site.drop_rsync("ABCD", "ABCD_2.zip", &good_theia("ABCD", "a2"));
    let a2 = wait_state(&site, &redis, "ABCD_2.zip", "SUCCESS", 60);
    assert_eq!(current_doc(&g, "ABCD", "ABCD",).unwrap()["release"], a2["id"].as_str());
    assert_complete_at(&g, "ABCD", "ABCD", &a2["id"]);
    assert_eq!(release_ids(&g, "ABCD", "ABCD"), vec![a2["id"].clone()], "a1 pruned, debris removed");
    assert_ne!(a1["id"], a2["id"]);
    assert_complete_at(&g, "ABCD", "EFGH", &e1["id"]);
    assert_eq!(g.get("ABCD/releases/20260101T000000Z-ABCD-deadbeef/x.txt").as_deref(), Some(&b"not depot's"[..]));
    assert_eq!(stop(daemon), Some(0));
}

/// An S3 endpoint of the test's own (a thread on a free loopback port, no
/// Garage): every ListObjectsV2 answers "truncated, go on with token
/// `again`", uploads list empty, anything else is 404. Returns the
/// endpoint and the count of listing requests it answered.
fn endless_lister() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::Ordering;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let pages = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&pages);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut h = String::new();
            let mut length = 0usize;
            while r.read_line(&mut h).is_ok_and(|n| n > 0) && h != "\r\n" {
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                h.clear();
            }
            let mut body = vec![0; length];
            let _ = std::io::Read::read_exact(&mut r, &mut body);
            let (status, reply) = if line.contains("list-type=2") {
                counted.fetch_add(1, Ordering::SeqCst);
                (
                    200,
                    "<ListBucketResult><Contents><Key>archive/LOOP/releases/x/a</Key><Size>1</Size></Contents>\
                     <CommonPrefixes><Prefix>archive/LOOP/releases/x/</Prefix></CommonPrefixes>\
                     <IsTruncated>true</IsTruncated><NextContinuationToken>again</NextContinuationToken></ListBucketResult>",
                )
            } else if line.contains("uploads") {
                (200, "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>")
            } else {
                (404, "<Error><Code>NoSuchKey</Code><Message>no</Message></Error>")
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    (format!("http://127.0.0.1:{port}"), pages)
}

/// Finding 6 of issue 19: a server repeating `IsTruncated=true` with the
/// same continuation token had `depot ingest` list forever (30,000 pages in
/// 40 s, memory growing) while it held the producer's lease. Now the
/// listing ends at the repeat, as a transient S3 fault: FAILURE IO_ERROR,
/// the deposit left where it was.
#[test]
fn a_listing_that_never_ends_fails_the_ingest_instead_of_hanging() {
    let redis = Redis::start();
    let (endpoint, pages) = endless_lister();
    let site = Site::new(&redis.url(), "");
    let creds = site.root().join("s3.credentials");
    write_credentials(&creds, "GK0000", "secret");
    let text = fs::read_to_string(&site.config).unwrap();
    fs::write(
        &site.config,
        format!(
            "{text}target = \"s3\"\n[publish.s3]\nendpoint = \"{endpoint}\"\nregion = \"garage\"\nbucket = \"b\"\n\
             prefix = \"{PREFIX}\"\ncredentials_file = \"{}\"\n",
            creds.display()
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("LOOP_1.zip");
    fs::write(&archive, good_theia("LOOP", "v1")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(["ingest", "--quiet", "--json", "--producer", "LOOP", "--config"])
        .arg(&site.config)
        .arg(&archive)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stopped by its pid whatever happens (Daemon's Drop).
    let mut guard = Daemon(Some(child));
    let deadline = Instant::now() + Duration::from_secs(60);
    while guard.0.as_mut().unwrap().try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "depot ingest still running after 60 s: {} listing pages asked",
            pages.load(std::sync::atomic::Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = guard.0.take().unwrap().wait_with_output().unwrap();
    let asked = pages.load(std::sync::atomic::Ordering::SeqCst);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("endless listing: exit {:?} after {asked} pages", out.status.code());
    assert_eq!(out.status.code(), Some(2), "a transient failure's exit\n{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(r["state"], "FAILURE", "{r}");
    assert_eq!(r["code"], "IO_ERROR", "{r}");
    assert!(r["message"].as_str().unwrap().contains("gave before"), "{r}");
    // The request's own tries on a 5xx aside, the repeat is caught at once.
    assert!(asked <= 4, "{asked} pages asked");
    // Not the producer's fault: the archive is where it was.
    assert!(archive.is_file());
}
