//! An IP address with a prefix length (`10.213.0.5/16`), as CNI results and IPAM configs write them.
//!
//! Parsing is strict (no leading zeros tricks, prefix within the family's width); this module
//! must never silently turn an invalid prefix into a valid one.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address plus prefix length. The address keeps its host bits (`10.0.0.5/24` is an
/// interface address; [`IpNet::network`] gives `10.0.0.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {text:?}: {why}")]
pub struct IpNetError {
    pub text: String,
    pub why: &'static str,
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        (prefix <= max_prefix(&addr)).then_some(IpNet { addr, prefix })
    }

    /// The network address (host bits cleared) with the same prefix.
    pub fn network(&self) -> IpNet {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        IpNet {
            addr,
            prefix: self.prefix,
        }
    }

    /// True when `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        IpNet {
            addr: ip,
            prefix: self.prefix,
        }
        .network()
            == self.network()
    }

    /// The `n`th address of the network (`n = 1` is the usual gateway), if it fits.
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        let net = self.network();
        match net.addr {
            IpAddr::V4(a) => {
                let size = 1u128 << (32 - u32::from(self.prefix));
                (n < size).then(|| IpAddr::V4(Ipv4Addr::from(u32::from(a) + n as u32)))
            }
            IpAddr::V6(a) => {
                let bits = 128 - u32::from(self.prefix);
                let fits = bits >= 128 || n < (1u128 << bits);
                fits.then(|| IpAddr::V6(Ipv6Addr::from(u128::from(a) + n)))
            }
        }
    }
}

fn max_prefix(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<IpNet, IpNetError> {
        let err = |why| IpNetError {
            text: s.to_string(),
            why,
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| err("no /prefix"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        if prefix.is_empty()
            || prefix.len() > 3
            || !prefix.bytes().all(|b| b.is_ascii_digit())
            || (prefix.len() > 1 && prefix.starts_with('0'))
        {
            return Err(err("prefix length is not a number"));
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| err("prefix length is not a number"))?;
        IpNet::new(addr, prefix)
            .ok_or_else(|| err("prefix length too large for the address family"))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_contains() {
        let n: IpNet = "10.213.4.7/16".parse().expect("parse");
        assert_eq!(n.to_string(), "10.213.4.7/16");
        assert_eq!(n.network().to_string(), "10.213.0.0/16");
        assert!(n.contains("10.213.255.1".parse().expect("parse")));
        assert!(!n.contains("10.214.0.1".parse().expect("parse")));
        assert!(!n.contains("::1".parse().expect("parse")));
        assert_eq!(n.nth(1), Some("10.213.0.1".parse().expect("parse")));
        let six: IpNet = "fd00:1::5/64".parse().expect("parse");
        assert_eq!(six.network().to_string(), "fd00:1::/64");
        let all: IpNet = "0.0.0.0/0".parse().expect("parse");
        assert!(all.contains("8.8.8.8".parse().expect("parse")));
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0/8",
            "x/8",
            "::/129",
            "1.2.3.4/08",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }
}
