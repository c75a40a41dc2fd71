//! The last steps before exec, shared by init and exec'd processes: fd hygiene
//! (only stdio and --preserve-fds survive), seccomp, the bounding set, user and
//! groups, capabilities, cwd, no_new_privileges, default signal state, execve.
//! After this nothing of berth-runc may remain in the process.

use std::convert::Infallible;
use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

use super::channel::Channel;
use super::ChainSpec;
use crate::caps;
use crate::error::{Error, Result, SysContext};

/// The exec'd (not init) process: session, terminal, rlimits of its own, finalize.
pub(super) fn exec_process(cs: &ChainSpec, ch: &Channel) -> ! {
    super::child_main(ch, || {
        if let Some(root) = &cs.ns.chroot {
            // runc leaves such a process in the host's root; berth-runc puts it where init is.
            nix::unistd::chroot(root).sys(|| format!("chroot {}", root.display()))?;
            nix::unistd::chdir("/").sys(|| "chdir /".into())?;
        }
        nix::unistd::setsid().sys(|| "setsid".into())?;
        if cs.process.terminal().unwrap_or(false) {
            let sock = cs
                .console
                .as_ref()
                .ok_or_else(|| Error::Usage("--tty needs --console-socket".into()))?;
            let size = cs
                .process
                .console_size()
                .map(|b| (b.height() as u16, b.width() as u16));
            crate::console::setup(sock, size)?;
        }
        super::init::set_rlimits(cs.process.rlimits().as_deref().unwrap_or(&[]))?;
        finalize(cs, None)
    })
}

/// Drop privileges as the spec says and exec the process.
pub fn finalize(cs: &ChainSpec, prog: Option<PathBuf>) -> Result<Infallible> {
    let p = cs.process;
    crate::utils::cloexec_from(3 + cs.preserve_fds)?;
    for fd in 3..3 + cs.preserve_fds {
        crate::utils::clear_cloexec(fd as i32)?;
    }
    if let Some(profile) = p.apparmor_profile().as_deref().filter(|p| !p.is_empty()) {
        crate::lsm::apply_apparmor(profile)?;
    }
    let nnp = p.no_new_privileges().unwrap_or(false);
    if let (Some(s), false) = (&cs.seccomp, nnp) {
        s.install()?;
    }
    caps::drop_bounding(cs.caps.bounding)?;
    caps::keep_caps(true)?;
    let user = p.user();
    let gids: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    match setgroups(&gids) {
        Ok(()) => {}
        // setgroups is denied in some user namespaces: only fatal when groups were asked.
        Err(_) if cs.ns.in_userns() && gids.is_empty() => {}
        Err(e) => return Err(Error::sys("setgroups", e)),
    }
    let (uid, gid) = (Uid::from_raw(user.uid()), Gid::from_raw(user.gid()));
    setresgid(gid, gid, gid).sys(|| format!("setresgid {gid}"))?;
    setresuid(uid, uid, uid).sys(|| format!("setresuid {uid}"))?;
    caps::keep_caps(false)?;
    caps::apply(&cs.caps)?;
    let mask = user.umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        mask as libc::mode_t,
    ));
    nix::unistd::chdir(p.cwd()).sys(|| format!("chdir {}", p.cwd().display()))?;
    let args = p.args().clone().unwrap_or_default();
    let env = p.env().clone().unwrap_or_default();
    let prog = match prog {
        Some(p) => p,
        None => lookup(&args[0], &env, p.cwd())?,
    };
    if nnp {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
            return Err(Error::sys("PR_SET_NO_NEW_PRIVS", nix::errno::Errno::last()));
        }
        if let Some(s) = &cs.seccomp {
            s.install()?;
        }
    }
    let cstr = |s: &str| CString::new(s).map_err(|_| Error::Spec(format!("NUL byte in {s:?}")));
    let argv: Vec<CString> = args.iter().map(|a| cstr(a)).collect::<Result<_>>()?;
    let envp: Vec<CString> = env.iter().map(|a| cstr(a)).collect::<Result<_>>()?;
    let prog_c = CString::new(prog.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Spec("program path".into()))?;
    // Rust ignores SIGPIPE and our caller may ignore others: the container starts with
    // every signal at its default disposition and nothing blocked.
    // SAFETY: restoring the default disposition installs no handler code.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.sys(|| "reset SIGPIPE".into())?;
    reset_all_signals();
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .sys(|| "sigprocmask".into())?;
    match nix::unistd::execve(&prog_c, &argv, &envp) {
        Ok(never) => match never {},
        Err(e) => Err(Error::sys(format!("exec {}", prog.display()), e)),
    }
}

/// Set every signal (1..=64, glibc's internal ones included) to SIG_DFL with the
/// raw syscall, which unlike glibc's sigaction accepts signals 32 and 33.
fn reset_all_signals() {
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installs the default disposition (no handler code); the struct matches
        // the kernel's x86_64/aarch64 layout and the size passed is that of the mask.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
    }
}

/// Find a program like execvp, with the container's PATH.
pub fn lookup(arg0: &str, env: &[String], cwd: &Path) -> Result<PathBuf> {
    if arg0.contains('/') {
        // Checked here, before init says Ready, so that `create` fails with the reason, as
        // runc's does (containerd's runc shim shows the runtime's error for a failed create;
        // a failed execve after `start` is only an exit status).
        executable(&cwd.join(arg0)).map_err(|e| Error::sys(format!("exec {arg0}"), e))?;
        return Ok(PathBuf::from(arg0));
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':') {
        let cand = Path::new(if dir.is_empty() { "." } else { dir }).join(arg0);
        if executable(&cand).is_ok() {
            return Ok(cand);
        }
    }
    Err(Error::Spec(format!(
        "executable file {arg0:?} not found in $PATH"
    )))
}

/// A regular file with an execute bit that we may execute (X_OK also refuses a noexec mount).
fn executable(path: &Path) -> nix::Result<()> {
    let st = nix::sys::stat::stat(path)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_mode & 0o111 == 0 {
        return Err(nix::errno::Errno::EACCES);
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK)
}
