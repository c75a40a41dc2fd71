//! Start-up recovery: find every task directory `<state>/tasks/<ns>/<id>/`, start a ContainerActor in rebuild mode
//! for each (they reconnect to their shims in parallel, at most `RECOVERY_PARALLELISM` at a time, replay unacked
//! events, or reap a dead shim), and return at once: berthd serves requests while the actors rebuild.
//!
//! Directories without berthd's record are leftovers of a create that never finished: they are removed.
//! Never wait here for a shim; the actors do that.

use std::fs;
use std::time::Instant;

use tokio::sync::watch;

use super::bundle;
use super::container::Init;
use super::supervisor::SpawnContainer;
use super::Tasks;

/// Scan the task directories and start one rebuilding ContainerActor per task.
pub(super) async fn recover(tasks: &Tasks) {
    let t0 = Instant::now();
    let root = tasks.shared.ctx.config.state.join("tasks");
    let found = tokio::task::spawn_blocking(move || scan(&root))
        .await
        .unwrap_or_default();
    if found.is_empty() {
        return;
    }
    if let Ok(mut s) = tasks.shared.recovery_started.lock() {
        *s = Some((t0, found.len()));
    }
    for _ in &found {
        tasks.shared.recovery_begin();
    }
    tracing::info!(tasks = found.len(), "recovering tasks");
    for (ns, id) in found {
        let (tx, _rx) = watch::channel(false);
        let sent = tasks
            .supervisor
            .send(SpawnContainer {
                ns: ns.clone(),
                id: id.clone(),
                init: Init::Rebuild,
                ready: Some(tx),
            })
            .await;
        if let Err(e) = sent {
            tracing::error!(namespace = %ns, container_id = %id, error = %e, "starting the container actor");
            tasks.shared.recovery_done();
        }
    }
}

/// (namespace, id) of every task directory with a record; removes record-less leftovers.
fn scan(root: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(namespaces) = fs::read_dir(root) else {
        return out;
    };
    for ns in namespaces.flatten() {
        let Ok(ids) = fs::read_dir(ns.path()) else {
            continue;
        };
        let ns_name = ns.file_name().to_string_lossy().into_owned();
        for id in ids.flatten() {
            let dir = id.path();
            if !dir.is_dir() {
                continue;
            }
            let id_name = id.file_name().to_string_lossy().into_owned();
            if dir.join(bundle::RECORD_FILE).exists() {
                out.push((ns_name.clone(), id_name));
            } else {
                tracing::warn!(dir = %dir.display(), "removing a task directory without a record");
                if let Err(e) = bundle::remove_task_dir(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "removing a leftover task directory");
                }
            }
        }
    }
    out
}
