//! The S3 publish target (SPEC "Publish targets"). A release is a key
//! prefix, `<prefix>/<P>/releases/<id>/`, whose `manifest.json` is written
//! last: until it exists the prefix is debris, never read. `<prefix>/<P>/current`
//! names the release readers take, and is switched under the producer's
//! cross-host lease ([`Locks`]), never to an older deposit id.
//!
//! Nothing here may trust the server's listings with our safety: every key
//! deleted was listed under the release prefix it is deleted from.

mod client;
mod sign;
mod xml;

use std::io::{self, Write};
use std::path::Path;

use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};

pub use client::{BYTES_SENT, Client, Credentials, Endpoint};

use crate::conflicts::RELEASE_MANIFEST;
use crate::error::{Error, Result, Stage};
use crate::md5sums::{self, Digest};
use crate::publish::{ManifestFile, ReleaseManifest, id_time};
use crate::settings::S3Settings;
use crate::unpack::{Store, StoreWriter};

fn io_err(what: String) -> Error {
    Error::io(Stage::Publish, "S3", io::Error::other(what))
}

/// The producer's right to switch `current`, held across hosts (the daemon
/// keeps it as a lease in Redis). An object store has no locks of its
/// own, and Garage ignores `If-Match`, so this is what keeps two
/// publishers of one producer apart.
pub trait Lease: Send + Sync {
    /// Grows with every grant: written into `current`, so a holder whose
    /// lease was taken over sees a larger number there and stops.
    fn fence(&self) -> u64;
    /// Err when the lease was lost or too little of it is left to finish a
    /// small write (asks the lock's keeper).
    fn check(&self) -> Result<()>;
    /// Known lost, from what the holder saw (no round trip): polled while
    /// uploading, so a holder whose lease went stops writing.
    fn lost(&self) -> bool;
}

pub trait Locks: Sync {
    /// Wait for the producer's lease (asking `cancelled` while waiting).
    /// Its fencing number is above `floor` (the one `current` holds).
    fn lock(&self, producer: &str, floor: u64, cancelled: &dyn Fn() -> bool) -> Result<Box<dyn Lease>>;
}

/// `<prefix>/<P>/current`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Current {
    pub release: String,
    /// The lease grant that wrote it ([`Lease::fence`]).
    #[serde(default)]
    pub fence: u64,
    #[serde(default)]
    pub published: String,
}

/// Credentials as the SPEC says: the shared credentials file named in the
/// config (its profile), else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
pub fn credentials(s: &S3Settings) -> std::result::Result<Credentials, String> {
    if let Some(file) = &s.credentials_file {
        return credentials_file(file, &s.profile);
    }
    match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
        (Ok(key_id), Ok(secret)) if !key_id.is_empty() && !secret.is_empty() => Ok(Credentials { key_id, secret }),
        _ => Err(
            "no S3 credentials: set publish.s3.credentials_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in \
                  depot's environment"
                .into(),
        ),
    }
}

fn credentials_file(file: &Path, profile: &str) -> std::result::Result<Credentials, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("publish.s3.credentials_file {}: {e}", file.display()))?;
    let (mut key_id, mut secret, mut section) = (None, None, String::new());
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().trim_start_matches("profile ").trim().to_owned();
            continue;
        }
        if section != profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "aws_access_key_id" => key_id = Some(v.trim().to_owned()),
                "aws_secret_access_key" => secret = Some(v.trim().to_owned()),
                _ => {}
            }
        }
    }
    match (key_id, secret) {
        (Some(key_id), Some(secret)) => Ok(Credentials { key_id, secret }),
        _ => Err(format!(
            "publish.s3.credentials_file {}: profile [{profile}] has no aws_access_key_id and aws_secret_access_key",
            file.display()
        )),
    }
}

/// A bucket and the key prefix depot publishes under.
pub struct Bucket {
    client: Client,
    prefix: String,
    part_size: usize,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket(s3://{}/{})", self.client.bucket(), self.prefix)
    }
}

impl Bucket {
    pub fn open(s: &S3Settings) -> Result<Bucket> {
        let creds = credentials(s).map_err(io_err)?;
        Self::with_credentials(s, creds)
    }

    pub fn with_credentials(s: &S3Settings, creds: Credentials) -> Result<Bucket> {
        let ep = Endpoint {
            url: s.endpoint.clone(),
            region: s.region.clone(),
            bucket: s.bucket.clone(),
            ca_file: s.ca_file.clone(),
        };
        Ok(Bucket {
            client: Client::new(&ep, creds)?,
            prefix: s.prefix.trim_matches('/').to_owned(),
            part_size: usize::try_from(s.part_size).unwrap_or(8 << 20),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() { rest.to_owned() } else { format!("{}/{rest}", self.prefix) }
    }
    /// `<prefix>/<P>/`
    pub fn producer_key(&self, p: &str) -> String {
        self.key(&format!("{p}/"))
    }
    pub fn releases_key(&self, p: &str) -> String {
        self.key(&format!("{p}/releases/"))
    }
    pub fn release_key(&self, p: &str, id: &str) -> String {
        self.key(&format!("{p}/releases/{id}/"))
    }
    pub fn current_key(&self, p: &str) -> String {
        self.key(&format!("{p}/current"))
    }
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.client.bucket())
    }

    /// The bucket answers, and these credentials may list it.
    pub fn probe(&self) -> Result<()> {
        let q = [
            ("list-type".to_owned(), "2".to_owned()),
            ("max-keys".to_owned(), "1".to_owned()),
            ("prefix".to_owned(), self.key("")),
        ];
        let r = self.client.request("GET", None, &q, &[], &[])?;
        if (200..300).contains(&r.status) {
            Ok(())
        } else {
            Err(self.client.refused(&format!("list {}", self.url(&self.key(""))), &r))
        }
    }

    /// `current` and its ETag, if there is one.
    pub fn current(&self, p: &str) -> Result<Option<(Current, Option<String>)>> {
        let key = self.current_key(p);
        let Some((bytes, etag)) = self.client.get(&key)? else { return Ok(None) };
        let cur: Current = serde_json::from_slice(&bytes)
            .map_err(|e| io_err(format!("{} is not depot's current document: {e}", self.url(&key))))?;
        // It becomes part of keys (the merge base, prune): one plain id.
        if cur.release.is_empty() || cur.release.contains('/') || cur.release.starts_with('.') {
            return Err(io_err(format!("{} names {:?}, not a release id", self.url(&key), cur.release)));
        }
        Ok(Some((cur, etag)))
    }

    pub fn manifest(&self, p: &str, id: &str) -> Result<Option<ReleaseManifest>> {
        let key = format!("{}{RELEASE_MANIFEST}", self.release_key(p, id));
        let Some((bytes, _)) = self.client.get(&key)? else { return Ok(None) };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| io_err(format!("{}: {e}", self.url(&key))))
    }

    /// Release ids present (complete or not), oldest first.
    pub fn release_ids(&self, p: &str) -> Result<Vec<String>> {
        let base = self.releases_key(p);
        let (_, dirs) = self.client.list(&base, Some("/"))?;
        let mut ids: Vec<String> = dirs
            .iter()
            .filter_map(|d| d.strip_prefix(&base)?.strip_suffix('/'))
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .map(str::to_owned)
            .collect();
        ids.sort_by(|a, b| (id_time(a), a).cmp(&(id_time(b), b)));
        Ok(ids)
    }

    /// Producers with anything under the prefix.
    pub fn producers(&self) -> Result<Vec<String>> {
        let base = self.key("");
        let (_, dirs) = self.client.list(&base, Some("/"))?;
        Ok(dirs.iter().filter_map(|d| d.strip_prefix(&base)?.strip_suffix('/')).map(str::to_owned).collect())
    }

    /// Every object `m` lists is in the release with its size: a release
    /// whose `manifest.json` was written by a publisher that had lost its
    /// lease (its objects removed meanwhile as debris) is not complete.
    pub fn complete(&self, p: &str, id: &str, m: &ReleaseManifest) -> Result<bool> {
        let base = self.release_key(p, id);
        // What is still to be seen; the listing goes by page, so this costs
        // the manifest (already in memory), never the listing.
        let mut missing: std::collections::HashMap<&str, u64> =
            m.files.iter().map(|f| (f.path.as_str(), f.size)).collect();
        self.client.list_pages(&base, None, &mut |page| {
            for (key, size) in page.keys {
                if let Some(rel) = key.strip_prefix(&base)
                    && missing.get(rel) == Some(&size)
                {
                    missing.remove(rel);
                }
            }
            Ok(())
        })?;
        Ok(missing.is_empty())
    }

    /// Delete every object of one release, a listing page at a time, each
    /// only while `lease` is still ours: a holder whose lease lapsed (a
    /// pause, Redis lost) stops before it deletes what the next holder,
    /// publishing this same deposit again, has written since.
    pub fn remove_release(&self, p: &str, id: &str, lease: &dyn Lease) -> Result<usize> {
        let key = self.release_key(p, id);
        let mut n = 0;
        self.client.list_pages(&key, None, &mut |page| {
            if page.keys.is_empty() {
                return Ok(());
            }
            lease.check()?;
            let keys: Vec<String> = page.keys.into_iter().map(|(k, _)| k).collect();
            self.client.delete(&keys)?;
            n += keys.len();
            Ok(())
        })?;
        Ok(n)
    }

    /// Crash debris of one producer: releases without `manifest.json`
    /// (their upload never finished) and multipart uploads never completed.
    /// Only while holding the producer's lease, checked before every
    /// delete: a live publish looks the same. Returns the release ids
    /// removed.
    pub fn clean_debris(&self, p: &str, lease: &dyn Lease) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for (key, upload) in self.client.list_uploads(&self.releases_key(p))? {
            lease.check()?;
            self.client.abort_multipart(&key, &upload)?;
        }
        for id in self.release_ids(p)? {
            if !self.client.exists(&format!("{}{RELEASE_MANIFEST}", self.release_key(p, id.as_str())))? {
                self.remove_release(p, &id, lease)?;
                removed.push(id);
            }
        }
        Ok(removed)
    }

    /// Server-side copies of files of release `from` into release `to`.
    pub fn copy_files(&self, p: &str, from: &str, to: &str, files: &[ManifestFile]) -> Result<()> {
        let (src, dst) = (self.release_key(p, from), self.release_key(p, to));
        for f in files {
            self.client.copy(&format!("{src}{}", f.path), &format!("{dst}{}", f.path))?;
        }
        Ok(())
    }

    /// The commit point of a release.
    pub fn put_manifest(&self, p: &str, id: &str, m: &ReleaseManifest) -> Result<()> {
        let json = serde_json::to_vec_pretty(m).map_err(|e| io_err(format!("encode manifest: {e}")))?;
        let md5: Digest = Md5::digest(&json).into();
        let key = format!("{}{RELEASE_MANIFEST}", self.release_key(p, id));
        self.client.put(&key, &json, &md5, &[("content-type", "application/json".into())]).map(|_| ())
    }

    /// Point `current` at release `id` unless it already names a newer one
    /// (returned then, as with the filesystem target). Checked under the
    /// lease, right before the write: release `id` must be complete (every
    /// object its `manifest.json` lists there, with its size: a holder
    /// whose lease lapsed may have removed some as debris), the lease must
    /// still be ours, and `current` must not carry a later grant than
    /// ours. The write is
    /// conditional on the ETag read (`If-Match`, or `If-None-Match: *` when
    /// there was none) for servers that honour it; Garage does not, which is
    /// why the lease is the guard.
    pub fn switch(&self, p: &str, id: &str, lease: &dyn Lease) -> Result<Option<String>> {
        let now = crate::deposit::stamp_now();
        let found = self.current(p)?;
        if let Some((cur, _)) = &found {
            if cur.fence > lease.fence() {
                return Err(io_err(format!(
                    "{} was written under a later lease ({} > {}): this publisher lost the producer's lock",
                    self.url(&self.current_key(p)),
                    cur.fence,
                    lease.fence()
                )));
            }
            // An id dated in the future is not newer (the clock was stepped
            // back since): see publish::publish.
            if id_time(&cur.release) > id_time(id) && id_time(&cur.release) <= now.as_str() {
                return Ok(Some(cur.release.clone()));
            }
        }
        let complete = match self.manifest(p, id)? {
            Some(m) => self.complete(p, id, &m)?,
            None => false,
        };
        if !complete {
            return Err(io_err(format!(
                "{} is not complete (no manifest.json, or objects it lists are missing): current is left as it was; \
                 the deposit is published again",
                self.url(&self.release_key(p, id))
            )));
        }
        let doc = Current { release: id.to_owned(), fence: lease.fence(), published: crate::deposit::now_rfc3339() };
        let json = serde_json::to_vec(&doc).map_err(|e| io_err(format!("encode current: {e}")))?;
        let md5: Digest = Md5::digest(&json).into();
        let cond = match found.as_ref().and_then(|(_, etag)| etag.clone()) {
            Some(etag) => ("if-match", etag),
            None => ("if-none-match", "*".to_owned()),
        };
        lease.check()?;
        let key = self.current_key(p);
        match self.client.put(&key, &json, &md5, &[("content-type", "application/json".into()), cond]) {
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keep the newest `keep` releases, and the current one. Newest by
    /// when their `manifest.json` was written (one producer's publishes are
    /// serialised), then by id: ids of one second do not sort by drop order.
    pub fn prune(&self, p: &str, current: &str, keep: u32, lease: &dyn Lease) -> Result<Vec<String>> {
        let ids = self.release_ids(p)?;
        let excess = ids.len().saturating_sub(keep as usize);
        if excess == 0 {
            return Ok(Vec::new());
        }
        let mut dated = Vec::with_capacity(ids.len());
        for id in ids {
            let written = self.client.modified(&format!("{}{RELEASE_MANIFEST}", self.release_key(p, &id)))?;
            dated.push((written.unwrap_or_default(), id));
        }
        dated.sort_by(|a, b| (&a.0, id_time(&a.1), &a.1).cmp(&(&b.0, id_time(&b.1), &b.1)));
        let mut removed = Vec::new();
        for (_, id) in dated.into_iter().take(excess) {
            if id != current {
                self.remove_release(p, &id, lease)?;
                removed.push(id);
            }
        }
        Ok(removed)
    }

    /// The sink the unpack pass writes release `id`'s files to.
    pub fn sink<'b>(&'b self, p: &str, id: &str) -> ReleaseSink<'b> {
        ReleaseSink { bucket: self, prefix: self.release_key(p, id) }
    }
}

/// Files of one release, as objects under its prefix.
pub struct ReleaseSink<'b> {
    bucket: &'b Bucket,
    prefix: String,
}

impl std::fmt::Debug for ReleaseSink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReleaseSink({})", self.bucket.url(&self.prefix))
    }
}

impl Store for ReleaseSink<'_> {
    fn put(&self, rel: &str, bytes: &[u8], md5: &Digest) -> Result<()> {
        self.bucket.client.put(&format!("{}{rel}", self.prefix), bytes, md5, &[]).map(|_| ())
    }

    fn writer<'s>(&'s self, rel: &str) -> Result<Box<dyn StoreWriter + 's>> {
        Ok(Box::new(PartWriter {
            client: &self.bucket.client,
            key: format!("{}{rel}", self.prefix),
            part_size: self.bucket.part_size,
            buf: Vec::new(),
            upload: None,
        }))
    }
}

/// One object streamed in parts: up to one part in memory. A file that
/// fits in one part is sent with one PutObject and its whole MD5; a bigger
/// one as a multipart upload, each part with its own MD5. Dropped before
/// [`StoreWriter::commit`], the upload is aborted.
struct PartWriter<'c> {
    client: &'c Client,
    key: String,
    part_size: usize,
    buf: Vec<u8>,
    /// Upload id and the ETags of the parts sent.
    upload: Option<(String, Vec<String>)>,
}

impl PartWriter<'_> {
    fn send_part(&mut self) -> Result<()> {
        if self.upload.is_none() {
            self.upload = Some((self.client.create_multipart(&self.key)?, Vec::new()));
        }
        let Some((id, etags)) = self.upload.as_mut() else { return Ok(()) };
        let md5: Digest = Md5::digest(&self.buf).into();
        let n = etags.len() as u32 + 1;
        etags.push(self.client.upload_part(&self.key, id, n, &self.buf, &md5)?);
        self.buf.clear();
        Ok(())
    }
}

impl Write for PartWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() == self.part_size {
            // Only a full part is sent before the end: every part but the
            // last must be at least 5 MiB.
            self.send_part().map_err(|e| io::Error::other(e.message()))?;
        }
        let n = data.len().min(self.part_size - self.buf.len());
        // Grown by hand: Vec's own doubling would overshoot part_size (a
        // 5 MiB part in an 8 MiB buffer), and the memory bound is one part.
        if self.buf.capacity() - self.buf.len() < n {
            let want = (self.buf.capacity() * 2).max(self.buf.len() + n).max(64 << 10).min(self.part_size);
            self.buf.reserve_exact(want - self.buf.len());
        }
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StoreWriter for PartWriter<'_> {
    fn commit(mut self: Box<Self>, md5: &Digest) -> Result<()> {
        match self.upload.take() {
            None => {
                let hex = md5sums::hex(md5);
                self.client.put(&self.key, &self.buf, md5, &[("x-amz-meta-md5", hex)]).map(|_| ())
            }
            Some(up) => {
                self.upload = Some(up);
                if !self.buf.is_empty() {
                    self.send_part()?;
                }
                let Some((id, etags)) = self.upload.take() else { return Ok(()) };
                let r = self.client.complete_multipart(&self.key, &id, &etags);
                if r.is_err() {
                    let _ = self.client.abort_multipart(&self.key, &id);
                }
                r
            }
        }
    }
}

impl Drop for PartWriter<'_> {
    fn drop(&mut self) {
        if let Some((id, _)) = self.upload.take() {
            // Best effort; what is left is cleaned under the next lease.
            let _ = self.client.abort_multipart(&self.key, &id);
        }
    }
}
