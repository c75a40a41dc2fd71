//! Tasks.Delete. Exactly one `/tasks/delete` per task on every path: the shim journals its TaskDeleted before
//! its Delete RPC returns; berthd waits (bounded) for its pump to journal it, then replays whatever the shim
//! still holds on disk (a slow pump, a shim that died), and finally journals its own TaskDelete, which the
//! journal drops when the task already has one (`events::Once`). A berthd that dies in the middle finishes the
//! delete when it rebuilds the task (`rebuild.rs`), through the same [`finish`]. The task's network is torn down
//! once its init has exited (beside the runtime's delete, the journal's work, the shim's shutdown and the task
//! directory's removal; after the runtime's delete, and before the directory goes, for a task that never ran or
//! whose shim is gone) ([`teardown_network`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use berth_proto::containerd_client::services::v1::DeleteResponse;
use berth_proto::containerd_client::types::v1::Status as ProcStatus;
use berth_proto::shim;

use super::messages::Delete;
use super::shim_events::{replay_shim_journal, synthesize};
use super::{ContainerActor, Phase, Reply};
use crate::events::Once;
use crate::tasks::bundle;
use crate::tasks::error::TaskError;
use crate::tasks::events::{delete_event, exit_event};
use crate::tasks::state::ExitInfo;
use crate::tasks::{task_key, Shared};

/// How long Delete waits for the shim's own TaskDeleted to come through its event stream.
const DELETE_EVENT_WAIT: Duration = Duration::from_secs(2);

impl Handler<Delete> for ContainerActor {
    type Result = Reply<DeleteResponse>;

    fn handle(&mut self, _: Delete, _: &mut Self::Context) -> Reply<DeleteResponse> {
        self.verb(
            "delete",
            true,
            |act| {
                act.require_task()?;
                let status = act.task.init.status;
                if act.phase == Phase::Live
                    && !matches!(status, ProcStatus::Stopped | ProcStatus::Created)
                {
                    return Err(TaskError::FailedPrecondition(format!(
                        "task {:?} must be stopped before deletion: it is {}",
                        act.id,
                        status.as_str_name()
                    )));
                }
                let client = act.client().ok();
                let known = act.task.init.exit;
                let pid = act.task.init.pid;
                let mut seen = act.deleted_seen.subscribe();
                let mut gone = act.shim_gone.subscribe();
                let (shared, ns, id, dir) = (
                    act.shared.clone(),
                    act.ns.clone(),
                    act.id.clone(),
                    act.dir.clone(),
                );
                let release = act.release();
                let network = act.record.network;
                Ok(async move {
                    let mut exit = known.unwrap_or_else(|| ExitInfo::new(pid, 0, None));
                    let net = async {
                        if network {
                            teardown_network(&shared, &ns, &id).await;
                            tracing::debug!(phase = "network down", "delete");
                        }
                    };
                    if let Some(mut c) = client {
                        let shim_part = async {
                            let r = c
                                .delete(shim::DeleteRequest {
                                    exec_id: String::new(),
                                })
                                .await
                                .map_err(TaskError::Shim)?
                                .into_inner();
                            let exit = ExitInfo::new(r.pid, r.exit_status, r.exited_at.as_ref());
                            tracing::debug!(phase = "shim deleted", "delete");
                            crate::failpoint::hit("container_actor.delete.after_shim_delete");
                            let waited = tokio::time::timeout(DELETE_EVENT_WAIT, async {
                                tokio::select! {
                                    _ = seen.wait_for(|s| *s) => {}
                                    _ = gone.wait_for(|g| *g) => {}
                                }
                            })
                            .await;
                            if waited.is_err() {
                                tracing::warn!(
                                    "the shim's TaskDeleted did not come through in time"
                                );
                            }
                            finish(&shared, &ns, &id, &dir, exit).await?;
                            tracing::debug!(phase = "journalled", "delete");
                            let _ = c.shutdown(shim::ShutdownRequest { now: false }).await;
                            Ok::<ExitInfo, TaskError>(exit)
                        };
                        if known.is_some() {
                            // The init has exited, and with it the container (its PID namespace, or the pod's
                            // processes the CRI layer waited for): its network's DELs (plugins, tens of ms)
                            // run beside the runtime's delete, the journal, the shim's shutdown and the task
                            // directory's removal (the network keeps nothing there it needs to come down).
                            let rest = async {
                                let exit = shim_part.await?;
                                remove_dir_retrying(dir.clone()).await?;
                                Ok::<ExitInfo, TaskError>(exit)
                            };
                            let ((), deleted) = tokio::join!(net, rest);
                            exit = deleted?;
                        } else {
                            // A created task's init is only killed by the runtime's delete.
                            exit = shim_part.await?;
                            net.await;
                            remove_dir_retrying(dir.clone()).await?;
                        }
                    } else {
                        finish(&shared, &ns, &id, &dir, exit).await?;
                        net.await;
                        remove_dir_retrying(dir.clone()).await?;
                    }
                    let _ = shared.ctx.events.forget_task(&task_key(&ns, &id)).await;
                    release.await;
                    Ok(exit)
                })
            },
            |act, ctx, exit: ExitInfo| {
                act.shared.waiters.remove_task(&act.ns, &act.id);
                act.terminate(ctx);
                Ok(DeleteResponse {
                    id: act.id.clone(),
                    pid: exit.pid,
                    exit_status: exit.status,
                    exited_at: Some(exit.timestamp()),
                })
            },
        )
    }
}

/// Journal the end of a deleted task: what the shim still holds on disk (each event once), then the init's
/// exit and the delete, each dropped by the journal if the task already has one.
pub(super) async fn finish(
    shared: &Arc<Shared>,
    ns: &str,
    id: &str,
    dir: &std::path::Path,
    exit: ExitInfo,
) -> Result<(), TaskError> {
    replay_shim_journal(shared, ns, id, dir).await?;
    synthesize(
        shared,
        ns,
        id,
        "/tasks/exit",
        exit_event(id, id, &exit),
        Once::InitExit,
    )
    .await?;
    synthesize(
        shared,
        ns,
        id,
        "/tasks/delete",
        delete_event(id, &exit),
        Once::Delete,
    )
    .await
}

/// Tear the task's network down: its names, DEL of its attachments, its netns, its records. Call once its
/// processes are gone. A failure does not fail the caller (the task is gone either way): it is logged, the
/// failed attachments stay recorded, and the next berthd start DELs them.
pub(super) async fn teardown_network(shared: &Shared, ns: &str, id: &str) {
    let owner = crate::network::Owner::task(ns, id);
    if let Err(e) = shared.networks.teardown(&owner).await {
        tracing::error!(error = %e, "tearing down the task's network failed; the next berthd start retries");
    }
}

/// Remove the task directory, retrying while the shim's last writes or a lazy unmount settle.
pub(super) async fn remove_dir_retrying(dir: PathBuf) -> Result<(), TaskError> {
    let mut last = Ok(());
    for _ in 0..10 {
        let d = dir.clone();
        last = tokio::task::spawn_blocking(move || bundle::remove_task_dir(&d))
            .await
            .unwrap_or_else(|e| Err(TaskError::ActorFailed(e.to_string())));
        if last.is_ok() {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}
