//! containerd `Introspection` service: Berth's plugins under containerd-like types and ids, and the server's
//! persistent uuid and pid.
//!
//! This module must never claim a plugin Berth does not serve as working: unimplemented services are listed with
//! an init error.

use berth_proto::containerd::introspection::introspection_server::Introspection;
use containerd_client::services::v1::{
    Plugin, PluginInfoRequest, PluginInfoResponse, PluginsRequest, PluginsResponse, ServerResponse,
};
use containerd_client::types::Platform;
use tonic::{Request, Response, Status};

use super::parse_filters;
use crate::context::Context;

/// (type, id, requires, init error) of every plugin Berth reports, all working: containerd 2.x's server-side
/// Transfer service (pull, import, export, tag, push) and its Streaming service included, which is what makes
/// containerd's Go client pull through berthd instead of client-side.
const PLUGINS: &[(&str, &str, &[&str], Option<&str>)] = &[
    ("io.containerd.metadata.v1", "redb", &[], None),
    ("io.containerd.event.v1", "exchange", &[], None),
    ("io.containerd.content.v1", "content", &[], None),
    ("io.containerd.snapshotter.v1", "overlayfs", &[], None),
    ("io.containerd.snapshotter.v1", "native", &[], None),
    (
        "io.containerd.differ.v1",
        "walking",
        &["io.containerd.metadata.v1"],
        None,
    ),
    (
        "io.containerd.gc.v1",
        "scheduler",
        &["io.containerd.metadata.v1"],
        None,
    ),
    (
        "io.containerd.lease.v1",
        "manager",
        &["io.containerd.metadata.v1"],
        None,
    ),
    (
        "io.containerd.runtime.v2",
        "task",
        &["io.containerd.metadata.v1"],
        None,
    ),
    ("io.containerd.grpc.v1", "version", &[], None),
    ("io.containerd.grpc.v1", "introspection", &[], None),
    ("io.containerd.grpc.v1", "healthcheck", &[], None),
    (
        "io.containerd.grpc.v1",
        "namespaces",
        &["io.containerd.metadata.v1"],
        None,
    ),
    (
        "io.containerd.grpc.v1",
        "containers",
        &["io.containerd.metadata.v1"],
        None,
    ),
    (
        "io.containerd.grpc.v1",
        "leases",
        &["io.containerd.lease.v1"],
        None,
    ),
    (
        "io.containerd.grpc.v1",
        "events",
        &["io.containerd.event.v1"],
        None,
    ),
    (
        "io.containerd.grpc.v1",
        "tasks",
        &["io.containerd.runtime.v2"],
        None,
    ),
    (
        "io.containerd.grpc.v1",
        "content",
        &["io.containerd.content.v1"],
        None,
    ),
    (
        "io.containerd.grpc.v1",
        "images",
        &["io.containerd.metadata.v1", "io.containerd.gc.v1"],
        None,
    ),
    (
        "io.containerd.grpc.v1",
        "snapshots",
        &["io.containerd.snapshotter.v1"],
        None,
    ),
    (
        "io.containerd.grpc.v1",
        "diff",
        &["io.containerd.differ.v1"],
        None,
    ),
    (
        "io.containerd.streaming.v1",
        "manager",
        &["io.containerd.metadata.v1"],
        None,
    ),
    (
        "io.containerd.transfer.v1",
        "local",
        &[
            "io.containerd.lease.v1",
            "io.containerd.metadata.v1",
            "io.containerd.differ.v1",
        ],
        None,
    ),
    (
        "io.containerd.grpc.v1",
        "streaming",
        &["io.containerd.streaming.v1"],
        None,
    ),
    (
        "io.containerd.grpc.v1",
        "transfer",
        &["io.containerd.transfer.v1", "io.containerd.streaming.v1"],
        None,
    ),
    (
        "io.berth.grpc.v1",
        "journal",
        &["io.containerd.event.v1"],
        None,
    ),
];

crate::fields!(Plugin { r#type, id });

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Berth's plugin list.
pub fn plugins() -> Vec<Plugin> {
    PLUGINS
        .iter()
        .map(|(t, id, requires, err)| Plugin {
            r#type: t.to_string(),
            id: id.to_string(),
            requires: requires.iter().map(|s| s.to_string()).collect(),
            platforms: if *t == "io.containerd.runtime.v2" || *t == "io.containerd.snapshotter.v1" {
                vec![Platform {
                    os: "linux".into(),
                    architecture: arch().into(),
                    ..Default::default()
                }]
            } else {
                Vec::new()
            },
            exports: Default::default(),
            capabilities: Vec::new(),
            init_err: err.map(|m| containerd_client::google::rpc::Status {
                code: tonic::Code::Unimplemented as i32,
                message: m.to_string(),
                details: Vec::new(),
            }),
        })
        .collect()
}

/// The Introspection service.
#[derive(Debug, Clone)]
pub struct IntrospectionService {
    ctx: Context,
}

impl IntrospectionService {
    /// Over the shared context.
    pub fn new(ctx: Context) -> Self {
        IntrospectionService { ctx }
    }
}

#[tonic::async_trait]
impl Introspection for IntrospectionService {
    async fn plugins(
        &self,
        req: Request<PluginsRequest>,
    ) -> Result<Response<PluginsResponse>, Status> {
        let filter = parse_filters(&req.get_ref().filters)?;
        let plugins = plugins()
            .into_iter()
            .filter(|p| filter.matches(p))
            .collect();
        Ok(Response::new(PluginsResponse { plugins }))
    }

    async fn server(&self, _: Request<()>) -> Result<Response<ServerResponse>, Status> {
        let pidns = std::fs::metadata("/proc/self/ns/pid")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(0);
        Ok(Response::new(ServerResponse {
            uuid: self.ctx.store.server_uuid().to_string(),
            pid: u64::from(std::process::id()),
            pidns,
            deprecations: Vec::new(),
        }))
    }

    async fn plugin_info(
        &self,
        req: Request<PluginInfoRequest>,
    ) -> Result<Response<PluginInfoResponse>, Status> {
        let r = req.into_inner();
        let plugin = plugins()
            .into_iter()
            .find(|p| p.r#type == r.r#type && p.id == r.id)
            .ok_or_else(|| Status::not_found(format!("plugin {}.{} not found", r.r#type, r.id)))?;
        Ok(Response::new(PluginInfoResponse {
            plugin: Some(plugin),
            extra: None,
        }))
    }
}
