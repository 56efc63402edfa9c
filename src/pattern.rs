//! What `producers.pattern` may admit. Every name it matches becomes a
//! folder under drop_root and publish_root, part of a system account's
//! name and of every deposit id, so the pattern is judged by what it can
//! match, not by the names it happens to meet: its syntax tree is walked,
//! and a pattern that could admit one unsafe name is refused with the
//! reason (see `jobs::deposit::unsafe_producer` for what is safe).

use regex_syntax::hir::{Class, Hir, HirKind, Look};

use jobs::deposit::MAX_PRODUCER_LEN;

fn safe_byte(b: u32) -> bool {
    matches!(b, 0x30..=0x39 | 0x41..=0x5a | 0x61..=0x7a | 0x5f | 0x2d)
}

fn shown(c: u32) -> String {
    match char::from_u32(c) {
        Some(ch) if !ch.is_control() && !ch.is_whitespace() => format!("`{ch}`"),
        _ => format!("U+{c:04X}"),
    }
}

/// The first character the pattern can match that is not safe, if any.
fn unsafe_char(h: &Hir) -> Option<u32> {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => None,
        HirKind::Literal(l) => match std::str::from_utf8(&l.0) {
            Ok(s) => s.chars().map(u32::from).find(|&c| !safe_byte(c)),
            Err(_) => l.0.iter().map(|&b| u32::from(b)).find(|&b| !safe_byte(b)),
        },
        HirKind::Class(Class::Unicode(c)) => {
            c.ranges().iter().find_map(|r| (u32::from(r.start())..=u32::from(r.end())).find(|&x| !safe_byte(x)))
        }
        HirKind::Class(Class::Bytes(c)) => {
            c.ranges().iter().find_map(|r| (u32::from(r.start())..=u32::from(r.end())).find(|&x| !safe_byte(x)))
        }
        HirKind::Repetition(r) => unsafe_char(&r.sub),
        HirKind::Capture(c) => unsafe_char(&c.sub),
        HirKind::Concat(v) | HirKind::Alternation(v) => v.iter().find_map(unsafe_char),
    }
}

/// (can a match start with `-`, can it be empty)
fn dash_first(h: &Hir) -> (bool, bool) {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => (false, true),
        HirKind::Literal(l) => (l.0.first() == Some(&b'-'), l.0.is_empty()),
        HirKind::Class(Class::Unicode(c)) => {
            (c.ranges().iter().any(|r| r.start() <= '-' && '-' <= r.end()), c.ranges().is_empty())
        }
        HirKind::Class(Class::Bytes(c)) => {
            (c.ranges().iter().any(|r| r.start() <= b'-' && b'-' <= r.end()), c.ranges().is_empty())
        }
        HirKind::Repetition(r) => {
            let (d, e) = dash_first(&r.sub);
            (d && r.max != Some(0), e || r.min == 0)
        }
        HirKind::Capture(c) => dash_first(&c.sub),
        HirKind::Concat(v) => {
            let mut dash = false;
            for x in v {
                let (d, e) = dash_first(x);
                dash |= d;
                if !e {
                    return (dash, false);
                }
            }
            (dash, true)
        }
        HirKind::Alternation(v) => v.iter().map(dash_first).fold((false, false), |(d, e), (d2, e2)| (d || d2, e || e2)),
    }
}

/// Why `pattern` could admit a name that is not a safe producer name, if
/// it could. The reason names what to change.
pub fn problem(pattern: &str) -> Option<String> {
    let hir = match regex_syntax::parse(pattern) {
        Ok(h) => h,
        Err(e) => return Some(format!("does not parse: {e}")),
    };
    let p = hir.properties();
    if !p.look_set_prefix().contains(Look::Start) || !p.look_set_suffix().contains(Look::End) {
        return Some(
            "must be anchored at both ends (`^…$`): unanchored, it admits every name that merely contains a match, `.depot` included"
                .into(),
        );
    }
    if let Some(c) = unsafe_char(&hir) {
        return Some(format!(
            "admits {}: a producer name may hold only ASCII letters, digits, `_` and `-` (no dot: names of depot's own folders, .depot, .staging, .locks, start with one); with (?i), \\d or \\w, add (?-u) so that they mean ASCII only",
            shown(c)
        ));
    }
    match p.maximum_len() {
        Some(n) if n <= MAX_PRODUCER_LEN => {}
        _ => {
            return Some(format!(
                "admits names longer than {MAX_PRODUCER_LEN} bytes (each producer's account p-<P> must fit in the 32 bytes useradd allows): bound every repetition"
            ));
        }
    }
    if dash_first(&hir).0 {
        return Some("admits names starting with `-` (every tool would take them for an option)".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::problem;

    #[test]
    fn safe_patterns_pass() {
        for p in [
            "^[A-Z]{4}$",
            "^[A-Z]{2,4}(-[A-Z]{2,4})?$",
            "^(?:MSEC|IGNF|AB_12)$",
            "^[A-Za-z0-9_][A-Za-z0-9_-]{0,29}$",
            "(?i-u)^[a-z]{3}$",
            r"(?-u)^\d{4}$",
        ] {
            assert_eq!(problem(p), None, "{p}");
        }
    }

    #[test]
    fn unsafe_patterns_are_refused_with_the_reason() {
        for (p, why) in [
            ("^[A-Za-z.]{4,8}$", "`.`"),
            ("[A-Z]{4}", "anchored"),
            ("^[A-Z]{4}", "anchored"),
            ("^[A-Z]{4}$|x", "anchored"),
            ("(?m)^[A-Z]{4}$", "anchored"),
            ("^[A-Z]+$", "longer than 30"),
            ("^[A-Z]{31}$", "longer than 30"),
            ("^[A-Z-]{2,4}$", "starting with `-`"),
            ("^(?:x?)-[A-Z]$", "starting with `-`"),
            ("^[^/]{4}$", "admits"),
            (r"^\w{4}$", "admits"),
            ("(?i)^[a-z]{3}$", "(?-u)"),
            (r"^\d{4}$", "(?-u)"),
            ("^a b$", "U+0020"),
            ("^\\.depot$", "`.`"),
        ] {
            let got = problem(p).unwrap_or_else(|| panic!("{p} passed"));
            assert!(got.contains(why), "{p}: {got}");
        }
    }
}
