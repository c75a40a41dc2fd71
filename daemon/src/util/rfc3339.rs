//! RFC 3339 timestamps, as containerd writes them in labels (`containerd.io/gc.expire`) and as berth-shim
//! prints exit times: parsing with offsets and fractions, formatting in UTC with nanoseconds.
//!
//! Pure arithmetic on the proleptic Gregorian calendar; this module must never consult the local time zone.

use prost_types::Timestamp;

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parse `2026-11-27T19:49:59.453278694Z` (lower-case `t`/`z`, offsets like `+01:00`, and up to nine
/// fraction digits allowed). None when it is not RFC 3339.
pub fn parse(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let rest = &s[19..];
    let (frac, tz) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    let mut nanos: i64 = 0;
    for (i, c) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(c - b'0') * 10i64.pow(8 - i as u32);
    }
    let offset = match tz {
        "Z" | "z" => 0,
        t if t.len() == 6 && (t.starts_with('+') || t.starts_with('-')) && &t[3..4] == ":" => {
            let sign = if t.starts_with('-') { -1 } else { 1 };
            let oh: i64 = t.get(1..3)?.parse().ok()?;
            let om: i64 = t.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    Some(Timestamp {
        seconds: days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset,
        nanos: nanos as i32,
    })
}

/// Format as `YYYY-MM-DDTHH:MM:SS[.fffffffff]Z` (fraction only when non-zero, trailing zeros trimmed).
pub fn format(t: &Timestamp) -> String {
    let days = t.seconds.div_euclid(86400);
    let secs = t.seconds.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    if t.nanos > 0 {
        let frac = format!("{:09}", t.nanos);
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let t = parse("1970-01-02T00:00:01.5Z").expect("parses");
        assert_eq!((t.seconds, t.nanos), (86401, 500_000_000));
        let t = parse("2026-11-27T19:49:59.453278694Z").expect("parses");
        assert_eq!((t.seconds, t.nanos), (1_795_808_999, 453_278_694));
        assert_eq!(format(&t), "2026-11-27T19:49:59.453278694Z");
        let t = parse("1970-01-01T01:00:00+01:00").expect("parses");
        assert_eq!(t.seconds, 0);
        assert_eq!(format(&t), "1970-01-01T00:00:00Z");
        for bad in [
            "garbage",
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01X00:00:00Z",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        let far = Timestamp {
            seconds: 4_102_444_800,
            nanos: 10,
        };
        assert_eq!(parse(&format(&far)), Some(far));
    }
}
