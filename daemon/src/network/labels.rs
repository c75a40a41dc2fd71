//! What a container asks of the network layer, from labels on its record (set at create time, as a CLI's
//! `--net`/`-p` would): [`NETWORKS_LABEL`] and [`PORTS_LABEL`]. A container without [`NETWORKS_LABEL`] gets no
//! attachment, as under containerd (e.g. one made by Debian's `ctr`).
//!
//! Parsing is pure and happens before anything is created; an invalid value is an error naming the label and
//! the value. This module must never look at the host (whether a network exists is the handle's question).

use std::collections::HashMap;

use berth_net::PortMapping;

use super::error::NetError;

/// Comma-separated network names; or `none` (its own netns with loopback only); or `host` (the host's netns).
pub const NETWORKS_LABEL: &str = "berth.io/networks";
/// Comma-separated published ports, `[hostIP:]hostPort:containerPort[/proto]`, on the first network.
pub const PORTS_LABEL: &str = "berth.io/ports";

/// At most this many networks per container (one interface each: eth0..eth15).
pub const MAX_NETWORKS: usize = 16;

/// Which network namespace the container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A netns of its own attached to these networks, in order (eth0, eth1, ...).
    Networks(Vec<String>),
    /// A netns of its own with loopback only.
    None,
    /// The host's netns (the bundle gets no network namespace).
    Host,
}

/// A container's network request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Its namespace and networks.
    pub mode: Mode,
    /// Published ports (on the first network).
    pub ports: Vec<PortMapping>,
}

impl Plan {
    /// The plan from a container's labels; `None` when it asks for nothing.
    pub fn from_labels(labels: &HashMap<String, String>) -> Result<Option<Plan>, NetError> {
        let ports = match labels.get(PORTS_LABEL) {
            Some(v) => parse_ports(v)?,
            None => Vec::new(),
        };
        let Some(value) = labels.get(NETWORKS_LABEL) else {
            if ports.is_empty() {
                return Ok(None);
            }
            return Err(invalid(
                PORTS_LABEL,
                &labels[PORTS_LABEL],
                format!("published ports need a network: set {NETWORKS_LABEL} too"),
            ));
        };
        let mode = parse_networks(value)?;
        if !ports.is_empty() && !matches!(mode, Mode::Networks(_)) {
            return Err(invalid(
                PORTS_LABEL,
                &labels[PORTS_LABEL],
                format!("ports cannot be published with {NETWORKS_LABEL}={value:?}"),
            ));
        }
        Ok(Some(Plan { mode, ports }))
    }
}

fn invalid(label: &str, value: &str, why: String) -> NetError {
    NetError::InvalidLabel {
        label: label.to_string(),
        value: value.to_string(),
        why,
    }
}

fn parse_networks(value: &str) -> Result<Mode, NetError> {
    let err = |why: String| invalid(NETWORKS_LABEL, value, why);
    let names: Vec<&str> = value.split(',').map(str::trim).collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(err(
            "expected comma-separated network names, `none` or `host`; found an empty name".into(),
        ));
    }
    match names.as_slice() {
        ["none"] => return Ok(Mode::None),
        ["host"] => return Ok(Mode::Host),
        _ => {}
    }
    if let Some(special) = names.iter().find(|n| matches!(**n, "none" | "host")) {
        return Err(err(format!(
            "{special:?} cannot be combined with other networks"
        )));
    }
    if names.len() > MAX_NETWORKS {
        return Err(err(format!(
            "{} networks; at most {MAX_NETWORKS} are allowed",
            names.len()
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for n in names {
        if !valid_network_name(n) {
            return Err(err(format!(
                "{n:?} is not a network name (a letter or digit, then letters, digits, '_', '.' or '-')"
            )));
        }
        if out.iter().any(|o| o == n) {
            return Err(err(format!("network {n:?} is named twice")));
        }
        out.push(n.to_string());
    }
    Ok(Mode::Networks(out))
}

/// The CNI spec's network name rule.
fn valid_network_name(n: &str) -> bool {
    n.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn parse_ports(value: &str) -> Result<Vec<PortMapping>, NetError> {
    let specs: Vec<&str> = value.split(',').map(str::trim).collect();
    if specs.iter().any(|s| s.is_empty()) {
        return Err(invalid(
            PORTS_LABEL,
            value,
            "expected comma-separated [hostIP:]hostPort:containerPort[/proto]; found an empty entry"
                .into(),
        ));
    }
    let ports = berth_net::parse_publish_all(&specs)
        .map_err(|e| invalid(PORTS_LABEL, value, e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    for p in &ports {
        if !seen.insert((p.host_ip, p.host_port, p.protocol)) {
            return Err(invalid(
                PORTS_LABEL,
                value,
                format!(
                    "host port {}/{} is published twice",
                    p.host_port, p.protocol
                ),
            ));
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(pairs: &[(&str, &str)]) -> Result<Option<Plan>, NetError> {
        let labels = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Plan::from_labels(&labels)
    }

    #[test]
    fn no_label_no_attachment() {
        assert_eq!(plan(&[("other", "x")]).expect("ok"), None);
    }

    #[test]
    fn modes_and_ports() {
        let p = plan(&[
            (NETWORKS_LABEL, " a, b-2 "),
            (PORTS_LABEL, "127.0.0.1:8080:80,53:53/udp"),
        ])
        .expect("ok")
        .expect("some");
        assert_eq!(p.mode, Mode::Networks(vec!["a".into(), "b-2".into()]));
        assert_eq!(p.ports.len(), 2);
        assert_eq!(p.ports[0].host_port, 8080);
        assert_eq!(
            plan(&[(NETWORKS_LABEL, "none")])
                .expect("ok")
                .expect("some")
                .mode,
            Mode::None
        );
        assert_eq!(
            plan(&[(NETWORKS_LABEL, "host")])
                .expect("ok")
                .expect("some")
                .mode,
            Mode::Host
        );
    }

    #[test]
    fn invalid_values_name_label_and_value() {
        let cases: &[&[(&str, &str)]] = &[
            &[(NETWORKS_LABEL, "")],
            &[(NETWORKS_LABEL, "a,,b")],
            &[(NETWORKS_LABEL, "a,none")],
            &[(NETWORKS_LABEL, "host,a")],
            &[(NETWORKS_LABEL, "a,a")],
            &[(NETWORKS_LABEL, "-x")],
            &[(NETWORKS_LABEL, "a/b")],
            &[(PORTS_LABEL, "80:80")],
            &[(NETWORKS_LABEL, "none"), (PORTS_LABEL, "80:80")],
            &[(NETWORKS_LABEL, "a"), (PORTS_LABEL, "eighty")],
            &[(NETWORKS_LABEL, "a"), (PORTS_LABEL, "80:80,80:81")],
            &[(NETWORKS_LABEL, "a"), (PORTS_LABEL, "80:80,")],
        ];
        for c in cases {
            let e = plan(c).expect_err("invalid");
            let msg = e.to_string();
            assert!(msg.starts_with("label berth.io/"), "{msg}");
            let (label, value) = c.last().expect("case");
            assert!(
                msg.contains(label) || c.iter().any(|(l, _)| msg.contains(l)),
                "{msg}"
            );
            assert!(
                msg.contains(&format!("{value:?}")) || c.iter().any(|(_, v)| msg.contains(v)),
                "{msg}"
            );
            assert_eq!(e.status().code(), tonic::Code::InvalidArgument, "{msg}");
        }
        let many = (0..17)
            .map(|i| format!("n{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(plan(&[(NETWORKS_LABEL, &many)]).is_err());
    }
}
