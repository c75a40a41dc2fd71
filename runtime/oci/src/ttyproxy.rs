//! Foreground `run` and `exec` of a process with a terminal but no `--console-socket`:
//! berth-runc keeps the pty master itself and relays between its own stdio and the
//! container's terminal until the process exits, as runc does, so that `berth-runc spec`
//! (terminal: true) followed by `berth-runc run ID` works from a shell. While relaying,
//! our stdin is in raw mode when it is a terminal (restored on drop), SIGWINCH copies our
//! window size to the container's terminal, and the signals `run` forwards are forwarded.
//!
//! Single-threaded on purpose: one poll loop over stdin, the master and a signalfd.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{self, SetArg, Termios};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{Error, Result, SysContext};

/// Our end of the console socket pair, and the end the container's chain sends on.
pub fn pair() -> Result<(UnixStream, UnixStream)> {
    UnixStream::pair().map_err(|e| Error::io("socketpair", "console relay", e))
}

/// The container's terminal as seen from berth-runc.
pub struct Relay {
    master: OwnedFd,
    /// Our stdin's terminal settings before raw mode, restored on drop.
    saved: Option<Termios>,
}

impl Relay {
    /// Take the pty master the container's process sent over `ours`.
    pub fn receive(ours: &UnixStream) -> Result<Relay> {
        let master = crate::console::recv_fd(ours)?;
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(t) = &saved {
            copy_winsize(stdin.as_fd(), master.as_fd());
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
                .sys(|| "make stdin raw".into())?;
        }
        Ok(Relay { master, saved })
    }

    /// Relay until `pid` (our child) exits; its exit code (128+signal when killed). The
    /// forwarded signals must already be blocked (`run::block_forwarded`).
    pub fn run(self, pid: i32) -> Result<i32> {
        let target = Pid::from_raw(pid);
        let sfd = SignalFd::with_flags(
            &super::commands::run::forwarded(),
            SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
        )
        .sys(|| "signalfd".into())?;
        let stdin = std::io::stdin();
        let mut stdin_open = true;
        let mut master_open = true;
        let mut code = None;
        let mut buf = [0u8; 8192];
        loop {
            if code.is_none() {
                code = reap(target)?;
            }
            if let (Some(c), false) = (code, master_open) {
                return Ok(c);
            }
            let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            let master_at = master_open.then(|| {
                fds.push(PollFd::new(self.master.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let stdin_at = (stdin_open && code.is_none()).then(|| {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            // Once the process is gone, what is left in the terminal is drained briefly:
            // a background child may keep the slave open for ever.
            let timeout = if code.is_some() {
                PollTimeout::from(100u16)
            } else {
                PollTimeout::NONE
            };
            match poll(&mut fds, timeout) {
                // Only the drain after the exit has a timeout.
                Ok(0) => return code.ok_or_else(|| Error::Init("poll timed out".into())),
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::sys("poll", e)),
            }
            let ready = |i: Option<usize>| {
                i.and_then(|i| fds[i].revents())
                    .is_some_and(|r| !r.is_empty())
            };
            let (sig_ready, master_ready, stdin_ready) =
                (ready(Some(0)), ready(master_at), ready(stdin_at));
            drop(fds);
            if sig_ready {
                while let Ok(Some(info)) = sfd.read_signal() {
                    match Signal::try_from(info.ssi_signo as i32) {
                        Ok(Signal::SIGCHLD) => {}
                        Ok(Signal::SIGWINCH) => copy_winsize(stdin.as_fd(), self.master.as_fd()),
                        Ok(sig) if code.is_none() => {
                            let _ = kill(target, sig);
                        }
                        _ => {}
                    }
                }
            }
            if master_ready && !copy(self.master.as_fd(), std::io::stdout().as_fd(), &mut buf) {
                master_open = false;
            }
            if stdin_ready && !copy(stdin.as_fd(), self.master.as_fd(), &mut buf) {
                stdin_open = false;
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, t);
        }
    }
}

/// The exit code of `pid` if it has exited.
fn reap(pid: Pid) -> Result<Option<i32>> {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, c)) => Ok(Some(c)),
        Ok(WaitStatus::Signaled(_, s, _)) => Ok(Some(128 + s as i32)),
        Ok(_) | Err(Errno::EINTR) => Ok(None),
        Err(e) => Err(Error::sys(format!("wait for {pid}"), e)),
    }
}

/// One read from `from`, written whole to `to`; false at EOF or on an error (EIO is how
/// a pty master reports that every slave is closed).
fn copy(from: BorrowedFd, to: BorrowedFd, buf: &mut [u8]) -> bool {
    let n = match nix::unistd::read(from, buf) {
        Ok(0) | Err(_) => return false,
        Ok(n) => n,
    };
    let mut rest = &buf[..n];
    while !rest.is_empty() {
        match nix::unistd::write(to, rest) {
            Ok(w) => rest = &rest[w..],
            Err(Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Give the container's terminal the size of ours (no-op when stdin is no terminal).
fn copy_winsize(from: BorrowedFd, to: BorrowedFd) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ on valid fds with a winsize we own.
    unsafe {
        if libc::ioctl(from.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}
