//! Hostile layer tars for unpacker tests: each tries to make an unpacker write outside the
//! directory it unpacks into, and says which host paths must therefore not exist afterwards.
//!
//! Every escape target is a fresh, uniquely named path next to (or below) the test's own dirs,
//! so a vulnerable unpacker damages nothing but the test's dir, and a check is not fooled by
//! files another test left. Building the archives touches nothing on disk.

use std::path::{Path, PathBuf};

use crate::archive::{Entry, EntryKind, TarBuilder};

/// One hostile layer.
#[derive(Debug, Clone)]
pub struct HostileLayer {
    /// Short name of the attack (`dotdot-file`, `symlink-escape`, ...).
    pub name: &'static str,
    /// The uncompressed tar (gzip it with [`crate::archive::gzip`] for an image layer).
    pub tar: Vec<u8>,
    /// Paths that must not exist after unpacking the layer into the target dir.
    pub must_not_exist: Vec<PathBuf>,
}

/// Hostile layers aimed at an unpacker that extracts into `target` (a dir inside the test's
/// dir, e.g. `<TestDir>/unpack/rootfs`; its parent must be test-owned too). `marker` makes the
/// escape file names unique (use [`crate::unique_id`]).
pub fn hostile_layers(target: &Path, marker: &str) -> Vec<HostileLayer> {
    let outside = target.parent().unwrap_or(target).to_path_buf();
    let depth = target.components().count();
    let up = "../".repeat(depth + 1);
    let esc = |tag: &str| format!("berth-escape-{marker}-{tag}");
    let mut layers = Vec::new();
    let mut add = |name: &'static str, t: &mut TarBuilder, paths: Vec<PathBuf>| {
        layers.push(HostileLayer {
            name,
            tar: t.finish(),
            must_not_exist: paths,
        });
    };

    // A plain `..` path.
    let n = esc("dotdot");
    add(
        "dotdot-file",
        TarBuilder::new().file(&format!("../{n}"), 0o644, b"x"),
        vec![outside.join(&n)],
    );
    // A `..` hidden in the middle of the path.
    let n = esc("inner-dotdot");
    add(
        "inner-dotdot-file",
        TarBuilder::new()
            .dir("a", 0o755)
            .file(&format!("a/../../{n}"), 0o644, b"x"),
        vec![outside.join(&n)],
    );
    // An absolute path naming the dir next to the target.
    let n = esc("absolute");
    let abs = outside.join(&n);
    add(
        "absolute-file",
        TarBuilder::new().file(&abs.to_string_lossy(), 0o644, b"x"),
        vec![abs.clone()],
    );
    // A symlink to an absolute dir outside, then a file written through it.
    let n = esc("symlink-abs");
    add(
        "symlink-absolute-escape",
        TarBuilder::new()
            .symlink("evil", &outside.to_string_lossy())
            .file(&format!("evil/{n}"), 0o644, b"x"),
        vec![outside.join(&n)],
    );
    // A relative symlink climbing out (deeper than the root), then a file written through it.
    let n = esc("symlink-rel");
    add(
        "symlink-relative-escape",
        TarBuilder::new()
            .symlink(
                "up",
                &format!("{up}{}", outside.to_string_lossy().trim_start_matches('/')),
            )
            .file(&format!("up/{n}"), 0o644, b"x"),
        vec![outside.join(&n)],
    );
    // A symlinked dir replaced by a real dir entry with content: only the in-tree dir may get it.
    let n = esc("symlink-dir");
    add(
        "symlink-then-dir",
        TarBuilder::new()
            .symlink("d", &outside.to_string_lossy())
            .dir("d", 0o755)
            .file(&format!("d/{n}"), 0o644, b"x"),
        vec![outside.join(&n)],
    );
    // A hard link to a file outside the target (must not link, and must not let a later write
    // through the link modify the outside file).
    let victim_name = esc("victim");
    let victim = outside.join(&victim_name);
    let mut link = Entry::new(EntryKind::HardLink, "h", 0o644);
    link.link = victim.to_string_lossy().into_owned();
    let mut rel_link = Entry::new(EntryKind::HardLink, "h2", 0o644);
    rel_link.link = format!("../{victim_name}");
    add(
        "hardlink-escape",
        TarBuilder::new().append(link).append(rel_link),
        Vec::new(), // checked by the caller: the victim (which it creates) must be unchanged
    );
    // A whiteout and an opaque marker pointing outside.
    let n = esc("whiteout");
    add(
        "whiteout-escape",
        TarBuilder::new()
            .file(&format!("../.wh.{n}"), 0o644, b"")
            .file("../.wh..wh..opq", 0o644, b""),
        vec![
            outside.join(format!(".wh.{n}")),
            outside.join(".wh..wh..opq"),
        ],
    );
    // A device node (allowed only where the unpacker allows devices).
    let mut dev = Entry::new(EntryKind::Char, &format!("{}-mem", esc("dev")), 0o666);
    dev.dev = (1, 1);
    add("char-device", TarBuilder::new().append(dev), Vec::new());
    layers
}

/// The victim file the `hardlink-escape` layer aims at (create it before unpacking, check it
/// is unchanged and not linked into the target afterwards).
pub fn hardlink_victim(target: &Path, marker: &str) -> PathBuf {
    target
        .parent()
        .unwrap_or(target)
        .join(format!("berth-escape-{marker}-victim"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GNU tar, told to be careless (`-P`, absolute names kept), really writes outside: the
    /// layers are the attacks they claim to be. Safe: every target is inside our TestDir.
    #[test]
    fn careless_tar_escapes_with_each_path_layer() {
        let Some(tar) = crate::find_tool("tar") else {
            return;
        };
        let dir = crate::TestDir::new("hostile-unit");
        let target = dir.subdir("unpack/rootfs");
        let marker = crate::unique_id("m");
        let layers = hostile_layers(&target, &marker);
        let names: Vec<_> = layers.iter().map(|l| l.name).collect();
        assert!(names.contains(&"dotdot-file") && names.contains(&"symlink-absolute-escape"));
        for l in layers.iter().filter(|l| {
            matches!(
                l.name,
                "dotdot-file" | "absolute-file" | "symlink-absolute-escape"
            )
        }) {
            let file = dir.join(format!("{}.tar", l.name));
            std::fs::write(&file, &l.tar).expect("write tar");
            let out = std::process::Command::new(&tar)
                .arg("-xPf")
                .arg(&file)
                .arg("-C")
                .arg(&target)
                .output()
                .expect("tar");
            assert!(
                out.status.success(),
                "{}: {}",
                l.name,
                String::from_utf8_lossy(&out.stderr)
            );
            for p in &l.must_not_exist {
                assert!(
                    p.exists(),
                    "{}: careless tar did not create {}",
                    l.name,
                    p.display()
                );
                assert!(p.starts_with(dir.path()));
            }
        }
    }
}
