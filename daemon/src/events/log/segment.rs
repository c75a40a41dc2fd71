//! The journal's segment files as readers see them: `<dir>/<base, 20 digits>.log`, each holding the events
//! after `base` up to the next segment's base. The writer thread publishes how many bytes of each segment are
//! complete ([`Segment::committed`]); readers never read past that, so they never meet a half-written record.
//! A sparse index (one offset per [`INDEX_EVERY`] events, filled in by whoever scans a segment first) lets a
//! replay start near its cursor instead of at the segment's head.
//!
//! This module must never return an event whose record failed its checksum, and never read past `committed`.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use berth_proto::berth::JournalEvent;
use berth_proto::frame;
use prost::Message;

use super::record::{Record, MAGIC};
use crate::store::StoreError;

/// One index entry per this many events.
const INDEX_EVERY: u64 = 256;

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Seq of the last event before this segment.
    pub base: u64,
    pub path: PathBuf,
    /// Bytes known complete (the file's length for a closed segment).
    pub committed: AtomicU64,
    /// (seq, offset of its record), ascending, sparse.
    index: Mutex<Vec<(u64, u64)>>,
}

impl Segment {
    pub(crate) fn new(base: u64, path: PathBuf, committed: u64) -> Segment {
        Segment {
            base,
            path,
            committed: AtomicU64::new(committed),
            index: Mutex::new(Vec::new()),
        }
    }

    /// The file name of the segment after `base`.
    pub(crate) fn file_name(base: u64) -> String {
        format!("{base:020}.log")
    }

    /// The base a segment file name stands for.
    pub(crate) fn parse_name(name: &str) -> Option<u64> {
        let digits = name.strip_suffix(".log")?;
        (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    }

    /// Where to start reading for events after `after`: the closest indexed record at or before it.
    fn start_for(&self, after: u64) -> u64 {
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let i = index.partition_point(|(seq, _)| *seq <= after + 1);
        if i == 0 {
            MAGIC.len() as u64
        } else {
            index[i - 1].1
        }
    }

    fn note(&self, seq: u64, offset: u64) {
        if seq % INDEX_EVERY != 1 {
            return;
        }
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        if index.last().is_none_or(|(s, _)| *s < seq) {
            index.push((seq, offset));
        }
    }

    /// Events with `after < seq <= upto` from this segment, appended to `out` until it holds `limit`.
    fn read_into(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
        out: &mut Vec<JournalEvent>,
    ) -> Result<(), StoreError> {
        let committed = self.committed.load(Ordering::Acquire);
        let file = match File::open(&self.path) {
            Ok(f) => f,
            // Trimmed under us: the caller sees the gap (the replay reports OUT_OF_RANGE).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("opening", &self.path, e)),
        };
        let mut at = self.start_for(after);
        let mut r = BufReader::with_capacity(64 << 10, file);
        r.seek(SeekFrom::Start(at))
            .map_err(|e| io_err("seeking in", &self.path, e))?;
        let mut head = [0u8; frame::HEADER];
        let mut payload = Vec::new();
        while at + frame::HEADER as u64 <= committed && out.len() < limit {
            r.read_exact(&mut head)
                .map_err(|e| io_err("reading", &self.path, e))?;
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64;
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            if len > frame::MAX_PAYLOAD as u64 || at + frame::HEADER as u64 + len > committed {
                return Err(self.corrupt(at, "bad record length"));
            }
            payload.resize(len as usize, 0);
            r.read_exact(&mut payload)
                .map_err(|e| io_err("reading", &self.path, e))?;
            if frame::crc32c(&payload) != crc {
                return Err(self.corrupt(at, "checksum mismatch"));
            }
            let rec =
                Record::decode(payload.as_slice()).map_err(|e| self.corrupt(at, &e.to_string()))?;
            if let Some(ev) = rec.event {
                self.note(ev.seq, at);
                if ev.seq > upto {
                    return Ok(());
                }
                if ev.seq > after {
                    out.push(ev);
                }
            }
            at += frame::HEADER as u64 + len;
        }
        Ok(())
    }

    fn corrupt(&self, at: u64, what: &str) -> StoreError {
        StoreError::Corrupt(format!(
            "event journal segment {} at offset {at}: {what}",
            self.path.display()
        ))
    }
}

/// An I/O error on a journal file.
pub(crate) fn io_err(what: &'static str, path: &Path, source: std::io::Error) -> StoreError {
    StoreError::JournalIo {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What readers share with the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Segments, oldest first; the last one is being appended to.
    pub segments: RwLock<Vec<Arc<Segment>>>,
    /// Highest seq written (complete on disk).
    pub last: AtomicU64,
    /// Events kept (cursors before `last - retention` are out of range even while their segment exists); 0
    /// until the event bus sets it: keep everything.
    pub retention: AtomicU64,
}

impl Shared {
    pub(crate) fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Highest seq no longer kept: the oldest segment's base, or `last - retention` if that is higher.
    pub(crate) fn floor(&self) -> u64 {
        let oldest = self
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .map(|s| s.base)
            .unwrap_or(0);
        let last = self.last.load(Ordering::Acquire);
        match self.retention.load(Ordering::Acquire) {
            0 => oldest,
            retention => oldest.max(last.saturating_sub(retention)),
        }
    }

    /// Up to `limit` events with `after < seq <= upto`, in order (blocking).
    pub(crate) fn read(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<JournalEvent>, StoreError> {
        let mut out = Vec::new();
        if after >= upto || limit == 0 {
            return Ok(out);
        }
        let segs = self.segments();
        // The segment holding seq `after + 1`: the last one whose base is at or below `after`.
        let first = segs.partition_point(|s| s.base <= after).saturating_sub(1);
        for seg in &segs[first..] {
            if seg.base >= upto || out.len() >= limit {
                break;
            }
            seg.read_into(after, upto, limit, &mut out)?;
        }
        Ok(out)
    }
}
