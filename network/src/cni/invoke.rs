//! One plugin invocation as section 3 of the CNI spec derives it: the execution config
//! (`name`, `cniVersion`, `runtimeConfig` from declared capabilities, `prevResult`, no
//! `capabilities`), the `CNI_*` environment, and the success or error result turned into ours.
//!
//! This module runs exactly the plugin it is asked to and interprets its output; it must
//! never decide the order of a chain or retry anything (that is the caller's job).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::Cni;
use crate::config::{Network, PluginConf};
use crate::error::{Error, PluginFailure};
use crate::exec::{self, RunError};

/// A CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Verb {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
            Verb::Check => "CHECK",
            Verb::Version => "VERSION",
            Verb::Status => "STATUS",
            Verb::Gc => "GC",
        }
    }
}

/// The per-attachment `CNI_*` parameters (absent for VERSION, STATUS and GC).
pub(crate) struct Params<'a> {
    pub container_id: &'a str,
    /// Empty on a DEL whose netns is gone (the spec allows it).
    pub netns: String,
    pub ifname: &'a str,
    /// `CNI_ARGS`, already joined.
    pub args: String,
}

/// The execution config for one plugin: its own config with `name` and `cniVersion` of the
/// list, the capabilities it declares and the runtime provided as `runtimeConfig`,
/// `prevResult` when given, and `capabilities` removed. Other keys pass through unaltered.
pub(crate) fn exec_config(
    net: &Network,
    plugin: &PluginConf,
    capability_args: &Map<String, Value>,
    prev_result: Option<&Value>,
) -> Value {
    let mut conf = plugin.conf.clone();
    conf.insert("name".into(), net.name.clone().into());
    conf.insert("cniVersion".into(), net.cni_version.to_string().into());
    let mut runtime = Map::new();
    for cap in plugin.capabilities() {
        if let Some(v) = capability_args.get(cap) {
            runtime.insert(cap.to_string(), v.clone());
        }
    }
    conf.remove("capabilities");
    // runtimeConfig is reserved for the runtime: never pass one through from the file.
    conf.remove("runtimeConfig");
    if !runtime.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    conf.remove("prevResult");
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    Value::Object(conf)
}

impl Cni {
    /// The executable for `plugin_type`: the first plugin dir holding it.
    pub(crate) fn find_plugin(&self, net: &Network, plugin_type: &str) -> Result<PathBuf, Error> {
        use std::os::unix::fs::PermissionsExt;
        for dir in &self.config.plugin_dirs {
            let p = dir.join(plugin_type);
            if let Ok(m) = std::fs::metadata(&p) {
                if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                    return Ok(p);
                }
            }
        }
        Err(Error::PluginNotFound {
            network: net.name.clone(),
            plugin: plugin_type.to_string(),
            dirs: self.cni_path(),
        })
    }

    /// `CNI_PATH`: the plugin dirs joined with ':'.
    pub(crate) fn cni_path(&self) -> String {
        self.config
            .plugin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Run `plugin_type` with `verb`, `params` and `config` on stdin; its stdout on success.
    pub(crate) fn invoke(
        &self,
        net: &Network,
        plugin_type: &str,
        verb: Verb,
        params: Option<&Params<'_>>,
        config: &Value,
    ) -> Result<Vec<u8>, Error> {
        let binary = self.find_plugin(net, plugin_type)?;
        let mut env: Vec<(&str, String)> = vec![
            ("CNI_COMMAND", verb.as_str().to_string()),
            ("CNI_PATH", self.cni_path()),
        ];
        if let Some(p) = params {
            env.push(("CNI_CONTAINERID", p.container_id.to_string()));
            env.push(("CNI_NETNS", p.netns.clone()));
            env.push(("CNI_IFNAME", p.ifname.to_string()));
            if !p.args.is_empty() {
                env.push(("CNI_ARGS", p.args.clone()));
            }
        }
        let stdin = serde_json::to_vec(config).unwrap_or_default();
        let t0 = std::time::Instant::now();
        let out = exec::run(&binary, &env, stdin, self.config.plugin_timeout);
        tracing::debug!(
            network = %net.name, plugin = plugin_type, verb = verb.as_str(),
            elapsed_ms = t0.elapsed().as_millis() as u64, "CNI plugin ran"
        );
        let out = match out {
            Ok(o) => o,
            Err(RunError::Spawn(source)) | Err(RunError::Wait(source)) => {
                return Err(Error::PluginSpawn {
                    network: net.name.clone(),
                    plugin: plugin_type.to_string(),
                    command: verb.as_str(),
                    source,
                })
            }
            Err(RunError::TimedOut { stderr }) => {
                return Err(Error::PluginTimeout {
                    network: net.name.clone(),
                    plugin: plugin_type.to_string(),
                    command: verb.as_str(),
                    timeout: self.config.plugin_timeout,
                    stderr: String::from_utf8_lossy(&stderr).into_owned(),
                })
            }
        };
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(plugin_failure(net, plugin_type, verb, &out))
    }
}

/// The error a failed plugin reported: its CNI error JSON (`code`, `msg`, `details`) from
/// stdout (where the spec puts it) or stderr, else its stderr text and exit status.
fn plugin_failure(net: &Network, plugin: &str, verb: Verb, out: &exec::Output) -> Error {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let parsed = [(&out.stdout, false), (&out.stderr, true)]
        .into_iter()
        .find_map(|(bytes, from_stderr)| {
            let v: Value = serde_json::from_slice(bytes).ok()?;
            let msg = v.get("msg").and_then(Value::as_str);
            let code = v.get("code").and_then(Value::as_u64);
            (msg.is_some() || code.is_some()).then(|| {
                (
                    code,
                    msg.unwrap_or("").to_string(),
                    v.get("details")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    from_stderr,
                )
            })
        });
    let status = match out.status.code() {
        Some(c) => format!("exit status {c}"),
        None => format!("{}", out.status),
    };
    match parsed {
        Some((code, msg, details, from_stderr)) => Error::PluginFailed(Box::new(PluginFailure {
            network: net.name.clone(),
            plugin: plugin.to_string(),
            command: verb.as_str(),
            code,
            msg: if msg.is_empty() { status } else { msg },
            details,
            // Do not repeat the JSON in the message when that is all stderr held.
            stderr: if from_stderr { String::new() } else { stderr },
        })),
        None => {
            let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Error::PluginFailed(Box::new(PluginFailure {
                network: net.name.clone(),
                plugin: plugin.to_string(),
                command: verb.as_str(),
                code: None,
                msg: if stdout.is_empty() {
                    status
                } else {
                    format!("{status}: {stdout}")
                },
                details: String::new(),
                stderr,
            }))
        }
    }
}

/// Parse a plugin's ADD output: a JSON object, else a [`Error::PluginOutput`].
pub(crate) fn parse_add_output(net: &Network, plugin: &str, stdout: &[u8]) -> Result<Value, Error> {
    let bad = |why: String| Error::PluginOutput {
        network: net.name.clone(),
        plugin: plugin.to_string(),
        command: Verb::Add.as_str(),
        why,
    };
    let v: Value = serde_json::from_slice(stdout).map_err(|e| {
        let text = String::from_utf8_lossy(stdout);
        let text: String = text.chars().take(200).collect();
        bad(format!("{e} in {text:?}"))
    })?;
    if !v.is_object() {
        return Err(bad("not a JSON object".into()));
    }
    Ok(v)
}

/// True when `path` is a network namespace (else DEL passes an empty `CNI_NETNS`).
pub(crate) fn netns_for_del(path: &Path) -> String {
    if crate::netns::is_netns(path) {
        path.display().to_string()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_config_follows_section_3() {
        let net = Network::from_conflist_value(
            serde_json::json!({
                "cniVersion": "1.0.0", "name": "n",
                "plugins": [{"type": "portmap", "capabilities": {"portMappings": true, "mac": false},
                             "runtimeConfig": {"stale": 1}, "snat": true, "name": "ignored"}]
            }),
            "t",
        )
        .expect("test setup");
        let mut caps = Map::new();
        caps.insert("portMappings".into(), serde_json::json!([{"hostPort": 1}]));
        caps.insert("mac".into(), "00:11:22:33:44:55".into());
        caps.insert("bandwidth".into(), serde_json::json!({}));
        let prev = serde_json::json!({"cniVersion": "1.0.0", "ips": []});
        let c = exec_config(&net, &net.plugins[0], &caps, Some(&prev));
        assert_eq!(
            c,
            serde_json::json!({
                "type": "portmap", "name": "n", "cniVersion": "1.0.0", "snat": true,
                "runtimeConfig": {"portMappings": [{"hostPort": 1}]},
                "prevResult": prev
            })
        );
        let c = exec_config(&net, &net.plugins[0], &Map::new(), None);
        assert!(c.get("runtimeConfig").is_none());
        assert!(c.get("prevResult").is_none());
    }
}
