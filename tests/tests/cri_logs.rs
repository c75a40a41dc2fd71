//! Container logs in the CRI format: ReopenContainerLog after the kubelet renamed the log (old lines stay in
//! the renamed file, new ones land in a new file at the path), refused for a container that is not running
//! (and no file made), NotFound for an unknown one; a terminal container's output in its log as `stdout`
//! records without the terminal's `\r`. Root only.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_proto::cri;
use berth_tests::cri_fixture::CriFixture;
use tonic::Code;

/// The log's records as (stream, tag, text), waiting (each read a real one) until one has `text`.
async fn records_once(path: &Path, text: &str) -> Vec<(String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let recs = records(path);
        if recs.iter().any(|r| r.2 == text) {
            return recs;
        }
        assert!(
            Instant::now() < deadline,
            "{} never got {text:?}: {recs:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every record of the log: `<RFC3339Nano> <stream> <F|P> <text>`, the time checked for its shape.
fn records(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let (t, s, tag, rest) = (
                f.next().unwrap_or(""),
                f.next().unwrap_or(""),
                f.next().unwrap_or(""),
                f.next().unwrap_or(""),
            );
            assert!(
                t.len() > 20 && t.ends_with('Z') && t.contains('T'),
                "time of {l:?}"
            );
            (s.to_string(), tag.to_string(), rest.to_string())
        })
        .collect()
}

fn rec(stream: &str, text: &str) -> (String, String, String) {
    (stream.to_string(), "F".to_string(), text.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_log_is_reopened_at_its_path() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-logs") else {
        return;
    };
    fx.pull_busybox().await;
    let cfg = fx.pod_config("rotating");
    let pod = fx.pod(cfg.clone()).await.expect("pod");
    // Prints once, then once more when /tmp/next appears, then sleeps.
    let script = "echo before; echo err-before >&2; \
                  while [ ! -e /tmp/next ]; do sleep 0.05; done; \
                  echo after; echo err-after >&2; exec sleep 1000";
    let c = fx
        .container(&pod, &cfg, fx.container_config("writer", script))
        .await
        .expect("container");
    let log = Path::new(&cfg.log_directory).join("writer/0.log");
    records_once(&log, "err-before").await;

    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    let mut rt = fx.runtime().await;
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: c.clone(),
    })
    .await
    .expect("reopen");
    assert!(log.exists(), "reopen made no new file at {}", log.display());
    fx.exec(&c, "touch /tmp/next", 10).await.expect("exec");
    records_once(&log, "err-after").await;
    let mut fresh = records_once(&log, "after").await;
    fresh.sort();
    assert_eq!(
        fresh,
        vec![rec("stderr", "err-after"), rec("stdout", "after")]
    );
    let mut old = records(&rotated);
    old.sort();
    assert_eq!(
        old,
        vec![rec("stderr", "err-before"), rec("stdout", "before")]
    );

    // Unknown: NotFound. Not running: refused, and no file made.
    let err = rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: "no-such-container".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    rt.stop_container(cri::StopContainerRequest {
        container_id: c.clone(),
        timeout: 0,
    })
    .await
    .expect("stop");
    std::fs::rename(&log, log.with_extension("log.2")).expect("rotate again");
    let err = rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: c.clone(),
        })
        .await
        .expect_err("stopped");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(!log.exists(), "a stopped container's log was recreated");

    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove");
    fx.nf.fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_container_logs_its_output_as_stdout() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-ttylog") else {
        return;
    };
    fx.pull_busybox().await;
    let cfg = fx.pod_config("terminal");
    let pod = fx.pod(cfg.clone()).await.expect("pod");
    let mut config =
        fx.container_config("tty", "[ -t 1 ] && echo on-a-tty; echo to-err >&2; exit 5");
    config.tty = true;
    let c = fx.container(&pod, &cfg, config).await.expect("container");
    let st = fx.wait_exited(&c).await;
    assert_eq!(st.exit_code, 5);
    let log = Path::new(&cfg.log_directory).join("tty/0.log");
    let recs = records(&log);
    // One stream (the terminal), in order, each line whole and without the terminal's \r.
    assert_eq!(
        recs,
        vec![rec("stdout", "on-a-tty"), rec("stdout", "to-err"),],
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    fx.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .expect("remove");
    fx.nf.fx.guard.assert_clean();
}
