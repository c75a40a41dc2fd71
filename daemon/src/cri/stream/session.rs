//! Exec and attach sessions, whatever the wire protocol: the protocol module decodes the client's frames
//! into [`Input`]s and writes out what arrives on the output channel, tagged [`STDOUT`] or [`STDERR`]; the
//! session answers how the process ended, which the protocol reports on its error channel ([`status_json`]).
//!
//! Exec runs through the task layer's Exec (FIFOs under `<state>/cri-exec/`, as ExecSync); a client that goes
//! away before the process exits gets it killed (containerd's CRI does the same). Attach follows the
//! container's CRI log, which the shim keeps writing (the container's stdio belongs to the shim).
//!
//! This module must never leave an exec process, its FIFOs or its task-layer record behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::cri;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::super::{exec as cri_exec, meta, Cri, NAMESPACE};
use crate::tasks::{CloseIo, Kill, ResizePty, StdioPaths};

/// The stdout channel (remotecommand's numbering, which both protocols map to their own).
pub const STDOUT: u8 = 1;
/// The stderr channel.
pub const STDERR: u8 = 2;

/// How long output may trail the exit (a child of the process can hold the FIFO a little longer).
const DRAIN: Duration = Duration::from_secs(5);

/// What the client sent.
#[derive(Debug)]
pub enum Input {
    /// Bytes for the process's stdin.
    Stdin(Vec<u8>),
    /// The client closed its stdin.
    CloseStdin,
    /// The client's terminal has a new size.
    Resize { width: u16, height: u16 },
}

/// Output to the client: (channel, bytes).
pub type Output = mpsc::Sender<(u8, Vec<u8>)>;

/// How a session ended: the exit code, or why there is none.
pub type Outcome = Result<u32, String>;

/// Decode a resize message (`{"Width":W,"Height":H}`, as kubectl sends it).
pub fn parse_resize(data: &[u8]) -> Option<Input> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    let s: Size = serde_json::from_slice(data).ok()?;
    Some(Input::Resize {
        width: s.width,
        height: s.height,
    })
}

/// The v4 error-channel message: a metav1.Status, Success or Failure with an ExitCode cause.
pub fn status_json(outcome: &Outcome) -> Vec<u8> {
    let v = match outcome {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": e,
            "reason": "InternalError",
        }),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Run the exec `req` with the client's `input` and `out`; the client is gone when `input` closes.
pub async fn exec(
    cri: &Cri,
    req: cri::ExecRequest,
    input: mpsc::Receiver<Input>,
    out: Output,
) -> Outcome {
    let id = req.container_id.clone();
    let exec_id = format!(
        "stream-{}",
        &super::super::new_id().map_err(|e| e.message().to_string())?[..16]
    );
    let dir = cri_exec::exec_root(cri).join(&exec_id);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let r = exec_in(cri, &req, &exec_id, &dir, input, out).await;
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
        tracing::warn!(namespace = NAMESPACE, container_id = %id, error = %e, "removing exec FIFOs");
    }
    r
}

/// An output FIFO of ours: its read end, and a write end held until the process has its own (so the read
/// does not see EOF before the process opened it).
struct OutFifo {
    rx: tokio::net::unix::pipe::Receiver,
    hold: std::fs::File,
    channel: u8,
}

fn out_fifo(path: &Path, channel: u8) -> Result<OutFifo, String> {
    cri_exec::mkfifo(path).map_err(|e| e.message().to_string())?;
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let hold = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    Ok(OutFifo { rx, hold, channel })
}

use std::os::unix::fs::OpenOptionsExt;

/// Copy a FIFO to the client until EOF.
async fn pump(mut rx: tokio::net::unix::pipe::Receiver, channel: u8, out: Output) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out.send((channel, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn exec_in(
    cri: &Cri,
    req: &cri::ExecRequest,
    exec_id: &str,
    dir: &Path,
    input: mpsc::Receiver<Input>,
    out: Output,
) -> Outcome {
    let id = req.container_id.as_str();
    let process = cri_exec::exec_process(cri, id, &req.cmd, req.tty)
        .await
        .map_err(|e| e.message().to_string())?;
    let mut fifos = Vec::new();
    let mut stdio = StdioPaths {
        stdin: String::new(),
        stdout: String::new(),
        stderr: String::new(),
        terminal: req.tty,
    };
    if req.stdout {
        let p = dir.join("stdout");
        fifos.push(out_fifo(&p, STDOUT)?);
        stdio.stdout = p.display().to_string();
    }
    if req.stderr && !req.tty {
        let p = dir.join("stderr");
        fifos.push(out_fifo(&p, STDERR)?);
        stdio.stderr = p.display().to_string();
    }
    let stdin_path = dir.join("stdin");
    if req.stdin {
        cri_exec::mkfifo(&stdin_path).map_err(|e| e.message().to_string())?;
        stdio.stdin = stdin_path.display().to_string();
    }
    let tasks = cri.tasks();
    tasks
        .exec(NAMESPACE, id, exec_id.to_string(), stdio, process)
        .await
        .map_err(|e| e.to_string())?;
    if let Err(e) = tasks.start(NAMESPACE, id, exec_id.to_string()).await {
        let _ = tasks
            .delete_process(NAMESPACE, id, exec_id.to_string())
            .await;
        return Err(e.to_string());
    }
    let pumps: Vec<_> = fifos
        .into_iter()
        .map(|f| {
            drop(f.hold);
            tokio::spawn(pump(f.rx, f.channel, out.clone()))
        })
        .collect();
    drop(out);
    // The shim opened the stdin FIFO at Start.
    let stdin = if req.stdin {
        tokio::net::unix::pipe::OpenOptions::new()
            .open_sender(&stdin_path)
            .ok()
    } else {
        None
    };
    let (gone_tx, gone_rx) = oneshot::channel();
    let feeder = tokio::spawn(feed(
        cri.clone(),
        id.to_string(),
        exec_id.to_string(),
        req.tty,
        stdin,
        input,
        gone_tx,
    ));
    let wait = tasks.wait(NAMESPACE, id, exec_id);
    tokio::pin!(wait);
    let exit = tokio::select! {
        r = &mut wait => r,
        _ = gone_rx => {
            tracing::info!(namespace = NAMESPACE, container_id = id, exec_id, "client gone: killing the exec");
            let kill = Kill { exec_id: exec_id.to_string(), signal: libc::SIGKILL as u32, all: false };
            let _ = tasks.kill(NAMESPACE, id, kill).await;
            wait.await
        }
    };
    feeder.abort();
    for p in pumps {
        let _ = tokio::time::timeout(DRAIN, p).await;
    }
    if let Err(e) = tasks
        .delete_process(NAMESPACE, id, exec_id.to_string())
        .await
    {
        tracing::warn!(namespace = NAMESPACE, container_id = id, exec_id, error = %e, "deleting an exec");
    }
    exit.map(|e| e.status).map_err(|e| e.to_string())
}

/// Apply the client's input until it closes (then say so on `gone`).
async fn feed(
    cri: Cri,
    id: String,
    exec_id: String,
    tty: bool,
    mut stdin: Option<tokio::net::unix::pipe::Sender>,
    mut input: mpsc::Receiver<Input>,
    gone: oneshot::Sender<()>,
) {
    while let Some(i) = input.recv().await {
        match i {
            Input::Stdin(data) => {
                if let Some(tx) = stdin.as_mut() {
                    if tx.write_all(&data).await.is_err() {
                        stdin = None;
                    }
                }
            }
            Input::CloseStdin => {
                stdin = None;
                let msg = CloseIo {
                    exec_id: exec_id.clone(),
                    stdin: true,
                };
                let _ = cri.tasks().close_io(NAMESPACE, &id, msg).await;
            }
            Input::Resize { width, height } if tty => {
                let msg = ResizePty {
                    exec_id: exec_id.clone(),
                    width: u32::from(width),
                    height: u32::from(height),
                };
                if let Err(e) = cri.tasks().resize_pty(NAMESPACE, &id, msg).await {
                    tracing::debug!(namespace = NAMESPACE, container_id = %id, error = %e, "resize");
                }
            }
            Input::Resize { .. } => {}
        }
    }
    let _ = gone.send(());
}

/// Attach: the container's output from now on, read from its CRI log, until the container exits or the
/// client goes away. The log's records are split back into stdout and stderr (partial records rejoined).
pub async fn attach(
    cri: &Cri,
    req: cri::AttachRequest,
    mut input: mpsc::Receiver<Input>,
    out: Output,
) -> Outcome {
    let c = meta::container(&cri.ctx().store, &req.container_id)
        .await
        .map_err(|e| e.message().to_string())?;
    let log = PathBuf::from(c.label(meta::LOG_PATH));
    let tasks = cri.tasks().clone();
    let id = c.id.clone();
    let exited = async move { tasks.wait(NAMESPACE, &id, "").await };
    tokio::pin!(exited);
    let mut follow = LogFollower::open(&log).await;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            r = &mut exited => {
                follow.read_new(&req, &out).await;
                return r.map(|e| e.status).map_err(|e| e.to_string());
            }
            i = input.recv() => {
                if i.is_none() {
                    return Err("client gone".to_string());
                }
            }
            _ = tick.tick() => follow.read_new(&req, &out).await,
        }
    }
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

    #[test]
    fn status_names_the_exit_code() {
        let v: serde_json::Value = serde_json::from_slice(&status_json(&Ok(3))).expect("json");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let v: serde_json::Value = serde_json::from_slice(&status_json(&Ok(0))).expect("json");
        assert_eq!(v["status"], "Success");
    }

    #[test]
    fn resize_is_kubectls_json() {
        assert!(matches!(
            parse_resize(br#"{"Width":100,"Height":30}"#),
            Some(Input::Resize {
                width: 100,
                height: 30
            })
        ));
    }
}
