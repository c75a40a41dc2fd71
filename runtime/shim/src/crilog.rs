//! CRI log mode: a stdout or stderr path `crilog://<file>` makes the shim write the process's output to
//! `<file>` in the kubelet's format, one record per line: `<RFC3339Nano time> <stdout|stderr> <F|P> <text>`
//! (`P` for a piece of a line longer than [`MAX_LINE`], `F` for the end of a line).
//!
//! Why in the shim: it owns the container's stdio and outlives berthd, so nothing is lost while berthd
//! restarts. Each stream gets a pipe; its write end is the process's fd, a task copies from the read end.
//! Both streams append to one file under one lock, each record in one write, so records never interleave.
//! The copies signal `done` when both reached EOF, and the exit waits for that (as for a terminal), so a
//! log is complete when the exit is reported.
//!
//! This module must never block the shim's thread on the log file for long (records are small, the file is
//! local) nor give the process a write end it keeps itself (EOF would never come).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// The stdio path prefix of this mode.
pub const SCHEME: &str = "crilog://";

/// Longest piece of a line in one record; longer lines are split into `P` records.
pub const MAX_LINE: usize = 16 * 1024;

/// The log file of `path`, if it is in this mode.
pub fn log_path(path: &str) -> Option<&str> {
    path.strip_prefix(SCHEME).filter(|p| p.starts_with('/'))
}

/// A process's CRI log: the shared file and the copies' completion.
pub struct CriLog {
    file: Arc<Mutex<File>>,
    path: String,
    streams: usize,
    left: Arc<std::sync::atomic::AtomicUsize>,
    done_tx: Arc<watch::Sender<bool>>,
    done: watch::Receiver<bool>,
}

impl CriLog {
    /// Open (create, append) the log file.
    pub fn open(path: &str) -> Result<CriLog> {
        let file = open_log(path)?;
        let (tx, rx) = watch::channel(false);
        Ok(CriLog {
            file: Arc::new(Mutex::new(file)),
            path: path.to_string(),
            streams: 0,
            left: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            done_tx: Arc::new(tx),
            done: rx,
        })
    }

    /// The file this log writes.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A pipe for `stream` (`stdout` or `stderr`): returns the write end for the process and starts the copy.
    pub fn stream(&mut self, stream: &'static str) -> Result<OwnedFd> {
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::sys("pipe for the CRI log", e))?;
        crate::stdio::set_nonblocking(&rd, true)?;
        let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(rd)
            .map_err(|e| Error::io("CRI log pipe", e))?;
        self.streams += 1;
        self.left.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (mut lines, left, done) = (
            self.lines(stream, false),
            self.left.clone(),
            self.done_tx.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = match rx.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                lines.feed(&buf[..n]);
            }
            lines.finish();
            if left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                done.send_replace(true);
            }
        });
        Ok(wr)
    }

    /// A line splitter writing `stream`'s records to this log; `tty` drops the `\r` a terminal puts before
    /// each `\n`. The caller feeds it (a terminal's output copy does; its own completion then stands for the
    /// log's).
    pub fn lines(&self, stream: &'static str, tty: bool) -> Lines {
        Lines {
            file: self.file.clone(),
            stream,
            tty,
            line: Vec::new(),
        }
    }

    /// Reopen the file at its path (create, append): after a rotation renamed it, new records land in a new
    /// file there. Records written meanwhile went to the renamed one, whole.
    pub fn reopen(&self) -> Result<()> {
        let file = open_log(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = file;
        Ok(())
    }

    /// Turns true once every stream's copy ended (None when the log has no stream).
    pub fn done(&self) -> Option<watch::Receiver<bool>> {
        (self.streams > 0).then(|| self.done.clone())
    }
}

fn open_log(path: &str) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::path("opening the CRI log", std::path::Path::new(path), e))
}

/// One stream's records: bytes in, whole records out to the shared file.
pub struct Lines {
    file: Arc<Mutex<File>>,
    stream: &'static str,
    tty: bool,
    line: Vec<u8>,
}

impl Lines {
    /// Write the records `data` completes.
    pub fn feed(&mut self, data: &[u8]) {
        for (tag, mut text) in split(&mut self.line, data) {
            if self.tty && tag == 'F' && text.last() == Some(&b'\r') {
                text.pop();
            }
            write_record(&self.file, self.stream, tag, &text);
        }
    }

    /// The stream ended: a pending piece of a line is a last `F` record.
    pub fn finish(mut self) {
        if !self.line.is_empty() {
            let rest = std::mem::take(&mut self.line);
            write_record(&self.file, self.stream, 'F', &rest);
        }
    }
}

/// Add `data` to the pending `line` and take out the records it completes: `F` for each line ended by a
/// newline (without it), `P` for each [`MAX_LINE`] piece of a longer one.
fn split(line: &mut Vec<u8>, data: &[u8]) -> Vec<(char, Vec<u8>)> {
    let mut out = Vec::new();
    for &b in data {
        if b == b'\n' {
            out.push(('F', std::mem::take(line)));
        } else {
            line.push(b);
            if line.len() == MAX_LINE {
                out.push(('P', std::mem::take(line)));
            }
        }
    }
    out
}

fn record(at: SystemTime, stream: &str, tag: char, text: &[u8]) -> Vec<u8> {
    let mut rec = format!("{} {stream} {tag} ", crate::log::rfc3339(at)).into_bytes();
    rec.extend_from_slice(text);
    rec.push(b'\n');
    rec
}

fn write_record(file: &Mutex<File>, stream: &str, tag: char, text: &[u8]) {
    let rec = record(SystemTime::now(), stream, tag, text);
    let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
    // A full disk loses log lines, never the container.
    let _ = f.write_all(&rec);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_pieces() {
        let mut line = Vec::new();
        let recs = split(&mut line, b"a\nbc");
        assert_eq!(recs, vec![('F', b"a".to_vec())]);
        assert_eq!(line, b"bc");
        let recs = split(&mut line, b"d\n\n");
        assert_eq!(recs, vec![('F', b"bcd".to_vec()), ('F', Vec::new())]);
        let long = vec![b'x'; MAX_LINE + 3];
        let recs = split(&mut line, &long);
        assert_eq!(recs, vec![('P', vec![b'x'; MAX_LINE])]);
        assert_eq!(line.len(), 3);
    }

    #[test]
    fn record_format() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::new(86_400 + 1, 5);
        let r = record(at, "stderr", 'P', b"hi");
        assert_eq!(r, b"1970-01-02T00:00:01.000000005Z stderr P hi\n");
    }

    #[test]
    fn terminal_lines_lose_their_cr_and_reopen_moves_on() {
        let dir = std::env::temp_dir().join(format!("crilog-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("0.log");
        let log = CriLog::open(path.to_str().expect("utf-8")).expect("open");
        let mut tty = log.lines("stdout", true);
        tty.feed(b"one\r\ntw");
        std::fs::rename(&path, dir.join("0.log.1")).expect("rotate");
        log.reopen().expect("reopen");
        tty.feed(b"o\r\n");
        tty.finish();
        let texts = |p: &std::path::Path| -> Vec<String> {
            std::fs::read_to_string(p)
                .expect("read")
                .lines()
                .map(|l| {
                    l.split_once(' ')
                        .map(|x| x.1)
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        };
        assert_eq!(texts(&dir.join("0.log.1")), vec!["stdout F one"]);
        assert_eq!(texts(&path), vec!["stdout F two"]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn only_absolute_paths() {
        assert_eq!(log_path("crilog:///var/log/x.log"), Some("/var/log/x.log"));
        assert_eq!(log_path("crilog://rel.log"), None);
        assert_eq!(log_path("/var/log/x.log"), None);
    }
}
