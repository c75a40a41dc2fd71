//! Mounting snapshot mounts on this host, as ctr does for `images mount`, and reading an image's
//! /etc/passwd and /etc/group while building a spec: thin adapters from containerd's `Mount` type to
//! [`berth_oci::user::rootfs`], the one implementation berthd's CRI shares.
//!
//! Only the mounts berthd returned are mounted, at targets berth was given or made; this
//! module must never unmount anything it did not mount.

use std::path::Path;

use berth_oci::user::rootfs::{self, MountRef, RootfsError};
use containerd_client::types::Mount;

use crate::error::{Error, Result};

fn refs(mounts: &[Mount]) -> Vec<MountRef<'_>> {
    mounts
        .iter()
        .map(|m| MountRef {
            kind: &m.r#type,
            source: &m.source,
            options: &m.options,
        })
        .collect()
}

fn error(e: RootfsError) -> Error {
    match e {
        RootfsError::Mount { what, errno } => Error::Sys {
            what,
            source: errno,
        },
        RootfsError::Io { what, path, source } => Error::Io { what, path, source },
    }
}

/// Mount `mounts` (one, as snapshotters return) at `target`; `readonly` adds MS_RDONLY.
pub fn mount_all(mounts: &[Mount], target: &Path, readonly: bool) -> Result<()> {
    rootfs::mount_all(&refs(mounts), target, readonly).map_err(error)
}

/// Unmount `target` (lazily, so a busy mount still goes).
pub fn unmount(target: &Path) -> Result<()> {
    rootfs::unmount(target).map_err(error)
}

/// Read `files` (paths inside the rootfs) from `mounts`, mounted read-only on a private
/// temporary directory for the time of the read. Missing files read as empty.
pub fn read_files(mounts: &[Mount], files: &[&str]) -> Result<Vec<String>> {
    rootfs::read_files(&refs(mounts), files, &std::env::temp_dir()).map_err(error)
}
