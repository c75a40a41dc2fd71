//! EventBus unit tests: seqs across reopen, exactly-once shim events, slow subscribers, replay and OutOfRange.

use std::sync::Arc;

use futures::StreamExt;

use super::*;
use crate::store::test_util::TempStore;

fn any(n: u32) -> prost_types::Any {
    berth_proto::to_any(&containerd_client::events::TaskStart {
        container_id: format!("c{n}"),
        pid: n,
    })
}

#[tokio::test]
async fn seqs_continue_after_reopen() {
    let mut t = TempStore::new("bus-seq");
    let bus = EventBus::new(t.store().clone(), 100, 16).expect("bus");
    assert_eq!(
        bus.publish("n", "/tasks/start", any(1)).await.expect("pub"),
        1
    );
    assert_eq!(
        bus.publish("n", "/tasks/start", any(2)).await.expect("pub"),
        2
    );
    drop(bus);
    t.reopen();
    let bus = EventBus::new(t.store().clone(), 100, 16).expect("bus");
    assert_eq!(bus.last_seq(), 2);
    assert_eq!(
        bus.publish("n", "/tasks/start", any(3)).await.expect("pub"),
        3
    );
}

#[tokio::test]
async fn shim_events_are_exactly_once() {
    let t = TempStore::new("bus-shim");
    let bus = EventBus::new(t.store().clone(), 100, 16).expect("bus");
    let a = bus
        .publish_from_shim("n/c", 1, "n", "/tasks/exit", any(1))
        .await
        .expect("pub");
    assert_eq!(a, Some(1));
    let again = bus
        .publish_from_shim("n/c", 1, "n", "/tasks/exit", any(1))
        .await
        .expect("pub");
    assert_eq!(again, None);
    assert_eq!(bus.last_shim_seq("n/c").await.expect("seq"), 1);
    bus.forget_shim("n/c").await.expect("forget");
    assert_eq!(bus.last_shim_seq("n/c").await.expect("seq"), 0);
}

#[tokio::test]
async fn concurrent_publishes_arrive_in_seq_order() {
    let t = TempStore::new("bus-order");
    let bus = EventBus::new(t.store().clone(), 10_000, 4096).expect("bus");
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
    let t = TempStore::new("bus-slow");
    let bus = EventBus::new(t.store().clone(), 10_000, 8).expect("bus");
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
    let t = TempStore::new("bus-replay");
    let bus = EventBus::new(t.store().clone(), 5, 16).expect("bus");
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
    let t = TempStore::new("bus-bench");
    let bus = EventBus::new(t.store().clone(), 100_000, 16).expect("bus");
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
