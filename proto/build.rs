//! Generates Berth's wire code.
//!
//! - containerd's services: tonic server traits built with tonic-build's manual
//!   service builder, over the message types of the `containerd-client` crate, so
//!   no containerd .proto file is copied or compiled here.
//! - Our own .proto files (berth.v1, berth.shim.v1, wire-compatible containerd
//!   runc options and cgroups metrics): compiled in pure Rust by protox.

use std::env;
use std::path::PathBuf;

/// One containerd service: (package, Rust service name, methods).
/// A method is (rust name, route name, input, output, server streaming, client streaming).
type MethodDef = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    bool,
);

const CONTAINERD: &[(&str, &str, &[MethodDef])] = &[
    (
        "containerd.services.version.v1",
        "Version",
        &[("version", "Version", "()", "VersionResponse", false, false)],
    ),
    (
        "containerd.services.namespaces.v1",
        "Namespaces",
        &[
            (
                "get",
                "Get",
                "GetNamespaceRequest",
                "GetNamespaceResponse",
                false,
                false,
            ),
            (
                "list",
                "List",
                "ListNamespacesRequest",
                "ListNamespacesResponse",
                false,
                false,
            ),
            (
                "create",
                "Create",
                "CreateNamespaceRequest",
                "CreateNamespaceResponse",
                false,
                false,
            ),
            (
                "update",
                "Update",
                "UpdateNamespaceRequest",
                "UpdateNamespaceResponse",
                false,
                false,
            ),
            (
                "delete",
                "Delete",
                "DeleteNamespaceRequest",
                "()",
                false,
                false,
            ),
        ],
    ),
    (
        "containerd.services.containers.v1",
        "Containers",
        &[
            (
                "get",
                "Get",
                "GetContainerRequest",
                "GetContainerResponse",
                false,
                false,
            ),
            (
                "list",
                "List",
                "ListContainersRequest",
                "ListContainersResponse",
                false,
                false,
            ),
            (
                "list_stream",
                "ListStream",
                "ListContainersRequest",
                "ListContainerMessage",
                true,
                false,
            ),
            (
                "create",
                "Create",
                "CreateContainerRequest",
                "CreateContainerResponse",
                false,
                false,
            ),
            (
                "update",
                "Update",
                "UpdateContainerRequest",
                "UpdateContainerResponse",
                false,
                false,
            ),
            (
                "delete",
                "Delete",
                "DeleteContainerRequest",
                "()",
                false,
                false,
            ),
        ],
    ),
    (
        "containerd.services.content.v1",
        "Content",
        &[
            ("info", "Info", "InfoRequest", "InfoResponse", false, false),
            (
                "update",
                "Update",
                "UpdateRequest",
                "UpdateResponse",
                false,
                false,
            ),
            (
                "list",
                "List",
                "ListContentRequest",
                "ListContentResponse",
                true,
                false,
            ),
            (
                "delete",
                "Delete",
                "DeleteContentRequest",
                "()",
                false,
                false,
            ),
            (
                "read",
                "Read",
                "ReadContentRequest",
                "ReadContentResponse",
                true,
                false,
            ),
            (
                "status",
                "Status",
                "StatusRequest",
                "StatusResponse",
                false,
                false,
            ),
            (
                "list_statuses",
                "ListStatuses",
                "ListStatusesRequest",
                "ListStatusesResponse",
                false,
                false,
            ),
            (
                "write",
                "Write",
                "WriteContentRequest",
                "WriteContentResponse",
                true,
                true,
            ),
            ("abort", "Abort", "AbortRequest", "()", false, false),
        ],
    ),
    (
        "containerd.services.images.v1",
        "Images",
        &[
            (
                "get",
                "Get",
                "GetImageRequest",
                "GetImageResponse",
                false,
                false,
            ),
            (
                "list",
                "List",
                "ListImagesRequest",
                "ListImagesResponse",
                false,
                false,
            ),
            (
                "create",
                "Create",
                "CreateImageRequest",
                "CreateImageResponse",
                false,
                false,
            ),
            (
                "update",
                "Update",
                "UpdateImageRequest",
                "UpdateImageResponse",
                false,
                false,
            ),
            ("delete", "Delete", "DeleteImageRequest", "()", false, false),
        ],
    ),
    (
        "containerd.services.leases.v1",
        "Leases",
        &[
            (
                "create",
                "Create",
                "CreateRequest",
                "CreateResponse",
                false,
                false,
            ),
            ("delete", "Delete", "DeleteRequest", "()", false, false),
            ("list", "List", "ListRequest", "ListResponse", false, false),
            (
                "add_resource",
                "AddResource",
                "AddResourceRequest",
                "()",
                false,
                false,
            ),
            (
                "delete_resource",
                "DeleteResource",
                "DeleteResourceRequest",
                "()",
                false,
                false,
            ),
            (
                "list_resources",
                "ListResources",
                "ListResourcesRequest",
                "ListResourcesResponse",
                false,
                false,
            ),
        ],
    ),
    (
        "containerd.services.snapshots.v1",
        "Snapshots",
        &[
            (
                "prepare",
                "Prepare",
                "snapshots::PrepareSnapshotRequest",
                "snapshots::PrepareSnapshotResponse",
                false,
                false,
            ),
            (
                "view",
                "View",
                "snapshots::ViewSnapshotRequest",
                "snapshots::ViewSnapshotResponse",
                false,
                false,
            ),
            (
                "mounts",
                "Mounts",
                "snapshots::MountsRequest",
                "snapshots::MountsResponse",
                false,
                false,
            ),
            (
                "commit",
                "Commit",
                "snapshots::CommitSnapshotRequest",
                "()",
                false,
                false,
            ),
            (
                "remove",
                "Remove",
                "snapshots::RemoveSnapshotRequest",
                "()",
                false,
                false,
            ),
            (
                "stat",
                "Stat",
                "snapshots::StatSnapshotRequest",
                "snapshots::StatSnapshotResponse",
                false,
                false,
            ),
            (
                "update",
                "Update",
                "snapshots::UpdateSnapshotRequest",
                "snapshots::UpdateSnapshotResponse",
                false,
                false,
            ),
            (
                "list",
                "List",
                "snapshots::ListSnapshotsRequest",
                "snapshots::ListSnapshotsResponse",
                true,
                false,
            ),
            (
                "usage",
                "Usage",
                "snapshots::UsageRequest",
                "snapshots::UsageResponse",
                false,
                false,
            ),
            (
                "cleanup",
                "Cleanup",
                "snapshots::CleanupRequest",
                "()",
                false,
                false,
            ),
        ],
    ),
    (
        "containerd.services.diff.v1",
        "Diff",
        &[
            (
                "apply",
                "Apply",
                "ApplyRequest",
                "ApplyResponse",
                false,
                false,
            ),
            ("diff", "Diff", "DiffRequest", "DiffResponse", false, false),
        ],
    ),
    (
        "containerd.services.tasks.v1",
        "Tasks",
        &[
            (
                "create",
                "Create",
                "CreateTaskRequest",
                "CreateTaskResponse",
                false,
                false,
            ),
            (
                "start",
                "Start",
                "StartRequest",
                "StartResponse",
                false,
                false,
            ),
            (
                "delete",
                "Delete",
                "DeleteTaskRequest",
                "DeleteResponse",
                false,
                false,
            ),
            (
                "delete_process",
                "DeleteProcess",
                "DeleteProcessRequest",
                "DeleteResponse",
                false,
                false,
            ),
            ("get", "Get", "GetRequest", "GetResponse", false, false),
            (
                "list",
                "List",
                "ListTasksRequest",
                "ListTasksResponse",
                false,
                false,
            ),
            ("kill", "Kill", "KillRequest", "()", false, false),
            ("exec", "Exec", "ExecProcessRequest", "()", false, false),
            (
                "resize_pty",
                "ResizePty",
                "ResizePtyRequest",
                "()",
                false,
                false,
            ),
            ("close_io", "CloseIO", "CloseIoRequest", "()", false, false),
            ("pause", "Pause", "PauseTaskRequest", "()", false, false),
            ("resume", "Resume", "ResumeTaskRequest", "()", false, false),
            (
                "list_pids",
                "ListPids",
                "ListPidsRequest",
                "ListPidsResponse",
                false,
                false,
            ),
            (
                "checkpoint",
                "Checkpoint",
                "CheckpointTaskRequest",
                "CheckpointTaskResponse",
                false,
                false,
            ),
            ("update", "Update", "UpdateTaskRequest", "()", false, false),
            (
                "metrics",
                "Metrics",
                "MetricsRequest",
                "MetricsResponse",
                false,
                false,
            ),
            ("wait", "Wait", "WaitRequest", "WaitResponse", false, false),
        ],
    ),
    (
        "containerd.services.events.v1",
        "Events",
        &[
            ("publish", "Publish", "PublishRequest", "()", false, false),
            ("forward", "Forward", "ForwardRequest", "()", false, false),
            (
                "subscribe",
                "Subscribe",
                "SubscribeRequest",
                "::containerd_client::types::Envelope",
                true,
                false,
            ),
        ],
    ),
    (
        "containerd.services.transfer.v1",
        "Transfer",
        &[(
            "transfer",
            "Transfer",
            "TransferRequest",
            "()",
            false,
            false,
        )],
    ),
    (
        "containerd.services.streaming.v1",
        "Streaming",
        &[(
            "stream",
            "Stream",
            "::prost_types::Any",
            "::prost_types::Any",
            true,
            true,
        )],
    ),
    (
        "containerd.services.introspection.v1",
        "Introspection",
        &[
            (
                "plugins",
                "Plugins",
                "PluginsRequest",
                "PluginsResponse",
                false,
                false,
            ),
            ("server", "Server", "()", "ServerResponse", false, false),
            (
                "plugin_info",
                "PluginInfo",
                "PluginInfoRequest",
                "PluginInfoResponse",
                false,
                false,
            ),
        ],
    ),
];

/// Rust path of a message: `()` (google.protobuf.Empty) becomes [`crate::Empty`], absolute paths stay, the rest live in
/// containerd-client's `services::v1`.
fn rust_type(name: &str) -> String {
    if name == "()" {
        // syn wants a path, not a tuple type.
        "crate::Empty".to_string()
    } else if name.starts_with("::") {
        name.to_string()
    } else {
        format!("::containerd_client::services::v1::{name}")
    }
}

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=protos");
    println!("cargo:rerun-if-changed=build.rs");

    if env::var_os("CARGO_FEATURE_API").is_some() {
        let services: Vec<_> = CONTAINERD
            .iter()
            .map(|(package, name, methods)| {
                let mut svc = tonic_build::manual::Service::builder()
                    .name(*name)
                    .package(*package);
                for (rust, route, input, output, server_streaming, client_streaming) in *methods {
                    let mut m = tonic_build::manual::Method::builder()
                        .name(*rust)
                        .route_name(*route)
                        .input_type(rust_type(input))
                        .output_type(rust_type(output))
                        .codec_path("::tonic_prost::ProstCodec");
                    if *server_streaming {
                        m = m.server_streaming();
                    }
                    if *client_streaming {
                        m = m.client_streaming();
                    }
                    svc = svc.method(m.build());
                }
                svc.build()
            })
            .collect();
        tonic_build::manual::Builder::new()
            .build_client(false)
            .build_transport(false)
            .out_dir(&out)
            .compile(&services);
    }

    let mut files = Vec::new();
    if env::var_os("CARGO_FEATURE_SHIM").is_some() {
        files.push("protos/berth/shim/v1/shim.proto");
        files.push("protos/containerd/cgroups/v1/metrics.proto");
    }
    if env::var_os("CARGO_FEATURE_API").is_some() {
        files.push("protos/berth/v1/berth.proto");
        files.push("protos/containerd/runc/v1/options.proto");
        files.push("protos/cri/api.proto");
    }
    if files.is_empty() {
        return;
    }
    let fds = protox::compile(&files, ["protos"]).unwrap_or_else(|e| panic!("protox: {e}"));
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .out_dir(&out)
        .compile_fds_with_config(fds, config)
        .unwrap_or_else(|e| panic!("generating protobuf code: {e}"));
}
