//! Showing a transfer's progress: on a terminal, one indicatif bar per layer or blob with
//! its size and speed; otherwise nothing but the names of the images berthd saved, so
//! scripts and logs stay readable.
//!
//! This module only draws; it must never decide whether a transfer succeeded.

use std::collections::HashMap;

use containerd_client::types::transfer::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress of one transfer.
pub struct Display {
    bars: Option<MultiProgress>,
    items: HashMap<String, ProgressBar>,
    saved: Vec<String>,
}

/// Events after which an item is done.
const DONE: [&str; 6] = [
    "complete",
    "done",
    "exists",
    "extracted",
    "saved",
    "unpacked",
];

impl Display {
    /// Bars when `terminal`, quiet otherwise.
    pub fn new(terminal: bool) -> Display {
        Display {
            bars: terminal.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout())),
            items: HashMap::new(),
            saved: Vec::new(),
        }
    }

    /// One progress message from berthd.
    pub fn update(&mut self, p: &Progress) {
        if p.event == "saved" && !p.name.is_empty() && !self.saved.contains(&p.name) {
            self.saved.push(p.name.clone());
        }
        let Some(multi) = &self.bars else {
            return;
        };
        if p.name.is_empty() {
            return;
        }
        let bar = self.items.entry(p.name.clone()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(0));
            // Until a size is known (or for the image itself): name and event only.
            bar.set_style(
                ProgressStyle::with_template("{prefix:30!} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(short_name(&p.name));
            bar
        });
        if p.total > 0 && bar.length() != Some(p.total as u64) {
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:30!} {msg:12} [{bar:30}] {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_length(p.total as u64);
        }
        if p.progress > 0 {
            bar.set_position(p.progress as u64);
        }
        bar.set_message(p.event.clone());
        if DONE.contains(&p.event.as_str()) {
            if p.total > 0 {
                bar.set_position(p.total as u64);
            }
            bar.finish();
        }
    }

    /// Stop drawing.
    pub fn finish(&self) {
        for bar in self.items.values() {
            if !bar.is_finished() {
                bar.finish();
            }
        }
    }

    /// Names of the images berthd reported as saved.
    pub fn saved(&self) -> Vec<String> {
        self.saved.clone()
    }
}

/// `manifest-sha256:0123456789ab...` → `manifest (0123456789ab)`.
fn short_name(name: &str) -> String {
    name.split('-')
        .map(|part| match part.strip_prefix("sha256:") {
            Some(hex) if hex.len() == 64 => format!("({})", &hex[..12]),
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_display_collects_saved_names() {
        let mut d = Display::new(false);
        d.update(&Progress {
            event: "saved".into(),
            name: "docker.io/library/busybox:latest".into(),
            ..Default::default()
        });
        d.update(&Progress {
            event: "downloading".into(),
            name: "layer".into(),
            progress: 5,
            total: 10,
            ..Default::default()
        });
        assert_eq!(d.saved(), vec!["docker.io/library/busybox:latest"]);
        assert_eq!(
            short_name(&format!("layer-sha256:{}", "a".repeat(64))),
            "layer (aaaaaaaaaaaa)"
        );
    }
}
