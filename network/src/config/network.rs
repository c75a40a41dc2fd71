//! One CNI network: a configuration list parsed and validated as the CNI spec (section 1) says.
//!
//! This module only reads and checks JSON; it must never execute a plugin or touch the host.
//! Plugin-specific keys are kept exactly as written (the spec says runtimes must preserve
//! unknown fields).

use std::path::Path;

use serde_json::{Map, Value};

use super::ConfigError;
use crate::version::{CniVersion, SUPPORTED_VERSIONS};

/// A network configuration list, validated, with the spec version Berth will use for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub name: String,
    /// The version plugins are driven at: `cniVersion`, or the highest entry of `cniVersions`
    /// (CNI 1.1) that Berth supports.
    pub cni_version: CniVersion,
    /// `disableCheck`: CHECK is then a no-op that succeeds, as the spec requires.
    pub disable_check: bool,
    /// `disableGC` (CNI 1.1): GC must not be sent to this network's plugins.
    pub disable_gc: bool,
    /// The chain, in ADD order.
    pub plugins: Vec<PluginConf>,
    /// Where the config came from (a file path, or a description): error messages name it.
    pub origin: String,
    /// The list as JSON (a single-plugin `.conf` already wrapped), cached with each attachment
    /// so a DEL after a config change or removal still runs the chain that was ADDed.
    conflist: Value,
}

/// One plugin of a chain: its `type` (the executable's name) and its configuration object.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    pub plugin_type: String,
    pub conf: Map<String, Value>,
}

impl PluginConf {
    /// Capabilities this plugin declares with `"capabilities": {"name": true}`.
    pub fn capabilities(&self) -> impl Iterator<Item = &str> {
        self.conf
            .get("capabilities")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(_, v)| v.as_bool() == Some(true))
            .map(|(k, _)| k.as_str())
    }
}

impl Network {
    /// Parse a `.conflist` document.
    pub fn from_conflist_bytes(bytes: &[u8], origin: &str) -> Result<Network, ConfigError> {
        let v = parse_json(bytes, origin)?;
        Network::from_conflist_value(v, origin)
    }

    /// Parse a single-plugin `.conf`/`.json` document and wrap it into a one-plugin list.
    pub fn from_conf_bytes(bytes: &[u8], origin: &str) -> Result<Network, ConfigError> {
        let v = parse_json(bytes, origin)?;
        let invalid = |why: String| ConfigError::Invalid {
            origin: origin.to_string(),
            why,
        };
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("the document is not a JSON object".into()))?;
        if obj.contains_key("plugins") {
            return Err(invalid(
                "has a \"plugins\" list: a configuration list belongs in a *.conflist file".into(),
            ));
        }
        let mut list = Map::new();
        for key in [
            "cniVersion",
            "cniVersions",
            "name",
            "disableCheck",
            "disableGC",
        ] {
            if let Some(val) = obj.get(key) {
                list.insert(key.into(), val.clone());
            }
        }
        list.insert("plugins".into(), Value::Array(vec![v.clone()]));
        Network::from_conflist_value(Value::Object(list), origin)
    }

    /// Validate a configuration list given as JSON.
    pub fn from_conflist_value(v: Value, origin: &str) -> Result<Network, ConfigError> {
        let invalid = |why: String| ConfigError::Invalid {
            origin: origin.to_string(),
            why,
        };
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("the document is not a JSON object".into()))?;

        let name = match obj.get("name") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(invalid("\"name\" is not a string".into())),
            None => return Err(invalid("\"name\" is missing".into())),
        };
        check_network_name(&name).map_err(invalid)?;

        let cni_version = pick_version(obj).map_err(invalid)?;
        let disable_check = flag(obj, "disableCheck").map_err(invalid)?;
        let disable_gc = flag(obj, "disableGC").map_err(invalid)?;

        let list = match obj.get("plugins") {
            Some(Value::Array(a)) => a,
            Some(_) => return Err(invalid("\"plugins\" is not a list".into())),
            None => return Err(invalid("\"plugins\" is missing".into())),
        };
        if list.is_empty() {
            return Err(invalid("\"plugins\" is empty".into()));
        }
        let mut plugins = Vec::with_capacity(list.len());
        for (i, p) in list.iter().enumerate() {
            let conf = p
                .as_object()
                .ok_or_else(|| invalid(format!("plugins[{i}] is not a JSON object")))?;
            let plugin_type = match conf.get("type") {
                Some(Value::String(t)) => t.clone(),
                Some(_) => return Err(invalid(format!("plugins[{i}].type is not a string"))),
                None => return Err(invalid(format!("plugins[{i}] has no \"type\""))),
            };
            check_plugin_type(&plugin_type)
                .map_err(|why| invalid(format!("plugins[{i}].type {plugin_type:?} {why}")))?;
            match conf.get("capabilities") {
                None | Some(Value::Object(_)) => {}
                Some(_) => {
                    return Err(invalid(format!(
                        "plugins[{i}] ({plugin_type}): \"capabilities\" is not an object"
                    )))
                }
            }
            if let Some(ipam) = conf.get("ipam") {
                match ipam.get("type") {
                    Some(Value::String(t)) => check_plugin_type(t)
                        .map_err(|why| invalid(format!("plugins[{i}].ipam.type {t:?} {why}")))?,
                    _ => {
                        return Err(invalid(format!(
                            "plugins[{i}] ({plugin_type}): \"ipam\" has no \"type\" string"
                        )))
                    }
                }
            }
            plugins.push(PluginConf {
                plugin_type,
                conf: conf.clone(),
            });
        }
        Ok(Network {
            name,
            cni_version,
            disable_check,
            disable_gc,
            plugins,
            origin: origin.to_string(),
            conflist: v,
        })
    }

    /// Read and validate one file, by its extension (`.conflist`, or `.conf`/`.json`).
    pub fn from_file(path: &Path) -> Result<Network, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = path.display().to_string();
        match path.extension().and_then(|e| e.to_str()) {
            Some("conflist") => Network::from_conflist_bytes(&bytes, &origin),
            _ => Network::from_conf_bytes(&bytes, &origin),
        }
    }

    /// The configuration list as JSON (a `.conf` file already wrapped into a list).
    pub fn conflist(&self) -> &Value {
        &self.conflist
    }
}

fn parse_json(bytes: &[u8], origin: &str) -> Result<Value, ConfigError> {
    serde_json::from_slice(bytes).map_err(|source| ConfigError::Json {
        origin: origin.to_string(),
        source,
    })
}

/// The spec's rule for network names; it also keeps them safe as a cache directory name.
pub(crate) fn check_network_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("\"name\" is empty".into());
    }
    if name.len() > 200 {
        return Err(format!("\"name\" is {} bytes long (max 200)", name.len()));
    }
    let ok_first = name.as_bytes()[0].is_ascii_alphanumeric();
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok_first || !ok_rest {
        return Err(format!(
            "\"name\" {name:?} must start with a letter or digit and contain only letters, \
             digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

/// Plugin types are executable names looked up in the plugin dirs: never a path.
fn check_plugin_type(t: &str) -> Result<(), &'static str> {
    if t.is_empty() {
        return Err("is empty");
    }
    if t == "." || t == ".." || t.contains('/') || t.contains('\\') || t.contains('\0') {
        return Err("is not a plain executable name");
    }
    Ok(())
}

/// A boolean flag, also accepted as the strings "true"/"false" (libcni accepts both).
fn flag(obj: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(format!("\"{key}\" is not a boolean: {other}")),
    }
}

/// `cniVersion`, or the highest supported entry of `cniVersions` (CNI 1.1).
fn pick_version(obj: &Map<String, Value>) -> Result<CniVersion, String> {
    let supported = SUPPORTED_VERSIONS.join(", ");
    let single = match obj.get("cniVersion") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err("\"cniVersion\" is not a string".into()),
    };
    let parse = |s: &str| -> Result<CniVersion, String> {
        CniVersion::parse(s).ok_or_else(|| format!("cniVersion {s:?} is not a version"))
    };
    if let Some(list) = obj.get("cniVersions") {
        let list = list
            .as_array()
            .ok_or("\"cniVersions\" is not a list of strings")?;
        let mut best: Option<CniVersion> = None;
        for v in list {
            let s = v
                .as_str()
                .ok_or("\"cniVersions\" is not a list of strings")?;
            let v = parse(s)?;
            if v.is_supported() && best.is_none_or(|b| v > b) {
                best = Some(v);
            }
        }
        if let Some(b) = best {
            return Ok(b);
        }
        if single.is_none() {
            return Err(format!(
                "none of \"cniVersions\" is supported by Berth ({supported})"
            ));
        }
    }
    let s = single.ok_or("\"cniVersion\" is missing")?;
    let v = parse(s)?;
    if !v.is_supported() {
        return Err(format!(
            "cniVersion {s} is not supported by Berth ({supported})"
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: Value) -> Result<Network, ConfigError> {
        Network::from_conflist_value(v, "test.conflist")
    }

    #[test]
    fn valid_list() {
        let n = list(serde_json::json!({
            "cniVersion": "1.0.0", "name": "a-b_c.d", "disableCheck": "true",
            "plugins": [{"type": "bridge", "ipam": {"type": "host-local"}},
                        {"type": "portmap", "capabilities": {"portMappings": true, "x": false}}]
        }))
        .expect("test setup");
        assert_eq!(n.name, "a-b_c.d");
        assert!(n.disable_check);
        assert!(!n.disable_gc);
        assert_eq!(
            n.plugins[1].capabilities().collect::<Vec<_>>(),
            ["portMappings"]
        );
    }

    #[test]
    fn cni_versions_picks_highest_supported() {
        let n = list(serde_json::json!({
            "cniVersion": "1.0.0", "cniVersions": ["0.4.0", "1.1.0", "9.0.0"], "name": "n",
            "plugins": [{"type": "x"}]
        }))
        .expect("test setup");
        assert_eq!(n.cni_version.to_string(), "1.1.0");
    }

    #[test]
    fn invalid_lists_say_why() {
        let cases = [
            (serde_json::json!([]), "not a JSON object"),
            (
                serde_json::json!({"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}),
                "\"name\" is missing",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "-x", "plugins": [{"type": "x"}]}),
                "must start",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "a/b", "plugins": [{"type": "x"}]}),
                "must start",
            ),
            (
                serde_json::json!({"name": "n", "plugins": [{"type": "x"}]}),
                "\"cniVersion\" is missing",
            ),
            (
                serde_json::json!({"cniVersion": "0.2.0", "name": "n", "plugins": [{"type": "x"}]}),
                "not supported",
            ),
            (
                serde_json::json!({"cniVersion": "one", "name": "n", "plugins": [{"type": "x"}]}),
                "not a version",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n"}),
                "\"plugins\" is missing",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "plugins": []}),
                "\"plugins\" is empty",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"x": 1}]}),
                "plugins[0] has no \"type\"",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../x"}]}),
                "not a plain executable",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "b", "ipam": {}}]}),
                "\"ipam\" has no",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "disableCheck": 3, "plugins": [{"type": "x"}]}),
                "not a boolean",
            ),
        ];
        for (v, want) in cases {
            let e = list(v.clone()).expect_err("list should fail").to_string();
            assert!(e.contains(want), "{v}: {e}");
            assert!(e.contains("test.conflist"), "{v}: {e}");
        }
    }

    #[test]
    fn single_conf_is_wrapped() {
        let n = Network::from_conf_bytes(
            br#"{"cniVersion": "0.4.0", "name": "single", "type": "bridge", "bridge": "b0"}"#,
            "x.conf",
        )
        .expect("test setup");
        assert_eq!(n.plugins.len(), 1);
        assert_eq!(n.plugins[0].conf["bridge"], "b0");
        assert_eq!(n.conflist()["plugins"][0]["type"], "bridge");
        let e = Network::from_conf_bytes(
            br#"{"name": "x", "cniVersion": "1.0.0", "plugins": []}"#,
            "y.conf",
        )
        .expect_err("should fail");
        assert!(e.to_string().contains("*.conflist"), "{e}");
    }
}
