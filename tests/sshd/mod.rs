//! Real transport for the integration tests: a private OpenSSH server per
//! test, producers onboarded with `depot producer add` (real system
//! accounts, removed at the end), and the real sftp, scp and rsync clients,
//! each in a process group of its own so that a test can pause (SIGSTOP)
//! or kill (SIGKILL) a client with its ssh. Everything started here is
//! stopped by its pid (or its own process group) when dropped.
#![allow(dead_code)]

use std::hash::{BuildHasher, Hasher};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use std::{fs, thread};

use crate::common::Site;

pub const SSHD: &str = "/usr/sbin/sshd";
/// Where `depot producer add` puts authorized keys (src/producer.rs).
pub const KEYS_DIR: &str = "/etc/depot/authorized_keys";

/// useradd/userdel/groupadd lock /etc/passwd and /etc/group: tests in
/// parallel take turns.
static ACCOUNTS: Mutex<()> = Mutex::new(());

fn accounts() -> std::sync::MutexGuard<'static, ()> {
    ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Set inside the private mount namespace [`run_privately`] makes.
const PRIVATE: &str = "DEPOT_TEST_PRIVATE_HOST";

/// What a test here changes on the host (accounts in /etc/passwd, /etc/group,
/// /etc/shadow, /etc/gshadow; keys in /etc/depot; its sites under /var/lib)
/// must never reach the host: the test runs again, alone, in a private
/// mount namespace (`unshare --mount`) where /etc is a copy (a copy of the
/// folder, not bind mounts of single files: useradd renames `passwd+` over
/// `passwd`, which a file mount point refuses) and /var/lib an empty folder
/// of root's (sshd's chroot rule holds through it). Both copies go when the
/// namespace ends. Accounts made in there take uids from a range of the
/// namespace's own (uids are global: two tests' producers must differ).
/// True: the caller has run the test that way and returns; false: the
/// caller is inside, and runs the test.
pub fn run_privately(test: &str) -> bool {
    if std::env::var_os(PRIVATE).is_some() {
        return false;
    }
    // Each namespace allocates its system accounts from a range of its own
    // (SYS_UID_MIN.. in its login.defs): uids are the kernel's, shared by
    // every namespace, and two tests' producers must never be one uid.
    static SLOT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = 20_000 + 100 * SLOT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let script = r#"set -eu
t="$(mktemp -d)"
cp -a /etc "$t/etc"
sed -i -E '/^[[:space:]]*SYS_[UG]ID_(MIN|MAX)[[:space:]]/d' "$t/etc/login.defs"
printf 'SYS_UID_MIN %s
SYS_UID_MAX %s
SYS_GID_MIN %s
SYS_GID_MAX %s
' \
    "$DEPOT_TEST_ID_BASE" "$((DEPOT_TEST_ID_BASE + 99))" "$DEPOT_TEST_ID_BASE" "$((DEPOT_TEST_ID_BASE + 99))" \
    >>"$t/etc/login.defs"
mkdir -m 0755 "$t/varlib"
mount --bind "$t/etc" /etc
mount --bind "$t/varlib" /var/lib
rc=0
"$@" || rc=$?
umount /var/lib /etc
rm -rf "$t"
exit "$rc"
"#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(PRIVATE, "1")
        .env("DEPOT_TEST_ID_BASE", base.to_string())
        .output()
        .expect("unshare (util-linux) is needed: tests never change the host's /etc");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{test}, in a private mount namespace:\n{text}");
    // The harness says "1 passed": the test did run in there.
    assert!(text.contains("1 passed"), "{test} did not run in its namespace:\n{text}");
    true
}

/// Some random hex, for names no other test (or earlier run) uses.
pub fn random_hex(n: usize) -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())[..n].to_owned()
}

fn exists(db: &str, key: &str) -> bool {
    Command::new("getent").args([db, key]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The daemon's user and groups, as the README's install makes them
/// (`systemd-sysusers` on systemd/depot.sysusers), when this host lacks
/// them: `depot producer add` needs them, as on a real host.
pub fn ensure_daemon_account() {
    let _g = accounts();
    if exists("passwd", "depot") && exists("group", "depot") && exists("group", "depot-producers") {
        return;
    }
    let sysusers = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/depot.sysusers");
    let ok = Command::new("systemd-sysusers").arg(&sysusers).status().is_ok_and(|s| s.success());
    if !ok {
        // No systemd tools: what the sysusers file says, by hand.
        if !exists("passwd", "depot") {
            let _ = Command::new("useradd")
                .args(["--system", "--user-group", "--home-dir", "/srv/depot", "--no-create-home"])
                .args(["--shell", "/usr/sbin/nologin", "depot"])
                .status();
        }
        if !exists("group", "depot-producers") {
            let _ = Command::new("groupadd").args(["--system", "depot-producers"]).status();
        }
    }
    assert!(exists("passwd", "depot") && exists("group", "depot"), "cannot make the daemon's user depot");
}

/// A producer onboarded with `depot producer add`: its account (removed
/// with `userdel` when dropped), its key pair, and what `add` printed (the
/// sshd block the test's sshd runs with).
pub struct Producer {
    pub p: String,
    pub user: String,
    /// The private key; the public one is `<key>.pub`.
    pub key: PathBuf,
    /// `depot producer add`'s standard output.
    pub printed: String,
}

impl Producer {
    /// `depot producer add P --user p-t<random> --key <key>.pub
    /// --rsync-port N`, as the README says (but for the account name, unique
    /// per test, and the port of the test's sshd).
    pub fn add(site: &Site, p: &str, rsync_port: u16) -> Producer {
        ensure_daemon_account();
        let user = format!("p-t{}", random_hex(8));
        let key = site.root().join(format!("id_{user}"));
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", &user, "-f"])
            .arg(&key)
            .output()
            .expect("ssh-keygen (openssh-client) must be installed");
        assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
        // The guard exists before the account does: a failed add is undone.
        let mut producer = Producer { p: p.to_owned(), user, key, printed: String::new() };
        let out = {
            let _g = accounts();
            producer.add_command(site, rsync_port).output().unwrap()
        };
        assert!(
            out.status.success(),
            "depot producer add failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        producer.printed = String::from_utf8(out.stdout).unwrap();
        producer
    }

    /// `depot producer add P --user U --key K.pub --rsync-port N --config C`.
    pub fn add_command(&self, site: &Site, rsync_port: u16) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_depot"));
        c.args(["producer", "add", &self.p, "--user", &self.user, "--key"])
            .arg(self.public_key())
            .args(["--rsync-port", &rsync_port.to_string(), "--config"])
            .arg(&site.config);
        c
    }

    pub fn public_key(&self) -> PathBuf {
        let mut s = self.key.clone().into_os_string();
        s.push(".pub");
        PathBuf::from(s)
    }

    /// What sftp, scp and ssh need to log in as this producer.
    pub fn ssh_options(&self) -> Vec<String> {
        let mut o = vec!["-i".to_owned(), self.key.display().to_string()];
        for opt in ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "BatchMode=yes", "LogLevel=ERROR"] {
            o.extend(["-o".to_owned(), opt.to_owned()]);
        }
        o
    }

    pub fn login(&self) -> String {
        format!("{}@127.0.0.1", self.user)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _g = accounts();
        // A session of the account may still be ending (its sshd was just
        // stopped): userdel refuses while the account runs a process.
        for _ in 0..50 {
            let out = Command::new("userdel").arg(&self.user).output();
            if out.as_ref().is_ok_and(|o| o.status.success()) || !exists("passwd", &self.user) {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        if exists("group", &self.user) {
            let _ = Command::new("groupdel").arg(&self.user).status();
        }
        let _ = fs::remove_file(Path::new(KEYS_DIR).join(&self.user));
    }
}

/// A private sshd: the two ports of the printed block (sftp, rsync) on
/// 127.0.0.1, a host key made on the spot, its log in `<dir>/sshd.log`.
pub struct Sshd {
    child: Child,
    pub sftp_port: u16,
    pub rsync_port: u16,
    pub log: PathBuf,
}

impl Sshd {
    /// The main section a host would have, then `printed` (what `depot
    /// producer add` printed, whole: its report lines are comments).
    ///
    /// No `StrictModes no`: nothing here needs it. The keys are in
    /// /etc/depot/authorized_keys (root's, 0755/0644), and the producer's
    /// chroot is under a folder that is root's and 0755 all the way up
    /// (Site::at under /var/lib); sshd's ChrootDirectory check, which no
    /// option relaxes, refuses a path through /tmp (1777).
    pub fn start(dir: &Path, sftp_port: u16, rsync_port: u16, printed: &str) -> Sshd {
        assert!(Path::new(SSHD).exists(), "{SSHD} missing: apt-get install -y openssh-server (.ci/run does)");
        // The privilege separation folder, which the package's service
        // makes at boot; there is no service here.
        fs::create_dir_all("/run/sshd").unwrap();
        let host_key = dir.join("ssh_host_ed25519_key");
        let out =
            Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&host_key).output().unwrap();
        assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "# The host's own main section (a test's: its ports, its host key, no pid file)\n\
                 Port {sftp_port}\n\
                 Port {rsync_port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {}\n\
                 PidFile none\n\
                 UsePAM no\n\
                 LogLevel VERBOSE\n\
                 Subsystem sftp internal-sftp\n\
                 \n{printed}",
                host_key.display()
            ),
        )
        .unwrap();
        let check = Command::new(SSHD).arg("-t").arg("-f").arg(&config).output().unwrap();
        assert!(
            check.status.success(),
            "sshd -t refuses the config: {}\n{}",
            String::from_utf8_lossy(&check.stderr),
            fs::read_to_string(&config).unwrap()
        );
        let log = dir.join("sshd.log");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let sshd = Sshd { child, sftp_port, rsync_port, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [sftp_port, rsync_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "sshd did not listen on {port}: {}", sshd.log());
                thread::sleep(Duration::from_millis(20));
            }
        }
        sshd
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client (sftp, scp, rsync) in a process group of its own, with its
/// ssh: paused, continued and killed together, as a stalled or cut link
/// would do. Killed (the group) when dropped.
pub struct Client {
    child: Option<Child>,
    pub what: String,
    out: PathBuf,
}

impl Client {
    pub fn spawn(mut cmd: Command, what: &str, dir: &Path) -> Client {
        let out = dir.join(format!("client-{}.log", random_hex(6)));
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::options().append(true).open(&out).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Client { child: Some(child), what: what.to_owned(), out }
    }

    /// Send a signal to the client and its ssh (its process group).
    pub fn signal(&self, sig: &str) {
        let pgid = self.child.as_ref().expect("client running").id();
        let ok = Command::new("kill").args(["-s", sig, "--", &format!("-{pgid}")]).status().unwrap().success();
        assert!(ok, "kill -s {sig} -{pgid} failed");
    }

    pub fn output(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Kill the group and reap the client.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ =
                Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", c.id())]).stderr(Stdio::null()).status();
            let _ = c.wait();
        }
    }

    /// Waits for the client's exit; its status and what it printed.
    pub fn wait(&mut self, secs: u64) -> (bool, String) {
        let mut c = self.child.take().expect("client running");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                // Its ssh may outlive it for a moment; the group goes too.
                let _ = Command::new("kill")
                    .args(["-s", "KILL", "--", &format!("-{}", c.id())])
                    .stderr(Stdio::null())
                    .status();
                return (s.success(), self.output());
            }
            if Instant::now() > deadline {
                self.child = Some(c);
                self.kill();
                return (false, format!("{} still running after {secs} s; killed\n{}", self.what, self.output()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a successful exit, or fails the test with its output.
    pub fn finish(mut self, secs: u64) {
        let (ok, out) = self.wait(secs);
        assert!(ok, "{} failed:\n{out}", self.what);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.kill();
    }
}
