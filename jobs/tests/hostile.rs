//! Every bad-input class of the SPEC: the hostile zip is built in code, and
//! each case checks its error code, that nothing was published (`current`
//! and the release tree unchanged), that staging is gone, and that nothing
//! was written anywhere but `rejected/` (the deposit and its reports).

mod support;

use std::fs;
use std::path::PathBuf;

use jobs::{Code, Settings};
use support::*;

/// Ingest `bad` over an existing good release and check the rejection.
fn rejected(settings: &Settings, bad: &[u8], code: Code) -> jobs::report::Report {
    rejected_with(settings, bad, None, code)
}

fn rejected_with(settings: &Settings, bad: &[u8], sidecar: Option<&str>, code: Code) -> jobs::report::Report {
    let env = Env::new();
    let p = "MSEC";
    let good = if settings.profile == jobs::Profile::Theia {
        good_theia(p, "v1")
    } else {
        RawZip::new().file("keep/a.txt", "kept").build()
    };
    let baseline = Settings { checks: Default::default(), limits: Default::default(), ..settings.clone() };
    let first = env.ingest(p, "MSEC_THEIA.zip", &good, &baseline);
    assert!(first.result.is_ok(), "{:?}", first.result.err());
    let current_before = env.current(p).unwrap();
    let publish_before = Env::tree(&env.publish_root);
    let all_before = Env::tree(env.tmp.path());

    let out = env.ingest_with(p, "MSEC_BAD.zip", bad, sidecar, settings, Default::default());
    let err = out.result.as_ref().expect_err("hostile deposit was accepted");
    assert_eq!(err.code(), code, "{err}");
    assert!(!err.is_transient());
    assert!(out.report.message.as_ref().is_some_and(|m| !m.is_empty()));

    assert_eq!(env.current(p).unwrap(), current_before, "current moved");
    assert_eq!(Env::tree(&env.publish_root), publish_before, "publish tree changed");
    assert!(env.staging_is_empty(), "staging left behind");
    let all_after = Env::tree(env.tmp.path());
    let rejected_dir = PathBuf::from("drop/MSEC/rejected");
    for path in all_after.keys() {
        if !all_before.contains_key(path) {
            assert!(path.starts_with(&rejected_dir), "written outside staging: {}", path.display());
        }
    }
    let kept = rejected_files(&env, &out.id);
    for f in &kept {
        assert!(f.is_file(), "{} missing", f.display());
    }
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&kept[1]).unwrap()).unwrap();
    assert_eq!(json["code"], code.as_str());
    assert_eq!(json["accepted"], false);
    assert!(!env.tmp.path().join("evil.txt").exists());
    out.report
}

/// Where a rejected deposit's archive, report.json and report.txt are:
/// `rejected/<deposit-id>/` (the SPEC's layout), or beside each other in
/// `rejected/` (the layout before it).
fn rejected_files(env: &Env, id: &str) -> [PathBuf; 3] {
    let dir = env.drop_root.join("MSEC/rejected").join(id);
    if dir.is_dir() {
        ["MSEC_BAD.zip", "report.json", "report.txt"].map(|n| dir.join(n))
    } else {
        let dir = env.drop_root.join("MSEC/rejected");
        ["MSEC_BAD.zip", "MSEC_BAD.zip.report.json", "MSEC_BAD.zip.report.txt"].map(|n| dir.join(n))
    }
}

/// A plain deposit with one entry of this name.
fn one(name: &[u8]) -> Vec<u8> {
    RawZip::new().file("ok.txt", "fine").raw(RawEntry::new(name, "x", DEFLATED)).build()
}

/// A theia deposit whose first dataset zip also holds `extra`.
fn theia_with(extra: RawEntry) -> Vec<u8> {
    let inner = RawZip::new().file("obs1.txt", "1").raw(extra).build();
    let pivot = pivot("MSEC", &[("MSEC_DAT_1", &["obs1.txt"])]);
    RawZip::new().file("MSEC_en.json", pivot).stored("MSEC_DAT_1.zip", inner).build()
}

#[test]
fn path_traversal() {
    for name in [
        &b"../evil.txt"[..],
        b"a/../../evil.txt",
        b"/etc/evil.txt",
        b"..\\evil.txt",
        b"C:/evil.txt",
        b"C:\\evil.txt",
        b"a/./b",
    ] {
        let r = rejected(&plain(), &one(name), Code::UnsafePath);
        assert!(r.entry.is_some(), "{name:?}: entry not named");
    }
    // The same, one level down, in a dataset zip.
    let r = rejected(&theia_settings(), &theia_with(RawEntry::new("../../evil.txt", "x", DEFLATED)), Code::UnsafePath);
    assert!(r.message.unwrap().contains("MSEC_DAT_1.zip/"));
}

#[test]
fn symlink_entry() {
    let mut e = RawEntry::new("link", "/etc/passwd", STORED);
    e.external_attr = 0o120777 << 16;
    rejected(&plain(), &RawZip::new().raw(e.clone()).build(), Code::Symlink);
    rejected(&theia_settings(), &theia_with(e), Code::Symlink);
}

#[test]
fn bad_names() {
    rejected(&plain(), &one(b"a\x07b.txt"), Code::NameInvalid);
    rejected(&plain(), &one(b"new\nline.txt"), Code::NameInvalid);
    rejected(&plain(), &one("x".repeat(300).as_bytes()), Code::NameInvalid);
    rejected(&plain(), &one(b"a//b.txt"), Code::NameInvalid);
    let mut bad_utf8 = RawEntry::new(b"caf\xe9.txt", "x", DEFLATED);
    bad_utf8.flags = 0x0800;
    rejected(&plain(), &RawZip::new().raw(bad_utf8).build(), Code::NameInvalid);
}

#[test]
fn duplicate_and_colliding_names() {
    let r = rejected(&plain(), &RawZip::new().file("a.txt", "1").file("a.txt", "2").build(), Code::NameConflict);
    assert_eq!(r.entry.as_deref(), Some("a.txt"));
    rejected(&plain(), &RawZip::new().file("Data.TXT", "1").file("data.txt", "2").build(), Code::NameConflict);
    rejected(
        &plain(),
        &RawZip::new().file("caf\u{e9}.txt", "1").file("cafe\u{301}.txt", "2").build(),
        Code::NameConflict,
    );
    rejected(&plain(), &RawZip::new().file("x", "1").file("x/y.txt", "2").build(), Code::NameConflict);
    rejected(&plain(), &RawZip::new().file("x", "1").dir("X/").build(), Code::NameConflict);
    rejected(&plain(), &RawZip::new().file("manifest.json", "{}").build(), Code::NameConflict);
    let flat = Settings { checks: jobs::Checks { flat_names: true, ..Default::default() }, ..plain() };
    rejected(&flat, &RawZip::new().file("a/x.txt", "1").file("b/x.txt", "2").build(), Code::NameConflict);
    // Across dataset zips: the published folders keep them apart, but within
    // one dataset the case rule holds.
    rejected(&theia_settings(), &theia_with(RawEntry::new("OBS1.txt", "x", DEFLATED)), Code::NameConflict);
}

#[test]
fn md5_manifests() {
    let data: &[u8] = b"some data";
    let wrong = format!("{}  a.txt\n", md5hex(b"other"));
    rejected(&plain(), &RawZip::new().file("a.txt", data).file("MD5SUMS", wrong).build(), Code::Md5Mismatch);
    let missing = format!("{}  a.txt\n{}  gone.txt\n", md5hex(data), md5hex(b"x"));
    let r = rejected(&plain(), &RawZip::new().file("a.txt", data).file("MD5SUMS", missing).build(), Code::Md5Missing);
    assert_eq!(r.entry.as_deref(), Some("gone.txt"));
    let partial = format!("{}  a.txt\n", md5hex(data));
    let r = rejected(
        &plain(),
        &RawZip::new().file("a.txt", data).file("b.txt", "b").file("MD5SUMS", partial.clone()).build(),
        Code::Md5Unlisted,
    );
    assert_eq!(r.entry.as_deref(), Some("b.txt"));
    // BagIt-style manifest in a subfolder covers that folder only.
    let ok = RawZip::new().file("sub/a.txt", data).file("sub/manifest-md5.txt", partial).file("other.txt", "o").build();
    let env = Env::new();
    assert!(env.ingest("MSEC", "ok.zip", &ok, &plain()).result.is_ok());
    rejected(&plain(), &RawZip::new().file("a.txt", data).file("x.md5", "not a checksum\n").build(), Code::Md5Mismatch);
    // Inside a dataset zip.
    let bad = RawEntry::new("MD5SUMS", format!("{}  obs1.txt\n", md5hex(b"nope")), DEFLATED);
    rejected(&theia_settings(), &theia_with(bad), Code::Md5Mismatch);
}

#[test]
fn sidecar_mismatch() {
    let z = RawZip::new().file("a.txt", "a").build();
    let r = rejected_with(&plain(), &z, Some(&format!("{}  MSEC_BAD.zip\n", md5hex(b"x"))), Code::Md5Mismatch);
    assert_eq!(r.entry.as_deref(), Some("MSEC_BAD.zip"));
    rejected_with(&plain(), &z, Some("garbage"), Code::Md5Mismatch);
    // And a right one passes.
    let env = Env::new();
    let out = env.ingest_with("MSEC", "ok.zip", &z, Some(&md5hex(&z)), &plain(), Default::default());
    assert!(out.result.is_ok(), "{:?}", out.result.err());
    assert!(env.drop_root.join("MSEC/previous/ok.zip.md5").is_file());
}

#[test]
fn require_md5() {
    let s = Settings { checks: jobs::Checks { require_md5: true, ..Default::default() }, ..plain() };
    rejected(&s, &RawZip::new().file("a.txt", "a").build(), Code::Md5Missing);
}

#[test]
fn corrupt_entry_crc() {
    let mut e = RawEntry::new("a.txt", vec![b'z'; 10_000], DEFLATED);
    e.crc = Some(0xdead_beef);
    let r = rejected(&plain(), &RawZip::new().raw(e.clone()).build(), Code::ZipCorrupt);
    assert!(r.message.unwrap().contains("CRC"));
    rejected(&theia_settings(), &theia_with(e), Code::ZipCorrupt);
    // A stored body with one flipped byte.
    let mut s = RawEntry::new("b.bin", vec![7u8; 1000], STORED);
    let mut body = s.data.clone();
    body[500] ^= 1;
    s.body = Some(body);
    rejected(&plain(), &RawZip::new().raw(s).build(), Code::ZipCorrupt);
    // A deflate stream that is garbage.
    let mut g = RawEntry::new("c.txt", vec![1u8; 1000], DEFLATED);
    g.body = Some(vec![0xff; 50]);
    rejected(&plain(), &RawZip::new().raw(g).build(), Code::ZipCorrupt);
}

#[test]
fn truncated_archive() {
    let z = RawZip::new().file("a.txt", vec![b'a'; 50_000]).file("b.txt", "b").build();
    rejected(&plain(), &z[..z.len() / 2], Code::ZipCorrupt);
    rejected(&plain(), &z[..z.len() - 10], Code::ZipCorrupt);
}

#[test]
fn not_a_zip_and_empty() {
    rejected(&plain(), b"%PDF-1.4 this is not a zip at all", Code::NotAZip);
    rejected(&plain(), b"", Code::NotAZip);
    rejected(&theia_settings(), b"\x1f\x8b\x08\x00 gzip", Code::NotAZip);
}

#[test]
fn corrupt_dataset_zip() {
    let pivot = pivot("MSEC", &[("MSEC_DAT_1", &["obs1.txt"])]);
    let z = RawZip::new()
        .file("MSEC_en.json", pivot)
        .stored("MSEC_DAT_1.zip", b"PK\x03\x04 this is no zip".to_vec())
        .build();
    let r = rejected(&theia_settings(), &z, Code::ZipCorrupt);
    assert_eq!(r.entry.as_deref(), Some("MSEC_DAT_1.zip"));
}

#[test]
fn encrypted_entry() {
    let mut e = RawEntry::new("secret.txt", "x", STORED);
    e.flags |= 1;
    rejected(&plain(), &RawZip::new().raw(e.clone()).build(), Code::Encrypted);
    rejected(&theia_settings(), &theia_with(e), Code::Encrypted);
}

#[test]
fn unknown_method() {
    for method in [12u16, 14, 93, 95, 99, 1234] {
        let mut e = RawEntry::new("a.bin", "xyz", STORED);
        e.method = method;
        rejected(&plain(), &RawZip::new().raw(e).build(), Code::UnsupportedMethod);
    }
}

#[test]
fn deflate_bomb_over_limit() {
    let s = Settings { limits: jobs::Limits { max_unpacked_bytes: 1 << 20, ..Default::default() }, ..plain() };
    let z = RawZip::new().file("bomb.bin", vec![0u8; 4 << 20]).build();
    assert!(z.len() < 100_000);
    rejected(&s, &z, Code::LimitExceeded);
    // Spread over a dataset zip and the limit still counts both levels.
    let t = Settings { limits: s.limits.clone(), ..theia_settings() };
    rejected(&t, &theia_with(RawEntry::new("bomb.bin", vec![0u8; 2 << 20], DEFLATED)), Code::LimitExceeded);
}

#[test]
fn inflates_past_declared_size() {
    let mut e = RawEntry::new("liar.bin", vec![0u8; 1 << 20], DEFLATED);
    e.size = Some(1000);
    let r = rejected(&plain(), &RawZip::new().raw(e.clone()).build(), Code::LimitExceeded);
    assert!(r.message.unwrap().contains("declared"));
    rejected(&theia_settings(), &theia_with(e), Code::LimitExceeded);
}

#[test]
fn overlapping_entries() {
    let z = RawZip::new().file("a.bin", vec![0u8; 100_000]).alias(0, "b.bin").alias(0, "c.bin").build();
    rejected(&plain(), &z, Code::ZipCorrupt);
}

#[test]
fn entry_and_path_limits() {
    let many = Settings { limits: jobs::Limits { max_entries: 3, ..Default::default() }, ..plain() };
    rejected(
        &many,
        &RawZip::new().file("a", "1").file("b", "2").file("c", "3").file("d", "4").build(),
        Code::LimitExceeded,
    );
    let short = Settings { limits: jobs::Limits { max_path_len: 10, ..Default::default() }, ..plain() };
    rejected(&short, &one(b"abcdef/ghijklmnop.txt"), Code::LimitExceeded);
    let small = Settings { limits: jobs::Limits { max_archive_bytes: 100, ..Default::default() }, ..plain() };
    rejected(
        &small,
        &RawZip::new().file("a.txt", vec![b'x'; 1000]).stored("b", vec![1u8; 200]).build(),
        Code::LimitExceeded,
    );
}

#[test]
fn theia_pivot_missing() {
    let z = RawZip::new().stored("MSEC_DAT_1.zip", RawZip::new().file("obs1.txt", "1").build()).build();
    rejected(&theia_settings(), &z, Code::PivotMissing);
    let fr_only = RawZip::new().file("MSEC_fr.json", pivot("MSEC", &[])).build();
    rejected(&theia_settings(), &fr_only, Code::PivotMissing);
}

#[test]
fn theia_pivot_invalid() {
    let z = RawZip::new().file("MSEC_en.json", "{\"producer\": {\"producerId\": \"MSEC\"}, \"datasets\": [").build();
    let r = rejected(&theia_settings(), &z, Code::PivotInvalid);
    assert!(r.message.unwrap().contains("line"));
    rejected(&theia_settings(), &RawZip::new().file("MSEC_en.json", "{\"datasets\": []}").build(), Code::PivotInvalid);
}

#[test]
fn theia_pivot_of_another_producer() {
    let z = RawZip::new().file("MSEC_en.json", pivot("ABCD", &[])).build();
    rejected(&theia_settings(), &z, Code::ProducerMismatch);
    let z = RawZip::new().file("ABCD_en.json", pivot("ABCD", &[])).build();
    rejected(&theia_settings(), &z, Code::ProducerMismatch);
}

#[test]
fn theia_dataset_mismatch() {
    let inner = RawZip::new().file("obs1.txt", "1").build();
    let p1 = pivot("MSEC", &[("MSEC_DAT_1", &["obs1.txt"])]);
    // A dataset zip of another producer.
    let z = RawZip::new()
        .file("MSEC_en.json", p1.clone())
        .stored("MSEC_DAT_1.zip", inner.clone())
        .stored("ABCD_DAT_1.zip", inner.clone())
        .build();
    rejected(&theia_settings(), &z, Code::DatasetMismatch);
    // A dataset zip not in the pivot.
    let z = RawZip::new()
        .file("MSEC_en.json", p1.clone())
        .stored("MSEC_DAT_1.zip", inner.clone())
        .stored("MSEC_DAT_9.zip", inner.clone())
        .build();
    let r = rejected(&theia_settings(), &z, Code::DatasetMismatch);
    assert_eq!(r.entry.as_deref(), Some("MSEC_DAT_9.zip"));
    // A dataFile.name missing from its zip.
    let p2 = pivot("MSEC", &[("MSEC_DAT_1", &["obs1.txt", "obs2.txt"])]);
    let z = RawZip::new().file("MSEC_en.json", p2).stored("MSEC_DAT_1.zip", inner.clone()).build();
    let r = rejected(&theia_settings(), &z, Code::DatasetMismatch);
    assert_eq!(r.entry.as_deref(), Some("MSEC_DAT_1.zip/obs2.txt"));
    // A pivot dataset id of another producer.
    let p3 = pivot("MSEC", &[("ABCD_DAT_1", &["obs1.txt"])]);
    rejected(&theia_settings(), &RawZip::new().file("MSEC_en.json", p3).build(), Code::DatasetMismatch);
}

#[test]
fn theia_unexpected_top_level_file() {
    let z = RawZip::new().file("MSEC_en.json", pivot("MSEC", &[])).file("notes.docx", "x").build();
    rejected(&theia_settings(), &z, Code::NameInvalid);
}

#[test]
fn cp437_names_decode_and_publish() {
    // "données.txt" and "été/ß.csv" in CP437, without the UTF-8 flag.
    let mut a = RawEntry::new(b"donn\x82es.txt", "d", DEFLATED);
    a.flags = 0;
    let mut b = RawEntry::new(b"\x82t\x82/\xe1.csv", "e", DEFLATED);
    b.flags = 0;
    let env = Env::new();
    let out = env.ingest("MSEC", "cp.zip", &RawZip::new().raw(a).raw(b).build(), &plain());
    let rel = out.result.unwrap().release;
    assert_eq!(fs::read(rel.join("données.txt")).unwrap(), b"d");
    assert_eq!(fs::read(rel.join("été/ß.csv")).unwrap(), b"e");
}
