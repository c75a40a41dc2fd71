//! Layer unpacking (`berth_image::apply`, the one unpacker behind pulls and Diff.Apply) of a
//! hostile tar, plain or gzip-compressed, into a fresh directory.
//!
//! Layout, recreated for every input under `$BERTH_FUZZ_DIR` (default `/tmp/berth-fuzz-unpack`,
//! fixed so that seeds can hold absolute symlinks into it):
//! `target/` (what the layer is applied to) and `outside/sentinel` (a file the layer must not
//! reach). Oracle: no panic; afterwards the base holds only `target` and `outside`, `outside`
//! holds only the sentinel with its content, mode, owner and link count unchanged.
//!
//! First input byte: bit 0 gzip-compresses the rest before applying it (so the gzip path of
//! `apply` runs end to end), bit 1 selects overlay whiteouts. The rest is the tar stream.
#![no_main]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use berth_image::{apply, ApplyOptions, Compression, WhiteoutMode};
use libfuzzer_sys::fuzz_target;

const SENTINEL: &[u8] = b"must not change\n";

fn base() -> PathBuf {
    std::env::var_os("BERTH_FUZZ_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/berth-fuzz-unpack"))
}

/// Make the base writable again and remove it (a layer can leave read-only dirs behind).
fn wipe(base: &std::path::Path) {
    if !base.exists() {
        return;
    }
    let mut stack = vec![base.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&d) else {
            continue;
        };
        if md.is_dir() {
            let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
            if let Ok(rd) = fs::read_dir(&d) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    // Immutable or append-only flags cannot come from a tar, so this succeeds.
    fs::remove_dir_all(base).expect("remove the fuzz base dir");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, tar)) = data.split_first() else {
        return;
    };
    let base = base();
    wipe(&base);
    let target = base.join("target");
    let outside = base.join("outside");
    fs::create_dir_all(&target).expect("mkdir target");
    fs::create_dir_all(&outside).expect("mkdir outside");
    let sentinel = outside.join("sentinel");
    fs::write(&sentinel, SENTINEL).expect("write sentinel");
    fs::set_permissions(&sentinel, fs::Permissions::from_mode(0o644)).expect("chmod sentinel");
    let before = fs::metadata(&sentinel).expect("stat sentinel");

    let opts = ApplyOptions {
        whiteout: if mode & 2 != 0 {
            WhiteoutMode::Overlay
        } else {
            WhiteoutMode::Delete
        },
        buffer_size: 64 * 1024,
        ..ApplyOptions::default()
    };
    let _ = if mode & 1 != 0 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).expect("gzip into memory");
        let gz = gz.finish().expect("gzip into memory");
        apply(&target, &gz[..], Compression::Gzip, &opts)
    } else {
        apply(&target, tar, Compression::None, &opts)
    };

    let mut names: Vec<_> = fs::read_dir(&base)
        .expect("read base")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["outside", "target"],
        "the layer created or removed something next to its target"
    );
    let target_md = fs::symlink_metadata(&target).expect("stat target");
    assert!(target_md.is_dir(), "the target itself was replaced");
    let inside: Vec<_> = fs::read_dir(&outside)
        .expect("read outside")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    assert_eq!(inside, ["sentinel"], "the layer wrote into a sibling dir");
    let after = fs::symlink_metadata(&sentinel).expect("stat sentinel");
    assert!(after.file_type().is_file(), "sentinel replaced");
    assert_eq!(
        fs::read(&sentinel).expect("read sentinel"),
        SENTINEL,
        "sentinel written"
    );
    assert_eq!(after.mode(), before.mode(), "sentinel chmod'ed");
    assert_eq!(
        (after.uid(), after.gid()),
        (before.uid(), before.gid()),
        "sentinel chown'ed"
    );
    assert_eq!(after.nlink(), 1, "sentinel hard-linked from the layer");
    assert_eq!(after.ino(), before.ino(), "sentinel replaced");
    assert_eq!(after.mtime(), before.mtime(), "sentinel times changed");
    let outside_md = fs::symlink_metadata(&outside).expect("stat outside");
    assert!(
        outside_md.is_dir() && outside_md.mode() & 0o7777 == 0o755,
        "outside dir changed"
    );
});
