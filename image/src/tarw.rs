//! A small ustar/PAX tar writer for diffs and archive exports: PAX records for long names, long
//! link targets, big ids and sizes, and xattrs (`SCHILY.xattr.*`), as containerd writes them.
//!
//! Output is deterministic for a given input (no wall-clock times, no user/group names). It must
//! never write a header that does not describe exactly the data that follows.

use std::io::{self, Read, Write};

/// One entry's header.
#[derive(Debug, Clone, Default)]
pub struct TarHeader {
    /// Path inside the archive (directories get a trailing `/` here).
    pub path: Vec<u8>,
    /// Typeflag (`b'0'` file, `b'1'` hard link, `b'2'` symlink, `b'3'` char, `b'4'` block,
    /// `b'5'` dir, `b'6'` fifo).
    pub kind: u8,
    /// Permission bits incl. setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Data size (files only).
    pub size: u64,
    /// Modification time (seconds).
    pub mtime: i64,
    /// Link target (links).
    pub link: Vec<u8>,
    /// Device numbers.
    pub dev: (u64, u64),
    /// Extended attributes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Writes tar entries to `W`.
#[derive(Debug)]
pub struct TarWriter<W: Write> {
    w: W,
}

fn octal(field: &mut [u8], v: u64) -> bool {
    let width = field.len() - 1;
    let s = format!("{v:0width$o}");
    if s.len() > width {
        return false;
    }
    field[..width].copy_from_slice(s.as_bytes());
    field[width] = 0;
    true
}

fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Split into (prefix, name) for ustar when possible.
fn split_name(p: &[u8]) -> Option<(&[u8], &[u8])> {
    if p.len() <= 100 {
        return Some((&[], p));
    }
    (1..p.len().min(156))
        .rev()
        .filter(|&i| p[i] == b'/' && p.len() - i - 1 <= 100 && p.len() - i > 1)
        .map(|i| (&p[..i], &p[i + 1..]))
        .next()
}

fn block(kind: u8, name: &[u8], prefix: &[u8], h: &TarHeader, pax: &mut Vec<u8>) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    octal(&mut b[100..108], u64::from(h.mode & 0o7777));
    if !octal(&mut b[108..116], h.uid) {
        pax.extend(pax_record(b"uid", h.uid.to_string().as_bytes()));
        octal(&mut b[108..116], 0);
    }
    if !octal(&mut b[116..124], h.gid) {
        pax.extend(pax_record(b"gid", h.gid.to_string().as_bytes()));
        octal(&mut b[116..124], 0);
    }
    if !octal(&mut b[124..136], h.size) {
        pax.extend(pax_record(b"size", h.size.to_string().as_bytes()));
        octal(&mut b[124..136], 0);
    }
    if !octal(&mut b[136..148], u64::try_from(h.mtime).unwrap_or(0)) {
        pax.extend(pax_record(b"mtime", h.mtime.to_string().as_bytes()));
        octal(&mut b[136..148], 0);
    }
    b[156] = kind;
    let link = &h.link[..h.link.len().min(100)];
    b[157..157 + link.len()].copy_from_slice(link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], h.dev.0);
    octal(&mut b[337..345], h.dev.1);
    b[345..345 + prefix.len()].copy_from_slice(prefix);
    b
}

fn checksum(b: &mut [u8; 512]) {
    b[148..156].copy_from_slice(b"        ");
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
}

impl<W: Write> TarWriter<W> {
    /// A writer on `w`.
    pub fn new(w: W) -> Self {
        TarWriter { w }
    }

    fn pad(&mut self, n: u64) -> io::Result<()> {
        let pad = ((512 - n % 512) % 512) as usize;
        self.w.write_all(&[0u8; 512][..pad])
    }

    /// Append an entry; `data` must yield exactly `h.size` bytes.
    pub fn append(&mut self, h: &TarHeader, data: Option<&mut dyn Read>) -> io::Result<()> {
        let mut pax = Vec::new();
        let (prefix, name) = match split_name(&h.path) {
            Some(x) => x,
            None => {
                pax.extend(pax_record(b"path", &h.path));
                (&[][..], &h.path[..h.path.len().min(100)])
            }
        };
        if h.link.len() > 100 {
            pax.extend(pax_record(b"linkpath", &h.link));
        }
        for (k, v) in &h.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax.extend(pax_record(&key, v));
        }
        let mut main = block(h.kind, name, prefix, h, &mut pax);
        if !pax.is_empty() {
            let ph = TarHeader {
                mode: 0o644,
                size: pax.len() as u64,
                ..Default::default()
            };
            let mut pname = b"PaxHeaders.0/".to_vec();
            let base = h
                .path
                .rsplit(|&c| c == b'/')
                .find(|s| !s.is_empty())
                .unwrap_or(b"x");
            pname.extend_from_slice(&base[..base.len().min(80)]);
            let mut none = Vec::new();
            let mut pb = block(b'x', &pname, &[], &ph, &mut none);
            checksum(&mut pb);
            self.w.write_all(&pb)?;
            self.w.write_all(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        checksum(&mut main);
        self.w.write_all(&main)?;
        if let Some(r) = data {
            let n = io::copy(&mut r.take(h.size), &mut self.w)?;
            if n != h.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{}: file shrank while archiving ({n} of {} bytes)",
                        String::from_utf8_lossy(&h.path),
                        h.size
                    ),
                ));
            }
            self.pad(h.size)?;
        }
        Ok(())
    }

    /// Write the two end-of-archive blocks and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.w.write_all(&[0u8; 1024])?;
        self.w.flush()?;
        Ok(self.w)
    }
}
