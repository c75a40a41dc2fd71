//! `tasks exec`: another process in a running container, with the container's process spec
//! (user, env, capabilities, cwd) and the flags' changes, attached like `run` unless detached.
//!
//! The exec's record is deleted once it exited; this module must never touch the init process.

use std::path::PathBuf;

use containerd_client::services::v1::{DeleteProcessRequest, ExecProcessRequest};
use serde_json::{json, Value};

use crate::client::Client;
use crate::commands::exec::{self, describe, exit_code, Target};
use crate::error::{Error, Result};
use crate::stdio::Fifos;

/// Flags of `tasks exec`.
pub struct ExecOpts {
    pub tty: bool,
    pub detach: bool,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub env: Vec<String>,
    pub fifo_dir: PathBuf,
}

/// `tasks exec`: the container's process spec with these args, attached unless detached.
pub async fn exec(
    client: &Client,
    id: &str,
    exec_id: &str,
    args: Vec<String>,
    o: ExecOpts,
) -> Result<i32> {
    let c = crate::commands::containers::get(client, id).await?;
    let spec: Value = c
        .spec
        .as_ref()
        .and_then(|s| serde_json::from_slice(&s.value).ok())
        .ok_or_else(|| Error::invalid(format!("container {id}"), "its spec is not OCI JSON"))?;
    let mut process = spec["process"].clone();
    process["args"] = json!(args);
    process["terminal"] = json!(o.tty);
    match (o.tty, crate::tty::window_size()) {
        (true, Some((cols, rows))) => {
            process["consoleSize"] = json!({ "height": rows, "width": cols });
        }
        _ => {
            if let Some(p) = process.as_object_mut() {
                p.remove("consoleSize");
            }
        }
    }
    if let Some(cwd) = o.cwd {
        process["cwd"] = json!(cwd);
    }
    if let Some(u) = o.user {
        let (uid, gid) = match u.split_once(':') {
            Some((a, b)) => (a.parse::<u32>(), b.parse::<u32>()),
            None => (u.parse::<u32>(), Ok(0)),
        };
        match (uid, gid) {
            (Ok(uid), Ok(gid)) => process["user"] = json!({ "uid": uid, "gid": gid }),
            _ => {
                return Err(Error::Usage(format!(
                    "invalid --user {u:?}: give uid or uid:gid"
                )))
            }
        }
    }
    let env: Vec<String> = process["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    process["env"] = json!(crate::spec::merge_env(&[&env, &o.env]));
    let fifos = if o.detach {
        Fifos::null()
    } else {
        Fifos::create(&o.fifo_dir, exec_id, true, o.tty)?
    };
    let body = serde_json::to_vec(&process).map_err(|e| Error::invalid("process spec", e))?;
    let attached = exec::open(&fifos)?;
    let target = Target {
        container: id.to_string(),
        exec_id: exec_id.to_string(),
    };
    let added = client
        .tasks()
        .exec(client.req(ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: fifos.stdin.clone(),
            stdout: fifos.stdout.clone(),
            stderr: fifos.stderr.clone(),
            terminal: o.tty,
            spec: Some(prost_types::Any {
                type_url: berth_proto::PROCESS_TYPE_URL.into(),
                value: body,
            }),
        }))
        .await
        .map_err(Error::rpc(format!("add {}", describe(&target))));
    if let Err(e) = added {
        fifos.remove();
        return Err(e);
    }
    if o.detach {
        client
            .tasks()
            .start(client.req(containerd_client::services::v1::StartRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(Error::rpc(format!("start {}", describe(&target))))?;
        println!("{exec_id}");
        return Ok(0);
    }
    let status = exec::wait(client, &target, attached, o.tty, true).await;
    let _ = client
        .tasks()
        .delete_process(client.req(DeleteProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        }))
        .await;
    fifos.remove();
    Ok(exit_code(status?))
}
