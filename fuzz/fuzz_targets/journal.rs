//! The shim's event journal (`berth_proto::shim_journal`, framed by `berth_proto::frame`): berthd reads it
//! after a shim died, so it must never panic, never return an event past a torn or corrupt frame, and never
//! invent one. Two modes, picked by the first byte:
//! - raw: the rest is a journal file as found on disk (either format); reading it must not panic, `end` stays
//!   inside the buffer, and re-reading the good prefix `[..end]` gives the same events and ack.
//! - built: the rest drives a writer (events with fuzzed fields, acks), then one fault is applied (cut at an
//!   offset, flip one byte, or append garbage); what is read back must be a prefix of what was written (a
//!   flipped byte inside a frame is caught by its CRC-32C), and with no fault exactly what was written.
#![no_main]

use berth_proto::shim::journal;
use berth_proto::shim::{event, Event, TaskExited};
use libfuzzer_sys::fuzz_target;

fn raw(buf: &[u8]) {
    let c = journal::read(buf);
    assert!(c.end <= buf.len(), "end {} past {} bytes", c.end, buf.len());
    if c.damage.is_none() {
        assert_eq!(c.end, buf.len(), "clean read stopped early");
    }
    let again = journal::read(&buf[..c.end]);
    assert_eq!(again.events, c.events, "good prefix reads differently");
    assert_eq!(again.acked, c.acked);
    assert!(again.damage.is_none() || c.legacy, "good prefix is damaged: {:?}", again.damage);
    let pending = journal::decode_frames(buf);
    assert!(pending.iter().all(|e| e.seq > c.acked));
}

/// A little reader of fuzz bytes (zero once exhausted).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let Some((b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        *b
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

fn built(data: &[u8]) {
    let mut r = Bytes(data);
    let mut buf = journal::MAGIC.to_vec();
    let mut written: Vec<Event> = Vec::new();
    let mut ends = vec![buf.len()];
    let ops = r.u8() % 32;
    for seq in 1..=u64::from(ops) {
        if r.u8() % 4 == 0 {
            journal::encode_ack(u64::from(r.u8()), &mut buf);
        } else {
            let id_len = usize::from(r.u8() % 64);
            let id: String = (0..id_len).map(|_| char::from(b'a' + r.u8() % 26)).collect();
            let ev = Event {
                seq,
                timestamp: None,
                kind: Some(event::Kind::Exited(TaskExited {
                    exec_id: id,
                    pid: r.u32(),
                    exit_status: r.u32(),
                    ..Default::default()
                })),
            };
            journal::encode_event(&ev, &mut buf);
            written.push(ev);
        }
        ends.push(buf.len());
    }
    let whole = journal::read(&buf);
    assert!(whole.damage.is_none(), "clean journal damaged: {:?}", whole.damage);
    assert_eq!(whole.events, written, "clean journal reads differently");
    assert_eq!(whole.end, buf.len());

    let fault = r.u8() % 3;
    let at = if buf.len() > journal::MAGIC.len() {
        journal::MAGIC.len() + (r.u32() as usize) % (buf.len() - journal::MAGIC.len())
    } else {
        return;
    };
    let mut bad = buf.clone();
    match fault {
        0 => bad.truncate(at),
        1 => bad[at] ^= r.u8() | 1,
        _ => bad.extend_from_slice(r.0),
    }
    let got = journal::read(&bad);
    let n = got.events.len().min(written.len());
    assert_eq!(got.events[..n], written[..n], "fault {fault} at {at}: events differ from those written");
    if fault != 2 {
        assert!(got.events.len() <= written.len(), "fault {fault} at {at}: an event was invented");
        // Only frames wholly before the fault survive it, and all of them do.
        let intact = ends.iter().filter(|&&e| e <= at).count() - 1;
        assert_eq!(got.end, ends[intact], "fault {fault} at {at}: good part ends elsewhere");
    } else {
        // Garbage may only add frames that pass their checksum; it never hides good ones.
        assert!(got.end >= buf.len(), "appended bytes hid good frames");
        assert!(got.events.len() >= written.len());
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((m, rest)) if m % 2 == 0 => raw(rest),
        Some((_, rest)) => built(rest),
        None => {}
    }
});
