//! A container's CRI security context reaches the process: run_as_user/run_as_group, supplemental groups,
//! a read-only rootfs, capabilities dropped to none, no_new_privs and the RuntimeDefault seccomp filter; a
//! privileged container gets every capability berthd may grant and no filter. Root only.

use berth_proto::cri;
use berth_tests::cri_fixture::CriFixture;

/// `/proc/self/status`'s value of `key` as the container's process sees it.
async fn status_field(fx: &CriFixture, id: &str, key: &str) -> String {
    let r = fx
        .exec(id, &format!("grep '^{key}:' /proc/self/status"), 10)
        .await
        .expect("exec");
    String::from_utf8_lossy(&r.stdout)
        .split_once(':')
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_security_context_reaches_the_process() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-sec") else {
        return;
    };
    fx.pull_busybox().await;
    let cfg = fx.pod_config("locked");
    let pod = fx.pod(cfg.clone()).await.expect("pod");

    let mut locked = fx.container_config("locked", "exec sleep 1000");
    let sc = locked
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .expect("security context");
    sc.run_as_user = Some(cri::Int64Value { value: 1000 });
    sc.run_as_group = Some(cri::Int64Value { value: 1001 });
    sc.supplemental_groups = vec![2000];
    sc.readonly_rootfs = true;
    sc.no_new_privs = true;
    sc.capabilities = Some(cri::Capability {
        add_capabilities: vec![],
        drop_capabilities: vec!["ALL".into()],
    });
    let locked = fx
        .container(&pod, &cfg, locked)
        .await
        .expect("locked container");
    let r = fx
        .exec(&locked, "id -u; id -g; id -G", 10)
        .await
        .expect("id");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "1000\n1001\n1001 2000\n"
    );
    let w = fx.exec(&locked, "touch /x", 10).await.expect("touch");
    assert_ne!(w.exit_code, 0, "a read-only rootfs took a write");
    assert!(
        String::from_utf8_lossy(&w.stderr).contains("Read-only"),
        "{w:?}"
    );
    assert_eq!(
        status_field(&fx, &locked, "CapEff").await,
        "0000000000000000"
    );
    assert_eq!(
        status_field(&fx, &locked, "CapBnd").await,
        "0000000000000000"
    );
    assert_eq!(status_field(&fx, &locked, "NoNewPrivs").await, "1");
    assert_eq!(status_field(&fx, &locked, "Seccomp").await, "2");

    let mut open = fx.container_config("open", "exec sleep 1000");
    if let Some(sc) = open
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        sc.privileged = true;
    }
    let open = fx
        .container(&pod, &cfg, open)
        .await
        .expect("privileged container");
    assert_eq!(status_field(&fx, &open, "Seccomp").await, "0");
    assert_eq!(status_field(&fx, &open, "NoNewPrivs").await, "0");
    let caps = status_field(&fx, &open, "CapEff").await;
    let mine = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    assert_eq!(caps, mine, "privileged: every capability berthd may grant");

    fx.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .expect("remove");
    fx.nf.fx.guard.assert_clean();
}
