//! Network configuration: berthd's network settings ([`NetConfig`]), loading CNI network
//! configs from the conf dir as libcni does, and writing the default `berth` network.
//!
//! Loading never executes a plugin. Writing is limited to one file, and only when the conf dir
//! holds no network config at all: this module must never overwrite or "fix" an
//! administrator's file.

mod network;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use network::{Network, PluginConf};

pub(crate) use network::check_network_name;

use crate::ipnet::IpNet;

/// The default subnet of the `berth` network.
///
/// Chosen to stay clear of the ranges other tools and networks commonly claim: Docker
/// (172.17.0.0/16 and the rest of 172.16.0.0/12), Podman/CNI examples (10.88.0.0/16,
/// 10.22.0.0/16), Kubernetes pod and service defaults (10.244.0.0/16, 10.96.0.0/12), libvirt
/// (192.168.122.0/24), home routers (192.168.0.0/16), and CGNAT/Tailscale (100.64.0.0/10).
pub const DEFAULT_SUBNET: &str = "10.213.0.0/16";

/// berthd's network settings; every field is a berthd flag / config key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// Where network configs are read from (`*.conflist`, `*.conf`, `*.json`).
    pub conf_dir: PathBuf,
    /// Where plugin executables are looked up, in order (also passed as `CNI_PATH`).
    pub plugin_dirs: Vec<PathBuf>,
    /// Each attachment's final ADD result and parameters, so DEL and CHECK get the right
    /// `prevResult` after a berthd restart. Keep it in the same lifetime class as
    /// `ipam_data_dir` (both on tmpfs, or both on disk), or a reboot leaks IPAM reservations.
    pub cache_dir: PathBuf,
    /// host-local IPAM's `dataDir` in the default network.
    pub ipam_data_dir: PathBuf,
    /// Name of the network written when the conf dir is empty.
    pub default_network: String,
    /// Bridge of the default network (at most 15 bytes, a Linux interface name).
    pub default_bridge: String,
    /// Subnet of the default network.
    pub default_subnet: IpNet,
    /// Longest time one plugin execution may take before it is killed.
    #[serde(with = "secs")]
    pub plugin_timeout: Duration,
}

impl Default for NetConfig {
    fn default() -> NetConfig {
        NetConfig {
            conf_dir: PathBuf::from("/etc/berth/net.d"),
            plugin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            cache_dir: PathBuf::from("/run/berth/net/cache"),
            ipam_data_dir: PathBuf::from("/run/berth/net/ipam"),
            default_network: "berth".into(),
            default_bridge: "berth0".into(),
            default_subnet: IpNet {
                addr: IpAddr::V4(std::net::Ipv4Addr::new(10, 213, 0, 0)),
                prefix: 16,
            },
            plugin_timeout: Duration::from_secs(30),
        }
    }
}

impl NetConfig {
    /// Defaults with the cache and IPAM dirs under berthd's `--state` dir
    /// (`<state>/net/cache`, `<state>/net/ipam`).
    pub fn under_state_dir(state: &Path) -> NetConfig {
        NetConfig {
            cache_dir: state.join("net/cache"),
            ipam_data_dir: state.join("net/ipam"),
            ..NetConfig::default()
        }
    }
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let n = <u64 as serde::Deserialize>::deserialize(d)?;
        Ok(Duration::from_secs(n))
    }
}

/// Why a network config could not be read, parsed or written; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read network config dir {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read network config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("network config {origin}: invalid JSON: {source}")]
    Json {
        origin: String,
        source: serde_json::Error,
    },
    #[error("network config {origin}: {why}")]
    Invalid { origin: String, why: String },
    #[error("network {name:?} is defined twice: in {first} and in {second}")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error("invalid default network settings: {0}")]
    Settings(String),
    #[error("cannot write network config {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Extensions of network config files, as libcni reads them.
const EXTENSIONS: &[&str] = &["conflist", "conf", "json"];

/// Network config files in `dir`, sorted by file name (the order CNI runtimes use). Hidden
/// files are skipped (editors and atomic writers leave them); a missing dir has none.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfigError::ReadDir {
                dir: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || path.is_dir() {
            continue;
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if EXTENSIONS.contains(&ext) {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Every network in `dir`, in file-name order. Any invalid file, or a name defined twice, is
/// an error naming the file(s): a daemon should not silently run without a network the
/// administrator configured.
pub fn load_networks(dir: &Path) -> Result<Vec<Network>, ConfigError> {
    let mut nets: Vec<Network> = Vec::new();
    for path in config_files(dir)? {
        let net = Network::from_file(&path)?;
        if let Some(first) = nets.iter().find(|n| n.name == net.name) {
            return Err(ConfigError::Duplicate {
                name: net.name.clone(),
                first: first.origin.clone(),
                second: net.origin.clone(),
            });
        }
        nets.push(net);
    }
    Ok(nets)
}

/// Like [`load_networks`], but an invalid file is skipped and reported instead of failing the
/// whole directory (a duplicate name keeps the first file, as CNI runtimes do).
pub fn load_networks_lenient(dir: &Path) -> (Vec<Network>, Vec<ConfigError>) {
    let files = match config_files(dir) {
        Ok(f) => f,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let mut nets: Vec<Network> = Vec::new();
    let mut errors = Vec::new();
    for path in files {
        match Network::from_file(&path) {
            Ok(net) => match nets.iter().find(|n| n.name == net.name) {
                Some(first) => errors.push(ConfigError::Duplicate {
                    name: net.name.clone(),
                    first: first.origin.clone(),
                    second: net.origin.clone(),
                }),
                None => nets.push(net),
            },
            Err(e) => errors.push(e),
        }
    }
    (nets, errors)
}

/// The network named `name` in `dir` (strict loading: any invalid file is an error).
pub fn find_network(dir: &Path, name: &str) -> Result<Option<Network>, ConfigError> {
    Ok(load_networks(dir)?.into_iter().find(|n| n.name == name))
}

/// The default network's conflist text for these settings.
///
/// bridge on `default_bridge` with the gateway address on the bridge (`isGateway`) but no
/// default route in the container and no masquerading (`ipMasq: false`): containers reach
/// each other and the host, nothing beyond. host-local IPAM on `default_subnet` with its
/// state in `ipam_data_dir`, no routes and no DNS. Then `portmap` (the `portMappings`
/// capability, SNAT for hairpin and localhost traffic) and `firewall` (iptables backend: lets
/// the containers' traffic through a FORWARD chain whose policy is DROP; it works without
/// firewalld). `hairpinMode` lets a container reach its own published ports.
pub fn default_conflist(cfg: &NetConfig) -> Result<String, ConfigError> {
    check_network_name(&cfg.default_network).map_err(ConfigError::Settings)?;
    crate::cni::check_ifname(&cfg.default_bridge)
        .map_err(|why| ConfigError::Settings(format!("default bridge: {why}")))?;
    let js = |s: &str| serde_json::Value::from(s).to_string();
    let subnet = cfg.default_subnet.network().to_string();
    let data_dir = cfg
        .ipam_data_dir
        .to_str()
        .ok_or_else(|| ConfigError::Settings("ipam_data_dir is not UTF-8".into()))?;
    Ok(format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": {name},
  "plugins": [
    {{
      "type": "bridge",
      "bridge": {bridge},
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{ "subnet": {subnet} }}]],
        "dataDir": {data_dir}
      }}
    }},
    {{
      "type": "portmap",
      "capabilities": {{ "portMappings": true }},
      "snat": true
    }},
    {{
      "type": "firewall",
      "backend": "iptables"
    }}
  ]
}}
"#,
        name = js(&cfg.default_network),
        bridge = js(&cfg.default_bridge),
        subnet = js(&subnet),
        data_dir = js(data_dir),
    ))
}

/// If `cfg.conf_dir` holds no network config at all, write the default network as
/// `10-<default_network>.conflist` and return its path; otherwise write nothing and return
/// `None`. Creates the conf dir when missing.
pub fn ensure_default_network(cfg: &NetConfig) -> Result<Option<PathBuf>, ConfigError> {
    let dir = &cfg.conf_dir;
    std::fs::create_dir_all(dir).map_err(|source| ConfigError::Write {
        path: dir.clone(),
        source,
    })?;
    if !config_files(dir)?.is_empty() {
        return Ok(None);
    }
    let text = default_conflist(cfg)?;
    let path = dir.join(format!("10-{}.conflist", cfg.default_network));
    // The generated text must load like any other file; refuse to write one that would not.
    Network::from_conflist_bytes(text.as_bytes(), &path.display().to_string())?;
    crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644).map_err(|source| {
        ConfigError::Write {
            path: path.clone(),
            source,
        }
    })?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_conflist_is_valid_and_has_the_settings() {
        let cfg = NetConfig {
            default_subnet: "10.213.7.9/16".parse().expect("parse"),
            ..NetConfig::default()
        };
        let text = default_conflist(&cfg).expect("default_conflist");
        let net =
            Network::from_conflist_bytes(text.as_bytes(), "default").expect("from_conflist_bytes");
        assert_eq!(net.name, "berth");
        let types: Vec<_> = net.plugins.iter().map(|p| p.plugin_type.as_str()).collect();
        assert_eq!(types, ["bridge", "portmap", "firewall"]);
        let bridge = &net.plugins[0].conf;
        assert_eq!(bridge["bridge"], "berth0");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.213.0.0/16");
        assert!(bridge["ipam"].get("routes").is_none());
        assert_eq!(bridge["ipam"]["dataDir"], "/run/berth/net/ipam");
        assert!(net.plugins[1].capabilities().any(|c| c == "portMappings"));
    }

    #[test]
    fn default_settings_are_checked() {
        let cfg = NetConfig {
            default_bridge: "a-bridge-name-too-long".into(),
            ..NetConfig::default()
        };
        let e = default_conflist(&cfg)
            .expect_err("default_conflist should fail")
            .to_string();
        assert!(e.contains("default bridge"), "{e}");
    }

    #[test]
    fn net_config_round_trips_through_serde() {
        let cfg = NetConfig::under_state_dir(Path::new("/run/x"));
        assert_eq!(cfg.cache_dir, Path::new("/run/x/net/cache"));
        let text = serde_json::to_string(&cfg).expect("to_string");
        assert!(text.contains("\"plugin_timeout\":30"), "{text}");
        let back: NetConfig = serde_json::from_str(&text).expect("from_str");
        assert_eq!(back, cfg);
        let partial: NetConfig =
            serde_json::from_str(r#"{"default_bridge": "b1"}"#).expect("from_str");
        assert_eq!(partial.default_bridge, "b1");
        assert_eq!(partial.default_network, "berth");
    }
}
