//! The happy path and the crash path of publishing: layout, manifest.json,
//! modes, rotation, keep_releases, merge, and a failure injected after each
//! publish step.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use jobs::pipeline::IngestOptions;
use jobs::publish::{ReleaseManifest, Step, clean_stale};
use jobs::{PublishMode, Settings};
use support::*;

#[test]
fn theia_deposit_publishes_a_complete_release() {
    let env = Env::new();
    let out = env.ingest("MSEC", "MSEC_THEIA.zip", &good_theia("MSEC", "v1"), &theia_settings());
    let published = out.result.unwrap();
    let rel = &published.release;
    assert_eq!(env.current("MSEC").unwrap(), std::path::Path::new("releases").join(&out.id));
    for f in ["MSEC_en.json", "MSEC_DAT_1/obs1.txt", "MSEC_DAT_1/obs2.csv", "MSEC_DAT_2/obs3.txt", "manifest.json"] {
        assert!(rel.join(f).is_file(), "{f} missing");
    }
    // Manifests are checked, not published; dataset zips are unpacked, not kept.
    assert!(!rel.join("MD5SUMS").exists() && !rel.join("MSEC_DAT_1/MD5SUMS").exists());
    assert!(!rel.join("MSEC_DAT_1.zip").exists());
    let m: ReleaseManifest = serde_json::from_slice(&fs::read(rel.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m.deposit, out.id);
    assert_eq!(m.producer, "MSEC");
    assert_eq!(m.file_count, 4);
    assert_eq!(m.files.len(), 4);
    assert!(m.created.ends_with('Z'));
    let obs = m.files.iter().find(|f| f.path == "MSEC_DAT_2/obs3.txt").unwrap();
    assert_eq!((obs.size, obs.md5.as_str()), (5, md5hex(b"hello").as_str()));
    assert_eq!(m.total_bytes, m.files.iter().map(|f| f.size).sum::<u64>());
    assert_eq!(published.file_count, 4);
    // Modes whatever the zip said.
    assert_eq!(fs::metadata(rel.join("MSEC_DAT_1/obs1.txt")).unwrap().permissions().mode() & 0o7777, 0o644);
    assert_eq!(fs::metadata(rel.join("MSEC_DAT_1")).unwrap().permissions().mode() & 0o7777, 0o755);
    // Rotation and reports.
    assert!(env.drop_root.join("MSEC/previous/MSEC_THEIA.zip").is_file());
    assert!(out.report.accepted);
    assert!(env.staging_is_empty());
}

#[test]
fn compressed_dataset_zips_are_read_too() {
    let inner = RawZip::new().file("obs1.txt", "1").build();
    let z = RawZip::new()
        .file("MSEC_en.json", pivot("MSEC", &[("MSEC_DAT_1", &["obs1.txt"])]))
        .file("MSEC_DAT_1.zip", inner.clone())
        .file(
            "MD5SUMS",
            md5sums(&[("MSEC_DAT_1.zip", &inner), ("MSEC_en.json", &pivot("MSEC", &[("MSEC_DAT_1", &["obs1.txt"])]))]),
        )
        .build();
    let env = Env::new();
    let out = env.ingest("MSEC", "MSEC_THEIA.zip", &z, &theia_settings());
    let rel = out.result.unwrap().release;
    assert_eq!(fs::read(rel.join("MSEC_DAT_1/obs1.txt")).unwrap(), b"1");
    assert!(env.staging_is_empty());
}

#[test]
fn nested_zips_in_a_dataset_are_data() {
    let nested = RawZip::new().file("deep.txt", "d").build();
    let inner = RawZip::new().file("obs1.txt", "1").stored("extra.zip", nested.clone()).build();
    let z = RawZip::new()
        .file("MSEC_en.json", pivot("MSEC", &[("MSEC_DAT_1", &["obs1.txt"])]))
        .stored("MSEC_DAT_1.zip", inner)
        .build();
    let env = Env::new();
    let rel = env.ingest("MSEC", "MSEC_THEIA.zip", &z, &theia_settings()).result.unwrap().release;
    assert_eq!(fs::read(rel.join("MSEC_DAT_1/extra.zip")).unwrap(), nested);
}

#[test]
fn previous_keeps_only_the_last_deposit_and_releases_are_pruned() {
    let env = Env::new();
    let s = Settings {
        publish: jobs::Publish { keep_releases: 2, fsync: false, ..Default::default() },
        ..theia_settings()
    };
    let mut ids = Vec::new();
    for i in 0..4 {
        let out = env.ingest("MSEC", &format!("MSEC_{i}.zip"), &good_theia("MSEC", &i.to_string()), &s);
        out.result.unwrap();
        ids.push(out.id);
    }
    let prev: Vec<_> =
        fs::read_dir(env.drop_root.join("MSEC/previous")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(prev, ["MSEC_3.zip"]);
    let mut rels: Vec<_> = fs::read_dir(env.publish_root.join("MSEC/releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    rels.sort();
    let mut newest = ids[2..].to_vec();
    newest.sort();
    assert_eq!(rels, newest);
    assert!(env.current("MSEC").unwrap().ends_with(&ids[3]));
    // The two oldest were set aside, to be deleted when it suits the
    // caller, with the three `current` links the switches replaced.
    let pruned = env.publish_root.join(jobs::publish::PRUNED);
    let kinds: Vec<_> = fs::read_dir(&pruned).unwrap().map(|e| e.unwrap().file_type().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|t| t.is_dir()).count(), 2);
    assert_eq!(kinds.iter().filter(|t| t.is_symlink()).count(), 3);
    assert_eq!(jobs::publish::empty_pruned(&env.publish_root).unwrap(), 5);
    assert_eq!(fs::read_dir(&pruned).unwrap().count(), 0);
}

#[test]
fn merge_mode_links_unchanged_files() {
    let env = Env::new();
    let s =
        Settings { publish: jobs::Publish { mode: PublishMode::Merge, fsync: false, ..Default::default() }, ..plain() };
    let first =
        env.ingest("IGNF", "a.zip", &RawZip::new().file("x/keep.txt", "keep").file("x/old.txt", "old").build(), &s);
    let r1 = first.result.unwrap().release;
    let second = env.ingest("IGNF", "b.zip", &RawZip::new().file("x/OLD.txt", "new").file("y.txt", "y").build(), &s);
    let r2 = second.result.unwrap().release;
    // Delivered replaces its namesake (case-insensitively); the rest is kept by hard link.
    assert_eq!(fs::read(r2.join("x/keep.txt")).unwrap(), b"keep");
    assert_eq!(fs::metadata(r2.join("x/keep.txt")).unwrap().ino(), fs::metadata(r1.join("x/keep.txt")).unwrap().ino());
    assert_eq!(fs::read(r2.join("x/OLD.txt")).unwrap(), b"new");
    assert!(!r2.join("x/old.txt").exists());
    let m: ReleaseManifest = serde_json::from_slice(&fs::read(r2.join("manifest.json")).unwrap()).unwrap();
    let paths: Vec<_> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["x/OLD.txt", "x/keep.txt", "y.txt"]);
    // The old release is untouched.
    assert_eq!(fs::read(r1.join("x/old.txt")).unwrap(), b"old");
    // A delivered folder over a kept file is a conflict.
    let third = env.ingest("IGNF", "c.zip", &RawZip::new().file("y.txt/z", "z").build(), &s);
    assert_eq!(third.result.unwrap_err().code(), jobs::Code::NameConflict);
}

#[test]
fn a_failure_after_any_publish_step_leaves_current_complete() {
    for step in [Step::Linked, Step::ManifestWritten, Step::Synced, Step::Renamed, Step::Switched, Step::Pruned] {
        let env = Env::new();
        let s = theia_settings();
        let v1 = env.ingest("MSEC", "MSEC_1.zip", &good_theia("MSEC", "v1"), &s);
        let v1_id = v1.result.map(|_| v1.id).unwrap();
        let bytes = good_theia("MSEC", "v2");
        let out = env.ingest_with("MSEC", "MSEC_2.zip", &bytes, None, &s, IngestOptions { fail_after: Some(step) });
        let err = out.result.unwrap_err();
        assert!(err.is_transient(), "{step:?}: {err}");
        // `current` names a complete release: v1 before the switch, v2 after.
        let cur = env.current("MSEC").unwrap();
        let expect = if matches!(step, Step::Switched | Step::Pruned) { &out.id } else { &v1_id };
        assert!(cur.ends_with(expect), "{step:?}: current is {}", cur.display());
        let rel = env.publish_root.join("MSEC").join(&cur);
        let m: ReleaseManifest = serde_json::from_slice(&fs::read(rel.join("manifest.json")).unwrap()).unwrap();
        for f in &m.files {
            assert_eq!(fs::metadata(rel.join(&f.path)).unwrap().len(), f.size, "{step:?}");
        }
        // A later run cleans stale staging, and the retry of the same
        // deposit id (the daemon keeps it) then succeeds.
        clean_stale(&env.publish_root).unwrap();
        assert!(env.staging_is_empty(), "{step:?}");
        let archive = env.put("MSEC_2.zip", &bytes);
        let job = jobs::pipeline::Job {
            id: &out.id,
            producer: "MSEC",
            archive: &archive,
            name: "MSEC_2.zip",
            sidecar: None,
            settings: &s,
        };
        jobs::pipeline::ingest(&job, &env.publish_root, IngestOptions::default(), &jobs::unpack::Quiet).unwrap();
        assert!(env.current("MSEC").unwrap().ends_with(&out.id));
        let rel = env.publish_root.join("MSEC/current");
        assert_eq!(fs::read_to_string(rel.join("MSEC_DAT_1/obs1.txt")).unwrap(), "a,b\n1,v2\n");
    }
}

#[test]
fn stale_staging_of_a_live_job_is_kept() {
    let env = Env::new();
    let live = jobs::publish::Staging::create(&env.publish_root, "20260101T000000Z-MSEC-00000001").unwrap();
    fs::create_dir_all(env.publish_root.join(".staging/20250101T000000Z-MSEC-00000002")).unwrap();
    let removed = clean_stale(&env.publish_root).unwrap();
    assert_eq!(removed.len(), 1);
    assert!(live.dir.is_dir());
    live.discard().unwrap();
    assert!(env.staging_is_empty());
}

#[test]
fn check_writes_nothing() {
    let env = Env::new();
    let archive = env.put("MSEC_THEIA.zip", &good_theia("MSEC", "v1"));
    let before = Env::tree(env.tmp.path());
    let s = theia_settings();
    let job = jobs::pipeline::Job {
        id: "check",
        producer: "MSEC",
        archive: &archive,
        name: "MSEC_THEIA.zip",
        sidecar: None,
        settings: &s,
    };
    let summary = jobs::pipeline::check(&job, &jobs::unpack::Quiet).unwrap();
    assert_eq!(summary.file_count, 4);
    assert_eq!(Env::tree(env.tmp.path()), before);
}

#[test]
fn not_enough_free_space_is_transient_and_keeps_the_deposit() {
    let env = Env::new();
    let s =
        Settings { limits: jobs::Limits { min_free_bytes: u64::MAX / 4, ..Default::default() }, ..theia_settings() };
    let out = env.ingest("MSEC", "MSEC_1.zip", &good_theia("MSEC", "v1"), &s);
    let err = out.result.unwrap_err();
    assert_eq!(err.code(), jobs::Code::NoSpace);
    assert!(err.is_transient());
    assert!(env.current("MSEC").is_none());
    assert!(env.staging_is_empty());
    // Transient: not rotated, the deposit stays where it was.
    assert!(env.drop_root.join(".depot/spool/MSEC_1.zip").is_file());
}

#[test]
fn unchanged_small_files_are_linked_to_the_current_release() {
    let env = Env::new();
    let s = theia_settings();
    let first = env.ingest("MSEC", "MSEC_1.zip", &good_theia("MSEC", "v1"), &s).result.unwrap();
    // obs1.txt changes (same size, other bytes); the rest is as it was.
    let second = env.ingest("MSEC", "MSEC_2.zip", &good_theia("MSEC", "v2"), &s).result.unwrap();
    let ino = |rel: &std::path::Path, f: &str| fs::metadata(rel.join(f)).unwrap().ino();
    for f in ["MSEC_en.json", "MSEC_DAT_1/obs2.csv", "MSEC_DAT_2/obs3.txt"] {
        assert_eq!(ino(&first.release, f), ino(&second.release, f), "{f} not linked");
    }
    assert_ne!(ino(&first.release, "MSEC_DAT_1/obs1.txt"), ino(&second.release, "MSEC_DAT_1/obs1.txt"));
    assert_eq!(fs::read_to_string(second.release.join("MSEC_DAT_1/obs1.txt")).unwrap(), "a,b\n1,v2\n");
    assert_eq!(fs::read_to_string(first.release.join("MSEC_DAT_1/obs1.txt")).unwrap(), "a,b\n1,v1\n");
    // The new release's manifest lists every file, linked or not.
    let m: ReleaseManifest = serde_json::from_slice(&fs::read(second.release.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m.file_count, 4);
    assert_eq!(fs::metadata(second.release.join("MSEC_en.json")).unwrap().permissions().mode() & 0o7777, 0o644);
    // A file of the current release changed behind our back is not trusted.
    fs::write(second.release.join("MSEC_DAT_2/obs3.txt"), b"HELLO").unwrap();
    let third = env.ingest("MSEC", "MSEC_3.zip", &good_theia("MSEC", "v2"), &s).result.unwrap();
    assert_ne!(ino(&second.release, "MSEC_DAT_2/obs3.txt"), ino(&third.release, "MSEC_DAT_2/obs3.txt"));
    assert_eq!(fs::read(third.release.join("MSEC_DAT_2/obs3.txt")).unwrap(), b"hello");
    assert!(env.staging_is_empty());
}

/// An older deposit published after a newer one (a `depot ingest` that
/// overtook the daemon's queue) is kept as a release, but `current` stays
/// on the newer: it never moves back.
#[test]
fn current_never_moves_back_to_an_older_deposit() {
    let env = Env::new();
    let s = theia_settings();
    let publish = |id: &str, tag: &str| {
        let name = format!("{id}.zip");
        let archive = env.put(&name, &good_theia("MSEC", tag));
        let job =
            jobs::pipeline::Job { id, producer: "MSEC", archive: &archive, name: &name, sidecar: None, settings: &s };
        jobs::pipeline::ingest(&job, &env.publish_root, IngestOptions::default(), &jobs::unpack::Quiet).unwrap()
    };
    let newer = "20250101T100000Z-MSEC-0000000b";
    let older = "20250101T090000Z-MSEC-0000000a";
    assert!(publish(newer, "new").superseded_by.is_none());
    let p = publish(older, "old");
    assert_eq!(p.superseded_by.as_deref(), Some(newer));
    assert!(env.current("MSEC").unwrap().ends_with(newer));
    assert!(p.release.join("manifest.json").is_file(), "the older release is kept");
    assert!(env.staging_is_empty());
}

/// One publisher per producer: while another process (here: this test)
/// holds the producer's lock, a publish waits, and gives up when cancelled.
#[test]
fn a_publish_waits_for_the_producers_lock() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new();
    let held = jobs::publish::lock_producer(&env.publish_root, "MSEC", &|| false).unwrap();
    let stop = AtomicBool::new(false);
    let s = theia_settings();
    let archive = env.put("a.zip", &good_theia("MSEC", "a"));
    struct Stop<'a>(&'a AtomicBool);
    impl jobs::unpack::Progress for Stop<'_> {
        fn cancelled(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }
    std::thread::scope(|sc| {
        let t = sc.spawn(|| {
            let id = jobs::deposit::new_id("MSEC");
            let job = jobs::pipeline::Job {
                id: &id,
                producer: "MSEC",
                archive: &archive,
                name: "a.zip",
                sidecar: None,
                settings: &s,
            };
            jobs::pipeline::ingest(&job, &env.publish_root, IngestOptions::default(), &Stop(&stop))
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!t.is_finished(), "published while another held the lock");
        assert!(env.current("MSEC").is_none());
        stop.store(true, Ordering::Relaxed);
        assert!(matches!(t.join().unwrap(), Err(jobs::Error::Cancelled)));
    });
    drop(held);
    let out = env.ingest("MSEC", "b.zip", &good_theia("MSEC", "b"), &s);
    assert!(out.result.is_ok());
}
