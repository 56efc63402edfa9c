//! `depot producer add|list`: onboarding a producer the way the README's
//! "Onboarding producers" (docs/operator-guide.md) describes it, and a health report of every producer.
//!
//! `add` makes the system account (through `useradd`/`groupadd`/`usermod`,
//! the system's own tools), the producer's folders with the owners and modes
//! of the README's table, its authorized key in a file of its own under
//! [`KEYS_DIR`], and prints the sshd block. Every step first looks at what
//! is there: a second run changes nothing and says "already".
//!
//! The design the sshd block encodes (tested with OpenSSH 9.2 in
//! tests/transport.rs):
//! - sftp (and scp, which speaks sftp) is chrooted into `<drop_root>/<P>`,
//!   the account's home, through `ChrootDirectory %h`: one block serves
//!   every producer;
//! - rsync cannot run in that chroot (rrsync needs python3 and rsync), and
//!   sshd's `Match` cannot tell one key from another, so rsync has a port of
//!   its own where the session is not chrooted and the forced command is
//!   `rrsync -wo "$HOME/new"`;
//! - the forced commands live in sshd_config, never in the key: a
//!   `ForceCommand` overrides a key's `command=`, and a key file edited by
//!   hand cannot widen what the account may do;
//! - the account's shell is `/bin/sh`, since sshd runs a forced command
//!   through the shell (`nologin` stops rrsync; internal-sftp needs none);
//! - the password field is `*`: no password matches it, and unlike a locked
//!   `!` account, sshd without PAM (`UsePAM no`) still takes the key.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::Config;

/// Every producer account is in this group; the sshd block matches it.
pub const PRODUCERS_GROUP: &str = "depot-producers";
/// The daemon's user and group (systemd/depot.sysusers).
pub const DAEMON: &str = "depot";
/// One file per account, named after it: `AuthorizedKeysFile` in the block.
pub const KEYS_DIR: &str = "/etc/depot/authorized_keys";
/// The shell sshd runs a forced command with.
pub const SHELL: &str = "/bin/sh";
/// The port of rsync sessions unless `--rsync-port` says otherwise.
pub const RSYNC_PORT: u16 = 2222;

const CHROOT_MODE: u32 = 0o755;
const NEW_MODE: u32 = 0o2770;
const KEPT_MODE: u32 = 0o2750;
/// Shells that can run `sh -c "<forced command>"`.
const SHELLS: &[&str] = &["/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/bash", "/bin/dash", "/usr/bin/dash"];

/// A passwd entry.
#[derive(Debug, Clone, PartialEq)]
struct Account {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
    shell: String,
}

fn parse_passwd(line: &str) -> Option<Account> {
    let f: Vec<&str> = line.trim_end().split(':').collect();
    if f.len() < 7 {
        return None;
    }
    Some(Account {
        name: f[0].to_owned(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: f[5].to_owned(),
        shell: f[6].to_owned(),
    })
}

/// A group entry: name, gid, members.
#[derive(Debug, Clone, PartialEq)]
struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_group(line: &str) -> Option<Group> {
    let f: Vec<&str> = line.trim_end().split(':').collect();
    if f.len() < 4 {
        return None;
    }
    Some(Group {
        name: f[0].to_owned(),
        gid: f[2].parse().ok()?,
        members: f[3].split(',').filter(|m| !m.is_empty()).map(str::to_owned).collect(),
    })
}

/// `getent DB KEY` (NSS, so LDAP accounts count too); `None` when absent.
fn getent(db: &str, key: &str) -> Result<Option<String>> {
    let out = Command::new("getent").args([db, key]).output().context("cannot run getent")?;
    match out.status.code() {
        Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_owned())),
        Some(2) => Ok(None),
        _ => bail!("getent {db} {key}: {}", String::from_utf8_lossy(&out.stderr).trim()),
    }
}

fn account(key: &str) -> Result<Option<Account>> {
    Ok(getent("passwd", key)?.as_deref().and_then(parse_passwd))
}

fn group(key: &str) -> Result<Option<Group>> {
    Ok(getent("group", key)?.as_deref().and_then(parse_group))
}

fn user_name(uid: u32) -> String {
    account(&uid.to_string()).ok().flatten().map_or_else(|| uid.to_string(), |a| a.name)
}

fn group_name(gid: u32) -> String {
    group(&gid.to_string()).ok().flatten().map_or_else(|| gid.to_string(), |g| g.name)
}

/// Runs one of the system's account tools; its stderr is the error.
fn tool(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} (the passwd package's tools are needed)"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The account name `depot producer add P` uses unless `--user` says.
pub fn default_user(p: &str) -> String {
    format!("p-{}", p.to_lowercase())
}

/// What useradd accepts on every system: `[a-z_][a-z0-9_-]*`, 32 bytes.
fn valid_user(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn show_mode(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// The sshd_config block of every producer, printed by `add`. Comments
/// start with `#`, so what `add` prints is a valid sshd_config fragment
/// as a whole.
pub fn sshd_block(rsync_port: u16) -> String {
    format!(
        "\
# sshd for depot's producers: add this once to /etc/ssh/sshd_config, after
# everything else (Match blocks go last); in its main section keep the port
# of sftp and add the one of rsync, e.g.
#     Port 22
#     Port {rsync_port}
# then `sshd -t && systemctl reload ssh`. The same block serves every
# producer: its chroot is the account's home (<drop_root>/<P>), its key
# {KEYS_DIR}/<account>. On port {rsync_port} a producer may run rsync only,
# through rrsync, confined to <P>/new (not chrooted: rrsync needs python3
# and rsync); on any other port sftp only, chrooted (scp speaks sftp).
Match Group {PRODUCERS_GROUP} LocalPort {rsync_port}
    ChrootDirectory none
    ForceCommand rrsync -wo \"$HOME/new\"
Match Group {PRODUCERS_GROUP}
    AuthenticationMethods publickey
    AuthorizedKeysFile {KEYS_DIR}/%u
    ChrootDirectory %h
    ForceCommand internal-sftp -u 0027
    AllowTcpForwarding no
    AllowAgentForwarding no
    AllowStreamLocalForwarding no
    PermitTunnel no
    X11Forwarding no
    PermitTTY no
"
    )
}

/// What sshd's `ChrootDirectory` demands of every folder from `/` down to
/// `dir`: root's, not writable by group or others (checked through links,
/// as sshd does). The first offender, if any.
pub fn chroot_path_problem(dir: &Path) -> Option<String> {
    let mut prefix = PathBuf::new();
    for c in dir.components() {
        prefix.push(c);
        match fs::metadata(&prefix) {
            Err(e) => return Some(format!("{}: {e}", prefix.display())),
            Ok(m) if !m.is_dir() => return Some(format!("{} is not a folder", prefix.display())),
            Ok(m) if m.uid() != 0 || m.mode() & 0o022 != 0 => {
                // A command only for drop_root itself, depot's own folder:
                // a folder above it (/tmp, /home) is the system's, and
                // changing it would break what else uses it.
                let fix = if prefix == dir && m.mode() & 0o1000 == 0 {
                    format!(": chown root:root {0} && chmod go-w {0}", prefix.display())
                } else {
                    format!(
                        "; {} is not depot's to change: choose a drop_root whose every parent folder is \
                         root:root and not writable by group or others (e.g. /srv/depot/drop)",
                        prefix.display()
                    )
                };
                return Some(format!(
                    "{} is {}:{} {} (sshd's ChrootDirectory needs every folder of the path owned by root and not \
                     writable by group or others{fix})",
                    prefix.display(),
                    user_name(m.uid()),
                    group_name(m.gid()),
                    show_mode(m.mode())
                ));
            }
            Ok(_) => {}
        }
    }
    None
}

/// One of the producer's folders and what it should be.
struct Want<'a> {
    path: PathBuf,
    uid: u32,
    gid: u32,
    mode: u32,
    owner: &'a str,
    group: &'a str,
}

impl Want<'_> {
    fn label(&self) -> String {
        format!("{}:{} {}", self.owner, self.group, show_mode(self.mode))
    }

    /// What is wrong with it now, or `None` when right.
    fn problem(&self) -> Option<String> {
        let name = self.path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        match fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!("{name}/ missing")),
            Err(e) => Some(format!("{name}/: {e}")),
            Ok(m) if m.file_type().is_symlink() => Some(format!("{name}/ is a symlink")),
            Ok(m) if !m.is_dir() => Some(format!("{name}/ is not a folder")),
            Ok(m) if m.uid() != self.uid || m.gid() != self.gid || m.mode() & 0o7777 != self.mode => Some(format!(
                "{name}/ is {}:{} {}, want {}",
                user_name(m.uid()),
                group_name(m.gid()),
                show_mode(m.mode()),
                self.label()
            )),
            Ok(_) => None,
        }
    }

    /// Make it so; says what it did.
    fn ensure(&self) -> Result<String> {
        let shown = self.path.display();
        let before = match fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot stat {shown}")),
            Ok(m) if !m.is_dir() || m.file_type().is_symlink() => {
                bail!("{shown} is not a folder (a symlink or a file): move it away, then run this again")
            }
            Ok(m) => Some(m),
        };
        if let Some(m) = &before
            && m.uid() == self.uid
            && m.gid() == self.gid
            && m.mode() & 0o7777 == self.mode
        {
            return Ok(format!("{shown}: already {}", self.label()));
        }
        if before.is_none() {
            fs::DirBuilder::new().mode(0o700).create(&self.path).with_context(|| format!("cannot create {shown}"))?;
        }
        std::os::unix::fs::lchown(&self.path, Some(self.uid), Some(self.gid))
            .with_context(|| format!("cannot chown {shown}"))?;
        // After the chown, which may clear set-id bits.
        fs::set_permissions(&self.path, fs::Permissions::from_mode(self.mode))
            .with_context(|| format!("cannot chmod {shown}"))?;
        Ok(match before {
            None => format!("{shown}: created {}", self.label()),
            Some(m) => format!(
                "{shown}: was {}:{} {}, now {}",
                user_name(m.uid()),
                group_name(m.gid()),
                show_mode(m.mode()),
                self.label()
            ),
        })
    }
}

/// The producer's three folders and its chroot, as the README's table says.
fn wants<'a>(chroot: &Path, acct: &'a Account, acct_group: &'a str, daemon: &'a Account) -> [Want<'a>; 4] {
    [
        Want { path: chroot.to_path_buf(), uid: 0, gid: 0, mode: CHROOT_MODE, owner: "root", group: "root" },
        Want {
            path: chroot.join("new"),
            uid: acct.uid,
            gid: daemon.gid,
            mode: NEW_MODE,
            owner: &acct.name,
            group: DAEMON,
        },
        Want {
            path: chroot.join(jobs::rotate::PREVIOUS),
            uid: daemon.uid,
            gid: acct.gid,
            mode: KEPT_MODE,
            owner: DAEMON,
            group: acct_group,
        },
        Want {
            path: chroot.join(jobs::rotate::REJECTED),
            uid: daemon.uid,
            gid: acct.gid,
            mode: KEPT_MODE,
            owner: DAEMON,
            group: acct_group,
        },
    ]
}

/// A public key line as the key file holds it: `(type, base64, comment)`.
fn parse_key(line: &str) -> Option<(String, String, String)> {
    let mut f = line.split_whitespace();
    let kind = f.next()?;
    if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-")) {
        return None;
    }
    let blob = f.next()?;
    Some((kind.to_owned(), blob.to_owned(), f.collect::<Vec<_>>().join(" ")))
}

/// Keys of an authorized keys file (options before the type are skipped).
fn keys_in(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            // `restrict ssh-ed25519 AAAA… comment`: the key starts at the first
            // word that is a key type.
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.iter().position(|w| {
                w.starts_with("ssh-")
                    || w.starts_with("ecdsa-")
                    || w.starts_with("sk-ssh-")
                    || w.starts_with("sk-ecdsa-")
            })?;
            parse_key(&words[i..].join(" "))
        })
        .collect()
}

fn key_line(k: &(String, String, String)) -> String {
    let (kind, blob, comment) = k;
    if comment.is_empty() { format!("restrict {kind} {blob}\n") } else { format!("restrict {kind} {blob} {comment}\n") }
}

/// The producer's key file gets the keys of `key` it lacks; says what it did.
fn ensure_key(user: &str, key: Option<&Path>) -> Result<String> {
    let dir = Path::new(KEYS_DIR);
    let file = dir.join(user);
    let existing = match fs::read_to_string(&file) {
        Ok(t) => keys_in(&t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let Some(key) = key else {
        return Ok(if existing.is_empty() {
            format!("{}: no key yet: run this again with --key FILE (the producer's public key)", file.display())
        } else {
            format!("{}: already {} key(s)", file.display(), existing.len())
        });
    };
    let text = fs::read_to_string(key).with_context(|| format!("cannot read the key {}", key.display()))?;
    let mut offered = Vec::new();
    for (n, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        match parse_key(l) {
            Some(k) => offered.push(k),
            None => bail!(
                "{} line {}: not a public key line (`ssh-ed25519 AAAA… comment`; the options are depot's to set)",
                key.display(),
                n + 1
            ),
        }
    }
    if offered.is_empty() {
        bail!("{} holds no public key", key.display());
    }
    // The key itself is checked by ssh-keygen, which knows every key type.
    let out = Command::new("ssh-keygen")
        .args(["-l", "-f"])
        .arg(key)
        .output()
        .context("cannot run ssh-keygen (openssh-client) to check the key")?;
    if !out.status.success() {
        bail!("{} is not a valid public key: {}", key.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let have: BTreeSet<(String, String)> = existing.iter().map(|(t, b, _)| (t.clone(), b.clone())).collect();
    let mut seen = have.clone();
    let new: Vec<_> = offered.into_iter().filter(|(t, b, _)| seen.insert((t.clone(), b.clone()))).collect();
    if new.is_empty() {
        return Ok(format!("{}: already has this key", file.display()));
    }
    for d in [Path::new("/etc/depot"), dir] {
        if !d.is_dir() {
            fs::DirBuilder::new().mode(0o755).create(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
    }
    let mut body: String = existing.iter().map(key_line).collect();
    body.extend(new.iter().map(key_line));
    // Root's, readable by all: sshd reads it as the user, and its
    // StrictModes wants it and its folders root's and not writable by others.
    let tmp = dir.join(format!(".{user}.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(body.as_bytes())?;
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        f.sync_all()?;
        fs::rename(&tmp, &file)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", file.display()));
    }
    Ok(format!("{}: {} key(s) added", file.display(), new.len()))
}

/// Whether this process runs as root (`/proc/self` belongs to the euid).
fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `depot producer add P [--user NAME] [--key FILE] [--rsync-port N]`.
pub fn add(cfg: &Config, p: &str, user: Option<&str>, key: Option<&Path>, rsync_port: u16, force: bool) -> Result<u8> {
    if let Some(why) = jobs::deposit::unsafe_producer(p) {
        bail!("{:?} cannot be a producer: {why}", jobs::names::printable(p));
    }
    if !cfg.is_producer(p) {
        bail!("{p:?} is not a producer of {} (producers.pattern / producers.allow)", cfg.path.display());
    }
    let user = user.map_or_else(|| default_user(p), str::to_owned);
    if !valid_user(&user) {
        bail!("{user:?} is not a usable account name (lower-case letters, digits, _ and -, at most 32)");
    }
    if !is_root() {
        bail!("depot producer add makes a system account and root's folders: run it as root");
    }
    let missing = "it is the daemon's, made by systemd/depot.sysusers (docs/operator-guide.md, \"Install and run under systemd\", step 2)";
    let Some(daemon) = account(DAEMON)? else { bail!("user {DAEMON} does not exist: {missing}") };
    if group(DAEMON)?.is_none() {
        bail!("group {DAEMON} does not exist: {missing}");
    }
    if user == DAEMON || user == "root" {
        bail!("{user} cannot be a producer's account");
    }
    let drop_root = fs::canonicalize(&cfg.drop_root)
        .with_context(|| format!("drop_root {} (create it first, root:root 0755)", cfg.drop_root.display()))?;
    if let Some(why) = chroot_path_problem(&drop_root) {
        bail!("{why}");
    }
    let chroot = drop_root.join(p);
    let mut said = Vec::new();

    if group(PRODUCERS_GROUP)?.is_none() {
        // A race with another `add` is fine: it exists either way.
        if let Err(e) = tool("groupadd", &["--system", PRODUCERS_GROUP])
            && group(PRODUCERS_GROUP)?.is_none()
        {
            return Err(e);
        }
        said.push(format!("group {PRODUCERS_GROUP}: created"));
    }
    let home = chroot.to_str().context("drop_root is not UTF-8: it cannot be an account's home")?;
    let acct = match account(&user)? {
        None => {
            let comment = format!("depot producer {p}");
            let mut args = vec!["--system", "--no-create-home", "--home-dir", home, "--shell", SHELL];
            args.extend(["--password", "*", "--comment", &comment, "--groups", PRODUCERS_GROUP]);
            // A group of that name left behind (an account removed by hand)
            // is taken as it is; useradd refuses --user-group then.
            if group(&user)?.is_some() {
                args.extend(["--gid", &user]);
            } else {
                args.push("--user-group");
            }
            args.push(&user);
            tool("useradd", &args)?;
            said.push(format!(
                "account {user}: created (system account, home {home} = its chroot, shell {SHELL}, no password)"
            ));
            account(&user)?.with_context(|| format!("useradd made {user}, but getent does not find it"))?
        }
        Some(a) => {
            if a.uid == 0 || a.uid == daemon.uid {
                bail!("{user} (uid {}) cannot be a producer's account", a.uid);
            }
            // This producer's own account has its chroot as home (what
            // `add` made, or an earlier `add` took over). Any other is
            // someone's: another producer's (it would own both new/
            // folders) or a system account's (www-data with a shell and a
            // home in the drop tree).
            if a.home != home {
                let whose = match Path::new(&a.home).strip_prefix(&drop_root) {
                    Ok(rest) if rest.components().count() == 1 => {
                        format!("it is producer {}'s account (home {})", rest.display(), a.home)
                    }
                    _ => format!("its home is {}, not {home}", a.home),
                };
                let mut changes = vec![format!("its home and chroot {} -> {home}", a.home)];
                if !SHELLS.contains(&a.shell.as_str()) {
                    changes.push(format!("its shell {} -> {SHELL}", a.shell));
                }
                if !group(PRODUCERS_GROUP)?.is_some_and(|g| g.members.contains(&user)) {
                    changes.push(format!("it joins group {PRODUCERS_GROUP}"));
                }
                changes.push(format!("it owns {}/new and reads previous/ and rejected/", chroot.display()));
                if !force {
                    bail!(
                        "account {user} (uid {}) exists and is not producer {p}'s: {whose}. Taking it over would change: {}. Give --user a new name (or none: {}), or --force to take it over",
                        a.uid,
                        changes.join("; "),
                        default_user(p)
                    );
                }
                eprintln!(
                    "depot: warning: --force: account {user} (uid {}) is taken over for producer {p} ({whose}): {}; whatever it did before with its old home or shell stops working",
                    a.uid,
                    changes.join("; ")
                );
            }
            let mut fixed = Vec::new();
            if a.home != home {
                tool("usermod", &["--home", home, &user])?;
                fixed.push(format!("home {} -> {home}", a.home));
            }
            if !SHELLS.contains(&a.shell.as_str()) {
                tool("usermod", &["--shell", SHELL, &user])?;
                fixed.push(format!("shell {} -> {SHELL} (sshd runs rrsync through it)", a.shell));
            }
            let member = group(PRODUCERS_GROUP)?.is_some_and(|g| g.members.contains(&user));
            if !member {
                tool("usermod", &["--append", "--groups", PRODUCERS_GROUP, &user])?;
                fixed.push(format!("added to {PRODUCERS_GROUP}"));
            }
            if fixed.is_empty() {
                said.push(format!("account {user}: already there"));
            } else {
                said.push(format!("account {user}: {}", fixed.join(", ")));
            }
            account(&user)?.with_context(|| format!("{user} vanished"))?
        }
    };
    let acct_group = group_name(acct.gid);
    if acct_group != user {
        said.push(format!(
            "note: {user}'s group is {acct_group}: every member of it can read {}/previous and rejected",
            chroot.display()
        ));
    }
    for w in wants(&chroot, &acct, &acct_group, &daemon) {
        said.push(w.ensure()?);
    }
    said.push(ensure_key(&user, key)?);

    println!("# depot producer {p} (account {user})");
    for s in &said {
        println!("#   {s}");
    }
    println!();
    print!("{}", sshd_block(rsync_port));
    Ok(0)
}

/// One producer's line of `list`.
struct Row {
    producer: String,
    account: String,
    health: String,
    keys: String,
    last: String,
}

fn inspect(drop_root: &Path, p: &str, daemon: Option<&Account>) -> Row {
    let chroot = drop_root.join(p);
    // The account is new/'s owner; the default name when new/ is missing.
    let owner = fs::symlink_metadata(chroot.join("new")).ok().filter(|m| m.uid() != 0).map(|m| m.uid());
    let acct = match owner {
        Some(uid) => account(&uid.to_string()).ok().flatten(),
        None => account(&default_user(p)).ok().flatten(),
    };
    let mut bad = Vec::new();
    let acct_name = match &acct {
        Some(a) => a.name.clone(),
        None => {
            bad.push("no account (depot producer add)".to_owned());
            "-".to_owned()
        }
    };
    if let (Some(a), Some(d)) = (&acct, daemon) {
        let g = group_name(a.gid);
        for w in wants(&chroot, a, &g, d) {
            bad.extend(w.problem());
        }
        if a.home != chroot.to_string_lossy() {
            bad.push(format!("home {} is not the chroot {}", a.home, chroot.display()));
        }
        if !SHELLS.contains(&a.shell.as_str()) {
            bad.push(format!("shell {} cannot run rrsync", a.shell));
        }
        if !group(PRODUCERS_GROUP).ok().flatten().is_some_and(|g| g.members.contains(&a.name)) {
            bad.push(format!("not in {PRODUCERS_GROUP}"));
        }
    } else if daemon.is_none() {
        bad.push(format!("no user {DAEMON} to check against"));
    }
    let keys = acct.as_ref().map_or_else(
        || "-".to_owned(),
        |a| match fs::read_to_string(Path::new(KEYS_DIR).join(&a.name)) {
            Ok(t) => keys_in(&t).len().to_string(),
            Err(_) => "0".to_owned(),
        },
    );
    Row {
        producer: p.to_owned(),
        account: acct_name,
        health: if bad.is_empty() { "ok".to_owned() } else { bad.join("; ") },
        keys,
        last: "-".to_owned(),
    }
}

/// `last_state last_deposit` of every producer, or `None` without Redis.
fn last_states(cfg: &Config, producers: &[String]) -> Option<Vec<String>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    rt.block_on(async {
        let mut conn = crate::state::connect(cfg).await.ok()?;
        let mut out = Vec::new();
        for p in producers {
            let key = format!("{}:producer:{p}", cfg.redis.prefix);
            let h: std::collections::HashMap<String, String> =
                tokio::time::timeout(Duration::from_secs(5), redis::cmd("HGETALL").arg(&key).query_async(&mut conn))
                    .await
                    .ok()?
                    .ok()?;
            out.push(match (h.get("last_state"), h.get("last_deposit")) {
                (Some(s), Some(d)) => format!("{s} {d}"),
                (Some(s), None) => s.clone(),
                _ => "-".to_owned(),
            });
        }
        Some(out)
    })
}

/// For `depot config check`: what `list` flags in producer `p`'s account
/// and folders (owners, modes, the README's table), None when all is well.
pub fn folder_problems(drop_root: &Path, p: &str) -> Option<String> {
    let daemon = account(DAEMON).ok().flatten();
    let r = inspect(drop_root, p, daemon.as_ref());
    (r.health != "ok").then_some(r.health)
}

/// `depot producer list`.
pub fn list(cfg: &Config) -> Result<u8> {
    let drop_root = fs::canonicalize(&cfg.drop_root).unwrap_or_else(|_| cfg.drop_root.clone());
    let mut producers: Vec<String> = fs::read_dir(&drop_root)
        .with_context(|| format!("cannot list drop_root {}", drop_root.display()))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| cfg.is_producer(n))
        .collect();
    producers.sort();
    if let Some(why) = chroot_path_problem(&drop_root) {
        println!("# drop_root: {why}");
    }
    let daemon = account(DAEMON)?;
    let mut rows: Vec<Row> = producers.iter().map(|p| inspect(&drop_root, p, daemon.as_ref())).collect();
    match last_states(cfg, &producers) {
        Some(states) => rows.iter_mut().zip(states).for_each(|(r, s)| r.last = s),
        None if !rows.is_empty() => {
            println!("# Redis at {} does not answer: last state -", crate::config::redacted(&cfg.redis.url))
        }
        None => {}
    }
    let header = Row {
        producer: "PRODUCER".into(),
        account: "ACCOUNT".into(),
        health: "FOLDERS".into(),
        keys: "KEYS".into(),
        last: "LAST".into(),
    };
    let w = |f: fn(&Row) -> &str| rows.iter().chain([&header]).map(|r| f(r).len()).max().unwrap_or(0);
    let (wp, wa, wk, wl) = (w(|r| &r.producer), w(|r| &r.account), w(|r| &r.keys), w(|r| &r.last));
    for r in [&header].into_iter().chain(&rows) {
        println!("{:<wp$}  {:<wa$}  {:<wk$}  {:<wl$}  {}", r.producer, r.account, r.keys, r.last, r.health);
    }
    if rows.is_empty() {
        println!("# no producer folder under {}", drop_root.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_default_user_and_names() {
        assert_eq!(default_user("MSEC"), "p-msec");
        assert!(valid_user("p-msec") && valid_user("_x") && valid_user("p-t1a2b3c"));
        assert!(!valid_user("P-MSEC") && !valid_user("-x") && !valid_user("") && !valid_user(&"a".repeat(33)));
        assert!(!valid_user("a b") && !valid_user("a/b") && !valid_user("a:b"));
    }

    #[test]
    fn producer_getent_lines() {
        let a = parse_passwd("p-msec:x:998:997:depot producer MSEC:/srv/depot/drop/MSEC:/bin/sh\n").unwrap();
        assert_eq!((a.name.as_str(), a.uid, a.gid), ("p-msec", 998, 997));
        assert_eq!((a.home.as_str(), a.shell.as_str()), ("/srv/depot/drop/MSEC", "/bin/sh"));
        assert_eq!(parse_passwd("short:x:1"), None);
        let g = parse_group("depot-producers:x:996:p-msec,p-abcd").unwrap();
        assert_eq!(g.members, ["p-msec", "p-abcd"]);
        assert!(parse_group("depot:x:995:").unwrap().members.is_empty());
    }

    #[test]
    fn producer_key_lines() {
        let k = parse_key("ssh-ed25519 AAAAC3Nz me@lab").unwrap();
        assert_eq!(key_line(&k), "restrict ssh-ed25519 AAAAC3Nz me@lab\n");
        assert_eq!(key_line(&parse_key("ssh-rsa AAAAB3").unwrap()), "restrict ssh-rsa AAAAB3\n");
        assert!(parse_key("command=\"x\" ssh-ed25519 AAAA").is_none(), "options are depot's to set");
        let file = "# comment\nrestrict ssh-ed25519 AAAA1 a\n\nrestrict,command=\"x\" ecdsa-sha2-nistp256 BBBB2\n";
        let keys = keys_in(file);
        assert_eq!(keys.len(), 2);
        assert_eq!((keys[0].1.as_str(), keys[1].0.as_str()), ("AAAA1", "ecdsa-sha2-nistp256"));
    }

    #[test]
    fn producer_sshd_block() {
        let b = sshd_block(2201);
        assert!(b.contains("Match Group depot-producers LocalPort 2201\n    ChrootDirectory none\n"));
        assert!(b.contains("    ForceCommand rrsync -wo \"$HOME/new\"\n"));
        assert!(b.contains("    ChrootDirectory %h\n    ForceCommand internal-sftp -u 0027\n"));
        assert!(b.contains("AuthorizedKeysFile /etc/depot/authorized_keys/%u"));
        // The port block comes first: sshd takes the first value of a
        // keyword among the Match blocks that apply.
        assert!(b.find("LocalPort").unwrap() < b.find("ChrootDirectory %h").unwrap());
        // Every line is a comment, a Match line or an indented keyword.
        assert!(b.lines().all(|l| l.starts_with('#') || l.starts_with("Match ") || l.starts_with("    ")));
    }

    #[test]
    fn producer_modes_shown_as_the_readme_does() {
        assert_eq!(show_mode(0o40755), "0755");
        assert_eq!(show_mode(0o42770), "2770");
    }

    #[test]
    fn producer_chroot_path_rule() {
        // A world-writable folder (here /tmp, 1777) anywhere on the path is
        // refused, as sshd refuses it.
        let d = tempfile::tempdir().unwrap();
        let why = chroot_path_problem(d.path());
        if fs::metadata("/tmp").is_ok_and(|m| m.mode() & 0o002 != 0) && d.path().starts_with("/tmp") {
            let why = why.unwrap();
            assert!(why.contains("/tmp is root:root 1777"), "{why}");
            // Never advice to change a system folder.
            assert!(!why.contains("chmod") && !why.contains("chown"), "{why}");
            assert!(why.contains("/tmp is not depot's to change"), "{why}");
        }
        assert_eq!(chroot_path_problem(Path::new("/")), None);
    }
}
