//! `content ls|get|rm|fetch|ingest`: the blobs in berthd's content store.
//!
//! `ingest` writes stdin as one blob with the Content.Write protocol (stat, write, commit with
//! the expected digest); `fetch` downloads an image's blobs through the Transfer service
//! without unpacking. This module must never remove a blob it was not named.

use std::collections::HashMap;

use clap::Subcommand;
use containerd_client::services::v1::{
    DeleteContentRequest, ListContentRequest, WriteContentRequest,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;

use super::Ctx;
use crate::error::{Error, Result};
use crate::output::{ago, human_size, labels_cell, parse_labels, rfc3339, ListOpts, Listing};

/// `content` verbs.
#[derive(Debug, Subcommand)]
pub enum ContentCmd {
    /// List blobs.
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  berth content ls\n  berth content ls -q\n  berth content ls --format json"
    )]
    Ls {
        /// containerd filters (`digest==...`, `labels.\"k\"==v`).
        filters: Vec<String>,
        #[command(flatten)]
        list: ListOpts,
    },
    /// Write a blob to stdout.
    #[command(after_help = "Examples:\n  berth content get sha256:0123... | jq .")]
    Get {
        /// Digest.
        digest: String,
    },
    /// Remove blobs.
    #[command(
        visible_aliases = ["remove", "delete", "del"],
        after_help = "Examples:\n  berth content rm sha256:0123..."
    )]
    Rm {
        /// Digests.
        #[arg(required = true)]
        digests: Vec<String>,
    },
    /// Download an image's blobs without unpacking them.
    #[command(
        after_help = "Examples:\n  berth content fetch --plain-http 127.0.0.1:5000/busybox:latest"
    )]
    Fetch {
        /// Talk plain HTTP to the registry.
        #[arg(long)]
        plain_http: bool,
        /// Platform (repeatable; default: this host's).
        #[arg(long)]
        platform: Vec<String>,
        /// Every platform.
        #[arg(long)]
        all_platforms: bool,
        /// Registry credentials `user[:password]`.
        #[arg(short, long)]
        user: Option<String>,
        /// Image reference.
        reference: String,
    },
    /// Store stdin as a blob; the digest and size must match.
    #[command(
        after_help = "Examples:\n  berth content ingest --expected-digest sha256:0123... --label containerd.io/gc.root=1 my-ref < blob"
    )]
    Ingest {
        /// The digest the data must have.
        #[arg(long)]
        expected_digest: String,
        /// The size the data must have (checked when given).
        #[arg(long)]
        expected_size: Option<i64>,
        /// Blob label `key=value` (repeatable; `containerd.io/gc.root=...` keeps it from collection).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Ingest reference (resumable name of the write).
        reference: String,
    },
}

/// Run a `content` verb.
pub async fn run(ctx: &Ctx, cmd: ContentCmd) -> Result<i32> {
    let client = ctx.client().await?;
    match cmd {
        ContentCmd::Ls { filters, list } => {
            let mut stream = client
                .content()
                .list(client.req(ListContentRequest { filters }))
                .await
                .map_err(Error::rpc("list content"))?
                .into_inner();
            let mut all = Vec::new();
            while let Some(r) = stream.message().await.map_err(Error::rpc("list content"))? {
                all.extend(r.info);
            }
            all.sort_by(|a, b| a.digest.cmp(&b.digest));
            let mut out = Listing::new(&["DIGEST", "SIZE", "AGE", "LABELS"]);
            for i in all {
                out.push(
                    i.digest.clone(),
                    vec![
                        i.digest.clone(),
                        human_size(i.size.max(0) as u64),
                        ago(i.created_at.as_ref()),
                        labels_cell(&i.labels),
                    ],
                    json!({ "digest": i.digest, "size": i.size, "labels": i.labels,
                            "created_at": rfc3339(i.created_at.as_ref()) }),
                );
            }
            out.print(&list);
        }
        ContentCmd::Get { digest } => {
            let data = crate::image::read_blob(&client, &digest).await?;
            let mut out = tokio::io::stdout();
            out.write_all(&data)
                .await
                .map_err(Error::io("write", "stdout"))?;
            out.flush().await.map_err(Error::io("write", "stdout"))?;
        }
        ContentCmd::Rm { digests } => {
            let mut failed = false;
            for d in digests {
                match client
                    .content()
                    .delete(client.req(DeleteContentRequest { digest: d.clone() }))
                    .await
                {
                    Ok(_) => println!("{d}"),
                    Err(s) => {
                        failed = true;
                        eprintln!("berth: {}", Error::rpc(format!("remove blob {d}"))(s));
                    }
                }
            }
            return Ok(i32::from(failed));
        }
        ContentCmd::Fetch {
            plain_http,
            platform,
            all_platforms,
            user,
            reference,
        } => {
            let reference = crate::refs::normalize(&reference);
            let o = crate::transfer::PullOptions {
                plain_http,
                platforms: platform,
                all_platforms,
                user,
                unpack: false,
                ..Default::default()
            };
            crate::transfer::pull(&client, &reference, &o).await?;
            println!("{reference}");
        }
        ContentCmd::Ingest {
            expected_digest,
            expected_size,
            labels,
            reference,
        } => {
            let mut data = Vec::new();
            tokio::io::stdin()
                .read_to_end(&mut data)
                .await
                .map_err(Error::io("read", "stdin"))?;
            if let Some(size) = expected_size {
                if size != data.len() as i64 {
                    return Err(Error::Usage(format!(
                        "stdin has {} bytes, --expected-size says {size}",
                        data.len()
                    )));
                }
            }
            let digest = ingest(
                &client,
                &reference,
                &expected_digest,
                data,
                parse_labels(&labels),
            )
            .await?;
            println!("{digest}");
        }
    }
    Ok(0)
}

/// Content.Write: STAT (0), WRITE (1), COMMIT (2).
async fn ingest(
    client: &crate::client::Client,
    reference: &str,
    expected: &str,
    data: Vec<u8>,
    labels: HashMap<String, String>,
) -> Result<String> {
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(8);
    let total = data.len() as i64;
    let base = WriteContentRequest {
        r#ref: reference.to_string(),
        total,
        expected: expected.to_string(),
        ..Default::default()
    };
    let feeder = {
        let base = base.clone();
        tokio::spawn(async move {
            let _ = tx
                .send(WriteContentRequest {
                    action: 0,
                    ..base.clone()
                })
                .await;
            let mut offset = 0usize;
            for chunk in data.chunks(1 << 20) {
                let msg = WriteContentRequest {
                    action: 1,
                    offset: offset as i64,
                    data: chunk.to_vec(),
                    ..base.clone()
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
                offset += chunk.len();
            }
            let _ = tx
                .send(WriteContentRequest {
                    action: 2,
                    offset: offset as i64,
                    labels,
                    ..base
                })
                .await;
        })
    };
    let what = format!("ingest {reference}");
    let mut resp = match client
        .content()
        .write(client.stream_req(ReceiverStream::new(rx)))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(expected.to_string()),
        Err(s) => return Err(Error::rpc(what)(s)),
    };
    let mut digest = String::new();
    loop {
        match resp.message().await {
            Ok(Some(m)) => {
                if m.action == 2 {
                    digest = m.digest;
                }
            }
            Ok(None) => break,
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                digest = expected.to_string();
                break;
            }
            Err(s) => return Err(Error::rpc(what)(s)),
        }
    }
    feeder.abort();
    Ok(if digest.is_empty() {
        expected.to_string()
    } else {
        digest
    })
}
