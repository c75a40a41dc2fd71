//! berth-shim under stress: the starter's process group and session SIGKILLed, the shim
//! itself SIGKILLed then `berth-shim delete`, and hostile requests. The `sleep 1000` commands are
//! workloads (running until killed), never waits.

use berth_tests::shim_fixture as support;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio as PStdio};
use std::time::Duration;

use berth_proto::shim::{
    CreateRequest, DeleteRequest, ExecRequest, Mount, StartRequest, Status, Stdio, WaitRequest,
};
use berth_tests::proc;
use nix::sys::signal::Signal;
use support::*;
use tonic::Code;

#[tokio::test]
async fn shim_survives_its_starters_session_being_killed() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = ShimFixture::new("shim-orphan", &["sleep", "1000"]);
    let addr_file = fx.dir.join("addr");
    // The stand-in for berthd: its own session, runs `berth-shim start`, then lingers.
    let script = format!(
        "{} start {} --address /nonexistent.sock > {}; exec sleep 1000",
        berth_tests::bin("berth-shim").display(),
        fx.shim_args().join(" "),
        addr_file.display()
    );
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", &script]).stdin(PStdio::null());
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(Into::into));
    }
    let mut starter = cmd.spawn().expect("spawning the starter");
    let starter_pid = starter.id() as i32;
    fx.guard.pid(starter_pid);
    eventually("the shim address", Duration::from_secs(10), || {
        std::fs::read_to_string(&addr_file).is_ok_and(|s| s.contains("unix://"))
    })
    .await;
    let sock = socket_of(&std::fs::read_to_string(&addr_file).expect("addr"));
    let shim_pid = fx.shim_pid().expect("shim pid");
    fx.guard.pid(shim_pid);
    let mut c = connect(&sock).await;
    let mut ev = events(&sock, 0).await;
    let pid = fx
        .create_start(&mut c, fx.create_req(&fx.out_file("out.txt")))
        .await;
    let evs = collect_until(&mut ev, "started", Duration::from_secs(5)).await;
    assert_eq!(kinds(&evs), ["created", "started"]);

    let (starter_sid, starter_pgid) = proc::sid_pgid(starter_pid).expect("starter stat");
    let (shim_sid, shim_pgid) = proc::sid_pgid(shim_pid).expect("shim stat");
    assert_ne!(shim_sid, starter_sid, "shim shares the starter's session");
    assert_ne!(
        shim_pgid, starter_pgid,
        "shim shares the starter's process group"
    );
    // SIGKILL the starter's whole process group (= its session here), stream still open.
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(starter_pgid), Signal::SIGKILL)
        .expect("kill -9 -PGID of the starter");
    let _ = starter.wait();
    drop(c);
    // Nothing must happen now: a window, not a wait. Had the group's SIGKILL (or a SIGHUP from the
    // session's end) reached them, they would be gone within it.
    holds_for(
        "the shim and its container living on after their starter died",
        Duration::from_millis(200),
        || proc::alive(shim_pid) && proc::alive(pid),
    )
    .await;
    assert!(proc::alive(shim_pid), "the shim died with its starter");
    assert!(proc::alive(pid), "the container died with the starter");

    // A new client drives them; the old stream sees nothing odd.
    let mut c = connect(&sock).await;
    assert_eq!(state(&mut c, "").await.status, Status::Running as i32);
    assert_eq!(kill_wait(&mut c, "", 9).await, 137);
    let e = expect_event(&mut ev, "exit on the old stream").await;
    assert_eq!(kind_name(&e), "exited");
    delete_shutdown(&mut c).await;
    assert!(
        proc::wait_dead(shim_pid, Duration::from_secs(5)),
        "shim still running"
    );
    fx.finish();
}

#[tokio::test]
async fn shim_sigkilled_then_delete_cleans_up() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = ShimFixture::new("shim-sigkill", &["sleep", "1000"]);
    // The rootfs comes as a mount the shim performs (like a snapshot).
    let src = fx.dir.join("rootfs-src");
    std::fs::rename(&fx.bundle.rootfs, &src).expect("moving the rootfs");
    std::fs::create_dir(&fx.bundle.rootfs).expect("empty rootfs dir");
    let (sock, mut c) = fx.start_and_connect().await;
    let shim_pid = fx.shim_pid().expect("shim pid");
    let mut req = fx.create_req(&fx.out_file("out.txt"));
    req.rootfs = vec![Mount {
        r#type: "bind".into(),
        source: src.display().to_string(),
        target: String::new(),
        options: vec!["rbind".into(), "rw".into()],
    }];
    let pid = fx.create_start(&mut c, req).await;
    assert!(
        berth_tests::is_mounted(&fx.bundle.rootfs),
        "rootfs not mounted"
    );
    assert!(proc::kill(shim_pid, Signal::SIGKILL));
    assert!(proc::wait_dead(shim_pid, Duration::from_secs(5)));
    drop(c);

    let out = fx.run_shim("delete", &[]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("delete prints JSON");
    assert_eq!(v["exit_status"], 137, "{v}");
    assert_eq!(v["pid"], pid, "{v}");
    assert!(
        v["exited_at"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{v}"
    );
    assert!(
        !berth_tests::is_mounted(&fx.bundle.rootfs),
        "rootfs still mounted"
    );
    assert!(
        proc::wait_dead(pid, Duration::from_secs(5)),
        "container still running"
    );
    assert!(!sock.exists(), "socket left behind");
    let cgroups = berth_tests::guard::cgroup_dirs(&fx.bundle.cgroups_path());
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    fx.finish();
}

#[tokio::test]
async fn shim_hostile_requests_get_clear_errors() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = ShimFixture::new("shim-hostile", &["sleep", "1000"]);
    let config = fx.bundle.config_path();
    let saved = std::fs::read(&config).expect("config");
    std::fs::remove_file(&config).expect("removing config.json");
    let (_, mut c) = fx.start_and_connect().await;
    let out = fx.out_file("out.txt");

    let err = c
        .create(fx.create_req(&out))
        .await
        .expect_err("bundle without config.json");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("config.json"), "{err}");
    std::fs::write(&config, saved).expect("restoring config.json");

    let missing = fx.dir.join("no-such-fifo");
    let req = fx.create_req_with(&out, |s| s.stdout = missing.display().to_string());
    let err = c.create(req).await.expect_err("missing stdout");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.message().contains("no-such-fifo"), "{err}");

    let err = c
        .create(CreateRequest {
            id: "someone-else".into(),
            ..fx.create_req(&out)
        })
        .await
        .expect_err("wrong id");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = c
        .start(StartRequest::default())
        .await
        .expect_err("start before create");
    assert_eq!(err.code(), Code::NotFound, "{err}");

    // The shim still serves: the real container works.
    fx.create(&mut c, fx.create_req(&out)).await;
    let err = c
        .create(fx.create_req(&out))
        .await
        .expect_err("second create");
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    start(&mut c, "").await;
    for exec_id in ["nope", "../../etc"] {
        let err = c
            .start(StartRequest {
                exec_id: exec_id.into(),
            })
            .await
            .expect_err("unknown exec");
        assert_eq!(err.code(), Code::NotFound, "{err}");
        let err = c
            .kill(kill_req(exec_id, 9))
            .await
            .expect_err("kill unknown exec");
        assert_eq!(err.code(), Code::NotFound, "{err}");
        let err = c
            .wait(WaitRequest {
                exec_id: exec_id.into(),
            })
            .await
            .expect_err("wait");
        assert_eq!(err.code(), Code::NotFound, "{err}");
    }
    let err = c
        .exec(exec_req("../evil", Stdio::default(), &["true"]))
        .await
        .expect_err("bad exec id");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = c
        .exec(ExecRequest {
            process_json: b"{not json".to_vec(),
            ..exec_req("badjson", Stdio::default(), &[])
        })
        .await
        .expect_err("bad process JSON");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let stdio = Stdio {
        stdin: missing.display().to_string(),
        ..Default::default()
    };
    let err = c
        .exec(exec_req("nostdio", stdio, &["true"]))
        .await
        .expect_err("missing stdin");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    // A running init cannot be deleted.
    let err = c
        .delete(DeleteRequest::default())
        .await
        .expect_err("delete running");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    // ... and the shim still serves it.
    assert_eq!(state(&mut c, "").await.status, Status::Running as i32);
    assert_eq!(kill_wait(&mut c, "", 9).await, 137);
    delete_shutdown(&mut c).await;
    fx.finish();
}
