//! A container's CRI security context reaches the process: run_as_user/run_as_group, run_as_username and the
//! image's `User` resolved in the image's own /etc/passwd and /etc/group (HOME from it), supplementary
//! groups by the Merge and Strict policies (and ContainerStatus's `user`), a read-only rootfs, capabilities
//! dropped to none, no_new_privs, the RuntimeDefault seccomp filter and a Localhost profile; a privileged
//! container gets every capability berthd may grant and no filter. Root only.

use berth_proto::cri;
use berth_tests::archive::TarBuilder;
use berth_tests::cri_fixture::CriFixture;
use berth_tests::oci_layout::{busybox_layer_tar, write_image};
use serde_json::json;

/// A CRI berthd for test `name` with busybox pulled; None (after a message) when the test is skipped.
async fn setup(name: &str) -> Option<CriFixture> {
    if !berth_tests::require_root() {
        return None;
    }
    let fx = CriFixture::new(name)?;
    fx.pull_busybox().await;
    Some(fx)
}

/// Remove `pod` (its containers with it) and check that nothing of the test is left.
async fn teardown(fx: CriFixture, pod: String) {
    fx.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .expect("remove");
    fx.nf.fx.guard.assert_clean();
}

/// The security context of a container config (the fixture's configs have one).
fn security(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

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
    let Some(fx) = setup("cri-sec").await else {
        return;
    };
    let cfg = fx.pod_config("locked");
    let pod = fx.pod(cfg.clone()).await.expect("pod");

    let mut locked = fx.container_config("locked", "exec sleep 1000");
    let sc = security(&mut locked);
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
    security(&mut open).privileged = true;
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

    teardown(fx, pod).await;
}

/// The users image's /etc/passwd and /etc/group (a layer over busybox's, which has neither `app` nor its
/// groups): `app` is in `extra` and `audio`, not in `other`.
const USERS_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234:app:/home/app:/bin/sh\n";
const USERS_GROUP: &str =
    "root:x:0:\napp:x:1234:\nextra:x:3000:app\naudio:x:3001:bob,app\nother:x:3002:bob\n";

/// Push and pull an image whose `User` is `app`, with [`USERS_PASSWD`] and [`USERS_GROUP`]; its reference.
async fn users_image(fx: &CriFixture) -> String {
    let mut layer = TarBuilder::new();
    layer
        .dir("etc", 0o755)
        .file("etc/passwd", 0o644, USERS_PASSWD.as_bytes())
        .file("etc/group", 0o644, USERS_GROUP.as_bytes())
        .dir("home", 0o755)
        .dir("home/app", 0o755);
    let layout = write_image(
        &fx.nf.fx.dir.subdir("users-image"),
        &[busybox_layer_tar(), layer.finish()],
        json!({ "Cmd": ["sh"], "User": "app" }),
        "1",
    );
    fx.registry.push_oci_layout(&layout.path, "users:1");
    let reference = fx.registry.reference("users:1");
    fx.images()
        .await
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull users image");
    reference
}

/// What a container's first process printed about itself: uid, gid, its sorted kernel group list and HOME.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    uid: String,
    gid: String,
    groups: Vec<u32>,
    home: String,
}

const IDENTITY_SCRIPT: &str = "id -u; id -g; grep '^Groups:' /proc/self/status; echo \"$HOME\"";

/// Run [`IDENTITY_SCRIPT`] as container `name` of `image` (after `edit`) to its exit; what its log says.
async fn identity(
    fx: &CriFixture,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    image: &str,
    name: &str,
    edit: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
) -> (String, Identity) {
    let mut c = fx.container_config(name, IDENTITY_SCRIPT);
    if let Some(i) = c.image.as_mut() {
        i.image = image.to_string();
    }
    edit(security(&mut c));
    let id = fx.container(pod, pod_cfg, c).await.expect(name);
    let st = fx.wait_exited(&id).await;
    assert_eq!(st.exit_code, 0, "{name}: {st:?}");
    let pod_name = pod_cfg
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let log = std::fs::read_to_string(fx.logs.join(pod_name).join(name).join("0.log"))
        .expect("container log");
    // CRI log lines: `<time> <stream> <F|P> <text>`.
    let lines: Vec<String> = log
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
        .collect();
    assert_eq!(lines.len(), 4, "{name}: {log}");
    let mut groups: Vec<u32> = lines[2]
        .trim_start_matches("Groups:")
        .split_whitespace()
        .map(|g| g.parse().expect("a gid"))
        .collect();
    groups.sort_unstable();
    (
        id,
        Identity {
            uid: lines[0].clone(),
            gid: lines[1].clone(),
            groups,
            home: lines[3].clone(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_groups_come_from_the_image() {
    let Some(fx) = setup("cri-users").await else {
        return;
    };
    let image = users_image(&fx).await;
    let cfg = fx.pod_config("users");
    let pod = fx.pod(cfg.clone()).await.expect("pod");
    let who = |uid: u32, gid: u32, groups: &[u32], home: &str| Identity {
        uid: uid.to_string(),
        gid: gid.to_string(),
        groups: groups.to_vec(),
        home: home.to_string(),
    };

    // No user in the CRI: the image's `User` (a name), with its groups from the image (Merge).
    let (_, got) = identity(&fx, &pod, &cfg, &image, "image-user", |_| {}).await;
    assert_eq!(got, who(1234, 1234, &[1234, 3000, 3001], "/home/app"));

    // run_as_username with supplemental groups, Merge (the default): both sets.
    let (_, got) = identity(&fx, &pod, &cfg, &image, "merge", |sc| {
        sc.run_as_username = "app".into();
        sc.supplemental_groups = vec![2000];
    })
    .await;
    assert_eq!(got, who(1234, 1234, &[1234, 2000, 3000, 3001], "/home/app"));

    // Strict: only the CRI's groups (and the primary one); ContainerStatus says so.
    let (strict, got) = identity(&fx, &pod, &cfg, &image, "strict", |sc| {
        sc.run_as_username = "app".into();
        sc.supplemental_groups = vec![2000];
        sc.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
    })
    .await;
    assert_eq!(got, who(1234, 1234, &[1234, 2000], "/home/app"));
    let user = fx.status(&strict).await.user.and_then(|u| u.linux);
    assert_eq!(
        user,
        Some(cri::LinuxContainerUser {
            uid: 1234,
            gid: 1234,
            supplemental_groups: vec![1234, 2000],
        })
    );

    // run_as_user: a uid the image knows gets its name's groups; run_as_group replaces the primary gid.
    let (_, got) = identity(&fx, &pod, &cfg, &image, "by-uid", |sc| {
        sc.run_as_user = Some(cri::Int64Value { value: 1234 });
        sc.run_as_group = Some(cri::Int64Value { value: 3002 });
    })
    .await;
    assert_eq!(got, who(1234, 3002, &[3000, 3001, 3002], "/home/app"));

    // A user the image lacks is refused by name, and nothing of the container is left.
    let mut ghost = fx.container_config("ghost", "true");
    if let Some(i) = ghost.image.as_mut() {
        i.image = image.clone();
    }
    security(&mut ghost).run_as_username = "ghost".into();
    let err = fx
        .container(&pod, &cfg, ghost)
        .await
        .expect_err("an unknown user");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("\"ghost\""), "{err:?}");
    let listed = fx
        .runtime()
        .await
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 4, "a failed create left a container");

    teardown(fx, pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_localhost_seccomp_profile_filters_the_process_and_apparmor_is_checked() {
    let Some(fx) = setup("cri-seccomp").await else {
        return;
    };
    let cfg = fx.pod_config("filtered");
    let pod = fx.pod(cfg.clone()).await.expect("pod");
    let profile = fx.nf.fx.dir.join("deny-mkdir.json");
    std::fs::write(
        &profile,
        json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{ "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }]
        })
        .to_string(),
    )
    .expect("profile");
    let localhost = |path: &std::path::Path| cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: path.display().to_string(),
    };

    let mut c = fx.container_config("filtered", "exec sleep 1000");
    security(&mut c).seccomp = Some(localhost(&profile));
    let id = fx
        .container(&pod, &cfg, c)
        .await
        .expect("filtered container");
    let r = fx.exec(&id, "mkdir /tmp/d", 10).await.expect("mkdir");
    assert_ne!(r.exit_code, 0, "mkdir passed the filter: {r:?}");
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("Operation not permitted"),
        "{r:?}"
    );
    let r = fx
        .exec(&id, "touch /tmp/f && ls /tmp/f", 10)
        .await
        .expect("touch");
    assert_eq!((r.exit_code, r.stdout.as_slice()), (0, &b"/tmp/f\n"[..]));
    assert_eq!(status_field(&fx, &id, "Seccomp").await, "2");

    // A profile that is not there: CreateContainer says which path.
    let missing = fx.nf.fx.dir.join("no-such-profile.json");
    let mut c = fx.container_config("unfiltered", "exec sleep 1000");
    security(&mut c).seccomp = Some(localhost(&missing));
    let err = fx
        .container(&pod, &cfg, c)
        .await
        .expect_err("a missing profile");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(&missing.display().to_string()),
        "{err:?}"
    );

    // AppArmor: the runtime default runs everywhere; a named profile on a host without AppArmor is refused at
    // CreateContainer, naming it (containerd's CRI does the same), and leaves no container behind.
    let apparmor = |t: cri::security_profile::ProfileType, name: &str| cri::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: name.into(),
    };
    let mut c = fx.container_config("aa-default", "exec sleep 1000");
    security(&mut c).apparmor = Some(apparmor(
        cri::security_profile::ProfileType::RuntimeDefault,
        "",
    ));
    let id = fx.container(&pod, &cfg, c).await.expect("runtime default");
    let r = fx.exec(&id, "true", 10).await.expect("exec");
    assert_eq!(r.exit_code, 0, "{r:?}");
    let host_apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.starts_with('Y'));
    if !host_apparmor {
        let mut c = fx.container_config("aa-named", "exec sleep 1000");
        security(&mut c).apparmor = Some(apparmor(
            cri::security_profile::ProfileType::Localhost,
            "berth-test-profile",
        ));
        let err = fx
            .container(&pod, &cfg, c)
            .await
            .expect_err("a named profile without AppArmor");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("berth-test-profile"), "{err:?}");
        let listed = fx
            .runtime()
            .await
            .list_containers(cri::ListContainersRequest::default())
            .await
            .expect("list")
            .into_inner()
            .containers;
        assert!(
            listed
                .iter()
                .all(|c| c.metadata.as_ref().is_none_or(|m| m.name != "aa-named")),
            "a refused container was left: {listed:?}"
        );
    }

    teardown(fx, pod).await;
}

/// A container config whose PID namespace mode is `mode` (with `target`).
fn with_pid_mode(
    mut c: cri::ContainerConfig,
    mode: cri::NamespaceMode,
    target: &str,
) -> cri::ContainerConfig {
    security(&mut c).namespace_options = Some(cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: mode as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        target_id: target.to_string(),
    });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_pid_namespaces_and_namespaced_sysctls() {
    let Some(fx) = setup("cri-target").await else {
        return;
    };
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

    teardown(fx, pod).await;
}
