//! One module per noun: its verbs' flags (clap) and what each verb asks berthd.
//!
//! [`dispatch`] builds the single current-thread runtime and connects only for commands that
//! need berthd; a verb returns the exit code berth ends with (a container's, for `run`).

pub mod containers;
pub mod content;
pub mod create;
pub mod events;
pub mod exec;
pub mod images;
pub mod leases;
pub mod namespaces;
pub mod networks;
pub mod run;
pub mod snapshots;
pub mod system;
pub mod tasks;

use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory;

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::error::{Error, Result};

/// What every command knows from the global flags.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// berthd's socket.
    pub address: PathBuf,
    /// Namespace.
    pub namespace: String,
    /// Per-request time limit.
    pub timeout: Option<Duration>,
    /// `--debug`.
    pub debug: bool,
}

impl Ctx {
    /// Connect to berthd.
    pub async fn client(&self) -> Result<Client> {
        let mut c = Client::connect(&self.address, &self.namespace, self.timeout).await?;
        c.set_debug(self.debug);
        if self.debug {
            eprintln!(
                "berth: connected to {} (namespace {})",
                self.address.display(),
                self.namespace
            );
        }
        Ok(c)
    }
}

/// Run the parsed command line; returns the exit code.
pub fn dispatch(cli: Cli) -> Result<i32> {
    let ctx = Ctx {
        address: cli.address,
        namespace: cli.namespace,
        timeout: cli.timeout.filter(|t| !t.is_zero()),
        debug: cli.debug,
    };
    if let Command::Completion { shell } = &cli.command {
        let mut cmd = Cli::command();
        clap_complete::generate(*shell, &mut cmd, "berth", &mut std::io::stdout());
        return Ok(0);
    }
    if let Command::Networks(cmd) = &cli.command {
        if !matches!(cmd, networks::NetworksCmd::Check { .. }) {
            return networks::run(cmd);
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))?;
    let code = rt.block_on(async move {
        match cli.command {
            Command::Namespaces(c) => namespaces::run(&ctx, c).await,
            Command::Images(c) => images::run(&ctx, c).await,
            Command::Content(c) => content::run(&ctx, c).await,
            Command::Snapshots(c) => snapshots::run(&ctx, c).await,
            Command::Containers(c) => containers::run(&ctx, c).await,
            Command::Tasks(c) => tasks::run(&ctx, c).await,
            Command::Run(a) => run::run(&ctx, *a).await,
            Command::Rm { force, ids } => {
                containers::run(&ctx, containers::ContainersCmd::Rm { force, ids }).await
            }
            Command::Events(a) => events::run(&ctx, a).await,
            Command::Leases(c) => leases::run(&ctx, c).await,
            Command::Version => system::version(&ctx).await,
            Command::Plugins(c) => system::plugins(&ctx, c).await,
            Command::Info { format } => system::info(&ctx, format).await,
            Command::Networks(c) => networks::check(&ctx, c).await,
            Command::Completion { .. } => Ok(0),
        }
    });
    // A blocking stdin reader (attached runs) never returns while the terminal is idle: do not
    // wait for it.
    rt.shutdown_background();
    code
}

/// Validate an identifier as containerd does (container ids, exec ids, namespaces).
pub fn check_identifier(what: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 76
        && id
            .split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid {what} {id:?}: use letters and digits, separated by single '.', '_' or '-', \
             at most 76 characters"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(check_identifier("id", "web-1.a_b").is_ok());
        assert!(check_identifier("id", "").is_err());
        assert!(check_identifier("id", "a--b").is_err());
        assert!(check_identifier("id", "-a").is_err());
        assert!(check_identifier("id", "a/b").is_err());
        assert!(check_identifier("id", &"a".repeat(77)).is_err());
    }
}
