//! Where `depot run` logs, and how.
//!
//! - Under systemd (`JOURNAL_STREAM` names our stderr): straight to the
//!   journal through `tracing-journald`, every field of a line as a
//!   journal field of its own (`deposit` → `DEPOSIT`, `producer` →
//!   `PRODUCER`, …), so that `journalctl -u depot DEPOSIT=<id>` and
//!   `PRODUCER=<P>` select one deposit's or one producer's lines. The
//!   MESSAGE holds the whole line (message and fields), as the text format
//!   shows it: `journalctl -u depot` alone must still tell the story.
//! - On a terminal: text with colours.
//! - Anywhere else (a file, a pipe, a unit without the journal): the same
//!   text, without ANSI escapes.
//! - `--log-format json`: one JSON object per line, wherever stderr goes.
//!
//! The queue library's own lines are left out unless `RUST_LOG` names it:
//! each of its workers logs four lines when Redis goes away, and the daemon
//! says what matters once per outage itself.

use std::fmt::Write as _;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// What `RUST_LOG` defaults to. notify logs a harmless line at info for
/// every removed folder watch.
pub const DEFAULT_FILTER: &str = "info,notify=warn";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Where the lines went, for a first line that says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Journal,
    Terminal,
    PlainText,
    Json,
}

/// The filter: `RUST_LOG` (or the default), with apalis quiet unless named.
pub fn filter_directives(rust_log: Option<&str>) -> String {
    let mut f = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or(DEFAULT_FILTER).to_owned();
    if !f.contains("apalis") {
        f.push_str(",apalis_core=off,apalis_redis=off,apalis=off");
    }
    f
}

/// Is stderr the journal stream systemd set up for us? `JOURNAL_STREAM` is
/// `<dev>:<inode>` of that stream; a child whose stderr was redirected
/// elsewhere inherits the variable but not the stream.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    let Ok(m) = std::fs::File::from(fd).metadata() else { return false };
    m.dev() == dev && m.ino() == ino
}

/// Install the subscriber for `depot run`.
pub fn init(format: Format) -> Sink {
    let directives = filter_directives(std::env::var("RUST_LOG").ok().as_deref());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(filter_directives(None)));
    if format == Format::Json {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).json().init();
        return Sink::Json;
    }
    if stderr_is_journal()
        && let Ok(j) = journald()
    {
        tracing_subscriber::registry().with(filter).with(Journal { inner: j }).init();
        return Sink::Journal;
    }
    let terminal = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(terminal).init();
    if terminal { Sink::Terminal } else { Sink::PlainText }
}

/// The journald layer: fields under their own names (no `F_` prefix), the
/// identifier `depot`, INFO as "informational" (journalctl -p notice and
/// above then shows what needs a look).
pub fn journald() -> std::io::Result<tracing_journald::Layer> {
    let mut prio = tracing_journald::PriorityMappings::new();
    prio.info = tracing_journald::Priority::Informational;
    prio.debug = tracing_journald::Priority::Debug;
    Ok(tracing_journald::Layer::new()?
        .with_field_prefix(None)
        .with_syslog_identifier("depot".into())
        .with_priority_mappings(prio))
}

/// An event's message and fields, as text.
#[derive(Default)]
struct Collect {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.push((field.name(), value.to_owned()));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let v = format!("{value:?}");
        if field.name() == "message" {
            self.message = v;
        } else {
            self.fields.push((field.name(), v));
        }
    }
}

impl Collect {
    /// `message k=v k2="with space"`, as the text format writes a line.
    fn line(&self) -> String {
        let mut s = self.message.clone();
        for (k, v) in &self.fields {
            if v.is_empty() || v.contains(char::is_whitespace) || v.contains('"') {
                let _ = write!(s, " {k}={v:?}");
            } else {
                let _ = write!(s, " {k}={v}");
            }
        }
        s
    }
}

/// The fields an event carries, as the journal will get them (field names
/// upper-cased, as tracing-journald writes them).
#[cfg(test)]
fn journal_fields(event: &Event<'_>) -> (String, Vec<(String, String)>) {
    let mut c = Collect::default();
    event.record(&mut c);
    let fields = c.fields.iter().map(|(k, v)| (k.to_ascii_uppercase(), v.clone())).collect();
    (c.line(), fields)
}

/// tracing-journald with MESSAGE made the whole line: the event is
/// re-issued with the same fields (they become journal fields) and its
/// message replaced by message plus fields.
struct Journal {
    inner: tracing_journald::Layer,
}

/// Events with more fields than this go through as they are.
const MAX_FIELDS: usize = 32;

impl<S> Layer<S> for Journal
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        self.inner.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        self.inner.on_record(id, values, ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let all: Vec<Field> = meta.fields().iter().collect();
        let Some(msg_at) = all.iter().position(|f| f.name() == "message") else {
            return self.inner.on_event(event, ctx);
        };
        if all.len() > MAX_FIELDS {
            return self.inner.on_event(event, ctx);
        }
        let mut c = Collect::default();
        event.record(&mut c);
        let line = c.line();
        // Each field's value as recorded, by its place in the field set.
        let texts: Vec<Option<String>> = all
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if i == msg_at {
                    Some(line.clone())
                } else {
                    c.fields.iter().find(|(k, _)| *k == f.name()).map(|(_, v)| v.clone())
                }
            })
            .collect();
        let shown: Vec<Option<tracing::field::DisplayValue<&String>>> =
            texts.iter().map(|t| t.as_ref().map(tracing::field::display)).collect();
        let pairs: [(&Field, Option<&dyn tracing::Value>); MAX_FIELDS] = std::array::from_fn(|i| match all.get(i) {
            Some(f) => (f, shown[i].as_ref().map(|v| v as &dyn tracing::Value)),
            None => (&all[msg_at], None),
        });
        let values = meta.fields().value_set(&pairs);
        let again = if event.is_contextual() {
            Event::new(meta, &values)
        } else {
            Event::new_child_of(event.parent().cloned(), meta, &values)
        };
        self.inner.on_event(&again, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A line and its journal fields.
    type Seen = (String, Vec<(String, String)>);

    /// Records what the journal layer would be given.
    struct Capture(Arc<Mutex<Vec<Seen>>>);

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            self.0.lock().unwrap().push(journal_fields(event));
        }
    }

    #[test]
    fn deposit_and_producer_become_journal_fields_and_the_message_keeps_them() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sub = tracing_subscriber::registry().with(Capture(seen.clone()));
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(deposit = %"20261122T101500Z-MSEC-1a2b3c4d", producer = %"MSEC", state = "FAILURE", error_code = "NOT_A_ZIP", "finished");
        });
        let seen = seen.lock().unwrap();
        let (line, fields) = &seen[0];
        assert_eq!(
            line,
            "finished deposit=20261122T101500Z-MSEC-1a2b3c4d producer=MSEC state=FAILURE error_code=NOT_A_ZIP"
        );
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("DEPOSIT"), Some("20261122T101500Z-MSEC-1a2b3c4d"));
        assert_eq!(get("PRODUCER"), Some("MSEC"));
        assert_eq!(get("ERROR_CODE"), Some("NOT_A_ZIP"));
    }

    #[test]
    fn apalis_is_quiet_unless_named() {
        assert_eq!(filter_directives(None), "info,notify=warn,apalis_core=off,apalis_redis=off,apalis=off");
        assert_eq!(filter_directives(Some("debug")), "debug,apalis_core=off,apalis_redis=off,apalis=off");
        assert_eq!(filter_directives(Some("info,apalis_core=debug")), "info,apalis_core=debug");
    }
}
