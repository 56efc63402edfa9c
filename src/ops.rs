//! Operator commands that read and write the daemon's Redis keys:
//! `depot status` and `depot retry`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use redis::AsyncCommands;

use crate::config::Config;
use crate::status::Status;

async fn status_handle(config: &Path) -> Result<(Config, Status)> {
    let cfg = Config::load(config)?;
    let conn = crate::state::connect(&cfg).await?;
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

/// A FAILURE deposit goes back to `new/` (with its sidecar) from its
/// `rejected/<id>/` folder, and will be claimed again as a new deposit; its
/// old record says where it went. Refused (exit 2, nothing changed) when
/// the deposit is not in FAILURE, was retried already (the `retried` field
/// in Redis, or the `retried` mark in its folder: either alone suffices,
/// so that neither an emptied Redis nor a lost folder lets one deposit go
/// back twice), or when `new/` holds a newer upload of the same name: the
/// moves never replace a file (renameat2 RENAME_NOREPLACE).
pub async fn retry(config: &Path, id: &str) -> Result<u8> {
    if !jobs::deposit::is_id(id) {
        bail!("{id:?} is not a deposit id");
    }
    let (cfg, st) = status_handle(config).await?;
    let h = st.get(&st.deposit_key(id)).await?;
    let get = |k: &str| h.get(k).cloned().unwrap_or_default();
    // Without a hash (Redis was emptied), the folder's own report speaks.
    let p = if h.is_empty() { id.split('-').nth(1).unwrap_or_default().to_owned() } else { get("producer") };
    if !cfg.is_producer(&p) {
        bail!("deposit {id} has no producer of this config ({p:?})");
    }
    let pdir = cfg.drop_root.join(&p);
    let dir = jobs::rotate::rejected_dir(&pdir, id);
    let (state, name) = if h.is_empty() {
        let report: serde_json::Value = std::fs::read(dir.join(jobs::rotate::REPORT_JSON))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .with_context(|| format!("no deposit {id} in Redis, and no readable report in {}", dir.display()))?;
        let s = |k: &str| report.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        (s("state"), s("archive"))
    } else {
        (get("state"), get("file"))
    };
    if state != "FAILURE" {
        bail!("deposit {id} is {state:?}; only FAILURE deposits can be retried");
    }
    if !get("retried").is_empty() {
        bail!("deposit {id} was already retried ({}); its archive went back to new/ then", get("retried"));
    }
    let mark = dir.join(jobs::rotate::RETRIED);
    if std::fs::symlink_metadata(&mark).is_ok() {
        bail!("deposit {id} was already retried ({} exists)", mark.display());
    }
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("deposit {id} has no usable file name ({name:?})");
    }
    let src = dir.join(&name);
    if !std::fs::symlink_metadata(&src).is_ok_and(|m| m.file_type().is_file()) {
        bail!("{} is not there: nothing to retry", src.display());
    }
    let side_src = dir.join(format!("{name}.md5"));
    let side = std::fs::symlink_metadata(&side_src).is_ok_and(|m| m.file_type().is_file()).then_some(side_src);
    let new = pdir.join("new");
    std::fs::create_dir_all(&new)?;
    let (dst, side_dst) = (new.join(&name), new.join(format!("{name}.md5")));
    for taken in std::iter::once(&dst).chain(side.as_ref().map(|_| &side_dst)) {
        if std::fs::symlink_metadata(taken).is_ok() {
            bail!(
                "{} already holds a newer upload of that name; it is left as it is (nothing was moved)",
                taken.display()
            );
        }
    }
    // The mark first: once the archive is back in new/, this deposit can
    // never be sent there again, whatever fails after.
    write_mark(&mark).with_context(|| format!("cannot write {}", mark.display()))?;
    let moved = (|| -> Result<()> {
        // Sidecar first, archive last: the archive's arrival is what the
        // watcher notices, and its sidecar must already be there.
        if let Some(s) = &side {
            jobs::rotate::rename_noreplace(s, &side_dst)
                .with_context(|| format!("moving the sidecar to {}", side_dst.display()))?;
        }
        if let Err(e) = jobs::rotate::rename_noreplace(&src, &dst) {
            if let Some(s) = &side {
                let _ = jobs::rotate::rename_noreplace(&side_dst, s);
            }
            return Err(e).with_context(|| format!("moving the deposit to {}", dst.display()));
        }
        Ok(())
    })();
    if let Err(e) = moved {
        // Nothing went back: the deposit may be retried once the way is clear.
        let _ = std::fs::remove_file(&mark);
        return Err(e);
    }
    if !h.is_empty() {
        let mut conn = st.conn.clone();
        let r: redis::RedisResult<()> = conn.hset(st.deposit_key(id), "retried", jobs::deposit::now_rfc3339()).await;
        if let Err(e) = r {
            // Moved all the same; the mark in the folder refuses a second retry.
            eprintln!("depot: warning: cannot record `retried` in Redis ({e}); {} says it", mark.display());
        }
    }
    println!("{name} moved back to {}; it will be ingested as a new deposit", new.display());
    Ok(0)
}

/// `rejected/<id>/retried`: when, made new (never over another) and synced
/// with its folder before anything moves.
fn write_mark(mark: &Path) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(mark)?;
    std::io::Write::write_all(&mut f, format!("{}\n", jobs::deposit::now_rfc3339()).as_bytes())?;
    f.sync_all()?;
    match mark.parent() {
        Some(d) => std::fs::File::open(d)?.sync_all(),
        None => Ok(()),
    }
}
