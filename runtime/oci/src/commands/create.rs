//! `create`: set up the container and leave init waiting on the exec fifo.
//! A failed create leaves no state dir, cgroup, mount or process behind.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::sys::stat::Mode;

use crate::caps::CapMasks;
use crate::cgroups::CgroupManager;
use crate::cli::CreateOpts;
use crate::container::{Container, Saved, Status, EXEC_FIFO};
use crate::error::{Error, Result, SysContext};
use crate::namespaces::NsPlan;
use crate::process::channel::Msg;
use crate::process::{self, ChainSpec, InitOpts};
use crate::{console, hooks, logging, rootfs, seccomp, spec, utils};

/// Create container `id`; returns it (status created). `relay` is the chain's end of a
/// console socket pair that berth-runc itself holds (foreground `run` without
/// `--console-socket`); it is used only when the process has a terminal.
pub fn run(
    root: &Path,
    o: &CreateOpts,
    id: &str,
    relay: Option<std::os::unix::net::UnixStream>,
) -> Result<Container> {
    utils::validate_id(id)?;
    let bundle = std::fs::canonicalize(&o.bundle).map_err(|e| Error::io("bundle", &o.bundle, e))?;
    let spec = spec::load(&bundle)?;
    let rootfs = spec::rootfs(&spec, &bundle)?;
    std::fs::create_dir_all(root).map_err(|e| Error::io("create root", root, e))?;
    let dir = Container::dir_of(root, id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Exists(id.into()))
        }
        Err(e) => return Err(Error::io("create state dir", &dir, e)),
    }
    let linux = spec.linux().as_ref();
    let cg_path = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned());
    let cgroup = match CgroupManager::new(cg_path.as_deref(), id) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
    };
    let mut c = Container {
        dir,
        saved: Saved {
            id: id.to_string(),
            pid: 0,
            init_start_time: 0,
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            created: utils::now_rfc3339(),
            annotations: spec.annotations().clone().unwrap_or_default(),
            cgroup,
            config: spec,
            rootfs_bound: false,
        },
        status: Status::Creating,
    };
    match build(&mut c, o, relay) {
        Ok(()) => {
            c.status = Status::Created;
            Ok(c)
        }
        Err(e) => {
            let (e, reaped) = explain_init_death(c.saved.pid, e);
            if reaped {
                // Never signal a pid we reaped: it may name another process now.
                c.saved.pid = 0;
            }
            cleanup(&c);
            Err(e)
        }
    }
}

/// A chain that broke off (EOF, EPIPE on the channel) usually means init died without a
/// word, e.g. killed by a hook or the OOM killer: say so, with its exit status (it is our
/// child by now: berth-runc is its subreaper). Status 1 is init's own error exit, whose
/// message is already in `e`. Returns the error and whether init was reaped.
fn explain_init_death(pid: i32, e: Error) -> (Error, bool) {
    use nix::sys::wait::{waitpid, WaitStatus};
    if pid <= 0 || !utils::proc_stat(pid).is_some_and(|st| st.exited()) {
        return (e, false);
    }
    let how = match waitpid(nix::unistd::Pid::from_raw(pid), None) {
        Ok(WaitStatus::Exited(_, code)) if code != 1 => format!("exited with status {code}"),
        Ok(WaitStatus::Signaled(_, sig, _)) => format!("was killed by {sig}"),
        Ok(_) => return (e, true),
        Err(_) => return (e, false),
    };
    let e = Error::Init(format!(
        "container process (pid {pid}) {how} during create ({e})"
    ));
    (e, true)
}

/// Undo a failed create: kill init, remove the cgroup and the state dir.
fn cleanup(c: &Container) {
    if c.saved.pid > 0 {
        let pid = nix::unistd::Pid::from_raw(c.saved.pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
    if let Err(e) = c.saved.cgroup.destroy() {
        logging::warn(&format!("remove cgroup of failed container: {e}"));
    }
    if c.saved.rootfs_bound {
        if let Err(e) = rootfs::detach_shared_rootfs(&c.saved.rootfs) {
            logging::warn(&format!("failed container: {e}"));
        }
    }
    c.remove_dir();
}

fn build(
    c: &mut Container,
    o: &CreateOpts,
    relay: Option<std::os::unix::net::UnixStream>,
) -> Result<()> {
    let spec = &c.saved.config;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::Spec("process: missing".into()))?;
    let linux = spec.linux().as_ref();
    let fifo = c.dir.join(EXEC_FIFO);
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o622))
        .sys(|| format!("mkfifo {}", fifo.display()))?;
    // init opens the fifo for writing as the container's root, which a user namespace may
    // map to an unprivileged host uid: give it the fifo (runc does the same), or that open
    // fails with EACCES and the container dies before start.
    let uid = root_host_id(linux.and_then(|l| l.uid_mappings().as_ref()));
    let gid = root_host_id(linux.and_then(|l| l.gid_mappings().as_ref()));
    if uid.is_some() || gid.is_some() {
        nix::unistd::chown(
            &fifo,
            uid.map(nix::unistd::Uid::from_raw),
            gid.map(nix::unistd::Gid::from_raw),
        )
        .sys(|| format!("chown {}", fifo.display()))?;
    }
    let fifo_fd = open_path(&fifo)?;
    logging::debug("create: spec loaded, fifo made");
    c.saved.cgroup.create()?;
    if let Some(r) = linux.and_then(|l| l.resources().as_ref()) {
        c.saved.cgroup.apply(r)?;
    }
    let ns = NsPlan::from_spec(spec)?;
    if !ns.own_mntns() {
        rootfs::bind_shared_rootfs(&c.saved.rootfs)?;
        c.saved.rootfs_bound = true;
    }
    c.save()?;
    logging::debug("create: cgroup created and limits applied");
    let seccomp = match linux.and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Some(seccomp::compile(s)?),
        None => None,
    };
    let terminal = process.terminal().unwrap_or(false);
    let console = match (&o.console_socket, terminal) {
        (Some(p), true) => Some(console::connect(p)?),
        (None, true) if relay.is_some() => relay,
        (None, true) => {
            return Err(Error::Usage(
                "process.terminal is set: --console-socket is required".into(),
            ))
        }
        (_, false) => None,
    };
    let uid_map = process::map_text(linux.and_then(|l| l.uid_mappings().as_ref()));
    let gid_map = process::map_text(linux.and_then(|l| l.gid_mappings().as_ref()));
    let cs = ChainSpec {
        spec,
        process,
        caps: CapMasks::from_spec(process.capabilities().as_ref()),
        ns,
        seccomp,
        console,
        preserve_fds: o.preserve_fds,
        init: Some(InitOpts {
            rootfs: c.saved.rootfs.clone(),
            bundle: c.saved.bundle.clone(),
            no_pivot: o.no_pivot,
            fifo: fifo_fd,
        }),
    };
    let (pid, ch) = process::spawn(&cs, &c.saved.cgroup, &uid_map, &gid_map)?;
    drop(cs);
    c.saved.pid = pid;
    logging::debug(&format!("create: init pid {pid}"));
    c.saved.init_start_time = utils::proc_stat(pid).map(|s| s.start_time).unwrap_or(0);
    ch.expect("CreateHooks", |m| matches!(m, Msg::CreateHooks))?;
    let state = c.hook_state(Status::Creating);
    let h = c.saved.config.hooks().as_ref();
    hooks::run("prestart", h.and_then(|h| h.prestart().as_ref()), &state)?;
    hooks::run(
        "createRuntime",
        h.and_then(|h| h.create_runtime().as_ref()),
        &state,
    )?;
    ch.send(&Msg::HooksDone(state))?;
    logging::debug("create: rootfs ready, hooks run");
    ch.expect("Ready", |m| matches!(m, Msg::Ready))?;
    logging::debug("create: init ready");
    c.save()?;
    if let Some(p) = &o.pid_file {
        utils::write_pid_file(p, pid)?;
    }
    Ok(())
}

/// The host id that container id 0 maps to, when the mappings map it.
fn root_host_id(maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>) -> Option<u32> {
    maps.into_iter()
        .flatten()
        .find(|m| m.container_id() == 0 && m.size() > 0)
        .map(|m| m.host_id())
}

fn open_path(p: &Path) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Spec("path".into()))?;
    // SAFETY: c is a valid C string; the fd is wrapped at once.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Error::sys(
            format!("open {}", p.display()),
            nix::errno::Errno::last(),
        ));
    }
    // SAFETY: new fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
