//! The fault suite's invariants, checked against the load's ground truth ([`Record`]s) when the clients are
//! parked (nothing in flight): nothing of a deleted container is left anywhere (API, state dir, mounts,
//! cgroups, shims, networks), and berthd's journal holds, per task, exactly one exit with the real status
//! between its start and its delete, and exactly one delete. A [`Subscriber`] reads the journal from its
//! cursor across every kill; at the end it must have seen exactly the journal, each event once.
//! This module only looks; it never removes what it finds.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::berth::journal_client::JournalClient;
use berth_proto::berth::{JournalEvent, JournalSubscribeRequest};
use berth_proto::containerd_client::events::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::leases_client::LeasesClient;
use berth_proto::containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use berth_proto::containerd_client::services::v1::snapshots::ListSnapshotsRequest;
use berth_proto::containerd_client::services::v1::tasks_client::TasksClient;
use berth_proto::containerd_client::services::v1::{
    ListContainersRequest, ListRequest, ListTasksRequest,
};
use prost::Message;
use tonic::Status;

use super::load::{Record, Shared, EXEC_PREFIX, SNAPSHOTTER};
use super::rig::{connect, Rig};
use crate::grpc::req;

/// Snapshot kind COMMITTED (containerd's `Kind`).
const COMMITTED: i32 = 3;

/// How long berthd may take to finish removing what a delete it acknowledged leaves to background work (a
/// shim exits after its Shutdown answered; a GC runs after the delete).
pub const SETTLE: Duration = Duration::from_secs(15);

/// [`leftovers_now`] until it is empty, at most [`SETTLE`]: what is still there then.
pub async fn leftovers(rig: &Rig, sh: &Shared, final_check: bool) -> Result<Vec<String>, Status> {
    sh.counts.add(if final_check {
        "check nothing left (end)"
    } else {
        "check nothing left (round)"
    });
    let deadline = Instant::now() + SETTLE;
    loop {
        let left = leftovers_now(rig, sh, final_check).await?;
        if left.is_empty() || Instant::now() >= deadline {
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything berthd should have removed once every container of the load is deleted (empty = clean).
/// `final_check` adds what only goes once the images are deleted too: leases, snapshots, blobs, ingests.
async fn leftovers_now(rig: &Rig, sh: &Shared, final_check: bool) -> Result<Vec<String>, Status> {
    let ns = rig.ns();
    let ch = connect(&rig.address()).await?;
    let mut left = Vec::new();
    let cs = ContainersClient::new(ch.clone())
        .list(req(ns, ListContainersRequest::default()))
        .await?
        .into_inner()
        .containers;
    left.extend(cs.iter().map(|c| format!("container {} (API)", c.id)));
    let ts = TasksClient::new(ch.clone())
        .list(req(ns, ListTasksRequest::default()))
        .await?
        .into_inner()
        .tasks;
    left.extend(ts.iter().map(|t| format!("task {} (API)", t.id)));
    let mut snaps = SnapshotsClient::new(ch.clone())
        .list(req(
            ns,
            ListSnapshotsRequest {
                snapshotter: SNAPSHOTTER.into(),
                filters: Vec::new(),
            },
        ))
        .await?
        .into_inner();
    while let Some(m) = snaps.message().await? {
        for i in m.info {
            if final_check || i.kind != COMMITTED {
                left.push(format!("snapshot {} kind {} (API)", i.name, i.kind));
            }
        }
    }
    if final_check {
        let leases = LeasesClient::new(ch.clone())
            .list(req(ns, ListRequest::default()))
            .await?
            .into_inner()
            .leases;
        left.extend(leases.iter().map(|l| format!("lease {} (API)", l.id)));
        for sub in [
            "content/ingest",
            "content/blobs/sha256",
            "snapshots/overlayfs",
        ] {
            for e in dir_entries(&rig.root.join(sub)) {
                left.push(format!("{sub}/{e} in the root"));
            }
        }
    }
    let state = rig.state();
    for sub in ["tasks", "runc"] {
        for e in dir_entries(&state.join(sub).join(ns)) {
            left.push(format!("{sub}/{ns}/{e} in the state dir"));
        }
    }
    for m in crate::mounts_below(rig.nf.fx.dir.path()) {
        if m != rig.root {
            left.push(format!("mount {}", m.display()));
        }
    }
    let truth = sh.truth.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for r in &truth {
        for d in crate::guard::cgroup_dirs(&format!("/{ns}/{}", r.id)) {
            left.push(format!("cgroup {}", d.display()));
        }
        if let Some(pid) = r.shim_pid {
            if crate::proc::alive(pid)
                && crate::proc::cmdline(pid).iter().any(|a| a.contains(&r.id))
            {
                left.push(format!("shim {pid} of {}", r.id));
            }
        }
    }
    left.extend(tokio::task::block_in_place(|| rig.nf.leaks()));
    Ok(left)
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A task's events in the journal, by seq.
#[derive(Debug, Default)]
struct TaskEvents {
    creates: Vec<u64>,
    starts: Vec<u64>,
    /// Init exits: (seq, status).
    exits: Vec<(u64, u32)>,
    /// Exec exits by exec id: (seq, status).
    exec_exits: BTreeMap<String, Vec<(u64, u32)>>,
    /// (seq, status).
    deletes: Vec<(u64, u32)>,
}

/// Group the task events of `events` by container id.
fn by_task(events: &[JournalEvent]) -> BTreeMap<String, TaskEvents> {
    let mut out: BTreeMap<String, TaskEvents> = BTreeMap::new();
    for e in events {
        let Some(any) = e.event.as_ref() else {
            continue;
        };
        let v = any.value.as_slice();
        match e.topic.as_str() {
            "/tasks/create" => {
                if let Ok(x) = TaskCreate::decode(v) {
                    out.entry(x.container_id).or_default().creates.push(e.seq);
                }
            }
            "/tasks/start" => {
                if let Ok(x) = TaskStart::decode(v) {
                    out.entry(x.container_id).or_default().starts.push(e.seq);
                }
            }
            "/tasks/exit" => {
                if let Ok(x) = TaskExit::decode(v) {
                    let t = out.entry(x.container_id.clone()).or_default();
                    if x.id.starts_with(EXEC_PREFIX) {
                        t.exec_exits
                            .entry(x.id)
                            .or_default()
                            .push((e.seq, x.exit_status));
                    } else {
                        t.exits.push((e.seq, x.exit_status));
                    }
                }
            }
            "/tasks/delete" => {
                if let Ok(x) = TaskDelete::decode(v) {
                    out.entry(x.container_id)
                        .or_default()
                        .deletes
                        .push((e.seq, x.exit_status));
                }
            }
            _ => {}
        }
    }
    out
}

/// The journal's task events against the records: violations (empty = the invariants hold).
pub fn task_event_violations(
    events: &[JournalEvent],
    truth: &[Record],
    sh: &Shared,
) -> Vec<String> {
    let killed = sh
        .shim_killed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let tasks = by_task(events);
    let mut bad = Vec::new();
    let known: HashSet<&str> = truth.iter().map(|r| r.id.as_str()).collect();
    for id in tasks.keys() {
        if !known.contains(id.as_str()) {
            bad.push(format!("{id}: task events for a container no client made"));
        }
    }
    let empty = TaskEvents::default();
    for r in truth {
        let t = tasks.get(&r.id).unwrap_or(&empty);
        let id = &r.id;
        sh.counts.add("check task events (once each, ordered)");
        if t.creates.len() > 1 || t.starts.len() > 1 || t.exits.len() > 1 || t.deletes.len() > 1 {
            bad.push(format!("{id}: duplicated task events {t:?}"));
            continue;
        }
        for (exec, exits) in &t.exec_exits {
            if exits.len() > 1 {
                bad.push(format!(
                    "{id}: exec {exec} exited {} times: {exits:?}",
                    exits.len()
                ));
            }
        }
        let started = r.started.is_some() || !t.starts.is_empty();
        if started && (t.starts.len() != 1 || t.exits.len() != 1 || t.deletes.len() != 1) {
            bad.push(format!(
                "{id}: a started task needs one start, one exit, one delete; journal has {t:?} (record {r:?})"
            ));
            continue;
        }
        if !t.creates.is_empty() && t.deletes.len() != 1 {
            bad.push(format!(
                "{id}: created task without exactly one delete: {t:?}"
            ));
            continue;
        }
        if let (Some(c), Some(s)) = (t.creates.first(), t.starts.first()) {
            if c > s {
                bad.push(format!("{id}: /tasks/start before /tasks/create: {t:?}"));
            }
        }
        if let (Some(s), Some((x, _)), Some((d, _))) =
            (t.starts.first(), t.exits.first(), t.deletes.first())
        {
            if !(s < x && x < d) {
                bad.push(format!("{id}: not start < exit < delete: {t:?}"));
            }
        }
        if let Some((_, status)) = t.exits.first() {
            sh.counts.add("check exit event status");
            if let Some(w) = r.waited {
                if w != *status {
                    bad.push(format!(
                        "{id}: /tasks/exit says {status}, Tasks.Wait said {w}"
                    ));
                }
            }
            if let Some(d) = r.deleted {
                if d != *status {
                    bad.push(format!(
                        "{id}: /tasks/exit says {status}, Tasks.Delete said {d}"
                    ));
                }
            }
            if let Some(exp) = r.expected_exit {
                if exp != *status && !killed.contains(id) {
                    bad.push(format!(
                        "{id}: /tasks/exit says {status}, the init exits {exp}"
                    ));
                }
            }
        }
        for (exec, code, waited) in &r.execs {
            let exits = t.exec_exits.get(exec).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(w) = waited {
                sh.counts.add("check exec exit event");
                match exits {
                    [(_, s)] if s == w => {}
                    _ if killed.contains(id) => {}
                    _ => bad.push(format!(
                        "{id}: exec {exec} (exits {code}, Wait said {w}) has exit events {exits:?}"
                    )),
                }
            }
        }
    }
    bad
}

/// A journal reader that follows berthd across kills, resubscribing from the last seq it saw.
pub struct Subscriber {
    seen: Arc<Mutex<Vec<(u64, String)>>>,
    problems: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Start reading `ns`'s events from the oldest.
    pub fn spawn(addr: &Path, ns: &str, sh: Arc<Shared>) -> Subscriber {
        let seen: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
        let problems: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, ns) = (addr.to_path_buf(), ns.to_string());
        let (seen2, problems2, stop2) = (seen.clone(), problems.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut last = 0u64;
            let mut first = true;
            while !stop2.load(Ordering::Acquire) {
                if !first {
                    sh.counts.add("subscriber resubscribed");
                }
                first = false;
                let Ok(ch) = connect(&addr).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let sub = JournalClient::new(ch)
                    .subscribe(crate::grpc::req_with(
                        &ns,
                        JournalSubscribeRequest {
                            filters: vec![format!("namespace=={ns}")],
                            after_seq: last,
                            from_oldest: last == 0,
                        },
                        None,
                    ))
                    .await;
                let mut stream = match sub {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        if e.code() == tonic::Code::OutOfRange {
                            problems2
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(format!("cursor {last} out of range: {}", e.message()));
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                while let Ok(Some(ev)) = stream.message().await {
                    if ev.seq <= last {
                        problems2
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!(
                                "seq {} {} after seq {last}: seen twice or out of order",
                                ev.seq, ev.topic
                            ));
                    }
                    last = last.max(ev.seq);
                    seen2
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((ev.seq, ev.topic));
                }
            }
        });
        Subscriber {
            seen,
            problems,
            stop,
            task,
        }
    }

    /// Wait until it has read up to `upto`, stop it, and compare with the journal's `events`: violations.
    pub async fn finish(self, events: &[JournalEvent], sh: &Shared) -> Vec<String> {
        let upto = events.iter().map(|e| e.seq).max().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        let last = || {
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last()
                .map_or(0, |e| e.0)
        };
        while last() < upto && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.store(true, Ordering::Release);
        self.task.abort();
        let mut bad = self
            .problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let seen: Vec<(u64, String)> = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e.0 <= upto)
            .cloned()
            .collect();
        let want: Vec<(u64, String)> = events.iter().map(|e| (e.seq, e.topic.clone())).collect();
        sh.counts.add_n(
            "check subscriber event (seen once, none missed)",
            want.len() as u64,
        );
        if seen != want {
            let s: HashSet<&(u64, String)> = seen.iter().collect();
            let w: HashSet<&(u64, String)> = want.iter().collect();
            let missed: Vec<_> = want.iter().filter(|e| !s.contains(e)).take(20).collect();
            let extra: Vec<_> = seen.iter().filter(|e| !w.contains(e)).take(20).collect();
            bad.push(format!(
                "the subscriber saw {} events, the journal has {}: missed {missed:?}, extra or repeated {extra:?}",
                seen.len(),
                want.len()
            ));
        }
        bad
    }
}
