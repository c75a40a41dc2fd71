//! berth-shim lifecycle through the shim API with real busybox containers under Debian's
//! runc: create/start/wait/exit code, exec with its own exit code, kill with signals,
//! pause/resume, pids, stats. Each test cleans up (runc delete, cgroups, shim) and checks it.
//! The `sleep` in container and exec commands is their workload (running until killed), never a wait.

use berth_tests::shim_fixture as support;

use std::time::Duration;

use berth_proto::cgroups::Metrics;
use berth_proto::shim::{
    Empty, KillRequest, PidsRequest, ShutdownRequest, StartRequest, StateRequest, StatsRequest,
    Status, Stdio, UpdateRequest,
};
use prost::Message;
use support::*;
use tonic::Code;

#[tokio::test]
async fn shim_create_start_wait_exit_code() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = ShimFixture::new("shim-exit", &["sh", "-c", "echo hello; exit 7"]);
    let sock = fx.start_shim();
    let shim_pid = fx.shim_pid().expect("shim pid");
    // A second start on the same bundle finds the live shim and prints its address.
    let again = fx.run_shim("start", &["--address", "/nonexistent/berthd.sock"]);
    assert_eq!(socket_of(&again), sock);
    assert_eq!(fx.shim_pid(), Some(shim_pid), "a second shim was started");
    // It is its own session leader's child: not in our session, stdio not ours.
    let (sid, pgid) = berth_tests::proc::sid_pgid(shim_pid).expect("shim stat");
    let (my_sid, my_pgid) = berth_tests::proc::sid_pgid(std::process::id()).expect("stat");
    assert!(sid != my_sid && pgid != my_pgid);
    let mut c = connect(&sock).await;
    let mut ev = events(&sock, 0).await;
    let out = fx.out_file("out.txt");
    let pid = fx.create(&mut c, fx.create_req(&out)).await;
    assert!(pid > 0);
    let st = state(&mut c, "").await;
    assert_eq!(st.status, Status::Created as i32);
    assert_eq!(st.pid, pid);
    assert_eq!(start(&mut c, "").await, pid);
    let w = wait(&mut c, "").await;
    assert_eq!(w.exit_status, 7);
    assert!(w.exited_at.is_some());
    assert_eq!(std::fs::read_to_string(&out).expect("output"), "hello\n");
    let st = state(&mut c, "").await;
    assert_eq!(st.status, Status::Stopped as i32);
    assert_eq!(st.exit_status, 7);
    // A second Start is refused; the shim keeps serving.
    let err = c.start(StartRequest::default()).await.expect_err("restart");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let del = delete(&mut c, "").await;
    assert_eq!((del.pid, del.exit_status), (pid, 7));
    let evs = collect_until(&mut ev, "deleted", Duration::from_secs(10)).await;
    assert_eq!(kinds(&evs), ["created", "started", "exited", "deleted"]);
    let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    // The exit is recorded on disk for a berthd that comes back after the shim is gone.
    let rec = std::fs::read_to_string(fx.bundle.path.join("init.exit")).expect("init.exit");
    assert!(rec.contains("\"exit_status\":7"), "{rec}");
    shutdown(&mut c).await;
    assert!(
        berth_tests::proc::wait_dead(shim_pid, Duration::from_secs(5)),
        "shim did not exit after Delete + Shutdown"
    );
    assert!(!sock.exists(), "socket left behind");
    fx.finish();
}

#[tokio::test]
async fn shim_exec_has_its_own_exit_code() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = ShimFixture::new("shim-exec", &["sleep", "1000"]);
    let (sock, mut c) = fx.start_and_connect().await;
    let pid = fx
        .create_start(&mut c, fx.create_req(&fx.out_file("out.txt")))
        .await;
    let exec_out = fx.out_file("exec.txt");
    let stdio = Stdio {
        stdout: exec_out.display().to_string(),
        stderr: exec_out.display().to_string(),
        ..Default::default()
    };
    let script = "echo from-exec; grep -E '^Sig(Blk|Ign)' /proc/self/status; exit 3";
    c.exec(exec_req("e1", stdio.clone(), &["sh", "-c", script]))
        .await
        .expect("exec");
    let err = c
        .exec(exec_req("e1", stdio, &["true"]))
        .await
        .expect_err("duplicate exec");
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    let epid = start(&mut c, "e1").await;
    assert!(epid > 0 && epid != pid);
    assert_eq!(wait(&mut c, "e1").await.exit_status, 3);
    assert_eq!(
        std::fs::read_to_string(&exec_out).expect("exec output"),
        // No ignored (SIGPIPE) or blocked signals leak from the shim into the container.
        "from-exec\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
    let st = state(&mut c, "e1").await;
    assert_eq!((st.status, st.exit_status), (Status::Stopped as i32, 3));
    // Init is still running.
    assert_eq!(state(&mut c, "").await.status, Status::Running as i32);
    let d = delete(&mut c, "e1").await;
    assert_eq!((d.pid, d.exit_status), (epid, 3));
    let err = c
        .state(StateRequest {
            exec_id: "e1".into(),
        })
        .await
        .expect_err("deleted exec");
    assert_eq!(err.code(), Code::NotFound);
    // An exec still running when init dies: its exit is journaled before TaskDeleted.
    exec_start(&mut c, exec_req("e2", Stdio::default(), &["sleep", "999"])).await;
    let mut ev = events(&sock, 0).await;
    assert_eq!(kill_wait(&mut c, "", 9).await, 137);
    delete(&mut c, "").await;
    let evs = collect_until(&mut ev, "deleted", Duration::from_secs(10)).await;
    let exits: Vec<String> = evs
        .iter()
        .filter_map(|e| match &e.kind {
            Some(berth_proto::shim::event::Kind::Exited(x)) => Some(x.exec_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(kinds(&evs).last(), Some(&"deleted"));
    let mut sorted = exits.clone();
    sorted.sort();
    assert_eq!(sorted, ["", "e1", "e2"], "exits before delete: {exits:?}");
    shutdown(&mut c).await;
    fx.finish();
}

#[tokio::test]
async fn shim_kill_with_signals() {
    if !berth_tests::require_root() {
        return;
    }
    // Init says when its trap is set; its loop is the workload the signal interrupts.
    let fx = ShimFixture::new(
        "shim-kill",
        &[
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo trap-set; while true; do sleep 0.1; done",
        ],
    );
    let (_, mut c) = fx.start_and_connect().await;
    let out = fx.out_file("out.txt");
    fx.create_start(&mut c, fx.create_req(&out)).await;
    // An exec that we kill with SIGKILL: 128 + 9.
    let sleeper = exec_req("sleeper", Stdio::default(), &["sleep", "1000"]);
    exec_start(&mut c, sleeper).await;
    assert_eq!(kill_wait(&mut c, "sleeper", 9).await, 137);
    // SIGTERM reaches init's trap (once it is set).
    eventually(
        "init setting its TERM trap",
        Duration::from_secs(10),
        || std::fs::read_to_string(&out).is_ok_and(|s| s.contains("trap-set")),
    )
    .await;
    assert_eq!(kill_wait(&mut c, "", 15).await, 42);
    let err = c
        .kill(kill_req("", 9))
        .await
        .expect_err("kill of an exited init");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    delete(&mut c, "").await;
    c.shutdown(ShutdownRequest { now: true })
        .await
        .expect("shutdown");
    fx.finish();
}

#[tokio::test]
async fn shim_pause_resume_pids_stats() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = ShimFixture::new("shim-pause", &["sh", "-c", "sleep 1000 & exec sleep 1001"]);
    let (sock, mut c) = fx.start_and_connect().await;
    let mut ev = events(&sock, 0).await;
    let pid = fx
        .create_start(&mut c, fx.create_req(&fx.out_file("out.txt")))
        .await;
    let epid = exec_start(&mut c, exec_req("x1", Stdio::default(), &["sleep", "999"])).await;
    let pids = c
        .pids(PidsRequest {})
        .await
        .expect("pids")
        .into_inner()
        .processes;
    assert!(pids.len() >= 3, "{pids:?}");
    assert!(
        pids.iter().any(|p| p.pid == pid && p.exec_id.is_empty()),
        "{pids:?}"
    );
    assert!(
        pids.iter().any(|p| p.pid == epid && p.exec_id == "x1"),
        "{pids:?}"
    );

    let stats = c.stats(StatsRequest {}).await.expect("stats").into_inner();
    let any = stats.metrics.expect("metrics");
    assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
    let m = Metrics::decode(any.value.as_slice()).expect("decode metrics");
    assert!(m.pids.as_ref().expect("pids").current >= 3, "{:?}", m.pids);
    let mem = m.memory.expect("memory");
    assert!(mem.usage.expect("usage").usage > 0);
    assert!(m.cpu.expect("cpu").usage.expect("cpu usage").total > 0);

    // Update changes the cgroup limits; junk is refused.
    c.update(UpdateRequest {
        resources_json: br#"{"memory":{"limit":67108864}}"#.to_vec(),
    })
    .await
    .expect("update");
    let limit = format!(
        "/sys/fs/cgroup/memory{}/memory.limit_in_bytes",
        fx.bundle.cgroups_path()
    );
    assert_eq!(
        std::fs::read_to_string(&limit)
            .expect("memory limit")
            .trim(),
        "67108864"
    );
    let err = c
        .update(UpdateRequest {
            resources_json: b"nope".to_vec(),
        })
        .await
        .expect_err("bad resources");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    c.pause(Empty {}).await.expect("pause");
    assert_eq!(state(&mut c, "").await.status, Status::Paused as i32);
    let freezer = format!(
        "/sys/fs/cgroup/freezer{}/freezer.state",
        fx.bundle.cgroups_path()
    );
    assert_eq!(
        std::fs::read_to_string(&freezer).expect("freezer").trim(),
        "FROZEN"
    );
    c.resume(Empty {}).await.expect("resume");
    assert_eq!(state(&mut c, "").await.status, Status::Running as i32);
    assert_eq!(
        std::fs::read_to_string(&freezer).expect("freezer").trim(),
        "THAWED"
    );

    c.kill(KillRequest {
        exec_id: String::new(),
        signal: 9,
        all: true,
    })
    .await
    .expect("kill all");
    assert_eq!(wait(&mut c, "").await.exit_status, 137);
    assert_eq!(wait(&mut c, "x1").await.exit_status, 137);
    delete(&mut c, "").await;
    let evs = collect_until(&mut ev, "deleted", Duration::from_secs(10)).await;
    let k = kinds(&evs);
    for want in [
        "created",
        "started",
        "exec-added",
        "exec-started",
        "paused",
        "resumed",
        "deleted",
    ] {
        assert!(k.contains(&want), "{want} missing in {k:?}");
    }
    assert_eq!(k.iter().filter(|k| **k == "exited").count(), 2, "{k:?}");
    shutdown(&mut c).await;
    fx.finish();
}

/// A client that opens its output FIFO late, as ctr's `cio` does (its read open runs in a goroutine, and ctr
/// cancels it if the exit comes first), must not miss the output of a process that exits at once: Create
/// returns only once the client's read end is open, as containerd's shim (which opens the write end
/// blocking) does.
#[tokio::test]
async fn create_waits_for_a_late_fifo_reader() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = ShimFixture::new("shim-late-reader", &["sh", "-c", "echo quick; exit 3"]);
    let (_, mut c) = fx.start_and_connect().await;
    let out = fx.dir.join("out.fifo");
    mkfifo(&out);
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (out, opened) = (out.clone(), opened.clone());
        std::thread::spawn(move || {
            // The slow goroutine: it opens (blocking, like Go's fifo package) a while after Create was sent.
            std::thread::sleep(Duration::from_millis(300));
            let mut f = std::fs::File::open(&out).expect("blocking read open");
            opened.store(true, std::sync::atomic::Ordering::SeqCst);
            let mut text = String::new();
            std::io::Read::read_to_string(&mut f, &mut text).expect("read to EOF");
            text
        })
    };
    fx.create(&mut c, fx.create_req(&out)).await;
    assert!(
        opened.load(std::sync::atomic::Ordering::SeqCst),
        "Create returned before the client's read end was open"
    );
    start(&mut c, "").await;
    assert_eq!(wait(&mut c, "").await.exit_status, 3);
    delete(&mut c, "").await;
    let text = reader.join().expect("reader thread");
    assert_eq!(text, "quick\n", "all of the output, then EOF");
    shutdown(&mut c).await;
    fx.finish();
}
