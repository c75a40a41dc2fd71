//! `kill [--all] ID [SIGNAL]`: signal init, or every process of the container.

use std::path::Path;

use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::cli::KillArgs;
use crate::container::Container;
use crate::error::{Error, Result};
use crate::utils;

/// Send the signal.
pub fn run(root: &Path, a: &KillArgs) -> Result<()> {
    let c = Container::load(root, &a.id)?;
    let sig = utils::parse_signal(&a.signal)?;
    if a.all {
        // --all also works on a stopped container whose other processes linger.
        let mut pids = c.saved.cgroup.pids().unwrap_or_default();
        if pids.is_empty() && utils::pid_alive(c.saved.pid, Some(c.saved.init_start_time)) {
            pids.push(c.saved.pid);
        }
        if pids.is_empty() {
            c.can_kill()?;
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p), sig);
        }
        return Ok(());
    }
    c.can_kill()?;
    kill(Pid::from_raw(c.saved.pid), sig)
        .map_err(|e| Error::sys(format!("kill {}", c.saved.pid), e))
}
