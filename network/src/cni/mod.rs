//! Driving a network's plugin chain for one attachment: ADD (in order, `prevResult` threaded,
//! undone by a DEL of the whole chain if any plugin fails), DEL (in reverse, with the cached
//! result, idempotent, tolerant of a vanished netns), CHECK, and the cache that makes DEL and
//! CHECK right after a berthd restart.
//!
//! Synchronous: callers run these on blocking threads. Operations on one container id are
//! serialised here (the spec forbids parallel operations on one container); different
//! containers run in parallel. This module must never leave an attachment half-made without
//! a cache entry that lets a later detach find it.

mod invoke;
mod lifecycle;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};

use serde_json::{Map, Value};

pub use lifecycle::PluginVersions;

use crate::cache::{self, CachedAttachment};
use crate::config::{NetConfig, Network};
use crate::error::Error;
use crate::ports::{port_mappings_json, PortMapping};
use crate::result::AttachResult;
use invoke::{exec_config, netns_for_del, parse_add_output, Params, Verb};

/// One attachment: a netns (a container's or a pod sandbox's, shared by its containers)
/// joined to a network under an interface name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Attachment {
    /// `CNI_CONTAINERID`: the container or pod sandbox id; IPAM keys reservations by it.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: PathBuf,
    /// `CNI_IFNAME` inside the netns: "eth0", "eth1", ... one per network of the sandbox.
    pub ifname: String,
    /// `CNI_ARGS` pairs. When any are given, `IgnoreUnknown=1` is added (unless present) so
    /// plugins that do not know a key ignore it instead of failing, as CRI runtimes do.
    pub args: Vec<(String, String)>,
    /// The `portMappings` capability (for plugins that declare it, e.g. portmap).
    pub port_mappings: Vec<PortMapping>,
    /// Other capability arguments by name (`mac`, `ips`, `bandwidth`, ...), passed in
    /// `runtimeConfig` to the plugins that declare them.
    pub capabilities: BTreeMap<String, Value>,
}

impl Attachment {
    pub fn new(
        container_id: impl Into<String>,
        netns: impl Into<PathBuf>,
        ifname: impl Into<String>,
    ) -> Attachment {
        Attachment {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            ..Attachment::default()
        }
    }

    /// The spec's rules for the attachment parameters.
    fn validate(&self, net: &Network) -> Result<(), Error> {
        let invalid = |why: String| Error::InvalidAttachment {
            network: net.name.clone(),
            why,
        };
        check_container_id(&self.container_id).map_err(invalid)?;
        check_ifname(&self.ifname).map_err(|why| invalid(format!("ifname: {why}")))?;
        for (k, v) in &self.args {
            if k.is_empty() || k.contains(['=', ';', '\0']) || v.contains([';', '\0']) {
                return Err(invalid(format!(
                    "CNI_ARGS pair {k:?}={v:?}: keys must be non-empty without '=' or ';', \
                     values without ';'"
                )));
            }
        }
        if self.capabilities.contains_key("portMappings") {
            return Err(invalid(
                "pass port mappings in `port_mappings`, not as a raw capability".into(),
            ));
        }
        if self.netns.to_str().is_none() {
            return Err(invalid(format!(
                "netns path {} is not UTF-8 (CNI_NETNS is passed as text)",
                self.netns.display()
            )));
        }
        if !self.netns.is_absolute() {
            return Err(invalid(format!(
                "netns path {} is not absolute",
                self.netns.display()
            )));
        }
        Ok(())
    }

    /// `CNI_ARGS`: `K=V;K2=V2`, with `IgnoreUnknown=1` first when there are any pairs.
    fn cni_args(&self) -> String {
        if self.args.is_empty() {
            return String::new();
        }
        let mut pairs: Vec<String> = Vec::new();
        if !self.args.iter().any(|(k, _)| k == "IgnoreUnknown") {
            pairs.push("IgnoreUnknown=1".into());
        }
        pairs.extend(self.args.iter().map(|(k, v)| format!("{k}={v}")));
        pairs.join(";")
    }

    /// Capability arguments as a map (port mappings only when there are some).
    fn capability_args(&self) -> Map<String, Value> {
        let mut m: Map<String, Value> = self
            .capabilities
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !self.port_mappings.is_empty() {
            m.insert(
                "portMappings".into(),
                port_mappings_json(&self.port_mappings),
            );
        }
        m
    }
}

/// The spec's container id rule: a letter or digit, then letters, digits, `_`, `.`, `-`.
fn check_container_id(id: &str) -> Result<(), String> {
    let ok = id.len() <= 200
        && id.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "container id {id:?} must be 1-200 bytes, start with a letter or digit, and contain \
             only letters, digits, '_', '.' and '-'"
        ))
    }
}

/// The spec's (and Linux's) interface name rule.
pub(crate) fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > 15 {
        return Err(format!("interface name {name:?} is longer than 15 bytes"));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':', '\0'])
        || name.chars().any(char::is_whitespace)
    {
        return Err(format!(
            "interface name {name:?} must not be '.' or '..' nor contain '/', ':' or whitespace"
        ));
    }
    Ok(())
}

/// The CNI driver: runs chains for attachments, keeps the attachment cache.
#[derive(Debug)]
pub struct Cni {
    config: NetConfig,
    busy: Mutex<HashSet<String>>,
    freed: Condvar,
}

/// Holds a container id in [`Cni::busy`] while one operation on it runs.
struct ContainerLock<'a> {
    cni: &'a Cni,
    id: String,
}

impl Drop for ContainerLock<'_> {
    fn drop(&mut self) {
        let mut busy = self.cni.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.remove(&self.id);
        self.cni.freed.notify_all();
    }
}

impl Cni {
    pub fn new(config: NetConfig) -> Cni {
        Cni {
            config,
            busy: Mutex::new(HashSet::new()),
            freed: Condvar::new(),
        }
    }

    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    fn lock(&self, container_id: &str) -> ContainerLock<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while busy.contains(container_id) {
            busy = self.freed.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        busy.insert(container_id.to_string());
        ContainerLock {
            cni: self,
            id: container_id.to_string(),
        }
    }

    fn params<'a>(att: &'a Attachment, netns: String) -> Params<'a> {
        Params {
            container_id: &att.container_id,
            netns,
            ifname: &att.ifname,
            args: att.cni_args(),
        }
    }

    /// ADD `att` to `net`: every plugin in order, each getting the previous one's result;
    /// the final result is cached and returned. If any step fails, the whole chain is DELeted
    /// (best effort) so nothing stays half-attached; if that DEL fails too, the attachment
    /// stays in the cache for a later [`Cni::detach`] and the error says so.
    pub fn attach(&self, net: &Network, att: &Attachment) -> Result<AttachResult, Error> {
        att.validate(net)?;
        let _lock = self.lock(&att.container_id);
        if !crate::netns::is_netns(&att.netns) {
            return Err(Error::InvalidAttachment {
                network: net.name.clone(),
                why: format!("{} is not a network namespace", att.netns.display()),
            });
        }
        let path = cache::entry_path(
            &self.config.cache_dir,
            &net.name,
            &att.container_id,
            &att.ifname,
        );
        if let Some(existing) = cache::read(&path)? {
            return Err(Error::AlreadyAttached {
                network: net.name.clone(),
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
                pending: existing.result.is_none(),
            });
        }
        // Recorded before any plugin runs: a crash from here on leaves an entry to detach.
        cache::write(&self.config.cache_dir, net, att, None)?;

        let caps = att.capability_args();
        let params = Self::params(att, att.netns.display().to_string());
        let mut prev: Option<Value> = None;
        for (i, plugin) in net.plugins.iter().enumerate() {
            let conf = exec_config(net, plugin, &caps, prev.as_ref());
            let step = self
                .invoke(net, &plugin.plugin_type, Verb::Add, Some(&params), &conf)
                .and_then(|out| parse_add_output(net, &plugin.plugin_type, &out));
            match step {
                Ok(v) => {
                    // A crash before the final write leaves what the plugins made so far to the DEL.
                    if i + 1 < net.plugins.len() {
                        let cached = cache::write_partial(&self.config.cache_dir, net, att, &v);
                        if let Err(e) = cached {
                            return Err(self.undo_add(net, att, Some(&v), e));
                        }
                    }
                    prev = Some(v)
                }
                Err(e) => return Err(self.undo_add(net, att, prev.as_ref(), e)),
            }
        }
        let raw = prev.unwrap_or_else(|| Value::Object(Map::new()));
        let last = net
            .plugins
            .last()
            .map(|p| p.plugin_type.as_str())
            .unwrap_or("");
        let result = match AttachResult::from_json(raw.clone()) {
            Ok(r) => r,
            Err(why) => {
                let e = Error::PluginOutput {
                    network: net.name.clone(),
                    plugin: last.to_string(),
                    command: Verb::Add.as_str(),
                    why,
                };
                return Err(self.undo_add(net, att, Some(&raw), e));
            }
        };
        if let Err(e) = cache::write(&self.config.cache_dir, net, att, Some(&raw)) {
            return Err(self.undo_add(net, att, Some(&raw), e));
        }
        Ok(result)
    }

    /// DEL the whole chain after a failed ADD, continuing past errors; `partial` is the result
    /// of the last plugin that succeeded (it tells DEL what was made).
    fn undo_add(
        &self,
        net: &Network,
        att: &Attachment,
        partial: Option<&Value>,
        cause: Error,
    ) -> Error {
        let caps = att.capability_args();
        let params = Self::params(att, netns_for_del(&att.netns));
        let prev = partial.filter(|_| net.cni_version.has_check());
        let mut failures = Vec::new();
        for plugin in net.plugins.iter().rev() {
            let conf = exec_config(net, plugin, &caps, prev);
            if let Err(e) = self.invoke(net, &plugin.plugin_type, Verb::Del, Some(&params), &conf) {
                failures.push(e);
            }
        }
        let path = cache::entry_path(
            &self.config.cache_dir,
            &net.name,
            &att.container_id,
            &att.ifname,
        );
        if failures.is_empty() {
            if let Err(e) = cache::remove(&path) {
                failures.push(e);
            }
        }
        if failures.is_empty() {
            cause
        } else {
            tracing::warn!(network = %net.name, container = %att.container_id,
                "undoing a failed ADD failed; the attachment stays cached");
            Error::AddCleanupFailed {
                cause: Box::new(cause),
                cleanup: failures,
            }
        }
    }

    /// DEL `att` from `net`: every plugin in reverse order, with the cached ADD result as
    /// `prevResult` (for an ADD cut short by a crash, the last plugin's result it got; none when
    /// nothing is cached). Idempotent; a netns that is gone is passed
    /// as an empty `CNI_NETNS`, which the spec allows. The cache entry is removed only when
    /// every plugin succeeded; the first failure stops the chain, as the spec says.
    pub fn detach(&self, net: &Network, att: &Attachment) -> Result<(), Error> {
        let invalid = |why: String| Error::InvalidAttachment {
            network: net.name.clone(),
            why,
        };
        check_container_id(&att.container_id).map_err(invalid)?;
        check_ifname(&att.ifname).map_err(|why| invalid(format!("ifname: {why}")))?;
        let _lock = self.lock(&att.container_id);
        let path = cache::entry_path(
            &self.config.cache_dir,
            &net.name,
            &att.container_id,
            &att.ifname,
        );
        let cached = match cache::read(&path) {
            Ok(c) => c,
            Err(e) => {
                // A damaged entry must not make the attachment impossible to remove.
                tracing::warn!(error = %e, "ignoring an unreadable cache entry for DEL");
                None
            }
        };
        let prev = cached
            .and_then(|c| c.result.map(|r| r.raw).or(c.partial))
            .filter(|_| net.cni_version.has_check());
        let caps = att.capability_args();
        let params = Self::params(att, netns_for_del(&att.netns));
        for plugin in net.plugins.iter().rev() {
            let conf = exec_config(net, plugin, &caps, prev.as_ref());
            self.invoke(net, &plugin.plugin_type, Verb::Del, Some(&params), &conf)?;
        }
        cache::remove(&path)
    }

    /// CHECK `att` on `net` with the cached ADD result. Succeeds at once when the network sets
    /// `disableCheck`; fails for networks older than CNI 0.4.0 and for attachments without a
    /// cached result.
    pub fn check(&self, net: &Network, att: &Attachment) -> Result<(), Error> {
        att.validate(net)?;
        if net.disable_check {
            return Ok(());
        }
        if !net.cni_version.has_check() {
            return Err(Error::Unsupported {
                network: net.name.clone(),
                what: "CHECK",
                needs: "0.4.0",
                version: net.cni_version.to_string(),
            });
        }
        let _lock = self.lock(&att.container_id);
        let path = cache::entry_path(
            &self.config.cache_dir,
            &net.name,
            &att.container_id,
            &att.ifname,
        );
        let prev = cache::read(&path)?.and_then(|c| c.result).map(|r| r.raw);
        let Some(prev) = prev else {
            return Err(Error::NotAttached {
                network: net.name.clone(),
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
            });
        };
        let caps = att.capability_args();
        let params = Self::params(att, att.netns.display().to_string());
        for plugin in &net.plugins {
            let conf = exec_config(net, plugin, &caps, Some(&prev));
            self.invoke(net, &plugin.plugin_type, Verb::Check, Some(&params), &conf)?;
        }
        Ok(())
    }

    /// The cache entry of one attachment, if any.
    pub fn cached(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CachedAttachment>, Error> {
        cache::read(&cache::entry_path(
            &self.config.cache_dir,
            network,
            container_id,
            ifname,
        ))
    }

    /// Every cached attachment (after a crash: the ones to detach), plus errors naming the
    /// entries that could not be read.
    pub fn list_cached(&self) -> (Vec<CachedAttachment>, Vec<Error>) {
        cache::list(&self.config.cache_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_rules() {
        let net = Network::from_conflist_value(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "x"}]}),
            "t",
        )
        .expect("test setup");
        let ok = Attachment::new("c1", "/run/netns/x", "eth0");
        ok.validate(&net).expect("validate");
        let bad = [
            Attachment::new("", "/x", "eth0"),
            Attachment::new("-c", "/x", "eth0"),
            Attachment::new("c/1", "/x", "eth0"),
            Attachment::new("c", "/x", ""),
            Attachment::new("c", "/x", "a-very-long-ifname"),
            Attachment::new("c", "/x", "eth 0"),
            Attachment::new("c", "/x", "eth:0"),
            Attachment::new("c", "rel", "eth0"),
            Attachment {
                args: vec![("K;X".into(), "v".into())],
                ..ok.clone()
            },
        ];
        for a in bad {
            let e = a
                .validate(&net)
                .expect_err("validate should fail")
                .to_string();
            assert!(e.starts_with("network n: invalid attachment"), "{e}");
        }
    }

    #[test]
    fn cni_args_and_capabilities() {
        let mut a = Attachment::new("c1", "/x", "eth0");
        assert_eq!(a.cni_args(), "");
        a.args = vec![
            ("K8S_POD_NAME".into(), "web-1".into()),
            ("X".into(), "y".into()),
        ];
        assert_eq!(a.cni_args(), "IgnoreUnknown=1;K8S_POD_NAME=web-1;X=y");
        a.args.insert(0, ("IgnoreUnknown".into(), "0".into()));
        assert_eq!(a.cni_args(), "IgnoreUnknown=0;K8S_POD_NAME=web-1;X=y");
        assert!(a.capability_args().is_empty());
        a.port_mappings = crate::ports::parse_publish("8080:80").expect("parse_publish");
        a.capabilities
            .insert("mac".into(), "00:11:22:33:44:55".into());
        let caps = a.capability_args();
        assert_eq!(caps["portMappings"][0]["hostPort"], 8080);
        assert_eq!(caps["mac"], "00:11:22:33:44:55");
    }
}
