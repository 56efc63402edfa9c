//! The harness of the daemon's integration tests: a private redis-server
//! per test on a free loopback port, a site (config and folders in a temp
//! dir) and the real `depot` binary, each stopped by its pid when dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Garage S3 server of a test's own (the S3 publish target).
pub mod garage;
/// Sites publishing to it, and the bucket as a reader sees it.
pub mod s3;

/// A redis-server of our own, stopped (by pid) when dropped.
pub struct Redis {
    pub child: Child,
    pub port: u16,
    /// `requirepass`, if the server was started with one.
    pub password: Option<String>,
    _dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_on(free_port())
    }
    pub fn start_on(port: u16) -> Redis {
        Self::start_with(port, None)
    }
    pub fn start_with(port: u16, password: Option<&str>) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(password.map(|p| ["--requirepass", p]).into_iter().flatten())
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        let r = Redis { child, port, password: password.map(str::to_owned), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.cmd(&["PING"]).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }
    pub fn conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))
    }
    pub fn cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.conn()?)
    }
    pub fn hgetall(&self, key: &str) -> HashMap<String, String> {
        let mut c = self.conn().unwrap();
        redis::cmd("HGETALL").arg(key).query(&mut c).unwrap()
    }
    pub fn deposits(&self) -> Vec<HashMap<String, String>> {
        let mut c = self.conn().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("depot:deposit:*").query(&mut c).unwrap();
        keys.iter().map(|k| self.hgetall(k)).collect()
    }
    pub fn events(&self) -> Vec<HashMap<String, String>> {
        let mut c = self.conn().unwrap();
        let v: Vec<(String, HashMap<String, String>)> =
            redis::cmd("XRANGE").arg("depot:events").arg("-").arg("+").query(&mut c).unwrap();
        v.into_iter().map(|(_, h)| h).collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon under test, with its folders.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Site {
    pub fn new(redis_url: &str, extra: &str) -> Site {
        Self::with_redis_keys(redis_url, "", extra)
    }
    pub fn with_redis_keys(redis_url: &str, redis_keys: &str, extra: &str) -> Site {
        Self::make(
            tempfile::tempdir().unwrap(),
            format!(
                "drop_root = \"drop\"\npublish_root = \"publish\"\n[redis]\nurl = \"{redis_url}\"\n{redis_keys}\n[watch]\nsettle_ms = 300\n[publish]\nfsync = false\nkeep_releases = 10\n{extra}"
            ),
        )
    }
    /// A site in a fresh folder under `parent` (mode 0755, so that accounts
    /// other than root reach the folders below), for tests that need the
    /// whole path to be root's and not writable by others (sshd's
    /// ChrootDirectory rule; `/tmp` is 1777). No `[watch]` table of its own:
    /// `extra` gives one.
    pub fn at(parent: &Path, redis_url: &str, extra: &str) -> Site {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix("depot-test-").tempdir_in(parent).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        Self::make(
            dir,
            format!(
                "drop_root = \"drop\"\npublish_root = \"publish\"\n[redis]\nurl = \"{redis_url}\"\n[publish]\nfsync = false\nkeep_releases = 10\n{extra}"
            ),
        )
    }
    fn make(dir: tempfile::TempDir, text: String) -> Site {
        let config = dir.path().join("config.toml");
        fs::write(&config, text).unwrap();
        // `depot run` refuses roots that do not exist (as on a real host,
        // where tmpfiles makes them).
        fs::create_dir_all(dir.path().join("drop")).unwrap();
        fs::create_dir_all(dir.path().join("publish")).unwrap();
        Site { dir, config }
    }
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn new_dir(&self, p: &str) -> PathBuf {
        let d = self.root().join("drop").join(p).join("new");
        fs::create_dir_all(&d).unwrap();
        d
    }
    /// rsync's way: a hidden temp name, then a rename.
    pub fn drop_rsync(&self, p: &str, name: &str, bytes: &[u8]) {
        let d = self.new_dir(p);
        let tmp = d.join(format!(".{name}.Xy12Ab"));
        fs::write(&tmp, bytes).unwrap();
        fs::rename(tmp, d.join(name)).unwrap();
    }
    pub fn start(&self) -> Daemon {
        self.start_env(&[])
    }
    pub fn start_env(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon(Some(
            Command::new(env!("CARGO_BIN_EXE_depot"))
                .args(["run", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "info")
                .envs(env.iter().copied())
                .stderr(fs::File::create(self.root().join("daemon.log")).unwrap())
                .spawn()
                .unwrap(),
        ))
    }
    pub fn log(&self) -> String {
        fs::read_to_string(self.root().join("daemon.log")).unwrap_or_default()
    }
    /// `depot run --role ROLE`, logging to `<role>.log`.
    pub fn start_role(&self, role: &str) -> Daemon {
        Daemon(Some(
            Command::new(env!("CARGO_BIN_EXE_depot"))
                .args(["run", "--role", role, "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "info")
                .stderr(fs::File::create(self.root().join(format!("{role}.log"))).unwrap())
                .spawn()
                .unwrap(),
        ))
    }
}

/// The daemon process; killed (by its pid) if a test ends without stopping it.
pub struct Daemon(pub Option<Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn wait_for(site: &Site, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}; daemon log:\n{}", site.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn terminal(d: &HashMap<String, String>) -> bool {
    matches!(d.get("state").map(String::as_str), Some("SUCCESS" | "FAILURE"))
}

pub fn stop(mut d: Daemon) -> Option<i32> {
    let mut child = d.0.take()?;
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP GET on loopback (the metrics endpoint); the whole reply.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A private CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by
/// it (`server.pem`, `server.key`), made with openssl in `dir`.
pub fn private_ca(dir: &Path) {
    let sh = |script: &str| {
        let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=depot-test-ca");
    sh("openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1");
    sh("printf 'subjectAltName=IP:127.0.0.1\\n' > ext && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key \
        -CAcreateserial -out server.pem -days 2 -extfile ext");
}

/// `htpasswd` with the password on its command line: a test's throwaway (`-B` bcrypt,
/// `-m` apr1, as Apache writes them).
pub fn htpasswd(file: &Path, flag: &str, user: &str, pw: &str) {
    let mut cmd = Command::new("htpasswd");
    if !file.exists() {
        cmd.arg("-c");
    }
    let out = cmd.args(["-b", flag]).arg(file).args([user, pw]).output().expect("htpasswd (apache2-utils)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
