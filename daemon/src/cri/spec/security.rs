//! The security part of a CRI container's spec: capabilities (berth-oci's shared defaults: containerd's
//! default set, drops before adds, `ALL`, privileged = everything berthd itself may grant), the seccomp
//! section (RuntimeDefault is berth-oci's default profile, Localhost a JSON file, absent or Unconfined none)
//! and the process user as containerd's CRI makes it: run_as_username / run_as_user / the image's `User`
//! resolved in the image's own /etc/passwd and /etc/group, run_as_group over the primary gid, and the
//! supplementary groups by the SupplementalGroupsPolicy.
//!
//! Pure data work except reading /proc/self/status and a Localhost profile file; the image's files come
//! from the caller.

use berth_image::oci::ImageConfig;
use berth_oci::user::{needs_lookup, resolve_user};
use berth_proto::cri;
use serde_json::{json, Value};
use tonic::Status;

use super::invalid;

pub(super) fn capabilities(
    privileged: bool,
    caps: Option<&cri::Capability>,
) -> Result<Vec<String>, Status> {
    let (drop, add) = caps
        .map(|c| (&c.drop_capabilities[..], &c.add_capabilities[..]))
        .unwrap_or_default();
    berth_oci::defaults::capabilities(privileged, drop, add).map_err(|e| invalid(e.to_string()))
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

/// The AppArmor profile of an app container (None: none applied). Unconfined and, on a host without AppArmor,
/// the runtime default apply none, as containerd's CRI does; a named profile on such a host is refused at
/// CreateContainer (berth-runc would refuse it only at start). Berth ships no AppArmor profile of its own, so
/// the runtime default applies none on any host (seccomp, capabilities and masked paths still do); a
/// Localhost profile must be loaded on the node, as the kubelet requires.
pub(super) fn apparmor(
    sc: &cri::LinuxContainerSecurityContext,
    host_has_apparmor: bool,
) -> Result<Option<String>, Status> {
    use cri::security_profile::ProfileType;
    let (kind, name) = match (&sc.apparmor, sc.apparmor_profile.as_str()) {
        (Some(p), _) => (
            ProfileType::try_from(p.profile_type).unwrap_or(ProfileType::Unconfined),
            p.localhost_ref.clone(),
        ),
        (None, "" | "runtime/default") => (ProfileType::RuntimeDefault, String::new()),
        (None, "unconfined") => (ProfileType::Unconfined, String::new()),
        (None, other) => match other.strip_prefix("localhost/") {
            Some(n) => (ProfileType::Localhost, n.to_string()),
            None => {
                return Err(invalid(format!(
                    "apparmor_profile {other:?}: want runtime/default, unconfined or localhost/<profile>"
                )))
            }
        },
    };
    match kind {
        ProfileType::Unconfined | ProfileType::RuntimeDefault => Ok(None),
        ProfileType::Localhost if name.is_empty() => Err(invalid(
            "AppArmor profile type Localhost needs localhost_ref (a loaded profile's name)",
        )),
        ProfileType::Localhost if !host_has_apparmor => Err(invalid(format!(
            "AppArmor profile {name:?} requested, but AppArmor is not enabled on this host"
        ))),
        ProfileType::Localhost => Ok(Some(name)),
    }
}

/// The image's /etc/passwd and /etc/group (empty when the image has none), read from the container's rootfs.
#[derive(Debug, Clone, Default)]
pub struct ImageFiles {
    pub passwd: String,
    pub group: String,
}

/// The user fields of a CRI security context (container or sandbox).
#[derive(Debug, Clone, Copy, Default)]
pub struct UserRequest<'a> {
    pub run_as_user: Option<&'a cri::Int64Value>,
    pub run_as_group: Option<&'a cri::Int64Value>,
    pub run_as_username: &'a str,
    pub supplemental_groups: &'a [i64],
    /// SupplementalGroupsPolicy Strict: none of the image's groups.
    pub strict: bool,
}

impl<'a> UserRequest<'a> {
    /// The user fields of a container's security context.
    pub fn of_container(sc: &'a cri::LinuxContainerSecurityContext) -> UserRequest<'a> {
        UserRequest {
            run_as_user: sc.run_as_user.as_ref(),
            run_as_group: sc.run_as_group.as_ref(),
            run_as_username: &sc.run_as_username,
            supplemental_groups: &sc.supplemental_groups,
            strict: sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32,
        }
    }

    /// The user reference to resolve: run_as_username, else run_as_user, else the image's `User`.
    pub fn user_ref(&self, image: &ImageConfig) -> String {
        if !self.run_as_username.is_empty() {
            self.run_as_username.to_string()
        } else if let Some(u) = self.run_as_user {
            u.value.to_string()
        } else {
            image.config.user.clone()
        }
    }

    /// Whether building the user needs the image's /etc/passwd and /etc/group: a name to resolve, or the
    /// Merge policy (the image's groups of even a numeric user), as containerd reads them for every container.
    pub fn needs_files(&self, image: &ImageConfig) -> bool {
        !self.strict || needs_lookup(&self.user_ref(image))
    }
}

/// The process user as the spec's `process.user`, and the HOME it implies (the passwd entry's home, `/`
/// without one, as runc defaults it). `files` None: the image's files are not available (the sandbox), so
/// only numeric users work.
pub(super) fn user_of(
    image: &ImageConfig,
    req: &UserRequest<'_>,
    files: Option<&ImageFiles>,
) -> Result<(Value, String), Status> {
    if req.run_as_group.is_some() && req.run_as_user.is_none() && req.run_as_username.is_empty() {
        return Err(invalid("run_as_group needs run_as_user or run_as_username"));
    }
    if req.run_as_user.is_some_and(|u| u.value < 0) {
        return Err(invalid("run_as_user must not be negative"));
    }
    let wanted = req.user_ref(image);
    let user = match files {
        Some(f) => resolve_user(&wanted, &f.passwd, &f.group).map_err(|e| {
            if !req.run_as_username.is_empty() || req.run_as_user.is_some() {
                invalid(format!("run_as_username/run_as_user: {e}"))
            } else {
                invalid(format!("the image's User {wanted:?}: {e}"))
            }
        })?,
        None => resolve_user(&wanted, "", "").map_err(|e| {
            invalid(format!(
                "{e}: a pod sandbox's user must be a numeric uid[:gid] (its image's files are not read)"
            ))
        })?,
    };
    let uid = i64::from(user.uid);
    let gid = match req.run_as_group {
        Some(g) if g.value < 0 || g.value > i64::from(u32::MAX) => {
            return Err(invalid(format!("run_as_group {} is out of range", g.value)))
        }
        Some(g) => g.value,
        None => i64::from(user.gid),
    };
    // The primary gid first (containerd keeps it among the additional gids), then the image's groups
    // (Merge), then the CRI's.
    let mut groups = vec![gid];
    if !req.strict {
        groups.extend(user.additional_gids.iter().map(|g| i64::from(*g)));
    }
    for g in req.supplemental_groups {
        if *g < 0 || *g > i64::from(u32::MAX) {
            return Err(invalid(format!("supplemental group {g} is out of range")));
        }
        groups.push(*g);
    }
    let mut seen = std::collections::HashSet::new();
    groups.retain(|g| seen.insert(*g));
    let home = user.home.unwrap_or_else(|| "/".to_string());
    Ok((
        json!({ "uid": uid, "gid": gid, "additionalGids": groups }),
        home,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn files() -> ImageFiles {
        ImageFiles {
            passwd: "root:x:0:0::/root:/bin/sh\napp:x:1234:1234::/home/app:/bin/sh\n".into(),
            group: "root:x:0:\napp:x:1234:\nextra:x:3000:app\nother:x:3001:bob\n".into(),
        }
    }

    #[test]
    fn users_and_groups() {
        let mut img = ImageConfig::default();
        img.config.user = "1000:1001".into();
        let none = UserRequest::default();
        let (u, home) = user_of(&img, &none, None).expect("numeric image user");
        assert_eq!(
            u,
            json!({"uid": 1000, "gid": 1001, "additionalGids": [1001]})
        );
        assert_eq!(home, "/");
        let five = cri::Int64Value { value: 5 };
        let req = UserRequest {
            run_as_user: Some(&five),
            supplemental_groups: &[7],
            ..UserRequest::default()
        };
        let (u, _) = user_of(&img, &req, Some(&files())).expect("run_as_user");
        assert_eq!(u, json!({"uid": 5, "gid": 0, "additionalGids": [0, 7]}));
        let bad = UserRequest {
            run_as_group: Some(&five),
            ..UserRequest::default()
        };
        assert!(user_of(&img, &bad, None).is_err());

        // By name, Merge: the image's groups, then the CRI's.
        let mut req = UserRequest {
            run_as_username: "app",
            supplemental_groups: &[2000, 3000],
            ..UserRequest::default()
        };
        let (u, home) = user_of(&img, &req, Some(&files())).expect("app");
        assert_eq!(
            u,
            json!({"uid": 1234, "gid": 1234, "additionalGids": [1234, 3000, 2000]})
        );
        assert_eq!(home, "/home/app");
        req.strict = true;
        let (u, _) = user_of(&img, &req, Some(&files())).expect("app strict");
        assert_eq!(
            u,
            json!({"uid": 1234, "gid": 1234, "additionalGids": [1234, 2000, 3000]})
        );
        req.run_as_username = "ghost";
        let e = user_of(&img, &req, Some(&files())).expect_err("ghost");
        assert!(e.message().contains("\"ghost\""), "{e:?}");
        img.config.user = "app".into();
        let e = user_of(&img, &UserRequest::default(), None).expect_err("sandbox name");
        assert!(e.message().contains("\"app\""), "{e:?}");
    }

    #[test]
    fn apparmor_profiles_as_containerd_maps_them() {
        use cri::security_profile::ProfileType;
        let sc =
            |t: Option<ProfileType>, r: &str, legacy: &str| cri::LinuxContainerSecurityContext {
                apparmor: t.map(|t| cri::SecurityProfile {
                    profile_type: t as i32,
                    localhost_ref: r.into(),
                }),
                apparmor_profile: legacy.into(),
                ..Default::default()
            };
        for host in [false, true] {
            assert_eq!(apparmor(&sc(None, "", ""), host).expect("unset"), None);
            assert_eq!(
                apparmor(&sc(None, "", "runtime/default"), host).expect("rd"),
                None
            );
            assert_eq!(
                apparmor(&sc(Some(ProfileType::Unconfined), "", ""), host).expect("u"),
                None
            );
        }
        let named = sc(Some(ProfileType::Localhost), "k8s-nginx", "");
        assert_eq!(
            apparmor(&named, true).expect("loaded"),
            Some("k8s-nginx".into())
        );
        let e = apparmor(&named, false).expect_err("no AppArmor");
        assert!(
            e.message().contains("not enabled") && e.message().contains("k8s-nginx"),
            "{e:?}"
        );
        let legacy = sc(None, "", "localhost/k8s-nginx");
        assert_eq!(
            apparmor(&legacy, true).expect("legacy"),
            Some("k8s-nginx".into())
        );
        // The field wins over the deprecated string.
        let both = sc(Some(ProfileType::Unconfined), "", "localhost/x");
        assert_eq!(apparmor(&both, true).expect("both"), None);
        assert!(apparmor(&sc(None, "", "bogus"), true).is_err());
        assert!(apparmor(&sc(Some(ProfileType::Localhost), "", ""), true).is_err());
    }
}
