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
fn an_archive_with_no_file_is_an_empty_deposit_unless_allowed() {
    let empty = RawZip::new().build();
    let dirs_only = RawZip::new().dir("a/").dir("a/b/").build();
    let sums_only = RawZip::new().file("MD5SUMS", "").build();
    for z in [&empty, &dirs_only, &sums_only] {
        let r = rejected(&plain(), z, Code::EmptyDeposit);
        assert!(r.message.unwrap().contains("checks.allow_empty"));
    }
    let allowed = Settings { checks: jobs::Checks { allow_empty: true, ..Default::default() }, ..plain() };
    let env = Env::new();
    for z in [&empty, &dirs_only] {
        let out = env.ingest("MSEC", "empty.zip", z, &allowed);
        assert!(out.result.is_ok(), "{:?}", out.result.err());
        assert_eq!(out.report.file_count, Some(0));
    }
}

#[test]
fn portable_names_refuse_windows_illegal_characters() {
    for name in ["a\"b.txt", "d/a:b.txt", "a<b", "a>b", "q?.txt", "s*.txt", "a|b"] {
        let r = rejected(&plain(), &one(name.as_bytes()), Code::NameInvalid);
        assert!(r.message.unwrap().contains("checks.portable_names"), "{name}");
    }
    let lax = Settings { checks: jobs::Checks { portable_names: false, ..Default::default() }, ..plain() };
    let out = Env::new().ingest("MSEC", "lax.zip", &RawZip::new().file("ab:c?.txt", "x").build(), &lax);
    assert!(out.result.is_ok(), "{:?}", out.result.err());
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

/// Forty pivots of 8 MiB each (whitespace after the JSON: valid, and
/// compressing to almost nothing) used 329 MiB before they were counted.
#[test]
fn pivot_flood_over_metadata_limit() {
    let mut padded = pivot("MSEC", &[]);
    padded.resize(8 << 20, b' ');
    let body = deflate(&padded);
    assert!(body.len() < 256 << 10, "{}", body.len());
    let mut z = RawZip::new();
    let langs: Vec<String> = std::iter::once("en".to_owned())
        .chain((b'a'..=b'z').flat_map(|a| (b'a'..=b'z').map(move |b| format!("{}{}", a as char, b as char))))
        .take(40)
        .collect();
    for lang in &langs {
        let mut e = RawEntry::new(format!("MSEC_{lang}.json"), Vec::new(), DEFLATED);
        e.crc = Some(crc32(&padded));
        e.size = Some(padded.len() as u32);
        e.body = Some(body.clone());
        z = z.raw(e);
    }
    let z = z.build();
    assert!(z.len() < 10 << 20, "{}", z.len());
    let r = rejected(&theia_settings(), &z, Code::LimitExceeded);
    let msg = r.message.unwrap();
    assert!(msg.contains("limits.max_metadata_bytes"), "{msg}");
    // Two fit in 16 MiB; the third is named.
    assert_eq!(r.entry.as_deref(), Some(format!("MSEC_{}.json", langs[2]).as_str()));
}

#[test]
fn manifests_and_sidecar_count_against_metadata_limit() {
    let tight = |n| Settings { limits: jobs::Limits { max_metadata_bytes: n, ..Default::default() }, ..plain() };
    let sums = md5sums(&[("a.txt", b"a")]);
    let z = RawZip::new().file("a.txt", "a").file("MD5SUMS", sums.clone()).build();
    let r = rejected(&tight(sums.len() as u64 - 1), &z, Code::LimitExceeded);
    assert_eq!(r.entry.as_deref(), Some("MD5SUMS"));
    // The manifest alone fits; with the sidecar it does not.
    let side = format!("{}  MSEC_BAD.zip\n", md5hex(&z));
    let r = rejected_with(&tight(sums.len() as u64 + 10), &z, Some(&side), Code::LimitExceeded);
    assert!(r.message.unwrap().contains("limits.max_metadata_bytes"));
    // A sidecar alone over the limit is refused before it is read.
    let r = rejected_with(&tight(10), &z, Some(&side), Code::LimitExceeded);
    assert_eq!(r.entry.as_deref(), Some("MSEC_BAD.zip.md5"));
    // Inside a dataset zip too.
    let inner_sums = md5sums(&[("obs1.txt", b"1")]);
    let room = pivot("MSEC", &[("MSEC_DAT_1", &["obs1.txt"])]).len() + inner_sums.len() - 1;
    let inner = RawEntry::new("MD5SUMS", inner_sums, DEFLATED);
    let t =
        Settings { limits: jobs::Limits { max_metadata_bytes: room as u64, ..Default::default() }, ..theia_settings() };
    let r = rejected(&t, &theia_with(inner), Code::LimitExceeded);
    assert_eq!(r.entry.as_deref(), Some("MSEC_DAT_1.zip/MD5SUMS"));
}

/// A compressed dataset zip is inflated to scratch to be read: 300 MiB of
/// it, from a 300 KiB deposit, was written before anything said no.
#[test]
fn compressed_dataset_zip_over_unpacked_limit() {
    let s = Settings { limits: jobs::Limits { max_unpacked_bytes: 1 << 20, ..Default::default() }, ..theia_settings() };
    let pivot = pivot("MSEC", &[("MSEC_DAT_1", &["obs1.txt"])]);
    let bomb = zip_of_zeros_deflated("MSEC_DAT_1.zip", "obs1.txt", 300 << 20);
    let z = RawZip::new().file("MSEC_en.json", pivot.clone()).raw(bomb.clone()).build();
    assert!(z.len() < 4 << 20, "{}", z.len());
    let r = rejected(&s, &z, Code::LimitExceeded);
    assert_eq!(r.entry.as_deref(), Some("MSEC_DAT_1.zip"));
    assert!(r.message.unwrap().contains("limits.max_unpacked_bytes"));
    // Declaring a small size does not help: inflating stops one byte past it.
    for declared in [1000, 512 << 10] {
        let mut liar = bomb.clone();
        liar.size = Some(declared);
        let z = RawZip::new().file("MSEC_en.json", pivot.clone()).raw(liar).build();
        let r = rejected(&s, &z, Code::LimitExceeded);
        assert!(r.message.unwrap().contains("declared"));
    }
}

/// Every cut of a stored Theia deposit, notably right after a dataset
/// zip's own end record, is the upload cut short: never the deposit read
/// as the dataset zip whose end record happens to come last.
#[test]
fn cut_short_stored_theia_deposit() {
    let z = good_theia("MSEC", "cut");
    let ends: Vec<usize> = (0..z.len() - 3).filter(|&i| z[i..i + 4] == *b"PK\x05\x06").collect();
    assert!(ends.len() >= 3, "two dataset zips and the deposit");
    let mut cuts: Vec<usize> = ends[..ends.len() - 1].iter().map(|&i| i + 22).collect();
    cuts.extend([100, z.len() / 3, z.len() / 2, ends[ends.len() - 1] - 10, z.len() - 22, z.len() - 10, z.len() - 1]);
    for cut in cuts {
        let r = rejected(&theia_settings(), &z[..cut], Code::ZipCorrupt);
        let msg = r.message.unwrap();
        assert!(msg.contains("the upload was probably cut short"), "cut at {cut}: {msg}");
        assert_eq!(r.entry, None, "cut at {cut}");
    }
}

#[test]
fn bytes_before_or_after_the_zip() {
    let z = RawZip::new().file("a.txt", "a").file("b.txt", "b").build();
    let mut prepended = b"#!/bin/sh\nexit 0\n".to_vec();
    prepended.extend_from_slice(&z);
    let r = rejected(&plain(), &prepended, Code::ZipCorrupt);
    let msg = r.message.unwrap();
    assert!(msg.contains("does not start with a zip header (17 bytes before it)"), "{msg}");
    let mut appended = z.clone();
    appended.extend_from_slice(b"trailing garbage");
    let r = rejected(&plain(), &appended, Code::ZipCorrupt);
    let msg = r.message.unwrap();
    assert!(msg.contains("16 bytes after its end"), "{msg}");
    // In a dataset zip too, named.
    let mut inner = b"junk".to_vec();
    inner.extend_from_slice(&RawZip::new().file("obs1.txt", "1").build());
    let pivot = pivot("MSEC", &[("MSEC_DAT_1", &["obs1.txt"])]);
    let t = RawZip::new().file("MSEC_en.json", pivot).stored("MSEC_DAT_1.zip", inner).build();
    let r = rejected(&theia_settings(), &t, Code::ZipCorrupt);
    assert_eq!(r.entry.as_deref(), Some("MSEC_DAT_1.zip"));
    assert!(r.message.unwrap().contains("dataset zip MSEC_DAT_1.zip does not start with a zip header"));
}

#[test]
fn zip_comments_and_zip64_end_records_are_accepted() {
    let env = Env::new();
    let z = with_comment(&RawZip::new().file("a.txt", "a").build(), b"made by a tool PK\x03\x04");
    let out = env.ingest("MSEC", "c.zip", &z, &plain());
    assert!(out.result.is_ok(), "{:?}", out.result.err());
    let z64 = with_zip64_end(&RawZip::new().file("a.txt", "a").file("b/c.txt", "c").build(), None);
    let out = env.ingest("MSEC", "z64.zip", &z64, &plain());
    assert!(out.result.is_ok(), "{:?}", out.result.err());
    let inner = with_comment(&RawZip::new().file("obs1.txt", "1").build(), b"dataset");
    let pivot = pivot("MSEC", &[("MSEC_DAT_1", &["obs1.txt"])]);
    let t = RawZip::new().file("MSEC_en.json", pivot).stored("MSEC_DAT_1.zip", inner).build();
    let out = env.ingest("MSEC", "t.zip", &with_comment(&t, b"deposit"), &theia_settings());
    assert!(out.result.is_ok(), "{:?}", out.result.err());
}

/// A zip64 locator is only where the format puts it, right before the end
/// record and after the directory: bytes that look like one at the end of
/// the last entry's comment are the directory's.
#[test]
fn a_locator_lookalike_in_the_last_entry_s_comment_is_comment() {
    let env = Env::new();
    let mut last = RawEntry::new("b.txt", "b", DEFLATED);
    last.comment = b"note PK\x06\x07".to_vec();
    last.comment.extend_from_slice(&0u32.to_le_bytes());
    last.comment.extend_from_slice(&3u64.to_le_bytes());
    last.comment.extend_from_slice(&1u32.to_le_bytes());
    let z = RawZip::new().file("a.txt", "a").raw(last).build();
    let out = env.ingest("MSEC", "c.zip", &z, &plain());
    assert!(out.result.is_ok(), "{:?}", out.result.err());
    assert_eq!(out.report.file_count, Some(2));
}

/// Beside a zip64 end record, each end-record field either holds its value
/// or says "see zip64" (0xFFFF, 0xFFFFFFFF); one that says something else
/// is named, not reported as a cut-short upload.
#[test]
fn stale_end_record_values_beside_zip64_are_named() {
    let z = RawZip::new().file("a.txt", "a").file("b/c.txt", "c").build();
    let z64 = with_zip64_end(&z, None);
    let n = z64.len();
    let (cd_size, cd_offset) = (&z[z.len() - 10..z.len() - 6], &z[z.len() - 6..z.len() - 2]);
    // Values given as they are, no marker: as good as the markers.
    let mut exact = z64.clone();
    exact[n - 14..n - 10].copy_from_slice(&[2, 0, 2, 0]);
    exact[n - 10..n - 6].copy_from_slice(cd_size);
    exact[n - 6..n - 2].copy_from_slice(cd_offset);
    let out = Env::new().ingest("MSEC", "z.zip", &exact, &plain());
    assert!(out.result.is_ok(), "{:?}", out.result.err());
    // Some markers, some values: as good.
    let mut mixed = z64.clone();
    mixed[n - 6..n - 2].copy_from_slice(cd_offset);
    let out = Env::new().ingest("MSEC", "z.zip", &mixed, &plain());
    assert!(out.result.is_ok(), "{:?}", out.result.err());
    // A stale directory size: said as it is.
    let mut stale = exact.clone();
    stale[n - 10..n - 6].copy_from_slice(&7u32.to_le_bytes());
    let r = rejected(&plain(), &stale, Code::ZipCorrupt);
    let m = r.message.unwrap();
    assert!(m.contains("size of the table of contents") && m.contains("zip64") && !m.contains("cut short"), "{m}");
    let mut stale = exact.clone();
    stale[n - 14..n - 10].copy_from_slice(&[9, 0, 9, 0]);
    let m = rejected(&plain(), &stale, Code::ZipCorrupt).message.unwrap();
    assert!(m.contains("number of entries") && m.contains("9") && !m.contains("cut short"), "{m}");
}

/// The entry count is taken from the end record, before the directory is
/// parsed (the zip crate allocates for every entry it is told of).
#[test]
fn entry_count_from_the_end_record() {
    let few = Settings { limits: jobs::Limits { max_entries: 1000, ..Default::default() }, ..plain() };
    let z = RawZip::new().file("a.txt", "a").build();
    let mut lying = z.clone();
    let n = lying.len();
    lying[n - 12..n - 10].copy_from_slice(&60_000u16.to_le_bytes());
    lying[n - 14..n - 12].copy_from_slice(&60_000u16.to_le_bytes());
    let r = rejected(&few, &lying, Code::LimitExceeded);
    assert!(r.message.unwrap().contains("60000 entries; limits.max_entries is 1000"));
    let r = rejected(&few, &with_zip64_end(&z, Some(1 << 40)), Code::LimitExceeded);
    assert!(r.message.unwrap().contains("limits.max_entries"));
    // A split archive's part is not a zip to read on its own.
    let mut split = z.clone();
    split[n - 18..n - 16].copy_from_slice(&1u16.to_le_bytes());
    let r = rejected(&plain(), &split, Code::ZipCorrupt);
    assert!(r.message.unwrap().contains("split"));
}

#[test]
fn names_fold_case_fully() {
    rejected(&plain(), &RawZip::new().file("\u{3c3}.txt", "1").file("\u{3c2}.txt", "2").build(), Code::NameConflict);
    rejected(
        &plain(),
        &RawZip::new().file("stra\u{df}e.csv", "1").file("STRASSE.CSV", "2").build(),
        Code::NameConflict,
    );
    // Folders that fold to one are one folder, not a conflict.
    let env = Env::new();
    let z = RawZip::new().file("stra\u{df}e/a", "1").file("STRASSE/b", "2").build();
    assert!(env.ingest("MSEC", "ok.zip", &z, &plain()).result.is_ok());
}

#[test]
fn invisible_and_unportable_names() {
    let r = rejected(&plain(), &one("invoice\u{202e}fdp.exe".as_bytes()), Code::NameInvalid);
    let msg = r.message.unwrap();
    assert!(msg.contains("U+202E RIGHT-TO-LEFT OVERRIDE"), "{msg}");
    assert_eq!(r.stage, Some(jobs::Stage::Conflicts));
    rejected(&plain(), &one("zero\u{200b}width.txt".as_bytes()), Code::NameInvalid);
    rejected(&theia_settings(), &theia_with(RawEntry::new("obs\u{feff}2.txt", "x", DEFLATED)), Code::NameInvalid);
    let r = rejected(&plain(), &one(b"NUL.txt"), Code::NameInvalid);
    assert!(r.message.unwrap().contains("checks.portable_names"));
    rejected(&plain(), &one(b"data/Con.tar.gz"), Code::NameInvalid);
    let r = rejected(&plain(), &one(b"a./b"), Code::NameInvalid);
    assert_eq!(r.stage, Some(jobs::Stage::Conflicts));
    rejected(&plain(), &one(b"b "), Code::NameInvalid);
    // The same names in a manifest are the manifest's fault.
    let listed = format!("{}  NUL.txt\n", md5hex(b"x"));
    let r = rejected(&plain(), &RawZip::new().file("MD5SUMS", listed).build(), Code::NameInvalid);
    assert_eq!(r.entry.as_deref(), Some("MD5SUMS"));

    let lax = Settings { checks: jobs::Checks { portable_names: false, ..Default::default() }, ..plain() };
    let env = Env::new();
    for name in ["NUL.txt", "a./b"] {
        let out = env.ingest("MSEC", "lax.zip", &RawZip::new().file(name, "x").build(), &lax);
        assert!(out.result.is_ok(), "{name}: {:?}", out.result.err());
    }
    // Invisible characters stay refused.
    rejected(&lax, &one("a\u{202e}b".as_bytes()), Code::NameInvalid);
}

/// A sidecar is never read through a link: ignored with a warning, and
/// what the link points at shows up nowhere.
#[test]
fn symlinked_or_special_sidecar_is_ignored() {
    let env = Env::new();
    let z = RawZip::new().file("a.txt", "a").build();
    let secret_md5 = md5hex(b"not this archive");
    let secret = env.tmp.path().join("secret.md5");
    fs::write(&secret, format!("{secret_md5}  MSEC_L.zip\n")).unwrap();
    let progress = Recorder::default();
    let out = env.ingest_with_sidecar_path(
        "MSEC",
        "MSEC_L.zip",
        &z,
        |archive| {
            let side = archive.with_file_name("MSEC_L.zip.md5");
            std::os::unix::fs::symlink(&secret, &side).unwrap();
            side
        },
        &plain(),
        &progress,
    );
    assert!(out.result.is_ok(), "{:?}", out.result.err());
    let warnings = progress.warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("symbolic link"), "{warnings:?}");
    let shown = format!("{}{}{warnings:?}", out.report.to_json(), out.report.to_text(None));
    assert!(!shown.contains(&secret_md5), "{shown}");

    // A FIFO is not waited on.
    let progress = Recorder::default();
    let out = env.ingest_with_sidecar_path(
        "MSEC",
        "MSEC_F.zip",
        &z,
        |archive| {
            let side = archive.with_file_name("MSEC_F.zip.md5");
            rustix::fs::mknodat(rustix::fs::CWD, &side, rustix::fs::FileType::Fifo, 0o644.into(), 0).unwrap();
            side
        },
        &plain(),
        &progress,
    );
    assert!(out.result.is_ok(), "{:?}", out.result.err());
    assert!(progress.warnings.lock().unwrap()[0].contains("not a regular file"));
}

/// The sidecar's verdict comes first: a damaged upload is "damaged on its
/// way", not whatever the damage made look wrong inside.
#[test]
fn wrong_sidecar_is_the_verdict_over_damage() {
    let z = RawZip::new().file("a.txt", vec![b'a'; 50_000]).file("b.txt", "b").build();
    let side = format!("{}  MSEC_BAD.zip\n", md5hex(&z));
    let cut = &z[..z.len() / 2];
    let r = rejected_with(&plain(), cut, Some(&side), Code::Md5Mismatch);
    assert_eq!(r.entry.as_deref(), Some("MSEC_BAD.zip"));
    let msg = r.message.unwrap();
    assert!(msg.contains("damaged on its way"), "{msg}");
    assert!(msg.contains(&md5hex(&z)) && msg.contains(&md5hex(cut)), "{msg}");
    // A theia deposit with a flipped byte in a dataset zip's name in the
    // directory: of another producer, by itself.
    let t = good_theia("MSEC", "x");
    let side = format!("{}  MSEC_BAD.zip\n", md5hex(&t));
    let mut bad = t.clone();
    let at = bad.windows(14).rposition(|w| w == b"MSEC_DAT_1.zip").unwrap();
    bad[at] = b'X';
    rejected(&theia_settings(), &bad, Code::DatasetMismatch);
    rejected_with(&theia_settings(), &bad, Some(&side), Code::Md5Mismatch);
    // Without a sidecar the damage is reported as it is.
    rejected(&plain(), cut, Code::ZipCorrupt);
}
