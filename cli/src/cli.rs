//! The command line: global flags and the nouns. Each noun's verbs and flags live beside
//! their implementation in `commands/<noun>.rs`.
//!
//! Parsing must stay cheap (it runs before every command) and must never touch berthd.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::commands::{
    containers::ContainersCmd, content::ContentCmd, events::EventsArgs, images::ImagesCmd,
    leases::LeasesCmd, namespaces::NamespacesCmd, networks::NetworksCmd, run::RunArgs,
    snapshots::SnapshotsCmd, system::PluginsCmd, tasks::TasksCmd,
};

const EXAMPLES: &str = "\
Examples:
  berth images import busybox.tar            # load an OCI or docker-save archive
  berth run --rm docker.io/library/busybox:latest hello echo hi
  berth run -d --net none busybox web httpd -f -p 8080
  berth tasks ls
  berth tasks exec --exec-id sh1 -t web sh
  berth events
  berth -n other containers ls --format json

berth talks to berthd over --address (default /run/berth/berth.sock). Every command takes
--help, with examples.";

/// berth: run and manage containers through berthd.
#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "berth: run and manage containers through berthd (containerd API v1)",
    after_help = EXAMPLES,
    propagate_version = true
)]
pub struct Cli {
    /// berthd's socket.
    #[arg(
        short = 'a',
        long,
        global = true,
        env = "BERTH_ADDRESS",
        default_value = "/run/berth/berth.sock"
    )]
    pub address: PathBuf,
    /// Namespace to work in.
    #[arg(
        short = 'n',
        long,
        global = true,
        env = "BERTH_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Time limit of each request to berthd (e.g. 10s, 500ms, 2m); 0 or unset: none.
    #[arg(long, global = true, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Print every request berth sends to berthd on stderr.
    #[arg(long, global = true)]
    pub debug: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The nouns (and `run`, `events`, `version`, ...).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage namespaces.
    #[command(visible_aliases = ["namespace", "ns"], subcommand)]
    Namespaces(NamespacesCmd),
    /// Manage images.
    #[command(visible_aliases = ["image", "i"], subcommand)]
    Images(ImagesCmd),
    /// Manage blobs in the content store.
    #[command(subcommand)]
    Content(ContentCmd),
    /// Manage snapshots.
    #[command(visible_aliases = ["snapshot"], subcommand)]
    Snapshots(SnapshotsCmd),
    /// Manage containers.
    #[command(visible_aliases = ["container", "c"], subcommand)]
    Containers(ContainersCmd),
    /// Manage tasks (a container's running processes).
    #[command(visible_aliases = ["task", "t"], subcommand)]
    Tasks(TasksCmd),
    /// Run a container from an image: create it, start it, attach to it.
    Run(Box<RunArgs>),
    /// Remove containers, their stopped tasks and snapshots (same as `containers rm`).
    #[command(after_help = "Examples:\n  berth rm web\n  berth rm -f web db")]
    Rm {
        /// Kill a running task first.
        #[arg(short, long)]
        force: bool,
        /// Container ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Print events as berthd publishes them (or replay them from its journal).
    Events(EventsArgs),
    /// Manage leases (what keeps content and snapshots from garbage collection).
    #[command(visible_aliases = ["lease"], subcommand)]
    Leases(LeasesCmd),
    /// Show networks (CNI configurations).
    #[command(visible_aliases = ["network", "net"], subcommand)]
    Networks(NetworksCmd),
    /// Print the client's and berthd's versions.
    #[command(after_help = "Examples:\n  berth version\n  berth -a /tmp/b/berth.sock version")]
    Version,
    /// List berthd's plugins.
    #[command(visible_aliases = ["plugin"], subcommand)]
    Plugins(PluginsCmd),
    /// Print a summary of berthd: version, socket, namespaces, containers, tasks, images.
    #[command(after_help = "Examples:\n  berth info\n  berth info --format json")]
    Info {
        /// Output format.
        #[arg(long, value_enum, default_value_t = crate::output::Format::Table)]
        format: crate::output::Format,
    },
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  berth completion bash > /etc/bash_completion.d/berth
  berth completion zsh > \"${fpath[1]}/_berth\"
  berth completion fish > ~/.config/fish/completions/berth.fish")]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `10s`, `500ms`, `2m`, `1h`, or plain seconds; `0` means no limit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration {s:?} (use e.g. 10s, 500ms, 2m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn every_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let name = format!("{path} {}", cmd.get_name());
            let subs: Vec<_> = cmd
                .get_subcommands()
                .filter(|c| c.get_name() != "help")
                .collect();
            if subs.is_empty() {
                let help = cmd
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if !help.contains("Examples:") {
                    missing.push(name.clone());
                }
            }
            for s in subs {
                walk(s, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(
            missing.is_empty(),
            "commands without an example: {missing:?}"
        );
    }
}
