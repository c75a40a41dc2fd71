//! The user a container process runs as: `--user` or the image's `User`, resolved against the
//! image's /etc/passwd and /etc/group by [`berth_oci::user`] (shared with berthd's CRI).

use crate::error::{Error, Result};

pub use berth_oci::user::{needs_lookup, User};

/// Resolve `user` (`name`, `uid`, `name:group`, `uid:gid`) against the image's passwd and
/// group files, as Docker does.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<User> {
    berth_oci::user::resolve_user(user, passwd, group).map_err(|e| Error::Usage(e.to_string()))
}
