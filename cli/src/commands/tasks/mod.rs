//! `tasks start|ls|kill|ps|exec|pause|resume|metrics|rm|attach|wait`.
//!
//! Verbs act on the task of one container; `rm` refuses a running task unless `--force`. This
//! module must never remove the container record (that is `containers rm`).

use std::path::PathBuf;

use clap::Subcommand;
use containerd_client::services::v1::snapshots::MountsRequest;
use containerd_client::services::v1::{
    DeleteTaskRequest, GetRequest, KillRequest, ListPidsRequest, ListTasksRequest,
    PauseTaskRequest, ResumeTaskRequest, WaitRequest,
};
use containerd_client::types::v1::Process;
use serde_json::{json, Value};

use super::exec::{self, attach_and_wait, describe, exit_code, parse_signal, Target};
use super::{check_identifier, Ctx};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::output::{ListOpts, Listing};
use crate::stdio::{Fifos, DEFAULT_FIFO_DIR};

mod exec_process;
mod metrics;

use exec_process::{exec, ExecOpts};
use metrics::metrics;

/// Task status names by their enum value.
pub fn status_name(s: i32) -> &'static str {
    match s {
        1 => "CREATED",
        2 => "RUNNING",
        3 => "STOPPED",
        4 => "PAUSED",
        5 => "PAUSING",
        _ => "UNKNOWN",
    }
}

/// `tasks` verbs.
#[derive(Debug, Subcommand)]
pub enum TasksCmd {
    /// Start a container's task (created with `containers create`) and attach to it.
    #[command(
        after_help = "Examples:\n  berth tasks start web\n  berth tasks start -d web\n  berth t start -t shell"
    )]
    Start {
        /// Return once it runs (no output shown).
        #[arg(short = 'd', long)]
        detach: bool,
        /// Give it no stdio.
        #[arg(long)]
        null_io: bool,
        /// Send stdout and stderr to a file: file:///ABSOLUTE/PATH.
        #[arg(long, value_name = "URI")]
        log_uri: Option<String>,
        /// Directory berth makes stdio FIFOs in.
        #[arg(long, env = "BERTH_FIFO_DIR", default_value = DEFAULT_FIFO_DIR)]
        fifo_dir: PathBuf,
        /// Container id.
        id: String,
    },
    /// List tasks.
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  berth tasks ls\n  berth t ls --format json"
    )]
    Ls {
        #[command(flatten)]
        list: ListOpts,
    },
    /// Send a signal to a task (default: the image's stop signal, else SIGTERM).
    #[command(
        after_help = "Examples:\n  berth tasks kill web\n  berth tasks kill -s SIGKILL --all web\n  berth t kill -s HUP --exec-id sh1 web"
    )]
    Kill {
        /// Signal name or number.
        #[arg(short, long, value_parser = signal_arg)]
        signal: Option<u32>,
        /// Signal every process in the container.
        #[arg(long)]
        all: bool,
        /// Signal this exec process instead of the init process.
        #[arg(long, default_value = "")]
        exec_id: String,
        /// Container id.
        id: String,
    },
    /// List a task's processes.
    #[command(after_help = "Examples:\n  berth tasks ps web")]
    Ps {
        #[command(flatten)]
        list: ListOpts,
        /// Container id.
        id: String,
    },
    /// Run another process in a running container.
    #[command(
        trailing_var_arg = true,
        after_help = "Examples:\n  berth tasks exec --exec-id ls1 web ls /\n  berth tasks exec -t --exec-id sh1 web sh\n  berth t exec -d --exec-id bg1 web sleep 60"
    )]
    Exec {
        /// Exec id (unique within the container; default: generated).
        #[arg(long)]
        exec_id: Option<String>,
        /// Allocate a terminal.
        #[arg(short = 't', long)]
        tty: bool,
        /// Start it and return (no output shown).
        #[arg(short = 'd', long)]
        detach: bool,
        /// Keep stdin attached: always so; accepted for Docker habits (`-it`).
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Working directory.
        #[arg(long)]
        cwd: Option<String>,
        /// User as `uid` or `uid:gid` (default: the container's).
        #[arg(short = 'u', long)]
        user: Option<String>,
        /// Extra environment variable `KEY=VALUE`.
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Directory berth makes stdio FIFOs in.
        #[arg(long, env = "BERTH_FIFO_DIR", default_value = DEFAULT_FIFO_DIR)]
        fifo_dir: PathBuf,
        /// Container id.
        id: String,
        /// Command and arguments.
        #[arg(required = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Freeze every process of a task.
    #[command(after_help = "Examples:\n  berth tasks pause web")]
    Pause {
        /// Container id.
        id: String,
    },
    /// Thaw a paused task.
    #[command(after_help = "Examples:\n  berth tasks resume web")]
    Resume {
        /// Container id.
        id: String,
    },
    /// Print a task's cgroup statistics.
    #[command(
        after_help = "Examples:\n  berth tasks metrics web\n  berth t metrics web --format json"
    )]
    Metrics {
        /// Output format.
        #[arg(long, value_enum, default_value_t = crate::output::Format::Table)]
        format: crate::output::Format,
        /// Container id.
        id: String,
    },
    /// Delete stopped tasks (the container stays).
    #[command(
        visible_aliases = ["remove", "delete", "del"],
        after_help = "Examples:\n  berth tasks rm web\n  berth tasks rm -f web"
    )]
    Rm {
        /// Kill a running task first.
        #[arg(short, long)]
        force: bool,
        /// Container ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Attach to a task's stdio (of a `run -d` or `tasks start -d`).
    #[command(after_help = "Examples:\n  berth tasks attach web")]
    Attach {
        /// Container id.
        id: String,
    },
    /// Wait for a task to exit; ends with its exit status.
    #[command(after_help = "Examples:\n  berth tasks wait web; echo $?")]
    Wait {
        /// Wait for this exec process instead.
        #[arg(long, default_value = "")]
        exec_id: String,
        /// Container id.
        id: String,
    },
}

/// clap value parser for `--signal`.
fn signal_arg(s: &str) -> std::result::Result<u32, String> {
    parse_signal(s).map_err(|e| e.to_string())
}

/// The task's init process, or NotFound as an error naming the container.
pub async fn get_task(client: &Client, id: &str, exec_id: &str) -> Result<Process> {
    client
        .tasks()
        .get(client.req(GetRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        }))
        .await
        .map_err(Error::rpc(format!("task {id}")))?
        .into_inner()
        .process
        .ok_or_else(|| Error::invalid(format!("task {id}"), "berthd sent no process"))
}

/// Run a `tasks` verb.
pub async fn run(ctx: &Ctx, cmd: TasksCmd) -> Result<i32> {
    let client = ctx.client().await?;
    let tasks = || client.tasks();
    match cmd {
        TasksCmd::Start {
            detach,
            null_io,
            log_uri,
            fifo_dir,
            id,
        } => start(&client, &id, detach, null_io, log_uri, &fifo_dir).await,
        TasksCmd::Ls { list } => {
            let mut all = tasks()
                .list(client.req(ListTasksRequest::default()))
                .await
                .map_err(Error::rpc("list tasks"))?
                .into_inner()
                .tasks;
            all.sort_by(|a, b| a.id.cmp(&b.id));
            let mut out = Listing::new(&["TASK", "PID", "STATUS"]);
            for t in all {
                let id = if t.id.is_empty() {
                    t.container_id.clone()
                } else {
                    t.id.clone()
                };
                out.push(
                    id.clone(),
                    vec![id.clone(), t.pid.to_string(), status_name(t.status).into()],
                    json!({
                        "id": id, "pid": t.pid, "status": status_name(t.status),
                        "exit_status": t.exit_status, "terminal": t.terminal,
                    }),
                );
            }
            out.print(&list);
            Ok(0)
        }
        TasksCmd::Kill {
            signal,
            all,
            exec_id,
            id,
        } => {
            let sig = match signal {
                Some(s) => s,
                None => {
                    let c = super::containers::get(&client, &id).await?;
                    let name = c
                        .labels
                        .get(super::create::STOP_SIGNAL_LABEL)
                        .cloned()
                        .unwrap_or_else(|| "SIGTERM".into());
                    parse_signal(&name)?
                }
            };
            tasks()
                .kill(client.req(KillRequest {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                    signal: sig,
                    all,
                }))
                .await
                .map_err(Error::rpc(format!(
                    "signal {}",
                    describe(&Target {
                        container: id,
                        exec_id
                    })
                )))?;
            Ok(0)
        }
        TasksCmd::Ps { list, id } => {
            let procs = tasks()
                .list_pids(client.req(ListPidsRequest {
                    container_id: id.clone(),
                }))
                .await
                .map_err(Error::rpc(format!("list the processes of {id}")))?
                .into_inner()
                .processes;
            let mut out = Listing::new(&["PID", "INFO"]);
            for p in procs {
                let info = p
                    .info
                    .as_ref()
                    .map(|a| a.type_url.clone())
                    .unwrap_or_else(|| "-".into());
                out.push(
                    p.pid.to_string(),
                    vec![p.pid.to_string(), info.clone()],
                    json!({ "pid": p.pid, "info": info }),
                );
            }
            out.print(&list);
            Ok(0)
        }
        TasksCmd::Exec {
            exec_id,
            tty,
            detach,
            interactive: _,
            cwd,
            user,
            env,
            fifo_dir,
            id,
            args,
        } => {
            let exec_id =
                exec_id.unwrap_or_else(|| format!("exec-{}", crate::image::unique_suffix()));
            check_identifier("exec id", &exec_id)?;
            let opts = ExecOpts {
                tty,
                detach,
                cwd,
                user,
                env,
                fifo_dir,
            };
            exec(&client, &id, &exec_id, args, opts).await
        }
        TasksCmd::Pause { id } => {
            tasks()
                .pause(client.req(PauseTaskRequest {
                    container_id: id.clone(),
                }))
                .await
                .map_err(Error::rpc(format!("pause {id}")))?;
            Ok(0)
        }
        TasksCmd::Resume { id } => {
            tasks()
                .resume(client.req(ResumeTaskRequest {
                    container_id: id.clone(),
                }))
                .await
                .map_err(Error::rpc(format!("resume {id}")))?;
            Ok(0)
        }
        TasksCmd::Metrics { format, id } => metrics(&client, &id, format).await,
        TasksCmd::Rm { force, ids } => {
            let mut failed = false;
            for id in ids {
                match remove_task(&client, &id, force).await {
                    Ok(status) => println!("{id}\t(exit status {status})"),
                    Err(e) => {
                        failed = true;
                        eprintln!("berth: {e}");
                    }
                }
            }
            Ok(i32::from(failed))
        }
        TasksCmd::Attach { id } => {
            let p = get_task(&client, &id, "").await?;
            if p.stdout.is_empty() && p.stdin.is_empty() {
                return Err(Error::Usage(format!("task {id} has no stdio to attach to")));
            }
            let fifos = Fifos {
                dir: std::path::Path::new(&p.stdout)
                    .parent()
                    .map(|d| d.to_path_buf()),
                stdin: p.stdin.clone(),
                stdout: p.stdout.clone(),
                stderr: p.stderr.clone(),
            };
            let target = Target {
                container: id,
                exec_id: String::new(),
            };
            let status = attach_and_wait(&client, &target, &fifos, p.terminal, false).await?;
            Ok(exit_code(status))
        }
        TasksCmd::Wait { exec_id, id } => {
            let r = tasks()
                .wait(client.stream_req(WaitRequest {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                }))
                .await
                .map_err(Error::rpc(format!(
                    "wait for {}",
                    describe(&Target {
                        container: id,
                        exec_id
                    })
                )))?
                .into_inner();
            println!("{}", r.exit_status);
            Ok(exit_code(r.exit_status))
        }
    }
}

/// `tasks start`: the container's task with fresh stdio, attached unless `detach`.
async fn start(
    client: &Client,
    id: &str,
    detach: bool,
    null_io: bool,
    log_uri: Option<String>,
    fifo_dir: &std::path::Path,
) -> Result<i32> {
    let c = super::containers::get(client, id).await?;
    let spec: Value = c
        .spec
        .as_ref()
        .and_then(|s| serde_json::from_slice(&s.value).ok())
        .unwrap_or(Value::Null);
    let tty = spec["process"]["terminal"].as_bool().unwrap_or(false);
    let mounts = if c.snapshot_key.is_empty() {
        Vec::new()
    } else {
        client
            .snapshots()
            .mounts(client.req(MountsRequest {
                snapshotter: c.snapshotter.clone(),
                key: c.snapshot_key.clone(),
            }))
            .await
            .map_err(Error::rpc(format!("the root filesystem of {id}")))?
            .into_inner()
            .mounts
    };
    let fifos = if null_io {
        Fifos::null()
    } else if let Some(uri) = log_uri {
        Fifos::log_file(&uri)?
    } else {
        Fifos::create(fifo_dir, id, true, tty)?
    };
    let attached = exec::open(&fifos)?;
    if let Err(e) = super::run::create_task(client, id, mounts, &fifos, tty).await {
        fifos.remove();
        return Err(e);
    }
    let target = Target {
        container: id.to_string(),
        exec_id: String::new(),
    };
    if detach || fifos.dir.is_none() {
        client
            .tasks()
            .start(client.req(containerd_client::services::v1::StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(Error::rpc(format!("start container {id}")))?;
        return Ok(0);
    }
    let status = exec::wait(client, &target, attached, tty, true).await?;
    Ok(exit_code(status))
}

/// Delete a stopped task (kill it first with `force`); returns its exit status.
async fn remove_task(client: &Client, id: &str, force: bool) -> Result<u32> {
    let p = get_task(client, id, "").await?;
    if matches!(p.status, 2 | 4 | 5) {
        if !force {
            return Err(Error::Usage(format!(
                "task {id} is {}: stop it first (`berth tasks kill {id}`) or use --force",
                status_name(p.status).to_lowercase()
            )));
        }
        super::containers::kill_and_wait(client, id).await?;
    }
    let r = client
        .tasks()
        .delete(client.req(DeleteTaskRequest {
            container_id: id.to_string(),
        }))
        .await
        .map_err(Error::rpc(format!("delete the task of {id}")))?
        .into_inner();
    crate::stdio::remove_paths(&[&p.stdin, &p.stdout, &p.stderr]);
    Ok(r.exit_status)
}
