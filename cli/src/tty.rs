//! The local terminal for `-t`: raw mode while a container owns it, its window size, and the
//! promise that the terminal's modes come back on every exit path: normal return, error,
//! panic (the hook) and signals (berth catches them and returns through `main`).
//!
//! The saved modes live in a process-wide slot so the panic hook and `main` can restore them;
//! this module must never leave the terminal raw after berth is gone.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;

use nix::sys::termios::{self, SetArg};

use crate::error::{Error, Result};

/// The modes to restore: (fd, termios) as libc values (Termios itself is not Sync).
static SAVED: Mutex<Option<(i32, libc::termios)>> = Mutex::new(None);

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// Whether fd 0 is a terminal.
pub fn stdin_is_tty() -> bool {
    nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false)
}

/// Whether fd 1 is a terminal.
pub fn stdout_is_tty() -> bool {
    nix::unistd::isatty(std::io::stdout().as_fd()).unwrap_or(false)
}

/// Put stdin's terminal in raw mode, remembering its modes for [`restore_terminal`].
pub fn make_raw() -> Result<()> {
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let saved = termios::tcgetattr(fd).map_err(Error::sys("read the terminal's modes"))?;
    if let Ok(mut slot) = SAVED.lock() {
        if slot.is_none() {
            *slot = Some((0, libc::termios::from(saved.clone())));
        }
    }
    let mut raw = saved;
    termios::cfmakeraw(&mut raw);
    termios::tcsetattr(fd, SetArg::TCSANOW, &raw).map_err(Error::sys("set the terminal raw"))?;
    Ok(())
}

/// Put the terminal back as it was before [`make_raw`] (no-op when it was never changed).
pub fn restore_terminal() {
    let saved = match SAVED.lock() {
        Ok(mut slot) => slot.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    if let Some((raw_fd, t)) = saved {
        // SAFETY: fd 0 stays open for the whole life of the process; the borrow ends here.
        let fd = unsafe { BorrowedFd::borrow_raw(raw_fd) };
        let _ = termios::tcsetattr(fd, SetArg::TCSANOW, &termios::Termios::from(t));
    }
}

/// Restore the terminal before the default panic message is printed.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
}

/// The terminal's size as (columns, rows), from stdin or else stdout.
pub fn window_size() -> Option<(u16, u16)> {
    for fd in [0, 1] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into the struct we own; a non-terminal fd
        // makes it fail with ENOTTY and leaves the struct untouched.
        if unsafe { tiocgwinsz(fd, &mut ws) }.is_ok() && ws.ws_col > 0 {
            return Some((ws.ws_col, ws.ws_row));
        }
    }
    None
}
