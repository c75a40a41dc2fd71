//! The bounded load: N clients, each looping pull → snapshot → container → task → start → exec → kill →
//! wait → delete, through containerd's gRPC API, and recording what berthd acknowledged ([`Record`]).
//!
//! A call that fails (berthd killed, a failpoint, a shim killed, a full root) sends the client into recovery
//! ([`super::recover`]). Between rounds the
//! clients park with nothing in flight, so the checks see a quiet namespace. Violations go to
//! [`Shared::violations`]; this module never panics on them (the driver reports them all at once).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::containerd_client::services::v1::container::Runtime;
use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::leases_client::LeasesClient;
use berth_proto::containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use berth_proto::containerd_client::services::v1::snapshots::{
    PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use berth_proto::containerd_client::services::v1::tasks_client::TasksClient;
use berth_proto::containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateRequest as CreateLeaseRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteProcessRequest, DeleteRequest as DeleteLeaseRequest,
    DeleteTaskRequest, ExecProcessRequest, KillRequest, StartRequest, WaitRequest,
};
use berth_proto::containerd_client::types::Mount;
use tonic::transport::Channel;
use tonic::Status;

use super::recover::recover;
use super::rig::connect;
use super::{Counts, Rng};
use crate::grpc::req_with;
use crate::transfer::{PullOptions, Transfer};

/// Deadline of one call of the load (a hung berthd fails the call, not the suite).
const CALL: Duration = Duration::from_secs(60);
/// The snapshotter of the run.
pub const SNAPSHOTTER: &str = "overlayfs";
/// Exec ids of the load start with this (an init's `/tasks/exit` has the container id as its id).
pub const EXEC_PREFIX: &str = "exec-";

/// What one container went through, as its client saw berthd acknowledge it.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// The container id (also its snapshot key and cgroup `/<ns>/<id>`).
    pub id: String,
    /// Attached to the run's network.
    pub network: bool,
    /// Its init runs until killed (else it exits by itself with a known status).
    pub long: bool,
    /// Containers.Create answered OK.
    pub container_acked: bool,
    /// Containers.Delete answered OK.
    pub container_deleted: bool,
    /// Tasks.Create answered OK.
    pub task_created: bool,
    /// Tasks.Start of init answered OK, with this pid.
    pub started: Option<u32>,
    /// The init's exit status when the test knows it (137 after its own SIGKILL, K for `exit K`); `None`
    /// when its shim was killed or the init may not have run.
    pub expected_exit: Option<u32>,
    /// What Tasks.Wait of init answered.
    pub waited: Option<u32>,
    /// What Tasks.Delete answered (the exit status).
    pub deleted: Option<u32>,
    /// Tasks.Delete was sent (its answer may have been lost with berthd).
    pub task_delete_sent: bool,
    /// Containers.Delete was sent.
    pub container_delete_sent: bool,
    /// Recovery found the task already gone (NotFound).
    pub task_gone: bool,
    /// The shim's pid (from its task dir) once the task was created.
    pub shim_pid: Option<i32>,
    /// Execs: (exec id, the status it exits with, what Wait answered).
    pub execs: Vec<(String, u32, Option<u32>)>,
    /// A call of this container's cycle failed (faults hit it).
    pub faulted: bool,
}

/// What the clients and the driver share.
pub struct Shared {
    /// berthd's socket.
    pub addr: PathBuf,
    /// The run's namespace.
    pub ns: String,
    /// berthd's state dir (the task dirs hold the shims' pids).
    pub state: PathBuf,
    /// The image the load runs, and its chain id.
    pub image: String,
    /// Parent snapshot of every container.
    pub chain: String,
    /// Every finished container's record.
    pub truth: Mutex<Vec<Record>>,
    /// Operations, errors and checks.
    pub counts: Counts,
    /// Invariant violations found so far.
    pub violations: Mutex<Vec<String>>,
    /// Set by the driver: finish the current container, then park.
    pub pause: AtomicBool,
    /// Clients parked with nothing in flight.
    pub parked: AtomicUsize,
    /// Set by the driver at the end: park and return.
    pub stop: AtomicBool,
    /// Containers whose shim the driver SIGKILLed (their exit status is berthd's to choose).
    pub shim_killed: Mutex<HashSet<String>>,
    /// Containers whose init runs and whose client sends nothing but execs: the only ones whose shim the
    /// driver kills (held while it kills). Shim kills inside Tasks.Create left the runtime's container behind
    /// (fixed, `shim_killed_during_create_leaves_nothing`); widening this to Create and Delete is next.
    pub killable: Mutex<HashSet<String>>,
    /// The container the network name label asks for.
    pub network: String,
}

impl Shared {
    /// Record a violation.
    pub fn violation(&self, what: String) {
        eprintln!("fault suite: VIOLATION: {what}");
        self.violations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }

    pub(super) fn shim_was_killed(&self, id: &str) -> bool {
        self.shim_killed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    pub(super) fn req<T>(&self, msg: T) -> tonic::Request<T> {
        req_with(&self.ns, msg, Some(CALL))
    }

    /// A request under lease `lease` (the `containerd-lease` header), as containerd clients hold one from
    /// Snapshots.Prepare to Containers.Create, so that a GC in between keeps the snapshot.
    fn leased<T>(&self, lease: &str, msg: T) -> tonic::Request<T> {
        let mut r = self.req(msg);
        if let Ok(v) = lease.parse() {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }
}

/// Take `id` out of [`Shared::killable`] (waits while the driver is killing its shim).
fn not_killable(sh: &Shared, id: &str) {
    sh.killable
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
}

/// Count a finished call as `op <name>` or `error <name> <code>`.
fn counted<T>(sh: &Shared, name: &str, r: Result<T, Status>) -> Result<T, Status> {
    match &r {
        Ok(_) => sh.counts.add(format!("op {name}")),
        Err(e) => sh.counts.add(format!("error {name} {:?}", e.code())),
    }
    r
}

/// One load client: cycles until `stop`, parking whenever `pause` is set.
pub async fn client(sh: Arc<Shared>, n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut cycle = 0u64;
    loop {
        if sh.pause.load(Ordering::Acquire) || sh.stop.load(Ordering::Acquire) {
            sh.parked.fetch_add(1, Ordering::AcqRel);
            while sh.pause.load(Ordering::Acquire) && !sh.stop.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if sh.stop.load(Ordering::Acquire) {
                return;
            }
            sh.parked.fetch_sub(1, Ordering::AcqRel);
        }
        let mut rec = Record {
            id: format!("f{n}c{cycle}-{}", std::process::id()),
            network: rng.chance(40),
            ..Default::default()
        };
        let pull = cycle == 0 || rng.chance(20);
        cycle += 1;
        let res = run_cycle(&sh, &mut rng, &mut rec, pull).await;
        not_killable(&sh, &rec.id);
        if let Err(e) = res {
            rec.faulted = true;
            sh.counts.add("client cycles interrupted");
            tracing_line(&format!("client {n}: {} interrupted: {e}", rec.id));
            recover(&sh, &mut rec).await;
        } else {
            sh.counts.add("client cycles completed");
        }
        sh.truth.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
    }
}

fn tracing_line(s: &str) {
    if std::env::var_os("BERTH_FAULT_VERBOSE").is_some() {
        eprintln!("fault suite: {s}");
    }
}

async fn run_cycle(sh: &Shared, rng: &mut Rng, rec: &mut Record, pull: bool) -> Result<(), Status> {
    let ch = connect(&sh.addr).await?;
    if pull {
        let r = Transfer::new(ch.clone(), &sh.ns)
            .pull(&sh.image, &PullOptions::default())
            .await
            .map(|_| ());
        counted(sh, "pull", r)?;
    }
    let id = rec.id.clone();
    counted(
        sh,
        "lease create",
        LeasesClient::new(ch.clone())
            .create(sh.req(CreateLeaseRequest {
                id: id.clone(),
                labels: Default::default(),
            }))
            .await,
    )?;
    let mounts = counted(
        sh,
        "snapshot prepare",
        SnapshotsClient::new(ch.clone())
            .prepare(sh.leased(
                &id,
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: id.clone(),
                    parent: sh.chain.clone(),
                    labels: Default::default(),
                },
            ))
            .await,
    )?
    .into_inner()
    .mounts;
    // Half the inits live until killed (and take execs), the others exit by themselves with a known status.
    let long = rng.chance(60);
    rec.long = long;
    let code = 1 + rng.below(120) as u32;
    let script = format!("exit {code}");
    let args: Vec<&str> = if long {
        vec!["sleep", "100000"]
    } else {
        vec!["sh", "-c", &script]
    };
    create_container(sh, &ch, rec, &args).await?;
    create_task(sh, &ch, rec, mounts).await?;
    let mut tasks = TasksClient::new(ch.clone());
    let pid = counted(
        sh,
        "task start",
        tasks
            .start(sh.req(StartRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            }))
            .await,
    )?
    .into_inner()
    .pid;
    rec.started = Some(pid);
    if long {
        sh.killable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        for _ in 0..1 + rng.below(2) {
            exec(sh, &ch, rec, rng).await?;
        }
        not_killable(sh, &id);
        counted(
            sh,
            "task kill",
            tasks
                .kill(sh.req(KillRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                    signal: 9,
                    all: false,
                }))
                .await,
        )?;
        rec.expected_exit = Some(137);
    } else {
        rec.expected_exit = Some(code);
    }
    let status = wait(sh, &ch, &id, "").await?;
    rec.waited = Some(status);
    check_exit(sh, rec, status, "Tasks.Wait");
    delete_rest(sh, &ch, rec).await
}

async fn create_container(
    sh: &Shared,
    ch: &Channel,
    rec: &mut Record,
    args: &[&str],
) -> Result<(), Status> {
    let cgroup = format!("/{}/{}", sh.ns, rec.id);
    let spec = crate::bundle::default_spec(args, &cgroup);
    let mut labels = std::collections::HashMap::new();
    if rec.network {
        labels.insert(crate::net_fixture::NETWORKS.to_string(), sh.network.clone());
    }
    let container = Container {
        id: rec.id.clone(),
        image: sh.image.clone(),
        labels,
        runtime: Some(Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: berth_proto::SPEC_TYPE_URL.into(),
            value: serde_json::to_vec(&spec).unwrap_or_default(),
        }),
        snapshotter: SNAPSHOTTER.into(),
        snapshot_key: rec.id.clone(),
        ..Default::default()
    };
    counted(
        sh,
        "container create",
        ContainersClient::new(ch.clone())
            .create(sh.leased(
                &rec.id,
                CreateContainerRequest {
                    container: Some(container),
                },
            ))
            .await,
    )?;
    rec.container_acked = true;
    Ok(())
}

async fn create_task(
    sh: &Shared,
    ch: &Channel,
    rec: &mut Record,
    mounts: Vec<Mount>,
) -> Result<(), Status> {
    counted(
        sh,
        "task create",
        TasksClient::new(ch.clone())
            .create(sh.req(CreateTaskRequest {
                container_id: rec.id.clone(),
                rootfs: mounts,
                ..Default::default()
            }))
            .await,
    )?;
    rec.task_created = true;
    let pid_file = sh
        .state
        .join("tasks")
        .join(&sh.ns)
        .join(&rec.id)
        .join("shim.pid");
    rec.shim_pid = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    Ok(())
}

async fn exec(sh: &Shared, ch: &Channel, rec: &mut Record, rng: &mut Rng) -> Result<(), Status> {
    let exec_id = format!("{EXEC_PREFIX}{}", rec.execs.len());
    let code = rng.below(100) as u32;
    let process = serde_json::json!({
        "args": ["sh", "-c", format!("exit {code}")],
        "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}, "terminal": false,
    });
    let mut tasks = TasksClient::new(ch.clone());
    rec.execs.push((exec_id.clone(), code, None));
    counted(
        sh,
        "exec",
        tasks
            .exec(sh.req(ExecProcessRequest {
                container_id: rec.id.clone(),
                exec_id: exec_id.clone(),
                spec: Some(prost_types::Any {
                    type_url: berth_proto::PROCESS_TYPE_URL.into(),
                    value: serde_json::to_vec(&process).unwrap_or_default(),
                }),
                ..Default::default()
            }))
            .await,
    )?;
    counted(
        sh,
        "exec start",
        tasks
            .start(sh.req(StartRequest {
                container_id: rec.id.clone(),
                exec_id: exec_id.clone(),
            }))
            .await,
    )?;
    let status = wait(sh, ch, &rec.id, &exec_id).await?;
    if let Some(e) = rec.execs.last_mut() {
        e.2 = Some(status);
    }
    sh.counts.add("check exec exit status");
    if status != code && !sh.shim_was_killed(&rec.id) {
        sh.violation(format!(
            "{} exec {exec_id}: Wait answered {status}, the process exits {code}",
            rec.id
        ));
    }
    counted(
        sh,
        "exec delete",
        tasks
            .delete_process(sh.req(DeleteProcessRequest {
                container_id: rec.id.clone(),
                exec_id,
            }))
            .await,
    )?;
    Ok(())
}

pub(super) async fn wait(
    sh: &Shared,
    ch: &Channel,
    id: &str,
    exec_id: &str,
) -> Result<u32, Status> {
    let r = TasksClient::new(ch.clone())
        .wait(sh.req(WaitRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        }))
        .await
        .map(|r| r.into_inner().exit_status);
    counted(sh, "task wait", r)
}

/// An exit status berthd reported for init must be the one the test knows (unless its shim was killed).
pub(super) fn check_exit(sh: &Shared, rec: &Record, status: u32, what: &str) {
    let Some(expected) = rec.expected_exit else {
        return;
    };
    sh.counts.add("check init exit status");
    if status != expected && !sh.shim_was_killed(&rec.id) {
        sh.violation(format!(
            "{}: {what} answered exit status {status}, the init exits {expected}",
            rec.id
        ));
    }
}

/// Tasks.Delete, Containers.Delete, Snapshots.Remove, each required to succeed.
async fn delete_rest(sh: &Shared, ch: &Channel, rec: &mut Record) -> Result<(), Status> {
    rec.task_delete_sent = true;
    let st = counted(
        sh,
        "task delete",
        TasksClient::new(ch.clone())
            .delete(sh.req(DeleteTaskRequest {
                container_id: rec.id.clone(),
            }))
            .await,
    )?
    .into_inner()
    .exit_status;
    rec.deleted = Some(st);
    check_same(sh, rec, st);
    rec.container_delete_sent = true;
    counted(
        sh,
        "container delete",
        ContainersClient::new(ch.clone())
            .delete(sh.req(DeleteContainerRequest { id: rec.id.clone() }))
            .await,
    )?;
    rec.container_deleted = true;
    counted(
        sh,
        "snapshot remove",
        SnapshotsClient::new(ch.clone())
            .remove(sh.req(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: rec.id.clone(),
            }))
            .await,
    )?;
    counted(
        sh,
        "lease delete",
        LeasesClient::new(ch.clone())
            .delete(sh.req(DeleteLeaseRequest {
                id: rec.id.clone(),
                sync: false,
            }))
            .await,
    )?;
    Ok(())
}

/// Tasks.Delete's exit status must be what Wait answered.
pub(super) fn check_same(sh: &Shared, rec: &Record, deleted: u32) {
    if let Some(w) = rec.waited {
        sh.counts.add("check delete status = wait status");
        if w != deleted {
            sh.violation(format!(
                "{}: Tasks.Wait answered {w}, Tasks.Delete {deleted}",
                rec.id
            ));
        }
    }
    check_exit(sh, rec, deleted, "Tasks.Delete");
}
