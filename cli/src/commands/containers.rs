//! `containers create|ls|info|rm|label`.
//!
//! `rm` deletes a stopped task first and the container's snapshot with it, and refuses a
//! running one unless `--force`; it must never remove a snapshot another container uses
//! (it only removes the record's own snapshot key).

use std::time::Duration;

use clap::Subcommand;
use containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
use containerd_client::services::v1::{
    Container, DeleteContainerRequest, DeleteTaskRequest, GetContainerRequest, GetRequest,
    KillRequest, ListContainersRequest, UpdateContainerRequest, WaitRequest,
};
use serde_json::{json, Value};

use super::create::ContainerFlags;
use super::Ctx;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::output::{ago, labels_cell, parse_labels, rfc3339, ListOpts, Listing};

/// `containers` verbs.
#[derive(Debug, Subcommand)]
pub enum ContainersCmd {
    /// Create a container from an image without starting it (start it with `tasks start`).
    #[command(
        trailing_var_arg = true,
        after_help = "Examples:\n  berth containers create busybox web httpd -f -p 8080\n  berth tasks start -d web"
    )]
    Create {
        #[command(flatten)]
        container: Box<ContainerFlags>,
        /// Image reference.
        image: String,
        /// Container id.
        id: String,
        /// Command and arguments (default: the image's).
        #[arg(allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List containers.
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  berth containers ls\n  berth c ls 'image==docker.io/library/busybox:latest'\n  berth c ls -q"
    )]
    Ls {
        /// containerd filters (`id==web`, `image~=busybox`, `labels.\"k\"==v`).
        filters: Vec<String>,
        #[command(flatten)]
        list: ListOpts,
    },
    /// Print a container's record (spec decoded) as JSON.
    #[command(
        after_help = "Examples:\n  berth containers info web\n  berth c info web | jq .Spec.process"
    )]
    Info {
        /// Container id.
        id: String,
    },
    /// Remove containers (a stopped task and the snapshot go with them).
    #[command(
        visible_aliases = ["remove", "delete", "del"],
        after_help = "Examples:\n  berth containers rm web\n  berth c rm -f web db"
    )]
    Rm {
        /// Kill a running task first.
        #[arg(short, long)]
        force: bool,
        /// Container ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Set (or, with an empty value, remove) labels on a container.
    #[command(
        after_help = "Examples:\n  berth containers label web tier=front\n  berth c label web tier="
    )]
    Label {
        /// Container id.
        id: String,
        /// Labels, `key=value`.
        #[arg(required = true)]
        labels: Vec<String>,
    },
}

/// Run a `containers` verb.
pub async fn run(ctx: &Ctx, cmd: ContainersCmd) -> Result<i32> {
    match cmd {
        ContainersCmd::Create {
            container,
            image,
            id,
            args,
        } => {
            let prepared = container.prepare(&ctx.namespace, &id, &args)?;
            let client = ctx.client().await?;
            let img = super::create::image_for_run(
                ctx,
                &client,
                &image,
                container.pull,
                container.plain_http,
            )
            .await?;
            let (_, lease) = super::create::create_container(&client, &img, &id, prepared).await?;
            let _ = lease.await;
            println!("{id}");
            Ok(0)
        }
        ContainersCmd::Ls { filters, list } => {
            let client = ctx.client().await?;
            let mut all = client
                .containers()
                .list(client.req(ListContainersRequest { filters }))
                .await
                .map_err(Error::rpc("list containers"))?
                .into_inner()
                .containers;
            all.sort_by(|a, b| a.id.cmp(&b.id));
            let mut out = Listing::new(&["ID", "IMAGE", "RUNTIME", "CREATED", "LABELS"]);
            for c in all {
                let runtime = c
                    .runtime
                    .as_ref()
                    .map(|r| r.name.clone())
                    .unwrap_or_default();
                let image = if c.image.is_empty() {
                    "-".to_string()
                } else {
                    c.image.clone()
                };
                out.push(
                    c.id.clone(),
                    vec![
                        c.id.clone(),
                        image,
                        runtime.clone(),
                        ago(c.created_at.as_ref()),
                        labels_cell(&c.labels),
                    ],
                    json!({
                        "id": c.id, "image": c.image, "runtime": runtime, "labels": c.labels,
                        "snapshotter": c.snapshotter, "snapshot_key": c.snapshot_key,
                        "created_at": rfc3339(c.created_at.as_ref()),
                    }),
                );
            }
            out.print(&list);
            Ok(0)
        }
        ContainersCmd::Info { id } => {
            let client = ctx.client().await?;
            let c = get(&client, &id).await?;
            let doc = info_json(&c);
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            Ok(0)
        }
        ContainersCmd::Rm { force, ids } => {
            let client = ctx.client().await?;
            let mut failed = false;
            for id in ids {
                match remove(&client, &id, force).await {
                    Ok(()) => println!("{id}"),
                    Err(e) => {
                        failed = true;
                        eprintln!("berth: {e}");
                    }
                }
            }
            Ok(i32::from(failed))
        }
        ContainersCmd::Label { id, labels } => {
            let client = ctx.client().await?;
            get(&client, &id).await?;
            let labels = parse_labels(&labels);
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            client
                .containers()
                .update(client.req(UpdateContainerRequest {
                    container: Some(Container {
                        id: id.clone(),
                        labels,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                }))
                .await
                .map_err(Error::rpc(format!("label container {id}")))?;
            println!("{id}");
            Ok(0)
        }
    }
}

/// The container record `id`.
pub async fn get(client: &Client, id: &str) -> Result<Container> {
    client
        .containers()
        .get(client.req(GetContainerRequest { id: id.to_string() }))
        .await
        .map_err(Error::rpc(format!("container {id}")))?
        .into_inner()
        .container
        .ok_or_else(|| Error::invalid(format!("container {id}"), "berthd sent no record"))
}

/// A container record as JSON, its spec decoded.
fn info_json(c: &Container) -> Value {
    let spec: Value = c
        .spec
        .as_ref()
        .and_then(|s| serde_json::from_slice(&s.value).ok())
        .unwrap_or(Value::Null);
    json!({
        "ID": c.id,
        "Labels": c.labels,
        "Image": c.image,
        "Runtime": { "Name": c.runtime.as_ref().map(|r| r.name.clone()).unwrap_or_default() },
        "SnapshotKey": c.snapshot_key,
        "Snapshotter": c.snapshotter,
        "CreatedAt": rfc3339(c.created_at.as_ref()),
        "UpdatedAt": rfc3339(c.updated_at.as_ref()),
        "Spec": spec,
    })
}

/// Remove container `id`: its task (killed first with `force`), its snapshot, its record, and
/// the FIFOs berth made for it.
pub async fn remove(client: &Client, id: &str, force: bool) -> Result<()> {
    let c = get(client, id).await?;
    let task = client
        .tasks()
        .get(client.req(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        }))
        .await;
    match task {
        Ok(r) => {
            let p = r.into_inner().process.unwrap_or_default();
            // 2 RUNNING, 4 PAUSED, 5 PAUSING.
            if matches!(p.status, 2 | 4 | 5) {
                if !force {
                    return Err(Error::Usage(format!(
                        "container {id} is running: stop it first (`berth tasks kill {id}`) or use --force"
                    )));
                }
                kill_and_wait(client, id).await?;
            }
            client
                .tasks()
                .delete(client.req(DeleteTaskRequest {
                    container_id: id.to_string(),
                }))
                .await
                .map_err(Error::rpc(format!("delete the task of {id}")))?;
            crate::stdio::remove_paths(&[&p.stdin, &p.stdout, &p.stderr]);
        }
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => return Err(Error::rpc(format!("get the task of {id}"))(s)),
    }
    remove_record(client, id, &c.snapshotter, &c.snapshot_key).await
}

/// Remove the snapshot `key` and the record of container `id` (its task is gone already).
pub async fn remove_record(client: &Client, id: &str, snapshotter: &str, key: &str) -> Result<()> {
    // The snapshot and the record go together (ctr removes the snapshot first; berthd needs
    // no order, and doing both at once saves a metadata commit's wait).
    let snapshot = async {
        if key.is_empty() {
            return Ok(());
        }
        match client
            .snapshots()
            .remove(client.req(RemoveSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(Error::rpc(format!("remove the snapshot of {id}"))(s)),
        }
    };
    let record = async {
        client
            .containers()
            .delete(client.req(DeleteContainerRequest { id: id.to_string() }))
            .await
            .map_err(Error::rpc(format!("delete container {id}")))
    };
    let (snapshot, record) = tokio::join!(snapshot, record);
    record?;
    snapshot?;
    Ok(())
}

/// SIGKILL every process of the task and wait for its exit (bounded).
pub async fn kill_and_wait(client: &Client, id: &str) -> Result<()> {
    let c = client.clone();
    let cid = id.to_string();
    let wait = tokio::spawn(async move {
        c.tasks()
            .wait(c.stream_req(WaitRequest {
                container_id: cid,
                exec_id: String::new(),
            }))
            .await
    });
    client
        .tasks()
        .kill(client.req(KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal: libc::SIGKILL as u32,
            all: true,
        }))
        .await
        .map_err(Error::rpc(format!("kill container {id}")))?;
    let _ = tokio::time::timeout(Duration::from_secs(30), wait).await;
    Ok(())
}
