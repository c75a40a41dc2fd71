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

/// A container config whose PID namespace mode is `mode` (with `target`).
fn with_pid_mode(
    mut c: cri::ContainerConfig,
    mode: cri::NamespaceMode,
    target: &str,
) -> cri::ContainerConfig {
    if let Some(sc) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.namespace_options = Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Pod as i32,
            pid: mode as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            target_id: target.to_string(),
        });
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_pid_namespaces_and_namespaced_sysctls() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-target") else {
        return;
    };
    fx.pull_busybox().await;
    // A host-wide sysctl is refused before anything is made; a network one is applied in the pod.
    let mut bad = fx.pod_config("host-sysctl");
    if let Some(l) = bad.linux.as_mut() {
        l.sysctls = [("vm.swappiness".to_string(), "10".to_string())].into();
    }
    let err = fx.pod(bad).await.expect_err("vm.* refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("vm.swappiness"), "{err:?}");

    let mut cfg = fx.pod_config("targeted");
    if let Some(l) = cfg.linux.as_mut() {
        l.sysctls = [(
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "80".to_string(),
        )]
        .into();
    }
    let pod = fx.pod(cfg.clone()).await.expect("pod");
    let first = fx
        .container(
            &pod,
            &cfg,
            with_pid_mode(
                fx.container_config("first", "exec sleep 1001"),
                cri::NamespaceMode::Container,
                "",
            ),
        )
        .await
        .expect("first");
    let r = fx
        .exec(
            &first,
            "cat /proc/sys/net/ipv4/ip_unprivileged_port_start",
            10,
        )
        .await
        .expect("exec");
    assert_eq!(r.stdout, b"80\n");
    // TARGET: the second container's processes live in the first's PID namespace (its sleep is PID 1 there).
    let second = fx
        .container(
            &pod,
            &cfg,
            with_pid_mode(
                fx.container_config("second", "exec sleep 1002"),
                cri::NamespaceMode::Target,
                &first,
            ),
        )
        .await
        .expect("second");
    let r = fx
        .exec(&second, "cat /proc/1/cmdline", 10)
        .await
        .expect("exec");
    assert_eq!(r.stdout, b"sleep\x001001\x00");
    // A target that is not in the pod is NotFound.
    let err = fx
        .container(
            &pod,
            &cfg,
            with_pid_mode(
                fx.container_config("third", "exec sleep 1003"),
                cri::NamespaceMode::Target,
                "nope",
            ),
        )
        .await
        .expect_err("unknown target");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    fx.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .expect("remove");
    fx.nf.fx.guard.assert_clean();
}
