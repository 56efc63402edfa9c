//! `depot`: the ingest daemon of a scientific data archive. This binary is
//! the thin edge around the `jobs` pipeline: argument parsing, config,
//! output and exit codes.

mod config;
mod daemon;
mod hook;
mod lease;
mod logging;
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

#[derive(Parser)]
#[command(name = "depot", version, about = "Ingest daemon of a scientific data archive")]
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
    /// the archive to <drop_root>/<P>/previous or rejected.
    Ingest {
        archive: PathBuf,
        #[arg(long)]
        producer: String,
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
        /// Run only the watcher (claims and queues) or only the workers.
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
    /// deposit looks like (README), to try the daemon or start from.
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
}

#[derive(Subcommand)]
enum ProducerCommand {
    /// The producer's system account, its folders with the README's owners
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    All,
    Watcher,
    Worker,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Check { archive, producer, config, json, quiet } => {
            cmd_check(&archive, producer.as_deref(), &config, json, quiet)
        }
        Command::Ingest { archive, producer, config, json, quiet } => {
            cmd_ingest(&archive, &producer, &config, json, quiet)
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
        Command::Producer { command: ProducerCommand::Add { producer, user, key, rsync_port, force, config } } => {
            config.load().and_then(|c| producer::add(&c, &producer, user.as_deref(), key.as_deref(), rsync_port, force))
        }
        Command::Producer { command: ProducerCommand::List { config } } => {
            config.load().and_then(|c| producer::list(&c))
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

fn cmd_check(archive: &Path, producer: Option<&str>, config: &ConfigArg, json: bool, quiet: bool) -> Result<u8> {
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
        Ok(summary) => Report::success(base, summary.file_count, summary.total_bytes, None),
        Err(e) => Report::failure(base, &e),
    };
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text_check());
    }
    Ok(if report.accepted { ACCEPTED } else { REJECTED })
}

fn cmd_ingest(archive: &Path, producer: &str, config: &ConfigArg, json: bool, quiet: bool) -> Result<u8> {
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
                Ok(p) => Report::success(base, p.file_count, p.total_bytes, Some(p.release.display().to_string())),
                Err(_) => Report::failure(base, &e),
            });
            return Err(anyhow::anyhow!("{e}"));
        }
    };
    record(&report);
    print_report(&report, json);
    Ok(if report.accepted { ACCEPTED } else { REJECTED })
}
