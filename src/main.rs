//! `depot`: the ingest daemon of a scientific data archive. This binary is
//! the thin edge around the `jobs` pipeline: argument parsing, config,
//! output and exit codes.

mod config;
mod daemon;
mod hook;
mod http;
mod lease;
mod logging;
mod manpage;
mod metrics;
mod ops;
mod pattern;
mod poll;
mod producer;
mod progress;
mod sample;
mod selfcheck;
mod service;
mod sidecars;
mod spool;
mod state;
mod status;
mod target;
mod watcher;
mod worker;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use jobs::Settings;
use jobs::pipeline::{self, Job};
use jobs::report::{Report, ReportBase};
use jobs::unpack::Progress;

use crate::config::Config;

/// `-c/--config FILE`, shared by every command. Without it: `$DEPOT_CONFIG`,
/// else `./config.toml` if it exists, else `/etc/depot/config.toml`.
#[derive(Args, Clone, Debug)]
struct ConfigArg {
    /// Config file (default: $DEPOT_CONFIG, else ./config.toml if it
    /// exists, else /etc/depot/config.toml).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> Option<&Path> {
        self.config.as_deref()
    }
    fn load(&self) -> Result<Config> {
        config::find_and_load(self.path())
    }
}

/// Exit codes of `check` and `ingest`.
const ACCEPTED: u8 = 0;
const REJECTED: u8 = 1;
const TROUBLE: u8 = 2;

/// depot(1)'s description: what `man depot` opens on.
const LONG_ABOUT: &str = "Ingest daemon of a scientific data archive.

Producers upload zip archives into <drop_root>/<P>/new/ (sftp, scp, rsync). depot notices each finished \
upload, checks it (safe names, CRC32 and MD5s, name conflicts, Theia pivot consistency, limits), publishes it \
atomically under <publish_root>/<P>/releases/<deposit-id>/ with <publish_root>/<P>/current pointing at it, and \
moves it to <P>/previous/, or to <P>/rejected/<deposit-id>/ with a report.txt telling the producer what was wrong.

Every command finds its configuration the same way: -c/--config FILE, else $DEPOT_CONFIG, else ./config.toml if \
it exists, else /etc/depot/config.toml (see depot.toml(5)). State is kept in Redis (redis.url) and on disk.

Exit codes: 0 success (check, ingest: accepted); 1 rejected (check, ingest); 2 usage, configuration or \
host error, or an unknown producer or deposit.";

#[derive(Parser)]
#[command(name = "depot", version, about = "Ingest daemon of a scientific data archive", long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every check on an archive; write nothing, need no Redis.
    /// Exit 0 if it would be accepted, 1 if rejected, 2 on error.
    Check {
        archive: PathBuf,
        /// Producer id (default: the archive name before its first `_`).
        #[arg(long)]
        producer: Option<String>,
        /// Judge it as this profile (default: the producer's in the config,
        /// else theia).
        #[arg(long, value_enum)]
        profile: Option<CheckProfile>,
        /// Config whose checks and limits apply (looked up as for every
        /// command; built-in defaults when there is none).
        #[command(flatten)]
        config: ConfigArg,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Ingest one deposit now, without the queue: check, publish, and move
    /// the archive to <drop_root>/<P>/previous or rejected. An archive from
    /// outside <drop_root>/<P>/new/ is copied there first (the original
    /// stays), unless --move.
    Ingest {
        archive: PathBuf,
        #[arg(long)]
        producer: String,
        /// Move an archive from outside the producer's new/ into
        /// previous/ or rejected/ rather than a copy of it.
        #[arg(long = "move")]
        move_it: bool,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
        #[arg(long, short)]
        quiet: bool,
    },
    /// The daemon: watch the drop folders, queue in Redis, run workers.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Run only the watcher (claims and queues), only the workers, or
        /// only the HTTP door.
        #[arg(long, value_enum, default_value = "all")]
        role: RoleArg,
        /// Log format: text (plain off a terminal; to the journal with
        /// fields under systemd), or json, one object per line.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Status from Redis: all producers, one producer, or one deposit.
    /// Exit 2 for an unknown producer or deposit.
    Status {
        /// A producer id or a deposit id.
        what: Option<String>,
        /// Only deposits that ended in FAILURE (of every producer, or of P).
        #[arg(long)]
        failed: bool,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// A producer's deposits, newest first: from Redis, and from
    /// rejected/ and releases/ on disk for what Redis no longer knows.
    History {
        producer: String,
        /// At most this many deposits.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Take a rejected deposit back from rejected/ into new/, to run again.
    Retry {
        deposit_id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write a small deposit that depot accepts, for producer P: what a
    /// deposit looks like (docs/producer-guide.md), to try the daemon or start from.
    Sample {
        producer: String,
        /// Where to write it (never over an existing file).
        out: PathBuf,
        /// theia or plain (default: the producer's profile in the config,
        /// else theia).
        #[arg(long, value_enum)]
        profile: Option<sample::Profile>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Producers: onboard one (account, folders, key, sshd block), list them.
    Producer {
        #[command(subcommand)]
        command: ProducerCommand,
    },
    /// Print the shell completion script for bash, zsh or fish (the Debian
    /// package installs all three).
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Write the man pages into OUTDIR/man1 (depot.1, one page per
    /// subcommand) and OUTDIR/man5 (depot.toml.5): `depot man
    /// ~/.cargo/share/man` makes `man depot` work (scripts/deb.sh runs it
    /// before `cargo deb`).
    #[command(hide = true)]
    Man { outdir: PathBuf },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand)]
enum ProducerCommand {
    /// The producer's system account, its folders with the operator guide's owners
    /// and modes, its authorized key; prints the sshd block. Idempotent.
    Add {
        producer: String,
        /// The account (default: p-<producer in lower case>).
        #[arg(long)]
        user: Option<String>,
        /// A public key file: its keys are added to the account's.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The sshd port of rsync sessions, in the printed block.
        #[arg(long, default_value_t = producer::RSYNC_PORT)]
        rsync_port: u16,
        /// An HTTP user of the producer's (or NAME = P itself): a bcrypt
        /// line in http.users_file, the password from a prompt or from
        /// standard input, never from the command line. Only this is done.
        #[arg(long, value_name = "NAME")]
        http_user: Option<String>,
        /// Take over an existing account that is not this producer's own
        /// (another home), with a warning saying what changes.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Every producer folder: its account, folders' health, last state.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// The profiles of the SPEC.
#[derive(Clone, Copy, clap::ValueEnum)]
enum CheckProfile {
    Theia,
    Plain,
    Bagit,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    All,
    Watcher,
    Worker,
    /// The HTTP door alone ([http] listen).
    Http,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate the config, print the effective configuration, then
    /// check the roots (exist, writable, renames stay on one filesystem) and
    /// Redis, then what an operator may have got wrong (warnings do not
    /// change the exit code). Exit 0 when all is well, 2 otherwise.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Output piped into a reader that stops early (`depot status | head`)
/// ends the command quietly, as with every Unix tool, instead of a panic
/// and a backtrace ("failed printing to stdout"). Rust ignores SIGPIPE;
/// the daemon keeps that (a client going away is an EPIPE to handle, not
/// a reason to die), the one-shot commands get the default back.
fn end_on_sigpipe() {
    // SAFETY: called first thing in main, before any thread exists;
    // SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        end_on_sigpipe();
    }
    let r = match cli.command {
        Command::Check { archive, producer, profile, config, json, quiet } => {
            cmd_check(&archive, producer.as_deref(), profile, &config, json, quiet)
        }
        Command::Ingest { archive, producer, move_it, config, json, quiet } => {
            cmd_ingest(&archive, &producer, move_it, &config, json, quiet)
        }
        Command::Run { config, role, log_format } => cmd_run(&config, role, log_format),
        Command::Status { what, failed, config, json } => {
            runtime().and_then(|rt| rt.block_on(ops::status(config.path(), what.as_deref(), failed, json)))
        }
        Command::History { producer, limit, config, json } => {
            runtime().and_then(|rt| rt.block_on(ops::history(config.path(), &producer, limit, json)))
        }
        Command::Retry { deposit_id, config } => {
            runtime().and_then(|rt| rt.block_on(ops::retry(config.path(), &deposit_id)))
        }
        Command::Sample { producer, out, profile, config } => cmd_sample(&producer, &out, profile, &config),
        Command::Config { command: ConfigCommand::Check { config } } => cmd_config_check(&config),
        Command::Producer { command: ProducerCommand::Add { http_user: Some(u), producer, config, .. } } => {
            config.load().and_then(|c| http::users::add(&c, &producer, &u))
        }
        Command::Producer { command: ProducerCommand::Add { producer, user, key, rsync_port, force, config, .. } } => {
            config.load().and_then(|c| producer::add(&c, &producer, user.as_deref(), key.as_deref(), rsync_port, force))
        }
        Command::Producer { command: ProducerCommand::List { config } } => {
            config.load().and_then(|c| producer::list(&c))
        }
        Command::Completions { shell } => {
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            // Into a buffer: clap_complete panics on a write error (a
            // closed pipe), this says it.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "depot", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .context("cannot write the completion script")
                .map(|()| ACCEPTED)
        }
        Command::Man { outdir } => {
            manpage::write_all(<Cli as clap::CommandFactory>::command(), &outdir).map(|()| ACCEPTED)
        }
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("depot: {e:#}");
            ExitCode::from(TROUBLE)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

fn cmd_run(config: &ConfigArg, role: RoleArg, log_format: LogFormat) -> Result<u8> {
    // The path, not the loaded file: SIGHUP reads it again. When there is
    // none, find_and_load's error says where it looked.
    let config = match config::locate(config.path()) {
        Some((path, _)) => path,
        None => config::find_and_load(None)?.path,
    };
    logging::init(match log_format {
        LogFormat::Json => logging::Format::Json,
        LogFormat::Text => logging::Format::Text,
    });
    let role = match role {
        RoleArg::All => daemon::Role::All,
        RoleArg::Watcher => daemon::Role::Watcher,
        RoleArg::Worker => daemon::Role::Worker,
        RoleArg::Http => daemon::Role::Http,
    };
    // The blocking pool runs each job's pipeline and the scheduler's file
    // work: bounded (tokio's default is 512 threads), so that TasksMax= in
    // the unit holds whatever the load (see systemd/depot.service).
    let concurrency = Config::load(&config).map_or(8, |c| c.workers.concurrency);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(concurrency.saturating_mul(2).saturating_add(16))
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(daemon::run(config, role))?;
    Ok(0)
}

/// Effective config, then every start-up check `depot run` makes; exit 2
/// when any fails, so a deploy script can gate on it.
fn cmd_config_check(config: &ConfigArg) -> Result<u8> {
    let cfg = config.load()?;
    print!("{}", cfg.effective());
    let mut findings = selfcheck::filesystem(&cfg);
    findings.push(runtime()?.block_on(selfcheck::redis(&cfg)));
    findings.extend(selfcheck::buckets(&cfg));
    findings.extend(selfcheck::operator(&cfg));
    findings.extend(http::check(&cfg));
    print!("{}", selfcheck::render(&findings));
    Ok(if findings.iter().all(|f| f.ok) { ACCEPTED } else { TROUBLE })
}

fn cmd_sample(producer: &str, out: &Path, profile: Option<sample::Profile>, config: &ConfigArg) -> Result<u8> {
    let profile = match profile {
        Some(p) => p,
        // As the config (if any) will judge it.
        None => match config::locate(config.path()) {
            Some(_) => match config.load()?.settings_for(producer).profile {
                jobs::Profile::Plain => sample::Profile::Plain,
                jobs::Profile::Theia => sample::Profile::Theia,
                jobs::Profile::Bagit => bail!(
                    "{producer}'s profile is \"bagit\": make a bag with a BagIt tool (bagit.py --sha256 mybag) and zip it (zip -r bag.zip mybag/); or pass --profile theia|plain"
                ),
            },
            None => sample::Profile::Theia,
        },
    };
    sample::write(producer, profile, out)?;
    let (name, note) = match profile {
        sample::Profile::Theia => ("theia", String::new()),
        sample::Profile::Plain => ("plain", format!(" where {producer}'s profile is \"plain\"")),
    };
    println!(
        "{}: a {name} deposit of producer {producer}, which depot accepts{note} (`depot check {} --producer {producer}`)",
        out.display(),
        out.display()
    );
    Ok(ACCEPTED)
}

fn progress(quiet: bool) -> Option<progress::Terminal> {
    (!quiet && std::io::stdout().is_terminal()).then(progress::Terminal::new)
}

fn file_name(p: &Path) -> Result<String> {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).context("the archive path has no file name")
}

/// `<archive>.md5` beside the archive, if it is there.
fn sidecar_of(archive: &Path) -> Option<PathBuf> {
    let mut s = archive.as_os_str().to_owned();
    s.push(".md5");
    let p = PathBuf::from(s);
    // Never through a link: the pipeline would ignore it, and rotation
    // must not move a link into previous/ or rejected/.
    std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()).then_some(p)
}

fn print_report(report: &Report, json: bool) {
    if json {
        println!("{}", report.to_json());
    } else {
        let advice = report.code.and_then(jobs::Code::parse).map(jobs::Code::advice);
        print!("{}", report.to_text(advice));
    }
}

fn cmd_check(
    archive: &Path,
    producer: Option<&str>,
    profile: Option<CheckProfile>,
    config: &ConfigArg,
    json: bool,
    quiet: bool,
) -> Result<u8> {
    let profile = match profile {
        None => None,
        Some(CheckProfile::Theia) => Some(jobs::Profile::Theia),
        Some(CheckProfile::Plain) => Some(jobs::Profile::Plain),
        Some(CheckProfile::Bagit) => Some(jobs::Profile::Bagit),
    };
    // A file that is not there or cannot be read is the caller's mistake
    // (a usage error), not a verdict on a deposit.
    match std::fs::File::open(archive) {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_dir()) => {
            bail!("{} is a folder, not a zip archive", archive.display())
        }
        Ok(_) => {}
        Err(e) => bail!("cannot read {}: {e}", archive.display()),
    }
    let name = file_name(archive)?;
    let producer = match producer {
        Some(p) => p.to_owned(),
        None => name
            .split('_')
            .next()
            .filter(|p| !p.is_empty() && *p != name)
            .map(str::to_owned)
            .with_context(|| format!("cannot tell the producer from {name:?}: pass --producer"))?,
    };
    let settings = match config::locate(config.path()) {
        Some((path, src)) => {
            let cfg = config::find_and_load(config.path())?;
            if src != config::Source::Flag && !quiet {
                eprintln!("depot: checks and limits of {} ({})", path.display(), src.describe());
            }
            cfg.settings_for(&producer)
        }
        None => {
            if !quiet {
                eprintln!(
                    "depot: no config found ($DEPOT_CONFIG, ./config.toml, {}): built-in defaults",
                    config::SYSTEM_CONFIG
                );
            }
            Settings::default()
        }
    };
    let settings = Settings { profile: profile.unwrap_or(settings.profile), ..settings };
    let sidecar = sidecar_of(archive);
    let job = Job {
        id: "check",
        producer: &producer,
        archive,
        name: &name,
        sidecar: sidecar.as_deref(),
        settings: &settings,
    };
    let base = ReportBase {
        deposit: "check".into(),
        producer: producer.clone(),
        archive: name.clone(),
        started: jobs::deposit::now_rfc3339(),
    };
    let term = progress(quiet);
    let r = pipeline::check(&job, term.as_ref().map_or(&progress::Plain as &dyn Progress, |t| t as &dyn Progress));
    if let Some(t) = &term {
        t.done();
    }
    let report = match r {
        // The machine's fault, not the deposit's: say what failed.
        Err(e) if e.is_transient() => bail!("cannot check {}: {}", archive.display(), e.message()),
        Ok(summary) => Report::success(base, summary.file_count, summary.total_bytes, None).warned(&summary.warnings),
        Err(e) => Report::failure(base, &e),
    };
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text_check());
    }
    Ok(if report.accepted { ACCEPTED } else { REJECTED })
}

/// A copy of an archive (and its sidecar) taken in by `depot ingest` from
/// outside the producer's `new/`, in `<drop_root>/.depot/ingest/<id>/`
/// (the drop filesystem, so that rotation renames it): the folder goes
/// when this does, with whatever rotation left in it.
struct CopyIn {
    dir: PathBuf,
    archive: PathBuf,
    sidecar: Option<PathBuf>,
}

impl CopyIn {
    fn make(drop_root: &Path, id: &str, archive: &Path, sidecar: Option<&Path>, name: &str) -> Result<CopyIn> {
        let dir = drop_root.join(".depot/ingest").join(id);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut c = CopyIn { archive: dir.join(name), sidecar: None, dir };
        std::fs::copy(archive, &c.archive)
            .with_context(|| format!("cannot copy {} to {}", archive.display(), c.archive.display()))?;
        if let Some(s) = sidecar {
            let to = c.dir.join(format!("{name}.md5"));
            std::fs::copy(s, &to).with_context(|| format!("cannot copy {}", s.display()))?;
            c.sidecar = Some(to);
        }
        Ok(c)
    }
}

impl Drop for CopyIn {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Is `archive` in the producer's own `new/` (where the daemon would have
/// taken it from)? Only such a file is moved by default.
fn in_new(drop_root: &Path, producer: &str, archive: &Path) -> bool {
    let parent = match archive.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(parent), std::fs::canonicalize(drop_root.join(producer).join("new"))) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn cmd_ingest(
    archive: &Path,
    producer: &str,
    move_it: bool,
    config: &ConfigArg,
    json: bool,
    quiet: bool,
) -> Result<u8> {
    let cfg = config.load()?;
    if !cfg.is_producer(producer) {
        bail!("{producer:?} is not a producer of this config (producers.pattern / producers.allow)");
    }
    let name = file_name(archive)?;
    if !archive.is_file() {
        bail!("{} is not a file", archive.display());
    }
    if jobs::rotate::reserved_name(&name) {
        bail!(
            "{name:?} is the name of one of depot's own files beside a rejected archive (report.json, report.txt, retried); rename the archive"
        );
    }
    let settings = cfg.settings_for(producer);
    let sidecar = sidecar_of(archive);
    let id = jobs::deposit::new_id(producer);
    // Rotation moves the deposit into previous/ (where the next success
    // deletes it) or rejected/: a file from elsewhere is copied in first,
    // so that its original stays, unless the operator said --move.
    let copied = if move_it || in_new(&cfg.drop_root, producer, archive) {
        None
    } else {
        let c = CopyIn::make(&cfg.drop_root, &id, archive, sidecar.as_deref(), &name)?;
        if !quiet {
            eprintln!(
                "depot: {} is outside {producer}'s new/: a copy is ingested, the file itself stays (--move to move it)",
                archive.display()
            );
        }
        Some(c)
    };
    let (archive, sidecar) = match &copied {
        Some(c) => (c.archive.as_path(), c.sidecar.clone()),
        None => (archive, sidecar),
    };
    let job = Job { id: &id, producer, archive, name: &name, sidecar: sidecar.as_deref(), settings: &settings };
    let started = jobs::deposit::now_rfc3339();
    // Recorded in Redis under the daemon's keys when it answers, so that
    // `depot status` shows what this command published.
    let rt = runtime()?;
    let size = std::fs::metadata(archive).map_or(0, |m| m.len());
    let recorder = match rt.block_on(ops::Recorder::begin(&cfg, &id, producer, &name, size)) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!(
                "depot: warning: not recorded in Redis ({e:#}): `depot status` will not show deposit {id}; `depot history {producer}` finds it on disk"
            );
            None
        }
    };
    let term = progress(quiet);
    let prog = term.as_ref().map_or(&progress::Plain as &dyn Progress, |t| t as &dyn Progress);
    jobs::publish::clean_stale(&cfg.publish_root).context("cannot clean stale staging")?;
    let outcome = target::publish(&job, &cfg, prog);
    if let Some(t) = &term {
        t.done();
    }
    // No burst to protect here: old releases go at once.
    if let Err(e) = jobs::publish::empty_pruned(&cfg.publish_root) {
        eprintln!("warning: cannot delete pruned releases: {e}");
    }
    let record = |report: &Report| {
        if let Some(r) = &recorder
            && let Err(e) = rt.block_on(r.end(report))
        {
            eprintln!("depot: warning: cannot record the end of deposit {id} in Redis ({e:#})");
        }
    };
    if let Err(e) = &outcome
        && e.is_transient()
    {
        // Not the producer's fault: leave the deposit where it is.
        let base = ReportBase { deposit: id.clone(), producer: producer.to_owned(), archive: name.clone(), started };
        let report = Report::failure(base, e);
        record(&report);
        print_report(&report, json);
        return Ok(TROUBLE);
    }
    let finished = pipeline::finish(&job, &cfg.drop_root.join(producer), &started, &outcome);
    let report = match finished {
        Ok((report, _)) => report,
        Err(e) => {
            // Judged but not moved out of the way (rotation failed): the
            // status says what happened rather than stay at PROGRESS; a
            // published deposit is SUCCESS, whatever rotation did.
            let base =
                ReportBase { deposit: id.clone(), producer: producer.to_owned(), archive: name.clone(), started };
            record(&match &outcome {
                Ok(p) => Report::success(base, p.file_count, p.total_bytes, Some(p.release.display().to_string()))
                    .warned(&p.warnings),
                Err(_) => Report::failure(base, &e),
            });
            return Err(anyhow::anyhow!("{e}"));
        }
    };
    record(&report);
    print_report(&report, json);
    Ok(if report.accepted { ACCEPTED } else { REJECTED })
}
