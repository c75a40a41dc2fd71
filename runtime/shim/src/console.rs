//! Terminals: the console socket the runtime sends the pty master to (SCM_RIGHTS), the
//! copies between the master and the client's stdio paths, and resizing.
//!
//! The output copy ends when the master reports EOF/EIO (every slave fd closed, i.e. the
//! process and its children are gone); it then signals `done` so the exit event is sent
//! after the last output. This module never interprets the bytes it copies.

use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use berth_proto::shim::Stdio;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::unix::pipe;
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::stdio::{self, Holders, Kind};

/// A unix listener the runtime connects to with `--console-socket` to hand over the master.
pub struct ConsoleSocket {
    listener: UnixListener,
    /// Its path.
    pub path: PathBuf,
}

impl ConsoleSocket {
    /// Bind at `path` (a stale file there is removed).
    pub fn bind(path: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::path("binding console socket", &path, e))?;
        Ok(ConsoleSocket { listener, path })
    }

    /// Accept the runtime's connection and take the pty master it sends.
    pub async fn receive(&self) -> Result<OwnedFd> {
        let (stream, _) = self
            .listener
            .accept()
            .await
            .map_err(|e| Error::io("accepting on the console socket", e))?;
        let fd: RawFd = stream
            .async_io(Interest::READABLE, || {
                let mut buf = [0u8; 4096];
                let mut iov = [IoSliceMut::new(&mut buf)];
                let mut space = nix::cmsg_space!([RawFd; 2]);
                let msg = recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let mut found = None;
                for c in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for fd in fds {
                            if found.is_none() {
                                found = Some(fd);
                            } else {
                                // SAFETY: the kernel just gave us this fd; we own it and close it.
                                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                }
                found.ok_or_else(|| std::io::Error::other("no fd in the console message"))
            })
            .await
            .map_err(|e| Error::io("receiving the pty master", e))?;
        // SAFETY: `fd` was received through SCM_RIGHTS just now and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A process's pty master, shared by the copy tasks and ResizePty.
#[derive(Clone)]
pub struct Console {
    master: Arc<AsyncFd<OwnedFd>>,
}

impl Console {
    /// Set the window size (TIOCSWINSZ on the master).
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid for the call.
        let rc = unsafe { libc::ioctl(self.master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(Error::io(
                "resizing the pty",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(Into::into)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_) => continue,
            }
        }
    }

    /// Type the terminal's EOF character (^D) if the line discipline is canonical.
    async fn send_eof(&self) -> std::io::Result<()> {
        use nix::sys::termios::{tcgetattr, LocalFlags, SpecialCharacterIndices};
        let t = tcgetattr(self.master.get_ref()).map_err(std::io::Error::from)?;
        if t.local_flags.contains(LocalFlags::ICANON) {
            let eof = t.control_chars[SpecialCharacterIndices::VEOF as usize];
            self.write_all(&[eof]).await?;
        }
        Ok(())
    }

    async fn write_all(&self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(Into::into)) {
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
        }
        Ok(())
    }
}

/// Where the pty output goes.
enum Sink {
    /// A CRI log (`crilog://`): the terminal's output is its stdout stream.
    CriLog(crate::crilog::Lines),
    Fifo(pipe::Sender),
    File(std::fs::File),
    Discard,
}

/// Where the pty input comes from.
enum Source {
    Fifo(pipe::Receiver),
    File(std::fs::File),
    Nothing,
}

/// Open the client's paths for a terminal process (call before starting the runtime so bad
/// paths fail early); the FIFO holders go to `holders`.
pub struct TermPaths {
    sink: Sink,
    source: Source,
}

impl TermPaths {
    /// Open stdout (pty output) and stdin (pty input); stderr is unused with a terminal.
    pub fn open(s: &Stdio, holders: &mut Holders) -> Result<Self> {
        let source = match stdio::kind("stdin", &s.stdin)? {
            Kind::Null => Source::Nothing,
            Kind::Fifo => {
                let rd = stdio::open(&s.stdin, true, false, false, libc::O_NONBLOCK)?;
                holders.stdin = Some(stdio::open(&s.stdin, false, true, false, libc::O_NONBLOCK)?);
                Source::Fifo(
                    pipe::Receiver::from_owned_fd(rd).map_err(|e| Error::io("stdin fifo", e))?,
                )
            }
            Kind::File => Source::File(stdio::open(&s.stdin, true, false, false, 0)?.into()),
        };
        let sink = if let Some(log) = crate::crilog::log_path(&s.stdout) {
            let l = crate::crilog::CriLog::open(log)?;
            let lines = l.lines("stdout", true);
            holders.crilog = Some(l);
            Sink::CriLog(lines)
        } else {
            match stdio::kind("stdout", &s.stdout)? {
                Kind::Null => Sink::Discard,
                Kind::Fifo => {
                    holders.outputs.push(stdio::open(
                        &s.stdout,
                        true,
                        false,
                        false,
                        libc::O_NONBLOCK,
                    )?);
                    let wr = stdio::open(&s.stdout, false, true, false, libc::O_NONBLOCK)?;
                    Sink::Fifo(
                        pipe::Sender::from_owned_fd(wr).map_err(|e| Error::io("stdout fifo", e))?,
                    )
                }
                Kind::File => Sink::File(stdio::open(&s.stdout, false, true, true, 0)?.into()),
            }
        };
        Ok(TermPaths { sink, source })
    }

    /// Start copying between `master` and the paths. `done` turns true after the last output.
    pub fn start(self, master: OwnedFd, done: watch::Sender<bool>) -> Result<Console> {
        stdio::set_nonblocking(&master, true)?;
        let console = Console {
            master: Arc::new(stdio::async_fd(master).map_err(|e| Error::io("pty master", e))?),
        };
        let mut finished = done.subscribe();
        let out = console.clone();
        let mut sink = self.sink;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            loop {
                let n = match out.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let res = match &mut sink {
                    Sink::CriLog(l) => {
                        l.feed(&buf[..n]);
                        Ok(())
                    }
                    Sink::Fifo(tx) => tx.write_all(&buf[..n]).await,
                    Sink::File(f) => f.write_all(&buf[..n]),
                    Sink::Discard => Ok(()),
                };
                if res.is_err() {
                    sink = Sink::Discard;
                }
            }
            if let Sink::CriLog(l) = sink {
                l.finish();
            }
            done.send_replace(true);
        });
        let input = console.clone();
        let mut source = self.source;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let n = match &mut source {
                    Source::Nothing => return,
                    Source::File(f) => f.read(&mut buf).unwrap_or(0),
                    Source::Fifo(rx) => tokio::select! {
                        r = rx.read(&mut buf) => r.unwrap_or(0),
                        // The process is gone: no EOF to pass on.
                        _ = finished.wait_for(|d| *d) => return,
                    },
                };
                if n == 0 {
                    break;
                }
                if input.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            // Stdin ended (CloseIO and the client closed): a terminal sees EOF as its VEOF
            // character at the start of a line, when in canonical mode.
            let _ = input.send_eof().await;
        });
        Ok(console)
    }
}
