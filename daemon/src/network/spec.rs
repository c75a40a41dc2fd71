//! The network part of the bundle's config.json: the netns path in `linux.namespaces` (or no network
//! namespace at all for `host`), bind mounts of the task dir's hosts, resolv.conf and hostname files, and a
//! hostname when the spec has none.
//!
//! Only the bundle written for the runtime is edited, never the stored container spec (a later task of the
//! same container gets a new netns). A mount the spec already has for one of those paths wins: this module
//! must never override what the client asked for.

use std::path::Path;

use serde_json::{json, Value};

use super::error::NetError;
use super::labels::Mode;

/// The files berthd writes in the task dir, and where they appear in the container.
pub(crate) const FILES: [(&str, &str); 3] = [
    ("hosts", "/etc/hosts"),
    ("resolv.conf", "/etc/resolv.conf"),
    ("hostname", "/etc/hostname"),
];

/// Longest hostname Linux takes.
const HOST_NAME_MAX: usize = 64;

fn invalid(why: impl Into<String>) -> NetError {
    NetError::io(
        "editing the bundle's config.json for the network",
        std::io::Error::new(std::io::ErrorKind::InvalidData, why.into()),
    )
}

fn has_private_uts(spec: &Value) -> bool {
    spec.pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .is_some_and(|nss| {
            nss.iter().any(|n| {
                n.get("type").and_then(Value::as_str) == Some("uts")
                    && n.get("path")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .is_empty()
            })
        })
}

/// The hostname the container will have: the spec's; else its id when it has a UTS namespace of its own (the
/// bundle then gets it, as Docker does); else the host's.
pub(crate) fn hostname(spec: &Value, id: &str) -> String {
    if let Some(h) = spec.get("hostname").and_then(Value::as_str) {
        if !h.is_empty() {
            return h.to_string();
        }
    }
    if has_private_uts(spec) {
        let mut h = id.to_string();
        h.truncate(HOST_NAME_MAX - 1);
        return h;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Edit the bundle's spec for `mode`: netns path (or none), the files of `dir` bind-mounted, `hostname` set.
pub(crate) fn edit(
    spec: &mut Value,
    mode: &Mode,
    netns: Option<&Path>,
    dir: &Path,
    hostname: &str,
) -> Result<(), NetError> {
    let obj = spec
        .as_object_mut()
        .ok_or_else(|| invalid("the spec is not a JSON object"))?;
    let set_hostname = obj
        .get("hostname")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    let linux = obj
        .entry("linux")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| invalid("linux is not an object"))?;
    let nss = linux
        .entry("namespaces")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| invalid("linux.namespaces is not an array"))?;
    let is_net = |n: &Value| n.get("type").and_then(Value::as_str) == Some("network");
    match (mode, netns) {
        (Mode::Host, _) => nss.retain(|n| !is_net(n)),
        (_, Some(path)) => {
            let path = path
                .to_str()
                .ok_or_else(|| invalid(format!("netns path {} is not UTF-8", path.display())))?;
            nss.retain(|n| !is_net(n));
            nss.push(json!({"type": "network", "path": path}));
        }
        (_, None) => return Err(invalid("a netns path is needed for this network mode")),
    }
    let private_uts = nss.iter().any(|n| {
        n.get("type").and_then(Value::as_str) == Some("uts")
            && n.get("path")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
    });
    if set_hostname && private_uts && !hostname.is_empty() {
        obj.insert("hostname".into(), hostname.into());
    }
    let mounts = obj
        .entry("mounts")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| invalid("mounts is not an array"))?;
    for (file, dest) in FILES {
        let taken = mounts
            .iter()
            .any(|m| m.get("destination").and_then(Value::as_str) == Some(dest));
        if taken {
            continue;
        }
        let source = dir.join(file);
        let source = source
            .to_str()
            .ok_or_else(|| invalid(format!("{} is not UTF-8", source.display())))?
            .to_string();
        mounts.push(json!({
            "destination": dest,
            "type": "bind",
            "source": source,
            "options": ["rbind", "rprivate"]
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Value {
        json!({
            "process": {"args": ["sh"]},
            "root": {"path": "/r"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/etc/resolv.conf", "type": "bind", "source": "/mine"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "uts"}]}
        })
    }

    #[test]
    fn netns_mounts_and_hostname() {
        let mut s = spec();
        assert_eq!(hostname(&s, "c1"), "c1");
        edit(
            &mut s,
            &Mode::Networks(vec!["n".into()]),
            Some(Path::new("/run/berth/netns/ns/c1")),
            Path::new("/run/berth/tasks/ns/c1"),
            "c1",
        )
        .expect("edit");
        let nss = s["linux"]["namespaces"].as_array().expect("nss");
        let net: Vec<_> = nss.iter().filter(|n| n["type"] == "network").collect();
        assert_eq!(net.len(), 1);
        assert_eq!(net[0]["path"], "/run/berth/netns/ns/c1");
        assert_eq!(s["hostname"], "c1");
        let dests: Vec<&str> = s["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .filter_map(|m| m["destination"].as_str())
            .collect();
        assert_eq!(
            dests,
            ["/proc", "/etc/resolv.conf", "/etc/hosts", "/etc/hostname"]
        );
        let hosts = &s["mounts"][2];
        assert_eq!(hosts["source"], "/run/berth/tasks/ns/c1/hosts");
        assert_eq!(s["mounts"][1]["source"], "/mine");
    }

    #[test]
    fn host_mode_drops_the_network_namespace_and_keeps_a_given_hostname() {
        let mut s = spec();
        s["hostname"] = json!("web");
        assert_eq!(hostname(&s, "c1"), "web");
        edit(&mut s, &Mode::Host, None, Path::new("/d"), "web").expect("edit");
        assert!(!s["linux"]["namespaces"]
            .as_array()
            .expect("nss")
            .iter()
            .any(|n| n["type"] == "network"));
        assert_eq!(s["hostname"], "web");
        let mut bad = json!([]);
        assert!(edit(
            &mut bad,
            &Mode::None,
            Some(Path::new("/n")),
            Path::new("/d"),
            "h"
        )
        .is_err());
    }
}
