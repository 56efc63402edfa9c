//! Open descriptors do not grow with a deposit's file count: each test
//! runs in a child process of its own with RLIMIT_NOFILE lowered to 256
//! (cargo runs the tests of one binary as threads of one process, so the
//! limit is never lowered under another test).

mod support;

use std::process::Command;

use jobs::Settings;
use support::*;

const CHILD: &str = "DEPOT_NOFILE_CHILD";
const NOFILE: u64 = 256;

/// In the parent: run test `name` alone in a child and check it passed
/// there; false, the caller returns. In the child: lower the limit; true,
/// the caller runs the test.
fn in_child(name: &str) -> bool {
    if std::env::var(CHILD).as_deref() == Ok(name) {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let hard = getrlimit(Resource::Nofile).maximum;
        setrlimit(Resource::Nofile, Rlimit { current: Some(NOFILE), maximum: hard }).unwrap();
        return true;
    }
    let exe = std::env::current_exe().unwrap();
    let out =
        Command::new(exe).args([name, "--exact", "--nocapture", "--test-threads=1"]).env(CHILD, name).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} under RLIMIT_NOFILE={NOFILE}:\n{text}");
    assert!(text.contains("1 passed"), "{name} did not run in the child:\n{text}");
    false
}

/// 8,000 small files with fsync on: every written file used to wait, open,
/// in an unbounded queue for the fsync thread ("Too many open files").
#[test]
fn many_small_files_with_fsync() {
    if !in_child("many_small_files_with_fsync") {
        return;
    }
    let mut z = RawZip::new();
    for i in 0..8_000 {
        z = z.file(format!("d{}/f{i}.txt", i / 500), format!("{i}\n"));
    }
    let settings = Settings { threads: 4, ..plain() };
    let settings = Settings { publish: jobs::Publish { fsync: true, ..settings.publish.clone() }, ..settings };
    let env = Env::new();
    let out = env.ingest("MSEC", "many.zip", &z.build(), &settings);
    let p = out.result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.file_count, 8_000);
}

/// Compressed dataset zips are inflated to scratch files; those used to
/// stay open from planning to the end of the deposit, one per dataset.
#[test]
fn many_compressed_dataset_zips() {
    if !in_child("many_compressed_dataset_zips") {
        return;
    }
    let n = 2 * NOFILE as usize;
    let ids: Vec<String> = (0..n).map(|i| format!("MSEC_DAT_{i}")).collect();
    let datasets: Vec<(&str, &[&str])> = ids.iter().map(|id| (id.as_str(), &["obs1.txt"][..])).collect();
    let mut z = RawZip::new().file("MSEC_en.json", pivot("MSEC", &datasets));
    for id in &ids {
        z = z.file(format!("{id}.zip"), RawZip::new().file("obs1.txt", id.as_bytes()).build());
    }
    let settings = Settings { threads: 4, ..theia_settings() };
    let env = Env::new();
    let out = env.ingest("MSEC", "MSEC_THEIA.zip", &z.build(), &settings);
    let p = out.result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.file_count, n as u64 + 1);
}
