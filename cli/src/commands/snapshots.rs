//! `snapshots ls|rm|usage|info|mounts|prepare|commit|tree`.
//!
//! Snapshots made here are pinned with `containerd.io/gc.root` (berthd's collector takes
//! unreferenced snapshots otherwise); this module must never remove a snapshot it was not named.

use std::collections::{BTreeMap, HashMap};

use clap::Subcommand;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Info, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UsageRequest,
};
use containerd_client::types::Mount;
use serde_json::json;

use super::Ctx;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::output::{ago, human_size, now_ts, parse_labels, rfc3339, ListOpts, Listing};

/// `snapshots` verbs (all take `--snapshotter`).
#[derive(Debug, Subcommand)]
pub enum SnapshotsCmd {
    /// List snapshots.
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  berth snapshots ls\n  berth snapshots --snapshotter native ls"
    )]
    Ls {
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// containerd filters (`kind==active`, `parent==...`).
        filters: Vec<String>,
        #[command(flatten)]
        list: ListOpts,
    },
    /// Remove snapshots.
    #[command(visible_aliases = ["remove", "delete", "del"], after_help = "Examples:\n  berth snapshots rm my-key")]
    Rm {
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// Keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Disk usage of snapshots (all when no key is given).
    #[command(after_help = "Examples:\n  berth snapshots usage\n  berth snapshots usage my-key")]
    Usage {
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// Keys.
        keys: Vec<String>,
        #[command(flatten)]
        list: ListOpts,
    },
    /// Print a snapshot's record as JSON.
    #[command(after_help = "Examples:\n  berth snapshots info my-key")]
    Info {
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// Key.
        key: String,
    },
    /// Print the mount command for an active snapshot.
    #[command(after_help = "Examples:\n  berth snapshots mounts /mnt/x my-key | sh")]
    Mounts {
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// Where it would be mounted.
        target: String,
        /// Key.
        key: String,
    },
    /// Create an active snapshot (on a parent) and print its mount command.
    #[command(
        after_help = "Examples:\n  berth snapshots prepare --target /mnt/x my-key sha256:<chain id>"
    )]
    Prepare {
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// Print the mount command for this target.
        #[arg(long)]
        target: Option<String>,
        /// Snapshot label `key=value` (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Key.
        key: String,
        /// Parent (a committed snapshot).
        parent: Option<String>,
    },
    /// Commit an active snapshot under a name.
    #[command(after_help = "Examples:\n  berth snapshots commit my-layer my-key")]
    Commit {
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// Name of the committed snapshot.
        name: String,
        /// Active snapshot key.
        key: String,
    },
    /// Show snapshots as a tree of parents.
    #[command(after_help = "Examples:\n  berth snapshots tree")]
    Tree {
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
    },
}

/// `View` 1, `Active` 2, `Committed` 3.
fn kind_name(k: i32) -> &'static str {
    match k {
        1 => "View",
        2 => "Active",
        3 => "Committed",
        _ => "Unknown",
    }
}

async fn list_all(client: &Client, snapshotter: &str, filters: Vec<String>) -> Result<Vec<Info>> {
    let mut stream = client
        .snapshots()
        .list(client.req(ListSnapshotsRequest {
            snapshotter: snapshotter.to_string(),
            filters,
        }))
        .await
        .map_err(Error::rpc(format!("list snapshots of {snapshotter}")))?
        .into_inner();
    let mut all = Vec::new();
    while let Some(r) = stream
        .message()
        .await
        .map_err(Error::rpc(format!("list snapshots of {snapshotter}")))?
    {
        all.extend(r.info);
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

/// `mount -t TYPE SOURCE TARGET -o OPTIONS` lines.
fn mount_commands(mounts: &[Mount], target: &str) -> String {
    mounts
        .iter()
        .map(|m| {
            format!(
                "mount -t {} {} {} -o {}\n",
                m.r#type,
                m.source,
                target,
                m.options.join(",")
            )
        })
        .collect()
}

/// Run a `snapshots` verb.
pub async fn run(ctx: &Ctx, cmd: SnapshotsCmd) -> Result<i32> {
    let client = ctx.client().await?;
    let snaps = || client.snapshots();
    match cmd {
        SnapshotsCmd::Ls {
            snapshotter,
            filters,
            list,
        } => {
            let mut out = Listing::new(&["KEY", "PARENT", "KIND", "CREATED"]);
            for i in list_all(&client, &snapshotter, filters).await? {
                out.push(
                    i.name.clone(),
                    vec![
                        i.name.clone(),
                        if i.parent.is_empty() { "-".into() } else { i.parent.clone() },
                        kind_name(i.kind).into(),
                        ago(i.created_at.as_ref()),
                    ],
                    json!({ "key": i.name, "parent": i.parent, "kind": kind_name(i.kind), "labels": i.labels,
                            "created_at": rfc3339(i.created_at.as_ref()) }),
                );
            }
            out.print(&list);
        }
        SnapshotsCmd::Rm { snapshotter, keys } => {
            let mut failed = false;
            for key in keys {
                match snaps()
                    .remove(client.req(RemoveSnapshotRequest {
                        snapshotter: snapshotter.clone(),
                        key: key.clone(),
                    }))
                    .await
                {
                    Ok(_) => println!("{key}"),
                    Err(s) => {
                        failed = true;
                        eprintln!("berth: {}", Error::rpc(format!("remove snapshot {key}"))(s));
                    }
                }
            }
            return Ok(i32::from(failed));
        }
        SnapshotsCmd::Usage {
            snapshotter,
            keys,
            list,
        } => {
            let keys = if keys.is_empty() {
                list_all(&client, &snapshotter, Vec::new())
                    .await?
                    .into_iter()
                    .map(|i| i.name)
                    .collect()
            } else {
                keys
            };
            let mut out = Listing::new(&["KEY", "SIZE", "INODES"]);
            for key in keys {
                let u = snaps()
                    .usage(client.req(UsageRequest {
                        snapshotter: snapshotter.clone(),
                        key: key.clone(),
                    }))
                    .await
                    .map_err(Error::rpc(format!("usage of snapshot {key}")))?
                    .into_inner();
                out.push(
                    key.clone(),
                    vec![
                        key.clone(),
                        human_size(u.size.max(0) as u64),
                        u.inodes.to_string(),
                    ],
                    json!({ "key": key, "size": u.size, "inodes": u.inodes }),
                );
            }
            out.print(&list);
        }
        SnapshotsCmd::Info { snapshotter, key } => {
            let i = snaps()
                .stat(client.req(StatSnapshotRequest {
                    snapshotter,
                    key: key.clone(),
                }))
                .await
                .map_err(Error::rpc(format!("snapshot {key}")))?
                .into_inner()
                .info
                .unwrap_or_default();
            let doc = json!({ "Name": i.name, "Parent": i.parent, "Kind": kind_name(i.kind), "Labels": i.labels,
                              "Created": rfc3339(i.created_at.as_ref()), "Updated": rfc3339(i.updated_at.as_ref()) });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        SnapshotsCmd::Mounts {
            snapshotter,
            target,
            key,
        } => {
            let mounts = snaps()
                .mounts(client.req(MountsRequest {
                    snapshotter,
                    key: key.clone(),
                }))
                .await
                .map_err(Error::rpc(format!("mounts of snapshot {key}")))?
                .into_inner()
                .mounts;
            print!("{}", mount_commands(&mounts, &target));
        }
        SnapshotsCmd::Prepare {
            snapshotter,
            target,
            labels,
            key,
            parent,
        } => {
            let mut labels: HashMap<String, String> = parse_labels(&labels);
            labels
                .entry("containerd.io/gc.root".into())
                .or_insert_with(|| rfc3339(Some(&now_ts())));
            let mounts = snaps()
                .prepare(client.req(PrepareSnapshotRequest {
                    snapshotter,
                    key: key.clone(),
                    parent: parent.unwrap_or_default(),
                    labels,
                }))
                .await
                .map_err(Error::rpc(format!("prepare snapshot {key}")))?
                .into_inner()
                .mounts;
            match target {
                Some(t) => print!("{}", mount_commands(&mounts, &t)),
                None => println!("{key}"),
            }
        }
        SnapshotsCmd::Commit {
            snapshotter,
            name,
            key,
        } => {
            let labels = HashMap::from([(
                "containerd.io/gc.root".to_string(),
                rfc3339(Some(&now_ts())),
            )]);
            snaps()
                .commit(client.req(CommitSnapshotRequest {
                    snapshotter,
                    name: name.clone(),
                    key,
                    labels,
                }))
                .await
                .map_err(Error::rpc(format!("commit snapshot {name}")))?;
            println!("{name}");
        }
        SnapshotsCmd::Tree { snapshotter } => {
            let all = list_all(&client, &snapshotter, Vec::new()).await?;
            let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let names: Vec<String> = all.iter().map(|i| i.name.clone()).collect();
            for i in &all {
                let parent = if names.contains(&i.parent) {
                    i.parent.clone()
                } else {
                    String::new()
                };
                children.entry(parent).or_default().push(i.name.clone());
            }
            fn walk(
                node: &str,
                depth: usize,
                children: &BTreeMap<String, Vec<String>>,
                out: &mut String,
            ) {
                for c in children.get(node).into_iter().flatten() {
                    out.push_str(&format!("{}{c}\n", "  ".repeat(depth)));
                    walk(c, depth + 1, children, out);
                }
            }
            let mut text = String::new();
            walk("", 0, &children, &mut text);
            print!("{text}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_lines() {
        let m = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec!["lowerdir=/a".into(), "upperdir=/b".into()],
        };
        assert_eq!(
            mount_commands(&[m], "/mnt"),
            "mount -t overlay overlay /mnt -o lowerdir=/a,upperdir=/b\n"
        );
    }
}
