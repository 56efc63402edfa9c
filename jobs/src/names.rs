//! Judging entry names. A name from a zip is untrusted: it is checked as
//! written and rejected when unsafe, never "repaired" (repairing is how
//! `foo/../bar` silently becomes `bar`).

use unicode_normalization::UnicodeNormalization;

use crate::error::Code;

/// Longest path component most filesystems accept (bytes).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Why a name was refused, before the caller adds stage and entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    pub code: Code,
    pub why: &'static str,
}

const fn bad(code: Code, why: &'static str) -> NameError {
    NameError { code, why }
}

/// Check one entry name (directory entries end with `/`). Returns the name
/// without its trailing slash.
pub fn check_name(name: &str, max_path_len: u64) -> Result<&str, NameError> {
    if name.is_empty() {
        return Err(bad(Code::NameInvalid, "empty name"));
    }
    if name.contains('\\') {
        return Err(bad(Code::UnsafePath, "backslash in name"));
    }
    if name.starts_with('/') {
        return Err(bad(Code::UnsafePath, "absolute path"));
    }
    let b = name.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err(bad(Code::UnsafePath, "drive letter"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad(Code::NameInvalid, "control character in name"));
    }
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(bad(Code::NameInvalid, "empty name"));
    }
    for comp in trimmed.split('/') {
        match comp {
            ".." => return Err(bad(Code::UnsafePath, "`..` component")),
            "." => return Err(bad(Code::UnsafePath, "`.` component")),
            "" => return Err(bad(Code::NameInvalid, "empty path component (`//`)")),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(bad(Code::NameInvalid, "path component longer than 255 bytes"));
            }
            _ => {}
        }
    }
    if trimmed.len() as u64 > max_path_len {
        return Err(bad(Code::LimitExceeded, "path longer than limits.max_path_len"));
    }
    Ok(trimmed)
}

/// The key two published names collide on: NFC, then case-folded when the
/// filesystem or its users treat case as equal.
pub fn conflict_key(path: &str, case_insensitive: bool) -> String {
    let nfc: String = path.nfc().collect();
    if case_insensitive {
        // Full Unicode lowercasing; close to case folding for every script a
        // producer is likely to use (German ß stays ß, which is the safe side).
        nfc.to_lowercase()
    } else {
        nfc
    }
}

/// The final component of a `/`-separated path.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The folder part of a `/`-separated path ("" at the root).
pub fn dirname(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// Join a folder and a relative path.
pub fn join(dir: &str, rel: &str) -> String {
    if dir.is_empty() { rel.to_owned() } else { format!("{dir}/{rel}") }
}

/// Decode an entry name: UTF-8 when flagged or valid, else CP437 (what DOS
/// and Windows Explorer write without the flag).
pub fn decode_name(raw: &[u8], utf8_flag: bool) -> Result<String, NameError> {
    match std::str::from_utf8(raw) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) if utf8_flag => Err(bad(Code::NameInvalid, "name flagged UTF-8 is not valid UTF-8")),
        Err(_) => Ok(raw.iter().map(|&c| cp437(c)).collect()),
    }
}

fn cp437(c: u8) -> char {
    const HIGH: [char; 128] = [
        'Ç', 'ü', 'é', 'â', 'ä', 'à', 'å', 'ç', 'ê', 'ë', 'è', 'ï', 'î', 'ì', 'Ä', 'Å', 'É', 'æ', 'Æ', 'ô', 'ö', 'ò',
        'û', 'ù', 'ÿ', 'Ö', 'Ü', '¢', '£', '¥', '₧', 'ƒ', 'á', 'í', 'ó', 'ú', 'ñ', 'Ñ', 'ª', 'º', '¿', '⌐', '¬', '½',
        '¼', '¡', '«', '»', '░', '▒', '▓', '│', '┤', '╡', '╢', '╖', '╕', '╣', '║', '╗', '╝', '╜', '╛', '┐', '└', '┴',
        '┬', '├', '─', '┼', '╞', '╟', '╚', '╔', '╩', '╦', '╠', '═', '╬', '╧', '╨', '╤', '╥', '╙', '╘', '╒', '╓', '╫',
        '╪', '┘', '┌', '█', '▄', '▌', '▐', '▀', 'α', 'ß', 'Γ', 'π', 'Σ', 'σ', 'µ', 'τ', 'Φ', 'Θ', 'Ω', 'δ', '∞', 'φ',
        'ε', '∩', '≡', '±', '≥', '≤', '⌠', '⌡', '÷', '≈', '°', '∙', '·', '√', 'ⁿ', '²', '■', '\u{a0}',
    ];
    if c < 0x80 { c as char } else { HIGH[(c - 0x80) as usize] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_enclosed_name_would_repair() {
        for (name, code) in [
            ("/etc/abs.txt", Code::UnsafePath),
            ("C:\\win.txt", Code::UnsafePath),
            ("c:/win.txt", Code::UnsafePath),
            ("foo/../bar.txt", Code::UnsafePath),
            ("../up.txt", Code::UnsafePath),
            ("a\\b.txt", Code::UnsafePath),
            ("./a.txt", Code::UnsafePath),
            ("a//b.txt", Code::NameInvalid),
            ("a\u{0}b", Code::NameInvalid),
            ("a\nb", Code::NameInvalid),
            ("", Code::NameInvalid),
            ("/", Code::UnsafePath),
        ] {
            assert_eq!(check_name(name, 1024).map_err(|e| e.code), Err(code), "{name:?}");
        }
        let long = "x".repeat(256);
        assert_eq!(check_name(&long, 4096).map_err(|e| e.code), Err(Code::NameInvalid));
        assert_eq!(check_name("a/b/c.txt", 4).map_err(|e| e.code), Err(Code::LimitExceeded));
    }

    #[test]
    fn accepts_ordinary_names() {
        assert_eq!(check_name("a/b.txt", 1024), Ok("a/b.txt"));
        assert_eq!(check_name("dir/", 1024), Ok("dir"));
        assert_eq!(check_name("données/été..txt", 1024), Ok("données/été..txt"));
    }

    #[test]
    fn keys_fold_case_and_normalisation() {
        assert_eq!(conflict_key("Caf\u{e9}.TXT", true), conflict_key("cafe\u{301}.txt", true));
        assert_ne!(conflict_key("A.txt", false), conflict_key("a.txt", false));
        assert_eq!(conflict_key("caf\u{e9}", false), conflict_key("cafe\u{301}", false));
    }

    #[test]
    fn cp437_decodes() {
        assert_eq!(decode_name(b"caf\x82.txt", false).unwrap(), "café.txt");
        assert!(decode_name(b"caf\x82.txt", true).is_err());
        assert_eq!(decode_name("é".as_bytes(), false).unwrap(), "é");
    }
}
