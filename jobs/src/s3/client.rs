//! A blocking S3 client with just the calls a release needs. Blocking on
//! purpose: the pipeline runs on plain threads (no runtime), and each
//! thread streams one file at a time from the inflater into parts, so an
//! upload is naturally bounded by one part buffer per thread.
//!
//! Every failure is an [`Error::Io`] (transient: the deposit is retried
//! with backoff and never lost), with words an operator can act on.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest as _, Md5};

use super::sign::{self, SignError};
use super::xml::{self, XmlError};
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
    /// [`MAX_PAGES`], lower in tests.
    max_pages: u32,
}

/// What went wrong talking to the bucket, beyond the transport: kept as
/// the source of the [`Error::Io`] a failure becomes (transient: retried
/// with backoff, then IO_ERROR), so the cause stays a type, not words.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("{what}: {source}")]
    Sign {
        what: String,
        #[source]
        source: SignError,
    },
    #[error("{what}: {source}")]
    Xml {
        what: String,
        #[source]
        source: XmlError,
    },
    /// A listing that would not end, or that no bucket of ours can hold.
    #[error("{what}: {why}")]
    Listing { what: String, why: String },
}

impl From<S3Error> for Error {
    fn from(e: S3Error) -> Error {
        Error::io(Stage::Publish, "S3", io::Error::other(e))
    }
}

/// A reply, whatever its status.
pub struct Reply {
    pub status: u16,
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

/// One page of a listing: keys under the prefix with their sizes, and
/// common prefixes ("folders") under it.
#[derive(Debug, Default)]
pub struct Page {
    pub keys: Vec<(String, u64)>,
    pub dirs: Vec<String>,
}

/// Entries in one listing page: S3's own maximum (and the `max-keys` we
/// ask for). A page holding more is not S3's.
const PAGE_ENTRIES: usize = 1000;
/// Pages one listing may take before it is given up as endless. Derived
/// from what a listing of ours can hold: the most is one release, whose
/// `manifest.json` depot reads whole (at most [`MAX_REPLY`], 64 MiB) and
/// where each file takes at least 60 bytes, so at most ~1.12 million
/// objects, 1,119 pages; a producer's releases and uploads in flight are
/// far fewer. Past this the listing is an error (transient, as any S3
/// fault), never a worker looping while it holds the producer's lease.
pub const MAX_PAGES: u32 = 2_000;

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
    xml::root(body).as_deref() == Some("Error")
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
        Ok(Client {
            base: url.to_owned(),
            host,
            region: ep.region.clone(),
            bucket: ep.bucket.clone(),
            creds,
            agent,
            max_pages: MAX_PAGES,
        })
    }

    /// A lower page cap (tests of the cap itself).
    #[cfg(test)]
    fn set_max_pages(&mut self, n: u32) {
        self.max_pages = n;
    }

    /// `/<bucket>/<key>`, encoded once (path-style: the endpoint is the
    /// server, whatever the bucket's name).
    fn path(&self, key: Option<&str>) -> String {
        match key {
            Some(k) => format!("/{}/{}", sign::uri_encode(&self.bucket, false), sign::uri_encode(k, true)),
            None => format!("/{}", sign::uri_encode(&self.bucket, false)),
        }
    }

    /// A URL that lets whoever holds it GET `key` for `expires` (at most
    /// 7 days, S3's limit), without credentials of their own: what the data
    /// service answers `307` with, so release bytes never go through depot.
    pub fn presign_get(&self, key: &str, expires: Duration) -> Result<String> {
        let url = format!("{}{}", self.base, self.path(Some(key)));
        sign::presign("GET", &url, &self.creds, &self.region, SystemTime::now(), expires)
            .map_err(|source| S3Error::Sign { what: format!("presign GET s3://{}/{key}", self.bucket), source }.into())
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
        let path = self.path(key);
        let qs = sign::query_string(query);
        let url = if qs.is_empty() { format!("{}{path}", self.base) } else { format!("{}{path}?{qs}", self.base) };
        let what = || format!("{method} s3://{}{}", self.bucket, key.map(|k| format!("/{k}")).unwrap_or_default());
        let mut wait = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            let mut headers: Vec<(String, String)> = vec![("host".into(), self.host.clone())];
            headers.extend(extra.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())));
            let signed = sign::sign_headers(method, &url, &headers, None, &self.creds, &self.region, SystemTime::now())
                .map_err(|source| S3Error::Sign { what: what(), source })?;
            headers.extend(signed);
            let result = self.send(method, &url, &headers, body);
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
        body: &[u8],
    ) -> std::result::Result<Reply, ureq::Error> {
        let mut b = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            // ureq writes Host itself, from the same URL.
            if k != "host" {
                b = b.header(k.as_str(), v.as_str());
            }
        }
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
        // A body that is no error document (a HEAD's, a proxy's page)
        // leaves the status alone to speak.
        let xml::ErrorDoc { code, message: msg, .. } = xml::parse(&r.body).unwrap_or_default();
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
        let what = format!("start multipart upload of {key}");
        let r = self.expect_ok(&what, r)?;
        let reply: xml::InitiateMultipartUploadResult =
            xml::parse(&r.body).map_err(|source| S3Error::Xml { what, source })?;
        Ok(reply.upload_id)
    }

    pub fn upload_part(&self, key: &str, upload: &str, n: u32, body: &[u8], md5: &Digest) -> Result<String> {
        let q = [("partNumber".to_owned(), n.to_string()), ("uploadId".to_owned(), upload.to_owned())];
        let r = self.request("PUT", Some(key), &q, &[("content-md5", content_md5(md5))], body)?;
        let r = self.expect_ok(&format!("upload part {n} of {key}"), r)?;
        BYTES_SENT.fetch_add(body.len() as u64, Ordering::Relaxed);
        r.etag.ok_or_else(|| io_err(format!("upload part {n} of {key}: no ETag in the reply")))
    }

    pub fn complete_multipart(&self, key: &str, upload: &str, etags: &[String]) -> Result<()> {
        let body = xml::complete_body(etags)
            .map_err(|source| S3Error::Xml { what: format!("complete multipart upload of {key}"), source })?;
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
        let (mut keys, mut dirs) = (Vec::new(), Vec::new());
        self.list_pages(prefix, delimiter, &mut |page| {
            keys.extend(page.keys.into_iter().map(|(k, _)| k));
            dirs.extend(page.dirs);
            Ok(())
        })?;
        Ok((keys, dirs))
    }

    /// ListObjectsV2 under `prefix`, one page at a time to `each` (so what
    /// is done with a listing, deleting or comparing, costs one page of
    /// memory). Every key and folder given starts with `prefix`.
    ///
    /// A listing ends: a continuation token the server already gave, a
    /// truncated page without one, a page of more than 1,000 entries or
    /// more than [`MAX_PAGES`] pages is an error, never one more request.
    pub fn list_pages(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        each: &mut dyn FnMut(Page) -> Result<()>,
    ) -> Result<()> {
        let what = || format!("list s3://{}/{prefix}", self.bucket);
        let endless = |why: String| -> Error { S3Error::Listing { what: what(), why }.into() };
        let mut token: Option<String> = None;
        // Digests of the tokens seen: a server cycling through a few
        // tokens is caught as surely as one repeating the last.
        let mut seen: HashSet<[u8; 16]> = HashSet::new();
        for n in 1..=self.max_pages {
            let mut q = vec![
                ("list-type".to_owned(), "2".to_owned()),
                ("prefix".to_owned(), prefix.to_owned()),
                ("max-keys".to_owned(), PAGE_ENTRIES.to_string()),
            ];
            if let Some(d) = delimiter {
                q.push(("delimiter".into(), d.into()));
            }
            if let Some(t) = &token {
                q.push(("continuation-token".into(), t.clone()));
            }
            let r = self.request("GET", None, &q, &[], &[])?;
            let r = self.expect_ok(&what(), r)?;
            let l: xml::ListBucketResult =
                xml::parse(&r.body).map_err(|source| S3Error::Xml { what: what(), source })?;
            if l.contents.len() + l.common_prefixes.len() > PAGE_ENTRIES {
                return Err(endless(format!(
                    "page {n} holds {} entries; S3 gives at most {PAGE_ENTRIES}",
                    l.contents.len() + l.common_prefixes.len()
                )));
            }
            let page = Page {
                keys: l.contents.into_iter().filter(|o| o.key.starts_with(prefix)).map(|o| (o.key, o.size)).collect(),
                dirs: l.common_prefixes.into_iter().map(|c| c.prefix).filter(|d| d.starts_with(prefix)).collect(),
            };
            each(page)?;
            if !l.is_truncated {
                return Ok(());
            }
            let Some(next) = l.next_continuation_token.filter(|t| !t.is_empty()) else {
                return Err(endless(format!("page {n} says the listing goes on but gives no continuation token")));
            };
            if !seen.insert(Md5::digest(next.as_bytes()).into()) {
                return Err(endless(format!(
                    "page {n} gives a continuation token it gave before: the server repeats itself, the listing \
                     would never end"
                )));
            }
            token = Some(next);
        }
        Err(endless(format!(
            "more than {} pages of {PAGE_ENTRIES}: more than any listing of depot's can hold; given up as endless",
            self.max_pages
        )))
    }

    /// When `key` was written (the server's LastModified, to the
    /// millisecond on Garage and S3), if it exists.
    pub fn modified(&self, key: &str) -> Result<Option<String>> {
        let q = [
            ("list-type".to_owned(), "2".to_owned()),
            ("prefix".to_owned(), key.to_owned()),
            ("max-keys".to_owned(), "1".to_owned()),
        ];
        let what = format!("list {key}");
        let r = self.request("GET", None, &q, &[], &[])?;
        let r = self.expect_ok(&what, r)?;
        let l: xml::ListBucketResult = xml::parse(&r.body).map_err(|source| S3Error::Xml { what, source })?;
        Ok(l.contents.into_iter().find(|o| o.key == key).and_then(|o| o.last_modified))
    }

    /// Multipart uploads started under `prefix` and never completed:
    /// (key, upload id). Ends as [`Client::list_pages`] does.
    pub fn list_uploads(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let what = || format!("list multipart uploads under s3://{}/{prefix}", self.bucket);
        let endless = |why: String| -> Error { S3Error::Listing { what: what(), why }.into() };
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        let mut seen: HashSet<[u8; 16]> = HashSet::new();
        for n in 1..=self.max_pages {
            let mut q = vec![
                ("uploads".to_owned(), String::new()),
                ("prefix".to_owned(), prefix.to_owned()),
                ("max-uploads".to_owned(), PAGE_ENTRIES.to_string()),
            ];
            if let Some((k, u)) = &markers {
                q.push(("key-marker".into(), k.clone()));
                q.push(("upload-id-marker".into(), u.clone()));
            }
            let r = self.request("GET", None, &q, &[], &[])?;
            let r = self.expect_ok(&what(), r)?;
            let l: xml::ListMultipartUploadsResult =
                xml::parse(&r.body).map_err(|source| S3Error::Xml { what: what(), source })?;
            if l.upload.len() > PAGE_ENTRIES {
                return Err(endless(format!(
                    "page {n} holds {} uploads; S3 gives at most {PAGE_ENTRIES}",
                    l.upload.len()
                )));
            }
            out.extend(l.upload.into_iter().filter(|u| u.key.starts_with(prefix)).map(|u| (u.key, u.upload_id)));
            if !l.is_truncated {
                return Ok(out);
            }
            let Some(next) = l.next_key_marker.zip(l.next_upload_id_marker) else {
                return Err(endless(format!("page {n} says the listing goes on but gives no next markers")));
            };
            let mut d = Md5::new();
            d.update(next.0.as_bytes());
            d.update([0]);
            d.update(next.1.as_bytes());
            if !seen.insert(d.finalize().into()) {
                return Err(endless(format!(
                    "page {n} gives markers it gave before: the server repeats itself, the listing would never end"
                )));
            }
            markers = Some(next);
        }
        Err(endless(format!("more than {} pages of {PAGE_ENTRIES}; given up as endless", self.max_pages)))
    }

    /// DeleteObjects of up to 1,000 keys (one listing page).
    pub fn delete(&self, keys: &[String]) -> Result<()> {
        for chunk in keys.chunks(PAGE_ENTRIES) {
            let what = || format!("delete {} objects", chunk.len());
            let body = xml::delete_body(chunk).map_err(|source| S3Error::Xml { what: what(), source })?;
            let md5: Digest = Md5::digest(body.as_bytes()).into();
            let q = [("delete".to_owned(), String::new())];
            let r = self.request("POST", None, &q, &[("content-md5", content_md5(&md5))], body.as_bytes())?;
            let r = self.expect_ok(&what(), r)?;
            let reply: xml::DeleteResult =
                xml::parse(&r.body).map_err(|source| S3Error::Xml { what: what(), source })?;
            if let Some(e) = reply.errors.first() {
                return Err(io_err(format!("delete {}: {} {}", e.key, e.code, e.message)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A server of its own on a free loopback port: answers every request
    /// with `reply(request line, n)` (n counts requests from 1), one
    /// connection per request. Its thread ends with the test process.
    fn server(reply: impl Fn(&str, usize) -> (u16, String) + Send + 'static) -> (Client, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&count);
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let mut h = String::new();
                while r.read_line(&mut h).is_ok_and(|n| n > 0) && h != "\r\n" {
                    h.clear();
                }
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                let (status, body) = reply(&line, n);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let ep = Endpoint {
            url: format!("http://127.0.0.1:{port}"),
            region: "garage".into(),
            bucket: "b".into(),
            ca_file: None,
        };
        let client = Client::new(&ep, Credentials { key_id: "k".into(), secret: "s".into() }).unwrap();
        (client, count)
    }

    fn page(keys: &[&str], token: Option<&str>) -> String {
        let mut x = String::from("<ListBucketResult>");
        for k in keys {
            x.push_str(&format!("<Contents><Key>{k}</Key><Size>1</Size></Contents>"));
        }
        match token {
            Some(t) => x.push_str(&format!(
                "<IsTruncated>true</IsTruncated><NextContinuationToken>{t}</NextContinuationToken>"
            )),
            None => x.push_str("<IsTruncated>false</IsTruncated>"),
        }
        x + "</ListBucketResult>"
    }

    fn listing_error(e: &Error) -> Option<&S3Error> {
        match e {
            Error::Io { source, .. } => source.get_ref()?.downcast_ref::<S3Error>(),
            _ => None,
        }
    }

    #[test]
    fn a_listing_in_pages_is_followed_to_its_end() {
        let (c, count) = server(|line, _| {
            if line.contains("continuation-token=t%2F1") {
                (200, page(&["p/b", "elsewhere/x"], None))
            } else {
                (200, page(&["p/a"], Some("t/1")))
            }
        });
        let (keys, _) = c.list("p/", None).unwrap();
        assert_eq!(keys, ["p/a", "p/b"], "keys outside the prefix are dropped");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    /// Finding 6 of issue 19: a server that answers every page "truncated,
    /// go on with token T" had the worker list forever (30,000 pages in
    /// 40 s, memory growing) while it held the producer's lease.
    #[test]
    fn a_repeated_continuation_token_ends_the_listing_with_an_error() {
        let (c, count) = server(|_, _| (200, page(&["p/a"], Some("same"))));
        let e = c.list("p/", None).unwrap_err();
        assert!(e.is_transient(), "an S3 fault: retried, then IO_ERROR");
        assert!(matches!(listing_error(&e), Some(S3Error::Listing { .. })), "{e:?}");
        assert!(e.message().contains("gave before"), "{}", e.message());
        assert_eq!(count.load(Ordering::SeqCst), 2, "stopped at the first repeat");

        // A cycle of two tokens is a repeat too.
        let (c, count) = server(|_, n| (200, page(&["p/a"], Some(if n % 2 == 0 { "a" } else { "b" }))));
        assert!(c.list("p/", None).unwrap_err().message().contains("gave before"));
        assert_eq!(count.load(Ordering::SeqCst), 3);

        // So is a multipart upload listing whose markers do not move.
        let (c, count) = server(|_, _| {
            (
                200,
                "<ListMultipartUploadsResult><IsTruncated>true</IsTruncated><NextKeyMarker>k</NextKeyMarker>\
                 <NextUploadIdMarker>u</NextUploadIdMarker></ListMultipartUploadsResult>"
                    .into(),
            )
        });
        assert!(c.list_uploads("p/").unwrap_err().message().contains("gave before"));
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn fresh_tokens_forever_end_at_the_page_cap() {
        let (mut c, count) = server(|_, n| (200, page(&["p/a"], Some(&format!("t{n}")))));
        c.set_max_pages(7);
        let e = c.list("p/", None).unwrap_err();
        assert!(e.message().contains("more than 7 pages"), "{}", e.message());
        assert_eq!(count.load(Ordering::SeqCst), 7);
        let (c, _) = server(|_, n| (200, page(&["p/a"], Some(&format!("t{n}")))));
        assert_eq!(c.max_pages, MAX_PAGES);
    }

    #[test]
    fn pages_that_are_not_s3_s_are_errors_not_listings() {
        // Truncated with no token: not "the end".
        let (c, _) =
            server(|_, _| (200, "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>".into()));
        assert!(c.list("p/", None).unwrap_err().message().contains("no continuation token"));
        // More entries in a page than S3 ever gives.
        let (c, _) = server(|_, _| {
            let keys: Vec<String> = (0..1001).map(|i| format!("p/{i}")).collect();
            (200, page(&keys.iter().map(String::as_str).collect::<Vec<_>>(), None))
        });
        assert!(c.list("p/", None).unwrap_err().message().contains("1001 entries"));
        // Not XML at all.
        let (c, _) = server(|_, _| (200, "<html>proxy page".into()));
        let e = c.list("p/", None).unwrap_err();
        assert!(matches!(listing_error(&e), Some(S3Error::Xml { .. })), "{e:?}");
        // An error document with its code, in words.
        let (c, _) = server(|_, _| (403, "<Error><Code>AccessDenied</Code><Message>no</Message></Error>".into()));
        let e = c.list("p/", None).unwrap_err();
        assert!(e.message().contains("AccessDenied no") && e.message().contains("credentials"), "{}", e.message());
    }
}
