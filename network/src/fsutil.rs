//! Small file helpers: atomic replace of a file's content.
//!
//! A reader (another berthd, or this one after a crash) must never see a half-written file:
//! everything here writes a temp file in the same directory, syncs it, and renames it over.

use std::io::Write;
use std::path::Path;

/// Write `data` to `path` atomically (temp file + fsync + rename + fsync of the directory).
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            // The rename is durable only once the directory is synced; a failure here leaves
            // a complete file either way, so it is not an error.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// True for names of temp files left by [`write_atomic`] (skipped by directory scans).
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces() {
        let dir = std::env::temp_dir().join(format!("berth-net-fsutil-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create_dir_all");
        let p = dir.join("f.json");
        write_atomic(&p, b"one", 0o600).expect("write_atomic");
        write_atomic(&p, b"two", 0o600).expect("write_atomic");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("test setup")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&dir).expect("remove_dir_all");
    }
}
