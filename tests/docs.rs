//! The docs cannot drift from the code: docs/reference.md names every key
//! of the documented config.toml and every error code of the pipeline's
//! enum; both producer guides (English, French) give every code; the
//! English guide says each code's summary and advice in the very words
//! reports use (jobs/src/error.rs); the README stays short, links only
//! inside the repository, and every link into docs/ points at a file.

use std::fs;
use std::path::Path;

fn read(file: &str) -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// `section.key` for every key of config.toml, set or shown commented out
/// (`# key = example` under a table).
fn config_keys() -> Vec<String> {
    let mut keys = Vec::new();
    let mut table = String::new();
    for line in read("config.toml").lines() {
        let l = line.trim();
        let (commented, l) = match l.strip_prefix('#') {
            Some(c) => (true, c.trim()),
            None => (false, l),
        };
        // A table header, even commented out (`# [producers.IGNF.publish]`
        // shows where the example key below it goes).
        // `[[checks.validators]]`: an array of tables, named as a table.
        let l = l.strip_prefix('[').and_then(|t| t.strip_suffix(']')).filter(|t| t.starts_with('[')).unwrap_or(l);
        if let Some(t) = l.strip_prefix('[').and_then(|t| t.strip_suffix(']'))
            && !t.is_empty()
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            table = t.to_owned();
            continue;
        }
        let Some((key, _)) = l.split_once(" = ") else { continue };
        // A key starts with a letter: `# 0 = inotify` is prose.
        if !key.starts_with(|c: char| c.is_ascii_lowercase())
            || !key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            continue;
        }
        if commented && table.is_empty() {
            continue;
        }
        keys.push(if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") });
    }
    keys
}

#[test]
fn reference_names_every_config_key_and_error_code() {
    let reference = read("docs/reference.md");
    let keys = config_keys();
    assert!(keys.len() > 40, "{keys:?}");
    for k in &keys {
        assert!(reference.contains(&format!("`{k}`")), "docs/reference.md lacks the config key `{k}`");
    }
    // Named in config.toml's comments only (a producer table's key).
    assert!(reference.contains("`producers.<P>.http_users`"), "docs/reference.md lacks http_users");
    for code in jobs::Code::ALL {
        assert!(reference.contains(&format!("`{}`", code.as_str())), "docs/reference.md lacks the code {code}");
    }
}

#[test]
fn producer_guides_give_every_code_in_the_reports_words() {
    let en = read("docs/producer-guide.md");
    let fr = read("docs/guide-producteur.md");
    for code in jobs::Code::ALL {
        let c = format!("`{}`", code.as_str());
        assert!(fr.contains(&c), "docs/guide-producteur.md lacks {c}");
        let row = en.lines().find(|l| l.starts_with(&format!("| {c} |"))).unwrap_or_else(|| panic!("no row for {c}"));
        assert!(row.contains(&code.summary().replace('|', "\\|")), "{c}: not the summary reports give: {row}");
        assert!(row.contains(&code.advice().replace('|', "\\|")), "{c}: not the advice reports give: {row}");
    }
}

#[test]
fn readme_is_short_and_links_stay_in_the_repository() {
    let readme = read("README.md");
    assert!(readme.lines().count() <= 300, "README.md has {} lines", readme.lines().count());
    assert!(readme.contains("```mermaid"), "the deposit's life as a diagram");
    for file in [
        "README.md",
        "docs/operator-guide.md",
        "docs/producer-guide.md",
        "docs/guide-producteur.md",
        "docs/reference.md",
        "docs/design.md",
    ] {
        let text = read(file);
        assert!(!text.contains("../shared") && !text.contains("SPEC.md"), "{file} links outside the repository");
        // Relative Markdown links point at files that exist.
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join(Path::new(file).parent().unwrap());
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or_default();
            let path = target.split('#').next().unwrap_or_default();
            if path.is_empty() || path.contains("://") {
                continue;
            }
            assert!(base.join(path).exists(), "{file}: link to {target}, which is not there");
        }
    }
}
