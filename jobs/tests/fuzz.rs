//! Property tests: arbitrary bytes into `check`'s entry point, mutated real
//! zips, and arbitrary manifest text. The only acceptable outcomes are a
//! verdict or a typed error — never a panic, a hang, or a write.

mod support;

use std::fs;

use jobs::pipeline::{self, Job};
use jobs::unpack::Quiet;
use proptest::prelude::*;
use support::*;

fn check_bytes(bytes: &[u8], settings: &jobs::Settings) -> Result<(), jobs::Error> {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("MSEC_X.zip");
    fs::write(&a, bytes).unwrap();
    let job = Job { id: "check", producer: "MSEC", archive: &a, name: "MSEC_X.zip", sidecar: None, settings };
    let r = pipeline::check(&job, &Quiet).map(|_| ());
    // Nothing but the archive in its folder afterwards.
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    r
}

fn seed_zips() -> Vec<Vec<u8>> {
    vec![
        good_theia("MSEC", "v"),
        RawZip::new()
            .file("a/b.txt", "hello")
            .stored("c.bin", vec![1u8; 300])
            .file("MD5SUMS", md5sums(&[("a/b.txt", b"hello")]))
            .build(),
    ]
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N runs longer (see README).
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = check_bytes(&bytes, &plain());
        let _ = check_bytes(&bytes, &theia_settings());
    }

    #[test]
    fn mutated_zips_never_panic(seed in 0usize..2, flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>(), truncate in any::<bool>()) {
        let mut z = seed_zips().swap_remove(seed);
        for (at, v) in flips {
            let i = at.index(z.len());
            z[i] = v;
        }
        if truncate {
            let n = cut.index(z.len());
            z.truncate(n);
        }
        let s = if seed == 0 { theia_settings() } else { plain() };
        if let Err(e) = check_bytes(&z, &s) {
            prop_assert!(!e.message().is_empty());
        }
    }

    #[test]
    fn manifest_parser_never_panics(text in "(?s).{0,400}") {
        let _ = jobs::md5sums::parse(&text);
    }

    #[test]
    fn manifest_lines_round_trip(names in proptest::collection::vec("[a-zA-Z0-9_][a-zA-Z0-9_./ -]{0,39}", 1..10), star in any::<bool>()) {
        let mut text = String::new();
        for (i, n) in names.iter().enumerate() {
            let d = md5hex(n.as_bytes());
            let d = if i % 2 == 0 { d.to_uppercase() } else { d };
            text.push_str(&format!("{d} {}{n}\r\n", if star { "*" } else { " " }));
        }
        let lines = jobs::md5sums::parse(&text).unwrap();
        prop_assert_eq!(lines.len(), names.len());
        for (l, n) in lines.iter().zip(&names) {
            let mut want = n.as_str();
            while let Some(rest) = want.strip_prefix("./") { want = rest; }
            prop_assert_eq!(&l.path, want);
            prop_assert_eq!(l.sum.hex(), md5hex(n.as_bytes()));
        }
    }
}
