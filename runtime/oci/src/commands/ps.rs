//! `ps [--format json] ID [ps args]`: the container's pids as a JSON array, or the
//! host's `ps` output (default `-ef`) filtered to them.

use std::io::Write;
use std::path::Path;

use crate::cli::{Format, PsArgs};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::utils;

/// List the processes.
pub fn run(root: &Path, a: &PsArgs) -> Result<()> {
    let c = Container::load(root, &a.id)?;
    let mut pids = c.saved.cgroup.pids()?;
    if pids.is_empty() && utils::pid_alive(c.saved.pid, Some(c.saved.init_start_time)) {
        pids.push(c.saved.pid);
    }
    if a.format == Format::Json {
        return super::print_json(&pids);
    }
    let args: Vec<String> = if a.ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        a.ps_args.clone()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .map_err(|e| Error::io("run", "ps", e))?;
    if !out.status.success() {
        return Err(Error::Usage(format!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Ok(());
    };
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| Error::Usage("ps output has no PID column".into()))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{header}");
    for l in lines {
        let pid = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            let _ = writeln!(out, "{l}");
        }
    }
    Ok(())
}
