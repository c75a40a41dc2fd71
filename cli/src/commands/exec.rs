//! Driving one process of a task as a person watches it: outputs copied out, stdin copied in
//! (CloseIO at its EOF), Wait issued before Start, signals forwarded as `Tasks.Kill`, the
//! terminal raw with its size forwarded for `-t`, and the exit status returned.
//!
//! Shared by `run`, `tasks start`, `tasks exec` and `tasks attach`. It must never delete the
//! task or the process: its callers decide that.

use std::time::Duration;

use containerd_client::services::v1::{
    CloseIoRequest, KillRequest, ResizePtyRequest, StartRequest, WaitRequest,
};
use tokio::signal::unix::{signal, SignalKind};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::stdio::{self, Fifos};
use crate::tty;

/// How long berth keeps copying output after the process exited (something in the container
/// may still hold the FIFOs briefly).
const DRAIN: Duration = Duration::from_secs(5);

/// Which process of which container.
#[derive(Debug, Clone)]
pub struct Target {
    /// Container id.
    pub container: String,
    /// Exec id ("" for the init process).
    pub exec_id: String,
}

/// Signals berth forwards to the process instead of dying from them.
const FORWARDED: [(i32, &str); 6] = [
    (libc::SIGINT, "SIGINT"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGUSR2, "SIGUSR2"),
];

/// Berth's ends of a process's FIFOs, opened before the process starts.
pub struct Attached {
    outputs: Vec<stdio::Output>,
    stdin: String,
}

/// Open the output FIFOs of `fifos` (made by berth) for copying; call before Tasks.Create or
/// Exec, then [`wait`] after them.
pub fn open(fifos: &Fifos) -> Result<Attached> {
    let mut outputs = Vec::new();
    if fifos.dir.is_some() {
        if !fifos.stdout.is_empty() {
            outputs.push(stdio::Output::open(&fifos.stdout, tokio::io::stdout())?);
        }
        if !fifos.stderr.is_empty() {
            outputs.push(stdio::Output::open(&fifos.stderr, tokio::io::stderr())?);
        }
    }
    Ok(Attached {
        outputs,
        stdin: if fifos.dir.is_some() {
            fifos.stdin.clone()
        } else {
            String::new()
        },
    })
}

/// Attach to an existing process's FIFOs and wait for it.
pub async fn attach_and_wait(
    client: &Client,
    target: &Target,
    fifos: &Fifos,
    terminal: bool,
    start: bool,
) -> Result<u32> {
    let attached = open(fifos)?;
    wait(client, target, attached, terminal, start).await
}

/// Optionally start the process, copy stdin in, forward signals and window changes until it
/// exits; returns its exit status.
pub async fn wait(
    client: &Client,
    target: &Target,
    mut attached: Attached,
    terminal: bool,
    start: bool,
) -> Result<u32> {
    let c = client.clone();
    let t = target.clone();
    let mut wait = tokio::spawn(async move {
        c.tasks()
            .wait(c.stream_req(WaitRequest {
                container_id: t.container,
                exec_id: t.exec_id,
            }))
            .await
    });
    let mut signals = Vec::new();
    for (n, _) in FORWARDED {
        if let Ok(s) = signal(SignalKind::from_raw(n)) {
            signals.push((n, s));
        }
    }
    let mut winch = if terminal {
        signal(SignalKind::window_change()).ok()
    } else {
        None
    };
    // The process's spec carries the terminal's size (`consoleSize`), so its pty has it from
    // the start; one resize here covers a change since (an init's pty exists once the task is
    // created; an exec's only once it started, and the runtime sized it). No second resize
    // after Start: in flight, it could land after a SIGWINCH's.
    let exec = !target.exec_id.is_empty();
    if terminal {
        // Raw before the process can write.
        if tty::stdin_is_tty() {
            tty::make_raw()?;
        }
        if !exec || !start {
            resize(client, target).await;
        }
    }
    if start {
        let started = client
            .tasks()
            .start(client.req(StartRequest {
                container_id: target.container.clone(),
                exec_id: target.exec_id.clone(),
            }))
            .await
            .map_err(Error::rpc(format!("start {}", describe(target))));
        if let Err(e) = started {
            wait.abort();
            return Err(e);
        }
    }
    for o in attached.outputs.iter_mut() {
        o.release();
    }
    if !attached.stdin.is_empty() {
        // A process that is already gone has no stdin to feed: not an error.
        if let Ok(tx) = stdio::open_stdin(&attached.stdin) {
            let c = client.clone();
            let t = target.clone();
            tokio::spawn(async move {
                stdio::copy_stdin(tx).await;
                let _ = c
                    .tasks()
                    .close_io(c.req(CloseIoRequest {
                        container_id: t.container,
                        exec_id: t.exec_id,
                        stdin: true,
                    }))
                    .await;
            });
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<i32>();
    for (n, mut s) in signals {
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(n).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut forwarding = true;
    let result = loop {
        tokio::select! {
            r = &mut wait => break r,
            Some(sig) = rx.recv(), if forwarding => {
                let kill = client.tasks().kill(client.req(KillRequest {
                    container_id: target.container.clone(),
                    exec_id: target.exec_id.clone(),
                    signal: sig as u32,
                    all: false,
                })).await;
                if let Err(s) = kill {
                    if s.code() == tonic::Code::NotFound {
                        forwarding = false;
                    }
                }
            }
            Some(_) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                resize(client, target).await;
            }
        }
    };
    let status = match result {
        Ok(Ok(r)) => r.into_inner().exit_status,
        Ok(Err(s)) => {
            tty::restore_terminal();
            return Err(Error::rpc(format!("wait for {}", describe(target)))(s));
        }
        Err(e) => {
            tty::restore_terminal();
            return Err(Error::Unsupported(format!("waiting task failed: {e}")));
        }
    };
    let drain = async {
        for o in attached.outputs {
            o.finished().await;
        }
    };
    let _ = tokio::time::timeout(DRAIN, drain).await;
    tty::restore_terminal();
    Ok(status)
}

/// Send the local window size to the process's pty.
async fn resize(client: &Client, target: &Target) {
    if let Some((cols, rows)) = tty::window_size() {
        let _ = client
            .tasks()
            .resize_pty(client.req(ResizePtyRequest {
                container_id: target.container.clone(),
                exec_id: target.exec_id.clone(),
                width: u32::from(cols),
                height: u32::from(rows),
            }))
            .await;
    }
}

/// `container x` or `exec e in container x`.
pub fn describe(t: &Target) -> String {
    if t.exec_id.is_empty() {
        format!("container {}", t.container)
    } else {
        format!("exec {} in container {}", t.exec_id, t.container)
    }
}

/// The exit code berth ends with for an exit status (128+N for a signal, as reported).
pub fn exit_code(status: u32) -> i32 {
    status.min(255) as i32
}

/// Parse a signal name or number (`SIGKILL`, `KILL`, `9`).
pub fn parse_signal(s: &str) -> Result<u32> {
    if let Ok(n) = s.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as u32)
        .map_err(|_| Error::Usage(format!("unknown signal {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGKILL").ok(), Some(9));
        assert_eq!(parse_signal("term").ok(), Some(15));
        assert_eq!(parse_signal("9").ok(), Some(9));
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("0").is_err());
        assert_eq!(exit_code(137), 137);
        assert_eq!(exit_code(300), 255);
    }
}
