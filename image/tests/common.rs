//! Helpers shared by berth-image's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A recursive listing of `dir` (path → kind, mode, uid, gid, size, mtime, nlink, link target,
/// content digest for files), skipping `skip` (a subtree).
pub fn listing(dir: &Path, skip: Option<&Path>) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if Some(p.as_path()) == skip {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let extra = if m.file_type().is_symlink() {
            std::fs::read_link(&p)
                .map(|t| t.display().to_string())
                .unwrap_or_default()
        } else if m.is_file() {
            berth_image::Digest::of(&std::fs::read(&p).unwrap_or_default()).to_string()
        } else {
            String::new()
        };
        out.insert(
            p.strip_prefix(dir).unwrap_or(&p).to_path_buf(),
            format!(
                "{:o} {}:{} size={} mtime={} nlink={} rdev={} {extra}",
                m.mode(),
                m.uid(),
                m.gid(),
                if m.is_dir() { 0 } else { m.size() },
                m.mtime(),
                // overlayfs reports nlink 1 for merged directories.
                if m.is_dir() { 0 } else { m.nlink() },
                m.rdev()
            ),
        );
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    stack.push(e.path());
                }
            }
        }
    }
    out
}

/// zstd-compress `data` with the zstd CLI (None when the tool is missing outside CI).
pub fn zstd(data: &[u8], dir: &Path) -> Option<Vec<u8>> {
    let tool = berth_tests::tool("zstd")?;
    let src = dir.join(format!("{}.tar", berth_tests::unique_id("z")));
    std::fs::write(&src, data).expect("write tar");
    let out = Command::new(tool)
        .args(["-q", "-c", "-3"])
        .arg(&src)
        .output()
        .expect("zstd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&src).expect("rm");
    Some(out.stdout)
}

/// gzip with real compression (flate2).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// `sha256sum` of a file, as `sha256:<hex>`.
pub fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    format!("sha256:{}", s.split_whitespace().next().unwrap_or(""))
}

/// An xattr of `path` (not following symlinks), via getfattr-free std: read through /proc-less
/// llistxattr is not in std, so use the `xattr`-less approach of `getfattr` when present.
pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a writable buffer of buf.len() bytes.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}
