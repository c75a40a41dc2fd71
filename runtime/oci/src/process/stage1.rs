//! stage1 of the chain: namespaces, then fork the final process.

use nix::sched::{unshare, CloneFlags};
use nix::unistd::{fork, ForkResult};

use super::channel::{Channel, Msg};
use super::ChainSpec;
use crate::cgroups::CgroupManager;
use crate::error::{Error, SysContext};
use crate::namespaces;

pub(super) fn run(cs: &ChainSpec, cgroup: &CgroupManager, ch: &Channel) -> ! {
    super::child_main(ch, || {
        // Into the v1 cgroups first, while still in the host's user namespace (whose
        // root owns the cgroup files) and single-threaded.
        cgroup.join_v1_self()?;
        let mut go = false;
        for (t, p) in &cs.ns.join {
            namespaces::join(*t, p)?;
        }
        if cs.ns.new_user {
            unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
                .sys(|| "unshare user namespace".into())?;
            ch.send(&Msg::UserNs)?;
            while let Msg::Go =
                ch.expect("MapsWritten", |m| matches!(m, Msg::MapsWritten | Msg::Go))?
            {
                go = true;
            }
        }
        if cs.ns.in_userns() {
            nix::unistd::setresgid(0.into(), 0.into(), 0.into())
                .sys(|| "setresgid 0 in user ns".into())?;
            nix::unistd::setresuid(0.into(), 0.into(), 0.into())
                .sys(|| "setresuid 0 in user ns".into())?;
        }
        let cgroupns = CloneFlags::CLONE_NEWCGROUP;
        let early = cs.ns.new_flags - cgroupns;
        if !early.is_empty() {
            unshare(early).sys(|| format!("unshare {early:?}"))?;
        }
        if !go {
            ch.expect("Go", |m| matches!(m, Msg::Go))?;
        }
        if cs.ns.new_flags.contains(cgroupns) {
            unshare(cgroupns).sys(|| "unshare cgroup namespace".into())?;
        }
        if !cs.ns.time_offsets.is_empty() {
            std::fs::write("/proc/self/timens_offsets", cs.ns.time_offsets.join("\n"))
                .map_err(|e| Error::io("write", "/proc/self/timens_offsets", e))?;
        }
        // The parent reads our Pid before any message of the final process: the child
        // must not touch the channel until Pid is in it. It waits for EOF on this pipe,
        // which comes when we have sent Pid (or died).
        let (gate_r, gate_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).sys(|| "pipe2".into())?;
        // SAFETY: single-threaded process (see the module comment of `process`).
        match unsafe { fork() }.sys(|| "fork".into())? {
            ForkResult::Child => {
                drop(gate_w);
                let mut b = [0u8; 1];
                while let Err(nix::errno::Errno::EINTR) = nix::unistd::read(&gate_r, &mut b) {}
                drop(gate_r);
                match &cs.init {
                    Some(init) => super::init::run(cs, init, ch),
                    None => super::finalize::exec_process(cs, ch),
                }
            }
            ForkResult::Parent { child } => {
                drop(gate_r);
                ch.send(&Msg::Pid(child.as_raw()))?;
                drop(gate_w);
                // SAFETY: _exit ends stage1 without running atexit handlers.
                unsafe { libc::_exit(0) }
            }
        }
    })
}
