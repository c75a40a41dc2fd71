//! Attach: a client joins the container's own process (`kubectl attach -i -t`).
//!
//! Design, and why: the container's stdio belongs to berth-shim, which writes its output to the CRI log
//! (`crilog://`, a terminal's too) and outlives berthd. Attach needs no second copy of that output: every
//! attached client follows the CRI log (each with its own reader, so any number fan out), and the log keeps
//! every line whether or not anyone is attached. For input, a container created with `stdin: true` gets a
//! stdin FIFO at [`stdin_fifo`] (a fixed path, so an attach after a berthd restart finds it again); the shim
//! holds its own write end until CloseIO, so a client closing its stdin does not end the container's. With
//! `stdin_once`, the first attach whose stdin closes (or whose client goes) sends CloseIO: the container sees
//! EOF. Resizes go to the container's pty (ResizePty on the task). The other design, the shim serving
//! attach itself, would need a new shim RPC and a stream per client through it; following the log costs one
//! poll every [`POLL`] per client.
//!
//! This module must never write the container's log nor keep the stdin FIFO after the container is removed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::cri;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::session::{feed, Feed, Input, Outcome, Output, STDERR, STDOUT};
use crate::cri::{exec as cri_exec, meta, Cri, NAMESPACE};

/// How often an attached client's log is read for new records.
const POLL: Duration = Duration::from_millis(50);

/// The stdin FIFO of container `id` (created with `stdin: true`).
pub fn stdin_fifo(cri: &Cri, id: &str) -> PathBuf {
    cri.ctx().config.state.join("cri-stdin").join(id)
}

/// Make the stdin FIFO for container `id` (before its task is created); its path for the task's stdin.
pub async fn make_stdin(cri: &Cri, id: &str) -> Result<String, Status> {
    let p = stdin_fifo(cri, id);
    if let Some(dir) = p.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| Status::internal(format!("creating {}: {e}", dir.display())))?;
    }
    match tokio::fs::remove_file(&p).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Status::internal(format!("removing {}: {e}", p.display()))),
    }
    cri_exec::mkfifo(&p)?;
    Ok(p.display().to_string())
}

/// Remove container `id`'s stdin FIFO, if it has one.
pub async fn remove_stdin(cri: &Cri, id: &str) {
    let p = stdin_fifo(cri, id);
    if let Err(e) = tokio::fs::remove_file(&p).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(namespace = NAMESPACE, container_id = %id, error = %e, "removing the stdin FIFO");
        }
    }
}

/// Attach: the container's output from now on, read from its CRI log, and the client's input to its stdin
/// and pty, until the container exits or the client goes away. The log's records are split back into stdout
/// and stderr (partial records rejoined).
pub async fn attach(
    cri: &Cri,
    req: cri::AttachRequest,
    input: mpsc::Receiver<Input>,
    out: Output,
) -> Outcome {
    let c = meta::container(&cri.ctx().store, &req.container_id)
        .await
        .map_err(|e| e.message().to_string())?;
    let log = PathBuf::from(c.label(meta::LOG_PATH));
    // Output first, so nothing the input provokes is missed.
    let mut follow = LogFollower::open(&log).await;
    // The shim holds a read end while the container runs: a non-blocking open finds it.
    let stdin = if req.stdin && c.config.stdin {
        let p = stdin_fifo(cri, &c.id);
        match tokio::net::unix::pipe::OpenOptions::new().open_sender(&p) {
            Ok(tx) => Some(tx),
            Err(e) => {
                return Err(format!(
                    "opening the container's stdin {}: {e}",
                    p.display()
                ))
            }
        }
    } else {
        None
    };
    let (gone_tx, mut gone_rx) = oneshot::channel();
    let feeder = tokio::spawn(feed(
        cri.clone(),
        Feed {
            id: c.id.clone(),
            exec_id: String::new(),
            tty: c.config.tty,
            close_io: c.config.stdin_once,
        },
        stdin,
        input,
        gone_tx,
    ));
    let tasks = cri.tasks().clone();
    let id = c.id.clone();
    let exited = async move { tasks.wait(NAMESPACE, &id, "").await };
    tokio::pin!(exited);
    let mut tick = tokio::time::interval(POLL);
    let outcome = loop {
        tokio::select! {
            r = &mut exited => {
                follow.read_new(&req, &out).await;
                break r.map(|e| e.status).map_err(|e| e.to_string());
            }
            _ = &mut gone_rx => break Err("client gone".to_string()),
            _ = tick.tick() => follow.read_new(&req, &out).await,
        }
    };
    feeder.abort();
    outcome
}

/// Reads what is appended to a CRI log, reopening it when the kubelet rotated it.
struct LogFollower {
    path: PathBuf,
    file: Option<(tokio::fs::File, u64)>,
    partial: Vec<u8>,
}

impl LogFollower {
    async fn open(path: &Path) -> LogFollower {
        let mut file = None;
        if let Ok(mut f) = tokio::fs::File::open(path).await {
            if let (Ok(_), Ok(m)) = (f.seek(std::io::SeekFrom::End(0)).await, f.metadata().await) {
                file = Some((f, std::os::unix::fs::MetadataExt::ino(&m)));
            }
        }
        LogFollower {
            path: path.to_path_buf(),
            file,
            partial: Vec::new(),
        }
    }

    async fn read_new(&mut self, req: &cri::AttachRequest, out: &Output) {
        let now = tokio::fs::metadata(&self.path)
            .await
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let mut buf = Vec::new();
        if let Some((f, _)) = self.file.as_mut() {
            let _ = f.read_to_end(&mut buf).await;
        }
        if now.is_some() && now != self.file.as_ref().map(|(_, ino)| *ino) {
            // Rotated (ReopenContainerLog): the new file is read from its start.
            if let Ok(mut f) = tokio::fs::File::open(&self.path).await {
                let _ = f.read_to_end(&mut buf).await;
                self.file = now.map(|ino| (f, ino));
            }
        }
        self.partial.extend_from_slice(&buf);
        while let Some(nl) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            if let Some((channel, text)) = parse_record(&line[..line.len() - 1]) {
                let wanted = if channel == STDOUT {
                    req.stdout
                } else {
                    req.stderr || req.tty
                };
                if wanted {
                    let _ = out.send((channel, text)).await;
                }
            }
        }
    }
}

/// A CRI log record (`<time> <stream> <P|F> <text>`) as (channel, bytes the process wrote).
fn parse_record(line: &[u8]) -> Option<(u8, Vec<u8>)> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let _time = parts.next()?;
    let channel = match parts.next()? {
        b"stdout" => STDOUT,
        b"stderr" => STDERR,
        _ => return None,
    };
    let tag = parts.next()?;
    let mut text = parts.next().unwrap_or_default().to_vec();
    if tag.first() == Some(&b'F') {
        text.push(b'\n');
    }
    Some((channel, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_back_into_streams() {
        assert_eq!(
            parse_record(b"2026-12-07T06:00:00.1Z stdout F hello"),
            Some((STDOUT, b"hello\n".to_vec()))
        );
        assert_eq!(
            parse_record(b"2026-12-07T06:00:00.1Z stderr P part"),
            Some((STDERR, b"part".to_vec()))
        );
        assert_eq!(parse_record(b"garbage"), None);
    }
}
