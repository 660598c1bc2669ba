//! Calendar dates from Unix time, for the human-readable times nkmc prints (RFC 3339, UTC).

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (or without the fraction).
pub fn utc(ms: i64, with_millis: bool) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let hms = format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    if with_millis {
        format!("{hms}.{:03}Z", ms.rem_euclid(1000))
    } else {
        format!("{hms}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0, false), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000, false), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000_123, true), "2023-11-14T22:13:20.123Z");
        assert_eq!(utc(-1, true), "1969-12-31T23:59:59.999Z");
    }
}
