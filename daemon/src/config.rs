//! berthd configuration: the TOML file (`/etc/berth/config.toml` by default), its built-in defaults, and the
//! paths derived from it.
//!
//! The default configuration text lives in `deploy/config.toml` (every key, its default and a comment) and is
//! compiled in, so `berthd config default` prints exactly that file and a unit test checks it parses back to
//! [`Config::default`]. This module must never touch the filesystem except to read a config file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default configuration, commented; printed by `berthd config default`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../deploy/config.toml");

/// Where berthd looks for its config when `--config` is not given (a missing file there is fine).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";

/// Errors reading or parsing a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (text or json)")),
        }
    }
}

/// berthd's configuration. Every key is documented with its default in `deploy/config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent data: `meta.redb`, content, snapshots (created 0700).
    pub root: PathBuf,
    /// Runtime state: the socket, shim sockets, task bundles (created 0711).
    pub state: PathBuf,
    /// The gRPC unix socket (created 0660).
    pub address: PathBuf,
    /// tracing filter (`info`, `debug`, `berth_daemon=trace`, ...).
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// berth-shim binary; None = `berth-shim` next to the berthd executable, else from PATH.
    pub shim_binary: Option<PathBuf>,
    /// OCI runtime binary; None = `berth-runc` next to berthd if it exists, else `runc` from PATH.
    pub runtime_binary: Option<PathBuf>,
    /// oom_score_adj berthd sets for itself (containerd uses -999).
    pub oom_score_adj: i32,
    /// oom_score_adj for shims (above berthd's, below containers').
    pub shim_oom_score_adj: i32,
    /// Events kept in the journal; older ones are dropped and cursors before them get OutOfRange.
    pub event_retention: u64,
    /// Per-subscriber queue length; a subscriber whose queue is full is cut off.
    pub subscriber_queue: usize,
    /// Most events or metadata writes committed in one redb transaction (group commit).
    pub max_batch: usize,
    /// Failpoints, `name=action;...` (panic, exit, sleep(ms), off); BERTH_FAILPOINTS overrides.
    pub failpoints: String,
    /// Seconds an ingest (an interrupted write) that no lease holds may sit idle before GC removes it.
    pub ingest_expiry_secs: u64,
    /// containerd-style registry hosts directory (`<dir>/<host>/hosts.toml`: mirrors, CAs, credentials)
    /// for server-side pulls; a Transfer request's `host_dir` overrides it.
    pub registry_hosts_dir: PathBuf,
    /// Layer downloads one server-side pull runs at once.
    pub max_concurrent_downloads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/berth"),
            state: PathBuf::from("/run/berth"),
            address: PathBuf::from("/run/berth/berth.sock"),
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
            shim_binary: None,
            runtime_binary: None,
            oom_score_adj: -999,
            shim_oom_score_adj: -998,
            event_retention: 100_000,
            subscriber_queue: 2048,
            max_batch: 1024,
            failpoints: String::new(),
            ingest_expiry_secs: 3600,
            registry_hosts_dir: PathBuf::from("/etc/berth/certs.d"),
            max_concurrent_downloads: 3,
        }
    }
}

impl Config {
    /// Parse a config from TOML text.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Check value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.event_retention == 0 {
            return Err(ConfigError::Invalid(
                "event_retention must be at least 1".into(),
            ));
        }
        if self.subscriber_queue == 0 {
            return Err(ConfigError::Invalid(
                "subscriber_queue must be at least 1".into(),
            ));
        }
        if self.max_concurrent_downloads == 0 {
            return Err(ConfigError::Invalid(
                "max_concurrent_downloads must be at least 1".into(),
            ));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::Invalid("max_batch must be at least 1".into()));
        }
        if !(-1000..=1000).contains(&self.oom_score_adj)
            || !(-1000..=1000).contains(&self.shim_oom_score_adj)
        {
            return Err(ConfigError::Invalid(
                "oom_score_adj values must be within -1000..=1000".into(),
            ));
        }
        Ok(())
    }

    /// The metadata database file (on the root dir's disk: survives reboots).
    pub fn meta_db_path(&self) -> PathBuf {
        self.root.join("meta.redb")
    }

    /// The event journal database (in the state dir, tmpfs on a normal host: survives berthd restarts, not
    /// reboots, like the containers and shims whose events it keeps).
    pub fn journal_db_path(&self) -> PathBuf {
        self.state.join("events.redb")
    }

    /// How long an unleased ingest may sit idle before GC removes it.
    pub fn ingest_expiry(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.ingest_expiry_secs)
    }

    /// The single-instance lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// A task's state directory (its bundle): `<state>/tasks/<ns>/<id>`.
    pub fn task_dir(&self, ns: &str, id: &str) -> PathBuf {
        self.state.join("tasks").join(ns).join(id)
    }

    /// The berth-shim binary to run.
    pub fn shim_binary_path(&self) -> PathBuf {
        if let Some(p) = &self.shim_binary {
            return p.clone();
        }
        beside_self("berth-shim").unwrap_or_else(|| PathBuf::from("berth-shim"))
    }

    /// The OCI runtime binary shims drive.
    pub fn runtime_binary_path(&self) -> PathBuf {
        if let Some(p) = &self.runtime_binary {
            return p.clone();
        }
        beside_self("berth-runc").unwrap_or_else(|| PathBuf::from("runc"))
    }
}

/// `name` in the directory of the running executable, if such a file exists.
fn beside_self(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_text_parses_to_default() {
        let parsed = Config::from_toml(DEFAULT_CONFIG_TOML, Path::new("deploy/config.toml"))
            .expect("default config parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(Config::from_toml("nope = 1\n", Path::new("x")).is_err());
    }

    #[test]
    fn task_dir_layout() {
        let c = Config::default();
        assert_eq!(
            c.task_dir("ns", "id"),
            PathBuf::from("/run/berth/tasks/ns/id")
        );
    }
}
