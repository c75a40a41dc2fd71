//! Exec and attach sessions, whatever the wire protocol: the protocol module decodes the client's frames
//! into [`Input`]s and writes out what arrives on the output channel, tagged [`STDOUT`] or [`STDERR`]; the
//! session answers how the process ended, which the protocol reports on its error channel ([`status_json`]).
//!
//! Exec runs through the task layer's Exec (FIFOs under `<state>/cri-exec/`, as ExecSync); a client that goes
//! away before the process exits gets it killed (containerd's CRI does the same). Attach is `attach.rs`.
//!
//! This module must never leave an exec process, its FIFOs or its task-layer record behind.

use std::path::Path;
use std::time::Duration;

use berth_proto::cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::super::{exec as cri_exec, Cri, NAMESPACE};
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
        Feed {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            tty: req.tty,
            close_io: true,
        },
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

/// Whose input [`feed`] applies.
pub(super) struct Feed {
    pub(super) id: String,
    /// The process ("" for the container's own).
    pub(super) exec_id: String,
    /// Resizes apply (the process has a terminal).
    pub(super) tty: bool,
    /// The client's end of stdin closes the process's stdin (CloseIO): always for an exec, with `stdin_once`
    /// for an attach. Otherwise the client's end only drops its own writer.
    pub(super) close_io: bool,
}

/// Apply the client's input until it closes (then say so on `gone`).
pub(super) async fn feed(
    cri: Cri,
    f: Feed,
    mut stdin: Option<tokio::net::unix::pipe::Sender>,
    mut input: mpsc::Receiver<Input>,
    gone: oneshot::Sender<()>,
) {
    let mut open = stdin.is_some();
    let close_io = |open: &mut bool| {
        let run = f.close_io && std::mem::take(open);
        let msg = CloseIo {
            exec_id: f.exec_id.clone(),
            stdin: true,
        };
        let (cri, id) = (cri.clone(), f.id.clone());
        async move {
            if run {
                if let Err(e) = cri.tasks().close_io(NAMESPACE, &id, msg).await {
                    tracing::debug!(namespace = NAMESPACE, container_id = %id, error = %e, "closing stdin");
                }
            }
        }
    };
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
                close_io(&mut open).await;
            }
            Input::Resize { width, height } if f.tty => {
                let msg = ResizePty {
                    exec_id: f.exec_id.clone(),
                    width: u32::from(width),
                    height: u32::from(height),
                };
                if let Err(e) = cri.tasks().resize_pty(NAMESPACE, &f.id, msg).await {
                    tracing::debug!(namespace = NAMESPACE, container_id = %f.id, error = %e, "resize");
                }
            }
            Input::Resize { .. } => {}
        }
    }
    // A client gone without closing its stdin closed it all the same.
    drop(stdin);
    close_io(&mut open).await;
    let _ = gone.send(());
}

#[cfg(test)]
mod tests {
    use super::*;

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
