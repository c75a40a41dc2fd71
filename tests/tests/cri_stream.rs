//! The CRI streaming server as kubectl and critest use it: Exec, Attach and PortForward answer a URL, and a
//! client upgrades it to a remotecommand protocol (WebSocket `v5.channel.k8s.io` / `v4.channel.k8s.io`,
//! port-forward's `portforward.k8s.io`). Exec with and without a tty (a resize reaches the pty: `stty size`
//! prints it), stdin echoed and closed, a non-zero exit code in the error channel's status, attach to a
//! container's output, a port-forward into the pod's network namespace, tokens used once, unknown tokens
//! 404. Attach with stdin (kept open across clients, or closed by the first with `stdin_once`) and with a
//! tty and resize, the CRI log keeping every line; 10 MiB through an exec and a port-forward, checked by
//! sha256 (SPDY with a client that keeps SPDY/3.1's windows strictly). The scripts common to both transports
//! are written once over a client trait (`berth_tests::stream_scripts`). Real pods and containers; root only.

use std::time::Duration;

use berth_proto::cri;
use berth_tests::cri_fixture::CriFixture;
use berth_tests::remote::{Remote, Spdy, SpdyLegacy, Ws};
use berth_tests::spdy_client::{Event, SpdyClient};
use berth_tests::stream_client::{exit_code, Collected, WsClient};
use berth_tests::stream_scripts::{
    attach_script, attach_url, exec_req, exec_script, exec_url, forward_script, forward_url,
    pod_with, remove_pod, streams,
};

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_attach_with_stdin_once_tty_and_the_log() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-stream-wsatt") else {
        return;
    };
    attach_script::<Ws>(&fx, "wsatt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_attach_with_stdin_once_tty_and_the_log() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-stream-spdyatt") else {
        return;
    };
    attach_script::<Spdy>(&fx, "spdyatt").await;
}

/// kubectl's and the kubelet's SPDY library keeps no windows and sends no WINDOW_UPDATE: berthd must not
/// stall it at 64 KiB (its probe PING tells such a peer apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_without_flow_control_as_kubectl_gets_10_mib_both_ways() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-stream-spdyold") else {
        return;
    };
    let (pod, c) = pod_with(&fx, "spdyold", "exec sleep 1000").await;
    exec_script::<SpdyLegacy>(&fx, &c).await;
    remove_pod(&fx, &pod).await;
    forward_script::<SpdyLegacy>(&fx, "spdyold2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_port_forward_carries_10_mib_both_ways() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-stream-wsbig") else {
        return;
    };
    forward_script::<Ws>(&fx, "wsbig").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_port_forward_carries_10_mib_both_ways_within_windows() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-stream-spdybig") else {
        return;
    };
    forward_script::<Spdy>(&fx, "spdybig").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_exec_streams_output_stdin_tty_and_exit_codes() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-stream-exec") else {
        return;
    };
    let (pod, c) = pod_with(&fx, "wsexec", "exec sleep 1000").await;

    // Both streams and a non-zero exit code, with v4's JSON status.
    let url = exec_url(
        &fx,
        exec_req(
            &c,
            &["sh", "-c", "echo to-out; echo to-err >&2; exit 3"],
            false,
            false,
        ),
    )
    .await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let mut ws = WsClient::connect(&url, "", &[V4]).await.expect("upgrade");
    assert_eq!(ws.protocol, V4);
    let got = ws.drain().await;
    assert_eq!(
        (got.text(1), got.text(2)),
        ("to-out\n".into(), "to-err\n".into()),
        "{got:?}"
    );
    let status = got.status();
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(exit_code(&status), 3);

    // The token was good once.
    let again = WsClient::connect(&url, "", &[V4])
        .await
        .err()
        .expect("a used token is refused");
    assert_eq!(again.status, 404, "{again:?}");
    let (base, _) = url.rsplit_once('/').expect("a token in the URL");
    let unknown = WsClient::connect(&format!("{base}/0123456789abcdef"), "", &[V5])
        .await
        .err()
        .expect("an unknown token is refused");
    assert_eq!(unknown.status, 404, "{unknown:?}");

    // Exec of a command that cannot start: the status says why.
    let url = exec_url(&fx, exec_req(&c, &["/no/such/binary"], false, false)).await;
    let got = WsClient::connect(&url, "", &[V5])
        .await
        .expect("upgrade")
        .drain()
        .await;
    assert_eq!(got.status()["status"], "Failure", "{got:?}");

    exec_script::<Ws>(&fx, &c).await;

    // The exec processes are gone from the container.
    let r = fx
        .exec(&c, "ps -o comm | grep -c -x -e cat -e stty || true", 10)
        .await
        .expect("ps");
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "0");
    remove_pod(&fx, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_requests_are_checked_before_a_url_is_given() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-stream-bad") else {
        return;
    };
    let mut rt = fx.runtime().await;
    let e = rt
        .exec(exec_req("no-such-container", &["true"], false, false))
        .await
        .expect_err("unknown container");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let (pod, c) = pod_with(&fx, "wsbad", "exec sleep 1000").await;
    let mut both = exec_req(&c, &["true"], true, false);
    both.stderr = true;
    let e = rt.exec(both).await.expect_err("tty with stderr");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = rt
        .exec(exec_req(&c, &[], false, false))
        .await
        .expect_err("empty cmd");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "no-such-pod".into(),
            port: vec![80],
        })
        .await
        .expect_err("unknown pod");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    // A stream without an upgrade is refused and does not burn a process.
    let url = exec_url(&fx, exec_req(&c, &["true"], false, false)).await;
    let e = WsClient::connect(&url, "", &["v1.channel.k8s.io"])
        .await
        .err()
        .expect("old protocol");
    assert_eq!(e.status, 400, "{e:?}");
    assert!(e.body.contains("v5.channel.k8s.io"), "{e:?}");
    remove_pod(&fx, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_attach_follows_the_container_output_to_its_exit() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-stream-attach") else {
        return;
    };
    let script = "while [ ! -e /tmp/go ]; do echo tick; sleep 0.1; done; \
                  echo attached-out; echo attached-err >&2; exit 4";
    let (pod, c) = pod_with(&fx, "wsattach", script).await;
    let url = fx
        .runtime()
        .await
        .attach(cri::AttachRequest {
            container_id: c.clone(),
            stdin: false,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    assert!(url.contains("/attach/"), "{url}");
    let mut ws = WsClient::connect(&url, "", &[V5]).await.expect("upgrade");
    // Output arrives while attached; then the container is told to finish.
    let mut got = Collected::default();
    ws.read_until(&mut got, 1, "tick\n").await;
    fx.exec(&c, "touch /tmp/go", 10).await.expect("exec");
    let rest = ws.drain().await;
    assert!(rest.text(1).contains("attached-out\n"), "{rest:?}");
    assert_eq!(rest.text(2), "attached-err\n", "{rest:?}");
    assert_eq!(exit_code(&rest.status()), 4, "{rest:?}");
    remove_pod(&fx, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_port_forward_reaches_a_port_inside_the_pod() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-stream-pf") else {
        return;
    };
    // The pod's port 8080 is not published: only the pod's netns reaches it.
    let (pod, _c) = pod_with(&fx, "wspf", "exec nc -ll -p 8080 -e echo hello-forwarded").await;
    // The server listens once its nc ran: each try is a real answer.
    let mut reply = String::new();
    let mut last = Collected::default();
    for _ in 0..100 {
        let url = forward_url(&fx, &pod, 8080).await;
        let mut ws = WsClient::connect(&url, "?port=8080", &["portforward.k8s.io"])
            .await
            .expect("upgrade");
        // Each channel of the pair opens with the port, little-endian.
        let mut got = Collected::default();
        for _ in 0..2 {
            let (ch, data) = ws.recv().await.expect("port prefix");
            assert_eq!(data, 8080u16.to_le_bytes(), "channel {ch}");
        }
        ws.send(0, b"hi\n").await;
        while let Some((ch, data)) = ws.recv().await {
            got.channels.entry(ch).or_default().extend_from_slice(&data);
        }
        reply = got.text(0);
        if reply.contains("hello-forwarded") {
            break;
        }
        assert!(
            got.text(1).contains("8080"),
            "neither data nor an error: {got:?}"
        );
        last = got;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reply, "hello-forwarded\n", "last try: {last:?}");
    remove_pod(&fx, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_streams_output_stdin_tty_and_exit_codes() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-stream-spdy") else {
        return;
    };
    let (pod, c) = pod_with(&fx, "spdyexec", "exec sleep 1000").await;

    // Both streams, the exit code on the error stream; every stream gets a reply.
    let url = exec_url(
        &fx,
        exec_req(
            &c,
            &["sh", "-c", "echo to-out; echo to-err >&2; exit 5"],
            false,
            false,
        ),
    )
    .await;
    let mut s = SpdyClient::connect(&url, "", &["v4.channel.k8s.io", "v3.channel.k8s.io"])
        .await
        .expect("upgrade");
    assert_eq!(s.protocol, V4);
    let err = s.open(&[("streamType", "error")]).await;
    let out = s.open(&[("streamType", "stdout")]).await;
    let errout = s.open(&[("streamType", "stderr")]).await;
    let mut replies = Vec::new();
    let mut got: std::collections::HashMap<u32, Vec<u8>> = Default::default();
    while let Some(e) = s.recv().await {
        match e {
            Event::Reply(id) => replies.push(id),
            Event::Data { stream, data, .. } => {
                got.entry(stream).or_default().extend_from_slice(&data)
            }
        }
    }
    replies.sort();
    assert_eq!(replies, vec![err, out, errout]);
    let text = |id: u32| {
        String::from_utf8_lossy(got.get(&id).map(Vec::as_slice).unwrap_or_default()).into_owned()
    };
    assert_eq!(
        (text(out), text(errout)),
        ("to-out\n".into(), "to-err\n".into())
    );
    let status: serde_json::Value = serde_json::from_str(&text(err)).expect("a JSON status");
    assert_eq!(exit_code(&status), 5, "{status}");

    exec_script::<Spdy>(&fx, &c).await;
    remove_pod(&fx, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_port_forward_reaches_a_port_inside_the_pod() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-stream-spdypf") else {
        return;
    };
    let (pod, _c) = pod_with(
        &fx,
        "spdypf",
        "exec nc -ll -p 8080 -e echo hello-spdy-forwarded",
    )
    .await;
    let url = forward_url(&fx, &pod, 8080).await;
    let mut s = SpdyClient::connect(&url, "", &["portforward.k8s.io"])
        .await
        .expect("upgrade");
    assert_eq!(s.protocol, "portforward.k8s.io");
    // One connection per request id, on one SPDY connection; retried until nc listens (each a real answer).
    let mut reply = String::new();
    let mut errors = String::new();
    for request in 0..100 {
        let rid = request.to_string();
        let err = s
            .open(&[
                ("streamType", "error"),
                ("port", "8080"),
                ("requestID", &rid),
            ])
            .await;
        let data = s
            .open(&[
                ("streamType", "data"),
                ("port", "8080"),
                ("requestID", &rid),
            ])
            .await;
        s.send(data, b"hi\n", false).await;
        let (mut data_fin, mut err_fin) = (false, false);
        let (mut got, mut got_err) = (Vec::new(), Vec::new());
        while !(data_fin && err_fin) {
            match s.recv().await.expect("the connection stays open") {
                Event::Data {
                    stream,
                    data: d,
                    fin,
                } if stream == data => {
                    got.extend_from_slice(&d);
                    data_fin |= fin;
                }
                Event::Data {
                    stream,
                    data: d,
                    fin,
                } if stream == err => {
                    got_err.extend_from_slice(&d);
                    err_fin |= fin;
                }
                _ => {}
            }
        }
        reply = String::from_utf8_lossy(&got).into_owned();
        errors = String::from_utf8_lossy(&got_err).into_owned();
        if !reply.is_empty() {
            break;
        }
        assert!(errors.contains("8080"), "neither data nor an error");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reply, "hello-spdy-forwarded\n", "errors: {errors}");
    drop(s);
    remove_pod(&fx, &pod).await;
}

/// An independent WebSocket peer: Debian's python3-websocket (websocket-client) runs an exec over
/// `v4.channel.k8s.io`, feeds stdin and reports what came on each channel as JSON.
const PY_CLIENT: &str = r#"
import json, sys, websocket
ws = websocket.create_connection(sys.argv[1].replace("http://", "ws://"), subprotocols=["v4.channel.k8s.io"])
assert ws.subprotocol == "v4.channel.k8s.io", ws.subprotocol
ws.send_binary(b"\x00hello-python\n")
got = {}
while True:
    op, data = ws.recv_data()
    if op == websocket.ABNF.OPCODE_CLOSE:
        break
    if data:
        got[str(data[0])] = got.get(str(data[0]), "") + data[1:].decode()
print(json.dumps(got))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websocket_client_runs_an_exec() {
    if !berth_tests::require_root() {
        return;
    }
    let python = "/usr/bin/python3";
    let has_module = std::process::Command::new(python)
        .args(["-c", "import websocket"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_module {
        eprintln!("skipping: {python} has no websocket module (Debian package python3-websocket)");
        return;
    }
    let Some(fx) = CriFixture::new("cri-stream-py") else {
        return;
    };
    let (pod, c) = pod_with(&fx, "pyexec", "exec sleep 1000").await;
    let url = exec_url(
        &fx,
        exec_req(
            &c,
            &["sh", "-c", "read line; echo \"got $line\"; exit 2"],
            false,
            true,
        ),
    )
    .await;
    let out = tokio::process::Command::new(python)
        .args(["-c", PY_CLIENT, &url])
        .output()
        .await
        .expect("run python3");
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from the client");
    assert_eq!(got["1"], "got hello-python\n", "{got}");
    let status: serde_json::Value =
        serde_json::from_str(got["3"].as_str().expect("an error channel")).expect("a JSON status");
    assert_eq!(exit_code(&status), 2, "{status}");
    remove_pod(&fx, &pod).await;
}

/// The stdin FIFO outlives berthd: after a SIGKILLed berthd restarts, an attach still reaches the
/// container's stdin (the shim held its ends meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_with_stdin_works_after_berthd_was_killed() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(mut fx) = CriFixture::new("cri-stream-attrestart") else {
        return;
    };
    fx.pull_busybox().await;
    let cfg = fx.pod_config("attrestart");
    let pod = fx.pod(cfg.clone()).await.expect("run pod");
    let mut cc = fx.container_config("echo", "exec cat");
    cc.stdin = true;
    let c = fx.container(&pod, &cfg, cc).await.expect("container");
    fx.nf.fx.daemon.kill();
    fx.nf.fx.daemon.start_again();
    let s = streams(true, false);
    let mut a = Ws::channels(&attach_url(&fx, &c, s).await, s).await;
    a.send(0, b"after-restart\n").await;
    let mut got = Collected::default();
    a.read_until(&mut got, 1, "after-restart\n").await;
    drop(a);
    remove_pod(&fx, &pod).await;
}
