//! The container's init before exec: rootfs, hooks, hostname, sysctl, console,
//! rlimits; then `Ready`, the exec fifo wait (until `start`), startContainer
//! hooks and the shared finalize + exec. It runs as pid 1 of the new pid
//! namespace; it must never return into the runtime's main.

use std::io::Write;
use std::os::fd::AsRawFd;

use nix::unistd::{sethostname, setsid};
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimit};

use super::channel::{Channel, Msg};
use super::{ChainSpec, InitOpts};
use crate::error::{Error, Result, SysContext};
use crate::{console, hooks, namespaces, rootfs};

pub(super) fn run(cs: &ChainSpec, init: &InitOpts, ch: &Channel) -> ! {
    super::child_main(ch, || {
        let spec = cs.spec;
        if cs.ns.creates(LinuxNamespaceType::Pid) {
            die_on_termination_signals()?;
        }
        setsid().sys(|| "setsid".into())?;
        if cs.ns.in_userns() {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
        }
        if let Some(adj) = cs.process.oom_score_adj() {
            std::fs::write("/proc/self/oom_score_adj", adj.to_string())
                .map_err(|e| Error::io("write", "/proc/self/oom_score_adj", e))?;
        }
        if cs.ns.creates(LinuxNamespaceType::Network) {
            namespaces::loopback_up()?;
        }
        nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        rootfs::prepare(
            spec,
            &init.rootfs,
            &init.bundle,
            cs.ns.in_userns(),
            cs.ns.creates(LinuxNamespaceType::Cgroup),
            cs.ns.own_mntns(),
        )?;
        ch.send(&Msg::CreateHooks)?;
        let state = match ch.expect("HooksDone", |m| matches!(m, Msg::HooksDone(_)))? {
            Msg::HooksDone(s) => s,
            _ => String::new(),
        };
        let h = spec.hooks().as_ref();
        hooks::run(
            "createContainer",
            h.and_then(|h| h.create_container().as_ref()),
            &state,
        )?;
        rootfs::pivot(&init.rootfs, init.no_pivot, cs.ns.own_mntns())?;
        if let Some(name) = spec.hostname() {
            sethostname(name).sys(|| "sethostname".into())?;
        }
        if let Some(name) = spec.domainname() {
            // SAFETY: pointer and length of a live string.
            if unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) } < 0 {
                return Err(Error::sys("setdomainname", nix::errno::Errno::last()));
            }
        }
        for (k, v) in spec
            .linux()
            .as_ref()
            .and_then(|l| l.sysctl().as_ref())
            .into_iter()
            .flatten()
        {
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            std::fs::write(&path, v).map_err(|e| Error::io("write sysctl", path, e))?;
        }
        rootfs::finish(spec)?;
        if cs.process.terminal().unwrap_or(false) {
            let sock = cs
                .console
                .as_ref()
                .ok_or_else(|| Error::Usage("terminal needs --console-socket".into()))?;
            let size = cs
                .process
                .console_size()
                .map(|b| (b.height() as u16, b.width() as u16));
            console::setup(sock, size)?;
        }
        set_rlimits(cs.process.rlimits().as_deref().unwrap_or(&[]))?;
        set_personality(spec)?;
        let args = cs.process.args().as_deref().unwrap_or(&[]);
        let env = cs.process.env().as_deref().unwrap_or(&[]);
        let arg0 = args.first().map(String::as_str).unwrap_or("");
        let prog = super::finalize::lookup(arg0, env, cs.process.cwd())?;
        ch.send(&Msg::Ready)?;
        // Block until `start` opens the fifo for reading.
        let path = format!("/proc/self/fd/{}", init.fifo.as_raw_fd());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open exec fifo", path, e))?;
        f.write_all(b"0")
            .map_err(|e| Error::io("write exec fifo", "exec.fifo", e))?;
        let mut st: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
        st["status"] = serde_json::Value::from("created");
        hooks::run(
            "startContainer",
            h.and_then(|h| h.start_container().as_ref()),
            &st.to_string(),
        )?;
        super::finalize::finalize(cs, Some(prog))
    })
}

/// As pid 1 of a new pid namespace, init ignores every signal it has no handler for, so
/// `kill ID TERM` of a created container would be lost and the container would run at
/// `start`. runc's init (Go) dies of these signals until it execs the container process;
/// so does ours, with status 128 + signal (finalize resets them before the exec).
fn die_on_termination_signals() -> Result<()> {
    use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
    extern "C" fn on_signal(sig: libc::c_int) {
        // SAFETY: _exit is async-signal-safe; init has nothing to flush or undo.
        unsafe { libc::_exit(128 + sig) }
    }
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGABRT,
        Signal::SIGTERM,
    ] {
        // SAFETY: the handler only calls _exit, which is async-signal-safe.
        unsafe { signal(sig, SigHandler::Handler(on_signal)) }.sys(|| format!("handle {sig}"))?;
        set.add(sig);
    }
    // A foreground `run` blocks them while it creates (to forward them later): unblock.
    sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None).sys(|| "sigprocmask".into())
}

/// setrlimit for every spec rlimit.
pub fn set_rlimits(rl: &[PosixRlimit]) -> Result<()> {
    for r in rl {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let res = match name.as_str() {
            "RLIMIT_CPU" => libc::RLIMIT_CPU,
            "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
            "RLIMIT_DATA" => libc::RLIMIT_DATA,
            "RLIMIT_STACK" => libc::RLIMIT_STACK,
            "RLIMIT_CORE" => libc::RLIMIT_CORE,
            "RLIMIT_RSS" => libc::RLIMIT_RSS,
            "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
            "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
            "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
            "RLIMIT_AS" => libc::RLIMIT_AS,
            "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
            "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
            "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
            "RLIMIT_NICE" => libc::RLIMIT_NICE,
            "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
            "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
            _ => return Err(Error::Spec(format!("unknown rlimit {name:?}"))),
        };
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: setrlimit reads the rlimit we own.
        if unsafe { libc::setrlimit(res, &lim) } < 0 {
            return Err(Error::sys(
                format!("setrlimit {name}"),
                nix::errno::Errno::last(),
            ));
        }
    }
    Ok(())
}

fn set_personality(spec: &oci_spec::runtime::Spec) -> Result<()> {
    let Some(p) = spec.linux().as_ref().and_then(|l| l.personality().as_ref()) else {
        return Ok(());
    };
    let dom = serde_json::to_value(p.domain())
        .ok()
        .and_then(|v| v.as_str().map(str::to_string));
    let persona: libc::c_ulong = match dom.as_deref() {
        Some("LINUX") => 0x0000,
        Some("LINUX32") => 0x0008,
        other => return Err(Error::Spec(format!("personality domain {other:?}"))),
    };
    // SAFETY: personality with an integer argument.
    if unsafe { libc::personality(persona) } < 0 {
        return Err(Error::sys("personality", nix::errno::Errno::last()));
    }
    Ok(())
}
