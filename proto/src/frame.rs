//! Checksummed, length-framed records for Berth's fsync-free append-only logs (the shim's `events.log`,
//! berthd's event journal segments).
//!
//! A frame is `len: u32 LE | crc: u32 LE | payload[len]`, `crc` being CRC-32C (Castagnoli) of the payload.
//! The logs are never fsynced: they only have to survive PROCESS crashes (the page cache does), so a crash
//! mid-append leaves at most one torn frame at the end. [`scan`] returns every complete frame up to the first
//! one that is torn or fails its checksum, and says why it stopped, so a reader can cut the log there.
//!
//! This module must never hand out a payload whose checksum does not match.

/// Bytes before a frame's payload.
pub const HEADER: usize = 8;

/// Largest payload a frame may claim; a longer length is corruption, not a big record.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// The Castagnoli polynomial, reflected.
const POLY: u32 = 0x82F6_3B78;

/// Byte-at-a-time lookup table, built at compile time.
const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32C of `data` (records are a few hundred bytes: a table is fast enough and needs no dependency).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Append one frame holding `payload` to `buf`.
pub fn put(buf: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32c(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Why [`scan`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// At the end of the buffer, on a frame boundary.
    End,
    /// A frame runs past the end of the buffer (a crash mid-append).
    Torn,
    /// A complete frame whose checksum does not match, or whose length is absurd (corruption).
    Corrupt,
}

/// The outcome of [`scan`]: payloads with their frame offsets, where the good part ends and why.
#[derive(Debug)]
pub struct Scan<'a> {
    /// (offset of the frame, payload), in order.
    pub frames: Vec<(usize, &'a [u8])>,
    /// Offset just past the last good frame.
    pub end: usize,
    /// What was found at `end`.
    pub stop: Stop,
}

/// One frame at the start of `buf`: `Ok(Some((payload, frame length)))`, `Ok(None)` at the end, or why not.
pub fn next(buf: &[u8]) -> Result<Option<(&[u8], usize)>, Stop> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.len() < HEADER {
        return Err(Stop::Torn);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > MAX_PAYLOAD {
        return Err(Stop::Corrupt);
    }
    let Some(payload) = buf.get(HEADER..HEADER + len) else {
        return Err(Stop::Torn);
    };
    if crc32c(payload) != crc {
        return Err(Stop::Corrupt);
    }
    Ok(Some((payload, HEADER + len)))
}

/// Every good frame of `buf`, stopping at the first torn or corrupt one.
pub fn scan(buf: &[u8]) -> Scan<'_> {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        match next(&buf[at..]) {
            Ok(Some((payload, n))) => {
                frames.push((at, payload));
                at += n;
            }
            Ok(None) => {
                return Scan {
                    frames,
                    end: at,
                    stop: Stop::End,
                }
            }
            Err(stop) => {
                return Scan {
                    frames,
                    end: at,
                    stop,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answer() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn scan_stops_at_torn_and_corrupt_frames() {
        let mut buf = Vec::new();
        put(&mut buf, b"one");
        put(&mut buf, b"two");
        let whole = buf.len();
        let s = scan(&buf);
        assert_eq!(s.stop, Stop::End);
        assert_eq!(s.end, whole);
        assert_eq!(
            s.frames.iter().map(|f| f.1).collect::<Vec<_>>(),
            vec![b"one".as_slice(), b"two".as_slice()]
        );
        // Every strict prefix of the second frame is torn, never corrupt.
        for cut in whole - 10..whole {
            let s = scan(&buf[..cut]);
            assert_eq!((s.stop, s.frames.len(), s.end), (Stop::Torn, 1, 11));
        }
        // A flipped payload bit fails the checksum.
        let mut bad = buf.clone();
        bad[whole - 1] ^= 1;
        let s = scan(&bad);
        assert_eq!((s.stop, s.frames.len(), s.end), (Stop::Corrupt, 1, 11));
    }
}
