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
    let env = Env::new();
    let first = env.ingest("MSEC", "MSEC_THEIA.zip", good, settings);
    assert!(first.result.is_ok(), "{:?}", first.result.err());
    let current = env.current("MSEC").unwrap();
    let before = Env::tree(&env.publish_root);
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
