//! Tar and gzip writers for test images and layers.
//!
//! Hand-written on purpose: image tests need hostile layers (`../` and absolute paths,
//! symlink and hardlink tricks, device nodes, whiteouts) that the `tar` crate's builder refuses
//! to write, and a test harness must produce exactly the bytes a test asks for. gzip uses
//! stored (uncompressed) deflate blocks: valid gzip that any inflater reads, with no
//! compression dependency. Entries get a fixed mtime and root ownership, so archives (and
//! their digests) are reproducible. This module never touches the filesystem.

/// The kind of a tar entry (its typeflag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// `0`: a regular file.
    File,
    /// `1`: a hard link to `link`.
    HardLink,
    /// `2`: a symlink to `link`.
    Symlink,
    /// `3`: a character device.
    Char,
    /// `4`: a block device.
    Block,
    /// `5`: a directory.
    Dir,
    /// `6`: a FIFO.
    Fifo,
}

impl EntryKind {
    fn flag(self) -> u8 {
        match self {
            EntryKind::File => b'0',
            EntryKind::HardLink => b'1',
            EntryKind::Symlink => b'2',
            EntryKind::Char => b'3',
            EntryKind::Block => b'4',
            EntryKind::Dir => b'5',
            EntryKind::Fifo => b'6',
        }
    }
}

/// One tar entry, written exactly as given (no path cleaning: hostile names are allowed).
#[derive(Debug, Clone)]
pub struct Entry {
    /// Kind.
    pub kind: EntryKind,
    /// Path as stored (`bin/sh`, `../../x`, `/etc/passwd`, ...).
    pub path: String,
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Content (regular files).
    pub data: Vec<u8>,
    /// Link target (hard links and symlinks).
    pub link: String,
    /// Device numbers (devices).
    pub dev: (u32, u32),
    /// PAX extended records (`SCHILY.xattr.user.x` = value, ...).
    pub pax: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// An entry of `kind` at `path` with mode `mode`, owned by root, empty.
    pub fn new(kind: EntryKind, path: &str, mode: u32) -> Entry {
        Entry {
            kind,
            path: path.into(),
            mode,
            uid: 0,
            gid: 0,
            data: Vec::new(),
            link: String::new(),
            dev: (0, 0),
            pax: Vec::new(),
        }
    }
}

/// A ustar/PAX tar writer (see the module doc for why it is hand-written).
#[derive(Debug, Default)]
pub struct TarBuilder {
    out: Vec<u8>,
}

/// mtime of every entry (2026-01-01T00:00:00Z), for reproducible digests.
pub const TAR_MTIME: u64 = 1_767_225_600;

impl TarBuilder {
    /// An empty archive.
    pub fn new() -> TarBuilder {
        TarBuilder::default()
    }

    /// A directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.append(Entry::new(EntryKind::Dir, path, mode))
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        let mut e = Entry::new(EntryKind::File, path, mode);
        e.data = data.to_vec();
        self.append(e)
    }

    /// A symlink `path -> target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut e = Entry::new(EntryKind::Symlink, path, 0o777);
        e.link = target.into();
        self.append(e)
    }

    /// A hard link `path` to the earlier entry `target`.
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut e = Entry::new(EntryKind::HardLink, path, 0o644);
        e.link = target.into();
        self.append(e)
    }

    /// Append any entry; names or link targets too long for ustar get a PAX header.
    pub fn append(&mut self, e: Entry) -> &mut Self {
        let mut pax = e.pax.clone();
        let (prefix, name) = split_ustar_name(&e.path).unwrap_or_else(|| {
            pax.push(("path".into(), e.path.clone().into_bytes()));
            (String::new(), truncate(&e.path, 100))
        });
        let link = if e.link.len() > 100 {
            pax.push(("linkpath".into(), e.link.clone().into_bytes()));
            truncate(&e.link, 100)
        } else {
            e.link.clone()
        };
        if !pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in &pax {
                body.extend(pax_record(k, v));
            }
            let mut h = header(
                b'x',
                &truncate(
                    &format!("PaxHeaders/{}", e.path.trim_start_matches('/')),
                    100,
                ),
                "",
                0o644,
                (0, 0),
                body.len() as u64,
                "",
                (0, 0),
            );
            checksum(&mut h);
            self.out.extend_from_slice(&h);
            self.push_data(&body);
        }
        let size = if e.kind == EntryKind::File {
            e.data.len() as u64
        } else {
            0
        };
        let mut h = header(
            e.kind.flag(),
            &name,
            &prefix,
            e.mode,
            (e.uid, e.gid),
            size,
            &link,
            e.dev,
        );
        checksum(&mut h);
        self.out.extend_from_slice(&h);
        if e.kind == EntryKind::File {
            self.push_data(&e.data);
        }
        self
    }

    /// Append raw bytes (for deliberately broken archives).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    fn push_data(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }

    /// The archive with its two zero end blocks.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Split into ustar (prefix <= 155, name <= 100) at a '/', if possible.
fn split_ustar_name(path: &str) -> Option<(String, String)> {
    if path.len() <= 100 {
        return Some((String::new(), path.into()));
    }
    let bytes = path.as_bytes();
    (0..bytes.len())
        .filter(|&i| bytes[i] == b'/' && i <= 155 && bytes.len() - i - 1 <= 100 && i > 0)
        .map(|i| (path[..i].to_string(), path[i + 1..].to_string()))
        .next()
}

/// A PAX record: `"<len> <key>=<value>\n"`, where len counts the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    let s = s.as_bytes();
    let start = s.len().saturating_sub(width);
    field[..width].copy_from_slice(&s[start..]);
    field[width] = 0;
}

#[allow(clippy::too_many_arguments)]
fn header(
    flag: u8,
    name: &str,
    prefix: &str,
    mode: u32,
    owner: (u32, u32),
    size: u64,
    link: &str,
    dev: (u32, u32),
) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], u64::from(owner.0));
    octal(&mut h[116..124], u64::from(owner.1));
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], TAR_MTIME);
    h[156] = flag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let (uname, gname) = if owner == (0, 0) {
        ("root", "root")
    } else {
        ("", "")
    };
    h[265..265 + uname.len()].copy_from_slice(uname.as_bytes());
    h[297..297 + gname.len()].copy_from_slice(gname.as_bytes());
    octal(&mut h[329..337], u64::from(dev.0));
    octal(&mut h[337..345], u64::from(dev.1));
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// CRC-32 (IEEE, as gzip uses it).
pub fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// `data` as a gzip member made of stored deflate blocks (no compression).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    let mut chunks = data.chunks(65_535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        out.push(u8::from(last));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn crc32_matches_the_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("path", b"a");
        assert_eq!(r, b"9 path=a\n");
        let long = vec![b'x'; 95];
        let r = pax_record("path", &long);
        let len: usize =
            String::from_utf8_lossy(&r[..r.iter().position(|&b| b == b' ').unwrap_or(0)])
                .parse()
                .unwrap_or(0);
        assert_eq!(len, r.len());
    }

    #[test]
    fn host_tar_and_gzip_read_our_archive() {
        let (Some(tar), Some(_)) = (crate::find_tool("tar"), crate::find_tool("gzip")) else {
            return;
        };
        let dir = crate::TestDir::new("oci-tar-unit");
        let long = format!("{}/f", "d".repeat(120));
        let mut t = TarBuilder::new();
        t.dir("a", 0o755)
            .file("a/f", 0o644, b"hello")
            .symlink("a/l", "f")
            .hardlink("a/h", "a/f")
            .file(&long, 0o600, b"x");
        let archive = gzip(&t.finish());
        std::fs::write(dir.join("l.tgz"), archive).expect("write");
        let out = std::process::Command::new(tar)
            .arg("-xzf")
            .arg(dir.join("l.tgz"))
            .arg("-C")
            .arg(dir.path())
            .output()
            .expect("tar");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(dir.join("a/f")).expect("a/f"), b"hello");
        assert_eq!(std::fs::read(dir.join("a/h")).expect("a/h"), b"hello");
        assert_eq!(
            std::fs::read_link(dir.join("a/l")).expect("a/l"),
            PathBuf::from("f")
        );
        assert_eq!(std::fs::read(dir.join(&long)).expect("long"), b"x");
    }
}
