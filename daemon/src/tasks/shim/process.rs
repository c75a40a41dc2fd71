//! The berth-shim process: `berth-shim start` (daemonises, prints its socket address), `berth-shim delete` for
//! a shim that died, the descriptors a shim must not inherit, and its oom_score_adj.
//!
//! Blocking functions: call them from blocking threads.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::tasks::bundle;
use crate::tasks::error::TaskError;
use crate::tasks::state::ExitInfo;

/// Everything `berth-shim start` needs.
#[derive(Clone, Debug)]
pub struct StartArgs {
    /// The berth-shim binary.
    pub shim_binary: PathBuf,
    /// Namespace.
    pub namespace: String,
    /// Container id.
    pub id: String,
    /// Bundle (= task directory).
    pub bundle: PathBuf,
    /// berthd's socket, recorded by the shim for diagnostics.
    pub daemon_address: PathBuf,
    /// berthd's state dir.
    pub state: PathBuf,
    /// OCI runtime binary.
    pub runtime: PathBuf,
    /// Runtime state root, if any.
    pub runtime_root: Option<PathBuf>,
}

/// `berth-shim VERB` with the arguments every verb takes.
fn shim_command(args: &StartArgs, verb: &str) -> Command {
    let mut cmd = Command::new(&args.shim_binary);
    cmd.arg(verb)
        .arg("--namespace")
        .arg(&args.namespace)
        .arg("--id")
        .arg(&args.id)
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--state")
        .arg(&args.state)
        .arg("--runtime")
        .arg(&args.runtime);
    if let Some(root) = &args.runtime_root {
        cmd.arg("--runtime-root").arg(root);
    }
    cmd
}

/// Run `berth-shim start` and return the shim's socket address (blocking: call from a blocking thread).
///
/// All of berthd's descriptors are close-on-exec (Rust and tokio open them so), so the shim inherits none; its
/// stdout is a pipe we read one line from, its stderr goes to `<bundle>/shim-start.err`.
pub fn start_shim(args: &StartArgs) -> Result<PathBuf, TaskError> {
    close_inherited_fds();
    let err_path = args.bundle.join("shim-start.err");
    let err_file = std::fs::File::create(&err_path)
        .map_err(|e| TaskError::io(format!("creating {}", err_path.display()), e))?;
    let mut cmd = shim_command(args, "start");
    cmd.arg("--address").arg(&args.daemon_address);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err_file));
    let mut child = cmd.spawn().map_err(|e| {
        TaskError::ShimUnavailable(format!("running {}: {e}", args.shim_binary.display()))
    })?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let status = child
        .wait()
        .map_err(|e| TaskError::ShimUnavailable(format!("waiting for berth-shim start: {e}")))?;
    if !status.success() {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Err(TaskError::ShimUnavailable(format!(
            "berth-shim start failed ({status}): {}",
            err.trim()
        )));
    }
    let _ = std::fs::remove_file(&err_path);
    bundle::parse_address(&line)
        .or_else(|| bundle::read_address(&args.bundle))
        .ok_or_else(|| TaskError::ShimUnavailable("berth-shim start printed no address".into()))
}

/// Close descriptors berthd inherited without close-on-exec (from whoever started it), so shims never inherit
/// them. Everything berthd opens itself is close-on-exec; `/proc/self/fdinfo` tells the two apart without unsafe.
fn close_inherited_fds() {
    const O_CLOEXEC_OCTAL: u64 = 0o2000000;
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if fd <= 2 {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 8).ok());
        if let Some(flags) = flags {
            if flags & O_CLOEXEC_OCTAL == 0 {
                tracing::debug!(fd, "closing a descriptor berthd inherited, so shims do not");
                let _ = nix::unistd::close(fd);
            }
        }
    }
}

/// Run `berth-shim delete` for a task whose shim is gone; returns the recorded exit (blocking).
pub fn delete_shim(args: &StartArgs) -> Result<ExitInfo, TaskError> {
    let out = shim_command(args, "delete")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TaskError::ShimUnavailable(format!("running berth-shim delete: {e}")))?;
    if !out.status.success() {
        return Err(TaskError::ShimUnavailable(format!(
            "berth-shim delete failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_delete_output(&String::from_utf8_lossy(&out.stdout))
}

/// Parse `{"exit_status":N,"exited_at":"RFC3339","pid":P}`.
pub fn parse_delete_output(s: &str) -> Result<ExitInfo, TaskError> {
    let line = s
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| TaskError::ShimUnavailable(format!("berth-shim delete printed {s:?}: {e}")))?;
    let status = v.get("exit_status").and_then(|x| x.as_u64()).unwrap_or(137) as u32;
    let pid = v.get("pid").and_then(|x| x.as_u64()).unwrap_or(0) as u32;
    let at = v
        .get("exited_at")
        .and_then(|x| x.as_str())
        .and_then(crate::util::rfc3339::parse);
    Ok(ExitInfo::new(pid, status, at.as_ref()))
}

/// Set a process's oom_score_adj (best effort; logged on failure).
pub fn set_oom_score_adj(pid: u32, value: i32) {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), value.to_string()) {
        tracing::warn!(pid, error = %e, "setting the shim's oom_score_adj");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_output() {
        let e = parse_delete_output(
            "{\"exit_status\":3,\"exited_at\":\"1970-01-01T00:00:10Z\",\"pid\":12}\n",
        )
        .expect("parses");
        assert_eq!((e.status, e.pid, e.secs), (3, 12, 10));
        assert!(parse_delete_output("nonsense").is_err());
    }
}
