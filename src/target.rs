//! Which publish target a deposit goes to (`publish.target`, per producer),
//! for the workers and `depot ingest` alike.

use std::path::Path;

use jobs::pipeline::{self, IngestOptions, Job};
use jobs::publish::Published;
use jobs::s3::Bucket;
use jobs::unpack::Progress;
use jobs::{Error, PublishTarget, Stage};

use jobs::S3Settings;
use jobs::s3::Locks;
use tracing::{info, warn};

use crate::config::Config;
use crate::lease::RedisLocks;

/// Publish one deposit (blocking: call it off the async runtime).
pub fn publish(job: &Job<'_>, cfg: &Config, progress: &dyn Progress) -> jobs::Result<Published> {
    let root: &Path = &cfg.publish_root;
    match job.settings.publish.target {
        PublishTarget::Fs => pipeline::preflight(job, root, progress)
            .and_then(|()| pipeline::ingest(job, root, IngestOptions::default(), progress)),
        PublishTarget::S3 => {
            // Scratch (compressed dataset zips copied out) stays local.
            std::fs::create_dir_all(root)
                .map_err(|e| Error::io(Stage::Unpack, format!("create {}", root.display()), e))?;
            let bucket = Bucket::open(&job.settings.publish.s3)?;
            let locks = RedisLocks::new(&cfg.redis.url, &cfg.redis.prefix)
                .map_err(|e| Error::io(Stage::Publish, "redis.url", std::io::Error::other(e.to_string())))?;
            pipeline::ingest_s3(job, &bucket, &locks, root, IngestOptions::default(), progress)
        }
    }
}

/// The distinct buckets (and prefixes) the config publishes to.
pub fn s3_targets(cfg: &Config) -> Vec<S3Settings> {
    let mut all: Vec<S3Settings> = Vec::new();
    let global = std::iter::once(cfg.settings_for_default());
    let each = cfg.overridden().map(|p| cfg.settings_for(p));
    for s in global.chain(each) {
        if s.publish.target == PublishTarget::S3 && !all.contains(&s.publish.s3) {
            all.push(s.publish.s3);
        }
    }
    all
}

/// At start: what crashed publishes left in the buckets (releases without
/// `manifest.json`, multipart uploads never completed), for every producer
/// whose lease is free now. A producer being published by another host is
/// skipped: its next publish cleans up under its own lease anyway.
pub fn clean_s3_debris(cfg: &Config) {
    let locks = match RedisLocks::new(&cfg.redis.url, &cfg.redis.prefix) {
        Ok(l) => l,
        Err(e) => return warn!(error = %e, "S3 debris not cleaned: no Redis"),
    };
    for s3 in s3_targets(cfg) {
        let bucket = match Bucket::open(&s3) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e.message(), bucket = %s3.bucket, "S3 debris not cleaned");
                continue;
            }
        };
        let producers = match bucket.producers() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e.message(), bucket = %s3.bucket, "S3 debris not cleaned: cannot list the bucket");
                continue;
            }
        };
        for p in producers.iter().filter(|p| cfg.is_producer(p)) {
            // One try: a held lease means a live publish.
            let Ok(lease) = locks.lock(p, 0, &|| true) else { continue };
            match bucket.clean_debris(p, &*lease) {
                Ok(ids) if !ids.is_empty() => {
                    info!(producer = %p, releases = ?ids, "removed incomplete S3 releases (crash debris)")
                }
                Ok(_) => {}
                Err(e) => warn!(producer = %p, error = %e.message(), "S3 debris not cleaned"),
            }
        }
    }
}
