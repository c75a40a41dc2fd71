//! `delete [--force]`: remove a stopped (or created) container: kill what is
//! left, remove its cgroup and state, run poststop hooks. Refuses a running
//! container without --force.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::container::{Container, Status};
use crate::error::{Error, Result};
use crate::{hooks, logging, utils};

/// Delete container `id`.
pub fn run(root: &Path, id: &str, force: bool) -> Result<()> {
    let c = match Container::load(root, id) {
        Ok(c) => c,
        Err(Error::NotExist(_)) if force => return Ok(()),
        Err(e) => return Err(e),
    };
    if !force {
        c.can_delete()?;
    }
    destroy(&c)
}

/// Kill every process, wait for init, remove cgroup and state, run poststop.
pub fn destroy(c: &Container) -> Result<()> {
    // A stopped container without a pid namespace of its own may still have processes in
    // its cgroup (exec'd ones outlive init): kill them too, as runc 1.1 does, or the cgroup
    // cannot be removed. With its own pid namespace the cgroup is empty by now.
    let leftovers = c.saved.cgroup.pids().unwrap_or_default();
    for p in &leftovers {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    if c.status != Status::Stopped
        && c.saved.pid > 0
        && utils::pid_alive(c.saved.pid, Some(c.saved.init_start_time))
    {
        let _ = kill(Pid::from_raw(c.saved.pid), Signal::SIGKILL);
    }
    if c.status == Status::Paused || !leftovers.is_empty() {
        let _ = c.saved.cgroup.thaw();
    }
    if c.status != Status::Stopped {
        let deadline = Instant::now() + Duration::from_secs(10);
        // Until init is a zombie (or gone): once delete returns, nothing of the container
        // runs, as runc's delete --force promises.
        while c.saved.pid > 0 && utils::pid_alive(c.saved.pid, Some(c.saved.init_start_time)) {
            if Instant::now() > deadline {
                return Err(Error::Init(format!(
                    "container {} init {} did not die",
                    c.saved.id, c.saved.pid
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    c.saved.cgroup.destroy()?;
    if c.saved.rootfs_bound {
        crate::rootfs::detach_shared_rootfs(&c.saved.rootfs)?;
    }
    c.remove_dir();
    let h = c.saved.config.hooks().as_ref();
    if let Err(e) = hooks::run(
        "poststop",
        h.and_then(|h| h.poststop().as_ref()),
        &c.hook_state(Status::Stopped),
    ) {
        logging::warn(&e.to_string());
    }
    Ok(())
}
