//! `version`, `plugins ls` and `info`: what berthd is and what it runs.
//!
//! These are read-only; they must never change anything in berthd.

use clap::Subcommand;
use containerd_client::services::v1::{
    ListContainersRequest, ListImagesRequest, ListNamespacesRequest, ListTasksRequest,
    PluginsRequest,
};
use serde_json::json;

use super::Ctx;
use crate::error::{Error, Result};
use crate::output::{Format, ListOpts, Listing};

/// `plugins` verbs.
#[derive(Debug, Subcommand)]
pub enum PluginsCmd {
    /// List plugins with their status.
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  berth plugins ls\n  berth plugins ls 'type==io.containerd.snapshotter.v1'\n  berth plugins ls --format json"
    )]
    Ls {
        /// containerd filters (`type==...`, `id==...`).
        filters: Vec<String>,
        #[command(flatten)]
        list: ListOpts,
    },
}

/// `berth version`: the client's version, then berthd's (and its instance uuid).
pub async fn version(ctx: &Ctx) -> Result<i32> {
    println!("Client:");
    println!("  Version:  {}", env!("CARGO_PKG_VERSION"));
    println!("  Namespace: {}", ctx.namespace);
    let client = ctx.client().await?;
    let v = client
        .version()
        .version(client.req(()))
        .await
        .map_err(Error::rpc("version"))?
        .into_inner();
    let s = client
        .introspection()
        .server(client.req(()))
        .await
        .map_err(Error::rpc("server info"))?
        .into_inner();
    println!("Server:");
    println!("  Version:  {}", v.version);
    println!("  Revision: {}", v.revision);
    println!("  UUID:     {}", s.uuid);
    Ok(0)
}

/// `berth plugins ls`.
pub async fn plugins(ctx: &Ctx, cmd: PluginsCmd) -> Result<i32> {
    let PluginsCmd::Ls { filters, list } = cmd;
    let client = ctx.client().await?;
    let plugins = client
        .introspection()
        .plugins(client.req(PluginsRequest { filters }))
        .await
        .map_err(Error::rpc("list plugins"))?
        .into_inner()
        .plugins;
    let mut out = Listing::new(&["TYPE", "ID", "PLATFORMS", "STATUS"]);
    for p in plugins {
        let status = match &p.init_err {
            None => "ok".to_string(),
            Some(e) if e.message.contains("skip plugin") => "skip".into(),
            Some(_) => "error".into(),
        };
        let platforms: Vec<String> = p
            .platforms
            .iter()
            .map(|pl| {
                let mut s = format!("{}/{}", pl.os, pl.architecture);
                if !pl.variant.is_empty() {
                    s = format!("{s}/{}", pl.variant);
                }
                s
            })
            .collect();
        let cell = if platforms.is_empty() {
            "-".to_string()
        } else {
            platforms.join(",")
        };
        out.push(
            format!("{}.{}", p.r#type, p.id),
            vec![p.r#type.clone(), p.id.clone(), cell, status.clone()],
            json!({
                "type": p.r#type, "id": p.id, "requires": p.requires, "platforms": platforms,
                "capabilities": p.capabilities, "status": status,
                "error": p.init_err.as_ref().map(|e| e.message.clone()),
            }),
        );
    }
    out.print(&list);
    Ok(0)
}

/// `berth info`: one screen about the daemon and this namespace.
pub async fn info(ctx: &Ctx, format: Format) -> Result<i32> {
    let client = ctx.client().await?;
    let v = client
        .version()
        .version(client.req(()))
        .await
        .map_err(Error::rpc("version"))?
        .into_inner();
    let server = client
        .introspection()
        .server(client.req(()))
        .await
        .map_err(Error::rpc("server info"))?
        .into_inner();
    let plugins = client
        .introspection()
        .plugins(client.req(PluginsRequest::default()))
        .await
        .map_err(Error::rpc("list plugins"))?
        .into_inner()
        .plugins;
    let namespaces = client
        .namespaces()
        .list(client.req(ListNamespacesRequest::default()))
        .await
        .map_err(Error::rpc("list namespaces"))?
        .into_inner()
        .namespaces;
    let containers = client
        .containers()
        .list(client.req(ListContainersRequest::default()))
        .await
        .map_err(Error::rpc("list containers"))?
        .into_inner()
        .containers;
    let tasks = client
        .tasks()
        .list(client.req(ListTasksRequest::default()))
        .await
        .map_err(Error::rpc("list tasks"))?
        .into_inner()
        .tasks;
    // Images answer Unimplemented on a berthd without the image services: show that, not fail.
    let images = match client
        .images()
        .list(client.req(ListImagesRequest::default()))
        .await
    {
        Ok(r) => Some(r.into_inner().images.len()),
        Err(_) => None,
    };
    let running = tasks.iter().filter(|t| t.status == 2).count();
    let ok = plugins.iter().filter(|p| p.init_err.is_none()).count();
    let mut ns_names: Vec<String> = namespaces.into_iter().map(|n| n.name).collect();
    ns_names.sort();
    let doc = json!({
        "server": { "version": v.version, "revision": v.revision, "uuid": server.uuid, "pid": server.pid },
        "address": client.address().display().to_string(),
        "namespaces": ns_names,
        "namespace": ctx.namespace,
        "containers": containers.len(),
        "tasks": { "total": tasks.len(), "running": running },
        "images": images,
        "plugins": { "total": plugins.len(), "ok": ok },
    });
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default()),
        Format::Table => {
            println!("Server version: {} ({})", v.version, v.revision);
            println!("Server UUID:    {}", server.uuid);
            println!("Server pid:     {}", server.pid);
            println!("Address:        {}", client.address().display());
            println!(
                "Namespaces:     {}",
                if ns_names.is_empty() {
                    "-".into()
                } else {
                    ns_names.join(", ")
                }
            );
            println!("Namespace:      {}", ctx.namespace);
            println!("  Containers:   {}", containers.len());
            println!("  Tasks:        {} ({running} running)", tasks.len());
            match images {
                Some(n) => println!("  Images:       {n}"),
                None => println!("  Images:       (image service unavailable)"),
            }
            println!("Plugins:        {} ({ok} ok)", plugins.len());
        }
    }
    Ok(0)
}
