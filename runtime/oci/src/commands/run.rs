//! `run`: create + start, then (unless --detach) wait for init, delete the
//! container and exit with its status.

use std::path::Path;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::cli::RunArgs;
use crate::error::{Error, Result};

/// Run; returns the exit code.
pub fn run(root: &Path, a: &RunArgs) -> Result<i32> {
    // Block the forwarded signals now: one arriving before we wait stays pending for
    // `wait_exit` instead of killing us and orphaning the container. The container's
    // processes start with an empty mask (finalize), hooks too (std resets it).
    if !a.detach {
        block_forwarded()?;
    }
    // In the foreground without --console-socket a terminal is relayed by us (ttyproxy).
    let (ours, theirs) = match (a.detach, &a.opts.console_socket) {
        (false, None) => {
            let (ours, theirs) = crate::ttyproxy::pair()?;
            (Some(ours), Some(theirs))
        }
        _ => (None, None),
    };
    let c = super::create::run(root, &a.opts, &a.id, theirs)?;
    let terminal = c
        .saved
        .config
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let relay = match (ours, terminal) {
        (Some(ours), true) => match crate::ttyproxy::Relay::receive(&ours) {
            Ok(r) => Some(r),
            Err(e) => {
                let _ = super::delete::destroy(&c);
                return Err(e);
            }
        },
        _ => None,
    };
    if let Err(e) = super::start::run(root, &a.id) {
        let _ = super::delete::destroy(&c);
        return Err(e);
    }
    crate::logging::debug("run: started");
    if a.detach {
        return Ok(0);
    }
    let code = match relay {
        Some(r) => r.run(c.saved.pid)?,
        None => wait_exit(c.saved.pid)?,
    };
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
/// exit code (128+signal when killed). Meanwhile the usual termination and user
/// signals sent to berth-runc are forwarded to it, as runc does.
pub fn wait_exit(pid: i32) -> Result<i32> {
    use nix::sys::signal::{kill, sigprocmask, SigmaskHow, Signal};
    use nix::sys::wait::WaitPidFlag;
    let set = forwarded();
    let old = block_forwarded()?;
    let target = Pid::from_raw(pid);
    let r = loop {
        match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => break Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => break Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => break Err(Error::sys(format!("wait for {pid}"), e)),
        }
        // SIGCHLD is blocked: one that arrived since waitpid is still pending here.
        match set.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(sig) => {
                let _ = kill(target, sig);
            }
        }
    };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    r
}

/// The signals `run` and a foreground `exec` forward to the container's process.
pub(crate) fn forwarded() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// Block the signals `wait_exit` forwards; returns the previous mask.
pub fn block_forwarded() -> Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded()), Some(&mut old))
        .map_err(|e| Error::sys("sigprocmask", e))?;
    Ok(old)
}
