//! Judging entry names. A name from a zip is untrusted: it is checked as
//! written and rejected when unsafe, never "repaired" (repairing is how
//! `foo/../bar` silently becomes `bar`).

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;

use crate::error::Code;

/// Longest path component most filesystems accept (bytes).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Why a name was refused, before the caller adds stage and entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    pub code: Code,
    pub why: Cow<'static, str>,
}

const fn bad(code: Code, why: &'static str) -> NameError {
    NameError { code, why: Cow::Borrowed(why) }
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
    if case_insensitive {
        // Unicode's canonical caseless match (NFD, full case folding,
        // normalised again; NFC rather than NFD keeps keys readable). Full
        // folding, not lower-casing: lower-casing keeps `ς` and `σ` apart
        // and `ß` apart from `ss`, names that case-insensitive systems and
        // people take for one.
        let nfd: String = path.nfd().collect();
        caseless::default_case_fold_str(&nfd).nfc().collect()
    } else {
        path.nfc().collect()
    }
}

/// Invisible characters: a name holding one looks like another name (or,
/// for bidi controls, shows its characters in another order), so a
/// producer or a user downloading it cannot tell what it is. These are
/// Unicode's Default_Ignorable_Code_Point set (DerivedCoreProperties).
const IGNORABLE: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
];

/// Bidi controls change the order in which a name is displayed.
fn is_bidi_control(c: char) -> bool {
    matches!(c as u32, 0x061C | 0x200E | 0x200F | 0x202A..=0x202E | 0x2066..=0x2069)
}

fn is_ignorable(c: char) -> bool {
    let c = c as u32;
    IGNORABLE.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// The Unicode name of an invisible character, for a message a producer can
/// search for.
fn char_name(c: char) -> Cow<'static, str> {
    let n = c as u32;
    let name = match n {
        0x00AD => "SOFT HYPHEN",
        0x034F => "COMBINING GRAPHEME JOINER",
        0x061C => "ARABIC LETTER MARK",
        0x115F => "HANGUL CHOSEONG FILLER",
        0x1160 => "HANGUL JUNGSEONG FILLER",
        0x17B4 => "KHMER VOWEL INHERENT AQ",
        0x17B5 => "KHMER VOWEL INHERENT AA",
        0x180B => "MONGOLIAN FREE VARIATION SELECTOR ONE",
        0x180C => "MONGOLIAN FREE VARIATION SELECTOR TWO",
        0x180D => "MONGOLIAN FREE VARIATION SELECTOR THREE",
        0x180E => "MONGOLIAN VOWEL SEPARATOR",
        0x180F => "MONGOLIAN FREE VARIATION SELECTOR FOUR",
        0x200B => "ZERO WIDTH SPACE",
        0x200C => "ZERO WIDTH NON-JOINER",
        0x200D => "ZERO WIDTH JOINER",
        0x200E => "LEFT-TO-RIGHT MARK",
        0x200F => "RIGHT-TO-LEFT MARK",
        0x202A => "LEFT-TO-RIGHT EMBEDDING",
        0x202B => "RIGHT-TO-LEFT EMBEDDING",
        0x202C => "POP DIRECTIONAL FORMATTING",
        0x202D => "LEFT-TO-RIGHT OVERRIDE",
        0x202E => "RIGHT-TO-LEFT OVERRIDE",
        0x2060 => "WORD JOINER",
        0x2061 => "FUNCTION APPLICATION",
        0x2062 => "INVISIBLE TIMES",
        0x2063 => "INVISIBLE SEPARATOR",
        0x2064 => "INVISIBLE PLUS",
        0x2066 => "LEFT-TO-RIGHT ISOLATE",
        0x2067 => "RIGHT-TO-LEFT ISOLATE",
        0x2068 => "FIRST STRONG ISOLATE",
        0x2069 => "POP DIRECTIONAL ISOLATE",
        0x206A => "INHIBIT SYMMETRIC SWAPPING",
        0x206B => "ACTIVATE SYMMETRIC SWAPPING",
        0x206C => "INHIBIT ARABIC FORM SHAPING",
        0x206D => "ACTIVATE ARABIC FORM SHAPING",
        0x206E => "NATIONAL DIGIT SHAPES",
        0x206F => "NOMINAL DIGIT SHAPES",
        0x3164 => "HANGUL FILLER",
        0xFEFF => "ZERO WIDTH NO-BREAK SPACE",
        0xFFA0 => "HALFWIDTH HANGUL FILLER",
        0x1BCA0 => "SHORTHAND FORMAT LETTER OVERLAP",
        0x1BCA1 => "SHORTHAND FORMAT CONTINUING OVERLAP",
        0x1BCA2 => "SHORTHAND FORMAT DOWN STEP",
        0x1BCA3 => "SHORTHAND FORMAT UP STEP",
        0x1D173 => "MUSICAL SYMBOL BEGIN BEAM",
        0x1D174 => "MUSICAL SYMBOL END BEAM",
        0x1D175 => "MUSICAL SYMBOL BEGIN TIE",
        0x1D176 => "MUSICAL SYMBOL END TIE",
        0x1D177 => "MUSICAL SYMBOL BEGIN SLUR",
        0x1D178 => "MUSICAL SYMBOL END SLUR",
        0x1D179 => "MUSICAL SYMBOL BEGIN PHRASE",
        0x1D17A => "MUSICAL SYMBOL END PHRASE",
        0xE0001 => "LANGUAGE TAG",
        0xE007F => "CANCEL TAG",
        0xFE00..=0xFE0F => return format!("VARIATION SELECTOR-{}", n - 0xFE00 + 1).into(),
        0xE0100..=0xE01EF => return format!("VARIATION SELECTOR-{}", n - 0xE0100 + 17).into(),
        0xE0020..=0xE007E => "TAG CHARACTER",
        _ => "RESERVED INVISIBLE CHARACTER",
    };
    Cow::Borrowed(name)
}

/// Device names Windows reserves in every folder, whatever the extension.
fn windows_reserved(component: &str) -> Option<&str> {
    // Windows drops trailing spaces before matching: `NUL .txt` is NUL too.
    let stem = component.split('.').next().unwrap_or(component).trim_end_matches(' ');
    let upper = stem.to_ascii_uppercase();
    let reserved = match upper.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" => true,
        s => {
            (s.starts_with("COM") || s.starts_with("LPT"))
                && matches!(&s[3..], "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "¹" | "²" | "³")
        }
    };
    reserved.then_some(stem)
}

/// Characters no Windows file name may hold (besides `/`, `\\` and
/// controls, refused elsewhere or below).
const WINDOWS_FORBIDDEN: &[char] = &['"', ':', '<', '>', '?', '*', '|'];

/// The rules beyond safety (run after [`check_name`], on the same name):
/// no invisible characters, always; with `portable`, nothing Windows cannot
/// store. Both are NAME_INVALID: the name is acceptable on this host but
/// would mislead, or fail, where the release is downloaded.
pub fn check_rules(name: &str, portable: bool) -> Result<(), NameError> {
    if let Some(c) = name.chars().find(|&c| is_ignorable(c)) {
        let effect = if is_bidi_control(c) {
            "invisible; it makes the name display differently from what it is"
        } else {
            "invisible; the name looks like one without it"
        };
        return Err(NameError {
            code: Code::NameInvalid,
            why: format!("contains U+{:04X} {} ({effect})", c as u32, char_name(c)).into(),
        });
    }
    if !portable {
        return Ok(());
    }
    for comp in name.split('/') {
        if let Some(c) = comp.chars().find(|&c| WINDOWS_FORBIDDEN.contains(&c) || c.is_control()) {
            let what = if c.is_control() {
                format!("the control character U+{:04X}", c as u32)
            } else if c == ':' {
                "`:` (on Windows it names a hidden stream of the file)".to_owned()
            } else {
                format!("`{c}`")
            };
            return Err(NameError {
                code: Code::NameInvalid,
                why: format!(
                    "`{}` holds {what}, which Windows does not allow in a file name (checks.portable_names)",
                    printable(comp)
                )
                .into(),
            });
        }
        if let Some(stem) = windows_reserved(comp) {
            return Err(NameError {
                code: Code::NameInvalid,
                why: format!(
                    "`{comp}`: {stem} is a device name on Windows (with any extension), no file can have it there (checks.portable_names)"
                )
                .into(),
            });
        }
        if let Some(last) = comp.chars().last()
            && (last == '.' || last == ' ')
        {
            let what = if last == '.' { "a dot" } else { "a space" };
            return Err(NameError {
                code: Code::NameInvalid,
                why: format!(
                    "`{comp}` ends in {what}, which Windows drops: the name would change on download (checks.portable_names)"
                )
                .into(),
            });
        }
    }
    Ok(())
}

/// `s` as it may be shown to a person (report.txt, `depot check`, status
/// and history, logs): control characters (C0, DEL, C1), bidi controls and
/// other invisible characters written as `\x1b` / `\u{202e}`, so that a
/// name from an archive can neither drive the terminal that shows it
/// (`ESC ] 2 ;` retitles it) nor disguise itself. Machine outputs
/// (report.json, Redis, `--json`) keep the raw name: JSON escapes it.
pub fn printable(s: &str) -> Cow<'_, str> {
    let hidden = |c: char| c.is_control() || is_ignorable(c) || is_bidi_control(c);
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if !hidden(c) => out.push(c),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
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
    fn portable_names_refuse_what_windows_cannot_store() {
        for name in ["a\"b.txt", "d/a:b.txt", "a<b", "a>b", "what?.txt", "*.txt", "a|b", "a\u{1}b", "a\u{7f}b"] {
            let e = check_rules(name, true).expect_err(name);
            assert_eq!(e.code, Code::NameInvalid, "{name}");
            assert!(e.why.contains("checks.portable_names"), "{}", e.why);
            assert!(check_rules(name, false).is_ok() || name.chars().any(char::is_control), "{name}");
        }
        assert!(check_rules("d/a b+c,d;e=f[g]h{i}j~k!@#$%^&'()-.txt", true).is_ok());
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
    fn keys_use_full_case_folding() {
        let k = |s| conflict_key(s, true);
        assert_eq!(k("\u{3c3}.txt"), k("\u{3c2}.txt"));
        assert_eq!(k("\u{3a3}.txt"), k("\u{3c2}.txt"));
        assert_eq!(k("stra\u{df}e"), k("STRASSE"));
        assert_eq!(k("\u{1e9e}"), k("ss"));
        // A capital with a subscript iota folds to two letters.
        assert_eq!(k("\u{1f88}"), k("\u{1f00}\u{3b9}"));
        assert_ne!(conflict_key("\u{3c3}", false), conflict_key("\u{3c2}", false));
    }

    #[test]
    fn invisible_characters_are_named() {
        for c in [
            '\u{200e}',
            '\u{200f}',
            '\u{202a}',
            '\u{202e}',
            '\u{2066}',
            '\u{2069}',
            '\u{61c}',
            '\u{200b}',
            '\u{200d}',
            '\u{2060}',
            '\u{2064}',
            '\u{feff}',
            '\u{ad}',
            '\u{34f}',
            '\u{180b}',
            '\u{180f}',
            '\u{fe00}',
            '\u{fe0f}',
            '\u{e0000}',
            '\u{e0fff}',
            '\u{1160}',
            '\u{3164}',
            '\u{ffa0}',
            '\u{115f}',
            '\u{17b4}',
            '\u{17b5}',
            '\u{2065}',
            '\u{206a}',
            '\u{206f}',
            '\u{1d173}',
            '\u{1d17a}',
            '\u{1bca0}',
            '\u{1bca3}',
        ] {
            let name = format!("a{c}b.txt");
            let e = check_rules(&name, false).expect_err(&format!("{:04X}", c as u32));
            assert_eq!(e.code, Code::NameInvalid);
            assert!(e.why.contains(&format!("U+{:04X}", c as u32)), "{}", e.why);
        }
        let e = check_rules("x\u{202e}txt.exe", false).unwrap_err();
        assert_eq!(
            e.why,
            "contains U+202E RIGHT-TO-LEFT OVERRIDE (invisible; it makes the name display differently from what it is)"
        );
        assert!(check_rules("x\u{200b}y", true).unwrap_err().why.contains("ZERO WIDTH SPACE"));
        assert!(check_rules("x\u{fe0f}y", true).unwrap_err().why.contains("VARIATION SELECTOR-16"));
        // Visible neighbours are fine.
        assert_eq!(check_rules("caf\u{e9}/\u{3b1}\u{2013}b \u{a0}c.txt", true), Ok(()));
    }

    #[test]
    fn windows_reserved_names_and_trailing_dots() {
        for name in [
            "NUL",
            "nul.txt",
            "Con.tar.gz",
            "a/aux",
            "PRN.csv",
            "COM1",
            "com9.log",
            "LPT1.x",
            "lpt9",
            "COM\u{b9}",
            "LPT\u{b2}.txt",
            "com\u{b3}",
            "NUL .txt",
            "a./b",
            "a/b.",
            "dir /x",
            "x ",
        ] {
            assert_eq!(check_rules(name, true).map_err(|e| e.code), Err(Code::NameInvalid), "{name:?}");
            assert_eq!(check_rules(name, false), Ok(()), "{name:?}");
        }
        for name in ["CONSOLE.txt", "nul_data.txt", "COM10", "COM0", "LPT", "a.b/c.d", "..x", "auxiliary/a", "con-x"] {
            assert_eq!(check_rules(name, true), Ok(()), "{name:?}");
        }
        assert!(check_rules("d/Con.tar.gz", true).unwrap_err().why.contains("`Con.tar.gz`: Con is a device name"));
    }

    #[test]
    fn cp437_decodes() {
        assert_eq!(decode_name(b"caf\x82.txt", false).unwrap(), "café.txt");
        assert!(decode_name(b"caf\x82.txt", true).is_err());
        assert_eq!(decode_name("é".as_bytes(), false).unwrap(), "é");
    }
}
