//! The user a container process runs as, resolved in the image's own /etc/passwd and /etc/group as
//! Docker and containerd resolve it (`name`, `uid`, `name:group`, `uid:gid`), and the reader of those files
//! from a container's rootfs mounts ([`rootfs`]). The `berth` CLI and berthd's CRI both use this module.
//!
//! The resolver is pure text work on files the caller read; nothing here may read the host's own
//! /etc/passwd or /etc/group.

pub mod rootfs;

/// What is wrong with a user or group reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// A user name that the image's /etc/passwd lacks.
    #[error("user {0:?} is not in the image's /etc/passwd")]
    UnknownUser(String),
    /// A group name that the image's /etc/group lacks.
    #[error("group {0:?} is not in the image's /etc/group")]
    UnknownGroup(String),
}

/// A resolved user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    /// Primary gid: the passwd entry's, or the `:group` part's.
    pub gid: u32,
    /// The gids of the /etc/group entries that list the user's name, without `gid`, in file order
    /// (empty for a uid that passwd lacks).
    pub additional_gids: Vec<u32>,
    /// The passwd entry's home directory (None for a uid that passwd lacks): HOME when the env has none.
    pub home: Option<String>,
}

/// Whether `user` (a `--user`, CRI or image `User` value) needs the image's /etc/passwd or /etc/group:
/// anything but empty or a numeric `uid:gid`.
pub fn needs_lookup(user: &str) -> bool {
    if user.is_empty() {
        return false;
    }
    match user.split_once(':') {
        Some((u, g)) => u.parse::<u32>().is_err() || g.parse::<u32>().is_err(),
        None => true,
    }
}

fn entries(text: &str, min_fields: usize) -> Vec<Vec<&str>> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= min_fields)
        .collect()
}

/// Resolve `user` against the image's `passwd` and `group` texts: a name must exist; a numeric uid missing
/// from passwd gets gid 0 and no groups; `:group` (name or gid) replaces the primary gid.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<User, UserError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let users = entries(passwd, 4);
    let numeric = u.parse::<u32>().ok();
    let entry = users.iter().find(|f| f[0] == u).or_else(|| {
        numeric.and_then(|n| users.iter().find(|f| f[2].parse::<u32>().ok() == Some(n)))
    });
    let (uid, mut gid, name, home) = match (entry, numeric) {
        (Some(f), _) => (
            f[2].parse::<u32>().unwrap_or(0),
            f[3].parse::<u32>().unwrap_or(0),
            Some(f[0]),
            f.get(5).map(|h| h.to_string()),
        ),
        (None, Some(n)) => (n, 0, None, None),
        (None, None) if u.is_empty() => (0, 0, None, None),
        (None, None) => return Err(UserError::UnknownUser(u.to_string())),
    };
    let groups = entries(group, 3);
    if let Some(g) = g.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse::<u32>().ok())
                .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        };
    }
    let mut additional_gids = Vec::new();
    if let Some(name) = name {
        for f in &groups {
            let listed = f.get(3).is_some_and(|m| m.split(',').any(|m| m == name));
            if let (true, Ok(n)) = (listed, f[2].parse::<u32>()) {
                if n != gid && !additional_gids.contains(&n) {
                    additional_gids.push(n);
                }
            }
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0::/root:/bin/sh\nwww:x:33:44::/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:www,bob\nwww:x:44:www\n# note\nbad\n";

    #[test]
    fn names_uids_and_groups() {
        assert_eq!(
            resolve_user("", PASSWD, GROUP).expect("root"),
            User::default()
        );
        let u = resolve_user("www", PASSWD, GROUP).expect("www");
        assert_eq!((u.uid, u.gid, &u.additional_gids), (33, 44, &vec![50]));
        assert_eq!(u.home.as_deref(), Some("/var/www"));
        let u = resolve_user("33", PASSWD, GROUP).expect("www by uid");
        assert_eq!((u.gid, &u.additional_gids), (44, &vec![50]));
        let u = resolve_user("1000", PASSWD, GROUP).expect("numeric");
        assert_eq!(
            u,
            User {
                uid: 1000,
                ..User::default()
            }
        );
        // The primary group moves to the `:group`; the old primary one is a member group again.
        let u = resolve_user("www:staff", PASSWD, GROUP).expect("group");
        assert_eq!((u.gid, &u.additional_gids), (50, &vec![44]));
        assert_eq!(
            resolve_user("nobody", PASSWD, GROUP),
            Err(UserError::UnknownUser("nobody".into()))
        );
        assert_eq!(
            resolve_user("www:nogroup", PASSWD, GROUP),
            Err(UserError::UnknownGroup("nogroup".into()))
        );
        assert!(needs_lookup("www"));
        assert!(needs_lookup("1000"));
        assert!(!needs_lookup("1000:1000"));
        assert!(!needs_lookup(""));
    }
}
