//! The journal log after crashes: torn tails at every byte, corrupt records, other boots, and its bound over
//! 100k events. Each test writes through the real writer thread, then damages or reopens the files as a
//! SIGKILLed berthd would leave them.

use std::path::{Path, PathBuf};

use futures::StreamExt;

use super::record::MAGIC;
use super::segment::Segment;
use super::Limits;
use crate::events::{EventBus, EventError, Filter, JournalDb, Once, ShimEvent};
use crate::store::test_util::TempStore;

const BOOT: &str = "boot-a";

struct TempLog {
    store: TempStore,
    dir: PathBuf,
    limits: Limits,
    journal: Option<JournalDb>,
}

impl TempLog {
    fn new(name: &str, limits: Limits) -> TempLog {
        let store = TempStore::new(name);
        let dir = store.dir.join("events");
        let mut t = TempLog {
            store,
            dir,
            limits,
            journal: None,
        };
        t.open(BOOT);
        t
    }

    fn open(&mut self, boot: &str) {
        self.journal = Some(
            JournalDb::open_with(&self.dir, self.store.store().clone(), 64, self.limits, boot)
                .expect("open journal"),
        );
    }

    fn bus(&self, retention: u64) -> EventBus {
        EventBus::new(self.journal.clone().expect("open"), retention, 4096).expect("bus")
    }

    /// berthd dies: the writer stops (everything it wrote is in the files), nothing else is flushed.
    fn kill(&mut self) {
        if let Some(j) = self.journal.take() {
            j.close();
        }
    }

    fn reopen(&mut self, boot: &str) {
        self.kill();
        self.open(boot);
    }

    fn segments(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(Segment::parse_name)
                    .is_some()
            })
            .collect();
        v.sort();
        v
    }

    fn newest(&self) -> PathBuf {
        self.segments().pop().expect("a segment")
    }
}

impl Drop for TempLog {
    fn drop(&mut self) {
        self.kill();
    }
}

fn any(n: u32) -> prost_types::Any {
    berth_proto::to_any(&containerd_client::events::TaskStart {
        container_id: format!("c{n}"),
        pid: n,
    })
}

fn shim_ev(seq: u64, once: Option<Once>) -> ShimEvent {
    ShimEvent {
        source: "n/c".into(),
        task: "n/c".into(),
        seq,
        namespace: "n".into(),
        topic: "/tasks/exit",
        event: any(seq as u32),
        once,
    }
}

async fn all_seqs(bus: &EventBus) -> Vec<u64> {
    let last = bus.last_seq();
    let mut s = bus
        .subscribe_from(Filter::default(), 0, true)
        .await
        .expect("replay");
    let mut out = Vec::new();
    while out.last().is_none_or(|l| *l < last) {
        out.push(s.next().await.expect("item").expect("ok").seq);
    }
    out
}

/// Offsets of the frames in a segment (after the magic), with each frame's length.
fn frames(path: &Path) -> Vec<(usize, usize)> {
    let buf = std::fs::read(path).expect("read segment");
    let scan = berth_proto::frame::scan(&buf[MAGIC.len()..]);
    scan.frames
        .iter()
        .map(|(at, p)| (MAGIC.len() + at, berth_proto::frame::HEADER + p.len()))
        .collect()
}

/// SIGKILL mid-append at every byte of the last record: the reopened journal has exactly the complete
/// records, the shim seq travels with its event (a replay of the torn one is journaled once), and seqs go on.
#[tokio::test]
async fn torn_tail_at_every_byte_keeps_exactly_the_complete_records() {
    let mut t = TempLog::new("log-torn", Limits::for_retention(1000));
    let bus = t.bus(1000);
    for i in 1..=3 {
        bus.publish("n", "/tasks/start", any(i)).await.expect("pub");
    }
    assert_eq!(
        bus.publish_from_shim(shim_ev(1, None)).await.expect("pub"),
        Some(4)
    );
    assert_eq!(
        bus.publish_from_shim(shim_ev(2, Some(Once::InitExit)))
            .await
            .expect("pub"),
        Some(5)
    );
    drop(bus);
    t.kill();
    let seg = t.newest();
    let whole = std::fs::read(&seg).expect("read");
    let frames_whole = frames(&seg).len();
    let (last_at, last_len) = *frames(&seg).last().expect("frames");
    assert_eq!(last_at + last_len, whole.len());
    for cut in last_at..whole.len() {
        std::fs::write(&seg, &whole[..cut]).expect("tear");
        t.open(BOOT);
        let bus = t.bus(1000);
        assert_eq!(all_seqs(&bus).await, vec![1, 2, 3, 4], "cut at {cut}");
        assert_eq!(
            bus.last_shim_seq("n/c").await.expect("seq"),
            1,
            "cut at {cut}"
        );
        // The shim replays its unacked exit: journaled now, once, with the next seq.
        assert_eq!(
            bus.publish_from_shim(shim_ev(2, Some(Once::InitExit)))
                .await
                .expect("pub"),
            Some(5)
        );
        assert_eq!(
            bus.publish_from_shim(shim_ev(2, Some(Once::InitExit)))
                .await
                .expect("pub"),
            None
        );
        drop(bus);
        t.kill();
        // The same records again, and nothing torn left between them (only the replayed event's timestamp,
        // hence maybe its length, differs).
        let again = std::fs::read(&seg).expect("read");
        let scan = berth_proto::frame::scan(&again[MAGIC.len()..]);
        assert_eq!(scan.stop, berth_proto::frame::Stop::End, "cut at {cut}");
        assert_eq!(scan.frames.len(), frames_whole, "cut at {cut}");
    }
}

/// A record failing its checksum ends the journal at the last good record (with a warning, the rest kept
/// aside); seqs never reuse one that may have been seen after it.
#[tokio::test]
async fn corrupt_record_stops_replay_at_the_last_good_one() {
    let mut t = TempLog::new("log-corrupt", Limits::for_retention(100_000));
    let bus = t.bus(100_000);
    for i in 1..=5 {
        bus.publish("n", "/tasks/start", any(i)).await.expect("pub");
    }
    drop(bus);
    t.kill();
    let seg = t.newest();
    let mut bytes = std::fs::read(&seg).expect("read");
    // Frames: snapshot, then events 1..=5; flip a payload byte of event 3.
    let (at, len) = frames(&seg)[3];
    bytes[at + len - 1] ^= 0x5a;
    std::fs::write(&seg, &bytes).expect("corrupt");
    t.open(BOOT);
    let bus = t.bus(100_000);
    assert_eq!(
        bus.last_seq(),
        t.store.store().journal_reserved().expect("mark")
    );
    let next = bus.publish("n", "/tasks/start", any(9)).await.expect("pub");
    assert!(
        next > 5,
        "seq {next} may have been seen before the corruption"
    );
    // Events 1 and 2 are still readable, then the replay goes on above the gap; a cursor in the gap is out of
    // range (the events after it are lost).
    let mut s = bus
        .subscribe_from(Filter::default(), 0, false)
        .await
        .expect("replay");
    for want in [1, 2, next] {
        assert_eq!(s.next().await.expect("item").expect("ok").seq, want);
    }
    let mut s = bus
        .subscribe_from(Filter::default(), 3, false)
        .await
        .expect("replay");
    let status = s.next().await.expect("item").expect_err("gap");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    let aside: Vec<_> = std::fs::read_dir(&t.dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the corrupt tail is kept aside");
    assert_eq!(
        std::fs::metadata(aside[0].path()).expect("stat").len() as usize,
        bytes.len() - at
    );
}

/// A journal written under another boot (a state dir on disk outliving a reboot) is set aside: seqs go on
/// above the reserved mark, old cursors are out of range, shim seqs start afresh.
#[tokio::test]
async fn journal_from_another_boot_starts_afresh_above_it() {
    let mut t = TempLog::new("log-boot", Limits::for_retention(1000));
    let bus = t.bus(1000);
    for i in 1..=3 {
        bus.publish("n", "/tasks/start", any(i)).await.expect("pub");
    }
    bus.publish_from_shim(shim_ev(1, None)).await.expect("pub");
    drop(bus);
    t.reopen("boot-b");
    let bus = t.bus(1000);
    let floor = bus.last_seq();
    assert!(floor >= 4);
    let e = bus
        .subscribe_from(Filter::default(), 3, false)
        .await
        .expect_err("old cursor");
    assert!(matches!(e, EventError::OutOfRange { .. }), "{e}");
    assert_eq!(bus.last_shim_seq("n/c").await.expect("seq"), 0);
    assert_eq!(
        bus.publish("n", "/x", any(5)).await.expect("pub"),
        floor + 1
    );
    assert_eq!(t.segments().len(), 1, "the old boot's segments are gone");
}

/// 100k events through small segments: the files stay within the bound, old segments are deleted, a reopen
/// finds the same last seq and floor, and the shims' exactly-once state survives the segment rolls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_events_stay_within_the_bound() {
    let retention = 2_000;
    let limits = Limits::for_retention(retention);
    let mut t = TempLog::new("log-bound", limits);
    let bus = t.bus(retention);
    bus.publish_from_shim(shim_ev(7, Some(Once::Delete)))
        .await
        .expect("pub");
    let mut max_files = 0;
    let mut max_bytes = 0;
    let mut handles = Vec::new();
    for w in 0..8u32 {
        let b = bus.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..12_500u32 {
                b.publish("n", "/tasks/start", any(w * 100_000 + i))
                    .await
                    .expect("publish");
            }
        }));
    }
    while !handles.iter().all(|h| h.is_finished()) {
        let segs = t.segments();
        let bytes: u64 = segs
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        max_files = max_files.max(segs.len());
        max_bytes = max_bytes.max(bytes);
        // Sampling the files, not waiting for anything.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    for h in handles {
        h.await.expect("join");
    }
    let last = bus.last_seq();
    assert_eq!(last, 100_001);
    let floor = t
        .journal
        .as_ref()
        .expect("open")
        .journal_floor()
        .expect("floor");
    assert_eq!(floor, last - retention);
    // retention + one segment being filled + one not yet trimmed, in records of under 128 bytes each.
    let files_bound = (retention / limits.segment_events + 3) as usize;
    assert!(
        max_files <= files_bound,
        "{max_files} segment files (bound {files_bound})"
    );
    let bytes_bound = (retention + 2 * limits.segment_events) * 128;
    assert!(
        max_bytes <= bytes_bound,
        "{max_bytes} bytes on disk (bound {bytes_bound})"
    );
    drop(bus);
    let started = std::time::Instant::now();
    t.reopen(BOOT);
    let reopen = started.elapsed();
    let bus = t.bus(retention);
    assert_eq!(bus.last_seq(), last);
    assert_eq!(
        t.journal
            .as_ref()
            .expect("open")
            .journal_floor()
            .expect("floor"),
        floor
    );
    assert_eq!(all_seqs(&bus).await.len() as u64, retention);
    // The delete at shim seq 7 is remembered across every roll.
    assert_eq!(bus.last_shim_seq("n/c").await.expect("seq"), 7);
    assert_eq!(
        bus.publish_from_shim(shim_ev(8, Some(Once::Delete)))
            .await
            .expect("pub"),
        None
    );
    eprintln!(
        "reopen after 100k events: {reopen:?}, at most {max_files} files / {max_bytes} bytes"
    );
}

/// A second berthd cannot open the same journal.
#[tokio::test]
async fn second_opener_is_refused() {
    let t = TempLog::new("log-lock", Limits::for_retention(1000));
    let e = JournalDb::open_with(&t.dir, t.store.store().clone(), 64, t.limits, BOOT)
        .expect_err("second opener");
    assert!(e.to_string().contains("already open"), "{e}");
}
