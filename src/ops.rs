//! Operator commands that read and write the daemon's Redis keys:
//! `depot status` and `depot retry`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use redis::AsyncCommands;

use crate::config::Config;
use crate::status::Status;

async fn status_handle(config: &Path) -> Result<(Config, Status)> {
    let cfg = Config::load(config)?;
    let conn = crate::daemon::connect(&cfg).await?;
    let st = Status { conn, prefix: cfg.redis.prefix.clone() };
    Ok((cfg, st))
}

fn print_hash(title: &str, h: &std::collections::HashMap<String, String>) {
    println!("{title}");
    let mut keys: Vec<_> = h.keys().collect();
    keys.sort();
    for k in keys {
        println!("  {k:<16} {}", h[k]);
    }
}

pub async fn status(config: &Path, what: Option<&str>, json: bool) -> Result<u8> {
    let (_cfg, st) = status_handle(config).await?;
    let mut conn = st.conn.clone();
    match what {
        Some(id) if jobs::deposit::is_id(id) => {
            let h = st.get(&st.deposit_key(id)).await?;
            if h.is_empty() {
                bail!("no deposit {id} in Redis");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                print_hash(&format!("deposit {id}"), &h);
            }
        }
        Some(p) => {
            let h = st.get(&st.producer_key(p)).await?;
            let ids: Vec<String> = conn.zrevrange(st.deposits_key(), 0, 499).await?;
            let mut recent = Vec::new();
            for id in ids.iter().filter(|i| i.contains(&format!("-{p}-"))).take(20) {
                recent.push(st.get(&st.deposit_key(id)).await?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"producer": h, "recent": recent}))?);
            } else {
                print_hash(&format!("producer {p}"), &h);
                println!("recent deposits:");
                for d in recent {
                    let g = |k: &str| d.get(k).cloned().unwrap_or_default();
                    println!("  {}  {:<8} {:<10} {}", g("id"), g("state"), g("stage"), g("error_code"));
                }
            }
        }
        None => {
            let mut producers: Vec<String> = conn.smembers(st.producers_key()).await?;
            producers.sort();
            let mut all = serde_json::Map::new();
            for p in &producers {
                let h = st.get(&st.producer_key(p)).await?;
                if !json {
                    let g = |k: &str| h.get(k).cloned().unwrap_or_default();
                    println!(
                        "{p}  {:<8} last {}  current {}",
                        g("last_state"),
                        g("last_deposit"),
                        g("current_release")
                    );
                }
                all.insert(p.clone(), serde_json::to_value(h)?);
            }
            if json {
                println!("{}", serde_json::Value::Object(all));
            } else if producers.is_empty() {
                println!("no deposits yet");
            }
        }
    }
    Ok(0)
}

/// A FAILURE deposit goes back to `new/` (with its sidecar) and will be
/// claimed again as a new deposit; its old record says where it went.
pub async fn retry(config: &Path, id: &str) -> Result<u8> {
    if !jobs::deposit::is_id(id) {
        bail!("{id:?} is not a deposit id");
    }
    let (cfg, st) = status_handle(config).await?;
    let h = st.get(&st.deposit_key(id)).await?;
    let get = |k: &str| h.get(k).cloned().unwrap_or_default();
    if get("state") != "FAILURE" {
        bail!("deposit {id} is {:?}; only FAILURE deposits can be retried", get("state"));
    }
    let (p, name) = (get("producer"), get("file"));
    if !cfg.is_producer(&p) || name.is_empty() || name.contains('/') {
        bail!("deposit {id} has no usable producer/file in Redis");
    }
    let rej = cfg.drop_root.join(&p).join(jobs::rotate::REJECTED);
    let new = cfg.drop_root.join(&p).join("new");
    std::fs::create_dir_all(&new)?;
    let src = rej.join(&name);
    if !src.is_file() {
        bail!("{} is gone (replaced by a later deposit of the same name?)", src.display());
    }
    // Sidecar first, archive last: the archive's arrival is what the
    // watcher notices, and its sidecar must already be there.
    let side = rej.join(format!("{name}.md5"));
    if side.is_file() {
        std::fs::rename(&side, new.join(format!("{name}.md5"))).context("moving the sidecar")?;
    }
    std::fs::rename(&src, new.join(&name)).context("moving the deposit")?;
    let mut conn = st.conn.clone();
    let _: () = conn.hset(st.deposit_key(id), "retried", jobs::deposit::now_rfc3339()).await?;
    println!("{name} moved back to {}; it will be ingested as a new deposit", new.display());
    Ok(0)
}
