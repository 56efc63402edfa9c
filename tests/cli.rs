//! `depot check` and `depot ingest` as a producer or operator runs them:
//! the real binary, real files, exit codes and output.

#[path = "../jobs/tests/support/mod.rs"]
mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use support::*;

fn depot(args: &[&str], cwd: &Path) -> Output {
    // No config from the environment: each test says which one it means.
    Command::new(env!("CARGO_BIN_EXE_depot")).args(args).current_dir(cwd).env_remove("DEPOT_CONFIG").output().unwrap()
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let cfg = dir.join("config.toml");
    fs::write(
        &cfg,
        "drop_root = \"drop\"\npublish_root = \"publish\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\n[publish]\nfsync = false\n[producers.IGNF]\nprofile = \"plain\"\n",
    )
    .unwrap();
    cfg
}

#[test]
fn check_accepts_a_good_deposit_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("MSEC_THEIA.zip");
    fs::write(&a, good_theia("MSEC", "v1")).unwrap();
    let before = Env::tree(tmp.path());
    let out = depot(&["check", a.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ACCEPTED"), "{text}");
    // No progress without a terminal; only the note that no config was
    // found (a machine with /etc/depot/config.toml uses that one).
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains('\r') && !err.contains("MiB"), "progress output without a terminal: {err}");
    assert!(
        err.contains("built-in defaults") || Path::new("/etc/depot/config.toml").exists(),
        "a check without a config says so: {err}"
    );
    assert!(depot(&["check", a.to_str().unwrap(), "--quiet"], tmp.path()).stderr.is_empty());
    let out = depot(&["check", a.to_str().unwrap(), "--json"], tmp.path());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["accepted"], true);
    assert_eq!(v["producer"], "MSEC");
    assert_eq!(v["file_count"], 4);
    assert_eq!(Env::tree(tmp.path()), before);
}

#[test]
fn check_rejects_with_code_and_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("MSEC_THEIA.zip");
    fs::write(&a, RawZip::new().file("MSEC_en.json", pivot("ABCD", &[])).build()).unwrap();
    let out = depot(&["check", a.to_str().unwrap(), "--json"], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["accepted"], false);
    assert_eq!(v["code"], "PRODUCER_MISMATCH");
    assert_eq!(v["entry"], "MSEC_en.json");
    let out = depot(&["check", a.to_str().unwrap()], tmp.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("REJECTED") && text.contains("PRODUCER_MISMATCH") && text.contains("What to do"), "{text}");
}

#[test]
fn check_usage_and_io_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = depot(&["check", "/nonexistent/MSEC_X.zip"], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    let out = depot(&["check"], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    let a = tmp.path().join("noprefix.zip");
    fs::write(&a, b"x").unwrap();
    let out = depot(&["check", a.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--producer"));
}

#[test]
fn check_uses_the_producer_profile_from_config() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path());
    let a = tmp.path().join("IGNF_delivery.zip");
    fs::write(&a, RawZip::new().file("dalles/a.tif", "a").build()).unwrap();
    let out = depot(&["check", a.to_str().unwrap(), "--config", cfg.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    // Found as ./config.toml too, as every command finds it.
    let out = depot(&["check", a.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    // Without a config the default profile (theia) refuses it.
    if !Path::new("/etc/depot/config.toml").exists() {
        let elsewhere = tempfile::tempdir().unwrap();
        let out = depot(&["check", a.to_str().unwrap()], elsewhere.path());
        assert_eq!(out.status.code(), Some(1));
    }
}

#[test]
fn check_applies_the_producers_naming_scheme() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("config.toml");
    let base = "drop_root = \"drop\"\npublish_root = \"publish\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\n";
    fs::write(
        &cfg,
        format!("{base}[producers.IGNF]\nprofile = \"plain\"\nnames = 'dalles/[0-9]+\\.tif'\ndeposit_names = 'IGNF_.*\\.zip'\n"),
    )
    .unwrap();
    let good = tmp.path().join("IGNF_1.zip");
    fs::write(&good, RawZip::new().file("dalles/1.tif", "a").build()).unwrap();
    let out = depot(&["check", good.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let bad = tmp.path().join("IGNF_2.zip");
    fs::write(&bad, RawZip::new().file("dalles/1.tif", "a").file("dalles/notes.txt", "b").build()).unwrap();
    let out = depot(&["check", bad.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("NAME_INVALID") && text.contains("dalles/notes.txt") && text.contains("naming scheme"),
        "{text}"
    );
    // The archive's own name.
    let renamed = tmp.path().join("delivery.zip");
    fs::copy(&good, &renamed).unwrap();
    let out = depot(&["check", renamed.to_str().unwrap(), "--producer", "IGNF"], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("deposit_names"));
    // A `.sha256` sidecar beside the archive is checked too.
    fs::write(tmp.path().join("IGNF_1.zip.sha256"), format!("{}  IGNF_1.zip\n", "0".repeat(64))).unwrap();
    let out = depot(&["check", good.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("CHECKSUM_MISMATCH"));
    // A scheme that is not a regular expression is refused by `depot config
    // check`, naming its key.
    fs::write(&cfg, format!("{base}[producers.IGNF]\nnames = 'dalles/(['\n")).unwrap();
    let out = depot(&["config", "check", "--config", cfg.to_str().unwrap()], tmp.path());
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("producers.IGNF.names"), "{err}");
}

#[test]
fn ingest_publishes_and_rotates() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path());
    let a = tmp.path().join("MSEC_THEIA.zip");
    let bytes = good_theia("MSEC", "v1");
    fs::write(&a, &bytes).unwrap();
    fs::write(tmp.path().join("MSEC_THEIA.zip.md5"), format!("{}  MSEC_THEIA.zip\n", md5hex(&bytes))).unwrap();
    let out = depot(
        &["ingest", a.to_str().unwrap(), "--producer", "MSEC", "--config", cfg.to_str().unwrap(), "--json"],
        tmp.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "SUCCESS");
    assert!(tmp.path().join("publish/MSEC/current/MSEC_DAT_1/obs1.txt").is_file());
    assert!(tmp.path().join("drop/MSEC/previous/MSEC_THEIA.zip").is_file());
    assert!(tmp.path().join("drop/MSEC/previous/MSEC_THEIA.zip.md5").is_file());
    // From outside the producer's new/: a copy went to previous/ (where the
    // next success deletes it), the file itself stays, and it says so.
    assert!(a.is_file() && tmp.path().join("MSEC_THEIA.zip.md5").is_file());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a copy is ingested"), "{out:?}");
    assert_eq!(fs::read_dir(tmp.path().join("drop/.depot/ingest")).unwrap().count(), 0);

    // --move moves it.
    let bad = tmp.path().join("MSEC_BAD.zip");
    fs::write(&bad, b"not a zip").unwrap();
    let out = depot(
        &["ingest", bad.to_str().unwrap(), "--producer", "MSEC", "--move", "--config", cfg.to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!bad.exists());
    let folder = fs::read_dir(tmp.path().join("drop/MSEC/rejected")).unwrap().next().unwrap().unwrap().path();
    assert!(folder.join("MSEC_BAD.zip").is_file());
    let txt = fs::read_to_string(folder.join("report.txt")).unwrap();
    assert!(txt.contains("NOT_A_ZIP"), "{txt}");
    assert!(tmp.path().join("publish/MSEC/current/MSEC_DAT_1/obs1.txt").is_file());

    // In the producer's own new/: moved, as the daemon would.
    let new = tmp.path().join("drop/MSEC/new");
    fs::create_dir_all(&new).unwrap();
    fs::write(new.join("MSEC_2.zip"), good_theia("MSEC", "v2")).unwrap();
    let out = depot(
        &["ingest", "drop/MSEC/new/MSEC_2.zip", "--producer", "MSEC", "--config", cfg.to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!new.join("MSEC_2.zip").exists() && tmp.path().join("drop/MSEC/previous/MSEC_2.zip").is_file());
}

#[test]
fn ingest_refuses_a_bad_config_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    fs::write(&cfg, "drop_root = \"d\"\npublish_root = \"p\"\n[limits]\nmax_entries = -1\n").unwrap();
    let a = tmp.path().join("MSEC_X.zip");
    fs::write(&a, b"x").unwrap();
    let out =
        depot(&["ingest", a.to_str().unwrap(), "--producer", "MSEC", "--config", cfg.to_str().unwrap()], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_entries"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(a.exists());
}

/// The docs' plain example as written, under the shipped config.toml
/// (IGNF's plain profile enabled there), and `check --profile`.
#[test]
fn check_profile_and_the_shipped_plain_example() {
    let tmp = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let c = shipped.to_str().unwrap();
    let out = depot(&["sample", "IGNF", "IGNF_delivery.zip", "--profile", "plain", "-c", c], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = depot(&["check", "IGNF_delivery.zip", "-c", c], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    // Without a config IGNF is a theia producer: rejected, unless the
    // profile is given.
    let empty = tempfile::tempdir().unwrap();
    let a = tmp.path().join("IGNF_delivery.zip");
    let a = a.to_str().unwrap();
    assert_eq!(depot(&["check", a], empty.path()).status.code(), Some(1));
    let out = depot(&["check", a, "--profile", "plain"], empty.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    // Not a bag: no bagit.txt.
    let out = depot(&["check", a, "--profile", "bagit", "--json"], empty.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], "BAG_INVALID");
}

fn sh(cmd: &str, cwd: &Path) {
    let out = Command::new("sh").arg("-c").arg(cmd).current_dir(cwd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {out:?}");
}

/// A bag made by hand as a producer would (sha256sum, `zip -r`), checked
/// with `depot check --profile bagit`, then ingested by a producer whose
/// profile is bagit: the release is the bag itself, and still a bag.
#[test]
fn a_bag_through_check_and_ingest_is_published_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let bag = tmp.path().join("mybag");
    fs::create_dir_all(bag.join("data/2026")).unwrap();
    fs::write(bag.join("bagit.txt"), "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n").unwrap();
    fs::write(bag.join("data/2026/obs.csv"), "t,v\n1,2.5\n").unwrap();
    fs::write(bag.join("data/README"), "Observations of 2026.\n").unwrap();
    sh("sha256sum data/2026/obs.csv data/README > manifest-sha256.txt", &bag);
    sh("zip -qr bag.zip mybag/", tmp.path());
    let zip = tmp.path().join("bag.zip");
    let z = zip.to_str().unwrap();

    // No bag-info.txt: accepted, with the warning in the report.
    let out = depot(&["check", z, "--profile", "bagit", "--producer", "LOCB", "--json"], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["warnings"][0].as_str().unwrap().contains("Payload-Oxum"), "{v}");
    let out = depot(&["check", z, "--profile", "bagit", "--producer", "LOCB"], tmp.path());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Warnings"), "{out:?}");

    // With bag-info.txt and a tag manifest: ingested, no warning.
    fs::write(bag.join("bag-info.txt"), "Bagging-Date: 2026-12-05\nPayload-Oxum: 32.2\n").unwrap();
    sh("sha256sum bagit.txt bag-info.txt manifest-sha256.txt > tagmanifest-sha256.txt", &bag);
    fs::remove_file(&zip).unwrap();
    sh("zip -qr bag.zip mybag/", tmp.path());
    let cfg = tmp.path().join("config.toml");
    fs::write(
        &cfg,
        "drop_root = \"drop\"\npublish_root = \"publish\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\n[publish]\nfsync = false\n[producers.LOCB]\nprofile = \"bagit\"\n",
    )
    .unwrap();
    let out = depot(&["ingest", z, "--producer", "LOCB", "-c", cfg.to_str().unwrap(), "--json"], tmp.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "SUCCESS");
    assert!(v.get("warnings").is_none(), "{v}");
    let release = tmp.path().join("publish/LOCB/current");
    let mut published: Vec<String> = Env::tree(&release).keys().map(|p| p.display().to_string()).collect();
    published.retain(|p| p != "manifest.json");
    let mut made: Vec<String> = Env::tree(&bag).keys().map(|p| p.display().to_string()).collect();
    made.sort();
    published.sort();
    assert_eq!(published, made);
    for f in made.iter().filter(|f| bag.join(f).is_file()) {
        assert_eq!(fs::read(release.join(f)).unwrap(), fs::read(bag.join(f)).unwrap(), "{f}");
    }
    // The release is itself a valid bag.
    sh("sha256sum -c --quiet manifest-sha256.txt && sha256sum -c --quiet tagmanifest-sha256.txt", &release);
    let m: serde_json::Value = serde_json::from_slice(&fs::read(release.join("manifest.json")).unwrap()).unwrap();
    let obs = m["files"].as_array().unwrap().iter().find(|f| f["path"] == "data/2026/obs.csv").unwrap();
    assert!(obs["md5"].is_string() && obs["sha256"].is_string(), "{obs}");
}

/// The man pages (depot(1), one per subcommand, depot.toml(5)) render with
/// `man -l`, and each shell's completion script knows the subcommands.
#[test]
fn man_pages_render_and_completions_know_the_subcommands() {
    let tmp = tempfile::tempdir().unwrap();
    let out = depot(&["man", "pages"], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // A man tree: man1/ and man5/, so that `depot man ~/.cargo/share/man`
    // makes `man depot` work.
    let dir = tmp.path().join("pages");
    let mut names: Vec<String> = Vec::new();
    for section in ["man1", "man5"] {
        for e in fs::read_dir(dir.join(section)).unwrap() {
            names.push(format!("{section}/{}", e.unwrap().file_name().to_string_lossy()));
        }
    }
    names.sort();
    for want in [
        "man1/depot.1",
        "man1/depot-check.1",
        "man1/depot-run.1",
        "man1/depot-producer-add.1",
        "man1/depot-completions.1",
        "man5/depot.toml.5",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    // The hidden packaging command has no page of its own.
    assert!(!names.iter().any(|n| n == "man1/depot-man.1"), "{names:?}");
    let man = Command::new("man").arg("--version").output().is_ok_and(|o| o.status.success());
    if man {
        for n in &names {
            let o = Command::new("man")
                .arg("-l")
                .arg(dir.join(n))
                .env("MANWIDTH", "80")
                .env("MANPAGER", "cat")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success() && text.contains("NAME"), "{n}: {text}{}", String::from_utf8_lossy(&o.stderr));
            assert!(!String::from_utf8_lossy(&o.stderr).contains("warning"), "{n}: {o:?}");
        }
        let o =
            Command::new("man").arg("-l").arg(dir.join("man5/depot.toml.5")).env("MANPAGER", "cat").output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("watch.settle_ms") && text.contains("publish.s3.region"), "{text}");
    } else {
        eprintln!("man is not installed (scripts/test.sh installs man-db): pages written, not rendered");
    }
    for shell in ["bash", "zsh", "fish"] {
        let o = depot(&["completions", shell], tmp.path());
        let script = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{shell}");
        for sub in ["check", "ingest", "status", "history", "producer", "completions"] {
            assert!(script.contains(sub), "{shell} completions lack {sub}");
        }
    }
    assert_eq!(depot(&["completions", "tcsh"], tmp.path()).status.code(), Some(2));
}

#[test]
fn check_never_prints_a_name_s_control_characters() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("IGNF_X.zip");
    fs::write(&a, RawZip::new().file("a\x1b]2;PWNED\x07b.txt", b"x".to_vec()).build()).unwrap();
    let out = depot(&["check", a.to_str().unwrap(), "--producer", "IGNF"], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NAME_INVALID"), "{text}");
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    assert!(text.contains("a\\x1b]2;PWNED\\x07b.txt"), "{text}");
}

/// `depot completions bash | head -1`: the reader is gone before depot
/// writes. The command ends by SIGPIPE like any Unix tool, not with a
/// panic and a backtrace ("failed printing to stdout: Broken pipe").
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?} {stderr}", out.status);
}
