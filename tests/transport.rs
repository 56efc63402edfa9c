//! Uploads through a real OpenSSH server with the real clients, against a
//! running `depot run` (issue 13, part 4). Each test onboards its producer
//! with `depot producer add` (a real system account, removed at the end),
//! starts its own sshd with the block `add` printed, and uploads a Theia
//! deposit with a big stored file of random bytes. A complete upload is
//! published once and whole (the release's file is the source's bytes,
//! exactly one SUCCESS) and nothing lands in rejected/.
//!
//! Needs root (accounts, chroot) and openssh-server, openssh-client and
//! rsync (scripts/test.sh installs them). Each test runs in a private mount
//! namespace on a copy of /etc and an empty /var/lib (`run_privately`): the
//! accounts it makes never reach the host.

#[path = "../jobs/tests/support/mod.rs"]
mod support;

mod common;
mod sshd;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use sshd::*;
use support::*;

/// A folder root's and 0755 all the way up: the chroot rule (not /tmp).
const PARENT: &str = "/var/lib";
const SETTLE_MS: u64 = 1000;
/// About 1 MiB/s: sftp's and scp's `-l` is in Kbit/s, rsync's
/// `--bwlimit` in KiB/s.
const SFTP_KBITS: u32 = 8192;
const RSYNC_KIBS: u32 = 1024;

/// A Theia deposit whose dataset holds `mib` MiB of random bytes (stored,
/// so that the upload is as big as the data) with their MD5SUMS; the zip
/// and the big file.
fn deposit(p: &str, mib: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut x = seed | 1;
    let mut big = Vec::with_capacity(mib << 20);
    while big.len() < mib << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    let inner = RawZip::new().stored("big.bin", big.clone()).file("MD5SUMS", md5sums(&[("big.bin", &big)])).build();
    let zip = RawZip::new()
        .file(format!("{p}_en.json"), pivot(p, &[(&format!("{p}_DAT_1"), &["big.bin"])]))
        .stored(format!("{p}_DAT_1.zip"), inner)
        .build();
    (zip, big)
}

/// One test's world, dropped in this order: the daemon, sshd (no session
/// of the account left), the account, the folders, Redis.
struct Rig {
    daemon: Option<Daemon>,
    sshd: Sshd,
    producer: Producer,
    site: Site,
    redis: Redis,
}

impl Rig {
    fn new(p: &str) -> Rig {
        let redis = Redis::start();
        let site = Site::at(Path::new(PARENT), &redis.url(), &format!("[watch]\nsettle_ms = {SETTLE_MS}\n"));
        fs::create_dir_all(site.root().join("up")).unwrap();
        let (sftp_port, rsync_port) = (free_port(), free_port());
        let producer = Producer::add(&site, p, rsync_port);
        let sshd = Sshd::start(site.root(), sftp_port, rsync_port, &producer.printed);
        let daemon = site.start();
        wait_for(&site, "ready", 30, || site.log().contains("ready"));
        Rig { daemon: Some(daemon), sshd, producer, site, redis }
    }

    fn p(&self) -> &str {
        &self.producer.p
    }

    fn new_dir(&self) -> PathBuf {
        self.site.root().join("drop").join(self.p()).join("new")
    }

    /// The upload's source file, in the site's up/.
    fn source(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let f = self.site.root().join("up").join(name);
        fs::write(&f, bytes).unwrap();
        f
    }

    /// `sftp -b <batch>` as the producer, rate-limited if `kbits`.
    fn sftp(&self, batch: &str, kbits: Option<u32>) -> Client {
        let b = self.site.root().join(format!("batch-{}", random_hex(6)));
        fs::write(&b, batch).unwrap();
        let mut c = Command::new("sftp");
        c.args(self.producer.ssh_options()).args(["-P", &self.sshd.sftp_port.to_string(), "-b"]).arg(&b);
        if let Some(k) = kbits {
            c.args(["-l", &k.to_string()]);
        }
        c.arg(self.producer.login());
        Client::spawn(c, &format!("sftp {batch:?}"), self.site.root())
    }

    /// rsync over ssh to the rsync port, where rrsync is the forced
    /// command: the README's command line.
    fn rsync(&self, src: &Path, kibs: u32) -> Client {
        let ssh = format!("ssh {} -p {}", self.producer.ssh_options().join(" "), self.sshd.rsync_port);
        let mut c = Command::new("rsync");
        c.args(["-t", &format!("--bwlimit={kibs}"), "-e", &ssh]).arg(src).arg(format!("{}:", self.producer.login()));
        Client::spawn(c, "rsync", self.site.root())
    }

    fn by_file(&self, name: &str) -> Vec<HashMap<String, String>> {
        self.redis.deposits().into_iter().filter(|d| d.get("file").map(String::as_str) == Some(name)).collect()
    }

    fn rejected(&self) -> Vec<String> {
        let d = self.site.root().join("drop").join(self.p()).join("rejected");
        fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }

    /// Everything a failure needs to be understood.
    fn diag(&self) -> String {
        format!(
            "deposits: {:?}\nnew/: {:?}\nrejected/: {:?}\n--- sshd log:\n{}\n--- daemon log:\n{}",
            self.redis.deposits(),
            fs::read_dir(self.new_dir()).map(|r| r.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
            self.rejected(),
            self.sshd.log(),
            self.site.log()
        )
    }

    fn wait(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", self.diag());
            sleep(Duration::from_millis(50));
        }
    }

    /// Size of the file in new/ (or of rsync's hidden temp file for it).
    fn uploaded(&self, name: &str) -> u64 {
        fs::read_dir(self.new_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n == name || n.starts_with(&format!(".{name}."))
            })
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    }

    fn wait_uploaded(&self, name: &str, at_least: u64) {
        self.wait(&format!("{at_least} bytes of {name} uploaded"), 60, || self.uploaded(name) >= at_least);
    }

    /// Nothing of `name` claimed yet: still in new/ (or rsync's temp file),
    /// no deposit for it.
    fn assert_unclaimed(&self, name: &str) {
        assert!(self.by_file(name).is_empty(), "claimed while its writer was paused\n{}", self.diag());
        assert!(self.uploaded(name) > 0, "{name} left new/ while its writer was paused\n{}", self.diag());
    }

    /// Published once, whole: one deposit for `name`, SUCCESS with one
    /// SUCCESS event; the release's big file is the source's; the deposit
    /// in previous/ is the uploaded zip; nothing in rejected/; and still so
    /// after another settle time (no second claim of a late write).
    fn published_once_whole(&self, name: &str, zip: &[u8], big: &[u8]) {
        self.wait(&format!("{name} ended"), 45, || self.by_file(name).iter().any(terminal));
        let check = |when: &str| {
            let ds = self.by_file(name);
            assert_eq!(ds.len(), 1, "{when}: {name} was claimed {} times\n{}", ds.len(), self.diag());
            let d = &ds[0];
            assert_eq!(d["state"], "SUCCESS", "{when}: {d:?}\n{}", self.diag());
            let successes =
                self.redis.events().iter().filter(|e| e.get("id") == d.get("id") && e["state"] == "SUCCESS").count();
            assert_eq!(successes, 1, "{when}: SUCCESS events of {}", d["id"]);
            assert!(self.rejected().is_empty(), "{when}: rejected/ holds {:?}\n{}", self.rejected(), self.diag());
            let releases = self.site.root().join("publish").join(self.p()).join("releases");
            let rel = d
                .get("release")
                .map(PathBuf::from)
                .filter(|r| r.is_absolute())
                .unwrap_or_else(|| releases.join(d.get("release").map_or(d["id"].as_str(), String::as_str)));
            let published = fs::read(rel.join(format!("{}_DAT_1", self.p())).join("big.bin"))
                .unwrap_or_else(|e| panic!("{when}: release {}: {e}\n{}", rel.display(), self.diag()));
            assert!(published == big, "{when}: the published file differs from the source");
            let kept = fs::read(self.site.root().join("drop").join(self.p()).join("previous").join(name)).unwrap();
            assert!(kept == zip, "{when}: previous/{name} is not the uploaded zip");
        };
        check("at its end");
        sleep(Duration::from_millis(SETTLE_MS + 1500));
        check("later");
        assert_eq!(self.uploaded(name), 0, "{name} is back in new/\n{}", self.diag());
    }

    /// A stalled link: the client stopped for 3 s (three settle times) a
    /// third of the way through the upload, never claimed meanwhile, then
    /// continued to its end.
    fn stall_midway(&self, name: &str, size: u64, client: Client) {
        self.wait_uploaded(name, size / 3);
        client.signal("STOP");
        sleep(Duration::from_secs(3));
        self.assert_unclaimed(name);
        client.signal("CONT");
        client.finish(60);
    }

    fn stop(mut self) {
        let d = self.daemon.take().unwrap();
        assert_eq!(stop(d), Some(0), "{}", self.site.log());
    }
}

/// A stalled link: sftp (and its ssh) stopped for 3 s, three settle times,
/// in the middle of a rate-limited upload, then continued.
#[test]
fn sftp_paused_longer_than_settle_is_published_once_whole() {
    if run_privately("sftp_paused_longer_than_settle_is_published_once_whole") {
        return;
    }
    let rig = Rig::new("SFTP");
    let name = "SFTP_THEIA.zip";
    let (zip, big) = deposit("SFTP", 8, 11);
    let src = rig.source(name, &zip);
    let client = rig.sftp(&format!("put {} new/\n", src.display()), Some(SFTP_KBITS));
    rig.stall_midway(name, zip.len() as u64, client);
    rig.published_once_whole(name, &zip, &big);
    rig.stop();
}

/// An sftp upload killed half way, then resumed with `reput` at once.
#[test]
fn sftp_killed_then_reput_is_published_once_whole() {
    if run_privately("sftp_killed_then_reput_is_published_once_whole") {
        return;
    }
    let rig = Rig::new("REPU");
    let name = "REPU_THEIA.zip";
    let (zip, big) = deposit("REPU", 8, 23);
    let src = rig.source(name, &zip);
    let mut client = rig.sftp(&format!("put {} new/\n", src.display()), Some(SFTP_KBITS));
    rig.wait_uploaded(name, zip.len() as u64 * 2 / 5);
    client.kill();
    let killed = Instant::now();
    let resumed = rig.sftp(&format!("reput {} new/{name}\n", src.display()), None);
    resumed.finish(60);
    eprintln!("reput done {:?} after the kill", killed.elapsed());
    rig.published_once_whole(name, &zip, &big);
    rig.stop();
}

/// scp in place. OpenSSH 9's scp speaks the sftp protocol by default
/// (this is what runs here); the legacy protocol, `scp -O`, is refused by
/// the forced internal-sftp.
#[test]
fn scp_upload_is_published_once_whole() {
    if run_privately("scp_upload_is_published_once_whole") {
        return;
    }
    let rig = Rig::new("SCPX");
    let name = "SCPX_THEIA.zip";
    let (zip, big) = deposit("SCPX", 4, 31);
    let src = rig.source(name, &zip);
    let mut scp = Command::new("scp");
    scp.args(rig.producer.ssh_options())
        .args(["-P", &rig.sshd.sftp_port.to_string(), "-l", &SFTP_KBITS.to_string()])
        .arg(&src)
        .arg(format!("{}:new/", rig.producer.login()));
    Client::spawn(scp, "scp", rig.site.root()).finish(60);
    rig.published_once_whole(name, &zip, &big);

    let mut legacy = Command::new("scp");
    legacy
        .args(rig.producer.ssh_options())
        .args(["-O", "-P", &rig.sshd.sftp_port.to_string()])
        .arg(&src)
        .arg(format!("{}:/new/SCPX_LEGACY.zip", rig.producer.login()));
    let (ok, out) = Client::spawn(legacy, "scp -O", rig.site.root()).wait(30);
    assert!(!ok, "the legacy scp protocol should be refused (ForceCommand internal-sftp): {out}");
    rig.stop();
}

/// WinSCP's way: the upload under `<name>.filepart`, then an sftp rename to
/// the final name. `rename` is OpenSSH's sftp: posix-rename@openssh.com, an
/// atomic rename(2) (WinSCP with "Use POSIX rename"); `rename -l` sends a
/// plain SSH_FXP_RENAME, as WinSCP does by default, which OpenSSH's server
/// carries out as link() then unlink(): the final name appears as a new
/// link to a file that is already closed, and nobody writes it again.
fn winscp_upload(p: &str, rename: &str, seed: u64) {
    let rig = Rig::new(p);
    let name = format!("{p}_THEIA.zip");
    let (zip, big) = deposit(p, 4, seed);
    let src = rig.source(&name, &zip);
    let batch = format!("put {} new/{name}.filepart\n{rename} new/{name}.filepart new/{name}\n", src.display());
    rig.sftp(&batch, Some(SFTP_KBITS)).finish(60);
    rig.published_once_whole(&name, &zip, &big);
    rig.stop();
}

#[test]
fn winscp_filepart_then_posix_rename_is_published_once_whole() {
    if run_privately("winscp_filepart_then_posix_rename_is_published_once_whole") {
        return;
    }
    winscp_upload("WINP", "rename", 41);
}

#[test]
fn winscp_filepart_then_plain_sftp_rename_is_published_once_whole() {
    if run_privately("winscp_filepart_then_plain_sftp_rename_is_published_once_whole") {
        return;
    }
    winscp_upload("WINS", "rename -l", 43);
}

/// rsync over ssh, rrsync the forced command: rate-limited, stopped for 3 s
/// half way, continued. rsync writes a hidden temp file and renames it.
#[test]
fn rsync_through_rrsync_paused_is_published_once_whole() {
    if run_privately("rsync_through_rrsync_paused_is_published_once_whole") {
        return;
    }
    let rig = Rig::new("RSYN");
    let name = "RSYN_THEIA.zip";
    let (zip, big) = deposit("RSYN", 8, 53);
    let src = rig.source(name, &zip);
    let client = rig.rsync(&src, RSYNC_KIBS);
    rig.stall_midway(name, zip.len() as u64, client);
    rig.published_once_whole(name, &zip, &big);
    rig.stop();
}

/// An sftp upload killed half way and never resumed: once closed and
/// quiet, it is judged, and the producer is told in plain words.
#[test]
fn a_cut_short_upload_is_rejected_as_cut_short() {
    if run_privately("a_cut_short_upload_is_rejected_as_cut_short") {
        return;
    }
    let rig = Rig::new("CUTS");
    let name = "CUTS_THEIA.zip";
    let (zip, _) = deposit("CUTS", 8, 67);
    let src = rig.source(name, &zip);
    let mut client = rig.sftp(&format!("put {} new/\n", src.display()), Some(SFTP_KBITS));
    rig.wait_uploaded(name, zip.len() as u64 / 2);
    client.kill();
    rig.wait(&format!("{name} ended"), 60, || rig.by_file(name).iter().any(terminal));
    let ds = rig.by_file(name);
    assert_eq!(ds.len(), 1, "{}", rig.diag());
    let d = &ds[0];
    assert_eq!(d["state"], "FAILURE", "{d:?}");
    assert_eq!(d["error_code"], "ZIP_CORRUPT", "{d:?}");
    let report = rig.site.root().join("drop/CUTS/rejected").join(&d["id"]).join("report.txt");
    let text = fs::read_to_string(&report).unwrap_or_else(|e| panic!("{}: {e}\n{}", report.display(), rig.diag()));
    assert!(text.contains("cut short"), "report.txt does not say the upload was cut short:\n{text}");
    assert!(!rig.site.root().join("publish/CUTS/current").exists(), "nothing is published");
    rig.stop();
}

/// What the account may do: in the chroot, sftp sees new/, previous/ and
/// rejected/ only and writes only into new/; no shell on either port; rsync
/// only on its port, only into new/; sftp not on the rsync port.
#[test]
fn a_producer_reaches_only_its_folder() {
    if run_privately("a_producer_reaches_only_its_folder") {
        return;
    }
    let rig = Rig::new("JAIL");
    let login = rig.producer.login();
    let opts = rig.producer.ssh_options();
    let (sftp_port, rsync_port) = (rig.sshd.sftp_port.to_string(), rig.sshd.rsync_port.to_string());
    fs::write(rig.site.root().join("drop/JAIL/previous/JAIL_OLD.zip"), b"old").unwrap();

    let (ok, out) = rig.sftp("ls -1 /\n", None).wait(30);
    assert!(ok, "{out}");
    let listed: Vec<&str> = out.lines().filter(|l| !l.starts_with("sftp>")).map(str::trim).collect();
    assert_eq!(listed, ["/new", "/previous", "/rejected"], "{out}");
    let (ok, out) = rig.sftp("get /previous/JAIL_OLD.zip /dev/null\n", None).wait(30);
    assert!(ok, "the producer reads its previous/: {out}");
    let src = rig.source("x.zip", b"x");
    for dest in ["/previous/x.zip", "/x.zip", "/../x.zip"] {
        let (ok, out) = rig.sftp(&format!("put {} {dest}\n", src.display()), None).wait(30);
        assert!(!ok, "put into {dest} should fail: {out}");
    }
    for port in [&sftp_port, &rsync_port] {
        let mut ssh = Command::new("ssh");
        ssh.args(&opts).args(["-p", port.as_str(), &login, "id"]);
        let (ok, out) = Client::spawn(ssh, "ssh id", rig.site.root()).wait(30);
        assert!(!ok && !out.contains("uid="), "a command ran on port {port}: {out}");
    }
    let mut sftp = Command::new("sftp");
    sftp.args(&opts).args(["-P", rsync_port.as_str(), "-b", "/dev/null", &login]);
    let (ok, out) = Client::spawn(sftp, "sftp on the rsync port", rig.site.root()).wait(30);
    assert!(!ok, "sftp on the rsync port: {out}");
    let ssh = format!("ssh {} -p {rsync_port}", opts.join(" "));
    for dest in ["../previous/", "/../"] {
        let mut rsync = Command::new("rsync");
        rsync.args(["-t", "-e", &ssh]).arg(&src).arg(format!("{login}:{dest}"));
        let (ok, out) = Client::spawn(rsync, "rsync out of new/", rig.site.root()).wait(30);
        assert!(!ok, "rsync into {dest} should fail: {out}");
    }
    // rrsync's folder is new/ itself: a `new/` target is new/new/.
    let mut rsync = Command::new("rsync");
    rsync.args(["-t", "-e", &ssh]).arg(&src).arg(format!("{login}:new/"));
    Client::spawn(rsync, "rsync to new/", rig.site.root()).finish(30);
    assert!(rig.site.root().join("drop/JAIL/new/new/x.zip").is_file());
    assert!(!rig.site.root().join("drop/JAIL/x.zip").exists());
    assert!(!rig.site.root().join("drop/x.zip").exists());
    assert_eq!(fs::read(rig.site.root().join("drop/JAIL/previous/JAIL_OLD.zip")).unwrap(), b"old");
    rig.stop();
}

/// `depot producer add` run again changes nothing and says "already";
/// `depot producer list` shows the producer healthy, then what is wrong
/// once a folder is changed, and `add` mends it.
#[test]
fn producer_add_twice_changes_nothing_and_list_tells_what_is_wrong() {
    if run_privately("producer_add_twice_changes_nothing_and_list_tells_what_is_wrong") {
        return;
    }
    let rig = Rig::new("ONBD");
    let root = rig.site.root().join("drop/ONBD");
    let snapshot = || {
        let mut s: Vec<String> = ["", "new", "previous", "rejected"]
            .iter()
            .map(|d| {
                use std::os::unix::fs::MetadataExt;
                let m = fs::metadata(root.join(d)).unwrap();
                format!("{d} {} {} {:o} {}", m.uid(), m.gid(), m.mode(), m.ino())
            })
            .collect();
        s.push(fs::read_to_string(Path::new(KEYS_DIR).join(&rig.producer.user)).unwrap());
        let passwd = Command::new("getent").args(["passwd", &rig.producer.user]).output().unwrap();
        s.push(String::from_utf8(passwd.stdout).unwrap());
        s
    };
    let first = rig.producer.printed.clone();
    for line in ["account", "/ONBD: created root:root 0755", "/new: created", "/previous: created", "key(s) added"] {
        assert!(first.contains(line), "first run: no {line:?} in\n{first}");
    }
    let before = snapshot();
    let again = rig.producer.add_command(&rig.site, rig.sshd.rsync_port).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let again = String::from_utf8(again.stdout).unwrap();
    assert!(!again.contains("created") && !again.contains("added"), "second run changed something:\n{again}");
    assert_eq!(again.matches("already").count(), 6, "account, 4 folders, key:\n{again}");
    assert_eq!(snapshot(), before);
    // The same sshd block both times.
    assert_eq!(first[first.find("\nMatch ").unwrap()..], again[again.find("\nMatch ").unwrap()..]);

    let list = || {
        let out = Command::new(env!("CARGO_BIN_EXE_depot"))
            .args(["producer", "list", "--config"])
            .arg(&rig.site.config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let out = list();
    let line = out.lines().find(|l| l.starts_with("ONBD ")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains(&rig.producer.user) && line.trim_end().ends_with(" ok"), "{out}");
    assert!(line.contains(" - "), "no deposit yet: last state -\n{out}");

    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(root.join("new"), fs::Permissions::from_mode(0o777)).unwrap();
    let out = list();
    assert!(out.contains("new/ is ") && out.contains("0777, want ") && out.contains(":depot 2770"), "{out}");
    let mend = rig.producer.add_command(&rig.site, rig.sshd.rsync_port).output().unwrap();
    let mend = String::from_utf8(mend.stdout).unwrap();
    assert!(mend.contains("/new: was ") && mend.contains("0777, now "), "{mend}");
    assert!(list().lines().any(|l| l.starts_with("ONBD ") && l.trim_end().ends_with(" ok")));

    // After a deposit, list shows its last state.
    let (zip, big) = deposit("ONBD", 1, 5);
    let src = rig.source("ONBD_1.zip", &zip);
    rig.sftp(&format!("put {} new/\n", src.display()), None).finish(30);
    rig.published_once_whole("ONBD_1.zip", &zip, &big);
    let out = list();
    assert!(out.lines().any(|l| l.starts_with("ONBD ") && l.contains("SUCCESS")), "{out}");
    rig.stop();
}
