//! A pod through the CRI, as a kubelet drives it: RunPodSandbox (pause image pulled from the loopback
//! registry by berthd itself), two containers that share the pod's IP, localhost, hostname and DNS config,
//! ExecSync (output, exit code, timeout), stats and a resource update, logs in the CRI format with both streams, StopContainer with a grace
//! period, statuses with exit codes and reasons, stop and removal of the pod, and nothing left behind (the
//! fixture checks netns, veths, IPAM, iptables, cgroups, shims). Root only.

use std::time::Duration;

use berth_proto::cri;
use berth_tests::cri_fixture::CriFixture;
use berth_tests::net_fixture::eventually;
use tonic::Code;

/// The records of a CRI log, as (stream, tag, text), once it has `n` of them.
fn log_records(path: &str, n: usize) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        out = text
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let ts = parts.next().unwrap_or_default();
                assert!(
                    ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
                    "not an RFC 3339 time: {l:?}"
                );
                (
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or_default().to_string(),
                )
            })
            .collect();
        out.len() >= n
    });
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_two_containers_runs_logs_stops_and_goes() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-pod") else {
        return;
    };
    let mut rt = fx.runtime().await;
    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .expect("version")
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("berth", "v1")
    );

    let image_ref = fx.pull_busybox().await;
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");

    let mut pod_cfg = fx.pod_config("web");
    pod_cfg.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.0.0.10".into()],
        searches: vec!["svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let pod = fx.pod(pod_cfg.clone()).await.expect("run pod");
    let st = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .expect("pod status")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.metadata, pod_cfg.metadata);
    assert_eq!(st.labels, pod_cfg.labels);
    assert_eq!(st.annotations, pod_cfg.annotations);
    let ip = st.network.expect("network").ip;
    assert!(
        ip.starts_with(&fx.nf.prefix),
        "pod ip {ip} not in {}",
        fx.nf.subnet
    );

    let server = fx
        .container(
            &pod,
            &pod_cfg,
            fx.container_config(
                "server",
                "echo out-1; echo err-1 >&2; exec nc -ll -p 8080 -e echo hello-from-server",
            ),
        )
        .await
        .expect("server container");
    let client = fx
        .container(
            &pod,
            &pod_cfg,
            fx.container_config("client", "echo started; exec sleep 1000"),
        )
        .await
        .expect("client container");

    // One IP, one localhost, one hostname, one resolv.conf.
    for id in [&server, &client] {
        let r = fx
            .exec(
                id,
                "ip -o -4 addr show eth0; hostname; cat /etc/resolv.conf",
                10,
            )
            .await
            .expect("exec");
        let out = String::from_utf8_lossy(&r.stdout);
        assert_eq!(
            r.exit_code,
            0,
            "{out} {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(out.contains(&format!("inet {ip}/")), "{out}");
        assert!(out.contains("web-host"), "{out}");
        assert!(
            out.contains("nameserver 10.0.0.10") && out.contains("search svc.cluster.local"),
            "{out}"
        );
    }
    // The server listens once its shell ran nc: retry the connection (each try is a real answer).
    let mut reply = String::new();
    for _ in 0..100 {
        let r = fx.exec(&client, "nc 127.0.0.1 8080 </dev/null", 5).await;
        reply = r
            .map(|r| String::from_utf8_lossy(&r.stdout).into_owned())
            .unwrap_or_default();
        if reply.contains("hello-from-server") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reply.contains("hello-from-server"),
        "client got {reply:?} over localhost"
    );

    // ExecSync: both streams, the exit code, the timeout.
    let r = fx
        .exec(&client, "echo to-out; echo to-err >&2; exit 3", 10)
        .await
        .expect("exec");
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"to-out\n"[..], &b"to-err\n"[..], 3)
    );
    let late = fx.exec(&client, "sleep 30", 1).await.expect_err("timeout");
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");

    // Stats from the shim's cgroup metrics; a resource update reaches the cgroup.
    let st = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: server.clone(),
        })
        .await
        .expect("stats")
        .into_inner()
        .stats
        .expect("stats");
    assert_eq!(
        st.attributes
            .as_ref()
            .and_then(|a| a.metadata.as_ref())
            .map(|m| m.name.as_str()),
        Some("server")
    );
    let cpu = st
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value)
        .unwrap_or(0);
    let mem = st
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value)
        .unwrap_or(0);
    assert!(cpu > 0 && mem > 0, "cpu {cpu} memory {mem}");
    assert!(st.writable_layer.is_some());
    let listed = rt
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("list stats")
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 2);
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: client.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        annotations: Default::default(),
    })
    .await
    .expect("update resources");
    let r = fx
        .exec(
            &client,
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
            10,
        )
        .await
        .expect("exec");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        (64u64 << 20).to_string()
    );

    // Logs in CRI format, both streams.
    let s = fx.status(&server).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    assert!(s.log_path.ends_with("web/server/0.log"), "{}", s.log_path);
    assert_eq!(s.image_ref, image_ref);
    let recs = log_records(&s.log_path, 2);
    assert!(
        recs.contains(&("stdout".into(), "F".into(), "out-1".into())),
        "{recs:?}"
    );
    assert!(
        recs.contains(&("stderr".into(), "F".into(), "err-1".into())),
        "{recs:?}"
    );

    // Stop with a grace period: sleep (not PID 1 in the pod's PID namespace) dies of SIGTERM.
    rt.stop_container(cri::StopContainerRequest {
        container_id: client.clone(),
        timeout: 10,
    })
    .await
    .expect("stop client");
    let s = fx.status(&client).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!((s.exit_code, s.reason.as_str()), (143, "Error"));
    assert!(
        s.created_at > 0 && s.started_at >= s.created_at && s.finished_at >= s.started_at,
        "{s:?}"
    );
    // Stopping again is fine.
    rt.stop_container(cri::StopContainerRequest {
        container_id: client.clone(),
        timeout: 10,
    })
    .await
    .expect("stop again");

    // A container that ends by itself.
    let done = fx
        .container(
            &pod,
            &pod_cfg,
            fx.container_config("job", "printf 'part'; echo done; exit 7"),
        )
        .await
        .expect("job");
    let s = fx.wait_exited(&done).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (7, "Error"));
    let recs = log_records(&s.log_path, 1);
    assert_eq!(
        recs,
        vec![(
            "stdout".to_string(),
            "F".to_string(),
            "partdone".to_string()
        )]
    );

    // Lists and filters.
    let all = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(all.len(), 3);
    let running = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("list running")
        .into_inner()
        .containers;
    assert_eq!(
        running.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec![server.as_str()]
    );
    let by_label = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .expect("list pods")
        .into_inner()
        .items;
    assert_eq!(by_label.len(), 1);

    // Stop the pod: every container is killed, the pod is not ready, its netns is gone.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("stop pod");
    let s = fx.status(&server).await;
    assert_eq!(
        (s.state, s.exit_code),
        (cri::ContainerState::ContainerExited as i32, 137)
    );
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxNotready as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    assert!(!fx.nf.netns_path(&pod).exists());

    // Remove (twice: idempotent), then nothing is listed.
    for _ in 0..2 {
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("remove pod");
    }
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("stop removed pod");
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: server.clone(),
    })
    .await
    .expect("remove removed container");
    let left = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(left.containers.is_empty(), "{left:?}");
    let left = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(left.items.is_empty(), "{left:?}");
    fx.nf.fx.guard.assert_clean();
}

/// Read what `addr` says on connect; None when nothing answers.
fn hello(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned()).filter(|t| !t.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_port_mapping_answers_on_the_host_until_the_pod_stops() {
    if !berth_tests::require_root() {
        return;
    }
    let Some(fx) = CriFixture::new("cri-port") else {
        return;
    };
    fx.pull_busybox().await;
    let port = berth_tests::net_fixture::free_port();
    let mut cfg = fx.pod_config("ported");
    cfg.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: i32::from(port),
        host_ip: "127.0.0.1".into(),
    }];
    let pod = fx.pod(cfg.clone()).await.expect("pod");
    fx.container(
        &pod,
        &cfg,
        fx.container_config("srv", "exec nc -ll -p 8080 -e echo hello-port"),
    )
    .await
    .expect("server");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut said = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            said = hello(addr);
            said.is_some()
        }),
        "nothing answered on {addr}"
    );
    assert_eq!(said.as_deref(), Some("hello-port\n"));
    let mut rt = fx.runtime().await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("stop pod");
    assert_eq!(
        hello(addr),
        None,
        "the port still answers after StopPodSandbox"
    );
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove pod");
    fx.nf.assert_no_leaks();
}
