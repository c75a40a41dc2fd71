//! The secure defaults every Berth spec builder applies on top of [`crate::commands::spec::default_spec`]
//! (runc's `spec` output): containerd's default capability set and the capability arithmetic of
//! `--cap-add`/`--cap-drop` and CRI's `Capability`, containerd's masked and read-only paths, and what
//! "privileged" relaxes. The `berth` CLI and berthd's CRI both build specs from here, so the two never drift.
//!
//! Pure data work except reading this process's bounding set from /proc/self/status; it must never be
//! called from a container's init (use [`crate::caps`] there).

use serde_json::{json, Value};

/// containerd's (and Docker's) default capability set.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// containerd's masked paths: runc's list plus `/sys/devices/virtual/powercap` (energy counters are a
/// side channel).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// containerd's read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A capability name neither the kernel table nor `ALL` knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability {0:?}")]
pub struct UnknownCapability(pub String);

/// `name` as `CAP_X` (any case, with or without the prefix); `CAP_ALL` for `all`.
pub fn cap_name(name: &str) -> Result<String, UnknownCapability> {
    let up = name.to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if full == "CAP_ALL" || crate::caps::number(&full).is_some() {
        Ok(full)
    } else {
        Err(UnknownCapability(name.to_string()))
    }
}

/// Every capability this process may pass on: the names in its own bounding set. In a container or a
/// restricted sandbox that is less than all the kernel knows, and asking for more fails at capset; so, as
/// ctr and containerd do, "privileged" and `ALL` mean "all the caps I have".
pub fn grantable_caps() -> Vec<String> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        });
    crate::caps::all_names()
        .into_iter()
        .filter(|n| {
            bounding.is_none_or(|mask| {
                crate::caps::number(n).is_some_and(|b| b < 64 && mask & (1u64 << b) != 0)
            })
        })
        .collect()
}

/// The capability set of a container: the default set (everything grantable when `privileged`), then the
/// drops (`ALL` empties it), then the adds (`ALL` grants everything grantable), as Docker and containerd order
/// them.
pub fn capabilities<D, A>(
    privileged: bool,
    drop: &[D],
    add: &[A],
) -> Result<Vec<String>, UnknownCapability>
where
    D: AsRef<str>,
    A: AsRef<str>,
{
    let all = grantable_caps();
    let mut caps: Vec<String> = if privileged {
        all.clone()
    } else {
        DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
    };
    for d in drop {
        let d = cap_name(d.as_ref())?;
        if d == "CAP_ALL" {
            caps.clear();
        } else {
            caps.retain(|x| *x != d);
        }
    }
    for a in add {
        let a = cap_name(a.as_ref())?;
        if a == "CAP_ALL" {
            caps = all.clone();
        } else if !caps.contains(&a) {
            caps.push(a);
        }
    }
    Ok(caps)
}

/// containerd's masked and read-only paths on `spec` (a [`crate::commands::spec::default_spec`] value).
pub fn harden_paths(spec: &mut Value) {
    spec["linux"]["maskedPaths"] = json!(MASKED_PATHS);
    spec["linux"]["readonlyPaths"] = json!(READONLY_PATHS);
}

/// What "privileged" relaxes on `spec`: sysfs and cgroupfs mounted read-write, nothing masked or read-only,
/// every device allowed by the device cgroup.
pub fn relax_for_privileged(spec: &mut Value) {
    if let Some(ms) = spec["mounts"].as_array_mut() {
        for m in ms.iter_mut() {
            if m["type"] == "sysfs" || m["type"] == "cgroup" {
                if let Some(o) = m["options"].as_array_mut() {
                    o.retain(|x| x != "ro");
                    o.push(json!("rw"));
                }
            }
        }
    }
    spec["linux"]["maskedPaths"] = json!([]);
    spec["linux"]["readonlyPaths"] = json!([]);
    spec["linux"]["resources"]["devices"] = json!([{ "allow": true, "access": "rwm" }]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn drops_then_adds() {
        let caps = capabilities(false, &["ALL"], &["sys_admin"]).expect("caps");
        assert_eq!(caps, v(&["CAP_SYS_ADMIN"]));
        let caps = capabilities(false, &["CAP_CHOWN"], &[] as &[&str]).expect("caps");
        assert_eq!(caps.len(), DEFAULT_CAPS.len() - 1);
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(
            capabilities(false, &[] as &[&str], &["NOPE"]),
            Err(UnknownCapability("NOPE".into()))
        );
    }

    #[test]
    fn privileged_relaxes_paths_and_devices() {
        let mut spec = crate::commands::spec::default_spec();
        harden_paths(&mut spec);
        assert!(spec["linux"]["maskedPaths"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("/sys/devices/virtual/powercap"))));
        relax_for_privileged(&mut spec);
        assert_eq!(spec["linux"]["maskedPaths"], json!([]));
        assert_eq!(spec["linux"]["readonlyPaths"], json!([]));
        let sysfs = spec["mounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["type"] == "sysfs"))
            .cloned()
            .unwrap_or_default();
        assert!(sysfs["options"]
            .as_array()
            .is_some_and(|o| !o.contains(&json!("ro"))));
    }
}
