//! Directory work on one cgroup hierarchy: mkdir -p with cpuset copying and v2 controller enabling, the
//! recursive pid walk, and the recursive rmdir with a drain wait. It must never remove a directory outside the
//! container's own cgroup and never touch a file that is not a cgroup interface file.

use std::io;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{fs, v1, v2, CgroupError};

/// mkdir -p for one hierarchy, tolerating a concurrent rmdir of a shared parent by another container. On V2
/// (`v2_root` set) it enables the available controllers in every level above the leaf.
pub(crate) fn create_one(
    leaf: &Path,
    is_cpuset: bool,
    v2_root: Option<&Path>,
) -> Result<(), CgroupError> {
    let mut attempt = 0;
    'retry: loop {
        attempt += 1;
        let mut missing = Vec::new();
        let mut existing = leaf;
        while !existing.exists() {
            missing.push(existing.to_path_buf());
            match existing.parent() {
                Some(p) => existing = p,
                None => break,
            }
        }
        if let Some(root) = v2_root {
            let mut above: Vec<&Path> = existing
                .ancestors()
                .take_while(|a| a.starts_with(root))
                .collect();
            above.reverse();
            for level in above {
                v2::enable_controllers(level);
            }
        }
        for dir in missing.iter().rev() {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 5 => continue 'retry,
                Err(source) => {
                    return Err(CgroupError::Mkdir {
                        path: dir.clone(),
                        source,
                    })
                }
            }
            if is_cpuset {
                v1::copy_cpuset_from_parent(dir)?;
            }
            if v2_root.is_some() && dir != leaf {
                v2::enable_controllers(dir);
            }
        }
        if is_cpuset && missing.is_empty() {
            v1::copy_cpuset_from_parent(leaf)?;
        }
        return Ok(());
    }
}

/// Reads cgroup.procs of `dir` and every sub-cgroup below it.
pub(crate) fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<(), CgroupError> {
    let Some(procs) = fs::read_opt(dir, "cgroup.procs")? else {
        return Ok(());
    };
    out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in rd.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_pids(&entry.path(), out)?;
        }
    }
    Ok(())
}

/// rmdir of a cgroup and its sub-cgroups, deepest first, retrying EBUSY while tasks drain.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for entry in rd.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&entry.path())?;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(CgroupError::Rmdir {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}
