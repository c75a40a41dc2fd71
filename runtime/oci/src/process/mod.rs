//! The process chain that puts a process into a container.
//!
//! ```text
//! berth-runc (parent, host namespaces, subreaper)
//!   └─ fork ─ stage1: setns(paths, user first) → unshare(user) ⇄ parent writes id maps
//!               → unshare(other new namespaces) → write time offsets → fork
//!                 └─ init (pid 1 of a new pid ns) or the exec'd process
//! ```
//! Parent and chain talk over one SOCK_SEQPACKET pair (`channel`). stage1 is born in
//! the container's unified cgroup (clone3 CLONE_INTO_CGROUP) and moves itself into
//! each v1 hierarchy before creating any namespace, so every namespace and process is
//! created inside the cgroup; neither way waits for an RCU grace period. stage1 reports the final pid and exits; as the
//! parent is a child subreaper, the final process then becomes its child (`run`
//! and `exec` wait for it). Nothing here may start a thread: between fork and exec
//! the children rely on the process being single-threaded.

pub mod channel;
pub mod finalize;
pub mod init;
mod stage1;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::{Process, Spec};

use crate::caps::CapMasks;
use crate::cgroups::CgroupManager;
use crate::error::{Error, Result, SysContext};
use crate::namespaces::NsPlan;
use crate::seccomp::SeccompProgram;
use channel::{Channel, Msg};

/// What the init path needs beyond the common chain.
#[derive(Debug)]
pub struct InitOpts {
    /// Absolute rootfs.
    pub rootfs: PathBuf,
    /// Absolute bundle (relative bind sources are resolved against it).
    pub bundle: PathBuf,
    /// MS_MOVE + chroot instead of pivot_root.
    pub no_pivot: bool,
    /// O_PATH fd of the exec fifo.
    pub fifo: OwnedFd,
}

/// Everything the chain needs, prepared by the parent before forking.
pub struct ChainSpec<'a> {
    /// The container's spec.
    pub spec: &'a Spec,
    /// The process to run (init's, or the exec'd one).
    pub process: &'a Process,
    /// Its capability sets.
    pub caps: CapMasks,
    /// Namespaces to join/create.
    pub ns: NsPlan,
    /// Compiled seccomp filter, if any.
    pub seccomp: Option<SeccompProgram>,
    /// Connected console socket when the process has a terminal.
    pub console: Option<UnixStream>,
    /// fds 3..3+N are passed on.
    pub preserve_fds: u32,
    /// Some for init, None for exec.
    pub init: Option<InitOpts>,
}

/// Make this process the reaper of its orphaned descendants (the final process
/// becomes our child once stage1 exits).
pub fn become_subreaper() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(Error::sys(
            "PR_SET_CHILD_SUBREAPER",
            nix::errno::Errno::last(),
        ));
    }
    Ok(())
}

/// Fork the chain, drive it up to the final pid, return (pid, parent channel end).
pub fn spawn(
    cs: &ChainSpec,
    cgroup: &CgroupManager,
    uid_map: &str,
    gid_map: &str,
) -> Result<(i32, Channel)> {
    let (parent, child) = channel::pair()?;
    let unified = cgroup.unified_fd()?;
    let (forked, placed) = fork_into(unified.as_ref())?;
    drop(unified);
    match forked {
        ForkResult::Child => {
            drop(parent);
            stage1::run(cs, cgroup, &child)
        }
        ForkResult::Parent { child: stage1 } => {
            drop(child);
            let r = drive(&parent, stage1, cgroup, placed, uid_map, gid_map);
            if r.is_err() {
                let _ = nix::sys::signal::kill(stage1, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = waitpid(stage1, None);
            r.map(|pid| (pid, parent))
        }
    }
}

/// clone_args of clone3(2), up to the cgroup field (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// fork(2), born straight into the unified cgroup `cgroup` when given (clone3 with
/// CLONE_INTO_CGROUP, Linux 5.7). Returns whether the child was placed there; when the
/// kernel refuses the flag this falls back to a plain fork and the caller migrates it.
fn fork_into(cgroup: Option<&OwnedFd>) -> Result<(ForkResult, bool)> {
    if let Some(fd) = cgroup {
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: fd.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: berth-runc is single-threaded, so a clone3 child without CLONE_VM is a
        // fork: a private copy of this one thread's memory that holds no lock. glibc's
        // cached tid in the child stays the parent's, which nothing here reads (glibc's
        // raise asks the kernel for the tid; the chain's next fork is glibc's own).
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match r {
            0 => return Ok((ForkResult::Child, true)),
            pid if pid > 0 => {
                let child = Pid::from_raw(pid as i32);
                return Ok((ForkResult::Parent { child }, true));
            }
            _ => {
                let e = nix::errno::Errno::last();
                if !matches!(
                    e,
                    nix::errno::Errno::ENOSYS
                        | nix::errno::Errno::E2BIG
                        | nix::errno::Errno::EINVAL
                        | nix::errno::Errno::EOPNOTSUPP
                ) {
                    return Err(Error::sys("clone3 into the container's cgroup", e));
                }
                crate::logging::debug(&format!("clone3 CLONE_INTO_CGROUP: {e}; forking"));
            }
        }
    }
    // SAFETY: berth-runc is single-threaded (no thread is ever started), so the child
    // may run ordinary Rust code until it execs or exits.
    let forked = unsafe { fork() }.sys(|| "fork".into())?;
    Ok((forked, cgroup.is_none()))
}

fn drive(
    ch: &Channel,
    stage1: Pid,
    cgroup: &CgroupManager,
    placed: bool,
    uid_map: &str,
    gid_map: &str,
) -> Result<i32> {
    // stage1 joins the v1 hierarchies itself; see CgroupManager::join_v1_self.
    if !placed {
        cgroup.add_pid_unified(stage1.as_raw())?;
    }
    ch.send(&Msg::Go)?;
    loop {
        match ch.expect("UserNs or Pid", |m| matches!(m, Msg::UserNs | Msg::Pid(_)))? {
            Msg::UserNs => {
                write_map(stage1, "uid_map", uid_map)?;
                write_map(stage1, "gid_map", gid_map)?;
                ch.send(&Msg::MapsWritten)?;
            }
            Msg::Pid(p) => return Ok(p),
            _ => unreachable_msg()?,
        }
    }
}

fn unreachable_msg() -> Result<()> {
    Err(Error::Init("unexpected message".into()))
}

fn write_map(pid: Pid, file: &str, map: &str) -> Result<()> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, map).map_err(|e| Error::io("write", path, e))
}

/// The text of a uid_map/gid_map file from spec mappings.
pub fn map_text(maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>) -> String {
    maps.into_iter()
        .flatten()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// Run a closure in a forked child: never returns; exits 0 on Ok, reports the
/// error over the channel and exits 1 otherwise (panics included).
pub(crate) fn child_main(ch: &Channel, f: impl FnOnce() -> Result<std::convert::Infallible>) -> ! {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let msg = match r {
        Ok(Ok(never)) => match never {},
        Ok(Err(e)) => e.to_string(),
        Err(_) => "panic in container setup".to_string(),
    };
    if ch.send(&Msg::Error(msg.clone())).is_err() {
        // Nobody listens any more (after Ready): the container's stderr is all we have.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("berth-runc init: {msg}\n").as_bytes(),
        );
    }
    // SAFETY: _exit ends the process without running the parent's atexit handlers.
    unsafe { libc::_exit(1) }
}
