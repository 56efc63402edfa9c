//! What the S3 tests (tests/s3.rs, tests/s3_attack.rs) share: a site that
//! publishes to a Garage of the test's own, and the bucket as a reader sees
//! it (through curl, not through depot's own client).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use md5::{Digest, Md5};

use super::garage::{Garage, xml_values};
use super::{Redis, Site, terminal, wait_for};

pub const PREFIX: &str = "archive";

pub fn write_credentials(path: &Path, key_id: &str, secret: &str) {
    fs::write(path, format!("[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n")).unwrap();
}

/// A site whose `[publish]` table (open at the end of the harness's config)
/// gets `target = "s3"` and `publish`, then `[publish.s3]` for the bucket
/// under `prefix`, with a credentials file beside the config, then `more`.
pub fn s3_site_prefix(redis: &Redis, g: &Garage, prefix: &str, publish: &str, more: &str) -> Site {
    let site = Site::new(&redis.url(), "");
    let creds = site.root().join("s3.credentials");
    write_credentials(&creds, &g.key_id, &g.secret);
    let mut text = fs::read_to_string(&site.config).unwrap();
    if publish.contains("keep_releases") {
        text = text.replace("keep_releases = 10\n", "");
    }
    let text = format!(
        "{text}target = \"s3\"\n{publish}\n[publish.s3]\nendpoint = \"{}\"\nregion = \"{}\"\nbucket = \"{}\"\nprefix = \"{prefix}\"\n\
         credentials_file = \"{}\"\npart_size = 5242880\n{more}",
        g.endpoint,
        g.region,
        g.bucket,
        creds.display()
    );
    fs::write(&site.config, text).unwrap();
    site
}

pub fn s3_site(redis: &Redis, g: &Garage, publish: &str, more: &str) -> Site {
    s3_site_prefix(redis, g, PREFIX, publish, more)
}

pub fn current_doc(g: &Garage, prefix: &str, p: &str) -> Option<serde_json::Value> {
    g.get(&format!("{prefix}/{p}/current")).map(|b| serde_json::from_slice(&b).unwrap())
}

/// The release `current` names, under [`PREFIX`].
pub fn current(g: &Garage, p: &str) -> Option<String> {
    current_doc(g, PREFIX, p).map(|v| v["release"].as_str().unwrap().to_owned())
}

pub fn manifest_at(g: &Garage, prefix: &str, p: &str, id: &str) -> Option<serde_json::Value> {
    g.get(&format!("{prefix}/{p}/releases/{id}/manifest.json")).map(|b| serde_json::from_slice(&b).unwrap())
}

/// Release ids with at least one object.
pub fn release_ids(g: &Garage, prefix: &str, p: &str) -> Vec<String> {
    let base = format!("{prefix}/{p}/releases/");
    let mut ids: Vec<String> =
        g.keys(&base).iter().filter_map(|k| k.strip_prefix(&base)?.split('/').next().map(str::to_owned)).collect();
    ids.dedup();
    ids
}

/// Multipart uploads begun and never completed under `prefix`.
pub fn uploads(g: &Garage, prefix: &str) -> usize {
    let o = g.curl(&[&format!("{}?uploads&prefix={}", g.url(""), prefix.replace('/', "%2F"))]);
    xml_values(&String::from_utf8_lossy(&o.stdout), "UploadId").len()
}

/// Every file the manifest lists is there, with its size and MD5: what a
/// reader following `current` gets.
pub fn assert_complete_at(g: &Garage, prefix: &str, p: &str, id: &str) -> serde_json::Value {
    let m = manifest_at(g, prefix, p, id).unwrap_or_else(|| panic!("release {id} has no manifest.json"));
    for f in m["files"].as_array().unwrap() {
        let path = f["path"].as_str().unwrap();
        let bytes = g
            .get(&format!("{prefix}/{p}/releases/{id}/{path}"))
            .unwrap_or_else(|| panic!("release {id} lists {path}, which is not in the bucket"));
        assert_eq!(bytes.len() as u64, f["size"].as_u64().unwrap(), "{path}");
        let md5: String = Md5::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(md5, f["md5"].as_str().unwrap(), "{path}");
    }
    m
}

pub fn assert_complete(g: &Garage, p: &str, id: &str) -> serde_json::Value {
    assert_complete_at(g, PREFIX, p, id)
}

/// The published paths a manifest lists.
pub fn paths(m: &serde_json::Value) -> Vec<String> {
    m["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_owned()).collect()
}

/// A deposit's status hash by its file name (`None` while Redis has none;
/// after Redis was emptied a hash may lack fields).
pub fn by_file(redis: &Redis, file: &str) -> Option<HashMap<String, String>> {
    redis.deposits().into_iter().find(|d| d.get("file").map(String::as_str) == Some(file))
}

pub fn state(redis: &Redis, file: &str) -> Option<String> {
    by_file(redis, file).and_then(|d| d.get("state").cloned())
}

pub fn wait_state(site: &Site, redis: &Redis, file: &str, want: &str, secs: u64) -> HashMap<String, String> {
    wait_for(site, &format!("{file} {want}"), secs, || state(redis, file).as_deref() == Some(want));
    by_file(redis, file).unwrap()
}

pub fn wait_terminal(site: &Site, redis: &Redis, file: &str, secs: u64) -> HashMap<String, String> {
    wait_for(site, &format!("{file} ends"), secs, || by_file(redis, file).is_some_and(|d| terminal(&d)));
    by_file(redis, file).unwrap()
}
