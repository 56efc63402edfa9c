//! Validators (SPEC "Naming schemes, validators"): programs the operator
//! names (a netCDF reader, `fitsverify`, a virus scanner) run over the
//! staged files after unpack and verify, before publish. depot cannot know
//! every format an archive takes in; the tools that do exist already.
//!
//! The programs read files a producer sent, so each run is fenced: no
//! shell, an environment of `PATH`, `TMPDIR` and `DEPOT_*` only, stdin
//! from /dev/null, a private temp folder as its working folder, a process
//! group (and session) of its own killed whole when it ends or times out,
//! an address-space limit, and no network (a user and network namespace
//! of its own, where the kernel allows one). Its verdict is its exit
//! status: 0 accepts, one of `reject_exits` rejects the deposit; anything
//! else (another status, a signal, a timeout, a program that cannot
//! start) is the tool's fault, never the producer's: [`Error::Io`] with a
//! [`ValidatorFault`] inside, retried like an I/O error and then
//! `VALIDATOR_FAILED`.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

use crate::error::{Code, Error, Result, Stage};
use crate::md5sums::Digest;
use crate::names::printable;
use crate::unpack::{Progress, Store, StoreWriter};

/// Lines of a tool's output the report keeps.
pub const OUTPUT_LINES: usize = 20;
/// Bytes of a tool's output kept at most (the rest is read and dropped,
/// so that a chatty tool never blocks on a full pipe nor grows depot).
const OUTPUT_BYTES: usize = 64 << 10;
/// How long the pipe is still read once the tool's group is gone.
const PIPE_GRACE: Duration = Duration::from_millis(200);
/// The `PATH` a tool gets when depot has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Once per matching file, `{}` its staged path.
    #[default]
    File,
    /// Once per deposit (when any file matches), `{}` the staged release
    /// folder: a virus scanner loads its database once, not per file.
    Release,
}

/// What a rejection is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    #[default]
    FormatInvalid,
    VirusFound,
}

impl Verdict {
    pub fn code(self) -> Code {
        match self {
            Verdict::FormatInvalid => Code::FormatInvalid,
            Verdict::VirusFound => Code::VirusFound,
        }
    }
}

/// One element of `reject_exits`: a status, or a range `"1-255"`
/// (`fitsverify` exits with its count of errors).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Exits {
    One(i64),
    Range(String),
}

impl Exits {
    fn bounds(&self) -> Option<(i64, i64)> {
        match self {
            Exits::One(n) => Some((*n, *n)),
            Exits::Range(r) => {
                let (a, b) = r.split_once('-')?;
                let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                (a <= b).then_some((a, b))
            }
        }
    }
}

/// `[[checks.validators]]`, also per producer (added to the global ones).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Validator {
    /// On the published path. Without a `/` it matches the file's name in
    /// any folder (`*.nc`); with one, the whole path (`MSEC_DAT_*/**`).
    /// Case-insensitive: `X.NC` is a netCDF file too.
    #[serde(default = "any_file")]
    pub glob: String,
    /// argv, never a shell; every `{}` is replaced by the staged path.
    pub command: Vec<String>,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    #[serde(default = "default_rejects")]
    pub reject_exits: Vec<Exits>,
    #[serde(default)]
    pub code: Verdict,
    /// Address space of the tool (RLIMIT_AS), MiB; 0: no limit.
    #[serde(default = "default_memory")]
    pub memory_mb: u64,
}

fn any_file() -> String {
    "*".into()
}
fn default_timeout() -> u64 {
    60
}
fn default_rejects() -> Vec<Exits> {
    vec![Exits::One(1)]
}
fn default_memory() -> u64 {
    2048
}

impl Validator {
    /// What is wrong with it, if anything, in words for the key the
    /// caller names.
    pub fn problem(&self) -> Option<String> {
        let Some(program) = self.command.first() else {
            return Some("command must name a program: [\"ncdump\", \"-h\", \"{}\"]".into());
        };
        if program.is_empty() {
            return Some("command: the program (first element) must not be empty".into());
        }
        if !self.command[1..].iter().any(|a| a.contains("{}")) {
            return Some("command must pass the file with `{}` in an argument (the staged path goes there)".into());
        }
        if let Err(e) = matcher(&self.glob) {
            return Some(format!("glob {:?}: {e}", self.glob));
        }
        if self.timeout_s == 0 {
            return Some("timeout_s must be at least 1".into());
        }
        if let Some(bad) = self.reject_exits.iter().find(|e| e.bounds().is_none_or(|(a, b)| a < 1 || b > 255)) {
            return Some(format!(
                "reject_exits: {bad:?} is not an exit status from 1 to 255 or a range \"1-255\" (0 always accepts)"
            ));
        }
        None
    }

    /// The program, as an operator reads it in a report.
    pub fn label(&self) -> String {
        self.command.join(" ")
    }

    pub fn rejects(&self, status: i32) -> bool {
        let s = i64::from(status);
        self.reject_exits.iter().filter_map(Exits::bounds).any(|(a, b)| (a..=b).contains(&s))
    }
}

fn matcher(glob: &str) -> std::result::Result<GlobMatcher, globset::Error> {
    // Like .gitignore: a pattern without a slash is about the name alone.
    let pattern = if glob.contains('/') { glob.to_owned() } else { format!("**/{glob}") };
    Ok(GlobBuilder::new(&pattern).literal_separator(true).case_insensitive(true).build()?.compile_matcher())
}

/// The files validators look at, decided from their globs: what `depot
/// check` (and the S3 target, which stages nothing) keeps on local disk.
#[derive(Debug)]
pub struct Selection {
    globs: Vec<GlobMatcher>,
    everything: bool,
}

impl Selection {
    pub fn new(validators: &[Validator]) -> Selection {
        Selection {
            globs: validators.iter().filter_map(|v| matcher(&v.glob).ok()).collect(),
            everything: validators.iter().any(|v| v.scope == Scope::Release),
        }
    }
    pub fn wants(&self, rel: &str) -> bool {
        self.everything || self.globs.iter().any(|g| g.is_match(rel))
    }
}

/// A validator's own fault: the source of the [`Error::Io`] it becomes,
/// so the code (`VALIDATOR_FAILED`) is read from the type, not the words.
#[derive(Debug)]
pub struct ValidatorFault(pub String);

impl fmt::Display for ValidatorFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValidatorFault {}

/// Where and for whom the validators run.
pub struct Run<'a> {
    /// The staged release folder; published paths are relative to it.
    pub root: &'a Path,
    /// Private temp folders are made (and removed) under it.
    pub tmp: &'a Path,
    pub producer: &'a str,
    pub deposit: &'a str,
    pub threads: usize,
}

/// How one run ended.
#[derive(Debug)]
enum Outcome {
    Accepted,
    Rejected {
        status: i32,
        output: Vec<String>,
    },
    Fault(String),
    /// Killed because the deposit's verdict was already known, or shutdown.
    Stopped,
}

/// Run every validator over the files (published paths) that match it;
/// the first rejection (in validator, then path order) is the verdict,
/// else the first fault.
pub fn run(validators: &[Validator], files: &[&str], r: &Run<'_>, progress: &dyn Progress) -> Result<()> {
    let mut work: Vec<(usize, Option<&str>)> = Vec::new();
    for (i, v) in validators.iter().enumerate() {
        let m = matcher(&v.glob).map_err(|e| fault(v, None, format!("glob {:?}: {e}", v.glob)))?;
        match v.scope {
            Scope::File => work.extend(files.iter().filter(|f| m.is_match(f)).map(|f| (i, Some(*f)))),
            Scope::Release if files.iter().any(|f| m.is_match(f)) => work.push((i, None)),
            Scope::Release => {}
        }
    }
    if work.is_empty() {
        return Ok(());
    }
    let isolate = isolation(progress);
    if validators.iter().any(|v| v.memory_mb > 0) {
        limits(progress);
    }
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(work.iter().map(|_| None).collect());
    let (next, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    let worker = || {
        loop {
            let n = next.fetch_add(1, Ordering::Relaxed);
            if n >= work.len() || stop.load(Ordering::Relaxed) || progress.cancelled() {
                break;
            }
            let (vi, file) = work[n];
            let target = match file {
                Some(f) => r.root.join(f),
                None => r.root.to_path_buf(),
            };
            // A verdict stops the runs beside it: it is final either way.
            let stopped = || stop.load(Ordering::Relaxed) || progress.cancelled();
            let o = run_one(&validators[vi], &target, file, r, isolate, &stopped);
            if !matches!(o, Outcome::Accepted) {
                stop.store(true, Ordering::Relaxed);
            }
            lock(&results)[n] = Some(o);
        }
    };
    let threads = r.threads.clamp(1, work.len());
    if threads == 1 {
        worker();
    } else {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(worker);
            }
        });
    }
    if progress.cancelled() {
        return Err(Error::Cancelled);
    }
    let results = std::mem::take(&mut *lock(&results));
    let mut first_fault = None;
    for ((vi, file), o) in work.iter().zip(results) {
        let v = &validators[*vi];
        match o {
            Some(Outcome::Rejected { status, output }) => return Err(rejection(v, *file, status, output)),
            Some(Outcome::Fault(why)) if first_fault.is_none() => first_fault = Some(fault(v, *file, why)),
            _ => {}
        }
    }
    first_fault.map_or(Ok(()), Err)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn rejection(v: &Validator, file: Option<&str>, status: i32, output: Vec<String>) -> Error {
    let what = match file {
        Some(f) => f.to_owned(),
        None => "the deposit".to_owned(),
    };
    let message = match v.code {
        Verdict::FormatInvalid => {
            format!("{what}: refused by the format check `{}` (exit status {status})", v.label())
        }
        Verdict::VirusFound => format!("{what}: the virus scan `{}` found malware (exit status {status})", v.label()),
    };
    let mut e = Error::reject(v.code.code(), Stage::Verify, file, message);
    if let Error::Rejected(r) = &mut e {
        r.output = output;
    }
    e
}

fn fault(v: &Validator, file: Option<&str>, why: String) -> Error {
    let on = match file {
        Some(f) => format!(" on {}", printable(f)),
        None => " on the deposit".to_owned(),
    };
    Error::io(
        Stage::Verify,
        format!("validator `{}`{on}", v.label()),
        io::Error::other(ValidatorFault(format!("{why} (the tool's fault, not the producer's)"))),
    )
}

/// Can a tool be given a network namespace of its own here? Asked once
/// per process (a child that tries and exits); when the kernel refuses
/// (user namespaces off, a container, systemd's RestrictNamespaces), tools
/// run with the host's network and the operator is warned once: a
/// validator is a program the operator chose, and refusing every deposit
/// would stop the archive for a second line of defence.
pub fn isolation(progress: &dyn Progress) -> bool {
    static ABLE: OnceLock<bool> = OnceLock::new();
    static WARNED: AtomicBool = AtomicBool::new(false);
    let able = *ABLE.get_or_init(probe_isolation);
    if !able && !WARNED.swap(true, Ordering::Relaxed) {
        progress.warn(
            "validators run WITH network access: this kernel refuses an unprivileged user+network namespace (unshare CLONE_NEWUSER|CLONE_NEWNET)",
        );
    }
    able
}

/// Without a warning: `depot config check` says it in its own words.
pub fn isolation_available() -> bool {
    isolation(&crate::unpack::Quiet)
}

/// Can `memory_mb` be applied here? setrlimit is tried on depot itself
/// (its own limit set to what it is): the same filter would refuse it in
/// a tool. Where it cannot, the operator is warned once and the tools run
/// bounded only by what bounds depot (systemd's `MemoryMax=`).
pub fn limits(progress: &dyn Progress) -> bool {
    static ABLE: OnceLock<bool> = OnceLock::new();
    static WARNED: AtomicBool = AtomicBool::new(false);
    // SAFETY: getrlimit/setrlimit on structs we own.
    let able = *ABLE.get_or_init(|| unsafe {
        let mut cur: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_AS, &mut cur) == 0 && libc::setrlimit(libc::RLIMIT_AS, &cur) == 0
    });
    if !able && !WARNED.swap(true, Ordering::Relaxed) {
        progress.warn(
            "validators' memory_mb is not applied: setrlimit is refused here (systemd's SystemCallFilter=~@resources); the service's MemoryMax= still bounds them",
        );
    }
    able
}

/// What a tool is given of its own: a user namespace (unprivileged), a
/// network namespace (no interface but its own loopback), a mount
/// namespace (the staged files read-only there).
const NAMESPACES: libc::c_int = libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWNS;

/// The staged release folder bound read-only over itself in the tool's
/// mount namespace. Prepared before the fork (no allocation after it);
/// applied best effort: a kernel that refuses leaves the files writable,
/// as without namespaces, rather than fail the run.
struct ReadOnly {
    path: std::ffi::CString,
    /// The mount's own flags, which a remount inside a user namespace
    /// must keep (they are locked there).
    keep: libc::c_ulong,
}

impl ReadOnly {
    fn of(root: &Path) -> Option<ReadOnly> {
        use std::os::unix::ffi::OsStrExt;
        let abs = std::path::absolute(root).ok()?;
        let path = std::ffi::CString::new(abs.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs fills the zeroed struct we own.
        let flags = unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(path.as_ptr(), &mut st) < 0 {
                return None;
            }
            st.f_flag
        };
        let mut keep = 0;
        for (st, ms) in [
            (libc::ST_NOSUID, libc::MS_NOSUID),
            (libc::ST_NODEV, libc::MS_NODEV),
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
            (libc::ST_NOATIME, libc::MS_NOATIME),
            (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
            (libc::ST_RELATIME, libc::MS_RELATIME),
        ] {
            if flags & st != 0 {
                keep |= ms;
            }
        }
        Some(ReadOnly { path, keep })
    }

    /// Between fork and exec: two mount(2) calls, nothing else.
    unsafe fn apply(&self) {
        let p = self.path.as_ptr();
        let none = std::ptr::null();
        // SAFETY: plain system calls on a NUL-terminated path we own.
        unsafe {
            if libc::mount(p, p, none, libc::MS_BIND | libc::MS_REC, std::ptr::null()) == 0 {
                let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | self.keep;
                libc::mount(none, p, none, flags, std::ptr::null());
            }
        }
    }
}

fn probe_isolation() -> bool {
    // SAFETY: the child calls only async-signal-safe functions (unshare,
    // _exit) before it ends.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            let r = libc::unshare(NAMESPACES);
            libc::_exit(if r == 0 { 0 } else { 1 });
        }
        if pid < 0 {
            return false;
        }
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 {
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return false;
            }
        }
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }
}

/// A private folder for one run, removed when dropped.
struct Private(PathBuf);

impl Private {
    fn make(under: &Path) -> io::Result<Private> {
        static N: AtomicU64 = AtomicU64::new(0);
        fs::DirBuilder::new().recursive(true).mode(0o755).create(under)?;
        let p = under.join(format!("validator-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        fs::DirBuilder::new().mode(0o700).create(&p)?;
        Ok(Private(p))
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `{}` in every argument replaced by `path`.
fn argv(v: &Validator, path: &Path) -> Vec<OsString> {
    v.command[1..]
        .iter()
        .map(|a| {
            let mut out = OsString::new();
            let mut parts = a.split("{}");
            if let Some(first) = parts.next() {
                out.push(first);
            }
            for p in parts {
                out.push(path.as_os_str());
                out.push(p);
            }
            out
        })
        .collect()
}

fn run_one(
    v: &Validator,
    target: &Path,
    file: Option<&str>,
    r: &Run<'_>,
    isolate: bool,
    cancelled: &dyn Fn() -> bool,
) -> Outcome {
    let tmp = match Private::make(r.tmp) {
        Ok(t) => t,
        Err(e) => return Outcome::Fault(format!("cannot make its temp folder under {}: {e}", r.tmp.display())),
    };
    // Absolute, so that no name can be read as an option (`-rf`).
    let target = std::path::absolute(target).unwrap_or_else(|_| target.to_path_buf());
    let (reader, writer) = match io::pipe() {
        Ok(p) => p,
        Err(e) => return Outcome::Fault(format!("cannot make a pipe: {e}")),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return Outcome::Fault(format!("cannot make a pipe: {e}")),
    };
    let mut cmd = Command::new(&v.command[0]);
    cmd.args(argv(v, &target))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()))
        .env("TMPDIR", &tmp.0)
        .env("DEPOT_PRODUCER", r.producer)
        .env("DEPOT_DEPOSIT", r.deposit)
        .env("DEPOT_FILE", file.unwrap_or(""))
        .env("DEPOT_TARGET", &target)
        .current_dir(&tmp.0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2));
    let memory = v.memory_mb.saturating_mul(1 << 20);
    // The staged files, read-only to the tool (best effort): what was
    // verified is what is published, whatever the tool does.
    let read_only = if isolate { ReadOnly::of(r.root) } else { None };
    // SAFETY: between fork and exec only raw system calls, no allocation,
    // no lock; errors are read from errno.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session and process group: killed whole, and no
            // controlling terminal to write to.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Gone with the thread that waits for it, should depot die.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            // Refused where setrlimit is filtered (systemd's
            // SystemCallFilter=~@resources): told once, see `limits`.
            if memory > 0 {
                let lim = libc::rlimit { rlim_cur: memory as libc::rlim_t, rlim_max: memory as libc::rlim_t };
                libc::setrlimit(libc::RLIMIT_AS, &lim);
            }
            // No network: an empty network namespace, in a user namespace
            // of its own (unprivileged; its uid there is unmapped, so exec
            // keeps no capability even when depot runs as root), with a
            // mount namespace of its own for the read-only view below.
            if isolate && libc::unshare(NAMESPACES) < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(ro) = &read_only {
                ro.apply();
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let child = cmd.spawn();
    // The write ends held by `cmd`: closed, so the pipe ends with the tool.
    drop(cmd);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Outcome::Fault(format!("cannot start {}: {e}", v.command[0])),
    };
    let pid = child.id() as libc::pid_t;
    let mut out = Capture::default();
    let mut reader = reader;
    let deadline = started + Duration::from_secs(v.timeout_s);
    let mut open = true;
    let mut nap = Duration::from_millis(1);
    let timed_out = loop {
        if exited(pid) {
            break false;
        }
        let now = Instant::now();
        // Shutdown (or a rejection beside it) does not wait for the tool.
        if now >= deadline || cancelled() {
            break true;
        }
        let wait = (deadline - now).min(Duration::from_millis(50));
        if open {
            open = read_some(&mut reader, &mut out, wait);
        } else {
            // The tool closed its output and runs on: look now and then.
            std::thread::sleep(nap.min(wait));
            nap = (nap * 2).min(Duration::from_millis(50));
        }
    };
    // Killed whole before the leader is reaped: its pid (the group's id)
    // cannot be taken by another process meanwhile. Whatever it forked
    // into its group goes with it, after a normal exit too.
    // SAFETY: a plain system call on a group that is ours.
    unsafe {
        libc::killpg(pid, libc::SIGKILL);
    }
    let grace = Instant::now() + PIPE_GRACE;
    while open && Instant::now() < grace {
        open = read_some(&mut reader, &mut out, PIPE_GRACE);
    }
    let status = child.wait();
    drop(tmp);
    if timed_out && cancelled() {
        return Outcome::Stopped;
    }
    if timed_out {
        return Outcome::Fault(format!("timed out after {} s (timeout_s); killed with its process group", v.timeout_s));
    }
    match status {
        Err(e) => Outcome::Fault(format!("cannot wait for it: {e}")),
        Ok(s) => match (s.code(), s.signal()) {
            (Some(0), _) => Outcome::Accepted,
            (Some(c), _) if v.rejects(c) => Outcome::Rejected { status: c, output: out.lines() },
            (Some(c), _) => Outcome::Fault(format!("exit status {c}{}", out.first_words())),
            (None, Some(sig)) => Outcome::Fault(format!("killed by signal {sig}{}", out.first_words())),
            (None, None) => Outcome::Fault("ended in an unknown way".into()),
        },
    }
}

/// Has the child ended? Looked at without reaping it (WNOWAIT), so its
/// pid stays its own until its group has been killed. ECHILD (someone
/// set SIGCHLD to be ignored, and the kernel reaped it) means it has.
fn exited(pid: libc::pid_t) -> bool {
    // SAFETY: waitid writes into the zeroed siginfo we own.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        if r < 0 {
            return io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD);
        }
        info.si_pid() != 0
    }
}

/// Wait up to `wait` for output and read what there is; false at the end
/// of the pipe (every writer gone).
fn read_some(reader: &mut io::PipeReader, out: &mut Capture, wait: Duration) -> bool {
    let mut pfd = libc::pollfd { fd: reader.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = wait.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one pollfd we own.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n <= 0 {
        return true;
    }
    let mut buf = [0u8; 8192];
    match reader.read(&mut buf) {
        Ok(0) => false,
        Ok(k) => {
            out.feed(&buf[..k]);
            true
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
        Err(_) => false,
    }
}

/// The start of a tool's output (stdout and stderr, as interleaved).
#[derive(Default)]
struct Capture {
    kept: Vec<u8>,
}

impl Capture {
    fn feed(&mut self, bytes: &[u8]) {
        let lines = self.kept.iter().filter(|&&b| b == b'\n').count();
        if lines >= OUTPUT_LINES {
            return;
        }
        let room = OUTPUT_BYTES.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// The first lines, each with its control characters escaped: a tool
    /// prints the producer's bytes (a file's attributes, a name).
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.kept).lines().take(OUTPUT_LINES).map(|l| printable(l).into_owned()).collect()
    }

    /// For a fault's message: the tool's first line, if it said anything.
    fn first_words(&self) -> String {
        match self.lines().into_iter().find(|l| !l.trim().is_empty()) {
            Some(l) => format!(": {}", l.chars().take(300).collect::<String>()),
            None => String::new(),
        }
    }
}

/// The files validators need, on local disk, where the release itself is
/// not (`depot check`, the S3 target): each file a validator's glob
/// selects is written under `root` as it streams past, besides going to
/// the object store (if any).
#[derive(Debug)]
pub struct Keep<'a> {
    pub inner: Option<&'a dyn Store>,
    pub root: &'a Path,
    pub selection: &'a Selection,
}

impl Store for Keep<'_> {
    fn put(&self, rel: &str, bytes: &[u8], md5: &Digest) -> Result<()> {
        if let Some(s) = self.inner {
            s.put(rel, bytes, md5)?;
        }
        if self.selection.wants(rel) {
            let mut f = crate::unpack::create(self.root, rel)?;
            f.write_all(bytes).map_err(|e| Error::io(Stage::Unpack, format!("write {rel}"), e))?;
        }
        Ok(())
    }

    fn writer<'s>(&'s self, rel: &str) -> Result<Box<dyn StoreWriter + 's>> {
        let inner = match self.inner {
            Some(s) => Some(s.writer(rel)?),
            None => None,
        };
        let local = if self.selection.wants(rel) { Some(crate::unpack::create(self.root, rel)?) } else { None };
        Ok(Box::new(KeepWriter { inner, local }))
    }
}

struct KeepWriter<'s> {
    inner: Option<Box<dyn StoreWriter + 's>>,
    local: Option<fs::File>,
}

impl Write for KeepWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match self.inner.as_mut() {
            Some(w) => w.write(buf)?,
            None => buf.len(),
        };
        if let Some(f) = self.local.as_mut() {
            f.write_all(&buf[..n])?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        if let Some(w) = self.inner.as_mut() {
            w.flush()?;
        }
        Ok(())
    }
}

impl StoreWriter for KeepWriter<'_> {
    fn commit(self: Box<Self>, md5: &Digest) -> Result<()> {
        match self.inner {
            Some(w) => w.commit(md5),
            None => Ok(()),
        }
    }
}

/// Is `program` (as `command[0]` names it) an executable file, looked up
/// in `PATH` as the tool will be? The path found, or why not.
pub fn find_program(program: &str) -> std::result::Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let found = if program.contains('/') {
        Some(PathBuf::from(program))
    } else {
        let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        std::env::split_paths(&path).map(|d| d.join(program)).find(|c| c.is_file())
    };
    let Some(p) = found else { return Err(format!("{program} is not in PATH")) };
    match fs::metadata(&p) {
        Err(e) => Err(format!("{}: {e}", p.display())),
        Ok(m) if !m.is_file() => Err(format!("{} is not a file", p.display())),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err(format!("{} is not executable (chmod 755 {0})", p.display()))
        }
        Ok(_) => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn v(cmd: &str) -> Validator {
        Validator {
            glob: "*".into(),
            command: cmd.split(' ').map(str::to_owned).collect(),
            scope: Scope::File,
            timeout_s: 5,
            reject_exits: vec![Exits::One(1)],
            code: Verdict::FormatInvalid,
            memory_mb: 256,
        }
    }

    #[test]
    fn globs_without_a_slash_match_names_in_any_folder() {
        let m = matcher("*.nc").unwrap();
        assert!(m.is_match("a.nc") && m.is_match("MSEC_DAT_1/x/a.NC"));
        assert!(!m.is_match("a.nc.bak"));
        let m = matcher("MSEC_DAT_*/*.fits").unwrap();
        assert!(m.is_match("MSEC_DAT_1/a.fits") && !m.is_match("MSEC_DAT_1/x/a.fits") && !m.is_match("a.fits"));
    }

    #[test]
    fn exits_and_problems() {
        let mut x = v("fitsverify -q -e {}");
        assert_eq!(x.problem(), None);
        x.reject_exits = vec![Exits::Range("1-255".into())];
        assert!(x.rejects(1) && x.rejects(200) && !x.rejects(0));
        x.reject_exits = vec![Exits::Range("0-3".into())];
        assert!(x.problem().is_some());
        assert!(v("ncdump -h").problem().unwrap().contains("{}"));
        let mut y = v("ncdump -h {}");
        y.glob = "[".into();
        assert!(y.problem().unwrap().contains("glob"));
        let a = argv(&v("tool --in={} {}"), Path::new("/s/a b"));
        assert_eq!(a.iter().map(|a| a.as_bytes()).collect::<Vec<_>>(), [&b"--in=/s/a b"[..], b"/s/a b"]);
    }

    #[test]
    fn output_is_bounded_and_escaped() {
        let mut c = Capture::default();
        for i in 0..100 {
            c.feed(format!("line {i}\x1b[31m\n").as_bytes());
        }
        let l = c.lines();
        assert_eq!(l.len(), OUTPUT_LINES);
        assert_eq!(l[0], "line 0\\x1b[31m");
        c.feed(&vec![b'x'; 1 << 20]);
        assert!(c.kept.len() <= OUTPUT_BYTES);
    }
}
