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
    /// runc's rootless mode (true|false|auto). Accepted for compatibility: berth-runc
    /// runs as root and never ignores cgroup errors. Before the verb only, as in runc
    /// (`spec --rootless` is a different flag).
    #[arg(long, value_parser = ["true", "false", "auto"])]
    pub rootless: Option<String>,
    /// Path of criu. Accepted for compatibility: checkpoint/restore is not supported.
    #[arg(long, global = true)]
    pub criu: Option<PathBuf>,
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
    /// Checkpoint a container with CRIU: not supported, refused with one clear line
    /// (containerd's shim runs it for `ctr tasks checkpoint`).
    Checkpoint(UnsupportedArgs),
    /// Restore a container from a CRIU checkpoint: not supported, refused likewise.
    Restore(UnsupportedArgs),
}

/// A verb berth-runc refuses: runc's flags and the id are accepted so that the refusal, not
/// a usage error, is what the caller sees.
#[derive(Debug, clap::Args)]
pub struct UnsupportedArgs {
    /// runc's flags and the container id, ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
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
    /// Accepted for runc compatibility; berth-runc stays the subreaper of the container's
    /// init, which it must wait for.
    #[arg(long = "no-subreaper")]
    pub no_subreaper: bool,
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
    /// AppArmor profile for the process (refused when AppArmor is not enabled).
    #[arg(long)]
    pub apparmor: Option<String>,
    /// SELinux label for the process (ignored when SELinux is not enabled, as runc does).
    #[arg(long = "process-label")]
    pub process_label: Option<String>,
    /// Allow exec into a paused container (the process stays frozen until resume).
    #[arg(long = "ignore-paused")]
    pub ignore_paused: bool,
    /// Run the process in an existing sub-cgroup: `[controller[,controller]:]path`.
    #[arg(long)]
    pub cgroup: Vec<String>,
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

/// `update`. Negative values (`--memory-swap -1`, `--cpu-quota -1`) are values.
#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
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
    /// CPU shares (relative weight).
    #[arg(long = "cpu-share", alias = "cpu-shares")]
    pub cpu_shares: Option<u64>,
    /// CPU realtime period (us).
    #[arg(long = "cpu-rt-period")]
    pub cpu_rt_period: Option<u64>,
    /// CPU realtime runtime (us).
    #[arg(long = "cpu-rt-runtime")]
    pub cpu_rt_runtime: Option<i64>,
    /// Intel RDT L3 cache schema (refused: RDT is not supported).
    #[arg(long = "l3-cache-schema")]
    pub l3_cache_schema: Option<String>,
    /// Intel RDT memory bandwidth schema (refused: RDT is not supported).
    #[arg(long = "mem-bw-schema")]
    pub mem_bw_schema: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        // Catches clashes such as a global flag and a verb flag of one name.
        Cli::command().debug_assert();
    }

    #[test]
    fn runc_spellings_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map_err(|e| e.to_string());
        let cli = parse(&[
            "r",
            "--rootless",
            "auto",
            "--criu",
            "/x",
            "spec",
            "--rootless",
        ])
        .expect("global --rootless and spec --rootless");
        assert_eq!(cli.rootless.as_deref(), Some("auto"));
        assert!(matches!(
            cli.command,
            Command::Spec(SpecArgs { rootless: true, .. })
        ));
        let cli = parse(&[
            "r",
            "update",
            "--cpu-share",
            "5",
            "--cpu-rt-runtime",
            "-1",
            "c",
        ])
        .expect("update flags");
        let Command::Update(u) = cli.command else {
            panic!("not update")
        };
        assert_eq!((u.cpu_shares, u.cpu_rt_runtime), (Some(5), Some(-1)));
        let cli = parse(&[
            "r",
            "exec",
            "--ignore-paused",
            "--cgroup",
            "pids:a",
            "c",
            "ls",
            "-l",
        ])
        .expect("exec flags");
        let Command::Exec(e) = cli.command else {
            panic!("not exec")
        };
        assert!(e.ignore_paused);
        assert_eq!(
            (e.cgroup, e.args),
            (vec!["pids:a".to_string()], vec!["ls".into(), "-l".into()])
        );
    }
}
