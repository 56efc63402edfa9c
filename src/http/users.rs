//! `depot producer add P --http-user NAME`: a bcrypt line in
//! `http.users_file`, as `htpasswd -B` would add it (the file stays one
//! Apache reads). The password comes from a prompt without echo, or from
//! standard input when it is not a terminal; never from the command line,
//! which every user of the host can read in /proc.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::config::Config;

fn read_password() -> Result<String> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        eprint!("password: ");
        let _ = std::io::stderr().flush();
        let echo = |on: bool| {
            let _ = std::process::Command::new("stty").arg(if on { "echo" } else { "-echo" }).status();
        };
        echo(false);
        let r = stdin.lock().read_line(&mut line);
        echo(true);
        eprintln!();
        r?;
    } else {
        stdin.lock().read_line(&mut line)?;
    }
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
    if pw.is_empty() {
        bail!("empty password: nothing written");
    }
    Ok(pw)
}

/// A user name htpasswd and Basic auth both take.
fn valid(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.contains(':') && !name.chars().any(|c| c.is_control() || c == ' ')
}

/// Add or replace `user`'s line; the file is rewritten whole and renamed
/// over the old one (mode 0640, or the old file's mode).
pub fn add(cfg: &Config, p: &str, user: &str) -> Result<u8> {
    if !cfg.is_producer(p) {
        bail!("{p:?} is not a producer of {} (producers.pattern / producers.allow)", cfg.path.display());
    }
    if !valid(user) {
        bail!("{user:?} cannot be an HTTP user name (no colon, space or control character)");
    }
    if cfg.http.users_file.is_empty() {
        bail!("http.users_file is not set in {}: say where the users file is first", cfg.path.display());
    }
    let path = Path::new(&cfg.http.users_file);
    let password = read_password()?;
    let line = format!("{user}:{}", super::auth::hash_bcrypt(&password)?);
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mode = std::fs::metadata(path).map_or(0o640, |m| m.permissions().mode() & 0o7777);
    let mut replaced = false;
    let mut out = String::new();
    for l in old.lines() {
        if l.split_once(':').is_some_and(|(u, _)| u == user) {
            if !replaced {
                out.push_str(&line);
                out.push('\n');
            }
            replaced = true;
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(&line);
        out.push('\n');
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.depot-tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("users")));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(out.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    println!("{} {user} in {}", if replaced { "password changed for" } else { "added" }, path.display());
    if !cfg.acts_for(user, p) {
        println!("note: {user} may deposit for {p} once named in its table: [producers.{p}] http_users = [\"{user}\"]");
    }
    let new = cfg.drop_root.join(p).join("new");
    if !new.is_dir() {
        println!("note: {} does not exist yet; the door makes it at the first upload", new.display());
    }
    Ok(0)
}
