//! runc's command line as clap structs: global flags and one struct per verb.
//! Only parsing lives here; it must never act on anything.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// berth-runc: an OCI runtime with runc's command line.
#[derive(Debug, Parser)]
#[command(name = "berth-runc", version, about)]
pub struct Cli {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = "/run/berth-runc")]
    pub root: PathBuf,
    /// Log file (default: stderr only).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format.
    #[arg(long = "log-format", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Use systemd for cgroups (unsupported: refused).
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `time="..." level=error msg="..."`
    Text,
    /// `{"level":"error","msg":"...","time":"..."}`
    Json,
}

/// Output format of list/ps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table.
    Table,
    /// JSON.
    Json,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a default config.json.
    Spec(SpecArgs),
    /// Create a container (init waits for `start`).
    Create(CreateArgs),
    /// Start a created container.
    Start(IdArgs),
    /// Create, start and wait for a container.
    Run(RunArgs),
    /// Print a container's state as JSON.
    State(IdArgs),
    /// Send a signal to a container's init (or all its processes).
    Kill(KillArgs),
    /// Delete a container.
    Delete(DeleteArgs),
    /// Run a process in a running container.
    Exec(ExecArgs),
    /// List a container's processes.
    Ps(PsArgs),
    /// List containers.
    #[command(alias = "ls")]
    List(ListArgs),
    /// Freeze a container.
    Pause(IdArgs),
    /// Thaw a container.
    Resume(IdArgs),
    /// Change a container's resource limits.
    Update(UpdateArgs),
    /// Print container events (stats).
    Events(EventsArgs),
    /// Print the runtime's features as JSON.
    Features,
}

/// A verb taking only an id.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// Container id.
    pub id: String,
}

/// `spec`.
#[derive(Debug, clap::Args)]
pub struct SpecArgs {
    /// Bundle directory to write config.json into.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Rootless spec (unsupported).
    #[arg(long)]
    pub rootless: bool,
}

/// Options shared by create and run.
#[derive(Debug, clap::Args, Clone)]
pub struct CreateOpts {
    /// Bundle directory.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket that receives the pty master.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// File to write the init pid to.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root.
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Do not create a session keyring (accepted; no keyring is created).
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    /// Pass fds 3..3+N to the container process.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
}

/// `create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Shared options.
    #[command(flatten)]
    pub opts: CreateOpts,
    /// Container id.
    pub id: String,
}

/// `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Shared options.
    #[command(flatten)]
    pub opts: CreateOpts,
    /// Do not wait for the container.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the container's state after it exits.
    #[arg(long)]
    pub keep: bool,
    /// Container id.
    pub id: String,
}

/// `kill`.
#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// Signal every process of the container.
    #[arg(short, long)]
    pub all: bool,
    /// Container id.
    pub id: String,
    /// Signal name (KILL, SIGKILL) or number; default SIGTERM.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

/// `delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Kill a running container first.
    #[arg(short, long)]
    pub force: bool,
    /// Container id.
    pub id: String,
}

/// `exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// process.json (an OCI Process) instead of args.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Allocate a pty.
    #[arg(short, long)]
    pub tty: bool,
    /// Unix socket that receives the pty master.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Do not wait for the process.
    #[arg(short, long)]
    pub detach: bool,
    /// File to write the process pid to.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Extra environment (KEY=VALUE).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// uid[:gid].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional gids.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// Extra capabilities.
    #[arg(short, long = "cap")]
    pub cap: Vec<String>,
    /// Set no_new_privileges.
    #[arg(long = "no-new-privs")]
    pub no_new_privs: bool,
    /// Pass fds 3..3+N to the process.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Accepted and ignored (no AppArmor/SELinux support).
    #[arg(long, hide = true)]
    pub apparmor: Option<String>,
    /// Accepted and ignored.
    #[arg(long = "process-label", hide = true)]
    pub process_label: Option<String>,
    /// Container id.
    pub id: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `ps`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// table or json.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Container id.
    pub id: String,
    /// Options for ps(1).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

/// `list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// table or json.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Ids only.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `update`.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// LinuxResources JSON file, or `-` for stdin.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit (bytes, or with k/m/g suffix).
    #[arg(long)]
    pub memory: Option<String>,
    /// Memory soft limit.
    #[arg(long = "memory-reservation")]
    pub memory_reservation: Option<String>,
    /// Memory + swap limit (-1 = unlimited).
    #[arg(long = "memory-swap")]
    pub memory_swap: Option<String>,
    /// CPU shares.
    #[arg(long = "cpu-shares")]
    pub cpu_shares: Option<u64>,
    /// CPU CFS quota.
    #[arg(long = "cpu-quota")]
    pub cpu_quota: Option<i64>,
    /// CPU CFS period.
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<u64>,
    /// cpuset cpus.
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    /// cpuset mems.
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    /// Max pids.
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<i64>,
    /// blkio weight.
    #[arg(long = "blkio-weight")]
    pub blkio_weight: Option<u16>,
    /// Container id.
    pub id: String,
}

/// `events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Print stats once and exit.
    #[arg(long)]
    pub stats: bool,
    /// Interval between stats (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s")]
    pub interval: String,
    /// Container id.
    pub id: String,
}
