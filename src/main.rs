//! `depot`: the ingest daemon of a scientific data archive. This binary is
//! the thin edge around the `jobs` pipeline: argument parsing, config,
//! output and exit codes.

mod config;
mod daemon;
mod hook;
mod metrics;
mod ops;
mod poll;
mod producer;
mod progress;
mod selfcheck;
mod service;
mod sidecars;
mod spool;
mod state;
mod status;
mod watcher;
mod worker;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use jobs::pipeline::{self, IngestOptions, Job};
use jobs::report::{Report, ReportBase};
use jobs::unpack::Progress;
use jobs::{Error, Settings};

use crate::config::Config;

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
        /// Config whose checks and limits apply (default: built-in defaults).
        #[arg(long)]
        config: Option<PathBuf>,
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
        #[arg(long, default_value = "config.toml", env = "DEPOT_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        #[arg(long, short)]
        quiet: bool,
    },
    /// The daemon: watch the drop folders, queue in Redis, run workers.
    Run {
        #[arg(long, default_value = "config.toml", env = "DEPOT_CONFIG")]
        config: PathBuf,
        /// Run only the watcher (claims and queues) or only the workers.
        #[arg(long, value_enum, default_value = "all")]
        role: RoleArg,
        /// Log format: text for a terminal, json for journald shippers.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Status from Redis: all producers, one producer, or one deposit.
    Status {
        /// A producer id or a deposit id.
        what: Option<String>,
        #[arg(long, default_value = "config.toml", env = "DEPOT_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Take a rejected deposit back from rejected/ into new/, to run again.
    Retry {
        deposit_id: String,
        #[arg(long, default_value = "config.toml", env = "DEPOT_CONFIG")]
        config: PathBuf,
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
        #[arg(long, default_value = "config.toml", env = "DEPOT_CONFIG")]
        config: PathBuf,
    },
    /// Every producer folder: its account, folders' health, last state.
    List {
        #[arg(long, default_value = "config.toml", env = "DEPOT_CONFIG")]
        config: PathBuf,
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
    /// Redis. Exit 0 when all is well, 2 otherwise.
    Check {
        #[arg(long, default_value = "config.toml", env = "DEPOT_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Check { archive, producer, config, json, quiet } => {
            cmd_check(&archive, producer.as_deref(), config.as_deref(), json, quiet)
        }
        Command::Ingest { archive, producer, config, json, quiet } => {
            cmd_ingest(&archive, &producer, &config, json, quiet)
        }
        Command::Run { config, role, log_format } => cmd_run(config, role, log_format),
        Command::Status { what, config, json } => {
            runtime().and_then(|rt| rt.block_on(ops::status(&config, what.as_deref(), json)))
        }
        Command::Retry { deposit_id, config } => runtime().and_then(|rt| rt.block_on(ops::retry(&config, &deposit_id))),
        Command::Config { command: ConfigCommand::Check { config } } => cmd_config_check(&config),
        Command::Producer { command: ProducerCommand::Add { producer, user, key, rsync_port, config } } => {
            Config::load(&config)
                .and_then(|c| producer::add(&c, &producer, user.as_deref(), key.as_deref(), rsync_port))
        }
        Command::Producer { command: ProducerCommand::List { config } } => {
            Config::load(&config).and_then(|c| producer::list(&c))
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

fn cmd_run(config: PathBuf, role: RoleArg, log_format: LogFormat) -> Result<u8> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // notify logs a harmless line at info for every removed folder watch.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,notify=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
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
fn cmd_config_check(config: &Path) -> Result<u8> {
    let cfg = Config::load(config)?;
    print!("{}", cfg.effective());
    let mut findings = selfcheck::filesystem(&cfg);
    findings.push(runtime()?.block_on(selfcheck::redis(&cfg)));
    print!("{}", selfcheck::render(&findings));
    Ok(if findings.iter().all(|f| f.ok) { ACCEPTED } else { TROUBLE })
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

fn exit_for(e: &Error) -> u8 {
    if e.is_transient() { TROUBLE } else { REJECTED }
}

fn cmd_check(archive: &Path, producer: Option<&str>, config: Option<&Path>, json: bool, quiet: bool) -> Result<u8> {
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
    let settings = match config {
        Some(c) => Config::load(c)?.settings_for(&producer),
        None => Settings::default(),
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
    match r {
        Ok(summary) => {
            print_report(&Report::success(base, summary.file_count, summary.total_bytes, None), json);
            Ok(ACCEPTED)
        }
        Err(e) => {
            print_report(&Report::failure(base, &e), json);
            Ok(exit_for(&e))
        }
    }
}

fn cmd_ingest(archive: &Path, producer: &str, config: &Path, json: bool, quiet: bool) -> Result<u8> {
    let cfg = Config::load(config)?;
    if !cfg.is_producer(producer) {
        bail!("{producer:?} is not a producer of this config (producers.pattern / producers.allow)");
    }
    let name = file_name(archive)?;
    if !archive.is_file() {
        bail!("{} is not a file", archive.display());
    }
    let settings = cfg.settings_for(producer);
    let sidecar = sidecar_of(archive);
    let id = jobs::deposit::new_id(producer);
    let job = Job { id: &id, producer, archive, name: &name, sidecar: sidecar.as_deref(), settings: &settings };
    let started = jobs::deposit::now_rfc3339();
    let term = progress(quiet);
    let prog = term.as_ref().map_or(&progress::Plain as &dyn Progress, |t| t as &dyn Progress);
    jobs::publish::clean_stale(&cfg.publish_root).context("cannot clean stale staging")?;
    let outcome = pipeline::preflight(&job, &cfg.publish_root)
        .and_then(|()| pipeline::ingest(&job, &cfg.publish_root, IngestOptions::default(), prog));
    if let Some(t) = &term {
        t.done();
    }
    // No burst to protect here: old releases go at once.
    if let Err(e) = jobs::publish::empty_pruned(&cfg.publish_root) {
        eprintln!("warning: cannot delete pruned releases: {e}");
    }
    if let Err(e) = &outcome
        && e.is_transient()
    {
        // Not the producer's fault: leave the deposit where it is.
        let base = ReportBase { deposit: id.clone(), producer: producer.to_owned(), archive: name.clone(), started };
        print_report(&Report::failure(base, e), json);
        return Ok(TROUBLE);
    }
    let (report, _) = pipeline::finish(&job, &cfg.drop_root.join(producer), &started, &outcome)?;
    print_report(&report, json);
    Ok(if report.accepted { ACCEPTED } else { REJECTED })
}
