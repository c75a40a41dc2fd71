//! The event journal: every event the shim emits gets `seq = last + 1`, is appended to
//! `<bundle>/events.log` and fsynced BEFORE any stream sees it, and stays there until
//! berthd acks it (`Ack(seq)` is cumulative). The acked seq lives in `<bundle>/events.ack`;
//! an ack compacts the log (rewritten through a temp file and rename).
//!
//! Format: frames of a little-endian u32 length and a prost-encoded `Event`. A torn tail
//! (crash mid-append) is ignored on load. This module must never drop an unacked event.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use berth_proto::shim::journal::{decode_frames, encode_frame, ACK_FILE, LOG_FILE};
use berth_proto::shim::{event::Kind, Event};
use prost::Message;
use tokio::sync::watch;

use crate::error::{Error, Result};

struct Inner {
    /// Unacked events, in seq order.
    events: VecDeque<Event>,
    /// Highest seq given out so far.
    last: u64,
    /// Highest seq acked.
    acked: u64,
    log: File,
}

/// Handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Mutex<Inner>>,
    /// Publishes the last seq so live streams wake up.
    last_tx: Arc<watch::Sender<u64>>,
    log_path: PathBuf,
    ack_path: PathBuf,
}

/// Write `data` to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(|e| Error::path("creating", &tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_data())
        .map_err(|e| Error::path("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::path("renaming to", path, e))
}

impl Journal {
    /// Open (or create) the journal of a bundle, continuing its seqs.
    pub fn open(bundle: &Path) -> Result<Self> {
        let log_path = bundle.join(LOG_FILE);
        let ack_path = bundle.join(ACK_FILE);
        let acked = std::fs::read_to_string(&ack_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut buf = Vec::new();
        if let Ok(mut f) = File::open(&log_path) {
            f.read_to_end(&mut buf)
                .map_err(|e| Error::path("reading", &log_path, e))?;
        }
        let events: VecDeque<Event> = decode_frames(&buf)
            .into_iter()
            .filter(|e| e.seq > acked)
            .collect();
        let last = events.back().map(|e| e.seq).unwrap_or(0).max(acked);
        // Rewrite without a torn tail or acked events, so appends start on a frame boundary.
        let mut clean = Vec::new();
        for ev in &events {
            encode_frame(ev, &mut clean);
        }
        if clean.len() != buf.len() {
            write_atomic(&log_path, &clean)?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::path("opening", &log_path, e))?;
        let (last_tx, _) = watch::channel(last);
        Ok(Journal {
            inner: Arc::new(Mutex::new(Inner {
                events,
                last,
                acked,
                log,
            })),
            last_tx: Arc::new(last_tx),
            log_path,
            ack_path,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Journal an event durably, then publish it to the streams. Returns its seq.
    pub fn emit(&self, kind: Kind) -> Result<u64> {
        let seq = {
            let mut inner = self.lock();
            let ev = Event {
                seq: inner.last + 1,
                timestamp: Some(crate::log::timestamp(SystemTime::now())),
                kind: Some(kind),
            };
            let mut buf = Vec::with_capacity(ev.encoded_len() + 4);
            encode_frame(&ev, &mut buf);
            inner
                .log
                .write_all(&buf)
                .and_then(|_| inner.log.sync_data())
                .map_err(|e| Error::path("appending to", &self.log_path, e))?;
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

    /// Record that everything up to `seq` is safe with berthd, and compact.
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
        write_atomic(&self.ack_path, seq.to_string().as_bytes())?;
        inner.acked = seq;
        while inner.events.front().is_some_and(|e| e.seq <= seq) {
            inner.events.pop_front();
        }
        let mut buf = Vec::new();
        for ev in &inner.events {
            encode_frame(ev, &mut buf);
        }
        write_atomic(&self.log_path, &buf)?;
        inner.log = OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .map_err(|e| Error::path("opening", &self.log_path, e))?;
        Ok(())
    }
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
        // A torn frame at the end is ignored.
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.join("events.log"))
            .expect("log");
        f.write_all(&[50, 0, 0, 0, 1, 2]).expect("tear");
        drop(f);
        let j = Journal::open(&d).expect("reopen");
        let evs = j.since(0, 10);
        assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
        assert_eq!(j.emit(Kind::Oom(TaskOom {})).expect("emit"), 4);
        j.ack(4).expect("ack all");
        drop(j);
        let j = Journal::open(&d).expect("reopen empty");
        assert!(j.since(0, 10).is_empty());
        assert_eq!(j.emit(Kind::Oom(TaskOom {})).expect("emit"), 5);
        let _ = std::fs::remove_dir_all(&d);
    }
}
