//! One file per verb, each with the same shape: load the container, refresh its
//! status, check the guard, act, save. `dispatch` maps the parsed command line to
//! a verb and returns the process exit code. Verbs must never print anything but
//! their documented output on stdout.

pub mod create;
pub mod delete;
pub mod events;
pub mod exec;
pub mod features;
pub mod kill;
pub mod list;
pub mod pause;
pub mod ps;
pub mod resume;
pub mod run;
pub mod spec;
pub mod start;
pub mod state;
pub mod update;

use crate::cli::{Cli, Command};
use crate::error::{Error, Result};

/// Whether a verb enters a container (and so must run from the sealed copy).
pub fn enters_container(c: &Command) -> bool {
    matches!(c, Command::Create(_) | Command::Run(_) | Command::Exec(_))
}

/// Run the verb; Ok(exit code).
pub fn dispatch(cli: &Cli) -> Result<i32> {
    if cli.systemd_cgroup {
        return Err(Error::Usage(
            "--systemd-cgroup: systemd cgroup management is not supported by berth-runc".into(),
        ));
    }
    let root = cli.root.as_path();
    match &cli.command {
        Command::Spec(a) => spec::run(a).map(|_| 0),
        Command::Create(a) => create::run(root, &a.opts, &a.id, None).map(|_| 0),
        Command::Start(a) => start::run(root, &a.id).map(|_| 0),
        Command::Run(a) => run::run(root, a),
        Command::State(a) => state::run(root, &a.id).map(|_| 0),
        Command::Kill(a) => kill::run(root, a).map(|_| 0),
        Command::Delete(a) => delete::run(root, &a.id, a.force).map(|_| 0),
        Command::Exec(a) => exec::run(root, a),
        Command::Ps(a) => ps::run(root, a).map(|_| 0),
        Command::List(a) => list::run(root, a).map(|_| 0),
        Command::Pause(a) => pause::run(root, &a.id).map(|_| 0),
        Command::Resume(a) => resume::run(root, &a.id).map(|_| 0),
        Command::Update(a) => update::run(root, a).map(|_| 0),
        Command::Events(a) => events::run(root, a).map(|_| 0),
        Command::Features => features::run().map(|_| 0),
        Command::Checkpoint(a) | Command::Restore(a) => Err(Error::Usage(format!(
            "{}{}: checkpoint/restore is not supported by berth-runc (no CRIU support); nothing was changed",
            if matches!(cli.command, Command::Checkpoint(_)) {
                "checkpoint"
            } else {
                "restore"
            },
            a.args
                .last()
                .filter(|id| !id.starts_with('-'))
                .map(|id| format!(" {id}"))
                .unwrap_or_default(),
        ))),
    }
}

/// Print a JSON value to stdout (pretty, like runc).
pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    use std::io::Write;
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Json {
        what: "output".into(),
        source: e,
    })?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    Ok(())
}
