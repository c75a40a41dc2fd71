//! `list [--format json] [-q]`: every container under --root.

use std::io::Write;
use std::path::Path;

use crate::cli::{Format, ListArgs};
use crate::container::Container;
use crate::error::Result;

/// List containers.
pub fn run(root: &Path, a: &ListArgs) -> Result<()> {
    let mut cs = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(c) = Container::load(root, &name) {
                cs.push(c);
            }
        }
    }
    cs.sort_by(|a, b| a.saved.id.cmp(&b.saved.id));
    if a.quiet {
        let mut out = std::io::stdout().lock();
        for c in &cs {
            let _ = writeln!(out, "{}", c.saved.id);
        }
        return Ok(());
    }
    if a.format == Format::Json {
        let v: Vec<_> = cs.iter().map(Container::oci_state).collect();
        return super::print_json(&v);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<12} {:<8} {:<10} {:<40} {:<32} OWNER",
        "ID", "PID", "STATUS", "BUNDLE", "CREATED"
    );
    for c in &cs {
        let pid = if c.status == crate::container::Status::Stopped {
            0
        } else {
            c.saved.pid
        };
        let _ = writeln!(
            out,
            "{:<12} {:<8} {:<10} {:<40} {:<32} root",
            c.saved.id,
            pid,
            c.status.to_string(),
            c.saved.bundle.display(),
            c.saved.created
        );
    }
    Ok(())
}
