//! The process chain that puts a process into a container.
//!
//! ```text
//! berth-runc (parent, host namespaces, subreaper)
//!   └─ fork ─ stage1: setns(paths, user first) → unshare(user) ⇄ parent writes id maps
//!               → unshare(other new namespaces) → write time offsets → fork
//!                 └─ init (pid 1 of a new pid ns) or the exec'd process
//! ```
//! Parent and chain talk over one SOCK_SEQPACKET pair (`channel`). The parent puts
//! stage1 into the container's cgroup before saying `Go`, so every namespace and
//! process is created inside it. stage1 reports the final pid and exits; as the
//! parent is a child subreaper, the final process then becomes its child (`run`
//! and `exec` wait for it). Nothing here may start a thread: between fork and exec
//! the children rely on the process being single-threaded.

pub mod channel;
pub mod finalize;
pub mod init;
mod stage1;

use std::os::fd::OwnedFd;
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
    // SAFETY: berth-runc is single-threaded (no thread is ever started), so the child
    // may run ordinary Rust code until it execs or exits.
    match unsafe { fork() }.sys(|| "fork".into())? {
        ForkResult::Child => {
            drop(parent);
            stage1::run(cs, &child)
        }
        ForkResult::Parent { child: stage1 } => {
            drop(child);
            let r = drive(&parent, stage1, cgroup, uid_map, gid_map);
            if r.is_err() {
                let _ = nix::sys::signal::kill(stage1, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = waitpid(stage1, None);
            r.map(|pid| (pid, parent))
        }
    }
}

fn drive(
    ch: &Channel,
    stage1: Pid,
    cgroup: &CgroupManager,
    uid_map: &str,
    gid_map: &str,
) -> Result<i32> {
    cgroup.add_pid(stage1.as_raw())?;
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
