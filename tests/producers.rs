//! Producer names as `producers.pattern` admits them (issue 19, 1 and 2):
//! any name the pattern admits either works end to end (claimed, ended,
//! recovered after a restart) or the pattern is refused by `depot config
//! check` with a reason; `depot producer add` refuses unsafe names.

#[path = "../jobs/tests/support/mod.rs"]
mod support;

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestRng, TestRunner};
use support::*;

fn depot(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_depot")).args(args).arg("--config").arg(config).output().unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// `n` distinct names the pattern admits, drawn by proptest's generator
/// from the pattern itself, with a fixed seed (the same names every run).
fn names_of(pattern: &str, n: usize) -> Vec<String> {
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::deterministic_rng(Default::default()));
    let strategy = proptest::string::string_regex(pattern.trim_start_matches('^').trim_end_matches('$')).unwrap();
    let re = regex::Regex::new(pattern).unwrap();
    let mut out = BTreeSet::new();
    for _ in 0..500 {
        let name = strategy.new_tree(&mut runner).unwrap().current();
        if re.is_match(&name) {
            out.insert(name);
        }
        if out.len() == 10 * n {
            break;
        }
    }
    // Names with a `-` first (the case ids must parse), then the others.
    let (dashed, plain): (Vec<String>, Vec<String>) = out.into_iter().partition(|p| p.contains('-'));
    dashed.into_iter().take(n / 2).chain(plain).take(n).collect()
}

#[test]
fn patterns_that_could_admit_an_unsafe_name_are_refused_with_the_reason() {
    let redis = Redis::start();
    for (pattern, says) in [
        ("^[A-Za-z.]{4,8}$", "`.`"),
        ("^\\\\.depot$", "`.`"),
        ("[A-Z]{4}", "anchored"),
        ("^[A-Z]+$", "longer than 30"),
        ("^[A-Z-]{2,4}$", "starting with `-`"),
        ("^[^/]{1,8}$", "admits"),
    ] {
        let site = Site::new(&redis.url(), &format!("[producers]\npattern = \"{pattern}\"\n"));
        let o = depot(&site.config, &["config", "check"]);
        assert_eq!(o.status.code(), Some(2), "{pattern}: {}", text(&o));
        assert!(text(&o).contains("producers.pattern") && text(&o).contains(says), "{pattern}: {}", text(&o));
        // `depot run` loads the config the same way, and stops.
        let o = Command::new(env!("CARGO_BIN_EXE_depot")).args(["run", "--config"]).arg(&site.config).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{pattern}: {}", text(&o));
        assert!(text(&o).contains("producers.pattern"), "{pattern}: {}", text(&o));
    }
    // `producer add` refuses an unsafe name before anything is made.
    let site = Site::new(&redis.url(), "");
    for (name, says) in [(".depot", "no dot"), ("-rf", "starts with `-`"), ("A/B", "only ASCII")] {
        let o = Command::new(env!("CARGO_BIN_EXE_depot"))
            .args(["producer", "add", "--config"])
            .arg(&site.config)
            .args(["--", name])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        assert!(text(&o).contains(says), "{name}: {}", text(&o));
    }
    assert_eq!(fs::read_dir(site.root().join("drop")).unwrap().count(), 0, "something was made");
}

fn by_producer(redis: &Redis) -> HashMap<String, Vec<HashMap<String, String>>> {
    let mut m: HashMap<String, Vec<_>> = HashMap::new();
    for d in redis.deposits() {
        m.entry(d["producer"].clone()).or_default().push(d);
    }
    m
}

/// Every name a pattern admits works end to end: claimed by one life of
/// depot (a watcher alone, stopped before any worker ran), taken up after
/// the restart, and ended SUCCESS or FAILURE as its deposit deserves.
#[test]
fn every_name_a_pattern_admits_works_end_to_end() {
    for (pattern, profile) in [
        ("^[A-Z]{2,4}(-[A-Z]{2,4})?$", "theia"),
        ("^[A-Za-z0-9_][A-Za-z0-9_-]{0,11}$", "plain"),
        ("^(?:MSEC|AB-CD|x_y-1)$", "theia"),
    ] {
        let redis = Redis::start();
        let names = names_of(pattern, 4);
        assert!(names.len() >= 3 && names.iter().any(|p| p.contains('-')), "{pattern}: {names:?}");
        let site = Site::new(&redis.url(), &format!("[producers]\npattern = \"{pattern}\"\nprofile = \"{profile}\"\n"));
        let o = depot(&site.config, &["config", "check"]);
        assert!(!text(&o).contains("producers.pattern"), "{pattern}: {}", text(&o));
        let watcher = site.start_role("watcher");
        for p in &names {
            let good = if profile == "theia" {
                good_theia(p, "v1")
            } else {
                RawZip::new().file("a.txt", format!("{p}'s data")).build()
            };
            site.drop_rsync(p, "good.zip", &good);
            site.drop_rsync(p, "bad.zip", b"not a zip");
        }
        wait_for(&site, &format!("{pattern}: every deposit claimed"), 60, || {
            let m = by_producer(&redis);
            names.iter().all(|p| m.get(p).is_some_and(|d| d.len() == 2))
        });
        assert_eq!(stop(watcher), Some(0));
        assert!(by_producer(&redis).values().flatten().all(|d| !terminal(d)), "a worker ran in the watcher's life");
        let daemon = site.start();
        wait_for(&site, &format!("{pattern}: every deposit ended"), 60, || {
            let m = by_producer(&redis);
            names.iter().all(|p| m.get(p).is_some_and(|d| d.len() == 2 && d.iter().all(terminal)))
        });
        assert_eq!(stop(daemon), Some(0));
        let m = by_producer(&redis);
        for p in &names {
            for d in &m[p] {
                let want = if d["file"] == "good.zip" { "SUCCESS" } else { "FAILURE" };
                assert_eq!(d["state"], want, "{pattern} {p}: {d:?}");
                assert_eq!(jobs::deposit::producer_of(&d["id"]), Some(p.as_str()));
            }
            let current = site.root().join("publish").join(p).join("current/manifest.json");
            let m: serde_json::Value = serde_json::from_slice(&fs::read(&current).unwrap()).unwrap();
            assert_eq!(m["producer"], p.as_str());
            assert_eq!(fs::read_dir(site.root().join("drop").join(p).join("rejected")).unwrap().count(), 1, "{p}");
        }
        let spool: Vec<_> = fs::read_dir(site.root().join("drop/.depot/spool")).unwrap().flatten().collect();
        assert!(spool.is_empty(), "{pattern}: spool not emptied: {spool:?}");
    }
}

fn have(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success())
}

/// `producer add --user` never takes over an account that is not the
/// producer's own (another producer's, or a system account) unless
/// `--force`, which says what changes. Run in a mount namespace of its
/// own over a copy of /etc: the host's accounts are never touched.
#[test]
fn producer_add_refuses_someone_else_s_account_unless_forced() {
    let root_uid = fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(1);
    if root_uid != 0 || !have("unshare") || !have("useradd") {
        eprintln!("skipped: needs root, unshare and useradd");
        return;
    }
    let redis = Redis::start();
    // The chroot rule wants a path that is root's and 0755 all the way up.
    let site = Site::at(Path::new("/var/lib"), &redis.url(), "");
    let root = site.root().display().to_string();
    let bin = env!("CARGO_BIN_EXE_depot");
    let script = format!(
        r#"set -u
mount --make-rprivate /
cp -a /etc {root}/etc
mount --bind {root}/etc /etc
getent group depot >/dev/null || groupadd --system depot
getent passwd depot >/dev/null || useradd --system --gid depot --no-create-home --shell /usr/sbin/nologin depot
useradd --system --no-create-home --home-dir /var/www --shell /usr/sbin/nologin websrv
run() {{ name=$1; shift; {bin} producer add "$@" --config {root}/config.toml >{root}/$name.out 2>{root}/$name.err; echo $? >{root}/$name.rc; }}
run msec MSEC
run steal ABCD --user p-msec
run www ABCD --user websrv
run forced ABCD --user websrv --force
run again MSEC
getent passwd p-msec >{root}/p-msec.passwd
getent passwd websrv >{root}/websrv.passwd
"#
    );
    let out = Command::new("unshare").args(["-m", "sh", "-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r = |n: &str, ext: &str| fs::read_to_string(site.root().join(format!("{n}.{ext}"))).unwrap_or_default();
    let chroot = |p: &str| format!("{root}/drop/{p}");
    assert_eq!(r("msec", "rc").trim(), "0", "{}", r("msec", "err"));
    for (n, says) in [("steal", "producer MSEC's account"), ("www", "its home is /var/www")] {
        assert_eq!(r(n, "rc").trim(), "2", "{n}: {}", r(n, "out"));
        let err = r(n, "err");
        assert!(err.contains(says) && err.contains("--force") && err.contains(&chroot("ABCD")), "{n}: {err}");
    }
    assert_eq!(r("forced", "rc").trim(), "0", "{}", r("forced", "err"));
    let warn = r("forced", "err");
    assert!(warn.contains("warning: --force") && warn.contains("/var/www -> ") && warn.contains("shell"), "{warn}");
    assert_eq!(r("again", "rc").trim(), "0", "{}", r("again", "err"));
    // MSEC's account kept MSEC's chroot; websrv moved only when forced.
    assert!(r("p-msec", "passwd").contains(&format!(":{}:", chroot("MSEC"))), "{}", r("p-msec", "passwd"));
    assert!(r("websrv", "passwd").contains(&format!(":{}:", chroot("ABCD"))), "{}", r("websrv", "passwd"));
    // The host's own accounts are as they were.
    let host = fs::read_to_string("/etc/passwd").unwrap();
    assert!(!host.contains("websrv") && !host.contains(&chroot("MSEC")), "the host's /etc/passwd changed");
}
