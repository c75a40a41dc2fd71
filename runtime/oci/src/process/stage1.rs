//! stage1 of the chain: namespaces, then fork the final process.

use nix::sched::unshare;
use nix::unistd::{fork, ForkResult};

use super::channel::{Channel, Msg};
use super::ChainSpec;
use crate::error::{Error, SysContext};
use crate::namespaces;

pub(super) fn run(cs: &ChainSpec, ch: &Channel) -> ! {
    super::child_main(ch, || {
        ch.expect("Go", |m| matches!(m, Msg::Go))?;
        for (t, p) in &cs.ns.join {
            namespaces::join(*t, p)?;
        }
        if cs.ns.new_user {
            unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
                .sys(|| "unshare user namespace".into())?;
            ch.send(&Msg::UserNs)?;
            ch.expect("MapsWritten", |m| matches!(m, Msg::MapsWritten))?;
        }
        if cs.ns.in_userns() {
            nix::unistd::setresgid(0.into(), 0.into(), 0.into())
                .sys(|| "setresgid 0 in user ns".into())?;
            nix::unistd::setresuid(0.into(), 0.into(), 0.into())
                .sys(|| "setresuid 0 in user ns".into())?;
        }
        if !cs.ns.new_flags.is_empty() {
            unshare(cs.ns.new_flags).sys(|| format!("unshare {:?}", cs.ns.new_flags))?;
        }
        if !cs.ns.time_offsets.is_empty() {
            std::fs::write("/proc/self/timens_offsets", cs.ns.time_offsets.join("\n"))
                .map_err(|e| Error::io("write", "/proc/self/timens_offsets", e))?;
        }
        // SAFETY: single-threaded process (see the module comment of `process`).
        match unsafe { fork() }.sys(|| "fork".into())? {
            ForkResult::Child => match &cs.init {
                Some(init) => super::init::run(cs, init, ch),
                None => super::finalize::exec_process(cs, ch),
            },
            ForkResult::Parent { child } => {
                ch.send(&Msg::Pid(child.as_raw()))?;
                // SAFETY: _exit ends stage1 without running atexit handlers.
                unsafe { libc::_exit(0) }
            }
        }
    })
}
