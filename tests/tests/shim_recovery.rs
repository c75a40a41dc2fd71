//! berth-shim recovery: event replay after reconnects (exactly once; the whole history when
//! nothing is acked), the journal continuing in a new shim on the same bundle, and a restarted
//! shim taking over a running container.

use berth_tests::shim_fixture as support;

use std::time::Duration;

use berth_proto::shim::{event::Kind, AckRequest, Status};
use berth_tests::proc;
use nix::sys::signal::Signal;
use support::*;
use tonic::Code;

#[tokio::test]
async fn shim_events_replay_after_reconnect() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = ShimFixture::new("shim-replay", &["sh", "-c", "read x; exit 5"]);
    let (sock, mut c) = fx.start_and_connect().await;
    let stdin = fx.dir.join("stdin.fifo");
    mkfifo(&stdin);
    let req = fx.create_req_with(&fx.out_file("out.txt"), |s| {
        s.stdin = stdin.display().to_string();
    });
    let pid = fx.create_start(&mut c, req).await;
    {
        let mut ev = events(&sock, 0).await;
        let evs = collect_until(&mut ev, "started", Duration::from_secs(5)).await;
        assert_eq!(kinds(&evs), ["created", "started"]);
        // The client goes away (berthd dies) ...
    }
    // ... and the container exits while nobody listens: CloseIO gives `read` its EOF.
    close_stdin(&mut c, "").await;
    assert_eq!(wait(&mut c, "").await.exit_status, 5);

    // Nothing acked: the whole history, in order.
    let mut ev = events(&sock, 0).await;
    let evs = collect_until(&mut ev, "exited", Duration::from_secs(5)).await;
    assert_eq!(kinds(&evs), ["created", "started", "exited"]);
    assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    drop(ev);

    // Acked up to "started": a reconnect gets the exit exactly once, then nothing.
    c.ack(AckRequest { seq: 2 }).await.expect("ack");
    let mut ev = events(&sock, 2).await;
    let first = expect_event(&mut ev, "exit").await;
    assert_eq!(first.seq, 3);
    match first.kind {
        Some(Kind::Exited(e)) => assert_eq!((e.pid, e.exit_status), (pid, 5)),
        other => panic!("expected the exit, got {other:?}"),
    }
    assert!(
        next_event(&mut ev, Duration::from_millis(500))
            .await
            .is_none(),
        "more than the exit was replayed"
    );
    // Acked events are gone from the journal: Events(0) starts after the ack.
    let mut ev0 = events(&sock, 0).await;
    let e = expect_event(&mut ev0, "first unacked").await;
    assert_eq!(e.seq, 3);
    // Ack is cumulative and checked.
    let err = c
        .ack(AckRequest { seq: 99 })
        .await
        .expect_err("ack beyond the journal");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    c.ack(AckRequest { seq: 3 }).await.expect("ack all");

    // Live events keep flowing on an open stream, numbered on.
    delete(&mut c, "").await;
    let d = expect_event(&mut ev, "delete").await;
    assert_eq!(
        (kinds(std::slice::from_ref(&d)), d.seq),
        (vec!["deleted"], 4)
    );
    let old_pid = fx.shim_pid().expect("shim pid");
    shutdown(&mut c).await;
    drop((c, ev, ev0));
    assert!(
        proc::wait_dead(old_pid, Duration::from_secs(5)),
        "shim did not exit"
    );

    // A new shim on the same bundle continues the journal: the unacked delete is still there,
    // and new events are numbered on.
    let (sock, mut c) = fx.start_and_connect().await;
    assert_ne!(fx.shim_pid(), Some(old_pid));
    let mut ev = events(&sock, 0).await;
    let e = expect_event(&mut ev, "replayed delete").await;
    assert_eq!((kind_name(&e), e.seq), ("deleted", 4));
    fx.create(&mut c, fx.create_req(&fx.out_file("out2.txt")))
        .await;
    let e = expect_event(&mut ev, "created").await;
    assert_eq!((kind_name(&e), e.seq), ("created", 5));
    delete_shutdown(&mut c).await;
    fx.finish();
}

#[tokio::test]
async fn shim_restarted_takes_over_its_container() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = ShimFixture::new("shim-restart", &["sleep", "1000"]);
    let (_, mut c) = fx.start_and_connect().await;
    let old_pid = fx.shim_pid().expect("shim pid");
    let pid = fx
        .create_start(&mut c, fx.create_req(&fx.out_file("out.txt")))
        .await;
    drop(c);
    assert!(proc::kill(old_pid, Signal::SIGKILL));
    assert!(proc::wait_dead(old_pid, Duration::from_secs(5)));
    assert!(proc::alive(pid), "the container died with its shim");

    // `berth-shim start` again on the same bundle: the new shim takes the container over.
    let (sock, mut c) = fx.start_and_connect().await;
    assert_ne!(fx.shim_pid(), Some(old_pid));
    let st = state(&mut c, "").await;
    assert_eq!((st.pid, st.status), (pid, Status::Running as i32));
    let mut ev = events(&sock, 0).await;
    let evs = collect_until(&mut ev, "started", Duration::from_secs(5)).await;
    assert_eq!(kinds(&evs), ["created", "started"]);
    assert_eq!(kill_wait(&mut c, "", 9).await, 137);
    let e = expect_event(&mut ev, "exit").await;
    assert_eq!((kind_name(&e), e.seq), ("exited", 3));
    delete(&mut c, "").await;
    let e = expect_event(&mut ev, "delete").await;
    assert_eq!((kind_name(&e), e.seq), ("deleted", 4));
    shutdown(&mut c).await;
    fx.finish();
}
