//! The user a container process runs as: `--user` or the image's `User`, resolved against the
//! image's /etc/passwd and /etc/group as Docker does.
//!
//! Pure text work on files read by the caller; this module must never read the host's files.

use crate::error::{Error, Result};

/// The user a container process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids.
    pub additional_gids: Vec<u32>,
}

/// Whether `user` (a `--user` or image `User` value) needs the image's /etc/passwd or
/// /etc/group: anything but empty or a numeric `uid:gid`.
pub fn needs_lookup(user: &str) -> bool {
    if user.is_empty() {
        return false;
    }
    match user.split_once(':') {
        Some((u, g)) => u.parse::<u32>().is_err() || g.parse::<u32>().is_err(),
        None => true,
    }
}

/// Resolve `user` (`name`, `uid`, `name:group`, `uid:gid`) against the image's passwd and
/// group files, as Docker does: a numeric uid missing from passwd gets gid 0; a name must
/// exist; supplementary groups are those in /etc/group that list the user's name.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<User> {
    if user.is_empty() {
        return Ok(User::default());
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 4)
        .collect();
    let by_name = entries.iter().find(|f| f[0] == u);
    let numeric = u.parse::<u32>().ok();
    let entry = by_name.or_else(|| {
        numeric.and_then(|n| entries.iter().find(|f| f[2].parse::<u32>().ok() == Some(n)))
    });
    let (uid, mut gid, name) = match (entry, numeric) {
        (Some(f), _) => (
            f[2].parse::<u32>().unwrap_or(0),
            f[3].parse::<u32>().unwrap_or(0),
            Some(f[0]),
        ),
        (None, Some(n)) => (n, 0, None),
        (None, None) => {
            return Err(Error::Usage(format!(
                "user {u:?} is not in the image's /etc/passwd"
            )))
        }
    };
    let groups: Vec<Vec<&str>> = group
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 3)
        .collect();
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse::<u32>().ok())
                .ok_or_else(|| {
                    Error::Usage(format!("group {g:?} is not in the image's /etc/group"))
                })?,
        };
    }
    let mut additional_gids = Vec::new();
    if let Some(name) = name {
        for f in &groups {
            let members = f.get(3).copied().unwrap_or("");
            if members.split(',').any(|m| m == name) {
                if let Ok(n) = f[2].parse::<u32>() {
                    if n != gid && !additional_gids.contains(&n) {
                        additional_gids.push(n);
                    }
                }
            }
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}
