//! Network-level verbs: VERSION (are the plugins there and do they speak the network's
//! version?), STATUS and GC (CNI 1.1, only for networks at 1.1.0 or later).
//!
//! GC first DELs cached attachments of the network that are not in the valid set (so every
//! network gets a form of GC, as libcni does), then sends GC to plugins that know it. This
//! module must never DEL an attachment the caller listed as valid.

use serde_json::{json, Value};

use super::invoke::Verb;
use super::{Attachment, Cni};
use crate::config::Network;
use crate::error::Error;

/// What one plugin answered to VERSION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginVersions {
    pub plugin: String,
    pub supported: Vec<String>,
}

impl Cni {
    /// VERSION for every plugin of `net` and every IPAM plugin its plugins delegate to.
    pub fn plugin_versions(&self, net: &Network) -> Result<Vec<PluginVersions>, Error> {
        let mut types: Vec<String> = Vec::new();
        for p in &net.plugins {
            let ipam = p
                .conf
                .get("ipam")
                .and_then(|i| i.get("type"))
                .and_then(Value::as_str);
            for t in std::iter::once(p.plugin_type.as_str()).chain(ipam) {
                if !types.iter().any(|x| x == t) {
                    types.push(t.to_string());
                }
            }
        }
        let mut out = Vec::new();
        for t in types {
            let conf = json!({ "cniVersion": net.cni_version.to_string() });
            let stdout = self.invoke(net, &t, Verb::Version, None, &conf)?;
            let bad = |why: String| Error::PluginOutput {
                network: net.name.clone(),
                plugin: t.clone(),
                command: Verb::Version.as_str(),
                why,
            };
            let v: Value = serde_json::from_slice(&stdout).map_err(|e| bad(e.to_string()))?;
            let supported = v
                .get("supportedVersions")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no \"supportedVersions\" list".into()))?
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect();
            out.push(PluginVersions {
                plugin: t,
                supported,
            });
        }
        Ok(out)
    }

    /// Check that every plugin of `net` (and its IPAM plugins) exists and supports the
    /// network's spec version. Meant for berthd's start-up, before the first ADD.
    pub fn validate(&self, net: &Network) -> Result<(), Error> {
        let want = net.cni_version.to_string();
        for pv in self.plugin_versions(net)? {
            if !pv.supported.contains(&want) {
                return Err(Error::IncompatiblePlugin {
                    network: net.name.clone(),
                    plugin: pv.plugin,
                    version: want,
                    supported: pv.supported,
                });
            }
        }
        Ok(())
    }

    /// STATUS (CNI 1.1): is every plugin ready for ADDs? Networks older than 1.1.0 have no
    /// STATUS and count as ready (there is nobody to ask).
    pub fn status(&self, net: &Network) -> Result<(), Error> {
        if !net.cni_version.has_status_and_gc() {
            return Ok(());
        }
        for plugin in &net.plugins {
            let conf = super::invoke::exec_config(net, plugin, &Default::default(), None);
            self.invoke(net, &plugin.plugin_type, Verb::Status, None, &conf)?;
        }
        Ok(())
    }

    /// GC of `net`, given every attachment `(container_id, ifname)` that is still valid on it:
    /// cached attachments of `net` not in `valid` are detached, then (CNI 1.1) every plugin
    /// gets GC with `cni.dev/valid-attachments`. Nothing happens when the network sets
    /// `disableGC`. Errors are collected, not stopped at, so one stale attachment cannot
    /// block the rest.
    pub fn gc(&self, net: &Network, valid: &[(String, String)]) -> Result<(), Error> {
        // disableGC exists for networks shared by several runtimes: nothing at all then, as
        // libcni does.
        if net.disable_gc {
            return Ok(());
        }
        let mut errors = Vec::new();
        let (cached, unreadable) = self.list_cached();
        errors.extend(unreadable);
        for c in cached.into_iter().filter(|c| c.network.name == net.name) {
            let a: &Attachment = &c.attachment;
            let keep = valid
                .iter()
                .any(|(id, ifname)| *id == a.container_id && *ifname == a.ifname);
            if !keep {
                if let Err(e) = self.detach(net, a) {
                    errors.push(e);
                }
            }
        }
        if net.cni_version.has_status_and_gc() {
            let list: Vec<Value> = valid
                .iter()
                .map(|(id, ifname)| json!({ "containerID": id, "ifname": ifname }))
                .collect();
            for plugin in &net.plugins {
                let mut conf = super::invoke::exec_config(net, plugin, &Default::default(), None);
                if let Some(obj) = conf.as_object_mut() {
                    obj.insert(
                        "cni.dev/valid-attachments".into(),
                        Value::Array(list.clone()),
                    );
                    // The key's name in early 1.1 drafts; libcni sends both.
                    obj.insert("cni.dev/attachments".into(), Value::Array(list.clone()));
                }
                if let Err(e) = self.invoke(net, &plugin.plugin_type, Verb::Gc, None, &conf) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Gc {
                network: net.name.clone(),
                errors,
            })
        }
    }
}
