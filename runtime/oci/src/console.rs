//! The container's terminal: open a pty inside the container (after /dev/pts is
//! mounted), send the master to `--console-socket` over SCM_RIGHTS and make the
//! slave the process's stdio and controlling terminal. The master must never stay
//! open in the container process.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::fcntl::OFlag;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::error::{Error, Result, SysContext};

/// Create the pty, hand its master to the console socket, and make the slave stdio.
pub fn setup(socket: &UnixStream, size: Option<(u16, u16)>) -> Result<()> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .sys(|| "open /dev/ptmx".into())?;
    nix::pty::grantpt(&master).sys(|| "grantpt".into())?;
    nix::pty::unlockpt(&master).sys(|| "unlockpt".into())?;
    let name = nix::pty::ptsname_r(&master).sys(|| "ptsname".into())?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .map_err(|e| Error::io("open", &name, e))?;
    if let Some((rows, cols)) = size {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads the winsize we own.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .sys(|| "send pty master to console socket".into())?;
    drop(master);
    // SAFETY: TIOCSCTTY on our own slave fd; we are a session leader (setsid earlier).
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(Error::sys("TIOCSCTTY", nix::errno::Errno::last()));
    }
    for target in 0..3 {
        // SAFETY: dup2 onto stdio numbers of this process.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(Error::sys("dup2 pty slave", nix::errno::Errno::last()));
        }
    }
    Ok(())
}

/// Connect to the console socket (in the runtime's mount namespace, before fork).
pub fn connect(path: &std::path::Path) -> Result<UnixStream> {
    UnixStream::connect(path).map_err(|e| Error::io("connect console socket", path, e))
}

/// Receive an fd sent with SCM_RIGHTS (used by tests and tools).
pub fn recv_fd(sock: &impl AsFd) -> Result<OwnedFd> {
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .sys(|| "recvmsg".into())?;
    for c in msg.cmsgs().sys(|| "cmsgs".into())? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(Error::Usage("no fd received".into()))
}

use std::os::unix::fs::OpenOptionsExt;
