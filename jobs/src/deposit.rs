//! Deposit ids and times.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// RFC 3339 UTC, second precision: what the SPEC's status fields hold.
pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    now.format(&Rfc3339).unwrap_or_default()
}

/// Now as the time part of a deposit id (`yyyymmddThhmmssZ`, UTC).
pub fn stamp_now() -> String {
    OffsetDateTime::now_utc()
        .format(format_description!("[year][month][day]T[hour][minute][second]Z"))
        .unwrap_or_default()
}

/// `<UTC yyyymmddThhmmssZ>-<P>-<short random>`: sorts by time, and the
/// random part keeps two deposits of one second apart.
pub fn new_id(producer: &str) -> String {
    let now = OffsetDateTime::now_utc();
    let stamp = now.format(format_description!("[year][month][day]T[hour][minute][second]Z")).unwrap_or_default();
    let mut r = [0u8; 4];
    if getrandom::fill(&mut r).is_err() {
        r = now.nanosecond().to_le_bytes();
    }
    format!("{stamp}-{producer}-{:08x}", u32::from_le_bytes(r))
}

/// The longest producer name: its system account `p-<P>` must fit in the
/// 32 bytes useradd allows.
pub const MAX_PRODUCER_LEN: usize = 30;

/// Why `p` cannot be a producer, if it cannot. A producer's name is a
/// folder under `drop_root` and `publish_root`, part of its account's name
/// and of every deposit id: ASCII letters, digits, `_` and `-`, not
/// starting with `-` (an option to every tool) and at most
/// [`MAX_PRODUCER_LEN`] bytes. No dot, so it can never be one of depot's
/// own folders (`.depot`, `.staging`, `.locks`) nor `.`/`..`.
pub fn unsafe_producer(p: &str) -> Option<&'static str> {
    if p.is_empty() {
        Some("it is empty")
    } else if p.len() > MAX_PRODUCER_LEN {
        Some("it is longer than 30 bytes (its account p-<P> must fit in 32)")
    } else if !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        Some(
            "only ASCII letters, digits, `_` and `-` are allowed (no dot: names of depot's own folders start with one)",
        )
    } else if p.starts_with('-') {
        Some("it starts with `-`")
    } else {
        None
    }
}

/// The parts of a deposit id as `new_id` makes them: the 16-byte stamp,
/// `-`, the producer (which may hold `-` itself), `-`, 8 hex digits.
fn parts(s: &str) -> Option<(&str, &str, &str)> {
    let stamp = s.get(..16)?;
    let rest = s.get(16..)?.strip_prefix('-')?;
    let (producer, random) = rest.rsplit_once('-')?;
    let stamp_ok = stamp.bytes().all(|b| b.is_ascii_alphanumeric());
    let random_ok = random.len() == 8 && random.bytes().all(|b| b.is_ascii_hexdigit());
    (stamp_ok && random_ok && unsafe_producer(producer).is_none()).then_some((stamp, producer, random))
}

/// Is this a deposit id as `new_id` makes them (safe as a file name)?
pub fn is_id(s: &str) -> bool {
    parts(s).is_some()
}

/// The producer a deposit id names, if it is an id.
pub fn producer_of(id: &str) -> Option<&str> {
    parts(id).map(|(_, p, _)| p)
}

/// The random part of a deposit id, if it is an id.
pub fn random_of(id: &str) -> Option<&str> {
    parts(id).map(|(_, _, r)| r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_sort_by_time_and_are_recognised() {
        let id = super::new_id("MSEC");
        assert!(super::is_id(&id), "{id}");
        assert!(!super::is_id("../x"));
        assert_eq!(id.len(), "20261122T110000Z-MSEC-0123abcd".len());
        assert_eq!(super::producer_of(&id), Some("MSEC"));
    }

    #[test]
    fn a_producer_holding_dashes_is_part_of_its_ids() {
        for p in ["AB-CD", "A-B-C", "x_1-", "AB--CD"] {
            let id = super::new_id(p);
            assert!(super::is_id(&id), "{id}");
            assert_eq!(super::producer_of(&id), Some(p), "{id}");
        }
        for bad in [
            "20261122T110000Z--0123abcd",
            "20261122T110000Z--AB-0123abcd",
            "20261122T110000Z-.depot-0123abcd",
            "20261122T110000Z-AB/CD-0123abcd",
            "20261122T110000Z-AB-0123abc",
            "20261122T110000ZZ-AB-0123abcd",
        ] {
            assert!(!super::is_id(bad), "{bad}");
        }
    }
}
