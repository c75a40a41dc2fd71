//! state.json load/save, status refresh and verb guards.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::cgroups::CgroupManager;
use crate::error::{Error, Result};
use crate::utils;

use super::{EXEC_FIFO, STATE_FILE};

/// A container's lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// create is running.
    Creating,
    /// init waits on the exec fifo.
    Created,
    /// the user process runs.
    Running,
    /// frozen.
    Paused,
    /// init is gone.
    Stopped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What state.json holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// Container id.
    pub id: String,
    /// Host pid of init (0 while creating).
    pub pid: i32,
    /// Init's start time (clock ticks) to detect pid reuse.
    pub init_start_time: u64,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Absolute rootfs path.
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339 nanos.
    pub created: String,
    /// Spec annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The container's cgroup.
    pub cgroup: CgroupManager,
    /// The spec the container was created from (exec and hooks use it).
    pub config: Spec,
    /// `create` bound the rootfs onto itself in the caller's mount namespace (a container
    /// without one of its own); `delete` detaches it with everything mounted below.
    #[serde(default)]
    pub rootfs_bound: bool,
}

/// A container loaded from (or about to be written to) its state directory.
#[derive(Debug)]
pub struct Container {
    /// `<root>/<id>`.
    pub dir: PathBuf,
    /// The saved state.
    pub saved: Saved,
    /// Status computed by `refresh`.
    pub status: Status,
}

impl Container {
    /// The state directory of `id` under `root`.
    pub fn dir_of(root: &Path, id: &str) -> PathBuf {
        root.join(id)
    }

    /// Load a container and compute its current status.
    pub fn load(root: &Path, id: &str) -> Result<Self> {
        utils::validate_id(id)?;
        let dir = Self::dir_of(root, id);
        let path = dir.join(STATE_FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotExist(id.to_string()))
            }
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let saved: Saved = serde_json::from_slice(&data).map_err(|e| Error::Json {
            what: path.display().to_string(),
            source: e,
        })?;
        let mut c = Container {
            dir,
            saved,
            status: Status::Creating,
        };
        c.refresh();
        Ok(c)
    }

    /// Recompute the status from init's /proc entry, the exec fifo and the freezer. An
    /// init that has exited is stopped even before it is a zombie (see
    /// [`utils::pid_exited`]).
    pub fn refresh(&mut self) {
        self.status = if self.saved.pid <= 0 {
            Status::Creating
        } else if utils::pid_exited(self.saved.pid, self.saved.init_start_time) {
            Status::Stopped
        } else if self.dir.join(EXEC_FIFO).exists() {
            Status::Created
        } else if self.saved.cgroup.is_frozen().unwrap_or(false) {
            Status::Paused
        } else {
            Status::Running
        };
    }

    /// Write state.json.
    pub fn save(&self) -> Result<()> {
        let data = serde_json::to_vec(&self.saved).map_err(|e| Error::Json {
            what: "state".into(),
            source: e,
        })?;
        utils::write_atomic(&self.dir.join(STATE_FILE), &data)
    }

    /// The exec fifo path.
    pub fn fifo(&self) -> PathBuf {
        self.dir.join(EXEC_FIFO)
    }

    fn guard(&self, op: &'static str, ok: &[Status]) -> Result<()> {
        if ok.contains(&self.status) {
            return Ok(());
        }
        // Say why: a stopped container's process has exited (maybe before anyone
        // started it); a running one is still running.
        let why = match self.status {
            Status::Stopped if self.saved.pid > 0 => {
                format!(": its process (pid {}) has exited", self.saved.pid)
            }
            Status::Running | Status::Paused => {
                format!(": its process (pid {}) is still running", self.saved.pid)
            }
            _ => String::new(),
        };
        Err(Error::BadStatus {
            op,
            id: self.saved.id.clone(),
            status: self.status.to_string(),
            why,
        })
    }

    /// start needs a created container.
    pub fn can_start(&self) -> Result<()> {
        self.guard("start", &[Status::Created])
    }
    /// kill needs a live init.
    pub fn can_kill(&self) -> Result<()> {
        self.guard("kill", &[Status::Created, Status::Running, Status::Paused])
    }
    /// delete without --force needs a stopped (or never-started) container.
    pub fn can_delete(&self) -> Result<()> {
        self.guard(
            "delete",
            &[Status::Stopped, Status::Created, Status::Creating],
        )
    }
    /// exec needs a running container (or a paused one with `--ignore-paused`).
    pub fn can_exec(&self, ignore_paused: bool) -> Result<()> {
        if ignore_paused {
            self.guard("exec", &[Status::Running, Status::Paused])
        } else {
            self.guard("exec", &[Status::Running])
        }
    }
    /// pause needs a running (or created) container.
    pub fn can_pause(&self) -> Result<()> {
        self.guard("pause", &[Status::Running, Status::Created])
    }
    /// resume needs a paused container.
    pub fn can_resume(&self) -> Result<()> {
        self.guard("resume", &[Status::Paused])
    }

    /// The OCI state document (runc `state` output and hook stdin).
    pub fn oci_state(&self) -> serde_json::Value {
        let pid = if self.status == Status::Stopped {
            0
        } else {
            self.saved.pid
        };
        serde_json::json!({
            "ociVersion": self.saved.config.version(),
            "id": self.saved.id,
            "pid": pid,
            "status": self.status.to_string(),
            "bundle": self.saved.bundle,
            "rootfs": self.saved.rootfs,
            "created": self.saved.created,
            "owner": "",
            "annotations": self.saved.annotations,
        })
    }

    /// Hook state for a given status (the OCI `state` shape). The pid is the init's host
    /// pid while it lives; a stopped container's state has none (the spec requires it only
    /// for created and running; runc omits it too): the pid of a dead process may already
    /// name another one.
    pub fn hook_state(&self, status: Status) -> String {
        let mut v = self.oci_state();
        v["status"] = serde_json::Value::String(status.to_string());
        match (status, v.as_object_mut()) {
            (Status::Stopped, Some(o)) => {
                o.remove("pid");
            }
            _ => v["pid"] = serde_json::Value::from(self.saved.pid),
        }
        v.to_string()
    }

    /// Remove the state directory.
    pub fn remove_dir(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
