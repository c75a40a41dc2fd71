//! Published ports: `-p [hostIP:]hostPort:containerPort[/proto]` parsed into CNI `portMappings`.
//!
//! The result is what the `portMappings` capability of the CNI conventions carries (the
//! portmap plugin reads it from `runtimeConfig`). This module must never pick a host port by
//! itself: portmap cannot allocate one, so a spec without a host port is an error, not a
//! random port.

use std::fmt;
use std::net::IpAddr;

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The spelling CNI and iptables use.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host port forwarded to one container port. `host_ip: None` means every host address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// Why a `-p` spec was refused; the message quotes the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port mapping {spec:?}: {why}")]
pub struct PortError {
    pub spec: String,
    pub why: String,
}

/// Ranges longer than this are refused: each port is an iptables rule.
pub const MAX_RANGE: u32 = 1024;

impl PortMapping {
    /// The CNI `portMappings` entry: `{"hostPort", "containerPort", "protocol", "hostIP"?}`.
    pub fn to_cni_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("hostPort".into(), self.host_port.into());
        m.insert("containerPort".into(), self.container_port.into());
        m.insert("protocol".into(), self.protocol.as_str().into());
        if let Some(ip) = self.host_ip {
            m.insert("hostIP".into(), ip.to_string().into());
        }
        serde_json::Value::Object(m)
    }

    /// The inverse of [`PortMapping::to_cni_json`] (used to read the attachment cache).
    pub fn from_cni_json(v: &serde_json::Value) -> Option<PortMapping> {
        let port = |k: &str| -> Option<u16> {
            let n = v.get(k)?.as_u64()?;
            u16::try_from(n).ok().filter(|p| *p != 0)
        };
        let host_ip = match v.get("hostIP").and_then(|h| h.as_str()) {
            None | Some("") => None,
            Some(s) => Some(s.parse().ok()?),
        };
        let protocol = match v.get("protocol").and_then(|p| p.as_str()) {
            None | Some("") => Protocol::Tcp,
            Some(p) => Protocol::parse(p)?,
        };
        Some(PortMapping {
            host_ip,
            host_port: port("hostPort")?,
            container_port: port("containerPort")?,
            protocol,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

/// The `portMappings` capability value for a list of mappings.
pub fn port_mappings_json(mappings: &[PortMapping]) -> serde_json::Value {
    serde_json::Value::Array(mappings.iter().map(PortMapping::to_cni_json).collect())
}

/// Parse one `-p` spec: `[hostIP:]hostPort:containerPort[/proto]`, with `proto` one of
/// `tcp` (default), `udp`, `sctp`; an IPv6 host IP in brackets (`[::1]:8080:80`); equal-length
/// ranges (`8000-8009:9000-9009`) expand to one mapping per port.
pub fn parse_publish(spec: &str) -> Result<Vec<PortMapping>, PortError> {
    let err = |why: String| PortError {
        spec: spec.to_string(),
        why,
    };
    let trimmed = spec.trim();
    if trimmed.is_empty() {
        return Err(err("empty".into()));
    }
    let (rest, protocol) = match trimmed.rsplit_once('/') {
        Some((rest, proto)) => {
            let p = Protocol::parse(proto).ok_or_else(|| {
                err(format!(
                    "unknown protocol {proto:?} (expected tcp, udp or sctp)"
                ))
            })?;
            (rest, p)
        }
        None => (trimmed, Protocol::Tcp),
    };
    let (host_ip, ports) = split_host_ip(rest).map_err(err)?;
    let (host, container) = match ports.split_once(':') {
        Some((h, c)) => (h, c),
        None => {
            return Err(err(
                "a host port is required (hostPort:containerPort); CNI portmap cannot pick one"
                    .into(),
            ))
        }
    };
    if container.contains(':') {
        return Err(err(
            "too many ':' (an IPv6 host IP must be written in brackets, e.g. [::1]:8080:80)".into(),
        ));
    }
    if host.is_empty() {
        return Err(err(
            "the host port is empty; CNI portmap cannot pick one".into()
        ));
    }
    let (h0, h1) = parse_range(host, "host").map_err(err)?;
    let (c0, c1) = parse_range(container, "container").map_err(err)?;
    let hlen = u32::from(h1) - u32::from(h0);
    let clen = u32::from(c1) - u32::from(c0);
    if hlen != clen {
        return Err(err(format!(
            "host range {h0}-{h1} and container range {c0}-{c1} differ in length"
        )));
    }
    if hlen + 1 > MAX_RANGE {
        return Err(err(format!(
            "range of {} ports is longer than {MAX_RANGE}",
            hlen + 1
        )));
    }
    Ok((0..=hlen)
        .map(|i| PortMapping {
            host_ip,
            // Both fit: the range ends are u16 and i <= h1 - h0.
            host_port: h0 + i as u16,
            container_port: c0 + i as u16,
            protocol,
        })
        .collect())
}

/// Parse several specs (one per `-p` flag); duplicate host bindings are refused because the
/// second DNAT rule could never match.
pub fn parse_publish_all<S: AsRef<str>>(specs: &[S]) -> Result<Vec<PortMapping>, PortError> {
    let mut out: Vec<PortMapping> = Vec::new();
    for spec in specs {
        for m in parse_publish(spec.as_ref())? {
            let clash = out.iter().find(|o| {
                o.host_port == m.host_port
                    && o.protocol == m.protocol
                    && (o.host_ip.is_none() || m.host_ip.is_none() || o.host_ip == m.host_ip)
            });
            if let Some(o) = clash {
                return Err(PortError {
                    spec: spec.as_ref().to_string(),
                    why: format!("host port {} is already published by {o}", m.host_port),
                });
            }
            out.push(m);
        }
    }
    Ok(out)
}

/// Split off an optional host IP: `[v6]:rest`, `v4:a:b`, or just `a:b`.
fn split_host_ip(s: &str) -> Result<(Option<IpAddr>, &str), String> {
    if let Some(after) = s.strip_prefix('[') {
        let (ip, rest) = after
            .split_once(']')
            .ok_or("unclosed '[' around the host IP")?;
        let ip: std::net::Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} in brackets is not an IPv6 address"))?;
        let rest = rest
            .strip_prefix(':')
            .ok_or("expected ':' after the bracketed host IP")?;
        return Ok((Some(IpAddr::V6(ip)), rest));
    }
    let colons = s.matches(':').count();
    match colons {
        0 | 1 => Ok((None, s)),
        2 => {
            let (ip, rest) = s.split_once(':').ok_or("expected ':'")?;
            if ip.is_empty() {
                return Err("empty host IP before ':'".into());
            }
            let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| {
                format!("host IP {ip:?} is not an IPv4 address (put IPv6 in brackets)")
            })?;
            Ok((Some(IpAddr::V4(ip)), rest))
        }
        _ => Err(
            "too many ':' (an IPv6 host IP must be written in brackets, e.g. [::1]:8080:80)".into(),
        ),
    }
}

/// `80` or `8000-8009` as an inclusive range of non-zero ports.
fn parse_range(s: &str, which: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| -> Result<u16, String> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{which} port {p:?} is not a number"));
        }
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
            _ => Err(format!("{which} port {p} is out of range 1-65535")),
        }
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(format!("{which} range {a}-{b} is reversed"));
            }
            Ok((a, b))
        }
        None => {
            let p = port(s)?;
            Ok((p, p))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(spec: &str) -> PortMapping {
        let v = parse_publish(spec).expect("parse_publish");
        assert_eq!(v.len(), 1, "{spec}");
        v[0]
    }

    #[test]
    fn forms() {
        let m = one("8080:80");
        assert_eq!(
            (m.host_ip, m.host_port, m.container_port, m.protocol),
            (None, 8080, 80, Protocol::Tcp)
        );
        let m = one("127.0.0.1:8080:80/udp");
        assert_eq!(m.host_ip, Some("127.0.0.1".parse().expect("parse")));
        assert_eq!(m.protocol, Protocol::Udp);
        let m = one("[::1]:53:5353/SCTP");
        assert_eq!(m.host_ip, Some("::1".parse().expect("parse")));
        assert_eq!(
            (m.host_port, m.container_port, m.protocol),
            (53, 5353, Protocol::Sctp)
        );
        assert_eq!(m.to_string(), "[::1]:53:5353/sctp");
        let r = parse_publish("10.0.0.1:8000-8002:9000-9002/tcp").expect("parse_publish");
        assert_eq!(r.len(), 3);
        assert_eq!((r[2].host_port, r[2].container_port), (8002, 9002));
    }

    #[test]
    fn json_shape_round_trips() {
        let m = one("127.0.0.1:18080:80");
        let j = m.to_cni_json();
        assert_eq!(
            j,
            serde_json::json!({"hostPort": 18080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"})
        );
        assert_eq!(PortMapping::from_cni_json(&j), Some(m));
        let j = one("1:2/udp").to_cni_json();
        assert!(j.get("hostIP").is_none());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases = [
            ("", "empty"),
            ("80", "host port is required"),
            (":80", "host port is empty"),
            ("127.0.0.1::80", "host port is empty"),
            ("0:80", "out of range"),
            ("65536:80", "out of range"),
            ("80:x", "container port \"x\" is not a number"),
            ("80:80/icmp", "unknown protocol"),
            ("::1:80:80", "brackets"),
            ("[::1:80:80", "unclosed"),
            ("[1.2.3.4]:80:80", "not an IPv6"),
            ("localhost:80:80", "not an IPv4"),
            ("8000-8002:80", "differ in length"),
            ("8002-8000:80-82", "reversed"),
            ("1-2000:1-2000", "longer than"),
        ];
        for (spec, want) in cases {
            let e = parse_publish(spec)
                .expect_err("parse_publish should fail")
                .to_string();
            assert!(e.contains(want), "{spec:?}: {e}");
            assert!(e.contains(&format!("{spec:?}")), "{spec:?}: {e}");
        }
    }

    #[test]
    fn duplicates_are_refused() {
        assert!(parse_publish_all(&["8080:80", "8080:81/udp"]).is_ok());
        assert!(parse_publish_all(&["127.0.0.1:8080:80", "127.0.0.2:8080:81"]).is_ok());
        let e = parse_publish_all(&["8080:80", "127.0.0.1:8080:81"])
            .expect_err("parse_publish_all should fail");
        assert!(e.to_string().contains("already published"), "{e}");
    }
}
