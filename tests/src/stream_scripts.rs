//! The CRI streaming tests' scripts, written once over [`Remote`] so each runs over WebSocket and SPDY
//! (`tests/cri_stream.rs` holds the tests): exec, attach and a 10 MiB port-forward, and the helpers they
//! share.

use std::time::Duration;

use berth_proto::cri;
use sha2::Digest;

use crate::cri_fixture::CriFixture;
use crate::remote::{Remote, Streams};
use crate::stream_client::{exit_code, Collected};

/// A pod with one busybox container running `script`; returns (pod, container).
pub async fn pod_with(fx: &CriFixture, name: &str, script: &str) -> (String, String) {
    fx.pull_busybox().await;
    let cfg = fx.pod_config(name);
    let pod = fx.pod(cfg.clone()).await.expect("run pod");
    let c = fx
        .container(&pod, &cfg, fx.container_config("main", script))
        .await
        .expect("container");
    (pod, c)
}

/// Stop and remove `pod`, then check its network left nothing.
pub async fn remove_pod(fx: &CriFixture, pod: &str) {
    let mut rt = fx.runtime().await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    })
    .await
    .expect("stop pod");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    })
    .await
    .expect("remove pod");
    fx.nf.assert_no_leaks();
}

/// The number of `sleep 777` in container `c`, polled (each try a real answer) until it is `want` or 10 s
/// passed.
pub async fn sleepers(fx: &CriFixture, c: &str, want: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = fx
            .exec(c, "ps -o args | grep -c -x 'sleep 777' || true", 10)
            .await
            .expect("ps");
        let n = String::from_utf8_lossy(&r.stdout)
            .trim()
            .parse()
            .unwrap_or(usize::MAX);
        if n == want || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Exec: the streaming URL.
pub async fn exec_url(fx: &CriFixture, req: cri::ExecRequest) -> String {
    fx.runtime()
        .await
        .exec(req)
        .await
        .expect("Exec")
        .into_inner()
        .url
}

/// PortForward to `port` of `pod`: the streaming URL.
pub async fn forward_url(fx: &CriFixture, pod: &str, port: i32) -> String {
    let url = fx
        .runtime()
        .await
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.to_string(),
            port: vec![port],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    assert!(url.contains("/portforward/"), "{url}");
    url
}

/// An ExecRequest for `cmd` with stdout (and stderr without a tty).
pub fn exec_req(id: &str, cmd: &[&str], tty: bool, stdin: bool) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: id.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

/// 10 MiB, the size of the large transfers.
pub const BIG: usize = 10 << 20;

/// Lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(data))
}

/// stdout always, stderr unless `tty`.
pub fn streams(stdin: bool, tty: bool) -> Streams {
    Streams {
        stdin,
        stdout: true,
        stderr: !tty,
        tty,
    }
}

/// What both transports must do with an exec: both streams and the exit code, stdin echoed by cat and
/// closed, a tty resized before the command that reads its size, 10 MiB of output intact, and a client that
/// goes away gets its process killed.
pub async fn exec_script<C: Remote>(fx: &CriFixture, c: &str) {
    let url = exec_url(
        fx,
        exec_req(
            c,
            &["sh", "-c", "echo to-out; echo to-err >&2; exit 3"],
            false,
            false,
        ),
    )
    .await;
    let got = C::channels(&url, streams(false, false)).await.drain().await;
    assert_eq!(
        (got.text(1), got.text(2)),
        ("to-out\n".into(), "to-err\n".into()),
        "{}: {got:?}",
        C::NAME
    );
    assert_eq!(exit_code(&got.status()), 3, "{}: {got:?}", C::NAME);

    // stdin echoed by cat; closing stdin ends it with success.
    let url = exec_url(fx, exec_req(c, &["cat"], false, true)).await;
    let mut r = C::channels(&url, streams(true, false)).await;
    r.send(0, b"hello through stdin\n").await;
    let mut got = Collected::default();
    r.read_until(&mut got, 1, "hello through stdin\n").await;
    r.close(0).await;
    let rest = r.drain().await;
    assert_eq!(exit_code(&rest.status()), 0, "{}: {rest:?}", C::NAME);
    assert_eq!(
        rest.text(1),
        "",
        "{}: cat wrote more than its input",
        C::NAME
    );

    // A tty: the resize reaches the pty before the command that reads it (input is applied in order).
    let url = exec_url(fx, exec_req(c, &["sh"], true, true)).await;
    let mut r = C::channels(&url, streams(true, true)).await;
    r.resize(123, 45).await;
    r.send(0, b"stty size; tty; exit 7\n").await;
    let got = r.drain().await;
    let out = got.text(1);
    assert!(
        out.contains("45 123"),
        "{}: stty size did not print the new size: {out:?}",
        C::NAME
    );
    assert!(out.contains("/dev/pts/"), "{}: not a tty: {out:?}", C::NAME);
    assert_eq!(got.text(2), "", "a tty has no stderr channel");
    assert_eq!(exit_code(&got.status()), 7, "{}: {got:?}", C::NAME);

    // 10 MiB through cat, intact (over SPDY within the client's windows).
    let made = fx
        .exec(
            c,
            "head -c 10485760 /dev/urandom > /tmp/big && sha256sum /tmp/big",
            60,
        )
        .await
        .expect("make /tmp/big");
    let want = String::from_utf8_lossy(&made.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(want.len(), 64, "sha256sum printed {made:?}");
    let url = exec_url(fx, exec_req(c, &["cat", "/tmp/big"], false, false)).await;
    let got = C::channels(&url, streams(false, false)).await.drain().await;
    let out = got.channels.get(&1).map(Vec::as_slice).unwrap_or_default();
    assert_eq!(out.len(), BIG, "{}: output size", C::NAME);
    assert_eq!(sha256_hex(out), want, "{}: output corrupted", C::NAME);
    assert_eq!(exit_code(&got.status()), 0, "{}", C::NAME);
    fx.exec(c, "rm /tmp/big", 10).await.expect("rm");

    // A client that goes away before the exit: its process is killed.
    let url = exec_url(fx, exec_req(c, &["sleep", "777"], false, false)).await;
    let r = C::channels(&url, streams(false, false)).await;
    assert_eq!(
        sleepers(fx, c, 1).await,
        1,
        "{}: the exec never ran",
        C::NAME
    );
    drop(r);
    assert_eq!(
        sleepers(fx, c, 0).await,
        0,
        "{}: the exec outlived its client",
        C::NAME
    );
}

/// Attach: the streaming URL.
pub async fn attach_url(fx: &CriFixture, id: &str, s: Streams) -> String {
    fx.runtime()
        .await
        .attach(cri::AttachRequest {
            container_id: id.to_string(),
            stdin: s.stdin,
            tty: s.tty,
            stdout: s.stdout,
            stderr: s.stderr,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url
}

/// Poll the CRI log at `path` (each read a real answer) until it holds every one of `lines`, or 10 s passed;
/// the log's text.
pub async fn log_with(path: &std::path::Path, lines: &[&str]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if lines.iter().all(|l| text.contains(l)) || std::time::Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What both transports must do with an attach: stdin reaches the container and stays open across clients;
/// with `stdin_once` the first client's close ends the container's stdin; a tty is resized; the CRI log keeps
/// every line, written during and after the attaches.
pub async fn attach_script<C: Remote>(fx: &CriFixture, name: &str) {
    fx.pull_busybox().await;
    let cfg = fx.pod_config(name);
    let pod = fx.pod(cfg.clone()).await.expect("run pod");
    let logs = std::path::PathBuf::from(&cfg.log_directory);

    // cat, with a line of its own once /tmp/go exists (made after every client detached).
    let mut cc = fx.container_config(
        "echo",
        "(while [ ! -e /tmp/go ]; do sleep 0.1; done; echo after-detach) & exec cat",
    );
    cc.stdin = true;
    let echo = fx.container(&pod, &cfg, cc).await.expect("container");
    let mut a = C::channels(
        &attach_url(fx, &echo, streams(true, false)).await,
        streams(true, false),
    )
    .await;
    a.send(0, b"during-attach\n").await;
    let mut got = Collected::default();
    a.read_until(&mut got, 1, "during-attach\n").await;
    // Without stdin_once the client's close leaves the container's stdin open: a second client still reaches cat.
    a.close(0).await;
    drop(a);
    let mut b = C::channels(
        &attach_url(fx, &echo, streams(true, false)).await,
        streams(true, false),
    )
    .await;
    b.send(0, b"second-attach\n").await;
    let mut got = Collected::default();
    b.read_until(&mut got, 1, "second-attach\n").await;
    assert!(
        !got.text(1).contains("during-attach"),
        "{}: a new client got old output: {got:?}",
        C::NAME
    );
    drop(b);
    fx.exec(&echo, "touch /tmp/go", 10).await.expect("exec");
    let lines = [
        "stdout F during-attach",
        "stdout F second-attach",
        "stdout F after-detach",
    ];
    let log = log_with(&logs.join("echo/0.log"), &lines).await;
    for l in lines {
        assert!(
            log.contains(l),
            "{}: the CRI log lost {l:?}: {log}",
            C::NAME
        );
    }

    // stdin_once: the first client's close is the container's EOF.
    let mut cc = fx.container_config("once", "cat; echo cat-ended; exit 4");
    cc.stdin = true;
    cc.stdin_once = true;
    let once = fx.container(&pod, &cfg, cc).await.expect("container");
    let mut a = C::channels(
        &attach_url(fx, &once, streams(true, false)).await,
        streams(true, false),
    )
    .await;
    a.send(0, b"only-line\n").await;
    let mut got = Collected::default();
    a.read_until(&mut got, 1, "only-line\n").await;
    a.close(0).await;
    a.read_until(&mut got, 1, "cat-ended\n").await;
    let rest = a.drain().await;
    assert_eq!(exit_code(&rest.status()), 4, "{}: {rest:?}", C::NAME);

    // A tty: resize, then the shell reads its size; its exit ends the attach.
    let mut cc = fx.container_config("term", "exec sh");
    cc.stdin = true;
    cc.tty = true;
    let term = fx.container(&pod, &cfg, cc).await.expect("container");
    let mut a = C::channels(
        &attach_url(fx, &term, streams(true, true)).await,
        streams(true, true),
    )
    .await;
    a.resize(99, 33).await;
    a.send(0, b"stty size; exit 3\n").await;
    let got = a.drain().await;
    assert!(got.text(1).contains("33 99"), "{}: {got:?}", C::NAME);
    assert_eq!(exit_code(&got.status()), 3, "{}: {got:?}", C::NAME);
    let log = log_with(&logs.join("term/0.log"), &["33 99"]).await;
    assert!(
        log.contains("stdout"),
        "{}: the tty's output is not in the log: {log}",
        C::NAME
    );
    remove_pod(fx, &pod).await;
}

/// 10 MiB through a port-forward to an echo server in the pod and back, in 128 KiB steps (WebSocket has no
/// flow control of its own: a step is read back before the next goes), checked by sha256.
pub async fn forward_script<C: Remote>(fx: &CriFixture, name: &str) {
    let (pod, c) = pod_with(fx, name, "exec nc -ll -p 8080 -e cat").await;
    // The server listens once nc ran: each try is a real answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fx
        .exec(&c, "netstat -ltn | grep -q ':8080 '", 10)
        .await
        .map(|r| r.exit_code != 0)
        .unwrap_or(true)
    {
        assert!(std::time::Instant::now() < deadline, "nc never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = forward_url(fx, &pod, 8080).await;
    let mut r = C::forward(&url, 8080).await;
    // Bytes no compression or pattern could fake: a xorshift stream.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..BIG / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let mut got = Collected::default();
    let mut sent = 0;
    for chunk in data.chunks(128 << 10) {
        r.send(0, chunk).await;
        sent += chunk.len();
        r.read_bytes(&mut got, 0, sent).await;
    }
    let back = got.channels.get(&0).map(Vec::as_slice).unwrap_or_default();
    assert_eq!(back.len(), BIG, "{}: {:?}", C::NAME, got.text(1));
    assert_eq!(
        sha256_hex(back),
        sha256_hex(&data),
        "{}: corrupted",
        C::NAME
    );
    drop(r);
    remove_pod(fx, &pod).await;
}
