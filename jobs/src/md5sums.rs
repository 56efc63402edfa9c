//! md5sum-format manifests: `<hex>  <path>`, as written by `md5sum`, BagIt
//! (`manifest-md5.txt`) and most archive tooling.

use std::fmt::Write;

pub type Digest = [u8; 16];

/// Lower-case hex, since md-5's output type has no `LowerHex`.
pub fn hex(d: &Digest) -> String {
    let mut s = String::with_capacity(32);
    for b in d {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parse 32 hex digits, either case.
pub fn parse_hex(s: &str) -> Option<Digest> {
    let b = s.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// One checksum line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub number: usize,
    pub md5: Digest,
    /// As written, less a leading `./`; still untrusted.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub why: &'static str,
}

/// Is this entry name a checksum manifest rather than data?
pub fn is_manifest_name(name: &str) -> bool {
    let base = crate::names::basename(name);
    base == "MD5SUMS" || base == "manifest-md5.txt" || base.to_ascii_lowercase().ends_with(".md5")
}

/// Parse a whole manifest. Blank lines and `#` comments are skipped; CRLF is
/// accepted; the `*` binary marker is accepted; md5sum's `\`-escaped names
/// (for names holding a newline or backslash) are unescaped.
pub fn parse(text: &str) -> Result<Vec<Line>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let number = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line, number)?);
    }
    Ok(out)
}

fn parse_line(line: &str, number: usize) -> Result<Line, ParseError> {
    let err = |why| ParseError { line: number, why };
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let hex_part = line.get(..32).ok_or(err("shorter than an MD5"))?;
    let md5 = parse_hex(hex_part).ok_or(err("does not start with 32 hex digits"))?;
    let rest = &line[32..];
    let after_sep = rest.trim_start_matches([' ', '\t']);
    if after_sep.len() == rest.len() {
        return Err(err("no space between checksum and path"));
    }
    let path = after_sep.strip_prefix('*').unwrap_or(after_sep);
    let mut path = if escaped { unescape(path).ok_or(err("bad escape in path"))? } else { path.to_owned() };
    while let Some(p) = path.strip_prefix("./") {
        path = p.to_owned();
    }
    if path.is_empty() {
        return Err(err("no path after the checksum"));
    }
    Ok(Line { number, md5, path })
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "d41d8cd98f00b204e9800998ecf8427e";

    #[test]
    fn accepts_md5sum_variants() {
        let text = format!("{A}  a.txt\n{}\t*b/c.bin\r\n\n# comment\n{A} ./d.txt\n\\{A}  e\\\\f\n", A.to_uppercase());
        let lines = parse(&text).unwrap();
        let paths: Vec<_> = lines.iter().map(|l| l.path.as_str()).collect();
        assert_eq!(paths, ["a.txt", "b/c.bin", "d.txt", "e\\f"]);
        assert_eq!(hex(&lines[1].md5), A);
        assert_eq!(lines[2].number, 5);
    }

    #[test]
    fn refuses_malformed_lines() {
        for bad in ["xyz  a", &format!("{A}a.txt"), &format!("{A}  "), "0123456789abcdef0123456789abcdeZ  a"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn manifest_names() {
        assert!(is_manifest_name("MD5SUMS"));
        assert!(is_manifest_name("sub/x.MD5"));
        assert!(is_manifest_name("manifest-md5.txt"));
        assert!(!is_manifest_name("data.txt"));
    }
}
