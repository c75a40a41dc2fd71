//! A load client's recovery after a failed call: wait until berthd answers again, check that what it
//! acknowledged is still there, then delete whatever of the container exists, tolerating NotFound, until
//! everything is gone. Violations go to [`Shared::violation`]; this module never panics on them.

use std::time::{Duration, Instant};

use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::leases_client::LeasesClient;
use berth_proto::containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use berth_proto::containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
use berth_proto::containerd_client::services::v1::tasks_client::TasksClient;
use berth_proto::containerd_client::services::v1::{
    DeleteContainerRequest, DeleteRequest as DeleteLeaseRequest, DeleteTaskRequest,
    GetContainerRequest, GetRequest, KillRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::load::{check_exit, check_same, wait, Record, Shared, SNAPSHOTTER};
use super::rig::{answers, connect};

/// How long a client retries the cleanup of one container before it reports a violation.
const CLEANUP_BOUND: Duration = Duration::from_secs(180);

/// Ok, or NotFound (already gone): anything else is retried.
fn gone<T>(r: Result<T, Status>) -> Result<Option<T>, Status> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code() == Code::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// After a failed call: wait for berthd, check what was acknowledged, then delete what exists.
pub(super) async fn recover(sh: &Shared, rec: &mut Record) {
    let deadline = Instant::now() + CLEANUP_BOUND;
    let mut checked = false;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Err(e) = answers(&sh.addr, &sh.ns, super::rig::ANSWER_BOUND).await {
            last = format!("berthd does not answer: {e}");
            continue;
        }
        let Ok(ch) = connect(&sh.addr).await else {
            continue;
        };
        if !checked {
            match check_acked(sh, &ch, rec).await {
                Ok(()) => checked = true,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            }
        }
        match cleanup(sh, &ch, rec).await {
            Ok(()) => {
                sh.counts.add("client recoveries");
                return;
            }
            Err(e) => last = format!("{}: {}", e.code(), e.message()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sh.violation(format!(
        "{}: could not delete it within {CLEANUP_BOUND:?} after a fault: {last}",
        rec.id
    ));
}

/// Every container acknowledged as created exists (it is this client's: nobody else deletes it); so does a
/// started task until its delete was acknowledged.
async fn check_acked(sh: &Shared, ch: &Channel, rec: &Record) -> Result<(), Status> {
    if rec.container_acked && !rec.container_delete_sent {
        sh.counts.add("check acked container exists");
        let r = ContainersClient::new(ch.clone())
            .get(sh.req(GetContainerRequest { id: rec.id.clone() }))
            .await;
        match r {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => sh.violation(format!(
                "{}: acknowledged as created, never deleted, but Containers.Get says NotFound",
                rec.id
            )),
            Err(e) => return Err(e),
        }
    }
    if rec.started.is_some() && !rec.task_delete_sent {
        sh.counts.add("check acked task exists");
        let r = TasksClient::new(ch.clone())
            .get(sh.req(GetRequest {
                container_id: rec.id.clone(),
                exec_id: String::new(),
            }))
            .await;
        match r {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => sh.violation(format!(
                "{}: its start was acknowledged, its delete never sent, but Tasks.Get says NotFound",
                rec.id
            )),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Kill, wait, delete task, container, snapshot; NotFound counts as done.
async fn cleanup(sh: &Shared, ch: &Channel, rec: &mut Record) -> Result<(), Status> {
    let mut tasks = TasksClient::new(ch.clone());
    if rec.deleted.is_none() && !rec.task_gone {
        let killed = tasks
            .kill(sh.req(KillRequest {
                container_id: rec.id.clone(),
                exec_id: String::new(),
                signal: 9,
                all: true,
            }))
            .await;
        if killed.is_ok() && rec.long && rec.started.is_some() {
            // A running long init dies of this SIGKILL (if an earlier kill was not acknowledged).
            rec.expected_exit = Some(137);
        }
        match killed {
            Err(e) if !matches!(e.code(), Code::NotFound | Code::FailedPrecondition) => {
                return Err(e)
            }
            _ => {}
        }
        if let Some(status) = gone(wait(sh, ch, &rec.id, "").await)? {
            if rec.started.is_some() {
                if let Some(w) = rec.waited.filter(|w| *w != status) {
                    sh.violation(format!(
                        "{}: Tasks.Wait answered {w} and later {status}",
                        rec.id
                    ));
                }
                rec.waited = Some(status);
                check_exit(sh, rec, status, "Tasks.Wait after recovery");
            }
        }
        let deleted = gone(
            tasks
                .delete(sh.req(DeleteTaskRequest {
                    container_id: rec.id.clone(),
                }))
                .await,
        )?;
        if let Some(d) = deleted {
            let st = d.into_inner().exit_status;
            if rec.started.is_some() {
                check_same(sh, rec, st);
            }
            rec.deleted = Some(st);
        } else {
            rec.task_gone = true;
        }
    }
    if !rec.container_deleted {
        rec.container_delete_sent = true;
        gone(
            ContainersClient::new(ch.clone())
                .delete(sh.req(DeleteContainerRequest { id: rec.id.clone() }))
                .await,
        )?;
        rec.container_deleted = true;
    }
    gone(
        SnapshotsClient::new(ch.clone())
            .remove(sh.req(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: rec.id.clone(),
            }))
            .await,
    )?;
    gone(
        LeasesClient::new(ch.clone())
            .delete(sh.req(DeleteLeaseRequest {
                id: rec.id.clone(),
                sync: false,
            }))
            .await,
    )?;
    Ok(())
}
