//! `exec`: run another process in a running container: join its namespaces and
//! cgroup, apply the process's security settings, and (unless --detach) wait and
//! exit with its status.

use std::path::Path;

use oci_spec::runtime::Process;

use crate::caps::CapMasks;
use crate::cli::ExecArgs;
use crate::container::Container;
use crate::error::{Error, Result};
use crate::namespaces::NsPlan;
use crate::process::channel::Msg;
use crate::process::{self, ChainSpec};
use crate::{console, seccomp, utils};

/// Exec; returns the exit code (0 when detached).
pub fn run(root: &Path, a: &ExecArgs) -> Result<i32> {
    let c = Container::load(root, &a.id)?;
    c.can_exec(a.ignore_paused)?;
    if !a.detach {
        super::run::block_forwarded()?;
    }
    let spec = &c.saved.config;
    let process = build_process(&c, a)?;
    crate::lsm::check_apparmor(process.apparmor_profile().as_deref()).map_err(Error::Usage)?;
    let cgroup = match a.cgroup.as_slice() {
        [] => c.saved.cgroup.clone(),
        subs => c.saved.cgroup.with_sub_cgroups(subs)?,
    };
    let mut caps = CapMasks::from_spec(process.capabilities().as_ref());
    caps.add(&a.cap)?;
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Some(seccomp::compile(s)?),
        None => None,
    };
    let terminal = process.terminal().unwrap_or(false);
    // In the foreground without --console-socket we relay the terminal ourselves.
    let mut relay_end = None;
    let console = match (&a.console_socket, terminal) {
        (Some(p), true) => Some(console::connect(p)?),
        (None, true) if !a.detach => {
            let (ours, theirs) = crate::ttyproxy::pair()?;
            relay_end = Some(ours);
            Some(theirs)
        }
        (None, true) => {
            return Err(Error::Usage(
                "--tty with --detach requires --console-socket".into(),
            ))
        }
        (_, false) => None,
    };
    let cs = ChainSpec {
        spec,
        process: &process,
        caps,
        ns: NsPlan::join_all(spec, c.saved.pid),
        seccomp,
        console,
        preserve_fds: a.preserve_fds,
        init: None,
    };
    let (pid, ch) = process::spawn(&cs, &cgroup, "", "")?;
    drop(cs);
    // EOF means the process exec'd (the channel is close-on-exec).
    match ch.recv() {
        Ok(None) => {}
        Ok(Some(Msg::Error(e))) => {
            let _ = super::run::wait_exit(pid);
            return Err(Error::Init(e));
        }
        Ok(Some(m)) => return Err(Error::Init(format!("unexpected {m:?}"))),
        Err(e) => return Err(e),
    }
    if let Some(p) = &a.pid_file {
        utils::write_pid_file(p, pid)?;
    }
    if a.detach {
        return Ok(0);
    }
    match relay_end {
        Some(ours) => crate::ttyproxy::Relay::receive(&ours)?.run(pid),
        None => super::run::wait_exit(pid),
    }
}

fn build_process(c: &Container, a: &ExecArgs) -> Result<Process> {
    if let Some(path) = &a.process {
        let data = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        let mut p: Process = serde_json::from_slice(&data).map_err(|e| Error::Config {
            path: path.clone(),
            msg: format!("invalid JSON: {e}"),
        })?;
        if a.tty {
            p.set_terminal(Some(true));
        }
        return Ok(p);
    }
    if a.args.is_empty() {
        return Err(Error::Usage(
            "exec: no command given (args or --process)".into(),
        ));
    }
    let mut p = c
        .saved
        .config
        .process()
        .clone()
        .ok_or_else(|| Error::Spec("process: missing".into()))?;
    p.set_args(Some(a.args.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    let mut env = p.env().clone().unwrap_or_default();
    for kv in &a.env {
        let key = kv.split('=').next().unwrap_or("");
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    p.set_env(Some(env));
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    if let Some(u) = &a.user {
        let (uid, gid) = match u.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (u.as_str(), None),
        };
        let bad = || Error::Usage(format!("--user {u:?}: expected uid[:gid] numbers"));
        let user = p.user_mut();
        user.set_uid(uid.parse().map_err(|_| bad())?);
        user.set_gid(match gid {
            Some(g) => g.parse().map_err(|_| bad())?,
            None => 0,
        });
    }
    if !a.additional_gids.is_empty() {
        p.user_mut()
            .set_additional_gids(Some(a.additional_gids.clone()));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(profile) = &a.apparmor {
        p.set_apparmor_profile(Some(profile.clone()));
    }
    if let Some(label) = &a.process_label {
        p.set_selinux_label(Some(label.clone()));
    }
    p.set_rlimits(None);
    Ok(p)
}
