//! ExecSync: run a command in a container through the task layer's Exec, collect its stdout and stderr
//! (each capped at 16 MiB, as CVE-2022-1708 asks) from FIFOs under `<state>/cri-exec/`, and answer its exit
//! code; past the timeout the process is killed and the call fails with DeadlineExceeded.
//!
//! This module must never leave an exec process or its FIFOs behind, also on timeout or error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::cri;
use tokio::io::AsyncReadExt;
use tonic::{Code, Status};

use super::{task_status, Cri, NAMESPACE};
use crate::tasks::{Kill, StdioPaths, TaskError};

/// Most output kept per stream.
const OUTPUT_CAP: usize = 16 << 20;

/// Where ExecSync's FIFOs go.
pub(super) fn exec_root(cri: &Cri) -> PathBuf {
    cri.ctx().config.state.join("cri-exec")
}

/// At start: remove FIFO dirs a killed berthd left (their readers died with it; a process still running
/// keeps its open ends).
pub async fn remove_leftovers(cri: &Cri) {
    let root = exec_root(cri);
    if let Err(e) = tokio::fs::remove_dir_all(&root).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(namespace = NAMESPACE, dir = %root.display(), error = %e, "cannot remove old exec FIFOs");
        }
    }
}

/// Read a FIFO until every writer is gone, keeping the first [`OUTPUT_CAP`] bytes.
async fn drain(path: PathBuf) -> std::io::Result<Vec<u8>> {
    let mut rx = tokio::net::unix::pipe::OpenOptions::new().open_receiver(&path)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = rx.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        let room = OUTPUT_CAP.saturating_sub(out.len());
        out.extend_from_slice(&buf[..n.min(room)]);
    }
}

pub(super) fn mkfifo(p: &Path) -> Result<(), Status> {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| Status::internal(format!("mkfifo {}: {e}", p.display())))
}

/// The OCI process of an exec of `cmd` in container `id`: the container's own process (user, env, cwd,
/// capabilities...) with other args.
pub(super) async fn exec_process(
    cri: &Cri,
    id: &str,
    cmd: &[String],
    tty: bool,
) -> Result<Vec<u8>, Status> {
    let record = super::meta::get(&cri.ctx().store, id)
        .await?
        .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
    let spec: serde_json::Value = record
        .spec
        .as_ref()
        .and_then(|a| serde_json::from_slice(&a.value).ok())
        .ok_or_else(|| Status::internal("the container's spec is unreadable"))?;
    let mut process = spec["process"].clone();
    process["args"] = serde_json::json!(cmd);
    process["terminal"] = serde_json::json!(tty);
    serde_json::to_vec(&process).map_err(|e| Status::internal(e.to_string()))
}

/// ExecSync.
pub async fn exec_sync(
    cri: &Cri,
    req: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, Status> {
    if req.cmd.is_empty() {
        return Err(Status::invalid_argument("cmd must not be empty"));
    }
    let c = super::meta::container(&cri.ctx().store, &req.container_id).await?;
    let process_json = exec_process(cri, &c.id, &req.cmd, false).await?;

    let exec_id = format!("exec-{}", &super::new_id()?[..16]);
    let dir = exec_root(cri).join(&exec_id);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| Status::internal(format!("creating {}: {e}", dir.display())))?;
    let result = run(cri, &c.id, &exec_id, &dir, process_json, req.timeout).await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result
}

async fn run(
    cri: &Cri,
    id: &str,
    exec_id: &str,
    dir: &Path,
    process_json: Vec<u8>,
    timeout: i64,
) -> Result<cri::ExecSyncResponse, Status> {
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    mkfifo(&out)?;
    mkfifo(&err)?;
    // Read ends first: opening a FIFO's read end never blocks, and the shim keeps its own until the exit.
    let out_task = tokio::spawn(drain(out.clone()));
    let err_task = tokio::spawn(drain(err.clone()));
    let stdio = StdioPaths {
        stdin: String::new(),
        stdout: out.display().to_string(),
        stderr: err.display().to_string(),
        terminal: false,
    };
    let tasks = cri.tasks();
    let abort = |msg: Status| {
        out_task.abort();
        err_task.abort();
        msg
    };
    if let Err(e) = tasks
        .exec(NAMESPACE, id, exec_id.to_string(), stdio, process_json)
        .await
    {
        return Err(abort(task_status(e)));
    }
    if let Err(e) = tasks.start(NAMESPACE, id, exec_id.to_string()).await {
        let _ = tasks
            .delete_process(NAMESPACE, id, exec_id.to_string())
            .await;
        return Err(abort(task_status(e)));
    }
    let wait = tasks.wait(NAMESPACE, id, exec_id);
    let exit = if timeout > 0 {
        tokio::time::timeout(Duration::from_secs(timeout as u64), wait)
            .await
            .ok()
    } else {
        Some(wait.await)
    };
    let exit = match exit {
        Some(r) => r,
        None => {
            let kill = Kill {
                exec_id: exec_id.to_string(),
                signal: libc::SIGKILL as u32,
                all: false,
            };
            let _ = tasks.kill(NAMESPACE, id, kill).await;
            let _ = tasks.wait(NAMESPACE, id, exec_id).await;
            let _ = tasks
                .delete_process(NAMESPACE, id, exec_id.to_string())
                .await;
            return Err(abort(Status::deadline_exceeded(format!(
                "command timed out after {timeout} s and was killed"
            ))));
        }
    };
    let deleted = tasks
        .delete_process(NAMESPACE, id, exec_id.to_string())
        .await;
    let exit = match exit {
        Ok(e) => e,
        Err(e) => return Err(abort(task_status(e))),
    };
    if let Err(e) = deleted {
        if !matches!(e, TaskError::ExecNotFound { .. }) {
            tracing::warn!(namespace = NAMESPACE, container_id = id, error = %e, "deleting an exec");
        }
    }
    // The shim closed its ends at the exit: both readers see EOF once the process's children let go too.
    let collect = |t: tokio::task::JoinHandle<std::io::Result<Vec<u8>>>| async move {
        match tokio::time::timeout(Duration::from_secs(5), t).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(Status::internal(format!("reading exec output: {e}"))),
            Ok(Err(e)) => Err(Status::internal(format!("reading exec output: {e}"))),
            Err(_) => Err(Status::new(
                Code::Internal,
                "exec output still open 5 s after the exit (a child holds it)",
            )),
        }
    };
    let stdout = collect(out_task).await?;
    let stderr = collect(err_task).await?;
    Ok(cri::ExecSyncResponse {
        stdout,
        stderr,
        exit_code: exit.status as i32,
    })
}
