//! `start`: release a created container's init by opening the exec fifo, then
//! run poststart hooks. Must never block forever on an init that died.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::container::{Container, Status};
use crate::error::{Error, Result};
use crate::{hooks, utils};

/// Start container `id`.
pub fn run(root: &Path, id: &str) -> Result<()> {
    let c = Container::load(root, id)?;
    c.can_start()?;
    let fifo = c.fifo();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&fifo)
        .map_err(|e| Error::io("open exec fifo", &fifo, e))?;
    loop {
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {
                if !utils::pid_alive(c.saved.pid, Some(c.saved.init_start_time)) {
                    return Err(exited_before_start(&c));
                }
            }
            Ok(_) => break,
            Err(e) => return Err(Error::sys("poll exec fifo", e)),
        }
    }
    let mut b = [0u8; 1];
    let n = f
        .read(&mut b)
        .map_err(|e| Error::io("read exec fifo", &fifo, e))?;
    if n != 1 {
        return Err(exited_before_start(&c));
    }
    let _ = std::fs::remove_file(&fifo);
    let h = c.saved.config.hooks().as_ref();
    let state = c.hook_state(Status::Running);
    if let Err(e) = hooks::run("poststart", h.and_then(|h| h.poststart().as_ref()), &state) {
        // Like runc: a failing poststart hook fails start and stops the container.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.saved.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        return Err(e);
    }
    Ok(())
}

fn exited_before_start(c: &Container) -> Error {
    Error::Init(format!(
        "container {}: its process (pid {}) exited before start",
        c.saved.id, c.saved.pid
    ))
}
