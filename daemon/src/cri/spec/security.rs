//! The security part of a CRI container's spec: capabilities (containerd's default set, drops before adds,
//! `ALL`, privileged = everything berthd itself may grant), the seccomp section (RuntimeDefault is
//! berth-oci's default profile, Localhost a JSON file, absent or Unconfined none) and the process user.
//!
//! Pure data work except reading /proc/self/status and a Localhost profile file.

use berth_image::oci::ImageConfig;
use berth_proto::cri;
use serde_json::{json, Value};
use tonic::Status;

use super::invalid;

/// containerd's (and Docker's) default capability set.
const DEFAULT_CAPS: [&str; 14] = [
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

fn cap_name(name: &str) -> Result<String, Status> {
    let up = name.to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if full == "CAP_ALL" || berth_oci::caps::number(&full).is_some() {
        Ok(full)
    } else {
        Err(invalid(format!("unknown capability {name:?}")))
    }
}

/// Capabilities this berthd may grant (its own bounding set).
fn grantable() -> Vec<String> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        });
    berth_oci::caps::all_names()
        .into_iter()
        .filter(|n| {
            bounding.is_none_or(|mask| {
                berth_oci::caps::number(n).is_some_and(|b| b < 64 && mask & (1u64 << b) != 0)
            })
        })
        .collect()
}

pub(super) fn capabilities(
    privileged: bool,
    caps: Option<&cri::Capability>,
) -> Result<Vec<String>, Status> {
    let all = grantable();
    let mut out: Vec<String> = if privileged {
        all.clone()
    } else {
        DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
    };
    if let Some(c) = caps {
        for d in &c.drop_capabilities {
            let d = cap_name(d)?;
            if d == "CAP_ALL" {
                out.clear();
            } else {
                out.retain(|x| *x != d);
            }
        }
        for a in &c.add_capabilities {
            let a = cap_name(a)?;
            if a == "CAP_ALL" {
                out = all.clone();
            } else if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// The seccomp section for a profile (None: unconfined).
pub(super) fn seccomp(
    profile: Option<&cri::SecurityProfile>,
    privileged: bool,
) -> Result<Option<Value>, Status> {
    use cri::security_profile::ProfileType;
    let Some(p) = profile else {
        return Ok(None);
    };
    if privileged {
        return Ok(None);
    }
    match ProfileType::try_from(p.profile_type).unwrap_or(ProfileType::Unconfined) {
        ProfileType::Unconfined => Ok(None),
        ProfileType::RuntimeDefault => serde_json::to_value(berth_oci::seccomp::default_profile())
            .map(Some)
            .map_err(|e| Status::internal(format!("the default seccomp profile: {e}"))),
        ProfileType::Localhost => {
            let path = &p.localhost_ref;
            if !path.starts_with('/') {
                return Err(invalid(format!(
                    "seccomp localhost_ref {path:?} must be an absolute path"
                )));
            }
            let text =
                std::fs::read(path).map_err(|e| invalid(format!("seccomp profile {path}: {e}")))?;
            serde_json::from_slice(&text)
                .map(Some)
                .map_err(|e| invalid(format!("seccomp profile {path}: {e}")))
        }
    }
}

pub(super) fn user_of(
    image: &ImageConfig,
    run_as_user: Option<&cri::Int64Value>,
    run_as_group: Option<&cri::Int64Value>,
    username: &str,
    groups: &[i64],
) -> Result<Value, Status> {
    if run_as_group.is_some() && run_as_user.is_none() && username.is_empty() {
        return Err(invalid("run_as_group needs run_as_user or run_as_username"));
    }
    let image_user = image.config.user.as_str();
    let (mut uid, mut gid) = (0i64, 0i64);
    let name = if let Some(u) = run_as_user {
        uid = u.value;
        ""
    } else if !username.is_empty() {
        username
    } else {
        image_user
    };
    if !name.is_empty() {
        let (u, g) = name.split_once(':').unwrap_or((name, ""));
        match (u, u.parse::<i64>()) {
            ("root", _) => uid = 0,
            (_, Ok(n)) => uid = n,
            (other, Err(_)) => {
                return Err(Status::unimplemented(format!(
                    "user {other:?}: user names are not resolved yet; give a numeric uid"
                )))
            }
        }
        if let Ok(n) = g.parse::<i64>() {
            gid = n;
        }
    }
    if let Some(g) = run_as_group {
        gid = g.value;
    }
    if uid < 0 || gid < 0 {
        return Err(invalid(format!(
            "uid {uid} / gid {gid} must not be negative"
        )));
    }
    let mut user = json!({ "uid": uid, "gid": gid });
    if !groups.is_empty() {
        user["additionalGids"] = json!(groups);
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn capabilities_drop_then_add() {
        let c = cri::Capability {
            add_capabilities: v(&["SYS_ADMIN"]),
            drop_capabilities: v(&["ALL"]),
        };
        let caps = capabilities(false, Some(&c)).expect("caps");
        assert_eq!(caps, v(&["CAP_SYS_ADMIN"]));
        let bad = cri::Capability {
            add_capabilities: v(&["NOPE"]),
            drop_capabilities: vec![],
        };
        assert!(capabilities(false, Some(&bad)).is_err());
    }

    #[test]
    fn users() {
        let mut img = ImageConfig::default();
        img.config.user = "1000:1001".into();
        let u = user_of(&img, None, None, "", &[]).expect("user");
        assert_eq!(u, json!({"uid": 1000, "gid": 1001}));
        let u = user_of(&img, Some(&cri::Int64Value { value: 5 }), None, "", &[7]).expect("user");
        assert_eq!(u, json!({"uid": 5, "gid": 0, "additionalGids": [7]}));
        assert!(user_of(&img, None, Some(&cri::Int64Value { value: 5 }), "", &[]).is_err());
    }
}
