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
    /// Largest manifest or index a pull fetches, in bytes (containerd's limit: 4 MiB).
    pub max_manifest_size: u64,
    /// Largest uncompressed layer (tar stream) berthd unpacks, in bytes, on pulls and Diff.Apply
    /// (0: no limit). Bounds what a decompression bomb can write.
    pub max_unpacked_layer_size: u64,
    /// Container networks (the `[network]` table).
    pub network: NetworkConfig,
    /// Kubernetes' CRI (the `[cri]` table).
    pub cri: CriConfig,
}

/// The `[cri]` table: whether berthd serves the CRI, and what its pods are made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriConfig {
    /// Serve `runtime.v1` on berthd's socket.
    pub enabled: bool,
    /// The pause image of every pod sandbox.
    pub sandbox_image: String,
    /// The network pods are attached to; None = `[network] default_network`.
    pub network: Option<String>,
    /// hosts.toml directory for the kubelet's pulls (mirrors, CAs, credentials); None = `registry_hosts_dir`.
    pub registry_config_path: Option<PathBuf>,
    /// Address of the streaming server behind Exec/Attach/PortForward (loopback: the kubelet is local).
    pub stream_address: String,
    /// Streaming server port (0: any free port).
    pub stream_port: u16,
}

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            enabled: false,
            sandbox_image: "registry.k8s.io/pause:3.10".to_string(),
            network: None,
            registry_config_path: None,
            stream_address: "127.0.0.1".to_string(),
            stream_port: 0,
        }
    }
}

/// The `[network]` table: where CNI network configs and plugins are, where attachment state goes, and the
/// default network written at first use when the conf dir holds none. The berth-net [`NetConfig`] fields,
/// except that the cache and IPAM dirs default under the state dir (they must share its lifetime: a reboot
/// clears them together with every netns and veth).
///
/// [`NetConfig`]: berth_net::NetConfig
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// CNI network configs (`*.conflist`, `*.conf`, `*.json`).
    pub conf_dir: PathBuf,
    /// Plugin executables are looked up here, in order.
    pub plugin_dirs: Vec<PathBuf>,
    /// Attachment cache; None = `<state>/net/cache`.
    pub cache_dir: Option<PathBuf>,
    /// host-local IPAM's `dataDir` in the default network; None = `<state>/net/ipam`.
    pub ipam_data_dir: Option<PathBuf>,
    /// The network written when the conf dir holds none.
    pub default_network: String,
    /// Its bridge (at most 15 bytes).
    pub default_bridge: String,
    /// Its subnet.
    pub default_subnet: berth_net::IpNet,
    /// Longest run of one plugin, in seconds, before it is killed.
    pub plugin_timeout: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        let n = berth_net::NetConfig::default();
        NetworkConfig {
            conf_dir: n.conf_dir,
            plugin_dirs: n.plugin_dirs,
            cache_dir: None,
            ipam_data_dir: None,
            default_network: n.default_network,
            default_bridge: n.default_bridge,
            default_subnet: n.default_subnet,
            plugin_timeout: n.plugin_timeout.as_secs(),
        }
    }
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
            max_manifest_size: 4 << 20,
            max_unpacked_layer_size: 32 << 30,
            network: NetworkConfig::default(),
            cri: CriConfig::default(),
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
        if self.max_manifest_size < 1024 {
            return Err(ConfigError::Invalid(
                "max_manifest_size must be at least 1024 bytes".into(),
            ));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::Invalid("max_batch must be at least 1".into()));
        }
        let net = self.net_config();
        berth_net::default_conflist(&net)
            .map_err(|e| ConfigError::Invalid(format!("[network]: {e}")))?;
        if self.network.plugin_timeout == 0 {
            return Err(ConfigError::Invalid(
                "[network] plugin_timeout must be at least 1 second".into(),
            ));
        }
        if self.network.plugin_dirs.is_empty() {
            return Err(ConfigError::Invalid(
                "[network] plugin_dirs must name at least one directory".into(),
            ));
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

    /// The event journal's directory (in the state dir: it survives berthd restarts, not reboots, like the
    /// containers and shims whose events it keeps).
    pub fn journal_db_path(&self) -> PathBuf {
        self.state.join("events")
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

    /// berth-net's settings: the `[network]` table with the cache and IPAM dirs resolved against the state dir.
    pub fn net_config(&self) -> berth_net::NetConfig {
        let n = &self.network;
        berth_net::NetConfig {
            conf_dir: n.conf_dir.clone(),
            plugin_dirs: n.plugin_dirs.clone(),
            cache_dir: n
                .cache_dir
                .clone()
                .unwrap_or_else(|| self.state.join("net/cache")),
            ipam_data_dir: n
                .ipam_data_dir
                .clone()
                .unwrap_or_else(|| self.state.join("net/ipam")),
            default_network: n.default_network.clone(),
            default_bridge: n.default_bridge.clone(),
            default_subnet: n.default_subnet,
            plugin_timeout: std::time::Duration::from_secs(n.plugin_timeout),
        }
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
    fn network_dirs_follow_the_state_dir() {
        let mut c = Config {
            state: PathBuf::from("/x/state"),
            ..Config::default()
        };
        let n = c.net_config();
        assert_eq!(n.cache_dir, PathBuf::from("/x/state/net/cache"));
        assert_eq!(n.ipam_data_dir, PathBuf::from("/x/state/net/ipam"));
        assert_eq!(n.conf_dir, PathBuf::from("/etc/berth/net.d"));
        c.network.ipam_data_dir = Some(PathBuf::from("/var/lib/ipam"));
        assert_eq!(c.net_config().ipam_data_dir, PathBuf::from("/var/lib/ipam"));
        let bad = "[network]\ndefault_bridge = \"a-bridge-name-too-long\"\n";
        let e = Config::from_toml(bad, Path::new("x")).expect_err("refused");
        assert!(e.to_string().contains("default bridge"), "{e}");
        let bad = "[network]\ndefault_subnet = \"10.0.0.0\"\n";
        assert!(Config::from_toml(bad, Path::new("x")).is_err());
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
