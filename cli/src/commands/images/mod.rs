//! `images pull|push|ls|rm|tag|import|export|check|mount|unmount`.
//!
//! Transfers (pull, push, import, export, tag) run in berthd through the Transfer service
//! ([`crate::transfer`]); listing, checking and mounting read the image store and content
//! store directly. `rm` removes image records only; berthd's collector frees what no longer
//! has a reference. This module must never delete content itself.

use std::path::PathBuf;

use clap::Subcommand;
use containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
use containerd_client::services::v1::{DeleteImageRequest, DeleteRequest, ListImagesRequest};
use serde_json::json;

use super::Ctx;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::image;
use crate::output::{ago, human_size, parse_labels, rfc3339, ListOpts, Listing};
use crate::transfer::{self, ImportOptions, PullOptions};

mod local;

use local::{check, mount, mount_key};

/// `images` verbs.
#[derive(Debug, Subcommand)]
pub enum ImagesCmd {
    /// Pull an image from a registry and unpack it (berthd does the transfer).
    #[command(after_help = "\
Examples:
  berth images pull docker.io/library/busybox:latest
  berth images pull busybox                         # same, Docker-style short name
  berth images pull --plain-http 127.0.0.1:5000/busybox:latest
  berth images pull --platform linux/arm64 --user me:secret registry.example/app:1")]
    Pull {
        /// Talk plain HTTP to the registry (a loopback registry without TLS).
        #[arg(long)]
        plain_http: bool,
        /// Platform to pull (`os/arch[/variant]`, repeatable; default: this host's).
        #[arg(long)]
        platform: Vec<String>,
        /// Pull every platform.
        #[arg(long)]
        all_platforms: bool,
        /// Registry credentials `user[:password]` (password from BERTH_REGISTRY_PASSWORD when omitted).
        #[arg(short, long)]
        user: Option<String>,
        /// Snapshotter to unpack into.
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// Fetch only, do not unpack.
        #[arg(long)]
        no_unpack: bool,
        /// Directory of registry host configurations (hosts.toml per host).
        #[arg(long, default_value = "")]
        hosts_dir: String,
        /// Image label `key=value` (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Image reference.
        reference: String,
    },
    /// Push a local image to a registry.
    #[command(after_help = "\
Examples:
  berth images push --plain-http 127.0.0.1:5000/busybox:latest
  berth images push --plain-http 127.0.0.1:5000/copy:1 docker.io/library/busybox:latest")]
    Push {
        /// Talk plain HTTP to the registry.
        #[arg(long)]
        plain_http: bool,
        /// Platform to push (repeatable; default: this host's).
        #[arg(long)]
        platform: Vec<String>,
        /// Registry credentials `user[:password]`.
        #[arg(short, long)]
        user: Option<String>,
        /// Remote reference.
        remote: String,
        /// Local image (default: the remote reference).
        local: Option<String>,
    },
    /// List images.
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  berth images ls\n  berth images ls --format json\n  berth i ls -q 'name~=busybox'"
    )]
    Ls {
        /// containerd filters (`name==...`, `name~=regexp`, `labels.\"k\"==v`).
        filters: Vec<String>,
        #[command(flatten)]
        list: ListOpts,
    },
    /// Remove image records (content is collected when nothing else refers to it).
    #[command(
        visible_aliases = ["remove", "delete", "del"],
        after_help = "Examples:\n  berth images rm docker.io/library/busybox:latest\n  berth images rm --sync busybox"
    )]
    Rm {
        /// Wait until the garbage collector has freed the content.
        #[arg(long)]
        sync: bool,
        /// Image references.
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Give an image another name.
    #[command(after_help = "Examples:\n  berth images tag busybox 127.0.0.1:5000/busybox:latest")]
    Tag {
        /// Existing image.
        source: String,
        /// New names.
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Import images from an OCI or docker-save archive (`-` reads stdin).
    #[command(after_help = "\
Examples:
  berth images import busybox.tar
  berth images import --base-name docker.io/library/busybox busybox-oci.tar
  skopeo copy docker://... oci-archive:/dev/stdout | berth images import -")]
    Import {
        /// Name prefix for images the archive names only by tag.
        #[arg(long)]
        base_name: Option<String>,
        /// Also create `name@digest` images.
        #[arg(long)]
        digests: bool,
        /// Keep the archive's index as an image of this name.
        #[arg(long, default_value = "")]
        index_name: String,
        /// Platform to import (default: this host's).
        #[arg(long)]
        platform: Option<String>,
        /// Import every platform.
        #[arg(long)]
        all_platforms: bool,
        /// Do not unpack.
        #[arg(long)]
        no_unpack: bool,
        /// Snapshotter to unpack into.
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// The archive.
        input: PathBuf,
    },
    /// Export images to an OCI archive (`-` writes stdout).
    #[command(
        after_help = "Examples:\n  berth images export busybox.tar docker.io/library/busybox:latest\n  berth images export - busybox | tar t"
    )]
    Export {
        /// Platform to export (repeatable; default: this host's).
        #[arg(long)]
        platform: Vec<String>,
        /// Export every platform.
        #[arg(long)]
        all_platforms: bool,
        /// Leave out Docker's manifest.json.
        #[arg(long)]
        skip_manifest_json: bool,
        /// The archive to write.
        output: PathBuf,
        /// Images.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Check that images are complete (every blob present) and unpacked.
    #[command(after_help = "Examples:\n  berth images check\n  berth images check --format json")]
    Check {
        /// Snapshotter to check for unpacked layers.
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        #[command(flatten)]
        list: ListOpts,
    },
    /// Mount an image's root filesystem at a directory (read-only unless --rw).
    #[command(
        after_help = "Examples:\n  berth images mount busybox /mnt/bb && ls /mnt/bb\n  berth images unmount /mnt/bb"
    )]
    Mount {
        /// Mount read-write (changes are kept until unmount).
        #[arg(long)]
        rw: bool,
        /// Snapshotter.
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// Image reference.
        reference: String,
        /// Target directory.
        target: PathBuf,
    },
    /// Unmount a directory mounted with `images mount` and drop its snapshot.
    #[command(after_help = "Examples:\n  berth images unmount /mnt/bb")]
    Unmount {
        /// Snapshotter.
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// Target directory.
        target: PathBuf,
    },
}

/// Run an `images` verb.
pub async fn run(ctx: &Ctx, cmd: ImagesCmd) -> Result<i32> {
    let client = ctx.client().await?;
    match cmd {
        ImagesCmd::Pull {
            plain_http,
            platform,
            all_platforms,
            user,
            snapshotter,
            no_unpack,
            hosts_dir,
            labels,
            reference,
        } => {
            let reference = crate::refs::normalize(&reference);
            let o = PullOptions {
                plain_http,
                platforms: platform,
                all_platforms,
                user,
                snapshotter,
                unpack: !no_unpack,
                labels: parse_labels(&labels),
                hosts_dir,
            };
            let start = std::time::Instant::now();
            transfer::pull(&client, &reference, &o).await?;
            let digest = image::find_image(&client, &reference)
                .await?
                .and_then(|i| i.target)
                .map(|t| t.digest)
                .unwrap_or_default();
            println!(
                "{reference} {digest} pulled in {:.1}s",
                start.elapsed().as_secs_f64()
            );
        }
        ImagesCmd::Push {
            plain_http,
            platform,
            user,
            remote,
            local,
        } => {
            let remote = crate::refs::normalize(&remote);
            let local = local.unwrap_or_else(|| remote.clone());
            let o = PullOptions {
                plain_http,
                platforms: platform,
                user,
                ..Default::default()
            };
            transfer::push(&client, &local, &remote, &o).await?;
            println!("pushed {local} to {remote}");
        }
        ImagesCmd::Ls { filters, list } => ls(&client, filters, &list).await?,
        ImagesCmd::Rm { sync, references } => {
            let mut failed = false;
            let n = references.len();
            for (i, r) in references.into_iter().enumerate() {
                let name = match image::find_image(&client, &r).await? {
                    Some(img) => img.name,
                    None => r.clone(),
                };
                let req = DeleteImageRequest {
                    name: name.clone(),
                    sync: sync && i + 1 == n,
                    target: None,
                };
                match client.images().delete(client.req(req)).await {
                    Ok(_) => println!("{name}"),
                    Err(s) => {
                        failed = true;
                        eprintln!("berth: {}", Error::rpc(format!("remove image {r}"))(s));
                    }
                }
            }
            return Ok(i32::from(failed));
        }
        ImagesCmd::Tag { source, targets } => {
            let src = image::find_image(&client, &source)
                .await?
                .map(|i| i.name)
                .unwrap_or(source);
            for t in targets {
                transfer::tag(&client, &src, &t).await?;
                println!("{t}");
            }
        }
        ImagesCmd::Import {
            base_name,
            digests,
            index_name,
            platform,
            all_platforms,
            no_unpack,
            snapshotter,
            input,
        } => {
            let o = ImportOptions {
                base_name,
                index_name,
                digests,
                platform,
                all_platforms,
                no_unpack,
                snapshotter,
            };
            let names = transfer::import(&client, &input, &o).await?;
            if names.is_empty() {
                println!("imported {}", input.display());
            }
            for n in names {
                println!("{n}");
            }
        }
        ImagesCmd::Export {
            platform,
            all_platforms,
            skip_manifest_json,
            output,
            images,
        } => {
            let mut names = Vec::new();
            for i in &images {
                names.push(match image::find_image(&client, i).await? {
                    Some(img) => img.name,
                    None => i.clone(),
                });
            }
            transfer::export(
                &client,
                &output,
                &names,
                &platform,
                all_platforms,
                skip_manifest_json,
            )
            .await?;
        }
        ImagesCmd::Check { snapshotter, list } => check(&client, &snapshotter, &list).await?,
        ImagesCmd::Mount {
            rw,
            snapshotter,
            reference,
            target,
        } => mount(&client, rw, &snapshotter, &reference, &target).await?,
        ImagesCmd::Unmount {
            snapshotter,
            target,
        } => {
            let key = mount_key(&target);
            crate::mount::unmount(&target)?;
            client
                .snapshots()
                .remove(client.req(RemoveSnapshotRequest {
                    snapshotter,
                    key: key.clone(),
                }))
                .await
                .map_err(Error::rpc(format!("remove snapshot {key}")))?;
            let _ = client
                .leases()
                .delete(client.req(DeleteRequest {
                    id: key,
                    sync: false,
                }))
                .await;
            println!("{}", target.display());
        }
    }
    Ok(0)
}

/// `images ls`: name, digest, size (manifest + config + layers), platform, age.
async fn ls(client: &Client, filters: Vec<String>, list: &ListOpts) -> Result<()> {
    let mut all = client
        .images()
        .list(client.req(ListImagesRequest { filters }))
        .await
        .map_err(Error::rpc("list images"))?
        .into_inner()
        .images;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Listing::new(&["REF", "DIGEST", "SIZE", "PLATFORM", "CREATED"]);
    for img in all {
        let target = img.target.clone().unwrap_or_default();
        let (size, platform) = if list.quiet {
            (None, String::new())
        } else {
            match image::resolve(client, img.clone()).await {
                Ok(r) => {
                    let os = r.config["os"].as_str().unwrap_or("linux").to_string();
                    let arch = r.config["architecture"].as_str().unwrap_or("").to_string();
                    (Some(r.size()), format!("{os}/{arch}"))
                }
                Err(_) => (None, "-".into()),
            }
        };
        let size_cell = size.map(human_size).unwrap_or_else(|| "-".into());
        out.push(
            img.name.clone(),
            vec![
                img.name.clone(),
                target.digest.clone(),
                size_cell,
                platform.clone(),
                ago(img.created_at.as_ref()),
            ],
            json!({
                "name": img.name, "digest": target.digest, "media_type": target.media_type,
                "size": size, "platform": platform, "labels": img.labels,
                "created_at": rfc3339(img.created_at.as_ref()),
                "updated_at": rfc3339(img.updated_at.as_ref()),
            }),
        );
    }
    out.print(list);
    Ok(())
}
