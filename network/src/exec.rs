//! Running one plugin executable: environment, JSON on stdin, stdout/stderr captured, a time
//! limit, and the exit status.
//!
//! The child is waited for with `waitid(WNOWAIT)` on a helper thread, so on timeout it is
//! still unreaped when it is killed (its pid cannot have been reused). The caller's process
//! must not reap children with `waitpid(-1)` behind this module's back. This module must
//! never kill anything but the plugin process it started.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

/// stdout beyond this is discarded (results are a few KiB).
const MAX_STDOUT: usize = 4 << 20;
/// stderr beyond this is discarded (it only goes into error messages).
const MAX_STDERR: usize = 64 << 10;
/// stdin up to this size is written without a thread: it fits in a pipe's 64 KiB buffer.
const INLINE_STDIN: usize = 32 << 10;
/// How long to wait for a plugin's pipes to close after it exited (a helper it forked may
/// hold them open).
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Directories always on a plugin's PATH: portmap and firewall run `iptables` from /usr/sbin.
const SYSTEM_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// What a finished plugin left.
#[derive(Debug)]
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Why a plugin could not be run to completion.
#[derive(Debug)]
pub(crate) enum RunError {
    Spawn(std::io::Error),
    Wait(std::io::Error),
    /// Killed after the time limit; what it printed to stderr until then.
    TimedOut {
        stderr: Vec<u8>,
    },
}

/// The environment every plugin gets besides its `CNI_*` variables: a PATH only (the
/// environment of berthd is not the plugins' business).
fn path_env() -> String {
    let mut dirs: Vec<String> = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    for d in SYSTEM_PATH {
        if !dirs.iter().any(|x| x == d) {
            dirs.push((*d).to_string());
        }
    }
    dirs.join(":")
}

/// Run `binary` with `env` (plus PATH), `stdin` on its standard input, killing it after
/// `timeout`.
pub(crate) fn run(
    binary: &Path,
    env: &[(&str, String)],
    stdin: Vec<u8>,
    timeout: Duration,
) -> Result<Output, RunError> {
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PATH", path_env())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    let pid = Pid::from_raw(child.id() as i32);

    if let Some(mut pipe) = child.stdin.take() {
        // A plugin may exit without reading stdin: EPIPE is then expected, not an error. What fits in
        // the pipe's buffer is written here (no thread to start); a larger config gets a writer thread,
        // so a plugin that writes before it reads cannot deadlock us.
        if stdin.len() <= INLINE_STDIN {
            let _ = pipe.write_all(&stdin);
        } else {
            std::thread::spawn(move || {
                let _ = pipe.write_all(&stdin);
            });
        }
    }
    let out = Collector::start(child.stdout.take(), MAX_STDOUT);
    let err = Collector::start(child.stderr.take(), MAX_STDERR);

    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // WNOWAIT: learn about the exit without reaping, so the pid stays ours (and safe to
        // kill) until `child.wait()` below.
        let r = loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Err(Errno::EINTR) => continue,
                r => break r,
            }
        };
        let _ = tx.send(r.is_ok());
    });
    let exited = match rx.recv_timeout(timeout) {
        Ok(true) => true,
        // waitid itself failed: fall back to polling, still bounded by the deadline.
        Ok(false) | Err(mpsc::RecvTimeoutError::Disconnected) => poll_exit(&mut child, deadline),
        Err(mpsc::RecvTimeoutError::Timeout) => false,
    };
    if !exited {
        let _ = kill(pid, Signal::SIGKILL);
    }
    let timed_out = !exited;
    let status = child.wait().map_err(RunError::Wait)?;
    let pipe_deadline = Instant::now() + PIPE_GRACE;
    let stderr = err.finish(pipe_deadline);
    if timed_out {
        return Err(RunError::TimedOut { stderr });
    }
    Ok(Output {
        status,
        stdout: out.finish(pipe_deadline),
        stderr,
    })
}

/// Poll `child` until it exited (true; `try_wait` reaps it and `Child::wait` still reports
/// the status) or `deadline` passed (false; it is then unreaped and safe to kill).
fn poll_exit(child: &mut std::process::Child, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Reads a pipe to EOF on its own thread, keeping at most `max` bytes; says so through a channel
/// the moment the pipe closes (no polling on the caller's side).
struct Collector {
    done: mpsc::Receiver<()>,
    /// What was read so far (all of it once `done` fired; part of it for a pipe a helper the
    /// plugin forked still holds open at the deadline).
    read: Arc<Mutex<Vec<u8>>>,
}

impl Collector {
    fn start(pipe: Option<impl Read + Send + 'static>, max: usize) -> Collector {
        let (tx, done) = mpsc::channel();
        let read = Arc::new(Mutex::new(Vec::new()));
        let r = read.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            if let Some(mut p) = pipe {
                while let Ok(n) = p.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut g = r.lock().unwrap_or_else(|e| e.into_inner());
                    let room = max.saturating_sub(g.len());
                    g.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            let _ = tx.send(());
        });
        Collector { done, read }
    }

    /// What was read, once the pipe hit EOF or `deadline` passed.
    fn finish(self, deadline: Instant) -> Vec<u8> {
        let _ = self
            .done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
        std::mem::take(&mut *self.read.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_env_and_status() {
        let out = run(
            Path::new("/bin/sh"),
            &[("CNI_COMMAND", "ADD".into())],
            Vec::new(),
            Duration::from_secs(10),
        );
        // /bin/sh with no -c reads the script from stdin: empty stdin, exit 0.
        let out = out.unwrap_or_else(|e| panic!("{e:?}"));
        assert!(out.status.success());
    }

    #[test]
    fn stdin_is_delivered_and_stdout_read() {
        let dir = std::env::temp_dir().join(format!("berth-net-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create_dir_all");
        let script = dir.join("p");
        std::fs::write(
            &script,
            "#!/bin/sh\nread line\necho \"$CNI_COMMAND:$line\"\necho oops >&2\nexit 3\n",
        )
        .expect("test setup");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("set_permissions");
        let out = run(
            &script,
            &[("CNI_COMMAND", "DEL".into())],
            b"hello\n".to_vec(),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(out.stdout, b"DEL:hello\n");
        assert_eq!(out.stderr, b"oops\n");
        assert_eq!(out.status.code(), Some(3));

        std::fs::write(&script, "#!/bin/sh\necho started >&2\nexec sleep 30\n").expect("write");
        let t0 = Instant::now();
        let r = run(&script, &[], Vec::new(), Duration::from_millis(300));
        match r {
            Err(RunError::TimedOut { stderr }) => assert_eq!(stderr, b"started\n"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).expect("remove_dir_all");
    }
}
