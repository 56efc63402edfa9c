//! Validators (`[[checks.validators]]`) with the real tools, through
//! `depot check` as a producer runs it (no daemon, no Redis): ncdump on
//! netCDF files made by ncgen, fitsverify on FITS files written here,
//! ClamAV with a signature database written here (no network update), and
//! the fence around every run: timeout, process group, environment,
//! network.

#[path = "../jobs/tests/support/mod.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;

mod common;
use common::{Redis, Site, free_port, http_get, stop, terminal, wait_for};

/// The EICAR test string: every antivirus knows it; harmless.
const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

fn depot(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_depot"))
        .args(args)
        .current_dir(cwd)
        .env_remove("DEPOT_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A config whose plain producer PLAN (and Theia producer MSEC) have the
/// validators given (TOML of `[[checks.validators]]` tables).
fn config(dir: &Path, validators: &str) -> PathBuf {
    let cfg = dir.join("config.toml");
    fs::write(
        &cfg,
        format!(
            "drop_root = \"drop\"\npublish_root = \"publish\"\n[publish]\nfsync = false\n{validators}\n[producers.PLAN]\nprofile = \"plain\"\n"
        ),
    )
    .unwrap();
    cfg
}

/// `depot check --json` of `bytes` as `name`: exit code and the report.
fn check(dir: &Path, cfg: &Path, name: &str, bytes: &[u8]) -> (Option<i32>, serde_json::Value, Output) {
    let a = dir.join(name);
    fs::write(&a, bytes).unwrap();
    let o = depot(&["check", a.to_str().unwrap(), "-c", cfg.to_str().unwrap(), "--json"], dir, &[]);
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o.status.code(), v, o)
}

fn netcdf(dir: &Path) -> Vec<u8> {
    let cdl = dir.join("t.cdl");
    fs::write(
        &cdl,
        "netcdf t {\ndimensions:\n  time = 3 ;\nvariables:\n  float temp(time) ;\n    temp:units = \"K\" ;\ndata:\n temp = 280, 281, 282 ;\n}\n",
    )
    .unwrap();
    let nc = dir.join("t.nc");
    let o = Command::new("ncgen").arg("-o").arg(&nc).arg(&cdl).output().expect("ncgen (apt-get install netcdf-bin)");
    assert!(o.status.success(), "{}", text(&o));
    fs::read(nc).unwrap()
}

#[test]
fn netcdf_through_ncdump() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = config(dir, "[[checks.validators]]\nglob = \"*.nc\"\ncommand = [\"ncdump\", \"-h\", \"{}\"]\n");
    let good = netcdf(dir);
    let (code, v, o) = check(dir, &cfg, "PLAN_1.zip", &RawZip::new().file("d/t.nc", good.clone()).build());
    assert_eq!(code, Some(0), "{}", text(&o));
    assert_eq!(v["accepted"], true);
    // Damaged: its magic number gone.
    let mut bad = good.clone();
    bad[0] = b'X';
    let zip = RawZip::new().file("d/t.nc", good).file("d/x.NC", bad).file("notes.txt", "not checked").build();
    let (code, v, o) = check(dir, &cfg, "PLAN_2.zip", &zip);
    assert_eq!(code, Some(1), "{}", text(&o));
    assert_eq!(v["code"], "FORMAT_INVALID", "{v}");
    assert_eq!(v["entry"], "d/x.NC", "{v}");
    assert!(v["message"].as_str().unwrap().contains("ncdump -h {}"), "{v}");
    let output: Vec<&str> = v["output"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(output.iter().any(|l| l.contains("NetCDF: Unknown file format")), "ncdump's words: {v}");
    // In words, for the producer.
    let a = dir.join("PLAN_2.zip");
    let o = depot(&["check", a.to_str().unwrap(), "-c", cfg.to_str().unwrap()], dir, &[]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("FORMAT_INVALID") && t.contains("File concerned: d/x.NC"), "{t}");
    assert!(t.contains("The check program said") && t.contains("NetCDF: Unknown file format"), "{t}");
}

/// A FITS header of `cards`, padded to one 2880-byte block.
fn fits(cards: &[&str]) -> Vec<u8> {
    let mut h: String = cards.iter().map(|c| format!("{c:<80}")).collect();
    h.push_str(&format!("{:<80}", "END"));
    format!("{h:<2880}").into_bytes()
}

#[test]
fn fits_through_fitsverify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // fitsverify exits with its count of errors (and warnings, without -e).
    let cfg = config(
        dir,
        "[[checks.validators]]\nglob = \"*.fits\"\ncommand = [\"fitsverify\", \"-q\", \"-e\", \"{}\"]\nreject_exits = [\"1-255\"]\n",
    );
    let good =
        fits(&["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    0"]);
    let (code, _, o) = check(dir, &cfg, "PLAN_1.zip", &RawZip::new().file("img/a.fits", good.clone()).build());
    assert_eq!(code, Some(0), "{}", text(&o));
    let bad =
        fits(&["SIMPLE  =                    T", "BITPIX  =                    7", "NAXIS   =                    0"]);
    let zip = RawZip::new().file("img/a.fits", good).file("img/b.fits", bad).build();
    let (code, v, o) = check(dir, &cfg, "PLAN_2.zip", &zip);
    assert_eq!(code, Some(1), "{}", text(&o));
    assert_eq!((v["code"].as_str(), v["entry"].as_str()), (Some("FORMAT_INVALID"), Some("img/b.fits")), "{v}");
    assert!(v["output"][0].as_str().unwrap().contains("verification FAILED"), "{v}");
}

#[test]
fn clamav_finds_eicar_inside_a_dataset_zip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A signature database of one line (md5:size:name): no freshclam.
    let db = dir.join("test.hdb");
    fs::write(&db, format!("{}:{}:Depot-Test-EICAR\n", md5hex(EICAR.as_bytes()), EICAR.len())).unwrap();
    let cfg = config(
        dir,
        &format!(
            "[[checks.validators]]\nscope = \"release\"\ncode = \"VIRUS_FOUND\"\ncommand = [\"clamscan\", \"-r\", \"-i\", \"--no-summary\", \"-d\", {:?}, \"{{}}\"]\n",
            db.to_str().unwrap()
        ),
    );
    let clean = good_theia("MSEC", "1");
    let (code, v, o) = check(dir, &cfg, "MSEC_THEIA.zip", &clean);
    assert_eq!(code, Some(0), "{v} {}", text(&o));
    let infected = theia(
        "MSEC",
        &[("MSEC_DAT_1", vec![("obs1.txt", b"1,2\n".to_vec()), ("obs2.txt", EICAR.as_bytes().to_vec())])],
        true,
    );
    let (code, v, o) = check(dir, &cfg, "MSEC_THEIA.zip", &infected);
    assert_eq!(code, Some(1), "{}", text(&o));
    assert_eq!(v["code"], "VIRUS_FOUND", "{v}");
    let out = v["output"].to_string();
    assert!(out.contains("MSEC_DAT_1/obs2.txt: Depot-Test-EICAR") && out.contains("FOUND"), "{v}");
    assert!(!out.contains("obs1.txt"), "only what was found: {v}");
}

/// A process gone (or a zombie waiting for init): nothing runs.
fn gone(pid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).unwrap_or("");
        if stat.is_empty() || state == "Z" || state == "X" {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pids(file: &Path) -> Vec<String> {
    fs::read_to_string(file).unwrap_or_default().split_whitespace().map(str::to_owned).collect()
}

#[test]
fn a_validator_past_its_timeout_is_killed_with_its_group() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pidfile = dir.join("pids");
    // The tool, and a child of its own, both sleeping past the timeout.
    let script = format!("sleep 60 & echo $$ $! > {}; wait", pidfile.display());
    let cfg = config(
        dir,
        &format!("[[checks.validators]]\ntimeout_s = 1\ncommand = [\"sh\", \"-c\", {script:?}, \"sh\", \"{{}}\"]\n"),
    );
    let t0 = Instant::now();
    let a = dir.join("PLAN_1.zip");
    fs::write(&a, RawZip::new().file("a.txt", "a").build()).unwrap();
    let o = depot(&["check", a.to_str().unwrap(), "-c", cfg.to_str().unwrap()], dir, &[]);
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    // Not a verdict on the deposit: the machine's fault (exit 2).
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("timed out after 1 s") && t.contains("not the producer's"), "{t}");
    let p = pids(&pidfile);
    assert_eq!(p.len(), 2, "{p:?}");
    for pid in &p {
        assert!(gone(pid), "process {pid} outlived its validator");
    }
}

#[test]
fn a_child_that_outlives_its_validator_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pidfile = dir.join("pids");
    // Accepts at once, leaving a child behind (holding the output pipe).
    let script = format!("sleep 60 & echo $! > {}; exit 0", pidfile.display());
    let cfg =
        config(dir, &format!("[[checks.validators]]\ncommand = [\"sh\", \"-c\", {script:?}, \"sh\", \"{{}}\"]\n"));
    let t0 = Instant::now();
    let (code, _, o) = check(dir, &cfg, "PLAN_1.zip", &RawZip::new().file("a.txt", "a").build());
    assert_eq!(code, Some(0), "{}", text(&o));
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    let p = pids(&pidfile);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(gone(&p[0]), "the child {} outlived its validator", p[0]);
}

#[test]
fn a_validator_sees_a_cleared_environment_and_no_network() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = dir.join("seen");
    fs::create_dir(&out).unwrap();
    let script = format!(
        "env > {0}/env; cat /proc/self/net/dev > {0}/net; pwd > {0}/pwd; ulimit -v > {0}/ulimit; echo evil >> \"$1\" || echo refused > {0}/write; [ \"$1\" = \"$DEPOT_TARGET\" ] && [ -f \"$1\" ]",
        out.display()
    );
    let cfg = config(
        dir,
        &format!("[[checks.validators]]\nmemory_mb = 300\ncommand = [\"sh\", \"-c\", {script:?}, \"sh\", \"{{}}\"]\n"),
    );
    let a = dir.join("PLAN_1.zip");
    fs::write(&a, RawZip::new().file("sub/a.txt", "a").build()).unwrap();
    let o = depot(
        &["check", a.to_str().unwrap(), "-c", cfg.to_str().unwrap()],
        dir,
        &[("AWS_SECRET_ACCESS_KEY", "s3cret"), ("DEPOT_LEAK", "x")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let env = fs::read_to_string(out.join("env")).unwrap();
    assert!(!env.contains("s3cret") && !env.contains("DEPOT_LEAK"), "{env}");
    for want in ["DEPOT_PRODUCER=PLAN", "DEPOT_FILE=sub/a.txt", "DEPOT_DEPOSIT=check", "TMPDIR=/"] {
        assert!(env.lines().any(|l| l.starts_with(want)), "{want}: {env}");
    }
    for l in env.lines() {
        let k = l.split('=').next().unwrap();
        assert!(
            k.starts_with("DEPOT_") || ["PATH", "TMPDIR", "PWD", "OLDPWD", "SHLVL", "_"].contains(&k),
            "{k} leaked: {env}"
        );
    }
    // Its private temp folder is its working folder, and is gone after.
    let pwd = fs::read_to_string(out.join("pwd")).unwrap();
    assert!(env.contains(&format!("TMPDIR={}", pwd.trim())), "{pwd} {env}");
    assert!(!Path::new(pwd.trim()).exists(), "{pwd}");
    // No network: only a loopback device of its own.
    let net = fs::read_to_string(out.join("net")).unwrap();
    let devices: Vec<&str> = net.lines().skip(2).filter_map(|l| l.split(':').next()).map(str::trim).collect();
    assert_eq!(devices, ["lo"], "{net}");
    // The staged files are read-only to it.
    assert_eq!(fs::read_to_string(out.join("write")).unwrap_or_default().trim(), "refused");
    // Its address space is bounded (KiB).
    assert_eq!(fs::read_to_string(out.join("ulimit")).unwrap().trim(), (300 * 1024).to_string());
}

/// A tool that floods its output with escape sequences: the report keeps
/// its first 20 lines, escaped, and the rest is drained (the tool never
/// blocks on a full pipe).
#[test]
fn a_validators_output_is_bounded_and_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let script = "yes \"$(printf 'bad \\033]2;PWNED\\007 line')\" | head -c 20000000; exit 1";
    let cfg =
        config(dir, &format!("[[checks.validators]]\ncommand = [\"sh\", \"-c\", {script:?}, \"sh\", \"{{}}\"]\n"));
    let (code, v, o) = check(dir, &cfg, "PLAN_1.zip", &RawZip::new().file("a.txt", "a").build());
    assert_eq!(code, Some(1), "{}", text(&o));
    let lines = v["output"].as_array().unwrap();
    assert_eq!(lines.len(), 20, "{v}");
    assert_eq!(lines[0], "bad \\x1b]2;PWNED\\x07 line", "{v}");
    let a = dir.join("PLAN_1.zip");
    let o = depot(&["check", a.to_str().unwrap(), "-c", cfg.to_str().unwrap()], dir, &[]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(!t.contains('\x1b') && !t.contains('\x07') && t.contains("    bad \\x1b]2;PWNED\\x07 line\n"), "{t}");
}

#[test]
fn config_errors_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (extra, key) in [
        ("[[checks.validators]]\ncommand = [\"ncdump\", \"-h\"]\n", "checks.validators[0]"),
        ("[[checks.validators]]\ncommand = [\"ncdump\", \"{}\"]\nscope = \"dataset\"\n", "scope"),
        ("[[checks.validators]]\ncommand = [\"ncdump\", \"{}\"]\ncode = \"OTHER\"\n", "code"),
        ("[[checks.validators]]\ncommand = [\"ncdump\", \"{}\"]\nreject_exits = [0]\n", "reject_exits"),
        ("[[checks.validators]]\ncommand = [\"ncdump\", \"{}\"]\nshell = true\n", "shell"),
        (
            "[[checks.validators]]\ncommand = [\"true\", \"{}\"]\n[[producers.PLAN.checks.validators]]\ncommand = [\"x\", \"{}\"]\nglob = \"[\"\n",
            "producers.PLAN.checks.validators[0]: glob",
        ),
    ] {
        let cfg = dir.join("c.toml");
        fs::write(&cfg, format!("drop_root = \"d\"\npublish_root = \"p\"\n{extra}")).unwrap();
        let o = depot(&["config", "check", "-c", cfg.to_str().unwrap()], dir, &[]);
        assert_ne!(o.status.code(), Some(0), "{extra}");
        assert!(text(&o).contains(key), "{extra}: {}", text(&o));
    }
    // A program that is not there: `depot config check` names its key.
    fs::create_dir_all(dir.join("d")).unwrap();
    fs::create_dir_all(dir.join("p")).unwrap();
    let cfg = dir.join("c.toml");
    fs::write(
        &cfg,
        "drop_root = \"d\"\npublish_root = \"p\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\n[[checks.validators]]\ncommand = [\"ncdump\", \"-h\", \"{}\"]\n[[producers.PLAN.checks.validators]]\ncommand = [\"no-such-validator\", \"{}\"]\n",
    )
    .unwrap();
    let o = depot(&["config", "check", "-c", cfg.to_str().unwrap()], dir, &[]);
    let t = text(&o);
    assert_ne!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("producers.PLAN.checks.validators[0].command: no-such-validator is not in PATH"), "{t}");
    assert!(t.contains("checks.validators[0].command: /usr/bin/ncdump is an executable file"), "{t}");
}

/// A producer's validators run besides the global ones; another producer
/// has only the global ones.
#[test]
fn a_producers_validators_add_to_the_global_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = dir.join("config.toml");
    fs::write(
        &cfg,
        "drop_root = \"drop\"\npublish_root = \"publish\"\n[[checks.validators]]\nglob = \"*.txt\"\ncommand = [\"grep\", \"-q\", \"ok\", \"{}\"]\n\
         [producers.PLAN]\nprofile = \"plain\"\n[[producers.PLAN.checks.validators]]\nglob = \"*.csv\"\ncommand = [\"grep\", \"-q\", \"ok\", \"{}\"]\n\
         [producers.IGNF]\nprofile = \"plain\"\n",
    )
    .unwrap();
    let bad_csv = RawZip::new().file("a.txt", "ok").file("b.csv", "nope").build();
    let (code, v, _) = check(dir, &cfg, "PLAN_1.zip", &bad_csv);
    assert_eq!((code, v["entry"].as_str()), (Some(1), Some("b.csv")), "{v}");
    let (code, v, _) = check(dir, &cfg, "IGNF_1.zip", &bad_csv);
    assert_eq!(code, Some(0), "{v}");
    let bad_txt = RawZip::new().file("a.txt", "nope").file("b.csv", "ok").build();
    let (code, v, _) = check(dir, &cfg, "PLAN_2.zip", &bad_txt);
    assert_eq!((code, v["entry"].as_str()), (Some(1), Some("a.txt")), "{v}");
}

/// In the daemon: a validator that accepts lets the deposit publish (it
/// read the staged file); one that fails on its own (a status not in
/// reject_exits) is retried, then FAILURE VALIDATOR_FAILED, logged at
/// ERROR and counted, never blamed on the producer.
#[test]
fn the_daemon_retries_a_failing_validator_then_says_validator_failed() {
    let redis = Redis::start();
    let port = free_port();
    let site = Site::new(
        &redis.url(),
        &format!(
            "[workers]\nmax_attempts = 2\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
             [[checks.validators]]\nglob = \"*.txt\"\ncommand = [\"sh\", \"-c\", \"echo 2 >> \\\"$1\\\"; grep -qx 1 \\\"$1\\\"\", \"sh\", \"{{}}\"]\nreject_exits = [3]\n\
             [producers.GOOD]\nprofile = \"plain\"\n[producers.SICK]\nprofile = \"plain\"\n\
             [[producers.SICK.checks.validators]]\ncommand = [\"sh\", \"-c\", \"echo broken tool >&2; exit 7\", \"sh\", \"{{}}\"]\n"
        ),
    );
    let daemon = site.start();
    site.drop_rsync("GOOD", "GOOD_1.zip", &RawZip::new().file("a.txt", "1").build());
    site.drop_rsync("SICK", "SICK_1.zip", &RawZip::new().file("a.txt", "1").build());
    wait_for(&site, "two terminal states", 60, || redis.deposits().iter().filter(|d| terminal(d)).count() == 2);
    let ds = redis.deposits();
    let of = |p: &str| ds.iter().find(|d| d["producer"] == p).unwrap().clone();
    let good = of("GOOD");
    assert_eq!(good["state"], "SUCCESS", "{good:?}");
    // Published as verified: the validator could not write to staging.
    assert_eq!(fs::read_to_string(site.root().join("publish/GOOD/current/a.txt")).unwrap(), "1");
    let sick = of("SICK");
    assert_eq!((sick["state"].as_str(), sick["error_code"].as_str()), ("FAILURE", "VALIDATOR_FAILED"), "{sick:?}");
    assert_eq!(sick["attempts"], "2", "{sick:?}");
    assert!(sick["error"].contains("exit status 7: broken tool"), "{sick:?}");
    assert!(!site.root().join("publish/SICK/current").exists());
    let log = site.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR") && l.contains("VALIDATOR_FAILED") && l.contains("finished")),
        "{log}"
    );
    let metrics = http_get(port, "/metrics");
    for line in [
        "depot_failures_total{producer=\"SICK\",code=\"VALIDATOR_FAILED\"} 1",
        "depot_validator_faults_total{producer=\"SICK\"} 2",
    ] {
        assert!(metrics.contains(line), "missing {line}:\n{metrics}");
    }
    assert!(!metrics.contains("depot_validator_faults_total{producer=\"GOOD\"}"), "{metrics}");
    assert_eq!(stop(daemon), Some(0));
}

/// The S3 target stages nothing: the files a validator selects are kept
/// in scratch as they stream to the bucket, checked there, and a rejected
/// deposit leaves no object behind.
#[test]
fn validators_run_before_an_s3_publish() {
    use common::garage::Garage;
    use common::s3::{PREFIX, assert_complete, current, s3_site, wait_state};
    let redis = Redis::start();
    let g = Garage::start();
    let site = s3_site(
        &redis,
        &g,
        "",
        "[producers.STOR]\nprofile = \"plain\"\n[[producers.STOR.checks.validators]]\nglob = \"*.txt\"\ncommand = [\"grep\", \"-q\", \"^ok\", \"{}\"]\n",
    );
    let daemon = site.start();
    site.drop_rsync("STOR", "STOR_1.zip", &RawZip::new().file("d/a.txt", "ok 1").file("b.bin", "x").build());
    let d = wait_state(&site, &redis, "STOR_1.zip", "SUCCESS", 60);
    assert_complete(&g, "STOR", &d["id"]);
    site.drop_rsync("STOR", "STOR_2.zip", &RawZip::new().file("d/a.txt", "ok 2").file("d/c.txt", "bad").build());
    let d2 = wait_state(&site, &redis, "STOR_2.zip", "FAILURE", 60);
    assert_eq!(d2["error_code"], "FORMAT_INVALID", "{d2:?}");
    assert!(d2["error"].starts_with("d/c.txt: refused by the format check `grep -q ^ok {}`"), "{d2:?}");
    assert!(g.keys(&format!("{PREFIX}/STOR/releases/{}/", d2["id"])).is_empty(), "objects of a rejected deposit");
    assert_eq!(current(&g, "STOR").as_deref(), Some(d["id"].as_str()));
    let report = fs::read_to_string(site.root().join(format!("drop/STOR/rejected/{}/report.txt", d2["id"]))).unwrap();
    assert!(report.contains("FORMAT_INVALID") && report.contains("d/c.txt"), "{report}");
    assert_eq!(stop(daemon), Some(0));
}

/// Runs of one deposit go in parallel, never more than
/// workers.threads_per_deposit at once.
#[test]
fn validators_run_in_parallel_up_to_threads_per_deposit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let seen = dir.join("seen");
    fs::create_dir(&seen).unwrap();
    // Each run marks itself running, notes how many are, waits, unmarks.
    let script =
        format!("d={0}; touch $d/run.$$; ls $d | grep -c '^run' >> $d/counts; sleep 0.4; rm $d/run.$$", seen.display());
    let cfg = config(
        dir,
        &format!(
            "[workers]\nthreads_per_deposit = 2\n[[checks.validators]]\ncommand = [\"sh\", \"-c\", {script:?}, \"sh\", \"{{}}\"]\n"
        ),
    );
    let mut zip = RawZip::new();
    for i in 0..6 {
        zip = zip.file(format!("f{i}.txt"), "x");
    }
    let (code, _, o) = check(dir, &cfg, "PLAN_1.zip", &zip.build());
    assert_eq!(code, Some(0), "{}", text(&o));
    let counts: Vec<u32> =
        fs::read_to_string(seen.join("counts")).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(counts.len(), 6, "{counts:?}");
    assert!(counts.iter().all(|&c| c <= 2), "more than threads_per_deposit at once: {counts:?}");
    assert!(counts.contains(&2), "never two at once: {counts:?}");
}

/// A rejection is final: the runs beside it are stopped (their groups
/// killed), not waited for.
#[test]
fn a_verdict_stops_the_runs_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pidfile = dir.join("pids");
    let slow = format!("echo $$ > {}; sleep 60", pidfile.display());
    let cfg = config(
        dir,
        &format!(
            "[workers]\nthreads_per_deposit = 2\n[[checks.validators]]\nglob = \"slow.txt\"\ncommand = [\"sh\", \"-c\", {slow:?}, \"sh\", \"{{}}\"]\n\
             [[checks.validators]]\nglob = \"bad.txt\"\ncommand = [\"sh\", \"-c\", \"sleep 0.5; echo no; exit 1\", \"sh\", \"{{}}\"]\n"
        ),
    );
    let t0 = Instant::now();
    let zip = RawZip::new().file("slow.txt", "x").file("bad.txt", "y").build();
    let (code, v, o) = check(dir, &cfg, "PLAN_1.zip", &zip);
    assert_eq!((code, v["entry"].as_str()), (Some(1), Some("bad.txt")), "{v} {}", text(&o));
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let p = pids(&pidfile);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(gone(&p[0]), "the slow validator {} runs on", p[0]);
}
