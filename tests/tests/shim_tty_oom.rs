//! berth-shim terminals (pty from the runtime's console socket, resize, for init and an
//! exec) and OOM events from the container's memory cgroup, with real busybox containers.

use berth_tests::shim_fixture as support;

use std::time::Duration;

use berth_proto::shim::{ResizePtyRequest, Status, Stdio};
use support::*;
use tonic::Code;

/// A shell snippet that waits (bounded: ~1000 checks, 10 ms apart) until its terminal is `size`
/// ("ROWS COLS"), then prints the size it has: the container waits for the resize on its own, so the
/// test never guesses how long the resize takes, and a resize that never lands prints the wrong size.
fn print_size_once_resized_to(size: &str) -> String {
    format!(
        "i=0; while [ \"$(stty size)\" != '{size}' ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; \
         stty size"
    )
}

#[tokio::test]
async fn shim_terminal_with_resize() {
    if !berth_tests::require_root() {
        return;
    }
    // Then `sleep 1000`: init keeps running (the workload) while the test uses its terminal.
    let script = format!("{}; sleep 1000", print_size_once_resized_to("33 101"));
    let fx = ShimFixture::new("shim-tty", &["sh", "-c", &script]);
    fx.bundle
        .edit_spec(|s| s["process"]["terminal"] = true.into());
    let (_, mut c) = fx.start_and_connect().await;
    let out = fx.dir.join("tty.fifo");
    mkfifo(&out);
    // Read the FIFO like ctr does: opened before Create, non-blocking.
    let mut reader = open_fifo_reader(&out);
    let req = fx.create_req_with(&out, |s| {
        s.terminal = true;
        s.stderr = String::new();
    });
    fx.create_start(&mut c, req).await;
    c.resize_pty(ResizePtyRequest {
        exec_id: String::new(),
        width: 101,
        height: 33,
    })
    .await
    .expect("resize");
    let mut text = String::new();
    eventually("stty size output of init", Duration::from_secs(10), || {
        read_available(&mut reader, &mut text);
        text.contains("33 101")
    })
    .await;

    // An exec with its own terminal and size.
    let exec_out = fx.out_file("exec-tty.txt");
    let stdio = Stdio {
        stdout: exec_out.display().to_string(),
        terminal: true,
        ..Default::default()
    };
    let script = format!("{}; exit 6", print_size_once_resized_to("22 77"));
    exec_start(&mut c, exec_req("tty1", stdio, &["sh", "-c", &script])).await;
    c.resize_pty(ResizePtyRequest {
        exec_id: "tty1".into(),
        width: 77,
        height: 22,
    })
    .await
    .expect("resize exec");
    assert_eq!(wait(&mut c, "tty1").await.exit_status, 6);
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
    assert_eq!(kill_wait(&mut c, "", 9).await, 137);
    delete_shutdown(&mut c).await;
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
    let (sock, mut c) = fx.start_and_connect().await;
    let mut ev = events(&sock, 0).await;
    fx.create_start(&mut c, fx.create_req(&fx.out_file("out.txt")))
        .await;
    assert_eq!(
        wait(&mut c, "").await.exit_status,
        137,
        "the memory hog was not OOM-killed"
    );
    let evs = collect_until(&mut ev, "exited", Duration::from_secs(10)).await;
    let mut k = kinds(&evs);
    // The OOM event may trail the exit: wait for it (until no event has come for 2 s).
    if !k.contains(&"oom") {
        let more = collect_until(&mut ev, "oom", Duration::from_secs(2)).await;
        k.extend(kinds(&more));
    }
    assert!(k.contains(&"oom"), "no oom event in {k:?}");
    delete_shutdown(&mut c).await;
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
    let (_, mut c) = fx.start_and_connect().await;
    let stdin = fx.dir.join("in.fifo");
    let out = fx.dir.join("out.fifo");
    mkfifo(&stdin);
    mkfifo(&out);
    let mut reader = open_fifo_reader(&out);
    let req = fx.create_req_with(&out, |s| {
        s.terminal = true;
        s.stdin = stdin.display().to_string();
        s.stderr = String::new();
    });
    fx.create_start(&mut c, req).await;
    // Like ctr: open stdin for writing after Start, write a line, close it.
    {
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(&stdin)
            .expect("stdin writer");
        std::io::Write::write_all(&mut w, b"abc\n").expect("write stdin");
    }
    let mut text = String::new();
    eventually("the echo of stdin", Duration::from_secs(10), || {
        read_available(&mut reader, &mut text);
        text.contains("got-abc")
    })
    .await;
    // The client closed its end, yet the process still waits: EOF only comes with CloseIO
    // (on a terminal it arrives as ^D from the line discipline). A window in which nothing must
    // happen: an early EOF would make `read y` return, print eof-1 and exit.
    let pid = state(&mut c, "").await.pid as i32;
    holds_for(
        "the process waiting for EOF until CloseIO",
        Duration::from_millis(300),
        || {
            read_available(&mut reader, &mut text);
            !text.contains("eof-") && berth_tests::proc::alive(pid)
        },
    )
    .await;
    assert_eq!(state(&mut c, "").await.status, Status::Running as i32);
    close_stdin(&mut c, "").await;
    assert_eq!(wait(&mut c, "").await.exit_status, 0);
    eventually("the eof line", Duration::from_secs(5), || {
        read_available(&mut reader, &mut text);
        text.contains("eof-1")
    })
    .await;
    delete_shutdown(&mut c).await;
    fx.finish();
}
