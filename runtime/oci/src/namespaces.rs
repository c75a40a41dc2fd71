//! Namespace bookkeeping for the create and exec chains: which namespaces to
//! create (unshare) and which to join (setns, user first), the time namespace
//! offsets, and bringing `lo` up in a new network namespace. It must never
//! join or create a namespace in the long-lived parent process.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result, SysContext};

/// The clone flag of a namespace type.
pub fn flag(t: LinuxNamespaceType) -> CloneFlags {
    CloneFlags::from_bits_retain(t as i32)
}

/// The /proc/PID/ns/<name> entry of a namespace type.
pub fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// What the chain must do with namespaces.
#[derive(Debug, Clone)]
pub struct NsPlan {
    /// Namespaces to join, user namespace first.
    pub join: Vec<(LinuxNamespaceType, PathBuf)>,
    /// Create a new user namespace (and have the parent write the id maps).
    pub new_user: bool,
    /// Other namespaces to create with unshare, in one call.
    pub new_flags: CloneFlags,
    /// Time namespace offsets to write (`/proc/self/timens_offsets` lines).
    pub time_offsets: Vec<String>,
    /// For exec into a container without a mount namespace of its own (which shares the
    /// caller's): init's root to chroot into, so the process does not see the host's.
    pub chroot: Option<PathBuf>,
}

impl Default for NsPlan {
    fn default() -> Self {
        NsPlan {
            join: Vec::new(),
            new_user: false,
            new_flags: CloneFlags::empty(),
            time_offsets: Vec::new(),
            chroot: None,
        }
    }
}

impl NsPlan {
    /// The plan for a new container from its spec.
    pub fn from_spec(spec: &Spec) -> Result<Self> {
        let mut plan = NsPlan::default();
        let linux = spec.linux().as_ref();
        for ns in linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
        {
            match ns.path() {
                Some(p) if !p.as_os_str().is_empty() => plan.join.push((ns.typ(), p.clone())),
                _ if ns.typ() == LinuxNamespaceType::User => plan.new_user = true,
                _ => plan.new_flags |= flag(ns.typ()),
            }
        }
        plan.join
            .sort_by_key(|(t, _)| *t != LinuxNamespaceType::User);
        if let Some(offs) = linux.and_then(|l| l.time_offsets().as_ref()) {
            if !plan
                .new_flags
                .contains(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))
            {
                return Err(Error::Spec("timeOffsets need a new time namespace".into()));
            }
            for (clock, o) in offs {
                plan.time_offsets.push(format!(
                    "{clock} {} {}",
                    o.secs().unwrap_or(0),
                    o.nanosecs().unwrap_or(0)
                ));
            }
        }
        Ok(plan)
    }

    /// The plan for `exec`: join every namespace of the container's init.
    pub fn join_all(spec: &Spec, init_pid: i32) -> Self {
        let mut plan = NsPlan::default();
        let linux = spec.linux().as_ref();
        for ns in linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
        {
            let p = PathBuf::from(format!("/proc/{init_pid}/ns/{}", proc_name(ns.typ())));
            plan.join.push((ns.typ(), p));
        }
        // user first; mount last so the other /proc paths stay reachable.
        plan.join.sort_by_key(|(t, _)| match t {
            LinuxNamespaceType::User => 0,
            LinuxNamespaceType::Mount => 2,
            _ => 1,
        });
        if !plan
            .join
            .iter()
            .any(|(t, _)| *t == LinuxNamespaceType::Mount)
        {
            plan.chroot = Some(PathBuf::from(format!("/proc/{init_pid}/root")));
        }
        plan
    }

    /// Whether a new namespace of this type is created.
    pub fn creates(&self, t: LinuxNamespaceType) -> bool {
        if t == LinuxNamespaceType::User {
            return self.new_user;
        }
        self.new_flags.contains(flag(t))
    }

    /// Whether the process gets a mount namespace other than its caller's (new or joined).
    pub fn own_mntns(&self) -> bool {
        self.creates(LinuxNamespaceType::Mount)
            || self
                .join
                .iter()
                .any(|(t, _)| *t == LinuxNamespaceType::Mount)
    }

    /// Whether the process ends up in a user namespace other than the host's.
    pub fn in_userns(&self) -> bool {
        self.new_user
            || self
                .join
                .iter()
                .any(|(t, _)| *t == LinuxNamespaceType::User)
    }
}

/// setns into the namespace at `path`.
pub fn join(t: LinuxNamespaceType, path: &std::path::Path) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| Error::io("open namespace", path, e))?;
    nix::sched::setns(&f, flag(t)).sys(|| format!("setns {}", path.display()))?;
    Ok(())
}

/// Bring the loopback interface up (ioctl SIOCSIFFLAGS; no `ip` binary needed).
pub fn loopback_up() -> Result<()> {
    // SAFETY: plain socket(2) call; the fd is wrapped in an OwnedFd right after.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Error::sys("socket for lo", nix::errno::Errno::last()));
    }
    // SAFETY: raw is a new fd owned by nobody else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills ifr_ifru.ifru_flags of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(Error::sys("SIOCGIFFLAGS lo", nix::errno::Errno::last()));
    }
    // SAFETY: reading/writing the flags member of the union SIOCGIFFLAGS just filled.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(Error::sys("SIOCSIFFLAGS lo", nix::errno::Errno::last()));
    }
    Ok(())
}
