//! Checks a producer's data must pass beyond the zip itself (SPEC "Naming
//! schemes, validators, other checksums, BagIt"): per-producer naming
//! schemes and SHA-256/SHA-512 checksums. Hostile deposits are built in
//! code; a refused one must leave the current release as it was.

mod support;

use jobs::scheme::Scheme;
use jobs::{Code, Settings, Stage};
use support::*;

/// Ingest `good` then `bad` (with an optional md5 sidecar): the first is
/// published, the second refused with `code`, nothing of it published and
/// staging empty. Returns the refusal's message.
fn refused(settings: &Settings, good: &[u8], bad_name: &str, bad: &[u8], code: Code) -> (String, Stage) {
    refused_with(settings, good, bad_name, bad, &[], code)
}

/// [`refused`], with sidecars (`(extension, content)`) beside the bad archive.
fn refused_with(
    settings: &Settings,
    good: &[u8],
    bad_name: &str,
    bad: &[u8],
    sidecars: &[(&str, String)],
    code: Code,
) -> (String, Stage) {
    let env = Env::new();
    let first = env.ingest("MSEC", "MSEC_THEIA.zip", good, settings);
    assert!(first.result.is_ok(), "{:?}", first.result.err());
    let current = env.current("MSEC").unwrap();
    let before = Env::tree(&env.publish_root);
    for (ext, text) in sidecars {
        std::fs::write(env.put(bad_name, b"").with_file_name(format!("{bad_name}.{ext}")), text).unwrap();
    }
    let out = env.ingest("MSEC", bad_name, bad, settings);
    let err = out.result.expect_err("accepted");
    assert_eq!(err.code(), code, "{err}");
    assert_eq!(env.current("MSEC").unwrap(), current, "current moved");
    assert_eq!(Env::tree(&env.publish_root), before, "publish tree changed");
    assert!(env.staging_is_empty());
    assert_eq!(out.report.code, Some(code.as_str()));
    (err.message(), err.stage())
}

fn scheme(s: &str) -> Option<Scheme> {
    Some(Scheme::new(s).unwrap())
}

#[test]
fn a_published_path_outside_the_producers_scheme_is_name_invalid() {
    // MSEC's scheme: its pivot, and .txt/.csv files in its datasets.
    let msec = Settings { names: scheme(r"MSEC_en\.json|MSEC_DAT_[0-9]+/obs[0-9]+\.(txt|csv)"), ..theia_settings() };
    let bad = theia("MSEC", &[("MSEC_DAT_1", vec![("obs1.txt", b"a".to_vec()), ("notes.doc", b"b".to_vec())])], true);
    let (msg, stage) = refused(&msec, &good_theia("MSEC", "v1"), "MSEC_BAD.zip", &bad, Code::NameInvalid);
    assert_eq!(stage, Stage::Conflicts);
    assert!(msg.contains("MSEC_DAT_1/notes.doc") && msg.contains("naming scheme of MSEC"), "{msg}");
    assert!(msg.contains(r"obs[0-9]+\.(txt|csv)") && msg.contains("producers.MSEC.names"), "{msg}");
    // A prefix of a matching name is not a match: the whole path must be.
    let msec_strict = Settings { names: scheme(r"MSEC_en\.json|MSEC_DAT_[0-9]+/obs[0-9]"), ..theia_settings() };
    let env = Env::new();
    let out = env.ingest("MSEC", "MSEC_THEIA.zip", &good_theia("MSEC", "v1"), &msec_strict);
    assert_eq!(out.result.expect_err("accepted").code(), Code::NameInvalid);
    // The same deposit from a producer without a scheme is accepted.
    let env = Env::new();
    let out = env.ingest("MSEC", "MSEC_BAD.zip", &bad, &theia_settings());
    assert!(out.result.is_ok(), "{:?}", out.result.err());
}

#[test]
fn a_plain_producers_scheme_applies_to_every_published_file() {
    let ign = Settings { names: scheme(r"dalles/[0-9]+\.tif"), ..plain() };
    let good = RawZip::new().file("dalles/1.tif", "a").file("dalles/2.tif", "b").build();
    let bad = RawZip::new().file("dalles/1.tif", "a").file("dalles/3.TIF", "b").build();
    let (msg, _) = refused(&ign, &good, "MSEC_BAD.zip", &bad, Code::NameInvalid);
    assert!(msg.contains("dalles/3.TIF"), "{msg}");
}

#[test]
fn an_archive_name_outside_deposit_names_is_name_invalid() {
    let s = Settings { deposit_names: scheme(r"MSEC_[A-Z]+\.zip"), ..theia_settings() };
    let good = good_theia("MSEC", "v1");
    let (msg, stage) = refused(&s, &good, "MSEC_v2.zip", &good_theia("MSEC", "v2"), Code::NameInvalid);
    assert_eq!(stage, Stage::Conflicts);
    assert!(msg.starts_with("MSEC_v2.zip does not follow") && msg.contains("producers.MSEC.deposit_names"), "{msg}");
}

fn sha256hex(d: &[u8]) -> String {
    use sha2::Digest as _;
    jobs::md5sums::hex_of(&sha2::Sha256::digest(d))
}

fn sha512hex(d: &[u8]) -> String {
    use sha2::Digest as _;
    jobs::md5sums::hex_of(&sha2::Sha512::digest(d))
}

fn sums(hash: fn(&[u8]) -> String, files: &[(&str, &[u8])]) -> Vec<u8> {
    files.iter().map(|(n, d)| format!("{}  {n}\n", hash(d))).collect::<String>().into_bytes()
}

/// The release's manifest.json, by path.
fn manifest(env: &Env) -> std::collections::BTreeMap<String, serde_json::Value> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.publish_root.join("MSEC/current/manifest.json")).unwrap()).unwrap();
    m["files"].as_array().unwrap().iter().map(|f| (f["path"].as_str().unwrap().to_owned(), f.clone())).collect()
}

#[test]
fn sha256sums_and_sha512sums_are_verified_and_sha256_lands_in_the_manifest() {
    let (a, b, c) = (b"alpha".as_slice(), b"beta".as_slice(), b"gamma".as_slice());
    let good = RawZip::new()
        .file("d/a.txt", a)
        .file("d/b.txt", b)
        .file("d/SHA256SUMS", sums(sha256hex, &[("a.txt", a), ("./b.txt", b)]))
        .file("e/c.txt", c)
        .file("e/SHA512SUMS", sums(sha512hex, &[("c.txt", c)]))
        .file("loose.txt", "no checksum given")
        .build();
    let env = Env::new();
    let out = env.ingest("MSEC", "MSEC_1.zip", &good, &plain());
    assert!(out.result.is_ok(), "{:?}", out.result.err());
    let files = manifest(&env);
    assert_eq!(files["d/a.txt"]["sha256"], sha256hex(a));
    assert_eq!(files["d/b.txt"]["sha256"], sha256hex(b));
    // Verified with SHA-512 only: no sha256 is claimed for it; and none for
    // a file nothing gave a checksum for. Every file keeps its md5.
    assert!(files["e/c.txt"].get("sha256").is_none() && files["loose.txt"].get("sha256").is_none());
    assert!(files.values().all(|f| f["md5"].as_str().is_some_and(|m| m.len() == 32)));
    assert!(!files.contains_key("d/SHA256SUMS") && !files.contains_key("e/SHA512SUMS"));

    // One byte off in each kind of manifest: CHECKSUM_MISMATCH naming the file.
    let bad256 = RawZip::new()
        .file("d/a.txt", a)
        .file("d/b.txt", "betA")
        .file("d/SHA256SUMS", sums(sha256hex, &[("a.txt", a), ("b.txt", b)]))
        .build();
    let (msg, stage) = refused(&plain(), &good, "MSEC_2.zip", &bad256, Code::ChecksumMismatch);
    assert_eq!(stage, Stage::Verify);
    assert!(msg.contains("d/b.txt") && msg.contains("SHA-256") && msg.contains(&sha256hex(b)), "{msg}");
    let bad512 = RawZip::new().file("e/c.txt", "gammA").file("e/SHA512SUMS", sums(sha512hex, &[("c.txt", c)])).build();
    let (msg, _) = refused(&plain(), &good, "MSEC_2.zip", &bad512, Code::ChecksumMismatch);
    assert!(msg.contains("e/c.txt") && msg.contains("SHA-512"), "{msg}");
    // A `*.sha256` manifest, and an MD5 where a SHA-256 belongs.
    let named = RawZip::new().file("f/x.bin", "x").file("f/files.sha256", sums(sha256hex, &[("x.bin", b"y")])).build();
    refused(&plain(), &good, "MSEC_2.zip", &named, Code::ChecksumMismatch);
    let md5_in_sha =
        RawZip::new().file("f/x.bin", "x").file("f/SHA256SUMS", md5sums(&[("x.bin", b"x".as_slice())])).build();
    refused(&plain(), &good, "MSEC_2.zip", &md5_in_sha, Code::ChecksumMismatch);
    // MD5 keeps its own code.
    let md5_bad = RawZip::new().file("f/x.bin", "x").file("f/MD5SUMS", md5sums(&[("x.bin", b"y".as_slice())])).build();
    refused(&plain(), &good, "MSEC_2.zip", &md5_bad, Code::Md5Mismatch);
}

#[test]
fn sha_manifests_reach_into_dataset_zips_and_over_them() {
    let obs = b"a,b\n1,2\n".to_vec();
    let inner =
        RawZip::new().file("obs1.txt", obs.clone()).file("SHA256SUMS", sums(sha256hex, &[("obs1.txt", &obs)])).build();
    let pivot = pivot("MSEC", &[("MSEC_DAT_1", &["obs1.txt"])]);
    let deposit = |inner: &[u8], listed: &[u8]| {
        RawZip::new()
            .file("MSEC_en.json", pivot.clone())
            .stored("MSEC_DAT_1.zip", inner.to_vec())
            .file("SHA512SUMS", sums(sha512hex, &[("MSEC_en.json", &pivot), ("MSEC_DAT_1.zip", listed)]))
            .build()
    };
    let env = Env::new();
    let out = env.ingest("MSEC", "MSEC_1.zip", &deposit(&inner, &inner), &theia_settings());
    assert!(out.result.is_ok(), "{:?}", out.result.err());
    assert_eq!(manifest(&env)["MSEC_DAT_1/obs1.txt"]["sha256"], sha256hex(&obs));
    // The dataset zip is not the one the top-level SHA512SUMS lists.
    let other_inner = RawZip::new()
        .file("obs1.txt", obs.clone())
        .file("SHA256SUMS", sums(sha256hex, &[("obs1.txt", &obs)]))
        .stored("x", "")
        .build();
    let bad = deposit(&inner, &other_inner);
    let good = deposit(&inner, &inner);
    let (msg, _) = refused(&theia_settings(), &good, "MSEC_2.zip", &bad, Code::ChecksumMismatch);
    assert!(msg.contains("MSEC_DAT_1.zip"), "{msg}");
    // A data file inside the dataset zip off its SHA256SUMS.
    let damaged = RawZip::new()
        .file("obs1.txt", b"a,b\n1,3\n".to_vec())
        .file("SHA256SUMS", sums(sha256hex, &[("obs1.txt", &obs)]))
        .build();
    let (msg, _) =
        refused(&theia_settings(), &good, "MSEC_2.zip", &deposit(&damaged, &damaged), Code::ChecksumMismatch);
    assert!(msg.contains("obs1.txt"), "{msg}");
}

#[test]
fn sha_sidecars_are_checked_against_the_whole_archive() {
    let good = RawZip::new().file("a.txt", "a").build();
    let env = Env::new();
    let spool = env.put("MSEC_1.zip", &good);
    std::fs::write(spool.with_file_name("MSEC_1.zip.sha256"), format!("{}  MSEC_1.zip\n", sha256hex(&good))).unwrap();
    std::fs::write(spool.with_file_name("MSEC_1.zip.sha512"), sha512hex(&good)).unwrap();
    let out = env.ingest("MSEC", "MSEC_1.zip", &good, &plain());
    assert!(out.result.is_ok(), "{:?}", out.result.err());

    let bad = RawZip::new().file("a.txt", "b").build();
    for ext in ["sha256", "sha512"] {
        let given = if ext == "sha256" { sha256hex(&good) } else { sha512hex(&good) };
        let (msg, stage) = refused_with(&plain(), &good, "MSEC_2.zip", &bad, &[(ext, given)], Code::ChecksumMismatch);
        assert_eq!(stage, Stage::Verify);
        assert!(msg.starts_with("MSEC_2.zip: SHA-") && msg.contains(&format!("MSEC_2.zip.{ext}")), "{msg}");
    }
    // A damaged archive is judged by its sidecar, not by what the damage
    // made look wrong inside (here: not a zip at all).
    let (msg, _) = refused_with(
        &plain(),
        &good,
        "MSEC_2.zip",
        b"garbage",
        &[("sha256", sha256hex(&good))],
        Code::ChecksumMismatch,
    );
    assert!(msg.contains("damaged on its way"), "{msg}");
    // A sidecar that is no SHA-256 at all.
    refused_with(&plain(), &good, "MSEC_2.zip", &good, &[("sha256", "xyz".into())], Code::ChecksumMismatch);
}
