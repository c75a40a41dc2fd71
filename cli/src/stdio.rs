//! A task's stdio as ctr does it: FIFOs in a private 0700 directory that berth creates
//! (`<fifo-dir>/<random>/<id>-stdin|stdout|stderr`), opened non-blocking; outputs copied to
//! berth's stdout/stderr until EOF, berth's stdin copied in and `CloseIO` sent at its EOF.
//!
//! The output FIFOs are opened before the process exists, with a write end of berth's own
//! held until the process runs, so EOF means the process closed them; stdin is opened once the
//! process started (the shim opens its end by then). This module must never remove anything but
//! FIFOs and the (then empty) directories it made.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Where berth makes FIFO dirs by default (ctr uses /run/containerd/fifo).
pub const DEFAULT_FIFO_DIR: &str = "/run/berth/fifo";

/// The stdio paths of one process.
#[derive(Debug, Clone, Default)]
pub struct Fifos {
    /// The directory holding them (removed by [`Fifos::remove`]).
    pub dir: Option<PathBuf>,
    /// stdin path ("" for none).
    pub stdin: String,
    /// stdout path.
    pub stdout: String,
    /// stderr path ("" with a terminal).
    pub stderr: String,
}

impl Fifos {
    /// No stdio at all (`--null-io`).
    pub fn null() -> Fifos {
        Fifos::default()
    }

    /// Check a `--log-uri` value without touching anything.
    pub fn check_log_uri(uri: &str) -> Result<()> {
        let path = uri.strip_prefix("file://").ok_or_else(|| {
            Error::Usage(format!(
                "--log-uri {uri:?}: only file:///ABSOLUTE/PATH is supported"
            ))
        })?;
        if !path.starts_with('/') {
            return Err(Error::Usage(format!(
                "--log-uri {uri:?}: the path must be absolute (file:///var/log/x.log)"
            )));
        }
        Ok(())
    }

    /// stdout and stderr appended to a file (`--log-uri file:///PATH`).
    pub fn log_file(uri: &str) -> Result<Fifos> {
        Fifos::check_log_uri(uri)?;
        let path = uri.strip_prefix("file://").ok_or_else(|| {
            Error::Usage(format!(
                "--log-uri {uri:?}: only file:///ABSOLUTE/PATH is supported"
            ))
        })?;
        if !path.starts_with('/') {
            return Err(Error::Usage(format!(
                "--log-uri {uri:?}: the path must be absolute (file:///var/log/x.log)"
            )));
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(Error::io("create log file", path))?;
        Ok(Fifos {
            dir: None,
            stdin: String::new(),
            stdout: path.to_string(),
            stderr: path.to_string(),
        })
    }

    /// Make FIFOs for process `id` below `base` (stderr only without a terminal).
    pub fn create(base: &Path, id: &str, stdin: bool, terminal: bool) -> Result<Fifos> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(base)
            .map_err(Error::io("create FIFO directory", base))?;
        let dir = base.join(crate::image::unique_suffix());
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(Error::io("create FIFO directory", &dir))?;
        let make = |name: &str| -> Result<String> {
            let p = dir.join(format!("{id}-{name}"));
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o700))
                .map_err(Error::sys(format!("mkfifo {}", p.display())))?;
            Ok(p.display().to_string())
        };
        let fifos = Fifos {
            stdin: if stdin { make("stdin")? } else { String::new() },
            stdout: make("stdout")?,
            stderr: if terminal {
                String::new()
            } else {
                make("stderr")?
            },
            dir: Some(dir),
        };
        Ok(fifos)
    }

    /// Remove the FIFOs and their directory.
    pub fn remove(&self) {
        remove_paths(&[&self.stdin, &self.stdout, &self.stderr]);
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Remove those of `paths` that are FIFOs, then their parent dirs if empty (what `tasks rm`
/// and `containers rm` do for a task started with `-d`).
pub fn remove_paths(paths: &[&str]) {
    let mut parents = Vec::new();
    for p in paths.iter().filter(|p| !p.is_empty()) {
        let path = Path::new(p);
        if std::fs::symlink_metadata(path)
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false)
        {
            let _ = std::fs::remove_file(path);
            if let Some(parent) = path.parent() {
                parents.push(parent.to_path_buf());
            }
        }
    }
    parents.dedup();
    for d in parents {
        let _ = std::fs::remove_dir(d);
    }
}

/// An output FIFO berth reads, opened before the process exists: berth holds a write end
/// of its own too (so the read does not see EOF before the process has opened the FIFO) and
/// drops it with [`Output::release`] once the process runs.
pub struct Output {
    keep: Option<std::fs::File>,
    task: JoinHandle<()>,
}

impl Output {
    /// Open `path` and copy it to `out` until EOF.
    pub fn open<W>(path: &str, mut out: W) -> Result<Output>
    where
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut rx = pipe::OpenOptions::new()
            .open_receiver(path)
            .map_err(Error::io("open output FIFO", path))?;
        let keep = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(Error::io("open output FIFO", path))?;
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            // When berth's own output goes away (`berth run ... | head -1`), keep draining: a
            // full FIFO would block the container forever.
            let mut sink_ok = true;
            loop {
                use tokio::io::AsyncReadExt;
                match rx.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) if sink_ok => {
                        sink_ok =
                            out.write_all(&buf[..n]).await.is_ok() && out.flush().await.is_ok();
                    }
                    Ok(_) => {}
                }
            }
            let _ = out.flush().await;
        });
        Ok(Output {
            keep: Some(keep),
            task,
        })
    }

    /// The process has the FIFO open now: EOF will mean it closed it.
    pub fn release(&mut self) {
        self.keep = None;
    }

    /// Wait until the copy reached EOF.
    pub async fn finished(self) {
        let _ = self.task.await;
    }
}

/// Open the stdin FIFO for writing (once the process started: the shim holds a reader).
pub fn open_stdin(path: &str) -> Result<pipe::Sender> {
    pipe::OpenOptions::new()
        .open_sender(path)
        .map_err(Error::io("open stdin FIFO", path))
}

/// Copy berth's stdin into `tx` until EOF; returns when stdin ended (then send CloseIO).
pub async fn copy_stdin(mut tx: pipe::Sender) {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = tx.flush().await;
}
