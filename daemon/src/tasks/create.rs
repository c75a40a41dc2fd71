//! Tasks.Create: validate everything first, then write the bundle, start and connect the shim, start the
//! ContainerActor and have it create the container in the shim.
//!
//! A failure at any step undoes the earlier ones (shim stopped, task dir removed, journal key forgotten), so
//! nothing half-created remains. Never write to the task dir before the request is known to be valid.

use std::path::PathBuf;
use std::time::Duration;

use berth_proto::containerd_client::services::v1::{CreateTaskRequest, CreateTaskResponse};
use berth_proto::shim as shimpb;

use super::bundle::{self, TaskRecord};
use super::container::{Init, Op, Reply, Request};
use super::error::TaskError;
use super::shim;
use super::state::StdioPaths;
use super::supervisor::SpawnContainer;
use super::Tasks;

/// Removes the `creating` mark when the create ends, however it ends.
struct CreatingGuard<'a> {
    tasks: &'a Tasks,
    key: (String, String),
}

impl Drop for CreatingGuard<'_> {
    fn drop(&mut self) {
        self.tasks.shared.creating.remove(&self.key);
    }
}

impl Tasks {
    /// Tasks.Create.
    pub(crate) async fn create(
        &self,
        ns: &str,
        req: CreateTaskRequest,
    ) -> Result<CreateTaskResponse, TaskError> {
        let id = req.container_id.clone();
        crate::namespace::validate_id("container", &id).map_err(TaskError::Upstream)?;
        if req.checkpoint.is_some() {
            return Err(TaskError::Unimplemented(
                "checkpoint restore is not supported".into(),
            ));
        }
        let store = self.shared.ctx.store.clone();
        let (ns2, id2) = (ns.to_string(), id.clone());
        let container = tokio::task::spawn_blocking(move || store.get_container(&ns2, &id2))
            .await
            .map_err(|e| TaskError::ActorFailed(e.to_string()))?
            .map_err(|e| TaskError::Upstream(e.into()))?
            .ok_or_else(|| TaskError::ContainerNotFound(id.clone()))?;

        let key = (ns.to_string(), id.clone());
        if self.shared.registry.contains_key(&key) {
            return Err(TaskError::TaskExists(id));
        }
        if self.shared.creating.insert(key.clone(), ()).is_some() {
            return Err(TaskError::TaskExists(id));
        }
        let _guard = CreatingGuard { tasks: self, key };

        // Validate before touching the disk.
        let spec_json = bundle::validate_spec(container.spec.as_ref())?;
        let runtime = container.runtime.as_ref();
        let choice = bundle::resolve_runtime(
            runtime.map(|r| r.name.as_str()).unwrap_or(""),
            runtime.and_then(|r| r.options.as_ref()),
            req.options.as_ref(),
        )?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let config = self.shared.ctx.config.clone();
        let record = TaskRecord {
            namespace: ns.to_string(),
            id: id.clone(),
            stdio,
            execs: Default::default(),
            runtime: super::resolve_binary(
                choice
                    .binary
                    .clone()
                    .unwrap_or_else(|| config.runtime_binary_path()),
            ),
            runtime_root: choice.root.clone(),
            dead: None,
        };
        let rootfs: Vec<shimpb::Mount> = req
            .rootfs
            .iter()
            .map(|m| shimpb::Mount {
                r#type: m.r#type.clone(),
                source: m.source.clone(),
                target: m.target.clone(),
                options: m.options.clone(),
            })
            .collect();

        // A previous task with this id may have left a seq behind: the new shim counts from 1 again.
        let skey = shim::shim_key(ns, &id);
        self.shared
            .ctx
            .events
            .forget_shim(&skey)
            .await
            .map_err(|e| TaskError::Upstream(e.into()))?;

        let dir = config.task_dir(ns, &id);
        let args = self.shared.start_args(ns, &id, &record);
        let (d, r, a) = (dir.clone(), record.clone(), args.clone());
        let started = tokio::task::spawn_blocking(move || -> Result<PathBuf, TaskError> {
            bundle::write_bundle(&d, &spec_json)?;
            bundle::save_record(&d, &r)?;
            shim::start_shim(&a)
        })
        .await
        .map_err(|e| TaskError::ActorFailed(e.to_string()))?;
        let address = match started {
            Ok(a) => a,
            Err(e) => {
                self.undo(ns, &id, None).await;
                return Err(e);
            }
        };
        if let Some(pid) = bundle::read_shim_pid(&dir) {
            shim::set_oom_score_adj(pid, config.shim_oom_score_adj);
        }
        let client = match shim::connect(&address, Duration::from_secs(5)).await {
            Ok(c) => c,
            Err(e) => {
                self.undo(ns, &id, None).await;
                return Err(e);
            }
        };
        let addr = self
            .supervisor
            .send(SpawnContainer {
                ns: ns.to_string(),
                id: id.clone(),
                init: Init::Fresh {
                    client: Box::new(client.clone()),
                    record: Box::new(record),
                },
                ready: None,
            })
            .await
            .map_err(|e| TaskError::ActorFailed(e.to_string()))?;
        let created = addr
            .send(Request(Op::Create {
                rootfs,
                no_pivot: choice.no_pivot,
            }))
            .await;
        match created {
            Ok(Ok(Reply::Pid(pid))) => Ok(CreateTaskResponse {
                container_id: id,
                pid,
            }),
            other => {
                let _ = addr.send(Request(Op::Terminate)).await;
                self.shared.registry.remove(&(ns.to_string(), id.clone()));
                self.shared.waiters.remove_task(ns, &id);
                self.undo(ns, &id, Some(client)).await;
                Err(match other {
                    Ok(Err(e)) => e,
                    Ok(Ok(r)) => TaskError::ActorFailed(format!("unexpected reply {r:?}")),
                    Err(e) => TaskError::ActorFailed(e.to_string()),
                })
            }
        }
    }

    /// Undo a failed create: stop the shim (if any), remove the task dir, forget the shim's seq.
    async fn undo(&self, ns: &str, id: &str, client: Option<shim::ShimClient>) {
        if let Some(mut c) = client {
            let _ = c.shutdown(shimpb::ShutdownRequest { now: true }).await;
        }
        let dir = self.shared.ctx.config.task_dir(ns, id);
        // Wait for the shim (if it started) to be gone before removing its directory.
        for _ in 0..50 {
            match bundle::read_shim_pid(&dir) {
                Some(pid) if bundle::pid_alive(pid) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                _ => break,
            }
        }
        if let Some(pid) = bundle::read_shim_pid(&dir).filter(|p| bundle::pid_alive(*p)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let d = dir.clone();
        let removed = tokio::task::spawn_blocking(move || bundle::remove_task_dir(&d)).await;
        if !matches!(removed, Ok(Ok(()))) {
            tracing::warn!(namespace = %ns, container_id = %id, "could not remove {}", dir.display());
        }
        let _ = self
            .shared
            .ctx
            .events
            .forget_shim(&shim::shim_key(ns, id))
            .await;
    }
}
