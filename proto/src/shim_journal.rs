//! The shim's on-disk event journal, `<bundle>/events.log`: the shim writes it; berthd reads what a dead shim
//! journaled but never got acked.
//!
//! Format: the 8 bytes [`MAGIC`], then [`crate::frame`]s (length, CRC-32C, payload). A payload is one tag byte
//! and a body: [`TAG_EVENT`] + a prost-encoded [`Event`], or [`TAG_ACK`] + the u64 LE seq berthd acked
//! (cumulative). The file is appended to and never fsynced: it has to survive crashes of the shim and of
//! berthd, not of the kernel (no shim survives a reboot). A file without the magic is the older format (bare
//! u32 length + Event frames, the ack in [`ACK_FILE`]); it is read the same way.
//!
//! This module must never return an event from past a torn or corrupt frame.

use prost::Message;

use super::shim::Event;
use crate::frame;

/// The journal's file name in the bundle.
pub const LOG_FILE: &str = "events.log";
/// The acked seq as older shims kept it (read once, then folded into the log).
pub const ACK_FILE: &str = "events.ack";
/// Written by the shim right after it journaled TaskDeleted: the container is deleted, the shim's
/// work is done. berthd finishes a delete it was interrupted in when it finds this file.
pub const DELETED_MARKER: &str = "init.deleted";

/// First bytes of a log in this format.
pub const MAGIC: &[u8; 8] = b"BSHEVT2\n";
/// Payload tag: an event.
pub const TAG_EVENT: u8 = 1;
/// Payload tag: everything up to this seq is acked.
pub const TAG_ACK: u8 = 2;

/// What a journal file holds.
#[derive(Debug, Default)]
pub struct Contents {
    /// Every complete event, in order (acked ones included).
    pub events: Vec<Event>,
    /// Highest acked seq recorded in the file.
    pub acked: u64,
    /// Offset just past the last good frame.
    pub end: usize,
    /// Whether something other than a clean end followed (a torn or corrupt frame): the reason.
    pub damage: Option<String>,
    /// The file is in the older, unchecksummed format.
    pub legacy: bool,
}

/// Parse a journal file's bytes, stopping at the first torn or corrupt frame.
pub fn read(buf: &[u8]) -> Contents {
    let Some(body) = buf.strip_prefix(MAGIC.as_slice()) else {
        return read_legacy(buf);
    };
    let mut out = Contents::default();
    let scan = frame::scan(body);
    out.end = MAGIC.len() + scan.end;
    for (at, payload) in scan.frames {
        let bad = |what: &str| Some(format!("{what} at offset {}", MAGIC.len() + at));
        match payload.split_first() {
            Some((&TAG_EVENT, ev)) => match Event::decode(ev) {
                Ok(ev) => out.events.push(ev),
                Err(e) => {
                    out.damage = bad(&format!("undecodable event ({e})"));
                    out.end = MAGIC.len() + at;
                    return out;
                }
            },
            Some((&TAG_ACK, seq)) if seq.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(seq);
                out.acked = out.acked.max(u64::from_le_bytes(b));
            }
            _ => {
                out.damage = bad("unknown record");
                out.end = MAGIC.len() + at;
                return out;
            }
        }
    }
    out.damage = match scan.stop {
        frame::Stop::End => None,
        frame::Stop::Torn => Some(format!("torn record at offset {}", out.end)),
        frame::Stop::Corrupt => Some(format!("checksum mismatch at offset {}", out.end)),
    };
    out
}

/// The older format: bare `u32 LE length | Event` frames.
fn read_legacy(buf: &[u8]) -> Contents {
    let mut out = Contents {
        legacy: true,
        ..Contents::default()
    };
    let mut rest = buf;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(ev) = rest.get(4..4 + len).and_then(|b| Event::decode(b).ok()) else {
            break;
        };
        out.events.push(ev);
        rest = &rest[4 + len..];
        out.end = buf.len() - rest.len();
    }
    if out.end != buf.len() {
        out.damage = Some(format!("torn or undecodable record at offset {}", out.end));
    }
    out
}

/// The events berthd has not acked yet (seq above every ack in the file), up to the first bad frame.
pub fn decode_frames(buf: &[u8]) -> Vec<Event> {
    let c = read(buf);
    let acked = c.acked;
    c.events.into_iter().filter(|e| e.seq > acked).collect()
}

/// Append an event frame to `buf`.
pub fn encode_event(ev: &Event, buf: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(1 + ev.encoded_len());
    payload.push(TAG_EVENT);
    ev.encode(&mut payload).unwrap_or_default();
    frame::put(buf, &payload);
}

/// Append an ack frame to `buf`.
pub fn encode_ack(seq: u64, buf: &mut Vec<u8>) {
    let mut payload = [0u8; 9];
    payload[0] = TAG_ACK;
    payload[1..].copy_from_slice(&seq.to_le_bytes());
    frame::put(buf, &payload);
}

/// A whole journal file: the magic, the ack, then `events`.
pub fn encode_file(acked: u64, events: &[Event]) -> Vec<u8> {
    let mut buf = MAGIC.to_vec();
    encode_ack(acked, &mut buf);
    for ev in events {
        encode_event(ev, &mut buf);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::{event::Kind, TaskOom};

    fn ev(seq: u64) -> Event {
        Event {
            seq,
            timestamp: None,
            kind: Some(Kind::Oom(TaskOom {})),
        }
    }

    #[test]
    fn acks_torn_tails_and_checksums() {
        let mut buf = encode_file(1, &[ev(1), ev(2)]);
        encode_ack(2, &mut buf);
        encode_event(&ev(3), &mut buf);
        let good = buf.len();
        assert_eq!(decode_frames(&buf), vec![ev(3)]);
        encode_event(&ev(4), &mut buf);
        // Torn: every cut inside the last frame keeps 3 and says so.
        for cut in good + 1..buf.len() {
            let c = read(&buf[..cut]);
            assert_eq!(c.end, good);
            assert!(c.damage.as_deref().is_some_and(|d| d.contains("torn")));
            assert_eq!(decode_frames(&buf[..cut]), vec![ev(3)]);
        }
        // A flipped bit in 3's frame stops before it.
        let mut bad = buf.clone();
        bad[good - 1] ^= 0x40;
        let c = read(&bad);
        assert!(c.damage.as_deref().is_some_and(|d| d.contains("checksum")));
        assert!(decode_frames(&bad).is_empty());
    }

    #[test]
    fn reads_the_older_format() {
        let mut buf = Vec::new();
        for e in [ev(1), ev(2)] {
            buf.extend_from_slice(&(e.encoded_len() as u32).to_le_bytes());
            e.encode(&mut buf).expect("encode");
        }
        buf.extend_from_slice(&[9, 0, 0, 0, 1]);
        let c = read(&buf);
        assert!(c.legacy);
        assert_eq!(c.events, vec![ev(1), ev(2)]);
        assert!(c.damage.is_some());
    }
}
