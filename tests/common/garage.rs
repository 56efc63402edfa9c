//! A Garage S3 server of our own for the S3 publish target's tests: one
//! node, sqlite metadata, its data in a temp dir, on free loopback ports,
//! with one bucket and one key (read, write, owner) made at start-up.
//!
//! Garage 2.x sets all of that up itself, before its S3 port listens:
//! `garage server --single-node --default-bucket` makes the single-node
//! layout, imports the key given in `GARAGE_DEFAULT_ACCESS_KEY` /
//! `GARAGE_DEFAULT_SECRET_KEY` and creates `GARAGE_DEFAULT_BUCKET` with
//! read/write/owner for it (no `garage layout assign/apply`, `key create`,
//! `bucket create/allow` round trips; a restart finds them and keeps them).
//! The binary: `GARAGE_BIN`, else `garage` on PATH, else
//! `~/.cargo/bin/garage` (`cargo install garage --locked`, as .ci/run does).
//!
//! The `curl`-based helpers (`put`, `get`, `keys`, ...) are an independent
//! client (curl's own SigV4) to look at the bucket from outside the daemon.
//!
//! ```ignore
//! let mut g = Garage::start();
//! g.put("a/b.txt", b"hello");
//! assert_eq!(g.get("a/b.txt").as_deref(), Some(&b"hello"[..]));
//! g.stop(); // the bucket is unreachable (connection refused)
//! g.restart(); // same ports, same data
//! assert_eq!(g.keys("a/"), ["a/b.txt"]);
//! ```
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Garage {
    /// `http://127.0.0.1:PORT` (path-style: `endpoint/bucket/key`).
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
    /// The server; `None` while stopped.
    pub child: Option<Child>,
    pub s3_port: u16,
    pub rpc_port: u16,
    /// `garage.toml`, for `garage -c` (see `garage_cmd`).
    pub config: PathBuf,
    /// The server's stdout and stderr, across restarts.
    pub log_path: PathBuf,
    pub bin: PathBuf,
    /// Holds `garage.toml`, `meta/`, `data/` and `garage.log`; removed when
    /// dropped (after the server is stopped).
    pub dir: tempfile::TempDir,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `GARAGE_BIN`, else `garage` on PATH, else `$HOME/.cargo/bin/garage`.
pub fn garage_bin() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if let Some(b) = std::env::var_os("GARAGE_BIN") {
        let b = PathBuf::from(b);
        assert!(executable(&b), "GARAGE_BIN={} is not an executable file", b.display());
        return b;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("garage"))
        .find(|p| executable(p));
    let in_cargo =
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/garage")).filter(|p| executable(p));
    on_path.or(in_cargo).expect(
        "the S3 tests need a Garage server binary: `garage` is neither on PATH nor in ~/.cargo/bin; \
         install it with `cargo install garage --locked` (or set GARAGE_BIN)",
    )
}

/// A key's path in a URL, as SigV4 wants it for S3: unreserved characters
/// (`A-Za-z0-9-._~`) and `/` kept, every other byte of the UTF-8 as `%XX`.
pub fn encode_key(key: &str) -> String {
    let mut s = String::with_capacity(key.len());
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

impl Garage {
    /// A fresh server, its bucket ready for requests (panics after ~30 s).
    pub fn start() -> Garage {
        let bin = garage_bin();
        let dir = tempfile::Builder::new().prefix("garage-").tempdir().unwrap();
        let (s3_port, rpc_port) = (free_port(), free_port());
        let config = dir.path().join("garage.toml");
        let d = dir.path().display();
        fs::write(
            &config,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
metadata_fsync = false
data_fsync = false
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3_port}"
"#,
                rpc_secret = random_hex(32),
            ),
        )
        .unwrap();
        let mut g = Garage {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            region: "garage".into(),
            bucket: "depot-test".into(),
            // The shapes of Garage's own keys: GK + 24 hex digits, 64 hex digits.
            key_id: format!("GK{}", random_hex(12)),
            secret: random_hex(32),
            child: None,
            s3_port,
            rpc_port,
            log_path: dir.path().join("garage.log"),
            config,
            bin,
            dir,
        };
        g.restart();
        g
    }

    /// Starts the server (again) on the same ports with the same data, and
    /// waits until its bucket answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "garage is already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log_path).unwrap();
        writeln!(&log, "==== garage server starting").unwrap();
        self.child = Some(
            Command::new(&self.bin)
                .arg("-c")
                .arg(&self.config)
                .args(["server", "--single-node", "--default-bucket"])
                .env("GARAGE_DEFAULT_ACCESS_KEY", &self.key_id)
                .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret)
                .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
                .env("RUST_LOG", std::env::var("GARAGE_LOG").unwrap_or_else(|_| "garage=info".into()))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display())),
        );
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("garage server exited ({s}) at start-up; its log:\n{}", self.log());
            }
            // The port answers once the layout, key and bucket are made;
            // then a signed HeadBucket says the key may use the bucket.
            if TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok() {
                let o = self.curl(&["-o", "/dev/null", "-w", "%{http_code}", "-I", &self.url("")]);
                if o.stdout == b"200" {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "garage's bucket did not answer within 30 s; its log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (by its pid) and waits for it: connections to the
    /// endpoint are refused until `restart`. The data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `garage -c garage.toml ARGS...` (the CLI talks to the server over RPC).
    pub fn garage_cmd(&self, args: &[&str]) -> Output {
        Command::new(&self.bin).arg("-c").arg(&self.config).args(args).output().unwrap()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The path-style URL of `key` in the bucket (`key` percent-encoded with
    /// `encode_key`; `""` gives the bucket's URL).
    pub fn url(&self, key: &str) -> String {
        format!("{}/{}/{}", self.endpoint, self.bucket, encode_key(key))
    }

    /// `curl -sS` with SigV4 (this server's region, service s3) and the key,
    /// plus `args` (a URL among them: see `url`). Garage wants an
    /// `x-amz-content-sha256` header, which curl (7.88) does not add: the
    /// payload is sent as `UNSIGNED-PAYLOAD`. curl signs the URL as it is
    /// given: the path percent-encoded as `encode_key` does, and the query's
    /// parameters in sorted order, each value encoded (`/` as `%2F` too).
    pub fn curl(&self, args: &[&str]) -> Output {
        Command::new("curl")
            .args(["-sS", "--max-time", "30", "--aws-sigv4"])
            .arg(format!("aws:amz:{}:s3", self.region))
            .arg("--user")
            .arg(format!("{}:{}", self.key_id, self.secret))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(args)
            .output()
            .expect("the S3 test harness needs curl (apt-get install -y curl)")
    }

    /// curl, then the body and the HTTP status (`-w` appends it).
    fn curl_status(&self, args: &[&str]) -> (Vec<u8>, u16) {
        let mut a = vec!["-w", "\n%{http_code}"];
        a.extend_from_slice(args);
        let o = self.curl(&a);
        assert!(o.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        let mut body = o.stdout;
        let nl = body.iter().rposition(|&b| b == b'\n').unwrap();
        let status = std::str::from_utf8(&body[nl + 1..]).unwrap().parse().unwrap();
        body.truncate(nl);
        (body, status)
    }

    /// PutObject; panics unless 200.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        let f = tempfile::NamedTempFile::new().unwrap();
        fs::write(f.path(), bytes).unwrap();
        let data = format!("@{}", f.path().display());
        let (body, status) = self.curl_status(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &data,
            &self.url(key),
        ]);
        assert_eq!(status, 200, "PUT {key}: {}", String::from_utf8_lossy(&body));
    }

    /// GetObject: `None` on 404 (NoSuchKey); panics on another status.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let (body, status) = self.curl_status(&[&self.url(key)]);
        match status {
            200 => Some(body),
            404 => None,
            s => panic!("GET {key}: {s} {}", String::from_utf8_lossy(&body)),
        }
    }

    /// DeleteObject (204 whether or not the key existed).
    pub fn delete(&self, key: &str) {
        let (body, status) = self.curl_status(&["-X", "DELETE", &self.url(key)]);
        assert_eq!(status, 204, "DELETE {key}: {}", String::from_utf8_lossy(&body));
    }

    /// Every key under `prefix`, in order (ListObjectsV2, all pages).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // Sorted parameters (curl signs the query as it is).
            let token_param =
                token.as_ref().map(|t| format!("continuation-token={}&", encode_key(t).replace('/', "%2F")));
            let url = format!(
                "{}?{}list-type=2&prefix={}",
                self.url(""),
                token_param.unwrap_or_default(),
                encode_key(prefix).replace('/', "%2F")
            );
            let (body, status) = self.curl_status(&[&url]);
            let xml = String::from_utf8(body).unwrap();
            assert_eq!(status, 200, "ListObjectsV2 {prefix}: {xml}");
            keys.extend(xml_values(&xml, "Key"));
            token = xml_values(&xml, "NextContinuationToken").into_iter().next();
            if token.is_none() {
                return keys;
            }
        }
    }
}

/// The texts of every `<tag>...</tag>` in `xml`, entities decoded.
pub fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let j = rest.find(&close).unwrap();
        out.push(
            rest[..j]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &rest[j + close.len()..];
    }
    out
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}
