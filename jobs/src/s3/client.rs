//! A blocking S3 client with just the calls a release needs. Blocking on
//! purpose: the pipeline runs on plain threads (no runtime), and each
//! thread streams one file at a time from the inflater into parts, so an
//! upload is naturally bounded by one part buffer per thread.
//!
//! Every failure is an [`Error::Io`] (transient: the deposit is retried
//! with backoff and never lost), with words an operator can act on.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest as _, Md5};
use time::OffsetDateTime;
use time::macros::format_description;

use super::sign::{self, Canonical, UNSIGNED_PAYLOAD};
use super::xml;
use crate::error::{Error, Result, Stage};
use crate::md5sums::Digest;

/// Bytes of object data the server accepted, all buckets together, since
/// the process started (`depot_s3_bytes_sent_total`).
pub static BYTES_SENT: AtomicU64 = AtomicU64::new(0);

/// An access key. Never printed: `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub key_id: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ key_id: {:?}, secret: *** }}", self.key_id)
    }
}

/// Where the bucket is.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `http(s)://host[:port]`, no path.
    pub url: String,
    pub region: String,
    pub bucket: String,
    /// PEM file of the CAs to trust instead of the public roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// The roots an https endpoint is checked against: the CAs of `ca_file`
/// only, or the public (Mozilla) ones.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<ureq::tls::TlsConfig> {
    use ureq::tls::{PemItem, RootCerts, TlsConfig};
    let Some(path) = ca_file else { return Ok(TlsConfig::default()) };
    let what = || format!("publish.s3.ca_file {}", path.display());
    let pem = std::fs::read(path).map_err(|e| io_err(format!("{}: {e}", what())))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c.to_owned()),
            Ok(_) => {}
            Err(e) => return Err(io_err(format!("{}: {e}", what()))),
        }
    }
    if certs.is_empty() {
        return Err(io_err(format!("{}: no PEM certificate in it", what())));
    }
    Ok(TlsConfig::builder().root_certs(RootCerts::Specific(std::sync::Arc::new(certs))).build())
}

pub struct Client {
    base: String,
    host: String,
    region: String,
    bucket: String,
    creds: Credentials,
    agent: ureq::Agent,
}

/// A reply, whatever its status.
pub struct Reply {
    pub status: u16,
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Keys with their sizes, and common prefixes.
type Listing = (Vec<(String, u64)>, Vec<String>);

/// Replies bigger than this are not read (listings are 1,000 keys at most).
const MAX_REPLY: u64 = 64 << 20;
/// Tries of one request on a network error or a 5xx, 0.5 s then 2 s apart:
/// a server restarting is not yet a failed deposit (that one is retried
/// later, with the worker's own backoff).
const TRIES: u32 = 3;

pub fn content_md5(d: &Digest) -> String {
    B64.encode(d)
}

/// CopyObject and CompleteMultipartUpload can answer 200 and an `<Error>`
/// document (the failure came after the status was sent).
fn is_error_document(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&body[..body.len().min(256)]);
    let t = text.trim_start();
    let t = match t.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map_or("", |(_, r)| r).trim_start(),
        None => t,
    };
    t.starts_with("<Error>")
}

fn io_err(what: String) -> Error {
    Error::io(Stage::Publish, "S3", io::Error::other(what))
}

impl Client {
    pub fn new(ep: &Endpoint, creds: Credentials) -> Result<Client> {
        let url = ep.url.trim_end_matches('/');
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .ok_or_else(|| {
                io_err(format!("publish.s3.endpoint {url:?} is not http(s)://host[:port] (no path, no bucket)"))
            })?
            .to_owned();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            // A part is 8 MiB by default: even at 1 MiB/s it is sent well
            // within this; a server that stops answering is not waited on.
            .timeout_send_body(Some(Duration::from_secs(300)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_recv_body(Some(Duration::from_secs(120)))
            .max_redirects(0)
            .tls_config(tls_config(ep.ca_file.as_deref())?)
            .build()
            .into();
        Ok(Client { base: url.to_owned(), host, region: ep.region.clone(), bucket: ep.bucket.clone(), creds, agent })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// One signed request (path-style: `/<bucket>/<key>`), tried again on a
    /// network error or a 5xx.
    pub fn request(
        &self,
        method: &str,
        key: Option<&str>,
        query: &[(String, String)],
        extra: &[(&str, String)],
        body: &[u8],
    ) -> Result<Reply> {
        let path = match key {
            Some(k) => format!("/{}/{}", sign::uri_encode(&self.bucket, false), sign::uri_encode(k, true)),
            None => format!("/{}", sign::uri_encode(&self.bucket, false)),
        };
        let qs = sign::query_string(query);
        let url = if qs.is_empty() { format!("{}{path}", self.base) } else { format!("{}{path}?{qs}", self.base) };
        let what = || format!("{method} s3://{}{}", self.bucket, key.map(|k| format!("/{k}")).unwrap_or_default());
        let mut wait = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            let amz_date = OffsetDateTime::now_utc()
                .format(format_description!("[year][month][day]T[hour][minute][second]Z"))
                .unwrap_or_default();
            let mut headers: Vec<(String, String)> = vec![
                ("host".into(), self.host.clone()),
                ("x-amz-date".into(), amz_date.clone()),
                ("x-amz-content-sha256".into(), UNSIGNED_PAYLOAD.into()),
            ];
            headers.extend(extra.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())));
            let auth = sign::authorization(
                &Canonical { method, path: &path, query, headers: &headers },
                &amz_date,
                &self.region,
                &self.creds.key_id,
                &self.creds.secret,
            );
            let result = self.send(method, &url, &headers, &auth, body);
            let retry = match &result {
                Err(_) => true,
                Ok(r) => r.status >= 500,
            };
            if !retry || attempt >= TRIES {
                return match result {
                    Ok(r) => Ok(r),
                    Err(e) => Err(io_err(format!("{}: {}: {e}", what(), self.base))),
                };
            }
            std::thread::sleep(wait);
            wait *= 4;
            attempt += 1;
        }
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        auth: &str,
        body: &[u8],
    ) -> std::result::Result<Reply, ureq::Error> {
        let mut b = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            // ureq writes Host itself, from the same URL.
            if k != "host" {
                b = b.header(k.as_str(), v.as_str());
            }
        }
        b = b.header("authorization", auth);
        let req = b.body(body).map_err(ureq::Error::Http)?;
        let mut resp = self.agent.run(req)?;
        let status = resp.status().as_u16();
        let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body =
            if method == "HEAD" { Vec::new() } else { resp.body_mut().with_config().limit(MAX_REPLY).read_to_vec()? };
        Ok(Reply { status, etag, body })
    }

    /// The error of a reply that is not what was asked, in words.
    pub fn refused(&self, what: &str, r: &Reply) -> Error {
        let text = r.text();
        let code = xml::first(&text, "Code").unwrap_or_default();
        let msg = xml::first(&text, "Message").unwrap_or_default();
        let hint = match (r.status, code.as_str()) {
            (403, _) | (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied") => {
                ": the bucket refused depot's credentials (check publish.s3.credentials_file / AWS_ACCESS_KEY_ID, \
                 and that the key may write the bucket); the deposit waits and is retried"
            }
            (_, "NoSuchBucket") => ": no such bucket (publish.s3.bucket)",
            (_, "BadDigest" | "InvalidDigest") => ": the bytes were damaged on the way (Content-MD5 did not match)",
            _ => "",
        };
        io_err(format!("{what}: HTTP {} {code} {msg}{hint}", r.status))
    }

    fn expect_ok(&self, what: &str, r: Reply) -> Result<Reply> {
        if (200..300).contains(&r.status) && !is_error_document(&r.body) {
            return Ok(r);
        }
        Err(self.refused(what, &r))
    }

    /// PutObject of bytes in memory, with their MD5.
    pub fn put(&self, key: &str, body: &[u8], md5: &Digest, extra: &[(&str, String)]) -> Result<Option<String>> {
        let mut h = vec![("content-md5", content_md5(md5))];
        h.extend(extra.iter().cloned());
        let r = self.request("PUT", Some(key), &[], &h, body)?;
        let r = self.expect_ok(&format!("put {key}"), r)?;
        BYTES_SENT.fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(r.etag)
    }

    /// GetObject: its bytes and ETag, or None when there is no such key.
    pub fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let r = self.request("GET", Some(key), &[], &[], &[])?;
        if r.status == 404 {
            return Ok(None);
        }
        let r = self.expect_ok(&format!("get {key}"), r)?;
        Ok(Some((r.body, r.etag)))
    }

    pub fn exists(&self, key: &str) -> Result<bool> {
        let r = self.request("HEAD", Some(key), &[], &[], &[])?;
        match r.status {
            404 => Ok(false),
            200..=299 => Ok(true),
            _ => Err(self.refused(&format!("head {key}"), &r)),
        }
    }

    /// CopyObject inside the bucket: no byte goes through depot.
    pub fn copy(&self, from: &str, to: &str) -> Result<()> {
        let src = format!("/{}/{}", sign::uri_encode(&self.bucket, false), sign::uri_encode(from, true));
        let r = self.request("PUT", Some(to), &[], &[("x-amz-copy-source", src)], &[])?;
        self.expect_ok(&format!("copy {from} to {to}"), r).map(|_| ())
    }

    pub fn create_multipart(&self, key: &str) -> Result<String> {
        let r = self.request("POST", Some(key), &[("uploads".into(), String::new())], &[], &[])?;
        let r = self.expect_ok(&format!("start multipart upload of {key}"), r)?;
        xml::first(&String::from_utf8_lossy(&r.body), "UploadId")
            .ok_or_else(|| io_err(format!("start multipart upload of {key}: no UploadId in the reply")))
    }

    pub fn upload_part(&self, key: &str, upload: &str, n: u32, body: &[u8], md5: &Digest) -> Result<String> {
        let q = [("partNumber".to_owned(), n.to_string()), ("uploadId".to_owned(), upload.to_owned())];
        let r = self.request("PUT", Some(key), &q, &[("content-md5", content_md5(md5))], body)?;
        let r = self.expect_ok(&format!("upload part {n} of {key}"), r)?;
        BYTES_SENT.fetch_add(body.len() as u64, Ordering::Relaxed);
        r.etag.ok_or_else(|| io_err(format!("upload part {n} of {key}: no ETag in the reply")))
    }

    pub fn complete_multipart(&self, key: &str, upload: &str, etags: &[String]) -> Result<()> {
        let mut body = String::from("<CompleteMultipartUpload>");
        for (i, e) in etags.iter().enumerate() {
            body.push_str(&format!("<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>", i + 1, xml::escape(e)));
        }
        body.push_str("</CompleteMultipartUpload>");
        let md5: Digest = Md5::digest(body.as_bytes()).into();
        let q = [("uploadId".to_owned(), upload.to_owned())];
        let r = self.request("POST", Some(key), &q, &[("content-md5", content_md5(&md5))], body.as_bytes())?;
        self.expect_ok(&format!("complete multipart upload of {key}"), r).map(|_| ())
    }

    pub fn abort_multipart(&self, key: &str, upload: &str) -> Result<()> {
        let q = [("uploadId".to_owned(), upload.to_owned())];
        let r = self.request("DELETE", Some(key), &q, &[], &[])?;
        if r.status == 404 {
            return Ok(());
        }
        self.expect_ok(&format!("abort multipart upload of {key}"), r).map(|_| ())
    }

    /// ListObjectsV2 under `prefix`: keys, and with a delimiter the
    /// "folders" (common prefixes). Every key returned starts with `prefix`.
    pub fn list(&self, prefix: &str, delimiter: Option<&str>) -> Result<(Vec<String>, Vec<String>)> {
        let (objects, dirs) = self.list_full(prefix, delimiter)?;
        Ok((objects.into_iter().map(|(k, _)| k).collect(), dirs))
    }

    /// Every key under `prefix` with its size.
    pub fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self.list_full(prefix, None)?.0)
    }

    fn list_full(&self, prefix: &str, delimiter: Option<&str>) -> Result<Listing> {
        let (mut keys, mut dirs) = (Vec::new(), Vec::new());
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![("list-type".to_owned(), "2".to_owned()), ("prefix".to_owned(), prefix.to_owned())];
            if let Some(d) = delimiter {
                q.push(("delimiter".into(), d.into()));
            }
            if let Some(t) = &token {
                q.push(("continuation-token".into(), t.clone()));
            }
            let r = self.request("GET", None, &q, &[], &[])?;
            let r = self.expect_ok(&format!("list s3://{}/{prefix}", self.bucket), r)?;
            let text = String::from_utf8_lossy(&r.body);
            keys.extend(xml::all(&text, "Contents").iter().filter_map(|c| {
                Some((xml::first(c, "Key")?, xml::first(c, "Size").and_then(|s| s.parse().ok()).unwrap_or(0)))
            }));
            dirs.extend(xml::all(&text, "CommonPrefixes").iter().filter_map(|c| xml::first(c, "Prefix")));
            token = xml::first(&text, "NextContinuationToken");
            if xml::first(&text, "IsTruncated").as_deref() != Some("true") || token.is_none() {
                break;
            }
        }
        keys.retain(|(k, _)| k.starts_with(prefix));
        dirs.retain(|k| k.starts_with(prefix));
        Ok((keys, dirs))
    }

    /// When `key` was written (the server's LastModified, to the
    /// millisecond on Garage and S3), if it exists.
    pub fn modified(&self, key: &str) -> Result<Option<String>> {
        let q = [
            ("list-type".to_owned(), "2".to_owned()),
            ("prefix".to_owned(), key.to_owned()),
            ("max-keys".to_owned(), "1".to_owned()),
        ];
        let r = self.request("GET", None, &q, &[], &[])?;
        let r = self.expect_ok(&format!("list {key}"), r)?;
        let text = String::from_utf8_lossy(&r.body);
        Ok(xml::all(&text, "Contents")
            .iter()
            .find(|c| xml::first(c, "Key").as_deref() == Some(key))
            .and_then(|c| xml::first(c, "LastModified")))
    }

    /// Multipart uploads started under `prefix` and never completed:
    /// (key, upload id).
    pub fn list_uploads(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut q = vec![("uploads".to_owned(), String::new()), ("prefix".to_owned(), prefix.to_owned())];
            if let Some((k, u)) = &markers {
                q.push(("key-marker".into(), k.clone()));
                q.push(("upload-id-marker".into(), u.clone()));
            }
            let r = self.request("GET", None, &q, &[], &[])?;
            let r = self.expect_ok(&format!("list multipart uploads under {prefix}"), r)?;
            let text = String::from_utf8_lossy(&r.body);
            for u in xml::all(&text, "Upload") {
                if let (Some(k), Some(id)) = (xml::first(u, "Key"), xml::first(u, "UploadId"))
                    && k.starts_with(prefix)
                {
                    out.push((k, id));
                }
            }
            let next = xml::first(&text, "NextKeyMarker").zip(xml::first(&text, "NextUploadIdMarker"));
            if xml::first(&text, "IsTruncated").as_deref() != Some("true") || next.is_none() || next == markers {
                break;
            }
            markers = next;
        }
        Ok(out)
    }

    /// DeleteObjects, 1,000 keys a request.
    pub fn delete(&self, keys: &[String]) -> Result<()> {
        for chunk in keys.chunks(1000) {
            let mut body = String::from("<Delete><Quiet>true</Quiet>");
            for k in chunk {
                body.push_str(&format!("<Object><Key>{}</Key></Object>", xml::escape(k)));
            }
            body.push_str("</Delete>");
            let md5: Digest = Md5::digest(body.as_bytes()).into();
            let q = [("delete".to_owned(), String::new())];
            let r = self.request("POST", None, &q, &[("content-md5", content_md5(&md5))], body.as_bytes())?;
            let r = self.expect_ok(&format!("delete {} objects", chunk.len()), r)?;
            let text = String::from_utf8_lossy(&r.body);
            if let Some(e) = xml::all(&text, "Error").first() {
                return Err(io_err(format!(
                    "delete {}: {} {}",
                    xml::first(e, "Key").unwrap_or_default(),
                    xml::first(e, "Code").unwrap_or_default(),
                    xml::first(e, "Message").unwrap_or_default()
                )));
            }
        }
        Ok(())
    }
}
