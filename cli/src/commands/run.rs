//! `berth run [flags] IMAGE ID [CMD [ARGS...]]` in ctr's argument order: create the container
//! (see [`super::create`]), create its task with FIFOs berth owns (or a pty with `-t`), start
//! it, stay attached and end with its exit code; `--rm` removes task, container and snapshot
//! afterwards; `-d` returns as soon as it runs.
//!
//! With `--rm` the container is removed on every path once it was created, also when the
//! task failed to start; this module must never remove a container it did not create.

use std::path::PathBuf;

use clap::Args;
use containerd_client::services::v1::{CreateTaskRequest, DeleteTaskRequest, StartRequest};
use containerd_client::types::Mount;

use super::create::ContainerFlags;
use super::exec::{self, exit_code, Target};
use super::Ctx;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::stdio::{Fifos, DEFAULT_FIFO_DIR};

const EXAMPLES: &str = "\
Examples:
  berth run --rm docker.io/library/busybox:latest hello echo hello
  berth run --rm -t busybox shell sh                  # an interactive shell
  berth run -d --net none busybox web httpd -f -p 8080
  berth run --rm -e A=1 --mount type=bind,src=/srv,dst=/srv,options=ro busybox ls ls /srv
  berth run --rm --read-only --cap-drop ALL --memory-limit 64m busybox tight id
  berth run --rm -p 8080:80 --net berth nginx:alpine web

The image is pulled when it is missing (--pull missing|always|never). The container gets
Berth's secure default: the default capability set, a seccomp profile, masked /proc paths,
no new privileges, a pids limit; --privileged and --cap-add relax it.";

/// `berth run` flags and arguments.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES, trailing_var_arg = true)]
pub struct RunArgs {
    #[command(flatten)]
    pub container: ContainerFlags,
    /// Remove the container (task, record and snapshot) when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Start the container and return at once (no output is shown).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep stdin attached: always so (as ctr); accepted for Docker habits (`-it`).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the container no stdin, stdout or stderr.
    #[arg(long)]
    pub null_io: bool,
    /// Send stdout and stderr to a file: file:///ABSOLUTE/PATH.
    #[arg(long, value_name = "URI")]
    pub log_uri: Option<String>,
    /// Directory berth makes stdio FIFOs in.
    #[arg(long, env = "BERTH_FIFO_DIR", default_value = DEFAULT_FIFO_DIR)]
    pub fifo_dir: PathBuf,
    /// Image reference (Docker-style short names work: busybox).
    pub image: String,
    /// Container id.
    pub id: String,
    /// Command and arguments (default: the image's Entrypoint and Cmd).
    #[arg(allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Run `berth run`.
pub async fn run(ctx: &Ctx, a: RunArgs) -> Result<i32> {
    if a.rm && a.detach {
        return Err(Error::Usage("--rm and -d cannot be used together".into()));
    }
    if a.null_io && a.log_uri.is_some() {
        return Err(Error::Usage(
            "--null-io and --log-uri cannot be used together".into(),
        ));
    }
    if a.container.tty && (a.null_io || a.log_uri.is_some()) {
        return Err(Error::Usage(
            "-t needs attached stdio (no --null-io or --log-uri)".into(),
        ));
    }
    if let Some(uri) = &a.log_uri {
        Fifos::check_log_uri(uri)?;
    }
    let prepared = a.container.prepare(&ctx.namespace, &a.id, &a.args)?;
    let client = ctx.client().await?;
    let img = super::create::image_for_run(
        ctx,
        &client,
        &a.image,
        a.container.pull,
        a.container.plain_http,
    )
    .await?;
    let (mounts, lease) = super::create::create_container(&client, &img, &a.id, prepared).await?;
    let result = start_task(&client, &a, mounts).await;
    let _ = lease.await;
    if a.rm {
        // After a clean run the task is gone and the record's snapshot key is the id.
        let removed = if result.is_ok() {
            super::containers::remove_record(&client, &a.id, &a.container.snapshotter, &a.id).await
        } else {
            super::containers::remove(&client, &a.id, true).await
        };
        if let (Ok(_), Err(e)) = (&result, removed) {
            return Err(e);
        }
    }
    result
}

/// Create the task with the stdio `a` asks for, then detach or attach.
async fn start_task(client: &Client, a: &RunArgs, mounts: Vec<Mount>) -> Result<i32> {
    let tty = a.container.tty;
    let fifos = if a.null_io {
        Fifos::null()
    } else if let Some(uri) = &a.log_uri {
        Fifos::log_file(uri)?
    } else {
        Fifos::create(&a.fifo_dir, &a.id, true, tty)?
    };
    let attached = if a.detach {
        None
    } else {
        Some(exec::open(&fifos)?)
    };
    let created = create_task(client, &a.id, mounts, &fifos, tty).await;
    if let Err(e) = created {
        fifos.remove();
        return Err(e);
    }
    let target = Target {
        container: a.id.clone(),
        exec_id: String::new(),
    };
    if a.detach {
        let started = client
            .tasks()
            .start(client.req(StartRequest {
                container_id: a.id.clone(),
                exec_id: String::new(),
            }))
            .await
            .map_err(Error::rpc(format!("start container {}", a.id)));
        return started.map(|_| 0);
    }
    let Some(attached) = attached else {
        return Ok(0);
    };
    let status = exec::wait(client, &target, attached, tty, true).await;
    let deleted = client
        .tasks()
        .delete(client.req(DeleteTaskRequest {
            container_id: a.id.clone(),
        }))
        .await;
    fifos.remove();
    let status = status?;
    if let Err(s) = deleted {
        if s.code() != tonic::Code::NotFound {
            return Err(Error::rpc(format!("delete the task of {}", a.id))(s));
        }
    }
    Ok(exit_code(status))
}

/// `Tasks.Create` with the rootfs mounts and stdio paths.
pub async fn create_task(
    client: &Client,
    id: &str,
    mounts: Vec<Mount>,
    fifos: &Fifos,
    terminal: bool,
) -> Result<u32> {
    let r = client
        .tasks()
        .create(client.stream_req(CreateTaskRequest {
            container_id: id.to_string(),
            rootfs: mounts,
            stdin: fifos.stdin.clone(),
            stdout: fifos.stdout.clone(),
            stderr: fifos.stderr.clone(),
            terminal,
            ..Default::default()
        }))
        .await
        .map_err(Error::rpc(format!("create the task of {id}")))?;
    Ok(r.into_inner().pid)
}
