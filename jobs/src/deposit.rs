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

/// Is this a deposit id as `new_id` makes them (safe as a file name)?
pub fn is_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 3
        && parts[0].len() == 16
        && parts[1].chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !parts[1].is_empty()
        && parts[2].len() == 8
        && parts[2].chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_sort_by_time_and_are_recognised() {
        let id = super::new_id("MSEC");
        assert!(super::is_id(&id), "{id}");
        assert!(!super::is_id("../x"));
        assert_eq!(id.len(), "20261122T110000Z-MSEC-0123abcd".len());
    }
}
