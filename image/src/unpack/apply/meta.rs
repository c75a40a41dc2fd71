//! Entry metadata: reading it from tar headers and PAX records, and setting it on created nodes
//! (chown, then chmod, then xattrs, then times), never following the node if it is a symlink.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{fchmod, fchmodat, utimensat, FchmodatFlags, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, Gid, Uid};

use super::{parse_time, xattr_allowed, Meta, Unpacker};
use crate::error::{Error, Result};
use crate::sys;

impl Unpacker<'_> {
    pub(super) fn meta<R: Read>(&mut self, e: &mut tar::Entry<'_, R>, shown: &str) -> Result<Meta> {
        let pos = e.raw_header_position();
        let bad = |what: &str, err: io::Error| Error::Layer {
            entry: shown.to_string(),
            offset: pos,
            reason: format!("bad {what}: {err}"),
        };
        let h = e.header();
        let mode = h.mode().map_err(|x| bad("mode", x))? & 0o7777;
        let mut uid = h.uid().map_err(|x| bad("uid", x))?;
        let mut gid = h.gid().map_err(|x| bad("gid", x))?;
        let mtime = h.mtime().map_err(|x| bad("mtime", x))?;
        let mut mtime = TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(pax) = e.pax_extensions().map_err(|x| bad("pax header", x))? {
            for ext in pax {
                let ext = ext.map_err(|x| Error::Layer {
                    entry: shown.to_string(),
                    offset: pos,
                    reason: format!("bad pax record: {x}"),
                })?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let text = std::str::from_utf8(value).unwrap_or("");
                match key {
                    "uid" => uid = text.trim().parse().unwrap_or(uid),
                    "gid" => gid = text.trim().parse().unwrap_or(gid),
                    "mtime" => mtime = parse_time(text.trim()).unwrap_or(mtime),
                    "atime" => atime = parse_time(text.trim()),
                    k => {
                        if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((name.to_string(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let uid = u32::try_from(uid).map_err(|_| Error::Layer {
            entry: shown.to_string(),
            offset: pos,
            reason: format!("uid {uid} out of range"),
        })?;
        let gid = u32::try_from(gid).map_err(|_| Error::Layer {
            entry: shown.to_string(),
            offset: pos,
            reason: format!("gid {gid} out of range"),
        })?;
        Ok(Meta {
            mode,
            uid,
            gid,
            atime: atime.unwrap_or(mtime),
            mtime,
            xattrs,
        })
    }

    pub(super) fn set_xattrs(
        &mut self,
        fd: Option<BorrowedFd<'_>>,
        at: Option<(BorrowedFd<'_>, &OsStr)>,
        rel: &Path,
        meta: &Meta,
    ) -> Result<()> {
        for (name, value) in &meta.xattrs {
            if !xattr_allowed(name) {
                self.out.skipped_xattrs += 1;
                self.warn(format!("{}: xattr {name} not allowed", rel.display()));
                continue;
            }
            let r = match (fd, at) {
                (Some(fd), _) => sys::fsetxattr(fd, OsStr::new(name), value),
                (None, Some((d, n))) => {
                    sys::lsetxattr(&sys::fd_path(d, n), OsStr::new(name), value)
                }
                (None, None) => Ok(()),
            };
            match r {
                Ok(()) => {}
                Err(e @ (Errno::ENOTSUP | Errno::EPERM)) => {
                    self.out.skipped_xattrs += 1;
                    self.warn(format!("{}: xattr {name} not set: {e}", rel.display()));
                }
                Err(e) => return Err(Error::errno("setxattr", self.shown(rel), e)),
            }
        }
        Ok(())
    }

    /// chown, then chmod (chown clears setuid bits), then xattrs (chown clears capabilities).
    pub(super) fn set_meta_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        rel: &Path,
        meta: &Meta,
    ) -> Result<()> {
        let path = self.shown(rel);
        if self.opts.preserve_owners {
            fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(|e| Error::errno("chown", &path, e))?;
        }
        fchmod(fd, Mode::from_bits_truncate(meta.mode))
            .map_err(|e| Error::errno("chmod", &path, e))?;
        self.set_xattrs(Some(fd), None, rel, meta)
    }

    /// Metadata of a node that cannot be opened (symlink, device, fifo), by (dir, name), never
    /// following it.
    pub(super) fn set_meta_at(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        meta: &Meta,
        chmod: bool,
    ) -> Result<()> {
        let path = self.shown(rel);
        if self.opts.preserve_owners {
            fchownat(
                dir,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| Error::errno("chown", &path, e))?;
        }
        if chmod {
            // The node was just created by mknodat: it is not a symlink.
            fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(meta.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| Error::errno("chmod", &path, e))?;
        }
        self.set_xattrs(None, Some((dir, name)), rel, meta)?;
        utimensat(
            dir,
            name,
            &meta.atime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| Error::errno("set times", &path, e))
    }
}
