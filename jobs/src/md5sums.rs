//! md5sum-format manifests: `<hex>  <path>`, as written by `md5sum`,
//! `sha256sum`, `sha512sum`, BagIt (`manifest-md5.txt`) and most archive
//! tooling. MD5 is the one every file gets; SHA-256 and SHA-512 are
//! computed only for the files something gives them for.

use std::fmt::Write;

use sha2::Digest as _;

use crate::error::Code;

/// A checksum algorithm a producer may give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algo {
    Md5,
    Sha256,
    Sha512,
    /// BagIt's older manifests (`manifest-sha1.txt`, `manifest-sha224.txt`):
    /// only a bag's manifests ask for these, never a sidecar or SUMS file.
    Sha1,
    Sha224,
}

impl Algo {
    /// Bytes of a digest.
    pub fn bytes(self) -> usize {
        match self {
            Algo::Md5 => 16,
            Algo::Sha256 => 32,
            Algo::Sha512 => 64,
            Algo::Sha1 => 20,
            Algo::Sha224 => 28,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Algo::Md5 => "MD5",
            Algo::Sha256 => "SHA-256",
            Algo::Sha512 => "SHA-512",
            Algo::Sha1 => "SHA-1",
            Algo::Sha224 => "SHA-224",
        }
    }

    /// The sidecar's extension and the `*.<ext>` manifests'.
    pub fn ext(self) -> &'static str {
        match self {
            Algo::Md5 => "md5",
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
            Algo::Sha1 => "sha1",
            Algo::Sha224 => "sha224",
        }
    }

    /// The code of a mismatch: MD5's own, kept for the reports and scripts
    /// that already know it.
    pub fn mismatch(self) -> Code {
        match self {
            Algo::Md5 => Code::Md5Mismatch,
            Algo::Sha256 | Algo::Sha512 | Algo::Sha1 | Algo::Sha224 => Code::ChecksumMismatch,
        }
    }

    /// The algorithms beside MD5 (sidecars looked for, manifests).
    pub const OTHERS: [Algo; 2] = [Algo::Sha256, Algo::Sha512];
}

/// One digest, of its algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sum {
    pub algo: Algo,
    pub bytes: Vec<u8>,
}

impl Sum {
    pub fn hex(&self) -> String {
        hex_of(&self.bytes)
    }
}

/// Which of the digests beside MD5 one piece of data needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Want {
    pub sha256: bool,
    pub sha512: bool,
    pub sha1: bool,
    pub sha224: bool,
}

impl Want {
    pub fn add(&mut self, algo: Algo) {
        match algo {
            Algo::Md5 => {}
            Algo::Sha256 => self.sha256 = true,
            Algo::Sha512 => self.sha512 = true,
            Algo::Sha1 => self.sha1 = true,
            Algo::Sha224 => self.sha224 = true,
        }
    }
}

/// The digests beside MD5 measured of one piece of data (only those wanted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra {
    pub sha256: Option<Vec<u8>>,
    pub sha512: Option<Vec<u8>>,
    pub sha1: Option<Vec<u8>>,
    pub sha224: Option<Vec<u8>>,
}

impl Extra {
    pub fn get(&self, algo: Algo) -> Option<&[u8]> {
        match algo {
            Algo::Md5 => None,
            Algo::Sha256 => self.sha256.as_deref(),
            Algo::Sha512 => self.sha512.as_deref(),
            Algo::Sha1 => self.sha1.as_deref(),
            Algo::Sha224 => self.sha224.as_deref(),
        }
    }
}

/// The wanted hashers, fed the same buffers as MD5 (no second read).
#[derive(Default)]
pub struct Hashers {
    sha256: Option<sha2::Sha256>,
    sha512: Option<sha2::Sha512>,
    sha1: Option<sha1::Sha1>,
    sha224: Option<sha2::Sha224>,
}

impl Hashers {
    pub fn new(want: Want) -> Hashers {
        Hashers {
            sha256: want.sha256.then(sha2::Sha256::new),
            sha512: want.sha512.then(sha2::Sha512::new),
            sha1: want.sha1.then(sha1::Sha1::new),
            sha224: want.sha224.then(sha2::Sha224::new),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        if let Some(h) = self.sha256.as_mut() {
            h.update(data);
        }
        if let Some(h) = self.sha512.as_mut() {
            h.update(data);
        }
        if let Some(h) = self.sha1.as_mut() {
            h.update(data);
        }
        if let Some(h) = self.sha224.as_mut() {
            h.update(data);
        }
    }

    pub fn finish(self) -> Extra {
        Extra {
            sha256: self.sha256.map(|h| h.finalize().to_vec()),
            sha512: self.sha512.map(|h| h.finalize().to_vec()),
            sha1: self.sha1.map(|h| h.finalize().to_vec()),
            sha224: self.sha224.map(|h| h.finalize().to_vec()),
        }
    }
}

/// A writer that hashes what passes through it: wraps the unpack pass's
/// output, so the digests are of exactly the bytes written.
pub struct Tee<'a> {
    pub inner: &'a mut dyn std::io::Write,
    pub hashers: Hashers,
}

impl std::io::Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hashers.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub type Digest = [u8; 16];

/// Lower-case hex, since md-5's output type has no `LowerHex`.
pub fn hex(d: &Digest) -> String {
    hex_of(d)
}

pub fn hex_of(d: &[u8]) -> String {
    let mut s = String::with_capacity(d.len() * 2);
    for b in d {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parse 32 hex digits, either case.
pub fn parse_hex(s: &str) -> Option<Digest> {
    parse_sum(s, Algo::Md5)?.bytes.try_into().ok()
}

/// Parse the hex digits of one digest of `algo`, either case.
pub fn parse_sum(s: &str, algo: Algo) -> Option<Sum> {
    let b = s.as_bytes();
    if b.len() != algo.bytes() * 2 {
        return None;
    }
    let mut out = Vec::with_capacity(algo.bytes());
    for pair in b.chunks_exact(2) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out.push((hi * 16 + lo) as u8);
    }
    Some(Sum { algo, bytes: out })
}

/// One checksum line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub number: usize,
    pub sum: Sum,
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
    manifest_algo(name).is_some()
}

/// The algorithm of the checksum manifest this entry name is, if it is one.
pub fn manifest_algo(name: &str) -> Option<Algo> {
    let base = crate::names::basename(name);
    let lower = base.to_ascii_lowercase();
    [Algo::Md5, Algo::Sha256, Algo::Sha512].into_iter().find(|a| {
        let ext = a.ext();
        base == format!("{}SUMS", ext.to_ascii_uppercase())
            || base == format!("manifest-{ext}.txt")
            || lower.ends_with(&format!(".{ext}"))
    })
}

/// Parse a whole MD5 manifest.
pub fn parse(text: &str) -> Result<Vec<Line>, ParseError> {
    parse_as(text, Algo::Md5)
}

/// Parse a whole manifest of `algo`. Blank lines and `#` comments are skipped; CRLF is
/// accepted; the `*` binary marker is accepted; md5sum's `\`-escaped names
/// (for names holding a newline or backslash) are unescaped.
pub fn parse_as(text: &str, algo: Algo) -> Result<Vec<Line>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let number = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line, number, algo)?);
    }
    Ok(out)
}

fn parse_line(line: &str, number: usize, algo: Algo) -> Result<Line, ParseError> {
    let err = |why| ParseError { line: number, why };
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let digits = algo.bytes() * 2;
    let hex_part = line.get(..digits).ok_or(err("shorter than a checksum of its kind"))?;
    let sum = parse_sum(hex_part, algo).ok_or(match algo {
        Algo::Md5 => err("does not start with 32 hex digits"),
        Algo::Sha256 => err("does not start with 64 hex digits (SHA-256)"),
        Algo::Sha512 => err("does not start with 128 hex digits (SHA-512)"),
        Algo::Sha1 => err("does not start with 40 hex digits (SHA-1)"),
        Algo::Sha224 => err("does not start with 56 hex digits (SHA-224)"),
    })?;
    let rest = &line[digits..];
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
    Ok(Line { number, sum, path })
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
        assert_eq!(lines[1].sum.hex(), A);
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
        assert_eq!(manifest_algo("SHA256SUMS"), Some(Algo::Sha256));
        assert_eq!(manifest_algo("d/x.SHA512"), Some(Algo::Sha512));
        assert_eq!(manifest_algo("manifest-sha256.txt"), Some(Algo::Sha256));
        assert_eq!(manifest_algo("MD5SUMS"), Some(Algo::Md5));
        assert_eq!(manifest_algo("sha256sums.txt"), None);
    }

    #[test]
    fn sha_lines_have_their_own_length() {
        let h256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let lines = parse_as(&format!("{h256}  a\n"), Algo::Sha256).unwrap();
        assert_eq!((lines[0].sum.hex().as_str(), lines[0].path.as_str()), (h256, "a"));
        // An MD5 in a SHA-256 manifest is refused, not misread.
        assert!(parse_as(&format!("{A}  a\n"), Algo::Sha256).is_err());
        assert!(parse_as(&format!("{h256}  a\n"), Algo::Md5).is_err());
    }
}
