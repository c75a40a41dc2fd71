//! berth-shim: one process per container; child subreaper, stdio owner, event journal.
//!
//! `berth-shim start ...` daemonises and serves `berth.shim.v1` on a unix socket;
//! `berth-shim delete ...` cleans up after a dead shim. See DESIGN.md (berth-shim).

mod cgroup;
mod cleanup;
mod console;
mod container;
mod crilog;
mod daemon;
mod error;
mod exec;
mod journal;
mod log;
mod mount;
mod process;
mod reaper;
mod restore;
mod runtime;
mod service;
mod signals;
mod stdio;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use container::Inner;

#[derive(Parser)]
#[command(name = "berth-shim", about = "Berth's per-container shim")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the shim daemon for a container and print its address.
    Start {
        #[command(flatten)]
        common: Common,
        /// berthd's address (recorded only; the shim never dials it).
        #[arg(long)]
        address: String,
    },
    /// Clean up a container whose shim is gone; print its exit status as JSON.
    Delete {
        #[command(flatten)]
        common: Common,
        /// berthd's address (ignored).
        #[arg(long)]
        address: Option<String>,
    },
}

/// Arguments shared by the subcommands.
#[derive(Args, Clone)]
pub struct Common {
    /// Namespace of the container.
    #[arg(long)]
    pub namespace: String,
    /// Container id.
    #[arg(long)]
    pub id: String,
    /// Bundle directory (config.json, rootfs).
    #[arg(long)]
    pub bundle: PathBuf,
    /// berthd's state directory (the socket goes to <state>/s/).
    #[arg(long)]
    pub state: PathBuf,
    /// OCI runtime binary (default: berth-runc next to berth-shim or on PATH, else runc).
    #[arg(long)]
    pub runtime: Option<PathBuf>,
    /// The runtime's --root (default: <state>/runc/<namespace>).
    #[arg(long)]
    pub runtime_root: Option<PathBuf>,
}

/// Names the shim accepts for namespaces and container ids.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

impl Common {
    /// Check the arguments and make paths absolute.
    fn validate(mut self) -> anyhow::Result<Self> {
        if !valid_name(&self.namespace) {
            anyhow::bail!("invalid namespace {:?}", self.namespace);
        }
        if !valid_name(&self.id) {
            anyhow::bail!("invalid container id {:?}", self.id);
        }
        self.bundle = std::path::absolute(&self.bundle)?;
        self.state = std::path::absolute(&self.state)?;
        if !self.bundle.is_dir() {
            anyhow::bail!("bundle {} is not a directory", self.bundle.display());
        }
        if let Some(r) = &self.runtime {
            if r.components().count() > 1 && !r.is_file() {
                anyhow::bail!("runtime {} does not exist", r.display());
            }
        }
        Ok(self)
    }

    /// The runtime binary to drive.
    pub fn runtime_binary(&self) -> PathBuf {
        if let Some(r) = &self.runtime {
            return r.clone();
        }
        let beside = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("berth-runc")))
            .filter(|p| p.is_file());
        beside
            .or_else(|| on_path("berth-runc"))
            .unwrap_or_else(|| PathBuf::from("runc"))
    }
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Start { common, address } => {
            common.validate().and_then(|c| daemon::start(&c, &address))
        }
        Cmd::Delete { common, .. } => common.validate().and_then(|c| cleanup::delete(&c)),
    };
    if let Err(e) = res {
        eprintln!("berth-shim: {e:#}");
        std::process::exit(1);
    }
}
