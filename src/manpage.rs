//! Man pages, made from what cannot drift: the CLI definition (depot(1) and
//! one page per subcommand, through clap_mangen) and the documented default
//! config.toml (depot.toml(5): every key, its default and its comment).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// The repository's config.toml, as shipped in /usr/share/doc/depot.
const CONFIG: &str = include_str!("../config.toml");

/// A man tree: `OUTDIR/man1/depot*.1` and `OUTDIR/man5/depot.toml.5`, so
/// that OUTDIR can be a folder `man` searches (`~/.cargo/share/man` beside
/// `~/.cargo/bin`, or `/usr/local/share/man`).
pub fn write_all(cmd: clap::Command, outdir: &Path) -> Result<()> {
    let (man1, man5) = (outdir.join("man1"), outdir.join("man5"));
    for d in [&man1, &man5] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    clap_mangen::generate_to(cmd, &man1).with_context(|| format!("cannot write man pages into {}", man1.display()))?;
    let page = man5.join("depot.toml.5");
    std::fs::write(&page, config_page()).with_context(|| format!("cannot write {}", page.display()))?;
    let pages = std::fs::read_dir(&man1).map_or(0, |d| d.count());
    println!(
        "{}: {pages} pages in man1/ (depot and its subcommands) and depot.toml in man5/; `man depot` finds them \
         where man looks (a share/man beside a bin folder on PATH, or MANPATH)",
        outdir.display()
    );
    Ok(())
}

/// Text as roff reads it: a backslash is an escape, and a line that starts
/// with `.` or `'` a request.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') { format!("\\&{t}") } else { t }
}

/// depot.toml(5) from config.toml: its leading comment is the description,
/// each `[table]` a subsection, each `key = default` an entry with the
/// comment above it (comments of keys left unset, `# key = example`, stay
/// in the text of the next entry, as in the file).
pub fn config_page() -> String {
    let mut out = String::new();
    let _ = writeln!(out, ".TH DEPOT.TOML 5 \"\" \"depot {}\" \"File Formats\"", env!("CARGO_PKG_VERSION"));
    out.push_str(".SH NAME\ndepot.toml \\- configuration of depot(1)\n");
    out.push_str(
        ".SH SYNOPSIS\n/etc/depot/config.toml\n.SH DESCRIPTION\nEvery depot command finds its configuration the same way: \
         \\fB\\-c\\fR/\\fB\\-\\-config\\fR \\fIFILE\\fR, else \\fB$DEPOT_CONFIG\\fR, else \\fB./config.toml\\fR if it \
         exists, else \\fB/etc/depot/config.toml\\fR. The file is TOML. What follows is the documented default \
         configuration, key by key, with each key's default value.\n",
    );
    let mut comment: Vec<String> = Vec::new();
    let mut table = String::new();
    let mut example_table: Option<String> = None;
    let mut started = false;
    let mut keys = false;
    let flush = |out: &mut String, comment: &mut Vec<String>| {
        if !comment.is_empty() {
            out.push_str(&roff(&comment.join(" ")));
            out.push('\n');
            comment.clear();
        }
    };
    for line in CONFIG.lines() {
        let l = line.trim();
        if let Some(c) = l.strip_prefix('#') {
            let c = c.trim();
            if c.is_empty() {
                continue;
            }
            // `# [table]`: the commented keys below it are that table's
            // (an example table, `# [producers.MSEC]`), until a real one.
            if let Some(t) = c.strip_prefix('[').and_then(|t| t.strip_suffix(']'))
                && !t.contains(' ')
            {
                example_table = Some(t.to_owned());
                continue;
            }
            // `# key = example`: a key left unset by default, described by
            // the comment above it.
            let of = example_table.as_deref().unwrap_or(&table);
            if let Some((key, example)) = c.split_once(" = ")
                && !of.is_empty()
                && !key.is_empty()
                && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                let _ = writeln!(out, ".TP\n\\fB{}.{}\\fR (unset; for example {})", roff(of), roff(key), roff(example));
                if comment.is_empty() {
                    out.push_str("(see above)\n");
                }
                flush(&mut out, &mut comment);
                continue;
            }
            comment.push(c.to_owned());
        } else if l.is_empty() {
            if !started {
                // The file's own header: the description goes on.
                out.push_str(".PP\n");
                flush(&mut out, &mut comment);
                started = true;
            } else if !comment.is_empty() {
                out.push_str(".PP\n");
                flush(&mut out, &mut comment);
            }
        } else if let Some(t) = l.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            if !started {
                started = true;
            }
            if !keys {
                out.push_str(".SH KEYS\n");
                keys = true;
            }
            table = t.to_owned();
            example_table = None;
            let _ = writeln!(out, ".SS [{}]", roff(t));
            if !comment.is_empty() {
                out.push_str(".PP\n");
                flush(&mut out, &mut comment);
            }
        } else if let Some((key, value)) = l.split_once('=') {
            if table.is_empty() && !started {
                started = true;
            }
            if !keys {
                out.push_str(".SH KEYS\n.SS top level\n");
                keys = true;
            }
            let full = if table.is_empty() { key.trim().to_owned() } else { format!("{table}.{}", key.trim()) };
            let _ = writeln!(out, ".TP\n\\fB{}\\fR = {}", roff(&full), roff(value.trim()));
            if comment.is_empty() {
                out.push_str("(see above)\n");
            }
            flush(&mut out, &mut comment);
        }
    }
    flush(&mut out, &mut comment);
    out.push_str(
        ".SH FILES\n.TP\n/etc/depot/config.toml\nthe configuration of the packaged service\n.TP\n\
         /usr/share/doc/depot/config.toml\nthis documented default, as a file\n\
         .SH SEE ALSO\ndepot(1), depot\\-run(1), depot\\-config(1); docs/reference.md in the source, \
         /usr/share/doc/depot/ in the package\n",
    );
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_page_holds_every_key_of_config_toml() {
        let page = super::config_page();
        assert!(page.starts_with(".TH DEPOT.TOML 5"));
        assert_eq!(page.matches(".SH KEYS").count(), 1);
        for key in ["drop_root", "redis.url", "watch.settle_ms", "publish.s3.region", "limits.max_metadata_bytes"] {
            assert!(page.contains(&format!("\\fB{}\\fR", super::roff(key))), "{key}");
        }
        // No line that roff would take for a request by mistake.
        for l in page.lines() {
            assert!(
                !l.starts_with('\'')
                    && (!l.starts_with('.') || l.as_bytes().get(1).is_some_and(u8::is_ascii_uppercase)),
                "{l}"
            );
        }
    }
}
