//! Process inspection for tests, read from /proc.
//!
//! Liveness comes from the state letter in /proc/PID/stat: PID 1 on this host reaps orphans
//! lazily, so a zombie passes `kill(pid, 0)` and must count as dead. This module must never
//! signal a process the caller did not name.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Anything that names a process: `i32`, `u32` (from `std::process::Child::id`), `nix::unistd::Pid`.
pub trait AsPid {
    /// The pid as the kernel's signed type.
    fn as_pid(&self) -> i32;
}

impl AsPid for i32 {
    fn as_pid(&self) -> i32 {
        *self
    }
}

impl AsPid for u32 {
    fn as_pid(&self) -> i32 {
        i32::try_from(*self).unwrap_or(i32::MAX)
    }
}

impl AsPid for Pid {
    fn as_pid(&self) -> i32 {
        self.as_raw()
    }
}

impl<T: AsPid> AsPid for &T {
    fn as_pid(&self) -> i32 {
        (*self).as_pid()
    }
}

/// Fields of /proc/PID/stat after the command name, starting with the state (field 3).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces and ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The state letter of `pid` (`R`, `S`, `D`, `Z`, `T`, `X`, ...), `None` when there is no such process.
pub fn state(pid: impl AsPid) -> Option<char> {
    stat_fields(pid.as_pid())?.first()?.chars().next()
}

/// True when `pid` exists and is neither a zombie (`Z`) nor dead (`X`).
pub fn alive(pid: impl AsPid) -> bool {
    !matches!(state(pid), None | Some('Z') | Some('X'))
}

/// Wait until `pid` is not [`alive`]; true when it died within `timeout`.
pub fn wait_dead(pid: impl AsPid, timeout: Duration) -> bool {
    let pid = pid.as_pid();
    let deadline = Instant::now() + timeout;
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Send `sig` to `pid`; true when it was delivered. Refuses pids <= 1 (process groups, init).
pub fn kill(pid: impl AsPid, sig: Signal) -> bool {
    let pid = pid.as_pid();
    if pid <= 1 {
        return false;
    }
    nix::sys::signal::kill(Pid::from_raw(pid), sig).is_ok()
}

/// The parent pid of `pid`.
pub fn ppid(pid: impl AsPid) -> Option<i32> {
    stat_fields(pid.as_pid())?.get(1)?.parse().ok()
}

/// `(session id, process group id)` of `pid`.
pub fn sid_pgid(pid: impl AsPid) -> Option<(i32, i32)> {
    let f = stat_fields(pid.as_pid())?;
    let pgid = f.get(2)?.parse().ok()?;
    let sid = f.get(3)?.parse().ok()?;
    Some((sid, pgid))
}

/// Pids whose parent is `pid` (zombies included), scanned from /proc.
pub fn children_of(pid: impl AsPid) -> Vec<i32> {
    let parent = pid.as_pid();
    let mut out: Vec<i32> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&p| ppid(p) == Some(parent))
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// `argv` of `pid` from /proc/PID/cmdline (empty for zombies and kernel threads).
pub fn cmdline(pid: impl AsPid) -> Vec<String> {
    std::fs::read(format!("/proc/{}/cmdline", pid.as_pid()))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Number of open file descriptors of `pid` (from /proc/PID/fd).
pub fn fd_count(pid: impl AsPid) -> Option<usize> {
    Some(
        std::fs::read_dir(format!("/proc/{}/fd", pid.as_pid()))
            .ok()?
            .count(),
    )
}

/// Private memory of `pid` in KiB (Private_Clean + Private_Dirty from /proc/PID/smaps_rollup).
pub fn private_kib(pid: impl AsPid) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", pid.as_pid())).ok()?;
    let mut total = 0;
    for line in s.lines() {
        if line.starts_with("Private_Clean:") || line.starts_with("Private_Dirty:") {
            total += line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// Spawn `cmd` with stdin from /dev/null and stdout+stderr appended to `log` (so a failing
/// test can print what a daemon said). Panics naming `what` when it cannot start.
pub fn spawn_logged(
    cmd: &mut std::process::Command,
    log: &std::path::Path,
    what: &str,
) -> std::process::Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
    let err = out
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot dup the log fd: {e}"));
    cmd.stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"))
}

/// Send `sig` to our child, wait up to `grace` for it to exit, then SIGKILL it; its status
/// (None if waiting failed). `what` names it in the message about a SIGKILL.
pub fn stop_child(
    child: &mut std::process::Child,
    sig: Signal,
    grace: Duration,
    what: &str,
) -> Option<std::process::ExitStatus> {
    let pid = child.id();
    kill(pid, sig);
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                eprintln!("{what} {pid} ignored {sig} for {grace:?}; sending SIGKILL");
                kill(pid, Signal::SIGKILL);
                return child.wait().ok();
            }
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn self_is_alive_and_child_dies() {
        let me = std::process::id();
        assert!(alive(me));
        assert_eq!(ppid(me), Some(nix::unistd::getppid().as_raw()));
        // Its own process group, so sid_pgid has a known answer to check against:
        // our own sid/pgid may be 0 when CI starts us outside any session.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        assert!(alive(pid));
        let (sid, pgid) = sid_pgid(pid).expect("child stat");
        assert_eq!(pgid, pid as i32);
        assert_eq!(Some(sid), sid_pgid(me).map(|(s, _)| s));
        assert!(children_of(me).contains(&(pid as i32)));
        assert!(kill(pid, Signal::SIGKILL));
        // Not reaped yet: a zombie, which counts as dead.
        assert!(wait_dead(pid, Duration::from_secs(5)));
        let _ = child.wait();
        assert!(!alive(pid));
        assert_eq!(state(i32::MAX), None);
    }
}
