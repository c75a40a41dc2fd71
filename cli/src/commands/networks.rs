//! `networks ls|inspect|check`: the CNI network configurations berthd uses, read from its conf dir
//! (`/etc/berth/net.d` by default) until berthd lists networks over gRPC; `check` asks berthd for a CNI CHECK.
//!
//! Read-only; this module must never change a network or its files.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::output::{ListOpts, Listing};

const NOTE: &str = "\
berth reads the CNI configuration files from --conf-dir (berthd's net.d) until berthd lists
its networks over gRPC; attachments are berthd's (see the berth.io/networks container label).";

/// `networks` verbs.
#[derive(Debug, Subcommand)]
pub enum NetworksCmd {
    /// List networks (CNI conflists).
    #[command(visible_alias = "list", after_help = const_format_ls())]
    Ls {
        /// CNI configuration directory.
        #[arg(long, env = "BERTH_CNI_CONF_DIR", default_value = "/etc/berth/net.d")]
        conf_dir: PathBuf,
        #[command(flatten)]
        list: ListOpts,
    },
    /// Print a network's configuration as JSON.
    #[command(after_help = const_format_inspect())]
    Inspect {
        /// CNI configuration directory.
        #[arg(long, env = "BERTH_CNI_CONF_DIR", default_value = "/etc/berth/net.d")]
        conf_dir: PathBuf,
        /// Network name.
        name: String,
    },
    /// Run CNI CHECK on a running container's network attachments (through berthd).
    #[command(after_help = "Examples:\n  berth networks check web")]
    Check {
        /// Container id.
        id: String,
    },
}

fn const_format_ls() -> String {
    format!("Examples:\n  berth networks ls\n  berth networks ls --conf-dir ./deploy/net.d --format json\n\n{NOTE}")
}

fn const_format_inspect() -> String {
    format!("Examples:\n  berth networks inspect berth\n\n{NOTE}")
}

/// Every network in `dir`: (name, file, document), sorted by file name as CNI does.
fn load(dir: &Path) -> Result<Vec<(String, PathBuf, Value)>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(Error::Io {
                what: "read network directory",
                path: dir.into(),
                source: e,
            })
        }
    };
    files.retain(|p| {
        matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("conflist" | "conf" | "json")
        )
    });
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(Error::io("read network file", &f))?;
        let doc: Value =
            serde_json::from_str(&text).map_err(|e| Error::invalid(f.display().to_string(), e))?;
        let name = doc["name"].as_str().unwrap_or_default().to_string();
        if !name.is_empty() && !out.iter().any(|(n, _, _)| *n == name) {
            out.push((name, f, doc));
        }
    }
    Ok(out)
}

/// The plugins of a conflist (or the single plugin of a .conf).
fn plugins(doc: &Value) -> Vec<Value> {
    match doc["plugins"].as_array() {
        Some(p) => p.clone(),
        None => vec![doc.clone()],
    }
}

/// `networks check ID`: berthd runs CHECK of each of the container's attachments; prints the networks
/// that passed, or the plugin's error.
pub async fn check(ctx: &crate::commands::Ctx, cmd: NetworksCmd) -> Result<i32> {
    let NetworksCmd::Check { id } = cmd else {
        return Ok(0);
    };
    let client = ctx.client().await?;
    let checked = client
        .networks()
        .check(client.req(berth_proto::berth::NetworkCheckRequest {
            container_id: id.clone(),
        }))
        .await
        .map_err(Error::rpc("check networks"))?
        .into_inner()
        .networks;
    if checked.is_empty() {
        println!("{id}: no network attachments to check");
    }
    for n in checked {
        println!("{id}: {n}: ok");
    }
    Ok(0)
}

/// Run a `networks` verb that reads the conf dir (no daemon needed).
pub fn run(cmd: &NetworksCmd) -> Result<i32> {
    match cmd {
        NetworksCmd::Ls { conf_dir, list } => {
            let mut out = Listing::new(&["NAME", "PLUGINS", "BRIDGE", "SUBNET", "FILE"]);
            for (name, file, doc) in load(conf_dir)? {
                let ps = plugins(&doc);
                let types: Vec<String> = ps
                    .iter()
                    .filter_map(|p| p["type"].as_str().map(String::from))
                    .collect();
                let bridge = ps
                    .iter()
                    .find_map(|p| p["bridge"].as_str())
                    .unwrap_or("-")
                    .to_string();
                let subnets: Vec<String> = ps
                    .iter()
                    .flat_map(|p| {
                        let ipam = &p["ipam"];
                        let mut v: Vec<String> = ipam["ranges"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .flat_map(|r| r.as_array().into_iter().flatten())
                            .filter_map(|r| r["subnet"].as_str().map(String::from))
                            .collect();
                        if let Some(s) = ipam["subnet"].as_str() {
                            v.push(s.to_string());
                        }
                        v
                    })
                    .collect();
                out.push(
                    name.clone(),
                    vec![
                        name.clone(),
                        types.join(","),
                        bridge.clone(),
                        if subnets.is_empty() { "-".into() } else { subnets.join(",") },
                        file.display().to_string(),
                    ],
                    json!({ "name": name, "plugins": types, "bridge": bridge, "subnets": subnets, "file": file }),
                );
            }
            out.print(list);
            Ok(0)
        }
        // Needs berthd: dispatched to `check`.
        NetworksCmd::Check { .. } => Ok(0),
        NetworksCmd::Inspect { conf_dir, name } => {
            let found = load(conf_dir)?.into_iter().find(|(n, _, _)| n == name);
            match found {
                Some((_, _, doc)) => {
                    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
                    Ok(0)
                }
                None => Err(Error::Usage(format!(
                    "network {name:?} not found in {}",
                    conf_dir.display()
                ))),
            }
        }
    }
}
