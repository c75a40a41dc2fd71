//! `leases ls|create|rm`: leases keep content and snapshots from the garbage collector while a
//! client works with them.
//!
//! This module must never delete a lease it was not named.

use std::time::Duration;

use clap::Subcommand;
use containerd_client::services::v1::{CreateRequest, DeleteRequest, ListRequest};
use serde_json::json;

use super::Ctx;
use crate::error::{Error, Result};
use crate::output::{ago, labels_cell, parse_labels, rfc3339, ListOpts, Listing};

/// `leases` verbs.
#[derive(Debug, Subcommand)]
pub enum LeasesCmd {
    /// List leases.
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  berth leases ls\n  berth leases ls 'id==build-1' --format json"
    )]
    Ls {
        /// containerd filters (`id==...`, `labels.\"k\"==v`).
        filters: Vec<String>,
        #[command(flatten)]
        list: ListOpts,
    },
    /// Create a lease and print its id.
    #[command(
        after_help = "Examples:\n  berth leases create\n  berth leases create --id build-1 --expires-in 1h team=ci"
    )]
    Create {
        /// The lease id (berthd makes one when empty).
        #[arg(long, default_value = "")]
        id: String,
        /// Let the lease expire after this long (e.g. 30m, 24h); never when unset.
        #[arg(long, value_parser = crate::cli::parse_duration)]
        expires_in: Option<Duration>,
        /// Labels, `key=value`.
        labels: Vec<String>,
    },
    /// Remove leases (what they held becomes collectable).
    #[command(
        visible_aliases = ["remove", "delete", "del"],
        after_help = "Examples:\n  berth leases rm build-1\n  berth leases rm --sync build-1"
    )]
    Rm {
        /// Wait until the garbage collector has run.
        #[arg(long)]
        sync: bool,
        /// The lease ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// Run a `leases` verb.
pub async fn run(ctx: &Ctx, cmd: LeasesCmd) -> Result<i32> {
    let client = ctx.client().await?;
    let mut leases = client.leases();
    match cmd {
        LeasesCmd::Ls { filters, list } => {
            let mut all = leases
                .list(client.req(ListRequest { filters }))
                .await
                .map_err(Error::rpc("list leases"))?
                .into_inner()
                .leases;
            all.sort_by(|a, b| a.id.cmp(&b.id));
            let mut out = Listing::new(&["ID", "CREATED", "LABELS"]);
            for l in all {
                out.push(
                    l.id.clone(),
                    vec![l.id.clone(), ago(l.created_at.as_ref()), labels_cell(&l.labels)],
                    json!({ "id": l.id, "created_at": rfc3339(l.created_at.as_ref()), "labels": l.labels }),
                );
            }
            out.print(&list);
        }
        LeasesCmd::Create {
            id,
            expires_in,
            labels,
        } => {
            let mut labels = parse_labels(&labels);
            if let Some(d) = expires_in {
                labels.insert("containerd.io/gc.expire".into(), expiry(d));
            }
            let lease = leases
                .create(client.req(CreateRequest { id, labels }))
                .await
                .map_err(Error::rpc("create lease"))?
                .into_inner()
                .lease
                .unwrap_or_default();
            println!("{}", lease.id);
        }
        LeasesCmd::Rm { sync, ids } => {
            let mut failed = false;
            let n = ids.len();
            for (i, id) in ids.into_iter().enumerate() {
                let req = DeleteRequest {
                    id: id.clone(),
                    sync: sync && i + 1 == n,
                };
                match leases.delete(client.req(req)).await {
                    Ok(_) => println!("{id}"),
                    Err(s) => {
                        failed = true;
                        eprintln!("berth: {}", Error::rpc(format!("remove lease {id}"))(s));
                    }
                }
            }
            return Ok(i32::from(failed));
        }
    }
    Ok(0)
}

/// `containerd.io/gc.expire` value `d` from now (RFC 3339, UTC, seconds).
pub fn expiry(d: Duration) -> String {
    let mut t = crate::output::now_ts();
    t.seconds += d.as_secs() as i64;
    t.nanos = 0;
    let s = rfc3339(Some(&t));
    // Drop the fractional part: `2026-01-01T00:00:00Z`.
    match s.split_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => s,
    }
}
