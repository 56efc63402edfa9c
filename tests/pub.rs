//! The data service (`/data/pub/<P>/…`) end to end: releases published by
//! the real daemon, read back with the real clients (Debian's curl and
//! wget), byte for byte against the release's manifest.json.

#[path = "../jobs/tests/support/mod.rs"]
mod support;

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use md5::Digest;
use support::RawZip;

struct Door {
    site: Site,
    _daemon: Daemon,
    port: u16,
}

/// The door on plain HTTP on loopback; MSEC private, OPEN public, both
/// publishing zips as they are (`plain`).
const PRODUCERS: &str = "[producers.MSEC]\nprofile = \"plain\"\n[producers.OPEN]\nprofile = \"plain\"\npublic = true\n";

impl Door {
    fn start(site: Site, port: u16) -> Door {
        let users = site.root().join("users");
        htpasswd(&users, "-B", "MSEC", "pw");
        htpasswd(&users, "-B", "OTHR", "pw2");
        let daemon = site.start();
        wait_for(&site, "the door to listen", 30, || TcpStream::connect(("127.0.0.1", port)).is_ok());
        Door { site, _daemon: daemon, port }
    }
    fn new(redis: &Redis, publish: &str) -> Door {
        let port = free_port();
        let site = Site::new(
            &redis.url(),
            &format!(
                "{publish}\n[http]\nlisten = \"127.0.0.1:{port}\"\nusers_file = \"users\"\noperators = [\"ops\"]\n{PRODUCERS}"
            ),
        );
        Self::start(site, port)
    }
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    /// curl; (status, headers, body).
    fn curl(&self, args: &[&str]) -> (u16, String, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let (h, b) = (dir.path().join("h"), dir.path().join("b"));
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60", "-D"])
            .arg(&h)
            .arg("-o")
            .arg(&b)
            .args(["-w", "%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        (code, fs::read_to_string(&h).unwrap_or_default(), fs::read(&b).unwrap_or_default())
    }
    /// Publish `files` for `p` as one deposit; the release id.
    fn publish(&self, redis: &Redis, p: &str, name: &str, files: &[(&str, &[u8])]) -> String {
        let mut z = RawZip::new();
        for (n, d) in files {
            z = z.stored(*n, d.to_vec());
        }
        self.site.drop_rsync(p, name, &z.build());
        let mut id = String::new();
        wait_for(&self.site, &format!("{name} published"), 60, || {
            let d = redis.deposits().into_iter().find(|d| d.get("file").map(String::as_str) == Some(name));
            match d {
                Some(d) if terminal(&d) => {
                    assert_eq!(d["state"], "SUCCESS", "{d:?}");
                    id = d["id"].clone();
                    true
                }
                _ => false,
            }
        });
        // SUCCESS is recorded after the switch: `current` names it now.
        id
    }
}

/// Bytes no two files share by accident (a ranged read at the wrong
/// offset cannot look right).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn md5_hex(b: &[u8]) -> String {
    md5::Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    // The last response's (curl -L writes every hop's).
    headers.lines().rev().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn manifest(door: &Door, user: &[&str], p: &str) -> (String, HashMap<String, (u64, String)>) {
    let mut args: Vec<&str> = user.to_vec();
    let url = door.url(&format!("/data/pub/{p}/"));
    args.push(&url);
    let (code, _, body) = door.curl(&args);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let files = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_owned(),
                (f["size"].as_u64().unwrap(), f["md5"].as_str().unwrap().to_owned()),
            )
        })
        .collect();
    (m["deposit"].as_str().unwrap().to_owned(), files)
}

/// What `openssl dgst -md5 -binary | base64` prints: Content-MD5 of a
/// manifest MD5.
fn b64_of_hex(h: &str) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..h.len() / 2).map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn curl_and_wget_read_releases_whole_by_range_and_conditionally() {
    let redis = Redis::start();
    let door = Door::new(&redis, "");
    let big = noise(3 << 20, 1);
    let small = b"a small text file\n".to_vec();
    let accented = noise(70_000, 2);
    let id = door.publish(
        &redis,
        "MSEC",
        "MSEC_1.zip",
        &[("big.bin", &big), ("docs/small.txt", &small), ("docs/données été.csv", &accented)],
    );
    let u = ["-u", "MSEC:pw"];
    let (mid, files) = manifest(&door, &u, "MSEC");
    assert_eq!(mid, id);
    let url = |path: &str| door.url(&format!("/data/pub/MSEC/{path}"));

    // Whole, each file: the bytes the manifest describes.
    for (path, bytes) in [("big.bin", &big), ("docs/small.txt", &small)] {
        let (code, h, body) = door.curl(&["-u", "MSEC:pw", &url(path)]);
        assert_eq!(code, 200, "{h}");
        assert_eq!(body.len() as u64, files[path].0);
        assert_eq!(md5_hex(&body), files[path].1);
        assert_eq!(&body, bytes);
    }
    // The non-ASCII name, percent-encoded as curl sends it.
    let enc = "docs/donn%C3%A9es%20%C3%A9t%C3%A9.csv";
    let (code, h, body) = door.curl(&["-u", "MSEC:pw", &url(enc)]);
    assert_eq!((code, md5_hex(&body)), (200, files["docs/données été.csv"].1.clone()), "{h}");
    assert!(
        header(&h, "content-disposition").unwrap().contains("filename*=UTF-8''donn%C3%A9es%20%C3%A9t%C3%A9.csv"),
        "{h}"
    );

    // HEAD: the manifest's MD5 as Content-MD5, and the rest of the head.
    let (code, h, _) = door.curl(&["-I", "-u", "MSEC:pw", &url("big.bin")]);
    assert_eq!(code, 200);
    assert_eq!(header(&h, "content-md5"), Some(b64_of_hex(&files["big.bin"].1).as_str()), "{h}");
    assert_eq!(header(&h, "content-length"), Some((3u64 << 20).to_string().as_str()), "{h}");
    let etag = format!("\"{}\"", files["big.bin"].1);
    assert_eq!(header(&h, "etag"), Some(etag.as_str()));
    assert_eq!(header(&h, "accept-ranges"), Some("bytes"));
    assert_eq!(header(&h, "content-type"), Some("application/octet-stream"));
    assert_eq!(header(&h, "content-disposition"), Some("attachment; filename=\"big.bin\""));
    // A producer's file never runs as a page of depot's origin.
    assert_eq!(header(&h, "x-content-type-options"), Some("nosniff"), "{h}");
    assert_eq!(header(&h, "content-security-policy"), Some("sandbox"), "{h}");
    let last_modified = header(&h, "last-modified").unwrap().to_owned();
    let (_, h, _) = door.curl(&["-I", "-u", "MSEC:pw", &url("docs/small.txt")]);
    assert_eq!(header(&h, "content-type"), Some("text/plain"), "{h}");

    // Ranges, as curl -r sends them.
    for (r, want) in [
        ("200-500", &big[200..=500]),
        ("-2000", &big[big.len() - 2000..]),
        ("100-", &big[100..]),
        ("1048000-2200000", &big[1_048_000..=2_200_000]),
    ] {
        let (code, h, body) = door.curl(&["-u", "MSEC:pw", "-r", r, &url("big.bin")]);
        assert_eq!(code, 206, "{r}: {h}");
        assert!(body == want, "{r}: {} bytes", body.len());
        assert!(header(&h, "content-range").unwrap().ends_with(&format!("/{}", big.len())), "{h}");
        assert_eq!(header(&h, "content-md5"), None, "a part has no Content-MD5 of its own: {h}");
    }
    // Past the end: 416 and the length.
    let (code, h, _) = door.curl(&["-u", "MSEC:pw", "-r", "99999999-", &url("big.bin")]);
    assert_eq!(code, 416, "{h}");
    assert_eq!(header(&h, "content-range"), Some(format!("bytes */{}", big.len()).as_str()));
    // Several ranges: the whole file (RFC 9110 allows it).
    let (code, _, body) = door.curl(&["-u", "MSEC:pw", "-r", "0-1,5-6", &url("big.bin")]);
    assert_eq!((code, body.len()), (200, big.len()));

    // Conditionals: 304 on the ETag and on the date; If-Range.
    let (code, h, body) = door.curl(&["-u", "MSEC:pw", "-H", &format!("If-None-Match: {etag}"), &url("big.bin")]);
    assert_eq!((code, body.len()), (304, 0), "{h}");
    assert_eq!(header(&h, "etag"), Some(etag.as_str()));
    let (code, _, _) =
        door.curl(&["-u", "MSEC:pw", "-H", &format!("If-Modified-Since: {last_modified}"), &url("big.bin")]);
    assert_eq!(code, 304);
    let (code, _, _) = door.curl(&["-u", "MSEC:pw", "-H", "If-None-Match: \"other\"", &url("big.bin")]);
    assert_eq!(code, 200);
    let (code, _, body) =
        door.curl(&["-u", "MSEC:pw", "-r", "0-9", "-H", &format!("If-Range: {etag}"), &url("big.bin")]);
    assert_eq!((code, body.len()), (206, 10));
    let (code, _, body) = door.curl(&["-u", "MSEC:pw", "-r", "0-9", "-H", "If-Range: \"old\"", &url("big.bin")]);
    assert_eq!((code, body.len()), (200, big.len()));

    // wget names the file from Content-Disposition (here the URL's last
    // part would be `small.txt?release=…`), and continues a cut download.
    let wdir = tempfile::tempdir().unwrap();
    let w = Command::new("wget")
        .args(["-q", "--content-disposition", "--user", "MSEC", "--password", "pw"])
        .arg(url(&format!("docs/small.txt?release={id}")))
        .current_dir(wdir.path())
        .output()
        .unwrap();
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    assert_eq!(fs::read(wdir.path().join("small.txt")).unwrap(), small);
    fs::write(wdir.path().join("big.bin"), &big[..1_000_000]).unwrap();
    let w = Command::new("wget")
        .args(["-q", "-c", "--user", "MSEC", "--password", "pw"])
        .arg(url("big.bin"))
        .current_dir(wdir.path())
        .output()
        .unwrap();
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    assert_eq!(md5_hex(&fs::read(wdir.path().join("big.bin")).unwrap()), files["big.bin"].1);
    // curl -O -J -L: the same name from Content-Disposition, via the 308.
    let (code, h, _) = door.curl(&["-u", "MSEC:pw", &door.url("/data/pub/MSEC")]);
    assert_eq!((code, header(&h, "location")), (308, Some("/data/pub/MSEC/")));
    let cdir = tempfile::tempdir().unwrap();
    let c = Command::new("curl")
        .args(["-sS", "-f", "-O", "-J", "-L", "-u", "MSEC:pw"])
        .arg(url(&format!("docs/small.txt?release={id}")))
        .current_dir(cdir.path())
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    assert_eq!(fs::read(cdir.path().join("small.txt")).unwrap(), small);

    // Who: anonymous 401 (with the challenge), another producer 403, a
    // public producer's files to anyone.
    let (code, h, _) = door.curl(&[&url("big.bin")]);
    assert_eq!(code, 401);
    assert!(header(&h, "www-authenticate").is_some_and(|v| v.starts_with("Basic")), "{h}");
    assert_eq!(door.curl(&[&door.url("/data/pub/NONE/x")]).0, 401, "an unknown name answers as a private one");
    assert_eq!(door.curl(&["-u", "OTHR:pw2", &url("big.bin")]).0, 403);
    assert_eq!(door.curl(&["-u", "MSEC:nope", &url("big.bin")]).0, 401);
    let open_id = door.publish(&redis, "OPEN", "OPEN_1.zip", &[("open.txt", b"for everyone\n")]);
    let (code, _, body) = door.curl(&[&door.url("/data/pub/OPEN/open.txt")]);
    assert_eq!((code, body.as_slice()), (200, &b"for everyone\n"[..]));
    assert_eq!(manifest(&door, &[], "OPEN").1.len(), 1);

    // Unknown file or release: 404.
    assert_eq!(door.curl(&["-u", "MSEC:pw", &url("nope.bin")]).0, 404);
    assert_eq!(door.curl(&["-u", "MSEC:pw", &url("big.bin?release=20200101T000000Z-MSEC-abcdef")]).0, 404);
    assert_eq!(door.curl(&["-u", "MSEC:pw", &url("big.bin?release=../../etc")]).0, 404);

    // Traversal, sent as it is: never a file outside the release.
    for path in [
        "/data/pub/MSEC/../../../../etc/passwd",
        "/data/pub/MSEC/docs/../big.bin",
        "/data/pub/MSEC/docs/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/data/pub/MSEC/%2Fetc%2Fpasswd",
        "/data/pub/MSEC//etc/passwd",
        "/data/pub/MSEC/current/big.bin",
        "/data/pub/MSEC/manifest.json/../big.bin",
        // Double encoding, overlong UTF-8 dots, NUL, backslash.
        "/data/pub/MSEC/docs/%252e%252e/big.bin",
        "/data/pub/MSEC/docs/%C0%AE%C0%AE/big.bin",
        "/data/pub/MSEC/big.bin%00.txt",
        "/data/pub/MSEC/docs%5C..%5Cbig.bin",
    ] {
        let (code, _, body) = door.curl(&["--path-as-is", "-u", "MSEC:pw", &door.url(path)]);
        assert!(code == 400 || code == 404, "{path}: {code}");
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "{path}");
    }
    // Another producer's real release id, or its name smuggled into the
    // producer's: never its files.
    let other = format!("/data/pub/MSEC/open.txt?release={open_id}");
    assert_eq!(door.curl(&["-u", "MSEC:pw", &door.url(&other)]).0, 404);
    for path in ["/data/pub/MSEC%2F..%2FOPEN/open.txt", "/data/pub/..%2FMSEC/big.bin", "/data/pub/%2E%2E/MSEC/big.bin"]
    {
        let (code, _, body) = door.curl(&["--path-as-is", "-u", "OTHR:pw2", &door.url(path)]);
        assert!(code == 400 || code == 401 || code == 403 || code == 404, "{path}: {code}");
        assert!(body.len() < 1000, "{path}");
    }
    // A link planted in the release (the name listed) leads nowhere.
    let rel = door.site.root().join("publish/MSEC/releases").join(&id);
    fs::remove_file(rel.join("docs/small.txt")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", rel.join("docs/small.txt")).unwrap();
    let (code, _, body) = door.curl(&["-u", "MSEC:pw", &url("docs/small.txt")]);
    assert_eq!(code, 500);
    assert!(!String::from_utf8_lossy(&body).contains("root:"));
    fs::remove_file(rel.join("docs")).unwrap_or_else(|_| fs::remove_dir_all(rel.join("docs")).unwrap());
    std::os::unix::fs::symlink("/etc", rel.join("docs")).unwrap();
    assert_eq!(door.curl(&["-u", "MSEC:pw", &url("docs/small.txt")]).0, 500);

    // A proven login is trusted for a minute by the data service (no
    // bcrypt per file of a long download); the rest of the door checks
    // every time, and a header never proven is checked.
    let users = door.site.root().join("users");
    let kept: String = fs::read_to_string(&users)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("MSEC:"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&users, kept).unwrap();
    assert_eq!(door.curl(&["-u", "MSEC:pw", &url("big.bin")]).0, 200);
    assert_eq!(door.curl(&["-u", "MSEC:pw", &door.url("/data/MSEC/deposits")]).0, 401);
    assert_eq!(door.curl(&["-u", "MSEC:pw2", &url("big.bin")]).0, 401);
}

/// A raw HTTP/1.1 GET whose reply is read a few KiB at a time, slowly.
fn slow_get(port: u16, path: &str, auth: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n").unwrap();
    s
}

#[test]
fn a_download_begun_before_a_switch_ends_with_the_old_bytes() {
    let redis = Redis::start();
    let port = free_port();
    let site =
        Site::new(&redis.url(), &format!("[http]\nlisten = \"127.0.0.1:{port}\"\nusers_file = \"users\"\n{PRODUCERS}"));
    // One release kept: the old one is pruned while its download runs.
    let text = fs::read_to_string(&site.config).unwrap().replace("keep_releases = 10", "keep_releases = 1");
    fs::write(&site.config, text).unwrap();
    let door = Door::start(site, port);
    let old = noise(24 << 20, 3);
    let id1 = door.publish(&redis, "MSEC", "MSEC_1.zip", &[("big.bin", &old)]);
    let auth = "TVNFQzpwdw=="; // MSEC:pw
    let mut s = slow_get(port, "/data/pub/MSEC/big.bin", auth);
    let mut got = vec![0u8; 8192];
    s.read_exact(&mut got).unwrap();

    let new = noise(24 << 20, 4);
    let id2 = door.publish(&redis, "MSEC", "MSEC_2.zip", &[("big.bin", &new)]);
    assert_ne!(id1, id2);
    let releases = |d: &Door| -> Vec<PathBuf> {
        fs::read_dir(d.site.root().join("publish/MSEC/releases")).unwrap().flatten().map(|e| e.path()).collect()
    };
    wait_for(&door.site, "the old release pruned", 30, || releases(&door).len() == 1);
    let pruned = door.site.root().join("publish/.pruned");
    wait_for(&door.site, "the pruned release deleted", 90, || {
        fs::read_dir(&pruned).map(|d| d.count() == 0).unwrap_or(true)
    });

    s.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got[..got.len().min(4096)]).into_owned();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = &got[head_end..];
    assert_eq!(body.len(), old.len(), "the whole old file");
    assert!(body == old.as_slice(), "the old release's bytes");
    // A new request reads the new release.
    let (code, _, body) = door.curl(&["-u", "MSEC:pw", &door.url("/data/pub/MSEC/big.bin")]);
    assert_eq!(code, 200);
    assert!(body == new);
}

/// A client that stops reading is cut off after `http.idle_timeout_s`,
/// its connection closed short of the Content-Length.
#[test]
fn a_client_that_stops_reading_is_cut_off() {
    let redis = Redis::start();
    let port = free_port();
    let site = Site::new(
        &redis.url(),
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\nusers_file = \"users\"\nidle_timeout_s = 1\n{PRODUCERS}"),
    );
    let door = Door::start(site, port);
    let big = noise(32 << 20, 6);
    door.publish(&redis, "OPEN", "OPEN_1.zip", &[("big.bin", &big)]);
    let mut s = slow_get(port, "/data/pub/OPEN/big.bin", "");
    let mut got = vec![0u8; 8192];
    s.read_exact(&mut got).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let _ = s.read_to_end(&mut got);
    assert!(got.len() < big.len(), "{} bytes: the whole file went to a client that stopped reading", got.len());
    // Others are served meanwhile and after.
    let (code, _, body) = door.curl(&[&door.url("/data/pub/OPEN/big.bin")]);
    assert_eq!((code, body.len()), (200, big.len()));
}

/// Attack: a release folder takes the inode of a pruned one (ext4 hands
/// a freed inode out again at once: with `keep_releases = 1` every other
/// release has the same one). Manifests were cached by (device, inode):
/// the new release was then served with the old one's manifest: a file of
/// the same name and size with the old MD5 as Content-MD5 and ETag (a
/// client's If-None-Match of the old bytes answered 304), a new file 404.
/// Whether an inode comes back here is up to the filesystem (one run in
/// two or three, on ext4): the unit test
/// `a_reused_inode_never_brings_back_another_releases_manifest` makes it
/// happen every time.
#[test]
fn a_release_on_a_reused_inode_is_served_with_its_own_manifest() {
    use std::os::unix::fs::MetadataExt;
    let redis = Redis::start();
    let port = free_port();
    let site =
        Site::new(&redis.url(), &format!("[http]\nlisten = \"127.0.0.1:{port}\"\nusers_file = \"users\"\n{PRODUCERS}"));
    let text = fs::read_to_string(&site.config).unwrap().replace("keep_releases = 10", "keep_releases = 1");
    fs::write(&site.config, text).unwrap();
    let door = Door::start(site, port);
    let pruned = door.site.root().join("publish/.pruned");
    let mut seen = std::collections::HashSet::new();
    let mut reused = 0;
    for i in 0..10u64 {
        // Same name, same size, other bytes; and a name of this release only.
        let bytes = noise(1000, 100 + i);
        let only = format!("only-{i}.txt");
        let id = door.publish(&redis, "OPEN", &format!("OPEN_{i}.zip"), &[("a.bin", &bytes), (&only, b"x")]);
        let ino = fs::metadata(door.site.root().join("publish/OPEN/releases").join(&id)).unwrap().ino();
        if !seen.insert(ino) {
            reused += 1;
        }
        let (code, h, body) = door.curl(&[&door.url("/data/pub/OPEN/a.bin")]);
        assert_eq!(code, 200, "{i}: {h}");
        assert!(body == bytes, "{i}: the bytes of release {id}");
        assert_eq!(header(&h, "etag"), Some(format!("\"{}\"", md5_hex(&bytes)).as_str()), "{i}: {h}");
        assert_eq!(header(&h, "content-md5"), Some(b64_of_hex(&md5_hex(&bytes)).as_str()), "{i}: {h}");
        assert_eq!(door.curl(&[&door.url(&format!("/data/pub/OPEN/{only}"))]).0, 200, "{i}");
        wait_for(&door.site, "the pruned release deleted", 60, || {
            fs::read_dir(&pruned).map(|d| d.count() == 0).unwrap_or(true)
        });
    }
    eprintln!("release folders on a reused inode: {reused}");
}

/// The daemon's peak resident memory (VmHWM), in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A release of 4,000 files with long names (a manifest of about 3 MB):
/// publishes it for `p` and answers its manifest's size.
fn publish_a_large_manifest(door: &Door, redis: &Redis, p: &str) -> u64 {
    let dir = format!("{}/{}/{}", "d".repeat(240), "e".repeat(240), "f".repeat(240));
    let names: Vec<String> = (0..4000).map(|i| format!("{dir}/{i:0>200}.txt")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    door.publish(redis, p, &format!("{p}_1.zip"), &files);
    fs::read_dir(door.site.root().join(format!("publish/{p}/releases")))
        .unwrap()
        .flatten()
        .map(|e| fs::metadata(e.path().join("manifest.json")).unwrap().len())
        .sum::<u64>()
}

/// Attack: a producer publishes a release whose manifest.json is large
/// (many files with long names: 4,000 here, `limits.max_entries` allows
/// 100,000 and `max_path_len` 1,024 bytes, a manifest of 100 MB), then
/// asks for its files many times at once before the manifest is cached.
/// Every request parsed the manifest on its own: memory grew with the
/// number of requests. A manifest is parsed once at a time.
#[test]
fn many_first_requests_parse_a_large_manifest_once() {
    let redis = Redis::start();
    let door = Door::new(&redis, "");
    let manifest_len = publish_a_large_manifest(&door, &redis, "OPEN");
    let pid = door._daemon.0.as_ref().unwrap().id();
    let before = peak_kib(pid);
    let threads: Vec<_> = (0..24)
        .map(|_| {
            let port = door.port;
            std::thread::spawn(move || http_get(port, "/data/pub/OPEN/nope"))
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap().starts_with("HTTP/1.1 404"));
    }
    let grew = peak_kib(pid).saturating_sub(before) * 1024;
    eprintln!("manifest {manifest_len} bytes; peak grew by {grew} bytes");
    assert!(grew < 8 * manifest_len, "24 first requests: the peak grew by {grew} bytes, manifest {manifest_len}");
}

/// Attack: the same large manifest, and the producer's web page loaded
/// many times at once. The page's history read every kept release's
/// manifest.json whole into memory for five of its fields: each page load
/// held the whole manifest (100 MB at the default limits).
#[test]
fn page_loads_never_hold_a_large_manifest_whole() {
    let redis = Redis::start();
    let door = Door::new(&redis, "");
    let manifest_len = publish_a_large_manifest(&door, &redis, "MSEC");
    let (code, _, body) = door.curl(&["-u", "MSEC:pw", &door.url("/producers/MSEC")]);
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("MSEC_1.zip"), "the release is in the history");
    let pid = door._daemon.0.as_ref().unwrap().id();
    let before = peak_kib(pid);
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let url = door.url("/producers/MSEC");
            std::thread::spawn(move || {
                let out = Command::new("curl")
                    .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", "MSEC:pw"])
                    .arg(url)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), "200");
    }
    let grew = peak_kib(pid).saturating_sub(before) * 1024;
    eprintln!("manifest {manifest_len} bytes; peak grew by {grew} bytes");
    assert!(grew < 2 * manifest_len, "16 page loads: the peak grew by {grew} bytes, manifest {manifest_len}");
}

/// Attack: a producer piles up failed deposits (a garbage file is a
/// rejected deposit: thousands in a day, kept `retention.rejected_days`).
/// Its page, `/data/P/deposits` and every `/data/P/deposits/<id>` Redis
/// does not know read every `rejected/<id>/report.json` on each request,
/// to show 50 (or one): each request cost time in proportion to the pile,
/// on the door's blocking pool and CPU, shared with everyone.
#[test]
fn a_pile_of_rejected_deposits_does_not_slow_every_page() {
    let redis = Redis::start();
    let door = Door::new(&redis, "");
    let rejected = door.site.root().join("drop/MSEC/rejected");
    let report = |id: &str| {
        format!(
            "{{\"id\": \"{id}\", \"archive\": \"junk.zip\", \"state\": \"FAILURE\", \"code\": \"NOT_A_ZIP\", \"message\": \"junk.zip is not a zip\", \"finished\": \"2026-11-22T10:15:00Z\"}}"
        )
    };
    let n = 30_000u32;
    for i in 0..n {
        let id = format!("20261122T{:02}{:02}{:02}Z-MSEC-{i:08x}", i / 3600 % 24, i / 60 % 60, i % 60);
        let d = rejected.join(&id);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("report.json"), report(&id)).unwrap();
    }
    let newest =
        format!("20261122T{:02}{:02}{:02}Z-MSEC-{:08x}", (n - 1) / 3600 % 24, (n - 1) / 60 % 60, (n - 1) % 60, n - 1);
    let unknown = "20261122T000000Z-MSEC-ffffffff";
    let t = std::time::Instant::now();
    for _ in 0..3 {
        let (code, _, body) = door.curl(&["-u", "MSEC:pw", &door.url("/producers/MSEC")]);
        assert_eq!(code, 200);
        assert!(String::from_utf8_lossy(&body).contains(&newest), "the newest failure is shown");
        let (code, _, body) = door.curl(&["-u", "MSEC:pw", &door.url("/data/MSEC/deposits")]);
        assert_eq!(code, 200);
        assert!(String::from_utf8_lossy(&body).contains(&newest));
        assert_eq!(door.curl(&["-u", "MSEC:pw", &door.url(&format!("/data/MSEC/deposits/{newest}"))]).0, 200);
        assert_eq!(door.curl(&["-u", "MSEC:pw", &door.url(&format!("/data/MSEC/deposits/{unknown}"))]).0, 404);
    }
    let took = t.elapsed();
    // The figure is printed, not asserted: a test must not fail because the
    // machine is slow (4.8 s before the fix, 0.9 s after, on 2 cores).
    eprintln!("12 requests over {n} rejected deposits: {took:?}");
}

/// Attack: an anonymous client floods the door with wrong passwords for a
/// user whose hash is costly (`htpasswd -B -C 10`, depot's own `producer
/// add` cost), from many connections of one address. Password checks run
/// two at a time, first come first served: every other client's login
/// waited behind the whole flood (0.06 s became 4 s with 64 connections,
/// and grows with them). One address has at most two checks waiting for a
/// place, so others' logins wait for a few checks at most.
#[test]
fn a_flood_of_wrong_passwords_does_not_hold_up_other_logins() {
    let redis = Redis::start();
    let door = Door::new(&redis, "");
    let out = Command::new("htpasswd")
        .args(["-b", "-B", "-C", "10"])
        .arg(door.site.root().join("users"))
        .args(["ops", "right"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let url = door.url("/data/MSEC/deposits");
    assert_eq!(door.curl(&["-u", "MSEC:pw", &url]).0, 200);
    let stop = std::time::Instant::now() + Duration::from_secs(6);
    let port = door.port;
    let flood: Vec<_> = (0..48)
        .map(|_| {
            std::thread::spawn(move || {
                while std::time::Instant::now() < stop {
                    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { continue };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                    // ops:wrong
                    let _ = write!(
                        s,
                        "GET /data/MSEC/deposits HTTP/1.1\r\nHost: x\r\nAuthorization: Basic b3BzOndyb25n\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.read_to_end(&mut Vec::new());
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        // From another address than the flood's.
        assert_eq!(door.curl(&["--interface", "127.0.0.2", "-u", "MSEC:pw", &url]).0, 200);
        slowest = slowest.max(t.elapsed());
    }
    for t in flood {
        t.join().unwrap();
    }
    // Printed, not asserted (a slow machine must not fail the test): 4.1 s
    // before the per-address bound, 0.21 s after, on 2 cores.
    eprintln!("slowest login during the flood: {slowest:?}");
}

/// Attack: downloads that read nothing at all. The kernel's buffers fill,
/// hyper waits on the socket for good (it has no write timeout) and each
/// connection keeps its place: a few such clients (half the cap from one
/// address, the other half from a second) hold the whole door. Each must
/// be closed after `http.idle_timeout_s` without progress, its place given
/// back.
#[test]
fn downloads_that_read_nothing_give_their_connections_back() {
    let redis = Redis::start();
    let port = free_port();
    let site = Site::new(
        &redis.url(),
        &format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\nusers_file = \"users\"\nidle_timeout_s = 1\nmax_connections = 4\n{PRODUCERS}"
        ),
    );
    let door = Door::start(site, port);
    let big = noise(32 << 20, 7);
    door.publish(&redis, "OPEN", "OPEN_1.zip", &[("big.bin", &big)]);
    // Half the cap from this address: downloads that never read a byte.
    let stalled: Vec<TcpStream> = (0..2).map(|_| slow_get(port, "/data/pub/OPEN/big.bin", "")).collect();
    std::thread::sleep(Duration::from_secs(5));
    // Their places are free again: a download from the same address is served.
    let (code, _, body) = door.curl(&[&door.url("/data/pub/OPEN/big.bin")]);
    assert_eq!((code, body.len()), (200, big.len()), "the stalled downloads still hold the door");
    // And each stalled one was closed short of its Content-Length.
    for mut s in stalled {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(got.len() < big.len(), "{} bytes", got.len());
    }
}

/// With the S3 target: a 307 to a presigned GET, which curl follows to
/// the tests' Garage and gets the release's bytes (none through depot).
#[test]
fn s3_target_answers_307_to_a_presigned_get() {
    use common::garage::Garage;
    let redis = Redis::start();
    let g = Garage::start();
    let port = free_port();
    let site = common::s3::s3_site(
        &redis,
        &g,
        "",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\nusers_file = \"users\"\npresign_s = 120\n{PRODUCERS}"),
    );
    let door = Door::start(site, port);
    let bytes = noise(300_000, 5);
    let id = door.publish(&redis, "MSEC", "MSEC_1.zip", &[("d/file.bin", &bytes)]);
    let url = door.url("/data/pub/MSEC/d/file.bin");
    let (code, h, _) = door.curl(&["-u", "MSEC:pw", &url]);
    assert_eq!(code, 307, "{h}");
    let loc = header(&h, "location").unwrap();
    assert!(loc.starts_with(&format!("{}/{}/archive/MSEC/releases/{id}/d/file.bin?", g.endpoint, g.bucket)), "{loc}");
    assert!(loc.contains("X-Amz-Expires=120") && loc.contains("X-Amz-Signature="), "{loc}");
    // curl drops the credentials on the redirect to another port.
    let (code, h, body) = door.curl(&["-L", "-u", "MSEC:pw", &url]);
    assert_eq!(code, 200, "{h}");
    assert_eq!(md5_hex(&body), md5_hex(&bytes));
    // The manifest, the same way; anonymous still 401; unknown 404.
    let (code, _, body) = door.curl(&["-L", "-u", "MSEC:pw", &door.url("/data/pub/MSEC/")]);
    assert_eq!(code, 200);
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m["files"][0]["md5"], md5_hex(&bytes));
    assert_eq!(door.curl(&[&url]).0, 401);
    assert_eq!(door.curl(&["-u", "MSEC:pw", &door.url("/data/pub/MSEC/nope")]).0, 404);
}
