//! The event journal: every event the shim emits gets `seq = last + 1` and is appended to `<bundle>/events.log`
//! BEFORE any stream sees it; it stays there until berthd acks it (`Ack(seq)` is cumulative, appended to the
//! same log as an ack record). Format and reader: `berth_proto::shim::journal` (checksummed frames).
//!
//! Nothing here is fsynced. The journal only has to survive crashes of the shim and of berthd: the page cache
//! outlives both, and after a kernel crash no container or shim survives. A crash mid-append leaves at most
//! one torn frame at the end; [`Journal::open`] cuts it off (and stops at a frame that fails its checksum,
//! keeping what came before). The log is compacted (rewritten through a temp file and an atomic rename) when
//! it has grown past [`COMPACT_BYTES`] and on open. This module must never drop an unacked event.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use berth_proto::shim::journal::{self as format, ACK_FILE, LOG_FILE};
use berth_proto::shim::{event::Kind, Event};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// The log is compacted (acked events dropped) once it is this large.
pub const COMPACT_BYTES: u64 = 64 << 10;

struct Inner {
    /// Unacked events, in seq order.
    events: VecDeque<Event>,
    /// Highest seq given out so far.
    last: u64,
    /// Highest seq acked.
    acked: u64,
    log: File,
    /// Bytes in the log file.
    size: u64,
}

/// Handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Mutex<Inner>>,
    /// Publishes the last seq so live streams wake up.
    last_tx: Arc<watch::Sender<u64>>,
    log_path: PathBuf,
}

/// Replace `path` with `data` atomically against crashes of this process (temp file, then rename; no fsync:
/// the files a shim writes only have to outlive processes, not the kernel).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(|e| Error::path("creating", &tmp, e))?;
    f.write_all(data)
        .map_err(|e| Error::path("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::path("renaming to", path, e))
}

impl Journal {
    /// Open (or create) the journal of a bundle, continuing its seqs; a torn or corrupt tail is cut off.
    pub fn open(bundle: &Path) -> Result<Self> {
        let log_path = bundle.join(LOG_FILE);
        let ack_path = bundle.join(ACK_FILE);
        let legacy_ack = std::fs::read_to_string(&ack_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let buf = match std::fs::read(&log_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::path("reading", &log_path, e)),
        };
        let contents = format::read(&buf);
        if let Some(damage) = &contents.damage {
            crate::log!(
                "event journal {}: {damage}; keeping the {} events before it",
                log_path.display(),
                contents.events.len()
            );
        }
        let acked = contents.acked.max(legacy_ack);
        let mut events: VecDeque<Event> = contents
            .events
            .into_iter()
            .filter(|e| e.seq > acked)
            .collect();
        let last = events.back().map(|e| e.seq).unwrap_or(0).max(acked);
        // Rewrite without a damaged tail or acked events, so appends start on a frame boundary.
        let clean = format::encode_file(acked, events.make_contiguous());
        write_atomic(&log_path, &clean)?;
        if legacy_ack > 0 {
            let _ = std::fs::remove_file(&ack_path);
        }
        let log = open_append(&log_path)?;
        let (last_tx, _) = watch::channel(last);
        Ok(Journal {
            inner: Arc::new(Mutex::new(Inner {
                events,
                last,
                acked,
                log,
                size: clean.len() as u64,
            })),
            last_tx: Arc::new(last_tx),
            log_path,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append `buf` to the log in one write; on a failed write, cut the log back so it ends on a frame.
    fn append(&self, inner: &mut Inner, buf: &[u8]) -> Result<()> {
        if let Err(e) = inner.log.write_all(buf) {
            let _ = inner.log.set_len(inner.size);
            return Err(Error::path("appending to", &self.log_path, e));
        }
        inner.size += buf.len() as u64;
        Ok(())
    }

    /// Journal an event (in the page cache before it returns), then publish it to the streams. Returns its seq.
    pub fn emit(&self, kind: Kind) -> Result<u64> {
        let seq = {
            let mut inner = self.lock();
            let ev = Event {
                seq: inner.last + 1,
                timestamp: Some(crate::log::timestamp(SystemTime::now())),
                kind: Some(kind),
            };
            let mut buf = Vec::with_capacity(64);
            format::encode_event(&ev, &mut buf);
            self.append(&mut inner, &buf)?;
            inner.last = ev.seq;
            inner.events.push_back(ev);
            inner.last
        };
        self.last_tx.send_replace(seq);
        Ok(seq)
    }

    /// Journaled events with seq > `after`, at most `max`.
    pub fn since(&self, after: u64, max: usize) -> Vec<Event> {
        let inner = self.lock();
        inner
            .events
            .iter()
            .filter(|e| e.seq > after)
            .take(max)
            .cloned()
            .collect()
    }

    /// A receiver that changes whenever a new event is journaled.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last_tx.subscribe()
    }

    /// Highest seq given out so far.
    pub fn last_seq(&self) -> u64 {
        self.lock().last
    }

    /// Record that everything up to `seq` is safe with berthd (an ack record), compacting a large log.
    pub fn ack(&self, seq: u64) -> Result<()> {
        let mut inner = self.lock();
        if seq > inner.last {
            return Err(Error::InvalidArgument(format!(
                "ack {seq} is beyond the last event {}",
                inner.last
            )));
        }
        if seq <= inner.acked {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(32);
        format::encode_ack(seq, &mut buf);
        self.append(&mut inner, &buf)?;
        inner.acked = seq;
        while inner.events.front().is_some_and(|e| e.seq <= seq) {
            inner.events.pop_front();
        }
        if inner.size >= COMPACT_BYTES {
            let clean = format::encode_file(inner.acked, inner.events.make_contiguous());
            write_atomic(&self.log_path, &clean)?;
            inner.log = open_append(&self.log_path)?;
            inner.size = clean.len() as u64;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::path("opening", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::shim::{TaskOom, TaskStarted};

    fn tmpdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("berth-shim-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmpdir");
        d
    }

    fn seqs(j: &Journal) -> Vec<u64> {
        j.since(0, 100).iter().map(|e| e.seq).collect()
    }

    #[test]
    fn seqs_survive_reopen_ack_and_torn_tail() {
        let d = tmpdir("reopen");
        let j = Journal::open(&d).expect("open");
        for pid in 1..=3 {
            j.emit(Kind::Started(TaskStarted { pid })).expect("emit");
        }
        assert_eq!(j.since(1, 10).len(), 2);
        j.ack(2).expect("ack");
        assert!(j.ack(9).is_err());
        drop(j);
        // A torn frame at the end is cut off.
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.join("events.log"))
            .expect("log");
        f.write_all(&[50, 0, 0, 0, 1, 2]).expect("tear");
        drop(f);
        let j = Journal::open(&d).expect("reopen");
        assert_eq!(seqs(&j), vec![3]);
        assert_eq!(j.emit(Kind::Oom(TaskOom {})).expect("emit"), 4);
        j.ack(4).expect("ack all");
        drop(j);
        let j = Journal::open(&d).expect("reopen empty");
        assert!(j.since(0, 10).is_empty());
        assert_eq!(j.emit(Kind::Oom(TaskOom {})).expect("emit"), 5);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A record whose checksum fails ends what is read: the events before it are kept, seqs continue after
    /// them, and what berthd reads from the file agrees.
    #[test]
    fn corrupt_record_stops_the_journal_at_the_last_good_one() {
        let d = tmpdir("corrupt");
        let j = Journal::open(&d).expect("open");
        for pid in 1..=3 {
            j.emit(Kind::Started(TaskStarted { pid })).expect("emit");
        }
        drop(j);
        let log = d.join(LOG_FILE);
        let mut bytes = std::fs::read(&log).expect("read");
        let n = bytes.len();
        // The last byte belongs to event 3's payload.
        bytes[n - 1] ^= 0xff;
        std::fs::write(&log, &bytes).expect("corrupt");
        let seen: Vec<u64> = format::decode_frames(&bytes)
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seen, vec![1, 2]);
        let j = Journal::open(&d).expect("reopen");
        assert_eq!(seqs(&j), vec![1, 2]);
        assert_eq!(j.emit(Kind::Oom(TaskOom {})).expect("emit"), 3);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Acks are appended; past COMPACT_BYTES the log is rewritten with only the unacked events, and a reopen
    /// continues the seqs even when nothing is left unacked.
    #[test]
    fn log_is_compacted_and_bounded() {
        let d = tmpdir("compact");
        let j = Journal::open(&d).expect("open");
        for i in 1..=20_000u64 {
            let seq = j.emit(Kind::Started(TaskStarted { pid: 7 })).expect("emit");
            assert_eq!(seq, i);
            j.ack(seq).expect("ack");
            let size = std::fs::metadata(d.join(LOG_FILE)).expect("stat").len();
            assert!(size < COMPACT_BYTES + 64, "log grew to {size}");
        }
        j.emit(Kind::Oom(TaskOom {})).expect("emit");
        drop(j);
        let j = Journal::open(&d).expect("reopen");
        assert_eq!(seqs(&j), vec![20_001]);
        assert_eq!(j.last_seq(), 20_001);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// An older shim's journal (bare frames, the ack in events.ack) is taken over.
    #[test]
    fn older_format_is_taken_over() {
        use prost::Message;
        let d = tmpdir("legacy");
        let mut buf = Vec::new();
        for seq in 1..=3u64 {
            let e = Event {
                seq,
                timestamp: None,
                kind: Some(Kind::Oom(TaskOom {})),
            };
            buf.extend_from_slice(&(e.encoded_len() as u32).to_le_bytes());
            e.encode(&mut buf).expect("encode");
        }
        std::fs::write(d.join(LOG_FILE), &buf).expect("write");
        std::fs::write(d.join(ACK_FILE), "2").expect("ack");
        let j = Journal::open(&d).expect("open");
        assert_eq!(seqs(&j), vec![3]);
        assert!(!d.join(ACK_FILE).exists());
        assert_eq!(j.emit(Kind::Oom(TaskOom {})).expect("emit"), 4);
        let _ = std::fs::remove_dir_all(&d);
    }
}
