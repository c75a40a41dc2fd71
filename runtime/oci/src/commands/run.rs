//! `run`: create + start, then (unless --detach) wait for init, delete the
//! container and exit with its status.

use std::path::Path;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::cli::RunArgs;
use crate::error::{Error, Result};

/// Run; returns the exit code.
pub fn run(root: &Path, a: &RunArgs) -> Result<i32> {
    let c = super::create::run(root, &a.opts, &a.id)?;
    if let Err(e) = super::start::run(root, &a.id) {
        let _ = super::delete::destroy(&c);
        return Err(e);
    }
    crate::logging::debug("run: started");
    if a.detach {
        return Ok(0);
    }
    let code = wait_exit(c.saved.pid)?;
    crate::logging::debug("run: init exited");
    if !a.keep {
        if let Ok(mut c) = crate::container::Container::load(root, &a.id) {
            c.refresh();
            super::delete::destroy(&c)?;
        }
    }
    Ok(code)
}

/// Wait for `pid` (our child, directly or as subreaper) and map its status to an
/// exit code (128+signal when killed). Other reaped orphans are ignored.
pub fn wait_exit(pid: i32) -> Result<i32> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys(format!("wait for {pid}"), e)),
        }
    }
}
