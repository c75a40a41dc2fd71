//! A Rust client on the `containerd-client` crate (containerd 2.x's API) against berthd, doing what a
//! containerd 2.x client does to run a container from a registry image, with expectations from containerd's
//! documented behaviour:
//! - pull through Transfer (`OCIRegistry` → `ImageStore`, unpacked), progress on a Streaming stream ending in
//!   the image's `saved` and every layer `complete`;
//! - read the image (Images.Get → manifest → config) and compute the top layer's chain id;
//! - `Snapshots.Prepare{key: id, parent: chain}`, `Containers.Create` with that snapshot and a spec,
//!   `Tasks.Create` with the prepared mounts, Wait before Start (the Wait answers at the exit);
//! - exec: `Tasks.Exec` + Start + Wait (its exit code), `DeleteProcess`;
//! - kill (137 from SIGKILL), `Tasks.Delete` (the exit status), then Get says NotFound;
//! - `Snapshots.Remove`, `Containers.Delete`, `Images.Delete{sync}`: no content and no snapshot left.
//!
//! Root only.

use std::time::Duration;

use berth_proto::containerd_client::services::v1::container::Runtime;
use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::content_client::ContentClient;
use berth_proto::containerd_client::services::v1::images_client::ImagesClient;
use berth_proto::containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use berth_proto::containerd_client::services::v1::snapshots::{
    ListSnapshotsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use berth_proto::containerd_client::services::v1::tasks_client::TasksClient;
use berth_proto::containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteImageRequest, DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest,
    GetImageRequest, GetRequest, KillRequest, ListContentRequest, ReadContentRequest, StartRequest,
    WaitRequest,
};
use berth_tests::grpc::req;
use berth_tests::oci_layout::busybox_layout;
use berth_tests::registry::Registry;
use berth_tests::task_fixture::TaskFixture;
use berth_tests::transfer::{PullOptions, Transfer};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

/// The whole blob `digest`, read as a client reads (a Read stream).
async fn read_blob(channel: &Channel, ns: &str, digest: &str) -> Vec<u8> {
    let mut stream = ContentClient::new(channel.clone())
        .read(req(
            ns,
            ReadContentRequest {
                digest: digest.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("Content.Read {digest}: {e}"))
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await.expect("read stream") {
        out.extend_from_slice(&chunk.data);
    }
    out
}

/// The chain id of a list of diff ids (the OCI image spec's ChainID).
fn chain_id(diff_ids: &[String]) -> String {
    let mut chain = diff_ids.first().cloned().unwrap_or_default();
    for d in &diff_ids[1..] {
        let h = Sha256::digest(format!("{chain} {d}").as_bytes());
        chain = format!(
            "sha256:{}",
            h.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
    }
    chain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_client_pulls_runs_execs_and_cleans_up() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("cc-client", "");
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let layout = busybox_layout(&fx.dir.join("layout"));
    registry.push_oci_layout(&layout.path, "busybox:latest");
    let image = registry.reference("busybox:latest");
    let ns = fx.ns.clone();
    let channel = fx.channel().await;

    // Pull through Transfer, with progress.
    let out = Transfer::new(channel.clone(), &ns)
        .pull(&image, &PullOptions::default())
        .await
        .expect("Transfer pull");
    assert_eq!(out.saved(), vec![image.clone()], "{:?}", out.progress);
    let layer_events = out.events_of(&format!("layer-{}", layout.layers[0].digest));
    assert_eq!(
        layer_events.last().map(String::as_str),
        Some("complete"),
        "{:?}",
        out.progress
    );

    // The image, as a client reads it.
    let img = ImagesClient::new(channel.clone())
        .get(req(
            &ns,
            GetImageRequest {
                name: image.clone(),
            },
        ))
        .await
        .expect("Images.Get")
        .into_inner()
        .image
        .expect("image");
    let target = img.target.expect("target");
    assert_eq!(target.digest, layout.manifest.digest);
    let manifest: Value =
        serde_json::from_slice(&read_blob(&channel, &ns, &target.digest).await).expect("manifest");
    let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default();
    let config: Value =
        serde_json::from_slice(&read_blob(&channel, &ns, config_digest).await).expect("config");
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let chain = chain_id(&diff_ids);

    // A container on a snapshot of the image.
    let id = berth_tests::unique_id("client");
    let cgroup = format!("/{ns}/{id}");
    fx.guard.cgroup(&cgroup);
    let mut snaps = SnapshotsClient::new(channel.clone());
    let mounts = snaps
        .prepare(req(
            &ns,
            PrepareSnapshotRequest {
                snapshotter: "overlayfs".into(),
                key: id.clone(),
                parent: chain.clone(),
                labels: Default::default(),
            },
        ))
        .await
        .expect("Snapshots.Prepare")
        .into_inner()
        .mounts;
    assert_eq!(
        mounts.first().map(|m| m.r#type.as_str()),
        Some("overlay"),
        "{mounts:?}"
    );
    let mut spec = berth_tests::bundle::default_spec(&["sleep", "1000"], &cgroup);
    spec["process"]["env"] = config["config"]["Env"].clone();
    let mut containers = ContainersClient::new(channel.clone());
    containers
        .create(req(
            &ns,
            CreateContainerRequest {
                container: Some(Container {
                    id: id.clone(),
                    image: image.clone(),
                    runtime: Some(Runtime {
                        name: "io.containerd.runc.v2".into(),
                        options: None,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: berth_proto::SPEC_TYPE_URL.into(),
                        value: serde_json::to_vec(&spec).expect("spec"),
                    }),
                    snapshotter: "overlayfs".into(),
                    snapshot_key: id.clone(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("Containers.Create");

    let mut tasks = TasksClient::new(channel.clone());
    let created = tasks
        .create(req(
            &ns,
            CreateTaskRequest {
                container_id: id.clone(),
                rootfs: mounts,
                ..Default::default()
            },
        ))
        .await
        .expect("Tasks.Create")
        .into_inner();
    assert_eq!(created.container_id, id);
    fx.guard.pid(created.pid as i32);
    // Wait before Start, as containerd's client does: it answers at the exit.
    let waiter = {
        let (mut t, ns, id) = (tasks.clone(), ns.clone(), id.clone());
        tokio::spawn(async move {
            t.wait(berth_tests::grpc::req_with(
                &ns,
                WaitRequest {
                    container_id: id,
                    exec_id: String::new(),
                },
                None,
            ))
            .await
        })
    };
    let started = tasks
        .start(req(
            &ns,
            StartRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            },
        ))
        .await
        .expect("Tasks.Start")
        .into_inner();
    assert_eq!(started.pid, created.pid);

    // exec: its output (to a file) and exit code.
    let out_file = fx.dir.join("exec-stdout");
    std::fs::write(&out_file, "").expect("stdout file");
    let process = serde_json::json!({
        "args": ["sh", "-c", "echo from-exec; exit 4"],
        "cwd": "/",
        "env": config["config"]["Env"],
        "user": {"uid": 0, "gid": 0},
    });
    tasks
        .exec(req(
            &ns,
            ExecProcessRequest {
                container_id: id.clone(),
                exec_id: "e1".into(),
                stdout: out_file.display().to_string(),
                spec: Some(prost_types::Any {
                    type_url: berth_proto::PROCESS_TYPE_URL.into(),
                    value: serde_json::to_vec(&process).expect("process"),
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("Tasks.Exec");
    let exec_wait = {
        let (mut t, ns, id) = (tasks.clone(), ns.clone(), id.clone());
        tokio::spawn(async move {
            t.wait(berth_tests::grpc::req_with(
                &ns,
                WaitRequest {
                    container_id: id,
                    exec_id: "e1".into(),
                },
                None,
            ))
            .await
        })
    };
    let exec_pid = tasks
        .start(req(
            &ns,
            StartRequest {
                container_id: id.clone(),
                exec_id: "e1".into(),
            },
        ))
        .await
        .expect("Tasks.Start of the exec")
        .into_inner()
        .pid;
    assert!(exec_pid > 0 && exec_pid != created.pid);
    let st = tokio::time::timeout(Duration::from_secs(30), exec_wait)
        .await
        .expect("the exec's Wait answers")
        .expect("join")
        .expect("Tasks.Wait of the exec")
        .into_inner();
    assert_eq!(st.exit_status, 4);
    assert_eq!(
        std::fs::read_to_string(&out_file).expect("exec stdout"),
        "from-exec\n"
    );
    let d = tasks
        .delete_process(req(
            &ns,
            DeleteProcessRequest {
                container_id: id.clone(),
                exec_id: "e1".into(),
            },
        ))
        .await
        .expect("Tasks.DeleteProcess")
        .into_inner();
    assert_eq!(d.exit_status, 4);
    let gone = tasks
        .get(req(
            &ns,
            GetRequest {
                container_id: id.clone(),
                exec_id: "e1".into(),
            },
        ))
        .await;
    assert_eq!(berth_tests::grpc::code(gone), tonic::Code::NotFound);

    // kill, wait, delete.
    tasks
        .kill(req(
            &ns,
            KillRequest {
                container_id: id.clone(),
                signal: 9,
                ..Default::default()
            },
        ))
        .await
        .expect("Tasks.Kill");
    let st = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the init's Wait answers")
        .expect("join")
        .expect("Tasks.Wait")
        .into_inner();
    assert_eq!(st.exit_status, 137, "128 + SIGKILL");
    assert!(st.exited_at.is_some_and(|t| t.seconds > 0));
    let del = tasks
        .delete(req(
            &ns,
            DeleteTaskRequest {
                container_id: id.clone(),
            },
        ))
        .await
        .expect("Tasks.Delete")
        .into_inner();
    assert_eq!(
        (del.pid, del.exit_status),
        (created.pid, 137),
        "Delete reports the exit"
    );
    let gone = tasks
        .get(req(
            &ns,
            GetRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            },
        ))
        .await;
    assert_eq!(berth_tests::grpc::code(gone), tonic::Code::NotFound);

    snaps
        .remove(req(
            &ns,
            RemoveSnapshotRequest {
                snapshotter: "overlayfs".into(),
                key: id.clone(),
            },
        ))
        .await
        .expect("Snapshots.Remove");
    containers
        .delete(req(&ns, DeleteContainerRequest { id: id.clone() }))
        .await
        .expect("Containers.Delete");
    ImagesClient::new(channel.clone())
        .delete(req(
            &ns,
            DeleteImageRequest {
                name: image.clone(),
                sync: true,
                ..Default::default()
            },
        ))
        .await
        .expect("Images.Delete");

    // Synchronous delete: GC already ran, nothing is left.
    let mut content = ContentClient::new(channel.clone())
        .list(req(&ns, ListContentRequest::default()))
        .await
        .expect("Content.List")
        .into_inner();
    let mut blobs = Vec::new();
    while let Some(r) = content.message().await.expect("list stream") {
        blobs.extend(r.info.into_iter().map(|i| i.digest));
    }
    assert_eq!(blobs, Vec::<String>::new());
    let mut listed = snaps
        .list(req(
            &ns,
            ListSnapshotsRequest {
                snapshotter: "overlayfs".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("Snapshots.List")
        .into_inner();
    let mut keys = Vec::new();
    while let Some(r) = listed.message().await.expect("list stream") {
        keys.extend(r.info.into_iter().map(|i| i.name));
    }
    assert_eq!(keys, Vec::<String>::new());
    assert!(
        berth_tests::mounts_below(fx.dir.path()).is_empty(),
        "nothing mounted"
    );
    fx.guard.assert_clean();
}
