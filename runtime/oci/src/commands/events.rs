//! `events [--stats] [--interval D]`: container stats as runc's event JSON
//! (`{"type":"stats","id":..,"data":..}`), once with --stats, else every interval
//! until the container stops.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::cli::EventsArgs;
use crate::container::{Container, Status};
use crate::error::{Error, Result};

/// Print stats events.
pub fn run(root: &Path, a: &EventsArgs) -> Result<()> {
    let interval = parse_duration(&a.interval)?;
    loop {
        let c = Container::load(root, &a.id)?;
        if c.status == Status::Stopped {
            return Err(Error::BadStatus {
                op: "get events of",
                id: a.id.clone(),
                status: c.status.to_string(),
                why: String::new(),
            });
        }
        let stats = c.saved.cgroup.stats()?;
        let ev = serde_json::json!({"type": "stats", "id": a.id, "data": stats});
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{ev}").and_then(|_| out.flush()).is_err() {
            return Ok(());
        }
        if a.stats {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

fn parse_duration(s: &str) -> Result<Duration> {
    let bad = || Error::Usage(format!("invalid interval {s:?}"));
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    if v <= 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(v * mul))
}
