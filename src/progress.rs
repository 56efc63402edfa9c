//! Progress on a terminal for `depot check` / `depot ingest`: one line,
//! rewritten at most ten times a second, on stderr.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jobs::Stage;
use jobs::unpack::Progress;

pub struct Terminal {
    bytes: AtomicU64,
    files: AtomicU64,
    total_bytes: AtomicU64,
    total_files: AtomicU64,
    state: Mutex<(Instant, &'static str)>,
}

impl Terminal {
    pub fn new() -> Self {
        Terminal {
            bytes: AtomicU64::new(0),
            files: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            total_files: AtomicU64::new(0),
            state: Mutex::new((Instant::now() - Duration::from_secs(1), "unpack")),
        }
    }

    fn draw(&self, force: bool) {
        let Ok(mut st) = self.state.try_lock() else { return };
        if !force && st.0.elapsed() < Duration::from_millis(100) {
            return;
        }
        st.0 = Instant::now();
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let _ = write!(
            std::io::stderr(),
            "\r{:<9} {:>9.1} / {:.1} MiB  {} / {} files   ",
            st.1,
            mib(self.bytes.load(Ordering::Relaxed)),
            mib(self.total_bytes.load(Ordering::Relaxed)),
            self.files.load(Ordering::Relaxed),
            self.total_files.load(Ordering::Relaxed),
        );
    }

    pub fn done(&self) {
        self.draw(true);
        let _ = writeln!(std::io::stderr());
    }
}

impl Progress for Terminal {
    fn stage(&self, stage: Stage) {
        if let Ok(mut st) = self.state.lock() {
            st.1 = stage.as_str();
        }
        self.draw(true);
    }
    fn totals(&self, bytes: u64, files: u64) {
        self.total_bytes.store(bytes, Ordering::Relaxed);
        self.total_files.store(files, Ordering::Relaxed);
    }
    fn advance(&self, bytes: u64, files: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.files.fetch_add(files, Ordering::Relaxed);
        self.draw(false);
    }
    fn warn(&self, msg: &str) {
        // On a line of its own, under the progress line.
        eprintln!("\nwarning: {msg}");
    }
}

/// No progress, but the pipeline's warnings (an ignored sidecar) still
/// reach the person who ran the command.
pub struct Plain;

impl Progress for Plain {
    fn warn(&self, msg: &str) {
        eprintln!("warning: {msg}");
    }
}
