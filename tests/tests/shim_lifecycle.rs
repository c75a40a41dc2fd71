//! berth-shim lifecycle through the shim API with real busybox containers under Debian's
//! runc: create/start/wait/exit code, exec with its own exit code, kill with signals,
//! pause/resume, pids, stats. Each test cleans up (runc delete, cgroups, shim) and checks it.

#[path = "shim_support.rs"]
mod support;

use std::time::Duration;

use berth_proto::cgroups::Metrics;
use berth_proto::shim::{
    DeleteRequest, Empty, ExecRequest, KillRequest, PidsRequest, ShutdownRequest, StartRequest,
    StateRequest, StatsRequest, Status, Stdio, UpdateRequest, WaitRequest,
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
    let again = std::process::Command::new(berth_tests::bin("berth-shim"))
        .arg("start")
        .args(fx.shim_args())
        .args(["--address", "/nonexistent/berthd.sock"])
        .output()
        .expect("second berth-shim start");
    assert!(again.status.success());
    assert_eq!(socket_of(&String::from_utf8_lossy(&again.stdout)), sock);
    assert_eq!(fx.shim_pid(), Some(shim_pid), "a second shim was started");
    // It is its own session leader's child: not in our session, stdio not ours.
    let (sid, pgid) = berth_tests::proc::sid_pgid(shim_pid).expect("shim stat");
    let (my_sid, my_pgid) = berth_tests::proc::sid_pgid(std::process::id()).expect("stat");
    assert!(sid != my_sid && pgid != my_pgid);
    let mut c = connect(&sock).await;
    let mut ev = events(&sock, 0).await;
    let out = fx.out_file("out.txt");
    let pid = c
        .create(fx.create_req(&out))
        .await
        .expect("create")
        .into_inner()
        .pid;
    assert!(pid > 0);
    let st = c
        .state(StateRequest::default())
        .await
        .expect("state")
        .into_inner();
    assert_eq!(st.status, Status::Created as i32);
    assert_eq!(st.pid, pid);
    let started = c
        .start(StartRequest::default())
        .await
        .expect("start")
        .into_inner();
    assert_eq!(started.pid, pid);
    let w = c
        .wait(WaitRequest::default())
        .await
        .expect("wait")
        .into_inner();
    assert_eq!(w.exit_status, 7);
    assert!(w.exited_at.is_some());
    assert_eq!(std::fs::read_to_string(&out).expect("output"), "hello\n");
    let st = c
        .state(StateRequest::default())
        .await
        .expect("state")
        .into_inner();
    assert_eq!(st.status, Status::Stopped as i32);
    assert_eq!(st.exit_status, 7);
    // A second Start is refused; the shim keeps serving.
    let err = c.start(StartRequest::default()).await.expect_err("restart");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let del = c
        .delete(DeleteRequest::default())
        .await
        .expect("delete")
        .into_inner();
    assert_eq!((del.pid, del.exit_status), (pid, 7));
    let evs = collect_until(&mut ev, "deleted", Duration::from_secs(10)).await;
    assert_eq!(kinds(&evs), ["created", "started", "exited", "deleted"]);
    let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    // The exit is recorded on disk for a berthd that comes back after the shim is gone.
    let rec = std::fs::read_to_string(fx.bundle.path.join("init.exit")).expect("init.exit");
    assert!(rec.contains("\"exit_status\":7"), "{rec}");
    c.shutdown(ShutdownRequest { now: false })
        .await
        .expect("shutdown");
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
    let sock = fx.start_shim();
    let mut c = connect(&sock).await;
    let out = fx.out_file("out.txt");
    let pid = c
        .create(fx.create_req(&out))
        .await
        .expect("create")
        .into_inner()
        .pid;
    fx.guard.pid(pid);
    c.start(StartRequest::default()).await.expect("start");
    let exec_out = fx.out_file("exec.txt");
    let stdio = Stdio {
        stdout: exec_out.display().to_string(),
        stderr: exec_out.display().to_string(),
        ..Default::default()
    };
    c.exec(ExecRequest {
        exec_id: "e1".into(),
        stdio: Some(stdio.clone()),
        process_json: process_json(
            &[
                "sh",
                "-c",
                "echo from-exec; grep -E '^Sig(Blk|Ign)' /proc/self/status; exit 3",
            ],
            false,
        ),
    })
    .await
    .expect("exec");
    let err = c
        .exec(ExecRequest {
            exec_id: "e1".into(),
            stdio: Some(stdio),
            process_json: process_json(&["true"], false),
        })
        .await
        .expect_err("duplicate exec");
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    let epid = c
        .start(StartRequest {
            exec_id: "e1".into(),
        })
        .await
        .expect("start exec")
        .into_inner()
        .pid;
    assert!(epid > 0 && epid != pid);
    let w = c
        .wait(WaitRequest {
            exec_id: "e1".into(),
        })
        .await
        .expect("wait exec")
        .into_inner();
    assert_eq!(w.exit_status, 3);
    assert_eq!(
        std::fs::read_to_string(&exec_out).expect("exec output"),
        // No ignored (SIGPIPE) or blocked signals leak from the shim into the container.
        "from-exec\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
    let st = c
        .state(StateRequest {
            exec_id: "e1".into(),
        })
        .await
        .expect("exec state")
        .into_inner();
    assert_eq!((st.status, st.exit_status), (Status::Stopped as i32, 3));
    // Init is still running.
    let st = c
        .state(StateRequest::default())
        .await
        .expect("state")
        .into_inner();
    assert_eq!(st.status, Status::Running as i32);
    let d = c
        .delete(DeleteRequest {
            exec_id: "e1".into(),
        })
        .await
        .expect("delete exec")
        .into_inner();
    assert_eq!((d.pid, d.exit_status), (epid, 3));
    let err = c
        .state(StateRequest {
            exec_id: "e1".into(),
        })
        .await
        .expect_err("deleted exec");
    assert_eq!(err.code(), Code::NotFound);
    // An exec still running when init dies: its exit is journaled before TaskDeleted.
    c.exec(ExecRequest {
        exec_id: "e2".into(),
        stdio: Some(Stdio::default()),
        process_json: process_json(&["sleep", "999"], false),
    })
    .await
    .expect("exec e2");
    c.start(StartRequest {
        exec_id: "e2".into(),
    })
    .await
    .expect("start e2");
    let mut ev = events(&sock, 0).await;
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
    c.delete(DeleteRequest::default()).await.expect("delete");
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
    c.shutdown(ShutdownRequest { now: false })
        .await
        .expect("shutdown");
    fx.finish();
}

#[tokio::test]
async fn shim_kill_with_signals() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = ShimFixture::new(
        "shim-kill",
        &[
            "sh",
            "-c",
            "trap 'exit 42' TERM; while true; do sleep 0.1; done",
        ],
    );
    let sock = fx.start_shim();
    let mut c = connect(&sock).await;
    let out = fx.out_file("out.txt");
    let pid = c
        .create(fx.create_req(&out))
        .await
        .expect("create")
        .into_inner()
        .pid;
    fx.guard.pid(pid);
    c.start(StartRequest::default()).await.expect("start");
    // An exec that we kill with SIGKILL: 128 + 9.
    c.exec(ExecRequest {
        exec_id: "sleeper".into(),
        stdio: Some(Stdio::default()),
        process_json: process_json(&["sleep", "1000"], false),
    })
    .await
    .expect("exec");
    c.start(StartRequest {
        exec_id: "sleeper".into(),
    })
    .await
    .expect("start exec");
    c.kill(KillRequest {
        exec_id: "sleeper".into(),
        signal: 9,
        all: false,
    })
    .await
    .expect("kill exec");
    let w = c
        .wait(WaitRequest {
            exec_id: "sleeper".into(),
        })
        .await
        .expect("wait exec");
    assert_eq!(w.into_inner().exit_status, 137);
    // SIGTERM reaches init's trap.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.kill(KillRequest {
        exec_id: String::new(),
        signal: 15,
        all: false,
    })
    .await
    .expect("kill init");
    let w = c
        .wait(WaitRequest::default())
        .await
        .expect("wait")
        .into_inner();
    assert_eq!(w.exit_status, 42);
    let err = c
        .kill(KillRequest {
            exec_id: String::new(),
            signal: 9,
            all: false,
        })
        .await
        .expect_err("kill of an exited init");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    c.delete(DeleteRequest::default()).await.expect("delete");
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
    let sock = fx.start_shim();
    let mut c = connect(&sock).await;
    let mut ev = events(&sock, 0).await;
    let out = fx.out_file("out.txt");
    let pid = c
        .create(fx.create_req(&out))
        .await
        .expect("create")
        .into_inner()
        .pid;
    fx.guard.pid(pid);
    c.start(StartRequest::default()).await.expect("start");
    c.exec(ExecRequest {
        exec_id: "x1".into(),
        stdio: Some(Stdio::default()),
        process_json: process_json(&["sleep", "999"], false),
    })
    .await
    .expect("exec");
    let epid = c
        .start(StartRequest {
            exec_id: "x1".into(),
        })
        .await
        .expect("start exec")
        .into_inner()
        .pid;
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
    let st = c
        .state(StateRequest::default())
        .await
        .expect("state")
        .into_inner();
    assert_eq!(st.status, Status::Paused as i32);
    let freezer = format!(
        "/sys/fs/cgroup/freezer{}/freezer.state",
        fx.bundle.cgroups_path()
    );
    assert_eq!(
        std::fs::read_to_string(&freezer).expect("freezer").trim(),
        "FROZEN"
    );
    c.resume(Empty {}).await.expect("resume");
    let st = c
        .state(StateRequest::default())
        .await
        .expect("state")
        .into_inner();
    assert_eq!(st.status, Status::Running as i32);
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
    let w = c
        .wait(WaitRequest::default())
        .await
        .expect("wait")
        .into_inner();
    assert_eq!(w.exit_status, 137);
    let w = c
        .wait(WaitRequest {
            exec_id: "x1".into(),
        })
        .await
        .expect("wait exec")
        .into_inner();
    assert_eq!(w.exit_status, 137);
    c.delete(DeleteRequest::default()).await.expect("delete");
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
    c.shutdown(ShutdownRequest { now: false })
        .await
        .expect("shutdown");
    fx.finish();
}
