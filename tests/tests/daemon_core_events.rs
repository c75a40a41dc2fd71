//! berthd's EventBus through gRPC: a slow subscriber on its own HTTP/2 connection is cut off with a clear status
//! while fast ones receive all 10,000 events in order; berth.v1 Journal replay from a cursor, then live; a cursor
//! older than the retained journal gets OUT_OF_RANGE. Root only.

use std::time::{Duration, Instant};

use berth_proto::berth::journal_client::JournalClient;
use berth_proto::berth::JournalSubscribeRequest;
use berth_proto::containerd_client::events::TaskStart;
use berth_proto::containerd_client::services::v1::events_client::EventsClient;
use berth_proto::containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use berth_proto::to_any;
use berth_tests::{Daemon, DaemonConfig, TestDir};
use prost::Message;
use tokio_stream::StreamExt;
use tonic::Code;

const EVENTS: u32 = 10_000;
const PUBLISHERS: u32 = 40;
/// Padding per event, so that 10,000 events overflow the HTTP/2 flow-control windows (about 1 MiB each way)
/// and the slow subscriber's queue really fills.
const PAD: usize = 1024;

/// No deadline: these requests include subscriptions that stay open.
fn req<T>(ns: &str, msg: T) -> tonic::Request<T> {
    berth_tests::grpc::req_with(ns, msg, None)
}

fn event(publisher: u32, i: u32) -> prost_types::Any {
    to_any(&TaskStart {
        container_id: format!("p{publisher}-{}", "x".repeat(PAD)),
        pid: i,
    })
}

async fn publish_all(d: &Daemon, ns: &str, per: u32) {
    let mut set = tokio::task::JoinSet::new();
    for p in 0..PUBLISHERS {
        let ch = d.channel().await;
        let ns = ns.to_string();
        set.spawn(async move {
            let mut ec = EventsClient::new(ch);
            for i in 0..per {
                ec.publish(req(
                    &ns,
                    PublishRequest {
                        topic: "/test/load".into(),
                        event: Some(event(p, i)),
                    },
                ))
                .await
                .expect("publish");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("publisher task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_cut_off_fast_ones_get_everything_in_order() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("daemon_core_slow_sub");
    let config = dir.join("config.toml");
    std::fs::write(&config, "subscriber_queue = 1024\n").expect("config");
    let d = DaemonConfig::new(dir.path())
        .arg("--config")
        .arg(&config)
        .start();
    let ns = berth_tests::unique_id("core-slow");
    let filter = vec![format!("namespace=={ns}")];

    // Each subscriber on its own connection.
    let mut slow = EventsClient::new(d.channel().await)
        .subscribe(req(
            &ns,
            SubscribeRequest {
                filters: filter.clone(),
            },
        ))
        .await
        .expect("slow subscribe")
        .into_inner();
    let mut fast = EventsClient::new(d.channel().await)
        .subscribe(req(
            &ns,
            SubscribeRequest {
                filters: filter.clone(),
            },
        ))
        .await
        .expect("fast subscribe")
        .into_inner();
    let mut journal = JournalClient::new(d.channel().await)
        .subscribe(JournalSubscribeRequest {
            filters: filter.clone(),
            after_seq: 0,
            from_oldest: false,
        })
        .await
        .expect("journal subscribe")
        .into_inner();

    let per = EVENTS / PUBLISHERS;
    let total = per * PUBLISHERS;
    let fast_reader = tokio::spawn(async move {
        let mut next = vec![0u32; PUBLISHERS as usize];
        for n in 0..total {
            let env = tokio::time::timeout(Duration::from_secs(60), fast.next())
                .await
                .unwrap_or_else(|_| panic!("fast subscriber stalled after {n} events"))
                .expect("stream open")
                .unwrap_or_else(|s| panic!("fast subscriber cut off after {n} events: {s}"));
            let ev = TaskStart::decode(env.event.expect("event").value.as_slice()).expect("decode");
            let p: usize = ev.container_id[1..]
                .split('-')
                .next()
                .and_then(|s| s.parse().ok())
                .expect("publisher index");
            assert_eq!(ev.pid, next[p], "publisher {p}'s events out of order");
            next[p] += 1;
        }
        total
    });
    let journal_reader = tokio::spawn(async move {
        let mut last = 0u64;
        for n in 0..total {
            let ev = tokio::time::timeout(Duration::from_secs(60), journal.next())
                .await
                .unwrap_or_else(|_| panic!("journal subscriber stalled after {n} events"))
                .expect("stream open")
                .unwrap_or_else(|s| panic!("journal subscriber cut off after {n} events: {s}"));
            assert!(
                last == 0 || ev.seq == last + 1,
                "seq {} after {last}",
                ev.seq
            );
            last = ev.seq;
        }
        last
    });

    let t0 = Instant::now();
    publish_all(&d, &ns, per).await;
    let took = t0.elapsed();
    eprintln!(
        "published {total} events with {PUBLISHERS} publishers in {took:?} ({:.0}/s)",
        f64::from(total) / took.as_secs_f64()
    );
    assert_eq!(fast_reader.await.expect("fast reader"), total);
    let last_seq = journal_reader.await.expect("journal reader");
    assert_eq!(last_seq, u64::from(total));

    // The slow one got some events, then a clear status.
    let mut got = 0u32;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(30), slow.next())
            .await
            .expect("slow stream ends")
        {
            Some(Ok(_)) => got += 1,
            Some(Err(s)) => break s,
            None => panic!("slow subscriber's stream ended without a status after {got} events"),
        }
    };
    assert!(got < total, "slow subscriber received everything ({got})");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("subscriber too slow, events dropped at seq"),
        "{}",
        status.message()
    );
    eprintln!(
        "slow subscriber received {got} events before it was cut off: {}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_replay_from_cursor_and_out_of_range() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("daemon_core_journal");
    let config = dir.join("config.toml");
    std::fs::write(&config, "event_retention = 50\n").expect("config");
    let mut d = DaemonConfig::new(dir.path())
        .arg("--config")
        .arg(&config)
        .start();
    let ns = berth_tests::unique_id("core-journal");
    let mut ec = EventsClient::new(d.channel().await);
    for i in 0..80 {
        ec.publish(req(
            &ns,
            PublishRequest {
                topic: "/test/j".into(),
                event: Some(event(0, i)),
            },
        ))
        .await
        .expect("publish");
    }
    let mut jc = JournalClient::new(d.channel().await);
    // 31..=80 are kept.
    let old = jc
        .subscribe(JournalSubscribeRequest {
            filters: vec![],
            after_seq: 10,
            from_oldest: false,
        })
        .await;
    let status = old.expect_err("cursor 10 is too old");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let oldest = jc
        .subscribe(JournalSubscribeRequest {
            filters: vec![],
            after_seq: 0,
            from_oldest: true,
        })
        .await
        .expect("from oldest")
        .into_inner()
        .next()
        .await
        .expect("one")
        .expect("ok");
    assert_eq!(oldest.seq, 31);

    let mut s = jc
        .subscribe(JournalSubscribeRequest {
            filters: vec![],
            after_seq: 60,
            from_oldest: false,
        })
        .await
        .expect("replay")
        .into_inner();
    for want in 61..=80u64 {
        let ev = s.next().await.expect("item").expect("ok");
        assert_eq!(ev.seq, want);
        assert_eq!(ev.namespace, ns);
        assert_eq!(ev.topic, "/test/j");
        let start = TaskStart::decode(ev.event.expect("event").value.as_slice()).expect("decode");
        assert_eq!(u64::from(start.pid), want - 1);
    }
    // Then live.
    ec.publish(req(
        &ns,
        PublishRequest {
            topic: "/test/live".into(),
            event: Some(event(0, 80)),
        },
    ))
    .await
    .expect("publish live");
    let ev = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("live event")
        .expect("item")
        .expect("ok");
    assert_eq!((ev.seq, ev.topic.as_str()), (81, "/test/live"));

    // A restart keeps the journal: a subscriber resumes from its cursor and misses nothing.
    d.restart();
    let mut jc = JournalClient::new(d.channel().await);
    let mut s = jc
        .subscribe(JournalSubscribeRequest {
            filters: vec!["topic==/test/live".into()],
            after_seq: 70,
            from_oldest: false,
        })
        .await
        .expect("replay after restart")
        .into_inner();
    let ev = s.next().await.expect("item").expect("ok");
    assert_eq!(ev.seq, 81);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_subscriber_latency() {
    if !berth_tests::require_root() {
        return;
    }
    let dir = TestDir::new("daemon_core_latency");
    let d = Daemon::start(dir.path());
    let ns = berth_tests::unique_id("core-lat");
    let mut sub = EventsClient::new(d.channel().await)
        .subscribe(req(
            &ns,
            SubscribeRequest {
                filters: vec![format!("namespace=={ns}")],
            },
        ))
        .await
        .expect("subscribe")
        .into_inner();
    let mut ec = EventsClient::new(d.channel().await);
    let mut lat = Vec::new();
    for i in 0..100 {
        let t0 = Instant::now();
        ec.publish(req(
            &ns,
            PublishRequest {
                topic: "/test/lat".into(),
                event: Some(event(0, i)),
            },
        ))
        .await
        .expect("publish");
        let env = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("event within 10 s")
            .expect("open")
            .expect("ok");
        lat.push(t0.elapsed());
        let ev = TaskStart::decode(env.event.expect("event").value.as_slice()).expect("decode");
        assert_eq!(ev.pid, i);
    }
    lat.sort();
    let (p50, p90, max) = (lat[50], lat[90], lat[99]);
    eprintln!("durable publish -> subscriber latency: median {p50:?}, p90 {p90:?}, max {max:?}");
    // The journal (<state>/events/) sits in the test's state dir, on disk here; it is never fsynced, so this is
    // sub-millisecond on disk and on a tmpfs alike (berthd-bench). A sanity bound, not the target.
    assert!(p50 < Duration::from_millis(500), "median {p50:?}");
}
