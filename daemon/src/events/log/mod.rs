//! berthd's event journal on disk: an append-only, checksummed, length-framed log in segment files under
//! `<state>/events/`, never fsynced. It only has to survive crashes of berthd (the page cache outlives a
//! process); after a kernel crash or a reboot no container or shim survives, and a journal written under
//! another boot is set aside like a wiped state dir (seqs still go on above meta.redb's reserved mark).
//!
//! One [`Log`] is owned by the journal's writer thread. A batch of records goes to the active segment in one
//! `write`; a record holds an event together with the shim seq and once-marker it consumes, so after a
//! SIGKILL at any point a reopen finds complete records only (a torn last record is cut off; a record failing
//! its checksum ends the log there, with a warning, and the rest is kept aside as `<segment>.corrupt`).
//! Segments roll at [`Limits`]; each starts with a snapshot of the exactly-once state, so whole old segments
//! are deleted once every event in them is older than the retention.
//!
//! This module must never reuse a seq that may have been seen, and never write into the middle of a record.

pub(crate) mod record;
pub(crate) mod segment;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use berth_proto::berth::JournalEvent;
use berth_proto::frame;
use prost::Message;

use self::record::{Record, ShimState, Snapshot, MAGIC};
use self::segment::{io_err, Segment, Shared};
use crate::store::StoreError;

/// When the active segment is closed and a new one started.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes in a segment.
    pub segment_bytes: u64,
    /// Events in a segment (at least this many beyond the retention are kept).
    pub segment_events: u64,
}

impl Limits {
    /// The limits for a journal keeping `retention` events: a quarter of it per segment (at least 256 events,
    /// at most 4 MiB), so the files hold at most about 1.5x the retention.
    pub fn for_retention(retention: u64) -> Limits {
        Limits {
            segment_bytes: 4 << 20,
            segment_events: (retention / 4).max(256),
        }
    }
}

/// How a journal was found on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// There was none (first start, or the state dir was emptied): the journal starts above `base`.
    Fresh,
    /// Reopened as it was.
    Clean,
    /// Reopened, cutting off a torn or corrupt tail: why.
    Repaired(String),
    /// The journal was written under another boot: set aside, started afresh.
    OtherBoot,
}

/// The writer side of the journal.
pub(crate) struct Log {
    dir: PathBuf,
    shared: Arc<Shared>,
    file: File,
    /// Bytes in the active segment.
    size: u64,
    /// Events in the active segment.
    seg_events: u64,
    state: ShimState,
    boot_id: String,
    limits: Limits,
}

/// The kernel's boot id (empty when unreadable: then every boot looks the same, as with a tmpfs state dir).
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn encode(r: &Record, buf: &mut Vec<u8>) {
    frame::put(buf, &r.encode_to_vec());
}

impl Log {
    /// Open the journal in `dir` (creating it above `fresh_base`, with `fresh_state`, when there is none),
    /// repairing a damaged tail. `shared` is reset to what is on disk.
    pub(crate) fn open(
        dir: &Path,
        shared: Arc<Shared>,
        limits: Limits,
        boot_id: &str,
        fresh_base: u64,
        fresh_state: &ShimState,
    ) -> Result<(Log, Opened), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_err("listing", dir, e))? {
            let entry = entry.map_err(|e| io_err("listing", dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(base) = Segment::parse_name(&name) {
                bases.push(base);
            } else if name.ends_with(".tmp") {
                // A segment that was being started: its predecessor is complete.
                let _ = std::fs::remove_file(entry.path());
            }
        }
        bases.sort_unstable();
        let Some(&newest) = bases.last() else {
            let log = Log::create(dir, shared, limits, boot_id, fresh_base, fresh_state, &[])?;
            return Ok((log, Opened::Fresh));
        };
        let path = dir.join(Segment::file_name(newest));
        let buf = std::fs::read(&path).map_err(|e| io_err("reading", &path, e))?;
        let Some(body) = buf.strip_prefix(MAGIC.as_slice()) else {
            return Err(StoreError::JournalOpen {
                path,
                reason: "not an event journal segment (bad magic)".into(),
            });
        };
        let scan = frame::scan(body);
        let mut frames = scan.frames.iter();
        let snapshot = frames
            .next()
            .and_then(|(_, p)| Record::decode(*p).ok())
            .and_then(|r| r.snapshot);
        let Some(snapshot) = snapshot else {
            return Err(StoreError::JournalOpen {
                path,
                reason: "the segment does not start with a snapshot record".into(),
            });
        };
        let mut state = ShimState::from_snapshot(&snapshot);
        let mut last = snapshot.base;
        let mut seg_events = 0;
        let mut end = MAGIC.len() + scan.end;
        let mut damage = match scan.stop {
            frame::Stop::End => None,
            frame::Stop::Torn => Some(format!("torn last record at offset {end}")),
            frame::Stop::Corrupt => Some(format!("checksum mismatch at offset {end}")),
        };
        for (at, payload) in frames {
            let Ok(r) = Record::decode(*payload) else {
                end = MAGIC.len() + at;
                damage = Some(format!("undecodable record at offset {end}"));
                break;
            };
            if let Some(ev) = &r.event {
                last = ev.seq;
                seg_events += 1;
            }
            state.apply(&r);
        }
        if snapshot.boot_id != boot_id {
            // Written under another boot (a state dir on disk survived a reboot): the tail may be lost with the
            // page cache, so seqs restart above the reserved mark, and the shims are gone.
            tracing::warn!(dir = %dir.display(), "event journal from a previous boot; starting afresh above it");
            let base = fresh_base.max(last);
            let log = Log::create(dir, shared, limits, boot_id, base, fresh_state, &bases)?;
            return Ok((log, Opened::OtherBoot));
        }
        let mut opened = Opened::Clean;
        if let Some(why) = &damage {
            let corrupt = scan.stop == frame::Stop::Corrupt || end < MAGIC.len() + scan.end;
            tracing::warn!(segment = %path.display(), last_seq = last, "event journal: {why}; keeping the records before it");
            if corrupt {
                let aside = path.with_extension(format!("log.corrupt-{end}"));
                if let Err(e) = std::fs::write(&aside, &buf[end..]) {
                    tracing::warn!(file = %aside.display(), error = %e, "cannot keep the corrupt tail aside");
                }
            }
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_err("opening", &path, e))?;
            f.set_len(end as u64)
                .map_err(|e| io_err("truncating", &path, e))?;
            opened = Opened::Repaired(why.clone());
            if corrupt {
                // Records after the corrupt one may have been seen with their seqs: never hand those out again.
                // The older segments stay readable; cursors in the gap get OUT_OF_RANGE.
                let base = fresh_base.max(last);
                let (file, size, seg) = new_segment(dir, base, &state, boot_id)?;
                let older: Vec<u64> = bases.iter().copied().filter(|b| *b != base).collect();
                let mut segs = list_segments(dir, &older);
                segs.push(seg);
                *shared.segments.write().unwrap_or_else(|e| e.into_inner()) = segs;
                shared.last.store(base, Ordering::Release);
                let log = Log {
                    dir: dir.to_path_buf(),
                    shared,
                    file,
                    size,
                    seg_events: 0,
                    state,
                    boot_id: boot_id.to_string(),
                    limits,
                };
                return Ok((log, opened));
            }
        }
        let segs = list_segments(dir, &bases);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io_err("opening", &path, e))?;
        *shared.segments.write().unwrap_or_else(|e| e.into_inner()) = segs;
        shared.last.store(last, Ordering::Release);
        Ok((
            Log {
                dir: dir.to_path_buf(),
                shared,
                file,
                size: end as u64,
                seg_events,
                state,
                boot_id: boot_id.to_string(),
                limits,
            },
            opened,
        ))
    }

    /// Start a journal afresh above `base` with `state`, deleting the segments `old`.
    fn create(
        dir: &Path,
        shared: Arc<Shared>,
        limits: Limits,
        boot_id: &str,
        base: u64,
        state: &ShimState,
        old: &[u64],
    ) -> Result<Log, StoreError> {
        let log = Log::roll_from(dir, shared, limits, boot_id, base, state.clone(), old)?;
        Ok(log)
    }

    /// A new active segment after `base`, with `state`, replacing the segments `old` (deleted).
    fn roll_from(
        dir: &Path,
        shared: Arc<Shared>,
        limits: Limits,
        boot_id: &str,
        base: u64,
        state: ShimState,
        old: &[u64],
    ) -> Result<Log, StoreError> {
        let (file, size, seg) = new_segment(dir, base, &state, boot_id)?;
        for b in old.iter().filter(|b| **b != base) {
            let _ = std::fs::remove_file(dir.join(Segment::file_name(*b)));
        }
        *shared.segments.write().unwrap_or_else(|e| e.into_inner()) = vec![seg];
        shared.last.store(base, Ordering::Release);
        Ok(Log {
            dir: dir.to_path_buf(),
            shared,
            file,
            size,
            seg_events: 0,
            state,
            boot_id: boot_id.to_string(),
            limits,
        })
    }

    pub(crate) fn state(&self) -> &ShimState {
        &self.state
    }

    /// The exactly-once state, changed by a batch before its write (see [`Log::append`]).
    pub(crate) fn state_mut(&mut self) -> &mut ShimState {
        &mut self.state
    }

    /// Highest seq written.
    pub(crate) fn last(&self) -> u64 {
        self.shared.last.load(Ordering::Acquire)
    }

    /// Append a batch of encoded records (`events` of them events, the last with seq `last`) in one write, then
    /// make it visible to readers. On a failed write the segment is cut back (the caller then reopens the log,
    /// which rebuilds the state its batch had already changed).
    pub(crate) fn append(
        &mut self,
        buf: &[u8],
        events: u64,
        last: u64,
        torn_point: &str,
    ) -> Result<(), StoreError> {
        let path = self.active().path.clone();
        let res = match crate::failpoint::action(torn_point) {
            // A test's crash in the middle of a write: half the batch reaches the file.
            Some(action) => self
                .file
                .write_all(&buf[..buf.len() / 2])
                .map(|()| crate::failpoint::perform(torn_point, action))
                .and_then(|()| self.file.write_all(&buf[buf.len() / 2..])),
            None => self.file.write_all(buf),
        };
        if let Err(e) = res {
            if let Err(t) = self.file.set_len(self.size) {
                // The segment may end in a torn record: stop the writer, a restart reopens and cuts it.
                panic!("cannot cut the event journal back after a failed write ({e}): {t}");
            }
            return Err(io_err("appending to", &path, e));
        }
        self.size += buf.len() as u64;
        self.seg_events += events;
        self.active().committed.store(self.size, Ordering::Release);
        self.shared.last.store(last, Ordering::Release);
        Ok(())
    }

    fn active(&self) -> Arc<Segment> {
        let segs = self
            .shared
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner());
        segs.last()
            .cloned()
            .unwrap_or_else(|| Arc::new(Segment::new(0, self.dir.join(Segment::file_name(0)), 0)))
    }

    /// After a batch: start a new segment when the active one is full, and delete segments every event of which
    /// is older than the retention.
    pub(crate) fn maintain(&mut self) -> Result<(), StoreError> {
        if self.size < self.limits.segment_bytes && self.seg_events < self.limits.segment_events {
            return Ok(());
        }
        let base = self.last();
        let (file, size, seg) = new_segment(&self.dir, base, &self.state, &self.boot_id)?;
        self.file = file;
        self.size = size;
        self.seg_events = 0;
        let cutoff = match self.shared.retention.load(Ordering::Acquire) {
            0 => 0,
            retention => base.saturating_sub(retention),
        };
        let removed: Vec<Arc<Segment>> = {
            let mut segs = self
                .shared
                .segments
                .write()
                .unwrap_or_else(|e| e.into_inner());
            segs.push(seg);
            // segs[1].base <= cutoff: every event of segs[0] is at or below the cutoff.
            let n = segs.windows(2).take_while(|w| w[1].base <= cutoff).count();
            segs.drain(..n).collect()
        };
        for s in removed {
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(segment = %s.path.display(), error = %e, "cannot delete an old journal segment");
            }
        }
        Ok(())
    }
}

/// The segments with these bases, their whole files counted as complete.
fn list_segments(dir: &Path, bases: &[u64]) -> Vec<Arc<Segment>> {
    bases
        .iter()
        .map(|b| {
            let p = dir.join(Segment::file_name(*b));
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            Arc::new(Segment::new(*b, p, len))
        })
        .collect()
}

/// Write a new segment after `base` (temp file, then rename: a segment file always has its snapshot) and
/// open it for appending.
fn new_segment(
    dir: &Path,
    base: u64,
    state: &ShimState,
    boot_id: &str,
) -> Result<(File, u64, Arc<Segment>), StoreError> {
    let path = dir.join(Segment::file_name(base));
    let tmp = dir.join(format!("{}.tmp", Segment::file_name(base)));
    let mut buf = MAGIC.to_vec();
    let snap: Snapshot = state.snapshot(base, boot_id);
    encode(
        &Record {
            snapshot: Some(snap),
            ..Record::default()
        },
        &mut buf,
    );
    std::fs::write(&tmp, &buf).map_err(|e| io_err("writing", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_err("renaming to", &path, e))?;
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| io_err("opening", &path, e))?;
    let size = buf.len() as u64;
    Ok((file, size, Arc::new(Segment::new(base, path, size))))
}

/// Encode one record into a batch buffer.
pub(crate) fn put_record(r: &Record, buf: &mut Vec<u8>) {
    encode(r, buf);
}

/// An event record.
pub(crate) fn event_record(ev: JournalEvent) -> Record {
    Record {
        event: Some(ev),
        ..Record::default()
    }
}

#[cfg(test)]
mod tests;
