//! The CNI success result of an attachment (spec section 5): interfaces, IPs, routes, DNS.
//!
//! The raw JSON is kept next to the parsed view: it is what later plugins and the cache get,
//! byte for byte the final plugin's output. Parsing is lenient about fields added by newer
//! spec versions and must never drop the raw document.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::ipnet::IpNet;

/// The final result of an ADD through a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    /// The final plugin's output as it was: what berthd records and DEL/CHECK get as
    /// `prevResult`.
    pub raw: Value,
}

/// An interface the attachment created (host side, bridge, or inside the sandbox).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    /// The netns path for interfaces inside the container; absent for host interfaces.
    #[serde(default)]
    pub sandbox: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// An address assigned by the attachment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Index into [`AttachResult::interfaces`].
    #[serde(default)]
    pub interface: Option<usize>,
}

/// A route the attachment installed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

/// DNS settings the network suggests for the container's resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Dns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default)]
    cni_version: String,
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Option<Dns>,
}

impl AttachResult {
    /// Parse a plugin's success output (0.3.0 and later formats).
    pub fn from_json(raw: Value) -> Result<AttachResult, String> {
        if !raw.is_object() {
            return Err("the result is not a JSON object".into());
        }
        let w: Wire = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
        for ip in &w.ips {
            if let Some(i) = ip.interface {
                if i >= w.interfaces.len() {
                    return Err(format!(
                        "ip {} names interface {i}, but there are {} interfaces",
                        ip.address,
                        w.interfaces.len()
                    ));
                }
            }
        }
        Ok(AttachResult {
            cni_version: w.cni_version,
            interfaces: w.interfaces,
            ips: w.ips,
            routes: w.routes,
            dns: w.dns.unwrap_or_default(),
            raw,
        })
    }

    /// The addresses given to interfaces inside the sandbox (the pod IPs a CRI layer reports),
    /// in result order. An IP without an interface index counts as the sandbox's, since IPAM
    /// results carry none.
    pub fn sandbox_ips(&self) -> Vec<&IpConfig> {
        self.ips
            .iter()
            .filter(|ip| match ip.interface {
                Some(i) => self
                    .interfaces
                    .get(i)
                    .is_some_and(|itf| itf.sandbox.as_deref().is_some_and(|s| !s.is_empty())),
                None => true,
            })
            .collect()
    }

    /// The first sandbox address of the given family (`true` = IPv4).
    pub fn first_ip(&self, v4: bool) -> Option<IpAddr> {
        self.sandbox_ips()
            .into_iter()
            .map(|ip| ip.address.addr)
            .find(|a| a.is_ipv4() == v4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_bridge_result() {
        let raw = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "b0", "mac": "56:ba:e1:6d:7e:4a"},
                {"name": "veth0", "mac": "de:9d:65:5a:c5:61"},
                {"name": "eth0", "mac": "ae:74:c4:f7:a1:00", "sandbox": "/run/netns/x"}
            ],
            "ips": [{"interface": 2, "address": "10.250.3.2/24", "gateway": "10.250.3.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.250.3.1"], "someFutureField": 1},
            "someFutureKey": true
        });
        let r = AttachResult::from_json(raw.clone()).expect("from_json");
        assert_eq!(r.raw, raw);
        assert_eq!(r.interfaces[2].sandbox.as_deref(), Some("/run/netns/x"));
        assert_eq!(r.ips[0].gateway, Some("10.250.3.1".parse().expect("parse")));
        assert_eq!(r.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(r.dns.nameservers, ["10.250.3.1"]);
        assert_eq!(r.first_ip(true), Some("10.250.3.2".parse().expect("parse")));
        assert_eq!(r.first_ip(false), None);
    }

    #[test]
    fn rejects_bad_results() {
        assert!(AttachResult::from_json(serde_json::json!([])).is_err());
        let e = AttachResult::from_json(serde_json::json!({"ips": [{"address": "10.0.0.1"}]}))
            .expect_err("should fail");
        assert!(e.contains("invalid CIDR"), "{e}");
        let e = AttachResult::from_json(
            serde_json::json!({"ips": [{"address": "10.0.0.1/8", "interface": 3}]}),
        )
        .expect_err("should fail");
        assert!(e.contains("interface 3"), "{e}");
    }

    #[test]
    fn host_side_ips_are_not_sandbox_ips() {
        let r = AttachResult::from_json(serde_json::json!({
            "interfaces": [{"name": "host0"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.0.0.1/24", "interface": 0}, {"address": "10.0.0.2/24", "interface": 1}]
        }))
        .expect("test setup");
        let ips: Vec<_> = r
            .sandbox_ips()
            .iter()
            .map(|i| i.address.to_string())
            .collect();
        assert_eq!(ips, ["10.0.0.2/24"]);
    }
}
