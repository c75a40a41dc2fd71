//! berth-shim recovery: event replay after reconnects (exactly once; the whole history when
//! nothing is acked), the journal continuing in a new shim on the same bundle, and a restarted
//! shim taking over a running container.

#[path = "shim_support.rs"]
mod support;

use std::time::Duration;

use berth_proto::shim::{
    event::Kind, AckRequest, CloseIoRequest, DeleteRequest, KillRequest, ShutdownRequest,
    StartRequest, StateRequest, Status, WaitRequest,
};
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
    let sock = fx.start_shim();
    let mut c = connect(&sock).await;
    let stdin = fx.dir.join("stdin.fifo");
    nix::unistd::mkfifo(&stdin, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let mut req = fx.create_req(&fx.out_file("out.txt"));
    if let Some(s) = req.stdio.as_mut() {
        s.stdin = stdin.display().to_string();
    }
    let pid = c.create(req).await.expect("create").into_inner().pid;
    fx.guard.pid(pid);
    c.start(StartRequest::default()).await.expect("start");
    {
        let mut ev = events(&sock, 0).await;
        let evs = collect_until(&mut ev, "started", Duration::from_secs(5)).await;
        assert_eq!(kinds(&evs), ["created", "started"]);
        // The client goes away (berthd dies) ...
    }
    // ... and the container exits while nobody listens: CloseIO gives `read` its EOF.
    c.close_io(CloseIoRequest {
        exec_id: String::new(),
        stdin: true,
    })
    .await
    .expect("close io");
    let w = c
        .wait(WaitRequest::default())
        .await
        .expect("wait")
        .into_inner();
    assert_eq!(w.exit_status, 5);

    // Nothing acked: the whole history, in order.
    let mut ev = events(&sock, 0).await;
    let evs = collect_until(&mut ev, "exited", Duration::from_secs(5)).await;
    assert_eq!(kinds(&evs), ["created", "started", "exited"]);
    assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    drop(ev);

    // Acked up to "started": a reconnect gets the exit exactly once, then nothing.
    c.ack(AckRequest { seq: 2 }).await.expect("ack");
    let mut ev = events(&sock, 2).await;
    let first = next_event(&mut ev, Duration::from_secs(5))
        .await
        .expect("exit event");
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
    let e = next_event(&mut ev0, Duration::from_secs(5))
        .await
        .expect("event");
    assert_eq!(e.seq, 3);
    // Ack is cumulative and checked.
    let err = c
        .ack(AckRequest { seq: 99 })
        .await
        .expect_err("ack beyond the journal");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    c.ack(AckRequest { seq: 3 }).await.expect("ack all");

    // Live events keep flowing on an open stream, numbered on.
    c.delete(DeleteRequest::default()).await.expect("delete");
    let d = next_event(&mut ev, Duration::from_secs(5))
        .await
        .expect("delete event");
    assert_eq!(
        (kinds(std::slice::from_ref(&d)), d.seq),
        (vec!["deleted"], 4)
    );
    let old_pid = fx.shim_pid().expect("shim pid");
    c.shutdown(ShutdownRequest { now: false })
        .await
        .expect("shutdown");
    drop((c, ev, ev0));
    assert!(
        proc::wait_dead(old_pid, Duration::from_secs(5)),
        "shim did not exit"
    );

    // A new shim on the same bundle continues the journal: the unacked delete is still there,
    // and new events are numbered on.
    let sock = fx.start_shim();
    assert_ne!(fx.shim_pid(), Some(old_pid));
    let mut c = connect(&sock).await;
    let mut ev = events(&sock, 0).await;
    let e = next_event(&mut ev, Duration::from_secs(5))
        .await
        .expect("replayed");
    assert_eq!((kind_name(&e), e.seq), ("deleted", 4));
    let out = fx.out_file("out2.txt");
    let pid = c
        .create(fx.create_req(&out))
        .await
        .expect("create again")
        .into_inner()
        .pid;
    fx.guard.pid(pid);
    let e = next_event(&mut ev, Duration::from_secs(5))
        .await
        .expect("created");
    assert_eq!((kind_name(&e), e.seq), ("created", 5));
    c.delete(DeleteRequest::default())
        .await
        .expect("delete created");
    c.shutdown(ShutdownRequest { now: false })
        .await
        .expect("shutdown");
    fx.finish();
}

#[tokio::test]
async fn shim_restarted_takes_over_its_container() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = ShimFixture::new("shim-restart", &["sleep", "1000"]);
    let sock = fx.start_shim();
    let old_pid = fx.shim_pid().expect("shim pid");
    let mut c = connect(&sock).await;
    let pid = c
        .create(fx.create_req(&fx.out_file("out.txt")))
        .await
        .expect("create")
        .into_inner()
        .pid;
    fx.guard.pid(pid);
    c.start(StartRequest::default()).await.expect("start");
    drop(c);
    assert!(proc::kill(old_pid, Signal::SIGKILL));
    assert!(proc::wait_dead(old_pid, Duration::from_secs(5)));
    assert!(proc::alive(pid), "the container died with its shim");

    // `berth-shim start` again on the same bundle: the new shim takes the container over.
    let sock = fx.start_shim();
    assert_ne!(fx.shim_pid(), Some(old_pid));
    let mut c = connect(&sock).await;
    let st = c
        .state(StateRequest::default())
        .await
        .expect("state")
        .into_inner();
    assert_eq!((st.pid, st.status), (pid, Status::Running as i32));
    let mut ev = events(&sock, 0).await;
    let evs = collect_until(&mut ev, "started", Duration::from_secs(5)).await;
    assert_eq!(kinds(&evs), ["created", "started"]);
    c.kill(KillRequest {
        exec_id: String::new(),
        signal: 9,
        all: false,
    })
    .await
    .expect("kill");
    let w = c
        .wait(WaitRequest::default())
        .await
        .expect("wait")
        .into_inner();
    assert_eq!(w.exit_status, 137);
    let e = next_event(&mut ev, Duration::from_secs(5))
        .await
        .expect("exit");
    assert_eq!((kind_name(&e), e.seq), ("exited", 3));
    c.delete(DeleteRequest::default()).await.expect("delete");
    let e = next_event(&mut ev, Duration::from_secs(5))
        .await
        .expect("delete");
    assert_eq!((kind_name(&e), e.seq), ("deleted", 4));
    c.shutdown(ShutdownRequest { now: false })
        .await
        .expect("shutdown");
    fx.finish();
}
