//! Device access rules: the v1 devices controller's allow/deny lists, and the default device set every container
//! gets (as runc: the spec's rules in order, then the defaults appended).
//!
//! On cgroup v2 the same list becomes an eBPF device program (`bpf_devices.rs`). This file must never write
//! device rules anywhere but the container's own cgroup.

use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::{fs, CgroupError};

fn rule(typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(true);
    r.set_typ(Some(typ));
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some("rwm".into()));
    r
}

/// The devices every container may use: mknod of anything, /dev/null, zero, full, random, urandom, tty,
/// /dev/pts/*, /dev/ptmx and /dev/net/tun.
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{B, C};
    let mut mknod_c = rule(C, None, None);
    mknod_c.set_access(Some("m".into()));
    let mut mknod_b = rule(B, None, None);
    mknod_b.set_access(Some("m".into()));
    vec![
        mknod_c,
        mknod_b,
        rule(C, Some(1), Some(3)),    // /dev/null
        rule(C, Some(1), Some(5)),    // /dev/zero
        rule(C, Some(1), Some(7)),    // /dev/full
        rule(C, Some(1), Some(8)),    // /dev/random
        rule(C, Some(1), Some(9)),    // /dev/urandom
        rule(C, Some(5), Some(0)),    // /dev/tty
        rule(C, Some(136), None),     // /dev/pts/*
        rule(C, Some(5), Some(2)),    // /dev/ptmx
        rule(C, Some(10), Some(200)), // /dev/net/tun
    ]
}

/// The devices.allow / devices.deny line for a rule: "c 1:3 rwm", "a *:* rwm".
pub(crate) fn rule_line(r: &LinuxDeviceCgroup) -> Result<String, CgroupError> {
    let access = r
        .access()
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or("rwm");
    if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(CgroupError::InvalidValue {
            what: "devices access".into(),
            reason: format!("{access:?} is not a combination of r, w and m"),
        });
    }
    let typ = match r.typ().unwrap_or_default() {
        LinuxDeviceType::A => "a",
        LinuxDeviceType::B => "b",
        LinuxDeviceType::C | LinuxDeviceType::U => "c",
        LinuxDeviceType::P => {
            return Err(CgroupError::InvalidValue {
                what: "devices type".into(),
                reason: "\"p\" (FIFO) cannot be used in a device cgroup rule".into(),
            })
        }
    };
    let num = |n: Option<i64>| {
        n.filter(|v| *v >= 0)
            .map_or("*".to_string(), |v| v.to_string())
    };
    Ok(format!(
        "{typ} {}:{} {access}",
        num(r.major()),
        num(r.minor())
    ))
}

/// The whole rule list a container gets: deny-all, the spec's rules in order, then the default set.
pub(crate) fn effective_rules(spec: Option<&[LinuxDeviceCgroup]>) -> Vec<LinuxDeviceCgroup> {
    let mut deny_all = LinuxDeviceCgroup::default();
    deny_all.set_allow(false);
    deny_all.set_access(Some("rwm".into()));
    let mut out = vec![deny_all];
    out.extend(spec.unwrap_or_default().iter().cloned());
    out.extend(default_device_rules());
    out
}

/// Applies device rules on cgroup v2 with an eBPF program; same `None` semantics as [`apply_v1`] (a cgroup
/// without a device program is new).
pub(crate) fn apply_v2(dir: &Path, rules: Option<&[LinuxDeviceCgroup]>) -> Result<(), CgroupError> {
    if rules.is_none() && !super::bpf_devices::attached(dir)?.is_empty() {
        return Ok(());
    }
    super::bpf_devices::apply(dir, &effective_rules(rules))
}

/// Applies device rules in a v1 devices cgroup. `None` rules on a cgroup that still allows everything (a new
/// container) means deny-all plus the defaults; `None` on an already restricted cgroup (an update) changes nothing.
pub(crate) fn apply_v1(
    dir: Option<&Path>,
    rules: Option<&[LinuxDeviceCgroup]>,
) -> Result<(), CgroupError> {
    let Some(dir) = dir else {
        if rules.is_some_and(|r| !r.is_empty()) {
            return Err(CgroupError::MissingController {
                controller: "devices",
                what: "devices".into(),
            });
        }
        return Ok(());
    };
    if rules.is_none() && fs::read(dir, "devices.list")? != "a *:* rwm" {
        return Ok(());
    }
    let mut lines = Vec::new();
    for r in rules.unwrap_or_default() {
        lines.push((r.allow(), rule_line(r)?));
    }
    for r in default_device_rules() {
        lines.push((true, rule_line(&r)?));
    }
    fs::write(dir, "devices.deny", "a")?;
    for (allow, line) in lines {
        let file = if allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        fs::write(dir, file, &line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_lines() -> Result<(), CgroupError> {
        let d = default_device_rules();
        assert_eq!(rule_line(&d[0])?, "c *:* m");
        assert_eq!(rule_line(&d[2])?, "c 1:3 rwm");
        assert_eq!(rule_line(&d[8])?, "c 136:* rwm");
        let mut all = LinuxDeviceCgroup::default();
        all.set_allow(false);
        assert_eq!(rule_line(&all)?, "a *:* rwm");
        all.set_access(Some("rx".into()));
        assert!(rule_line(&all).is_err());
        Ok(())
    }
}
