//! Opening a process's stdio from the paths a client gives: FIFOs (as ctr makes them),
//! regular files (appended to), `file:///PATH` log URIs (`ctr run --log-uri`: created with their
//! parent dirs, then appended to, as containerd's shim does), or empty for /dev/null.
//!
//! Design (no copying for plain stdio): the FIFO fds are handed to the runtime directly as
//! the process's fds 0/1/2, so the container writes straight into the client's FIFOs.
//! - Outputs: the shim first opens its own O_RDONLY|O_NONBLOCK end and KEEPS it for the
//!   process's life, so the container's writes never get EPIPE and nothing is lost while
//!   no client reads (the FIFO buffers, then the writer blocks as with any pipe).
//! - Stdin: the container gets a blocking read end; the shim keeps its own O_WRONLY end
//!   until CloseIO, so the process sees EOF only after CloseIO (and the client closed).
//!
//! With a terminal, [`crate::console`] copies between the pty master and these paths.
//! A path that does not exist is a NotFound error naming it; this module never creates one.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use berth_proto::shim::Stdio;
use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::error::{Error, Result};
use crate::runtime::ProcStdio;

/// What kind of file a stdio path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Empty path: /dev/null.
    Null,
    /// A FIFO.
    Fifo,
    /// Anything else (regular file, character device).
    File,
}

/// The scheme of containerd's log URIs that name a file.
const FILE_URI: &str = "file://";

/// The local path a stdio path or `file://` URI names.
fn local_path(path: &str) -> &str {
    path.strip_prefix(FILE_URI).unwrap_or(path)
}

/// Make the file a `file://` URI names (and its parent dirs), as containerd's shim does for
/// `ctr run --log-uri`; other URI schemes (`binary://` logging programs) are refused by name.
fn create_log_file(what: &str, uri: &str) -> Result<()> {
    let Some(path) = uri.strip_prefix(FILE_URI) else {
        let scheme = uri.split("://").next().unwrap_or_default();
        return Err(Error::InvalidArgument(format!(
            "{what}: log URI {uri}: scheme {scheme}:// is not supported (only file:// is)"
        )));
    };
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "{what}: log URI {uri} does not name an absolute path"
        )));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::path("creating the log dir", dir, e))?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map(drop)
        .map_err(|e| Error::path("creating the log file", path, e))
}

/// Classify a stdio path; a missing path is NotFound naming it. A `file://` URI's file is
/// created here.
pub fn kind(what: &str, path: &str) -> Result<Kind> {
    if path.is_empty() {
        return Ok(Kind::Null);
    }
    if path.contains("://") {
        create_log_file(what, path)?;
        return Ok(Kind::File);
    }
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_fifo() => Ok(Kind::Fifo),
        Ok(_) => Ok(Kind::File),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound(format!(
            "{what} path {path} does not exist"
        ))),
        Err(e) => Err(Error::io(format!("{what} path {path}"), e)),
    }
}

/// How long Create and Exec wait for the client to open an output FIFO's read end.
pub const CLIENT_READER_WAIT: Duration = Duration::from_secs(2);

/// Wait until each output FIFO of `s` has a reader, before the shim opens its own read end. containerd's
/// shim gets the same ordering by opening the write end blocking: its clients (ctr's `cio`) open their read
/// ends in goroutines, and cancel an open still pending once the exit has arrived, so a process that exits
/// at once could otherwise lose all its output. Bounded: a client that never opens costs this wait once,
/// then its output is buffered in the FIFO as before.
///
/// Keep the returned write ends until the process's own are open: a client blocked in its open wakes when
/// the probe opens, and would read EOF if the FIFO then had no writer for a moment.
#[must_use = "dropping the probes before the process's write ends are open lets the client see EOF"]
pub async fn wait_for_readers(s: &Stdio) -> Vec<std::fs::File> {
    let mut probes = Vec::new();
    for path in [&s.stdout, &s.stderr] {
        // URIs (file://, crilog://) name no FIFO; `kind` would create a file:// log here.
        if path.contains("://") || !matches!(kind("stdout", path), Ok(Kind::Fifo)) {
            continue;
        }
        let deadline = Instant::now() + CLIENT_READER_WAIT;
        let mut pause = Duration::from_micros(100);
        loop {
            // A non-blocking write open fails with ENXIO exactly while no reader has the FIFO open.
            let probe = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(path);
            match probe {
                Ok(f) => {
                    probes.push(f);
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                Err(e) => {
                    crate::log!(
                        "no reader opened {path} ({e}); its output is buffered until one does"
                    );
                    break;
                }
            }
        }
    }
    probes
}

/// Set or clear O_NONBLOCK on an open file description.
pub fn set_nonblocking(fd: impl AsFd, on: bool) -> Result<()> {
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(|e| Error::sys("F_GETFL", e))?;
    let mut flags = OFlag::from_bits_truncate(flags);
    flags.set(OFlag::O_NONBLOCK, on);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags)).map_err(|e| Error::sys("F_SETFL", e))?;
    Ok(())
}

/// Open a path (or the file of a `file://` URI) with flags; errors name the path.
pub fn open(path: &str, read: bool, write: bool, append: bool, flags: i32) -> Result<OwnedFd> {
    let path = local_path(path);
    OpenOptions::new()
        .read(read)
        .write(write)
        .append(append)
        .custom_flags(flags | libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| Error::path("opening stdio", Path::new(path), e))
}

/// /dev/null for reading and writing.
pub fn null() -> Result<OwnedFd> {
    open("/dev/null", true, true, false, 0)
}

/// The shim's handles that keep a process's stdio FIFOs usable.
#[derive(Default)]
pub struct Holders {
    /// The process's CRI log (`crilog://` outputs), whose copies the exit waits for.
    pub crilog: Option<crate::crilog::CriLog>,
    /// Read ends of output FIFOs, kept for the process's life.
    pub outputs: Vec<OwnedFd>,
    /// The shim's write end of a stdin FIFO, dropped by CloseIO.
    pub stdin: Option<OwnedFd>,
}

/// Open an output path (stdout/stderr) for the process; FIFO read ends go to `holders`.
pub fn open_output(what: &'static str, path: &str, holders: &mut Holders) -> Result<OwnedFd> {
    if let Some(log) = crate::crilog::log_path(path) {
        if holders.crilog.as_ref().is_some_and(|l| l.path() != log) {
            return Err(Error::InvalidArgument(format!(
                "stdout and stderr must name the same CRI log (got {path})"
            )));
        }
        if holders.crilog.is_none() {
            holders.crilog = Some(crate::crilog::CriLog::open(log)?);
        }
        if let Some(l) = holders.crilog.as_mut() {
            return l.stream(what);
        }
    }
    match kind(what, path)? {
        Kind::Null => null(),
        Kind::Fifo => {
            let rd = open(path, true, false, false, libc::O_NONBLOCK)?;
            let wr = open(path, false, true, false, libc::O_NONBLOCK)?;
            set_nonblocking(&wr, false)?;
            holders.outputs.push(rd);
            Ok(wr)
        }
        Kind::File => open(path, false, true, true, 0),
    }
}

/// Open a stdin path for the process; a FIFO's shim-held write end goes to `holders`.
pub fn open_input(path: &str, holders: &mut Holders) -> Result<OwnedFd> {
    match kind("stdin", path)? {
        Kind::Null => null(),
        Kind::Fifo => {
            let rd = open(path, true, false, false, libc::O_NONBLOCK)?;
            let wr = open(path, false, true, false, libc::O_NONBLOCK)?;
            set_nonblocking(&rd, false)?;
            holders.stdin = Some(wr);
            Ok(rd)
        }
        Kind::File => open(path, true, false, false, 0),
    }
}

/// Open all three stdio paths for direct use by the process (no terminal).
pub fn open_direct(s: &Stdio) -> Result<(ProcStdio, Holders)> {
    let mut holders = Holders::default();
    let stdin = open_input(&s.stdin, &mut holders)?;
    let stdout = open_output("stdout", &s.stdout, &mut holders)?;
    let stderr = open_output("stderr", &s.stderr, &mut holders)?;
    Ok((
        ProcStdio {
            stdin,
            stdout,
            stderr,
        },
        holders,
    ))
}

/// Stdio of the runtime command itself when the process uses a terminal.
pub fn null_stdio() -> Result<ProcStdio> {
    Ok(ProcStdio {
        stdin: null()?,
        stdout: null()?,
        stderr: null()?,
    })
}

/// Register an owned fd with the tokio reactor.
pub fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd keeps its fd open and unchanged until it is dropped, which happens
    // only when the AsyncFd that owns it is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::path::PathBuf;

    fn fifo(name: &str) -> (PathBuf, String) {
        let dir =
            std::env::temp_dir().join(format!("berth-shim-stdio-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("f");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let s = p.display().to_string();
        (dir, s)
    }

    #[test]
    fn output_fifo_buffers_without_a_reader_and_never_epipes() {
        let (dir, path) = fifo("out");
        let mut holders = Holders::default();
        let wr = open_output("stdout", &path, &mut holders).expect("open");
        assert_eq!(holders.outputs.len(), 1);
        // No client reader: the write still succeeds (the shim's read end keeps the pipe).
        let mut w = std::fs::File::from(wr);
        w.write_all(b"early").expect("write without a client");
        // A client attaching late still gets the data.
        let mut r = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .expect("late reader");
        drop(w);
        let mut buf = String::new();
        let _ = r.read_to_string(&mut buf);
        assert_eq!(buf, "early");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn file_uri_is_created_with_its_dir_and_appended_to() {
        let dir = std::env::temp_dir().join(format!("berth-shim-stdio-uri-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("logs/c.log");
        let uri = format!("file://{}", file.display());
        for line in ["one\n", "two\n"] {
            let mut holders = Holders::default();
            let fd = open_output("stdout", &uri, &mut holders).expect("open the log URI");
            assert!(holders.outputs.is_empty(), "no FIFO end to hold for a file");
            std::fs::File::from(fd)
                .write_all(line.as_bytes())
                .expect("write");
        }
        assert_eq!(std::fs::read_to_string(&file).expect("log"), "one\ntwo\n");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn other_log_uris_are_refused_by_name() {
        let e = kind("stdout", "binary:///usr/bin/logger?x=1").expect_err("refused");
        assert!(
            e.to_string().contains("binary://") && e.to_string().contains("only file://"),
            "{e}"
        );
        let e = kind("stdout", "file://relative/x").expect_err("refused");
        assert!(e.to_string().contains("absolute"), "{e}");
    }

    #[test]
    fn stdin_fifo_sees_eof_only_after_the_shim_lets_go() {
        let (dir, path) = fifo("in");
        let mut holders = Holders::default();
        let rd = open_input(&path, &mut holders).expect("open");
        assert!(holders.stdin.is_some());
        // A client writes and closes its end: no EOF yet, the shim still holds a writer.
        let mut client = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("client writer");
        client.write_all(b"hi").expect("client write");
        drop(client);
        set_nonblocking(&rd, true).expect("nonblock for the check");
        let mut r = std::fs::File::from(rd);
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).expect("data"), 2);
        let e = r
            .read(&mut buf)
            .expect_err("no EOF while the shim holds stdin");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        holders.stdin = None; // CloseIO
        assert_eq!(r.read(&mut buf).expect("EOF"), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn missing_and_empty_paths() {
        let err = kind("stdout", "/nonexistent/berth-fifo").expect_err("missing");
        assert!(matches!(err, Error::NotFound(ref m) if m.contains("/nonexistent/berth-fifo")));
        assert_eq!(kind("stdin", "").expect("empty"), Kind::Null);
    }
}
