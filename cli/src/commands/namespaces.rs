//! `namespaces ls|create|rm|label`.
//!
//! Removing a namespace that does not exist is reported (not silently ignored as ctr does);
//! this module must never remove anything in a namespace.

use clap::Subcommand;
use containerd_client::services::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, GetNamespaceRequest, ListNamespacesRequest,
    Namespace, UpdateNamespaceRequest,
};
use serde_json::json;

use super::{check_identifier, Ctx};
use crate::error::{Error, Result};
use crate::output::{labels_cell, parse_labels, ListOpts, Listing};

/// `namespaces` verbs.
#[derive(Debug, Subcommand)]
pub enum NamespacesCmd {
    /// List namespaces with their labels.
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  berth namespaces ls\n  berth ns ls -q"
    )]
    Ls {
        #[command(flatten)]
        list: ListOpts,
    },
    /// Create a namespace, with optional labels.
    #[command(
        after_help = "Examples:\n  berth namespaces create dev\n  berth ns create dev team=infra"
    )]
    Create {
        /// The namespace.
        name: String,
        /// Labels, `key=value`.
        labels: Vec<String>,
    },
    /// Remove empty namespaces.
    #[command(
        visible_aliases = ["remove", "delete", "del"],
        after_help = "Examples:\n  berth namespaces rm dev\n  berth ns rm a b c"
    )]
    Rm {
        /// The namespaces.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Set (or, with an empty value, remove) labels on a namespace.
    #[command(
        after_help = "Examples:\n  berth namespaces label dev team=infra\n  berth ns label dev team="
    )]
    Label {
        /// The namespace.
        name: String,
        /// Labels, `key=value`.
        #[arg(required = true)]
        labels: Vec<String>,
    },
}

/// Run a `namespaces` verb.
pub async fn run(ctx: &Ctx, cmd: NamespacesCmd) -> Result<i32> {
    let client = ctx.client().await?;
    let mut ns = client.namespaces();
    match cmd {
        NamespacesCmd::Ls { list } => {
            let mut names = ns
                .list(client.req(ListNamespacesRequest::default()))
                .await
                .map_err(Error::rpc("list namespaces"))?
                .into_inner()
                .namespaces;
            names.sort_by(|a, b| a.name.cmp(&b.name));
            let mut out = Listing::new(&["NAME", "LABELS"]);
            for n in names {
                out.push(
                    n.name.clone(),
                    vec![n.name.clone(), labels_cell(&n.labels)],
                    json!({ "name": n.name, "labels": n.labels }),
                );
            }
            out.print(&list);
        }
        NamespacesCmd::Create { name, labels } => {
            check_identifier("namespace", &name)?;
            ns.create(client.req(CreateNamespaceRequest {
                namespace: Some(Namespace {
                    name: name.clone(),
                    labels: parse_labels(&labels),
                }),
            }))
            .await
            .map_err(Error::rpc(format!("create namespace {name}")))?;
            println!("{name}");
        }
        NamespacesCmd::Rm { names } => {
            let mut failed = false;
            for name in names {
                match ns
                    .delete(client.req(DeleteNamespaceRequest { name: name.clone() }))
                    .await
                {
                    Ok(_) => println!("{name}"),
                    Err(s) => {
                        failed = true;
                        eprintln!(
                            "berth: {}",
                            Error::rpc(format!("remove namespace {name}"))(s)
                        );
                    }
                }
            }
            return Ok(i32::from(failed));
        }
        NamespacesCmd::Label { name, labels } => {
            ns.get(client.req(GetNamespaceRequest { name: name.clone() }))
                .await
                .map_err(Error::rpc(format!("get namespace {name}")))?;
            let labels = parse_labels(&labels);
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            ns.update(client.req(UpdateNamespaceRequest {
                namespace: Some(Namespace {
                    name: name.clone(),
                    labels,
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(Error::rpc(format!("label namespace {name}")))?;
            println!("{name}");
        }
    }
    Ok(0)
}
