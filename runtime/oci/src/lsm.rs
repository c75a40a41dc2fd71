//! Linux security modules a spec can ask for. AppArmor profiles are applied on exec when
//! the host runs AppArmor and refused otherwise (runc fails the same way, late; we fail
//! before creating anything). SELinux labels are ignored on hosts without SELinux, as
//! runc does.

use crate::error::{Error, Result};

/// Whether the kernel runs AppArmor.
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim_start().starts_with('Y'))
}

/// Refuse a profile this host cannot apply.
pub fn check_apparmor(profile: Option<&str>) -> std::result::Result<(), String> {
    match profile {
        Some(p) if !p.is_empty() && !apparmor_enabled() => Err(format!(
            "AppArmor profile {p:?} requested but AppArmor is not enabled on this host"
        )),
        _ => Ok(()),
    }
}

/// Make the next execve switch to `profile` (the caller is about to exec).
pub fn apply_apparmor(profile: &str) -> Result<()> {
    let value = format!("exec {profile}");
    let mut last = None;
    for path in [
        "/proc/thread-self/attr/apparmor/exec",
        "/proc/self/attr/exec",
    ] {
        match std::fs::write(path, &value) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(Error::io("write AppArmor profile to", path, e)),
        }
    }
    Err(last.unwrap_or_else(|| Error::Spec("AppArmor: no attr file".into())))
}
