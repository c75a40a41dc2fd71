//! How listings look: aligned tables for people, `--format json` for programs, `-q` for ids
//! only; human sizes and ages.
//!
//! Every listing goes through [`Listing::print`] so all of them honour the same flags. This
//! module must never talk to berthd.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Output format of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// Aligned columns with a header.
    #[default]
    Table,
    /// A JSON array of objects.
    Json,
}

/// The flags every listing takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ListOpts {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print only ids (names, digests, keys), one a line.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Rows to print, with their JSON form and ids.
#[derive(Debug, Default)]
pub struct Listing {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    json: Vec<Value>,
    ids: Vec<String>,
}

impl Listing {
    /// A listing with these column headers.
    pub fn new(headers: &[&'static str]) -> Listing {
        Listing {
            headers: headers.to_vec(),
            ..Default::default()
        }
    }

    /// Add one item: its id (for `-q`), its table cells and its JSON object.
    pub fn push(&mut self, id: impl Into<String>, cells: Vec<String>, json: Value) {
        self.ids.push(id.into());
        self.rows.push(cells);
        self.json.push(json);
    }

    /// Print in the format the flags ask for.
    pub fn print(&self, opts: &ListOpts) {
        let mut out = std::io::stdout().lock();
        let text = if opts.quiet {
            self.ids.iter().map(|i| format!("{i}\n")).collect()
        } else {
            match opts.format {
                Format::Json => {
                    let mut s = serde_json::to_string_pretty(&Value::Array(self.json.clone()))
                        .unwrap_or_else(|_| "[]".into());
                    s.push('\n');
                    s
                }
                Format::Table => table(&self.headers, &self.rows),
            }
        };
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

/// Columns padded to the widest cell, three spaces apart; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let n = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(c);
                l.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// `1.5 MiB`, `512 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Parse `512`, `64k`, `512m`, `1.5g`, `2GiB` into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    if num < 0.0 || !num.is_finite() {
        return None;
    }
    Some((num * mult as f64) as u64)
}

/// A protobuf timestamp as a `SystemTime`; `None` for unset (year 1) or missing times.
pub fn ts_time(ts: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    let ts = ts?;
    if ts.seconds <= 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos.max(0) as u32))
}

/// `3 minutes ago`, `-` when unset.
pub fn ago(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = ts_time(ts) else {
        return "-".into();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (n, unit) = match secs {
        0..=1 => return "just now".into(),
        2..=119 => (secs, "seconds"),
        120..=7199 => (secs / 60, "minutes"),
        7200..=172_799 => (secs / 3600, "hours"),
        _ => (secs / 86400, "days"),
    };
    format!("{n} {unit} ago")
}

/// RFC 3339 UTC with nanoseconds (`2026-01-02T03:04:05.123456789Z`); empty when unset.
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    match ts {
        Some(ts) if ts.seconds > 0 => {
            let (y, mo, d, h, mi, s) = civil(ts.seconds);
            format!(
                "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:09}Z",
                ts.nanos.max(0)
            )
        }
        _ => String::new(),
    }
}

/// Seconds since the epoch as (year, month, day, hour, minute, second), UTC.
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Howard Hinnant's days-from-civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

/// The current time as a protobuf timestamp.
pub fn now_ts() -> prost_types::Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Labels as `k=v,k=v` (sorted), `-` when none.
pub fn labels_cell<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut v: Vec<String> = labels
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if v.is_empty() {
        return "-".into();
    }
    v.sort();
    v.join(",")
}

/// Parse `k=v` arguments (a bare `k` means an empty value).
pub fn parse_labels(args: &[String]) -> std::collections::HashMap<String, String> {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (a.clone(), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(300 << 20), "300 MiB");
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("10q"), None);
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "STATUS"],
            &[
                vec!["a".into(), "RUNNING".into()],
                vec!["long-id".into(), "x".into()],
            ],
        );
        assert_eq!(t, "ID        STATUS\na         RUNNING\nlong-id   x\n");
    }

    #[test]
    fn times() {
        let ts = prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 5,
        };
        assert_eq!(rfc3339(Some(&ts)), "2026-01-01T00:00:00.000000005Z");
        assert_eq!(rfc3339(None), "");
        assert_eq!(ago(None), "-");
    }
}
