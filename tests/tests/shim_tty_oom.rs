//! berth-shim terminals (pty from the runtime's console socket, resize, for init and an
//! exec) and OOM events from the container's memory cgroup, with real busybox containers.

#[path = "shim_support.rs"]
mod support;

use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use berth_proto::shim::{
    DeleteRequest, ExecRequest, KillRequest, ResizePtyRequest, ShutdownRequest, StartRequest,
    Stdio, WaitRequest,
};
use support::*;
use tonic::Code;

#[tokio::test]
async fn shim_terminal_with_resize() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = ShimFixture::new("shim-tty", &["sh", "-c", "sleep 1; stty size; sleep 1000"]);
    fx.bundle
        .edit_spec(|s| s["process"]["terminal"] = true.into());
    let sock = fx.start_shim();
    let mut c = connect(&sock).await;
    let out = fx.dir.join("tty.fifo");
    nix::unistd::mkfifo(&out, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    // Read the FIFO like ctr does: opened before Create, non-blocking.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&out)
        .expect("opening the output fifo");
    let mut req = fx.create_req(&out);
    if let Some(s) = req.stdio.as_mut() {
        s.terminal = true;
        s.stderr = String::new();
    }
    let pid = c.create(req).await.expect("create").into_inner().pid;
    fx.guard.pid(pid);
    c.start(StartRequest::default()).await.expect("start");
    c.resize_pty(ResizePtyRequest {
        exec_id: String::new(),
        width: 101,
        height: 33,
    })
    .await
    .expect("resize");
    let mut text = String::new();
    eventually("stty size output of init", Duration::from_secs(10), || {
        let mut buf = [0u8; 256];
        if let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text.contains("33 101")
    })
    .await;

    // An exec with its own terminal and size.
    let exec_out = fx.out_file("exec-tty.txt");
    c.exec(ExecRequest {
        exec_id: "tty1".into(),
        stdio: Some(Stdio {
            stdout: exec_out.display().to_string(),
            terminal: true,
            ..Default::default()
        }),
        process_json: process_json(&["sh", "-c", "sleep 0.5; stty size; exit 6"], true),
    })
    .await
    .expect("exec");
    c.start(StartRequest {
        exec_id: "tty1".into(),
    })
    .await
    .expect("start exec");
    c.resize_pty(ResizePtyRequest {
        exec_id: "tty1".into(),
        width: 77,
        height: 22,
    })
    .await
    .expect("resize exec");
    let w = c
        .wait(WaitRequest {
            exec_id: "tty1".into(),
        })
        .await
        .expect("wait exec")
        .into_inner();
    assert_eq!(w.exit_status, 6);
    let t = std::fs::read_to_string(&exec_out).expect("exec output");
    assert!(t.contains("22 77"), "exec stty size printed {t:?}");
    let err = c
        .resize_pty(ResizePtyRequest {
            exec_id: "nope".into(),
            width: 1,
            height: 1,
        })
        .await
        .expect_err("resize unknown exec");
    assert_eq!(err.code(), Code::NotFound);
    c.kill(KillRequest {
        exec_id: String::new(),
        signal: 9,
        all: false,
    })
    .await
    .expect("kill");
    assert_eq!(
        c.wait(WaitRequest::default())
            .await
            .expect("wait")
            .into_inner()
            .exit_status,
        137
    );
    c.delete(DeleteRequest::default()).await.expect("delete");
    c.shutdown(ShutdownRequest { now: false })
        .await
        .expect("shutdown");
    fx.finish();
}

#[tokio::test]
async fn shim_reports_oom() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = ShimFixture::new(
        "shim-oom",
        &[
            "sh",
            "-c",
            "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done",
        ],
    );
    fx.bundle.edit_spec(|s| {
        s["linux"]["resources"]["memory"] = serde_json::json!({"limit": 16 * 1024 * 1024});
    });
    let sock = fx.start_shim();
    let mut c = connect(&sock).await;
    let mut ev = events(&sock, 0).await;
    let pid = c
        .create(fx.create_req(&fx.out_file("out.txt")))
        .await
        .expect("create")
        .into_inner()
        .pid;
    fx.guard.pid(pid);
    c.start(StartRequest::default()).await.expect("start");
    let w = c
        .wait(WaitRequest::default())
        .await
        .expect("wait")
        .into_inner();
    assert_eq!(w.exit_status, 137, "the memory hog was not OOM-killed");
    let evs = collect_until(&mut ev, "exited", Duration::from_secs(10)).await;
    let mut k = kinds(&evs);
    // The OOM event may trail the exit by a moment.
    if !k.contains(&"oom") {
        if let Some(e) = next_event(&mut ev, Duration::from_secs(2)).await {
            k.push(kind_name(&e));
        }
    }
    assert!(k.contains(&"oom"), "no oom event in {k:?}");
    c.delete(DeleteRequest::default()).await.expect("delete");
    c.shutdown(ShutdownRequest { now: false })
        .await
        .expect("shutdown");
    fx.finish();
}

#[tokio::test]
async fn shim_terminal_stdin_reaches_the_process() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = ShimFixture::new(
        "shim-tty-in",
        &["sh", "-c", "read x; echo got-$x; read y; echo eof-$?"],
    );
    fx.bundle
        .edit_spec(|s| s["process"]["terminal"] = true.into());
    let sock = fx.start_shim();
    let mut c = connect(&sock).await;
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
    let stdin = fx.dir.join("in.fifo");
    let out = fx.dir.join("out.fifo");
    nix::unistd::mkfifo(&stdin, mode).expect("mkfifo in");
    nix::unistd::mkfifo(&out, mode).expect("mkfifo out");
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&out)
        .expect("opening the output fifo");
    let mut req = fx.create_req(&out);
    if let Some(s) = req.stdio.as_mut() {
        s.terminal = true;
        s.stdin = stdin.display().to_string();
        s.stderr = String::new();
    }
    let pid = c.create(req).await.expect("create").into_inner().pid;
    fx.guard.pid(pid);
    c.start(StartRequest::default()).await.expect("start");
    // Like ctr: open stdin for writing after Start, write a line, close it.
    {
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(&stdin)
            .expect("stdin writer");
        std::io::Write::write_all(&mut w, b"abc\n").expect("write stdin");
    }
    let mut text = String::new();
    let mut read_more = |text: &mut String| {
        let mut buf = [0u8; 256];
        if let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    eventually("the echo of stdin", Duration::from_secs(10), || {
        read_more(&mut text);
        text.contains("got-abc")
    })
    .await;
    // The client closed its end, yet the process still waits: EOF only comes with CloseIO
    // (on a terminal it arrives as ^D from the line discipline).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = c
        .state(berth_proto::shim::StateRequest::default())
        .await
        .expect("state")
        .into_inner();
    assert_eq!(st.status, berth_proto::shim::Status::Running as i32);
    c.close_io(berth_proto::shim::CloseIoRequest {
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
    assert_eq!(w.exit_status, 0);
    eventually("the eof line", Duration::from_secs(5), || {
        read_more(&mut text);
        text.contains("eof-1")
    })
    .await;
    c.delete(DeleteRequest::default()).await.expect("delete");
    c.shutdown(ShutdownRequest { now: false })
        .await
        .expect("shutdown");
    fx.finish();
}
