//! The migration path of an archive that keeps its Apache for a while:
//! Debian's `apache2` with mod_dav writing into a producer's `new/` (a
//! hidden temp file, then a rename), depot's watcher taking the deposit
//! from the same folder. Skipped when `/usr/sbin/apache2` is missing
//! (scripts/test.sh installs it).

#[path = "../jobs/tests/support/mod.rs"]
mod support;

mod common;

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;
use support::*;

const APACHE: &str = "/usr/sbin/apache2";
const MODULES: &str = "/usr/lib/apache2/modules";

/// An apache2 of the test's own (ServerRoot, PidFile, logs in a temp dir),
/// stopped by its pid when dropped.
struct Apache {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Apache {
    fn drop(&mut self) {
        // SIGTERM: the parent stops its workers, then exits.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

impl Apache {
    /// Serves `/data/P/new/` (WebDAV, Basic auth from `users`, user P only)
    /// out of `drop/P/new`, as an archive's Apache does today.
    fn start(port: u16, drop: &Path, p: &str, users: &Path) -> Apache {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // The lock database is written by the workers (www-data when root).
        let lock = dir.path().join("lock");
        fs::create_dir(&lock).unwrap();
        fs::set_permissions(&lock, fs::Permissions::from_mode(0o777)).unwrap();
        let new = drop.join(p).join("new");
        let mods = [
            "mpm_event",
            "authz_core",
            "authn_core",
            "authz_user",
            "auth_basic",
            "authn_file",
            "alias",
            "dav",
            "dav_fs",
        ];
        let load: String = mods.iter().map(|m| format!("LoadModule {m}_module {MODULES}/mod_{m}.so\n")).collect();
        let conf = format!(
            "ServerRoot \"{d}\"\nDefaultRuntimeDir \"{d}\"\nPidFile \"{d}/apache2.pid\"\nErrorLog \"{d}/error.log\"\n\
             Mutex file:{d} default\nListen 127.0.0.1:{port}\nServerName 127.0.0.1\nUser www-data\nGroup www-data\n\
             {load}DavLockDB \"{lock}/davlock\"\nAlias /data/{p}/new \"{new}\"\n\
             <Directory \"{new}\">\n  Dav On\n  AuthType Basic\n  AuthName \"{p}\"\n  AuthBasicProvider file\n  \
             AuthUserFile \"{users}\"\n  Require user {p}\n</Directory>\n",
            lock = lock.display(),
            new = new.display(),
            users = users.display(),
        );
        let conf_path = dir.path().join("apache2.conf");
        fs::write(&conf_path, conf).unwrap();
        let child = Command::new(APACHE)
            .args(["-DFOREGROUND", "-f"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        Apache { child, dir }
    }
    fn log(&self) -> String {
        let read = |n: &str| fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }
}

/// Theia's curl command through Apache's mod_dav into `new/`: the watcher
/// takes the renamed file after settling, publishes it and moves it to
/// previous/; nothing of mod_dav's temp file is left.
#[test]
fn a_deposit_written_by_apache_mod_dav_is_published() {
    if !Path::new(APACHE).is_file() {
        eprintln!("skipped: {APACHE} is missing (apt-get install apache2; scripts/test.sh does it)");
        return;
    }
    let redis = Redis::start();
    let site = Site::new(&redis.url(), "");
    let new = site.new_dir("MSEC");
    // www-data reaches new/ through the site's folders, and writes there
    // through its group (setgid: files keep the group), as an operator sets
    // it up (docs/http.md).
    for d in [site.root().to_path_buf(), site.root().join("drop"), site.root().join("drop/MSEC")] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    if running_as_root() {
        let s = Command::new("chgrp").arg("www-data").arg(&new).status().unwrap();
        assert!(s.success());
    }
    fs::set_permissions(&new, fs::Permissions::from_mode(0o2770)).unwrap();
    let users = site.root().join("users");
    let out = Command::new("htpasswd")
        .args(["-c", "-b", "-B"])
        .arg(&users)
        .args(["MSEC", "pw"])
        .output()
        .expect("htpasswd (apache2-utils)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fs::set_permissions(&users, fs::Permissions::from_mode(0o644)).unwrap();

    let daemon = site.start();
    wait_for(&site, "ready", 30, || site.log().contains("ready"));
    let port = free_port();
    let apache = Apache::start(port, &site.root().join("drop"), "MSEC", &users);
    wait_for(&site, "apache2 to listen", 30, || TcpStream::connect(("127.0.0.1", port)).is_ok());

    let zip = site.root().join("MSEC_THEIA.zip");
    fs::write(&zip, good_theia("MSEC", "dav")).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -sS -u \"MSEC\":\"pw\" -T {} http://127.0.0.1:{port}/data/\"MSEC\"/new/ -o /dev/null -w '%{{http_code}}'",
            zip.display()
        ))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code, "201", "{}\napache2 log:\n{}", String::from_utf8_lossy(&out.stderr), apache.log());

    let prev = site.root().join("drop/MSEC/previous/MSEC_THEIA.zip");
    wait_for(&site, "previous/", 60, || prev.is_file());
    wait_for(&site, "SUCCESS", 30, || {
        redis.deposits().iter().any(|d| d.get("state").map(String::as_str) == Some("SUCCESS"))
    });
    let deposits = redis.deposits();
    assert_eq!(deposits.len(), 1, "{deposits:?}");
    assert_eq!(deposits[0].get("file").map(String::as_str), Some("MSEC_THEIA.zip"), "{deposits:?}");
    assert!(
        site.root().join("publish/MSEC/current/MSEC_DAT_1/obs1.txt").is_file(),
        "nothing published; log:\n{}",
        site.log()
    );
    let left: Vec<_> = fs::read_dir(&new).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left in new/: {left:?}");
    drop(apache);
    assert_eq!(stop(daemon), Some(0));
}
