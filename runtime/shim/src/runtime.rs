//! Driving the OCI runtime binary (runc's CLI: berth-runc, runc, crun).
//!
//! Commands are spawned with `std::process::Command::spawn` and their exit comes from the
//! [`Reaper`](crate::reaper::Reaper); this module must never wait on a child itself.
//! Failures carry the runtime's own message (its stderr, or the last error of its JSON log
//! when its stdio belongs to the container).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::error::{Error, Result};
use crate::reaper::Reaper;

/// The stdio a runtime command hands on to the container process it starts.
pub struct ProcStdio {
    /// fd 0 of the container process.
    pub stdin: OwnedFd,
    /// fd 1.
    pub stdout: OwnedFd,
    /// fd 2.
    pub stderr: OwnedFd,
}

/// One OCI runtime binary with its state root.
pub struct Runtime {
    /// The binary.
    pub binary: PathBuf,
    /// Its `--root`.
    pub root: PathBuf,
    /// Its `--log` (JSON lines).
    pub log: PathBuf,
    reaper: Reaper,
}

async fn read_all(fd: Option<OwnedFd>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(fd) = fd {
        if let Ok(mut rx) = pipe::Receiver::from_owned_fd(fd) {
            let _ = rx.read_to_end(&mut buf).await;
        }
    }
    buf
}

/// The last `"level":"error"` message in a runtime's JSON log.
fn last_log_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v.get("level")?.as_str()? == "error" {
            Some(v.get("msg")?.as_str()?.to_string())
        } else {
            None
        }
    })
}

impl Runtime {
    /// A runtime handle.
    pub fn new(binary: PathBuf, root: PathBuf, log: PathBuf, reaper: Reaper) -> Self {
        Runtime {
            binary,
            root,
            log,
            reaper,
        }
    }

    /// Run `<runtime> --root R --log L --log-format json ARGS`; returns its stdout.
    /// With `stdio`, the command (and the process it starts) gets those fds instead of pipes.
    pub async fn run(&self, args: Vec<OsString>, stdio: Option<ProcStdio>) -> Result<Vec<u8>> {
        let verb = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json")
            .args(args);
        let own_stdio = stdio.is_some();
        match stdio {
            Some(s) => {
                cmd.stdin(Stdio::from(s.stdin))
                    .stdout(Stdio::from(s.stdout))
                    .stderr(Stdio::from(s.stderr));
            }
            None => {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
            }
        }
        // A pre_exec hook makes std fork+exec instead of posix_spawn (see crate::signals).
        // SAFETY: the hook only makes raw rt_sigaction syscalls, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                crate::signals::reset_internal_in_child();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::path("spawning runtime", &self.binary, e))?;
        // No .await between spawn and subscribe (single-threaded runtime: the reaper can't run).
        let exit = self.reaper.subscribe(child.id() as i32);
        let out = child.stdout.take().map(OwnedFd::from);
        let err = child.stderr.take().map(OwnedFd::from);
        drop(cmd);
        drop(child);
        let (out, err) = tokio::join!(read_all(out), read_all(err));
        let exit = exit.await.map_err(|_| Error::Runtime {
            cmd: verb.clone(),
            msg: "exit status lost".into(),
        })?;
        if exit.status == 0 {
            return Ok(out);
        }
        let mut msg = String::from_utf8_lossy(&err).trim().to_string();
        if msg.is_empty() || own_stdio {
            if let Some(m) = last_log_error(&self.log) {
                msg = m;
            }
        }
        if msg.is_empty() {
            msg = format!("exit status {}", exit.status);
        }
        Err(Error::Runtime { cmd: verb, msg })
    }
}

/// Build an argument vector from strings and paths.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        vec![$(std::ffi::OsString::from($a)),*]
    };
}
