//! Helpers of the CRI tests (`cri_*.rs`): a [`CriFixture`] is a [`NetFixture`] (its own berthd, CNI conf dir,
//! bridge and /24, leak checks) whose berthd serves the CRI (`[cri] enabled`), in namespace `k8s.io`, with a
//! loopback docker-registry holding a small pause image (busybox running `sleep`) and busybox, and a kubelet
//! log directory under the test dir. Clients are the generated `runtime.v1` ones over berthd's socket.
//!
//! Every container the fixture makes through [`CriFixture::pod`] / [`CriFixture::container`] has its cgroup
//! registered with the guard, so a test that forgets a removal fails its leak check.

use std::collections::HashMap;
use std::path::PathBuf;

use berth_proto::cri;
use berth_proto::cri::image_service_client::ImageServiceClient;
use berth_proto::cri::runtime_service_client::RuntimeServiceClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::net_fixture::NetFixture;
use crate::oci_layout::{busybox_layer_tar, write_image};
use crate::registry::Registry;

/// CRI's containerd namespace.
pub const NS: &str = "k8s.io";

/// One CRI test's berthd, registry and images.
pub struct CriFixture {
    /// The loopback registry (declared first: dropped after berthd's cleanup ran).
    pub registry: Registry,
    /// berthd with CRI on, its network and its guard.
    pub nf: NetFixture,
    /// The pause image's reference.
    pub pause: String,
    /// busybox's reference (`sh` as its Cmd).
    pub busybox: String,
    /// The kubelet's pod log root.
    pub logs: PathBuf,
    /// The pods' cgroup parent (as a kubelet's cgroupfs driver gives one), unique to the fixture.
    pub cgroup_parent: String,
    /// Removes the cgroup parent after berthd's guard removed the pods' cgroups below it.
    _parent_guard: crate::Guard,
    /// The registry's and the layouts' dir (last: removed after the registry stopped).
    _reg_dir: crate::TestDir,
}

impl CriFixture {
    /// A CRI berthd for test `name`; None (after a skip message) when docker-registry is missing.
    pub fn new(name: &str) -> Option<CriFixture> {
        let dir = crate::TestDir::new(&format!("{name}-reg"));
        let registry = Registry::start(dir.path())?;
        let pause_layout = write_image(
            &dir.join("pause"),
            &[busybox_layer_tar()],
            json!({ "Entrypoint": ["sleep", "1000000"], "Cmd": [] }),
            "3.10",
        );
        let pause = registry.reference("pause:3.10");
        registry.push_oci_layout(&pause_layout.path, "pause:3.10");
        let bb_layout = write_image(
            &dir.join("busybox"),
            &[busybox_layer_tar()],
            json!({ "Cmd": ["sh"], "Env": ["FROM_IMAGE=1"] }),
            "1",
        );
        let busybox = registry.reference("busybox:1");
        registry.push_oci_layout(&bb_layout.path, "busybox:1");
        // The registry is plain HTTP: say so in a hosts.toml, as a kubelet's node would.
        let hosts = dir.join("certs.d");
        let host_dir = hosts.join(&registry.addr);
        std::fs::create_dir_all(&host_dir).expect("hosts dir");
        std::fs::write(
            host_dir.join("hosts.toml"),
            format!("server = \"http://{}\"\n", registry.addr),
        )
        .expect("hosts.toml");
        let extra = format!(
            "\n[cri]\nenabled = true\nsandbox_image = {pause:?}\nregistry_config_path = {:?}\n",
            hosts.display().to_string()
        );
        let nf = NetFixture::with_config(name, "", &extra, Some(NS));
        let logs = nf.fx.dir.subdir("pod-logs");
        let cgroup_parent = format!("/{}", crate::unique_id(&format!("{name}-pods")));
        let parent_guard = crate::Guard::new();
        parent_guard.cgroup(cgroup_parent.clone());
        Some(CriFixture {
            registry,
            nf,
            pause,
            busybox,
            logs,
            cgroup_parent,
            _parent_guard: parent_guard,
            _reg_dir: dir,
        })
    }

    /// A RuntimeService client.
    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.nf.fx.daemon.channel().await)
    }

    /// An ImageService client.
    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.nf.fx.daemon.channel().await)
    }

    /// A pod config named `name` (uid and namespace derived), logging under the fixture's log root.
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}"),
                namespace: "default".to_string(),
                attempt: 0,
            }),
            hostname: format!("{name}-host"),
            log_directory: self.logs.join(name).display().to_string(),
            labels: HashMap::from([("app".to_string(), name.to_string())]),
            annotations: HashMap::from([("note".to_string(), "kept as is".to_string())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A container config running `sh -c script` from busybox, logging to `<name>/0.log`.
    pub fn container_config(&self, name: &str, script: &str) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.busybox.clone(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), script.to_string()],
            log_path: format!("{name}/0.log"),
            labels: HashMap::from([("container".to_string(), name.to_string())]),
            linux: Some(cri::LinuxContainerConfig {
                resources: None,
                security_context: Some(cri::LinuxContainerSecurityContext {
                    capabilities: Some(cri::Capability {
                        add_capabilities: vec!["NET_RAW".into()],
                        drop_capabilities: vec![],
                    }),
                    seccomp: Some(cri::SecurityProfile {
                        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                        localhost_ref: String::new(),
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    /// Pull busybox (the pause image is pulled by RunPodSandbox itself).
    pub async fn pull_busybox(&self) -> String {
        self.images()
            .await
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: self.busybox.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("pull busybox")
            .into_inner()
            .image_ref
    }

    /// RunPodSandbox; the pod's cgroup goes to the guard.
    pub async fn pod(&self, config: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
        let id = self
            .runtime()
            .await
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        self.nf
            .fx
            .guard
            .cgroup(format!("{}/{id}", self.cgroup_parent));
        Ok(id)
    }

    /// CreateContainer + StartContainer; the container's cgroup goes to the guard.
    pub async fn container(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let mut rt = self.runtime().await;
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.to_string(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            })
            .await?
            .into_inner()
            .container_id;
        self.nf
            .fx
            .guard
            .cgroup(format!("{}/{id}", self.cgroup_parent));
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
        Ok(id)
    }

    /// ContainerStatus.
    pub async fn status(&self, id: &str) -> cri::ContainerStatus {
        self.runtime()
            .await
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .expect("container status")
            .into_inner()
            .status
            .expect("a status")
    }

    /// The host pid of a running container (ContainerStatus' verbose info).
    pub async fn pid_of(&self, id: &str) -> i32 {
        let info = self
            .runtime()
            .await
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: true,
            })
            .await
            .expect("status")
            .into_inner()
            .info;
        let v: serde_json::Value = serde_json::from_str(&info["info"]).expect("info json");
        v["pid"].as_i64().expect("pid") as i32
    }

    /// ExecSync of `sh -c script` with `timeout` seconds.
    pub async fn exec(
        &self,
        id: &str,
        script: &str,
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        Ok(self
            .runtime()
            .await
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.to_string(),
                cmd: vec!["sh".into(), "-c".into(), script.to_string()],
                timeout,
            })
            .await?
            .into_inner())
    }

    /// Wait (polling ContainerStatus, each call a real answer) until the container exited.
    pub async fn wait_exited(&self, id: &str) -> cri::ContainerStatus {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let s = self.status(id).await;
            if s.state == cri::ContainerState::ContainerExited as i32 {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} did not exit: {s:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
