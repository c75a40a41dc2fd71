//! Linux capabilities by number: name table, bounding-set drop, capset of the
//! effective/permitted/inheritable sets and the ambient set. Runs only in the
//! container's init/exec process just before exec; it must never be called in
//! the runtime parent.

use nix::errno::Errno;
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

use crate::error::{Error, Result};

const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// All capability names known to this build (`CAP_` prefixed).
pub fn all_names() -> Vec<String> {
    NAMES.iter().map(|n| format!("CAP_{n}")).collect()
}

/// Number of a capability name (with or without `CAP_`, any case).
pub fn number(name: &str) -> Option<u32> {
    let up = name.to_ascii_uppercase();
    let short = up.strip_prefix("CAP_").unwrap_or(&up);
    NAMES.iter().position(|n| *n == short).map(|i| i as u32)
}

/// A capability set as a bit mask.
pub fn mask(set: &Option<Capabilities>) -> u64 {
    let mut m = 0u64;
    for c in set.iter().flatten() {
        if let Ok(serde_json::Value::String(s)) = serde_json::to_value(c) {
            if let Some(n) = number(&s) {
                m |= 1 << n;
            }
        }
    }
    m
}

/// The five sets of a spec as masks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CapMasks {
    /// bounding
    pub bounding: u64,
    /// effective
    pub effective: u64,
    /// permitted
    pub permitted: u64,
    /// inheritable
    pub inheritable: u64,
    /// ambient
    pub ambient: u64,
}

impl CapMasks {
    /// From the spec's capabilities (absent => all sets empty).
    pub fn from_spec(c: Option<&LinuxCapabilities>) -> Self {
        match c {
            None => CapMasks::default(),
            Some(c) => CapMasks {
                bounding: mask(c.bounding()),
                effective: mask(c.effective()),
                permitted: mask(c.permitted()),
                inheritable: mask(c.inheritable()),
                ambient: mask(c.ambient()),
            },
        }
    }

    /// Add capabilities by name to every set but ambient (exec --cap).
    pub fn add(&mut self, names: &[String]) -> Result<()> {
        for n in names {
            let b = 1u64
                << number(n).ok_or_else(|| Error::Usage(format!("unknown capability {n:?}")))?;
            self.bounding |= b;
            self.effective |= b;
            self.permitted |= b;
            self.inheritable |= b;
        }
        Ok(())
    }
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drop every capability not in `keep` from the bounding set.
pub fn drop_bounding(keep: u64) -> Result<()> {
    for c in 0..=last_cap().min(63) {
        if keep & (1 << c) == 0 {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) } < 0 {
                let e = Errno::last();
                if e != Errno::EINVAL {
                    return Err(Error::sys(
                        format!("drop capability {c} from bounding set"),
                        e,
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Keep permitted capabilities across setuid (PR_SET_KEEPCAPS).
pub fn keep_caps(on: bool) -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(on), 0, 0, 0) } < 0 {
        return Err(Error::sys("PR_SET_KEEPCAPS", Errno::last()));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// capset(2) of this thread's effective, permitted and inheritable sets, then the
/// ambient set.
pub fn apply(m: &CapMasks) -> Result<()> {
    let mut hdr = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let split = |v: u64| [(v & 0xffff_ffff) as u32, (v >> 32) as u32];
    let (e, p, i) = (split(m.effective), split(m.permitted), split(m.inheritable));
    let data = [
        CapData {
            effective: e[0],
            permitted: p[0],
            inheritable: i[0],
        },
        CapData {
            effective: e[1],
            permitted: p[1],
            inheritable: i[1],
        },
    ];
    // SAFETY: header and two data structs laid out as the kernel's v3 ABI; the kernel
    // reads them only.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) } < 0 {
        return Err(Error::sys("capset", Errno::last()));
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    for c in 0..64u32 {
        if m.ambient & (1 << c) != 0 {
            // SAFETY: prctl with integer arguments only.
            let r = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    c as libc::c_ulong,
                    0,
                    0,
                )
            };
            // Like runc: an ambient capability missing from the inheritable or permitted
            // set cannot be raised (EPERM); it is skipped, not fatal.
            if r < 0 && Errno::last() != Errno::EPERM {
                return Err(Error::sys(
                    format!("raise ambient capability {c}"),
                    Errno::last(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("net_raw"), Some(13));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
    }

    #[test]
    fn masks_from_oci() {
        let c: LinuxCapabilities =
            serde_json::from_str(r#"{"bounding":["CAP_KILL","CAP_CHOWN"],"ambient":["CAP_BPF"]}"#)
                .expect("caps json");
        let m = CapMasks::from_spec(Some(&c));
        assert_eq!(m.bounding, (1 << 5) | 1);
        assert_eq!(m.ambient, 1 << 39);
        assert_eq!(m.effective, 0);
    }
}
