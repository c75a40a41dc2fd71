//! The `sysprobe` test helper (`tests/helpers/sysprobe.c`): a tiny static C program that tries the
//! syscalls containerd's default seccomp profile denies and prints `NAME OK` or `NAME E<errno>` per
//! probe. Built with the host's C compiler (`cc -static`, glibc's libc.a from libc6-dev, which the
//! Rust toolchain needs anyway) into the test's dir, and bind-mounted read-only into a container.
//!
//! This module must never write outside the dir it is given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The helper's source, compiled into the test binary so a test needs no path to the repo.
const SOURCE: &str = include_str!("../helpers/sysprobe.c");

/// Compile the helper into `dir/sysprobe`; `None` (with a message, or a panic under `CI=true`)
/// when there is no C compiler or static libc.
pub fn build(dir: &Path) -> Option<PathBuf> {
    let Some(cc) = crate::find_tool("cc") else {
        crate::skip("no C compiler (cc) for the sysprobe helper");
        return None;
    };
    let src = dir.join("sysprobe.c");
    let bin = dir.join("sysprobe");
    std::fs::write(&src, SOURCE).unwrap_or_else(|e| panic!("write {}: {e}", src.display()));
    let out = Command::new(cc)
        .args(["-static", "-O1", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc -static sysprobe.c failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(bin)
}

/// Parse the helper's output: probe name → `OK` or `E<errno>`.
pub fn parse(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}
