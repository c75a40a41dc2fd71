//! EventBus unit tests: seqs across restarts and reboots, exactly-once shim events, slow subscribers, replay and
//! OutOfRange.

use std::sync::Arc;

use futures::StreamExt;

use super::*;
use crate::store::test_util::TempStore;

/// A metadata store and an event journal in one temp dir (the journal as `events/` beside `meta.redb`).
struct TempBus {
    journal: Option<JournalDb>,
    store: TempStore,
}

impl TempBus {
    fn new(name: &str) -> TempBus {
        let store = TempStore::new(name);
        let mut t = TempBus {
            journal: None,
            store,
        };
        t.open_journal();
        t
    }

    fn open_journal(&mut self) {
        let path = self.store.dir.join("events");
        self.journal =
            Some(JournalDb::open(&path, self.store.store().clone(), 64).expect("open journal"));
    }

    fn bus(&self, retention: u64, queue: usize) -> EventBus {
        EventBus::new(self.journal.clone().expect("open"), retention, queue).expect("bus")
    }

    fn close_journal(&mut self) {
        if let Some(j) = self.journal.take() {
            j.close();
        }
    }

    /// berthd restarts: both databases closed and opened again (drop every bus first).
    fn restart(&mut self) {
        self.close_journal();
        self.store.reopen();
        self.open_journal();
    }

    /// The host reboots: the state dir (events/) is emptied, meta.redb stays.
    fn reboot(&mut self) {
        self.close_journal();
        std::fs::remove_dir_all(self.store.dir.join("events")).expect("wipe events/");
        self.store.reopen();
        self.open_journal();
    }
}

impl Drop for TempBus {
    fn drop(&mut self) {
        self.close_journal();
    }
}

fn any(n: u32) -> prost_types::Any {
    berth_proto::to_any(&containerd_client::events::TaskStart {
        container_id: format!("c{n}"),
        pid: n,
    })
}

#[tokio::test]
async fn seqs_continue_after_restart() {
    let mut t = TempBus::new("bus-seq");
    let bus = t.bus(100, 16);
    assert_eq!(
        bus.publish("n", "/tasks/start", any(1)).await.expect("pub"),
        1
    );
    assert_eq!(
        bus.publish("n", "/tasks/start", any(2)).await.expect("pub"),
        2
    );
    drop(bus);
    t.restart();
    let bus = t.bus(100, 16);
    assert_eq!(bus.last_seq(), 2);
    assert_eq!(
        bus.publish("n", "/tasks/start", any(3)).await.expect("pub"),
        3
    );
    // Every seq handed out is covered by the durable mark in meta.redb.
    assert!(t.store.store().journal_reserved().expect("mark") >= 3);
    let mut s = bus
        .subscribe_from(Filter::default(), 1, false)
        .await
        .expect("replay across the restart");
    for want in 2..=3 {
        assert_eq!(s.next().await.expect("item").expect("ok").seq, want);
    }
}

#[tokio::test]
async fn seqs_continue_above_the_old_ones_after_a_reboot() {
    let mut t = TempBus::new("bus-reboot");
    let bus = t.bus(100, 16);
    for i in 1..=3u32 {
        bus.publish("n", "/tasks/start", any(i)).await.expect("pub");
    }
    assert_eq!(
        bus.publish_from_shim(shim_ev("n/c", 1, None, any(4)))
            .await
            .expect("pub"),
        Some(4)
    );
    drop(bus);
    t.reboot();
    let bus = t.bus(100, 16);
    let floor = bus.last_seq();
    assert!(floor >= 4, "seqs never go backwards: {floor}");
    assert_eq!(
        t.journal
            .as_ref()
            .expect("open")
            .journal_floor()
            .expect("floor"),
        floor
    );
    let next = bus.publish("n", "/tasks/start", any(5)).await.expect("pub");
    assert_eq!(next, floor + 1);
    // A cursor from before the reboot is out of range, even the last event's.
    for cursor in [0, 3, 4] {
        let e = bus
            .subscribe_from(Filter::default(), cursor, false)
            .await
            .expect_err("old cursor");
        assert!(matches!(e, EventError::OutOfRange { .. }), "{e}");
    }
    // The shims are gone with the reboot: their seqs start afresh.
    assert_eq!(bus.last_shim_seq("n/c").await.expect("seq"), 0);
    let mut s = bus
        .subscribe_from(Filter::default(), 0, true)
        .await
        .expect("from oldest");
    assert_eq!(s.next().await.expect("item").expect("ok").seq, next);
    drop(s);
    drop(bus);
    // A second reboot right away still goes above everything handed out.
    t.reboot();
    let bus = t.bus(100, 16);
    assert!(bus.last_seq() >= next);
    assert!(bus.publish("n", "/tasks/start", any(6)).await.expect("pub") > next);
}

fn shim_ev(key: &str, seq: u64, once: Option<Once>, event: prost_types::Any) -> ShimEvent {
    ShimEvent {
        source: key.to_string(),
        task: key.to_string(),
        seq,
        namespace: "n".to_string(),
        topic: "/tasks/exit",
        event,
        once,
    }
}

#[tokio::test]
async fn shim_events_are_exactly_once() {
    let t = TempBus::new("bus-shim");
    let bus = t.bus(100, 16);
    let a = bus
        .publish_from_shim(shim_ev("n/c", 1, None, any(1)))
        .await
        .expect("pub");
    assert_eq!(a, Some(1));
    let again = bus
        .publish_from_shim(shim_ev("n/c", 1, None, any(1)))
        .await
        .expect("pub");
    assert_eq!(again, None);
    assert_eq!(bus.last_shim_seq("n/c").await.expect("seq"), 1);
    bus.forget_task("n/c").await.expect("forget");
    assert_eq!(bus.last_shim_seq("n/c").await.expect("seq"), 0);
}

#[tokio::test]
async fn once_events_are_journaled_once_per_shim_key() {
    let t = TempBus::new("bus-once");
    let bus = t.bus(100, 16);
    // The shim's own delete at seq 5, then one synthesised for a dead shim at seq 9: only the first counts.
    let first = bus
        .publish_from_shim(shim_ev("n/c", 5, Some(Once::Delete), any(1)))
        .await
        .expect("pub");
    assert!(first.is_some());
    let second = bus
        .publish_from_shim(shim_ev("n/c", 9, Some(Once::Delete), any(2)))
        .await
        .expect("pub");
    assert_eq!(second, None, "a second delete for the same task is dropped");
    assert_eq!(bus.last_shim_seq("n/c").await.expect("seq"), 9);
    // Another kind, and another key, are independent.
    let exit = bus
        .publish_from_shim(shim_ev("n/c", 10, Some(Once::InitExit), any(3)))
        .await
        .expect("pub");
    assert!(exit.is_some());
    let other = bus
        .publish_from_shim(shim_ev("n/d", 1, Some(Once::Delete), any(4)))
        .await
        .expect("pub");
    assert!(other.is_some());
    // berthd's own source for the same task has its own seqs, but shares the task's once-markers.
    let mut synthesised = shim_ev(&berthd_source("n/c"), 1, Some(Once::Delete), any(6));
    synthesised.task = "n/c".into();
    assert_eq!(bus.publish_from_shim(synthesised).await.expect("pub"), None);
    // A task created again with the same id starts afresh.
    bus.forget_task("n/c").await.expect("forget");
    let again = bus
        .publish_from_shim(shim_ev("n/c", 1, Some(Once::Delete), any(5)))
        .await
        .expect("pub");
    assert!(again.is_some());
}

#[tokio::test]
async fn concurrent_publishes_arrive_in_seq_order() {
    let t = TempBus::new("bus-order");
    let bus = t.bus(10_000, 4096);
    let mut sub = bus.subscribe(Filter::default()).expect("sub");
    let mut handles = Vec::new();
    for i in 0..200u32 {
        let b = bus.clone();
        handles.push(tokio::spawn(async move {
            b.publish("n", "/tasks/start", any(i)).await
        }));
    }
    for h in handles {
        h.await.expect("join").expect("publish");
    }
    let mut last = 0;
    for _ in 0..200 {
        let ev = sub.next().await.expect("item").expect("ok");
        assert_eq!(ev.seq, last + 1);
        last = ev.seq;
    }
}

#[tokio::test]
async fn slow_subscriber_is_cut_off_and_fast_one_is_not() {
    let t = TempBus::new("bus-slow");
    let bus = t.bus(10_000, 8);
    let mut slow = bus.subscribe(Filter::default()).expect("sub");
    let mut fast = bus.subscribe(Filter::default()).expect("sub");
    for i in 0..20u32 {
        bus.publish("n", "/tasks/start", any(i))
            .await
            .expect("publish");
        let ev = fast.next().await.expect("item").expect("ok");
        assert_eq!(ev.seq, u64::from(i) + 1);
    }
    let mut got = 0;
    let status = loop {
        match slow.next().await.expect("item") {
            Ok(_) => got += 1,
            Err(s) => break s,
        }
    };
    assert_eq!(got, 8);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("seq 9"), "{}", status.message());
    assert!(slow.next().await.is_none());
    assert_eq!(bus.subscriber_count(), 1);
}

#[tokio::test]
async fn replay_then_live_and_out_of_range() {
    let t = TempBus::new("bus-replay");
    let bus = t.bus(5, 16);
    for i in 0..8u32 {
        bus.publish("n", "/tasks/start", any(i))
            .await
            .expect("publish");
    }
    // Seqs 4..=8 are kept; floor is 3.
    let e = bus
        .subscribe_from(Filter::default(), 1, false)
        .await
        .expect_err("too old");
    assert!(
        matches!(
            e,
            EventError::OutOfRange {
                cursor: 1,
                floor: 3
            }
        ),
        "{e}"
    );
    let mut s = bus
        .subscribe_from(Filter::default(), 5, false)
        .await
        .expect("replay");
    for want in 6..=8 {
        assert_eq!(s.next().await.expect("item").expect("ok").seq, want);
    }
    let b = bus.clone();
    tokio::spawn(async move { b.publish("n", "/tasks/exit", any(9)).await });
    assert_eq!(s.next().await.expect("item").expect("ok").seq, 9);
    let mut all = bus
        .subscribe_from(Filter::default(), 0, true)
        .await
        .expect("oldest");
    let first = all.next().await.expect("item").expect("ok");
    assert_eq!(first.seq, 5);
    let filtered = Filter::parse(&["topic==/tasks/exit".to_string()]).expect("filter");
    let mut f = bus
        .subscribe_from(filtered, 0, true)
        .await
        .expect("filtered");
    let only: Arc<_> = f.next().await.expect("item").expect("ok");
    assert_eq!(only.seq, 9);
}

/// Rough group-commit throughput (run with `--ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_publish_throughput() {
    let t = TempBus::new("bus-bench");
    let bus = t.bus(100_000, 16);
    for conc in [1usize, 8, 64] {
        let n = 1024;
        let t0 = std::time::Instant::now();
        let mut handles = Vec::new();
        for w in 0..conc {
            let b = bus.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..n / conc {
                    b.publish("n", "/tasks/start", any((w * 10_000 + i) as u32))
                        .await
                        .expect("publish");
                }
            }));
        }
        for h in handles {
            h.await.expect("join");
        }
        let took = t0.elapsed();
        eprintln!(
            "concurrency {conc}: {n} events in {took:?} = {:.0}/s, {:.2} ms each",
            n as f64 / took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / (n / conc) as f64
        );
    }
}

/// An older berthd's `<state>/events.redb` is taken over once: seqs go on above its last one, its shims' seqs and
/// once-markers still drop replays, and the file is removed.
#[tokio::test]
async fn older_events_redb_is_taken_over() {
    use redb::TableDefinition;
    let store = TempStore::new("bus-legacy-redb");
    let old = store.dir.join("events.redb");
    {
        let db = redb::Database::create(&old).expect("old db");
        let w = db.begin_write().expect("write");
        w.open_table(TableDefinition::<u64, &[u8]>::new("journal"))
            .expect("journal")
            .insert(41, [0u8].as_slice())
            .expect("insert");
        w.open_table(TableDefinition::<&str, u64>::new("shim_seqs"))
            .expect("seqs")
            .insert("n/c", 6)
            .expect("insert");
        w.open_table(TableDefinition::<(&str, &str), ()>::new("shim_once"))
            .expect("once")
            .insert(("n/c", Once::InitExit.name()), ())
            .expect("insert");
        w.commit().expect("commit");
    }
    let mut t = TempBus {
        journal: None,
        store,
    };
    t.open_journal();
    let bus = t.bus(100, 16);
    assert!(bus.last_seq() >= 41);
    assert_eq!(bus.last_shim_seq("n/c").await.expect("seq"), 6);
    assert_eq!(
        bus.publish_from_shim(shim_ev("n/c", 7, Some(Once::InitExit), any(1)))
            .await
            .expect("pub"),
        None,
        "the old journal's init exit still counts"
    );
    assert!(!old.exists(), "events.redb removed");
    assert!(bus.publish("n", "/x", any(2)).await.expect("pub") > 41);
}
