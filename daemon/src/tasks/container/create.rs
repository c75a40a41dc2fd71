//! Tasks.Create as one flow of the task's own actor: read and validate the container (its network labels
//! too), prepare its network when it asks for one (config, netns), write the bundle (with the netns path and
//! the hosts/resolv.conf/hostname bind mounts) and berthd's record, start and connect the shim and have it
//! create the container while the network's ADDs run beside that, publish the network files, record that it
//! exists. Any failure undoes what
//! this flow did (shim stopped, task dir removed, network torn down, the task's journal keys forgotten) and
//! frees the id before the client hears the error. Nothing is written before the request is known valid.

use std::time::{Duration, Instant};

use actix::prelude::*;
use berth_proto::containerd_client::services::v1::CreateTaskRequest;
use berth_proto::shim as shimpb;

use super::messages::CreateTask;
use super::{ContainerActor, Phase, Reply};
use crate::network::{Owner, Plan, Setup};
use crate::tasks::bundle::{self, TaskRecord};
use crate::tasks::error::TaskError;
use crate::tasks::shim::{self, ShimClient};
use crate::tasks::state::{StdioPaths, TaskState};
use crate::tasks::{resolve_binary, task_key, Shared};

/// What a successful create hands to the actor.
pub(super) struct Created {
    client: ShimClient,
    record: TaskRecord,
    pid: u32,
}

/// A create in progress, with what must be undone if it fails.
struct Creating {
    shared: std::sync::Arc<Shared>,
    ns: String,
    id: String,
    dir: std::path::PathBuf,
    /// Set once the task directory may hold our files.
    wrote: bool,
    client: Option<ShimClient>,
    /// How the shim was started: `berth-shim delete` with these removes the runtime's container when the
    /// shim itself cannot (it died after the runtime created the container).
    args: Option<shim::StartArgs>,
    /// The task's network, once set up.
    net: Option<Setup>,
    /// When the create began (for the "network ready" figure).
    started: Instant,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TaskError> + Send + 'static,
) -> Result<T, TaskError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TaskError::ActorFailed(format!("blocking task failed: {e}")))?
}

impl Creating {
    async fn run(&mut self, req: CreateTaskRequest) -> Result<Created, TaskError> {
        let store = self.shared.ctx.store.clone();
        let (ns, id) = (self.ns.clone(), self.id.clone());
        let container = blocking(move || {
            store
                .get_container(&ns, &id)
                .map_err(|e| TaskError::Upstream(e.into()))
        })
        .await?
        .ok_or_else(|| TaskError::ContainerNotFound(self.id.clone()))?;

        // Validate everything before touching the disk.
        let mut spec_json = bundle::validate_spec(container.spec.as_ref())?;
        let plan = Plan::from_labels(&container.labels)?;
        let runtime = container.runtime.as_ref();
        let choice = bundle::resolve_runtime(
            runtime.map(|r| r.name.as_str()).unwrap_or(""),
            runtime.and_then(|r| r.options.as_ref()),
            req.options.as_ref(),
        )?;
        let config = self.shared.ctx.config.clone();
        let mut record = TaskRecord {
            namespace: self.ns.clone(),
            id: self.id.clone(),
            stdio: StdioPaths {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                terminal: req.terminal,
            },
            execs: Default::default(),
            runtime: resolve_binary(
                choice
                    .binary
                    .clone()
                    .unwrap_or_else(|| config.runtime_binary_path()),
            ),
            runtime_root: choice.root.clone(),
            created: false,
            network: plan.is_some(),
            dead: None,
        };
        let rootfs: Vec<shimpb::Mount> = req
            .rootfs
            .into_iter()
            .map(|m| shimpb::Mount {
                r#type: m.r#type,
                source: m.source,
                target: m.target,
                options: m.options,
            })
            .collect();

        // A previous task with this id may have left seqs behind: the new shim counts from 1 again.
        self.shared
            .ctx
            .events
            .forget_task(&task_key(&self.ns, &self.id))
            .await
            .map_err(|e| TaskError::Upstream(e.into()))?;

        if let Some(plan) = &plan {
            let spec: serde_json::Value = serde_json::from_slice(&spec_json)
                .map_err(|e| TaskError::InvalidArgument(format!("container spec: {e}")))?;
            let owner = Owner::task(&self.ns, &self.id);
            let net = self.net.insert(
                self.shared
                    .networks
                    .prepare(&owner, plan, &spec, &self.dir)
                    .await?,
            );
            spec_json = net.edit_bundle(&spec_json)?;
        }

        // The ADDs (plugins: tens of ms) run beside the bundle, the shim start and the runtime's create, which
        // joins the netns by path and does not touch its interfaces; the container cannot run before Start,
        // and its files get their final content before this create returns.
        self.wrote = true;
        let args = self.shared.start_args(&self.ns, &self.id, &record);
        self.args = Some(args.clone());
        let (d, r) = (self.dir.clone(), record.clone());
        let files = self.net.as_ref().map(|n| n.files());
        let networks = self.shared.networks.clone();
        let (id, dir) = (self.id.clone(), self.dir.clone());
        let stdio = record.stdio.to_shim();
        let no_pivot = choice.no_pivot;
        let client_slot = &mut self.client;
        let shim_part = async move {
            crate::failpoint::hit_async("container_actor.create.before_bundle").await;
            let address = blocking(move || {
                bundle::write_bundle(&d, &spec_json)?;
                bundle::save_record(&d, &r)?;
                if let Some(files) = files {
                    files.place()?;
                }
                shim::start_shim(&args)
            })
            .await?;
            if let Some(pid) = bundle::read_shim_pid(&dir) {
                shim::set_oom_score_adj(pid, config.shim_oom_score_adj);
            }
            let mut client = shim::connect(&address, Duration::from_secs(5)).await?;
            *client_slot = Some(client.clone());
            let pid = client
                .create(shimpb::CreateRequest {
                    id,
                    bundle: dir.to_string_lossy().into_owned(),
                    rootfs,
                    stdio: Some(stdio),
                    no_pivot,
                })
                .await
                .map_err(TaskError::Shim)?
                .into_inner()
                .pid;
            Ok::<_, TaskError>((client, pid))
        };
        let net_part = async {
            match self.net.as_mut() {
                Some(net) => networks.attach(net).await.map_err(TaskError::from),
                None => Ok(()),
            }
        };
        let (shim_res, net_res) = tokio::join!(shim_part, net_part);
        net_res?;
        let (client, pid) = shim_res?;
        if let Some(net) = &self.net {
            let t = self.shared.networks.publish(net).await?;
            tracing::info!(
                networks = %net.summary(),
                netns_us = t.netns.as_micros() as u64,
                attach_us = t.attach.as_micros() as u64,
                network_us = t.network.as_micros() as u64,
                prepare_us = t.prepare.as_micros() as u64,
                publish_us = t.publish.as_micros() as u64,
                handoff_us = t.handoff.as_micros() as u64,
                since_create_us = self.started.elapsed().as_micros() as u64,
                "network ready"
            );
        }
        record.created = true;
        let (d, r) = (self.dir.clone(), record.clone());
        blocking(move || bundle::save_record(&d, &r)).await?;
        if let Some(setup) = &mut self.net {
            setup.durable().await?;
        }
        Ok(Created {
            client,
            record,
            pid,
        })
    }

    /// Undo a failed create: stop the shim (if any), remove the task dir, tear the network down, forget the
    /// task's journal keys.
    async fn undo(self) {
        let mut runtime_deleted = false;
        if let Some(mut c) = self.client {
            // The runtime may have created the container (its ADDs ran beside it, or a later step failed):
            // have the shim delete it (runtime delete --force) before it goes, or the init, blocked until a
            // Start that never comes, and its cgroup would outlive the failed create.
            let delete = c.delete(shimpb::DeleteRequest {
                exec_id: String::new(),
            });
            runtime_deleted = matches!(
                tokio::time::timeout(Duration::from_secs(10), delete).await,
                Ok(Ok(_))
            );
            let _ = c.shutdown(shimpb::ShutdownRequest { now: true }).await;
        }
        if let Some(args) = self.args.filter(|_| self.wrote && !runtime_deleted) {
            // The shim died (or never answered): once it is gone, the runtime's delete --force, run through
            // `berth-shim delete` as for a dead shim's task, removes what the runtime may have created.
            stop_shim(&self.dir).await;
            match blocking(move || shim::delete_shim(&args)).await {
                Ok(_) => {
                    tracing::info!("removed the runtime's container of a create whose shim died")
                }
                Err(e) => tracing::debug!(error = %e, "no runtime container to delete"),
            }
        }
        if self.wrote {
            undo_dir(&self.shared, &self.ns, &self.id, &self.dir).await;
        }
        if let Some(setup) = self.net {
            if let Err(e) = self.shared.networks.abandon(setup).await {
                tracing::error!(error = %e, "tearing down the network of a failed create");
            }
        }
    }
}

/// Remove what a create left: wait for (then kill) the shim, remove the task dir, forget the journal keys.
pub(super) async fn undo_dir(shared: &Shared, ns: &str, id: &str, dir: &std::path::Path) {
    stop_shim(dir).await;
    let d = dir.to_path_buf();
    if let Err(e) = blocking(move || bundle::remove_task_dir(&d)).await {
        tracing::warn!(error = %e, "could not remove {}", dir.display());
    }
    let _ = shared.ctx.events.forget_task(&task_key(ns, id)).await;
}

/// Wait (up to a second) for the task's shim to exit, then SIGKILL it.
async fn stop_shim(dir: &std::path::Path) {
    for _ in 0..50 {
        match bundle::read_shim_pid(dir) {
            Some(pid) if bundle::pid_alive(pid) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            _ => break,
        }
    }
    if let Some(pid) = bundle::read_shim_pid(dir).filter(|p| bundle::pid_alive(*p)) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Handler<CreateTask> for ContainerActor {
    type Result = Reply<u32>;

    fn handle(&mut self, m: CreateTask, _: &mut Self::Context) -> Reply<u32> {
        self.verb(
            "create",
            true,
            move |act| {
                if act.phase != Phase::New {
                    return Err(TaskError::TaskExists(act.id.clone()));
                }
                let mut creating = Creating {
                    shared: act.shared.clone(),
                    ns: act.ns.clone(),
                    id: act.id.clone(),
                    dir: act.dir.clone(),
                    wrote: false,
                    client: None,
                    args: None,
                    net: None,
                    started: Instant::now(),
                };
                let release = act.release();
                Ok(async move {
                    match creating.run(m.req).await {
                        Ok(c) => Ok(Ok(c)),
                        Err(e) => {
                            tracing::info!(error = %e, "create failed; undoing it");
                            creating.undo().await;
                            release.await;
                            Ok(Err(e))
                        }
                    }
                })
            },
            |act, ctx, created: Result<Created, TaskError>| match created {
                Ok(c) => {
                    act.task = TaskState::new(c.record.stdio.clone());
                    act.task.init.pid = c.pid;
                    act.record = c.record;
                    act.client = Some(c.client);
                    act.phase = Phase::Live;
                    act.start_pump(ctx);
                    act.sync_waiters();
                    Ok(c.pid)
                }
                Err(e) => {
                    act.terminate(ctx);
                    Err(e)
                }
            },
        )
    }
}
