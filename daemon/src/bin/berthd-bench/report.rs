//! Results: the bench JSON protocol (`{"section", "machine", "rows": [{name, unit, berth, peer, peer_name,
//! ratio, target}]}`), a table on stdout, and the scale table and plot (Markdown and a hand-written SVG).

use std::fmt::Write as _;
use std::path::Path;

pub use berth_bench_report::{Row, Stats};

/// One point of the scale ladder: a figure of one daemon at a container count.
#[derive(Debug, Clone)]
pub struct Point {
    pub figure: &'static str,
    pub unit: &'static str,
    pub count: usize,
    pub daemon: &'static str,
    pub value: f64,
}

/// Everything measured in this run.
#[derive(Default)]
pub struct Report {
    pub sections: Vec<String>,
    pub rows: Vec<Row>,
    pub points: Vec<Point>,
}

impl Report {
    /// Add a row from raw samples (ratio of the medians, berth / peer).
    pub fn row(
        &mut self,
        name: String,
        unit: &str,
        berth: &[f64],
        peer: &[f64],
        target: Option<f64>,
    ) {
        let mut r = Row::compare(&name, unit, berth, "containerd", peer);
        r.target = target;
        self.rows.push(r);
    }

    /// Rows from the scale points (one per figure and count, berthd beside containerd).
    pub fn scale_rows(&mut self) {
        let mut keys: Vec<(&'static str, &'static str, usize)> = self
            .points
            .iter()
            .map(|p| (p.figure, p.unit, p.count))
            .collect();
        keys.dedup();
        let mut seen = Vec::new();
        for k in keys {
            if seen.contains(&k) {
                continue;
            }
            seen.push(k);
            let get = |d: &str| -> Vec<f64> {
                self.points
                    .iter()
                    .filter(|p| (p.figure, p.unit, p.count) == k && p.daemon == d)
                    .map(|p| p.value)
                    .collect()
            };
            let (b, c) = (get("berthd"), get("containerd"));
            self.row(format!("scale: {} @{}", k.0, k.2), k.1, &b, &c, None);
        }
    }

    pub fn print_table(&self) {
        println!(
            "\n{:<58} {:>6} {:>22} {:>22} {:>7} {:>6}",
            "figure", "unit", "berthd median (min-max)", "containerd median", "ratio", "target"
        );
        let f = |s: &Option<Stats>| match s {
            Some(s) => format!("{:.2} ({:.2}-{:.2})", s.median, s.min, s.max),
            None => "-".into(),
        };
        for r in &self.rows {
            println!(
                "{:<58} {:>6} {:>22} {:>22} {:>7} {:>6}",
                r.name,
                r.unit,
                f(&r.berth),
                f(&r.peer),
                r.ratio
                    .map(|x| format!("{x:.2}x"))
                    .unwrap_or_else(|| "-".into()),
                r.target
                    .map(|x| format!("{x}x"))
                    .unwrap_or_else(|| "-".into())
            );
        }
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let v = serde_json::json!({
            "section": self.sections.join(","),
            "machine": machine(),
            "rows": self.rows,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&v)?)?;
        Ok(())
    }

    /// `scale.md` and `scale.svg` in `dir`, when the run has scale points.
    pub fn write_scale(&self, dir: &Path) -> anyhow::Result<()> {
        if self.points.is_empty() {
            return Ok(());
        }
        let mut figures: Vec<(&str, &str)> = Vec::new();
        let mut counts: Vec<usize> = Vec::new();
        for p in &self.points {
            if !figures.contains(&(p.figure, p.unit)) {
                figures.push((p.figure, p.unit));
            }
            if !counts.contains(&p.count) {
                counts.push(p.count);
            }
        }
        counts.sort_unstable();
        let value = |fig: &str, count: usize, d: &str| -> Option<f64> {
            let v: Vec<f64> = self
                .points
                .iter()
                .filter(|p| p.figure == fig && p.count == count && p.daemon == d)
                .map(|p| p.value)
                .collect();
            Stats::of(&v).map(|s| s.median)
        };
        let mut md = String::from(
            "| figure | containers | berthd | containerd | ratio |\n|---|---:|---:|---:|---:|\n",
        );
        for (fig, unit) in &figures {
            for &n in &counts {
                let (b, c) = (value(fig, n, "berthd"), value(fig, n, "containerd"));
                if b.is_none() && c.is_none() {
                    continue;
                }
                let s = |x: Option<f64>| x.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
                let ratio = match (b, c) {
                    (Some(b), Some(c)) if c > 0.0 => format!("{:.2}x", b / c),
                    _ => "-".into(),
                };
                let _ = writeln!(
                    md,
                    "| {fig} ({unit}) | {n} | {} | {} | {ratio} |",
                    s(b),
                    s(c)
                );
            }
        }
        std::fs::write(dir.join("scale.md"), &md)?;
        println!("\nscale (medians):\n{md}");
        std::fs::write(dir.join("scale.svg"), svg(&figures, &counts, &value))?;
        Ok(())
    }
}

/// Small multiples: one panel per figure, container count on a log x axis, berthd and containerd as two lines.
fn svg(
    figures: &[(&str, &str)],
    counts: &[usize],
    value: &dyn Fn(&str, usize, &str) -> Option<f64>,
) -> String {
    let (pw, ph, m) = (320.0, 220.0, 45.0);
    let cols = 2usize;
    let rows = figures.len().div_ceil(cols);
    let (w, h) = (pw * cols as f64, ph * rows as f64 + 30.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"18\" font-size=\"13\">berthd (blue) vs containerd (orange) by running containers (log scale)</text>\n"
    );
    let lx = |n: usize| (n.max(1) as f64).log10();
    let (xmin, xmax) = (
        counts.first().map(|&n| lx(n)).unwrap_or(0.0),
        counts.last().map(|&n| lx(n)).unwrap_or(1.0),
    );
    for (i, (fig, unit)) in figures.iter().enumerate() {
        let (ox, oy) = ((i % cols) as f64 * pw, 30.0 + (i / cols) as f64 * ph);
        let ymax = counts
            .iter()
            .flat_map(|&n| [value(fig, n, "berthd"), value(fig, n, "containerd")])
            .flatten()
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.1;
        let px = |n: usize| {
            let span = (xmax - xmin).max(1e-9);
            ox + m + (lx(n) - xmin) / span * (pw - 2.0 * m)
        };
        let py = |v: f64| oy + ph - m - v / ymax * (ph - 2.0 * m);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\">{fig} ({unit})</text>\n\
             <line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
             <line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1}</text>",
            ox + m,
            oy + 18.0,
            ox + m,
            py(0.0),
            ox + pw - m,
            py(0.0),
            ox + m,
            py(0.0),
            ox + m,
            py(ymax),
            ox + m - 3.0,
            py(ymax) + 4.0,
            ymax
        );
        for &n in counts {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{n}</text>",
                px(n),
                py(0.0) + 14.0
            );
        }
        for (d, colour) in [("berthd", "#1f77b4"), ("containerd", "#ff7f0e")] {
            let pts: Vec<String> = counts
                .iter()
                .filter_map(|&n| value(fig, n, d).map(|v| format!("{:.1},{:.1}", px(n), py(v))))
                .collect();
            if pts.is_empty() {
                continue;
            }
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
                pts.join(" ")
            );
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(
                    s,
                    "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{colour}\"/>"
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

/// What the figures were taken on.
pub fn machine() -> serde_json::Value {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    serde_json::json!({
        "hostname": read("/proc/sys/kernel/hostname"),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_total_kib": mem_kib,
        "loadavg": read("/proc/loadavg"),
    })
}
