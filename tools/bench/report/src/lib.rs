//! The one JSON shape every benchmark section writes with `--json FILE`, so `tools/bench/run`
//! can merge sections into one table without knowing any of them:
//! `{"section", "machine", "rows": [{"name", "unit", "berth": Stats, "peer": Stats|null,
//! "peer_name", "ratio", "target"}]}`. Ratios are berth's median over the peer's median.

use std::path::Path;

use serde::Serialize;

/// Median, min, max and count of one side's samples.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    /// Stats of `samples` (NaNs ignored); `None` when there is none.
    pub fn of(samples: &[f64]) -> Option<Stats> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// One figure: Berth's samples beside the peer's (if the figure has a peer).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub unit: String,
    pub berth: Option<Stats>,
    pub peer: Option<Stats>,
    pub peer_name: Option<String>,
    /// berth.median / peer.median.
    pub ratio: Option<f64>,
    /// The ratio Berth aims at or below (e.g. 0.3), if the issue sets one.
    pub target: Option<f64>,
}

impl Row {
    /// A row comparing `berth` with `peer` samples (same unit).
    pub fn compare(name: &str, unit: &str, berth: &[f64], peer_name: &str, peer: &[f64]) -> Row {
        let (b, p) = (Stats::of(berth), Stats::of(peer));
        let ratio = match (b, p) {
            (Some(b), Some(p)) if p.median != 0.0 => Some(b.median / p.median),
            _ => None,
        };
        Row {
            name: name.into(),
            unit: unit.into(),
            berth: b,
            peer: p,
            peer_name: Some(peer_name.into()),
            ratio,
            target: None,
        }
    }

    /// A Berth-only row (no peer measures the same thing).
    pub fn berth_only(name: &str, unit: &str, berth: &[f64]) -> Row {
        Row {
            name: name.into(),
            unit: unit.into(),
            berth: Stats::of(berth),
            peer: None,
            peer_name: None,
            ratio: None,
            target: None,
        }
    }

    /// Sets the target ratio.
    pub fn target(mut self, t: f64) -> Row {
        self.target = Some(t);
        self
    }
}

/// What the figures were taken on: enough to tell two runs' machines apart.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub hostname: String,
    pub kernel: String,
    pub cpus: usize,
    pub mem_mib: u64,
    /// 1-minute load average when the section started (other work on the host skews figures).
    pub loadavg: f64,
}

impl Machine {
    /// Reads the figures from /proc; unknown ones are left empty or zero.
    pub fn current() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let mem_kib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        Machine {
            hostname: read("/proc/sys/kernel/hostname").trim().into(),
            kernel: read("/proc/sys/kernel/osrelease").trim().into(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_mib: mem_kib / 1024,
            loadavg: read("/proc/loadavg")
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
        }
    }
}

/// One section's results, as written to `--json FILE`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub section: String,
    pub machine: Machine,
    pub rows: Vec<Row>,
}

impl Report {
    /// An empty report for `section`, stamped with the current machine.
    pub fn new(section: &str) -> Report {
        Report {
            section: section.into(),
            machine: Machine::current(),
            rows: Vec::new(),
        }
    }

    /// Writes the report to `path` (via a temp file and rename: never half-written).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_ratio() {
        let r = Row::compare("run", "ms", &[3.0, 1.0, 2.0], "runc", &[4.0, 8.0]);
        let b = r.berth.unwrap_or_else(|| panic!("berth stats"));
        assert_eq!((b.median, b.min, b.max, b.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(r.peer.map(|p| p.median), Some(6.0));
        assert_eq!(r.ratio, Some(2.0 / 6.0));
        assert!(Row::compare("x", "ms", &[], "runc", &[1.0]).ratio.is_none());
    }
}
