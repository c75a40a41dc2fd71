//! CNI spec versions: parsing, ordering, and what each version allows the runtime to do.
//!
//! Berth speaks the result format introduced in 0.3.0 (interfaces + ips + routes) and nothing
//! older; this module must never guess a version it does not know, because plugins interpret
//! the same JSON differently per version.

use std::fmt;

/// A CNI spec version `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CniVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// Spec versions Berth can drive, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

impl CniVersion {
    /// 0.4.0 introduced CHECK and `prevResult` on DEL.
    pub const V0_4_0: CniVersion = CniVersion::new(0, 4, 0);
    /// 1.1.0 introduced STATUS, GC and `cniVersions`.
    pub const V1_1_0: CniVersion = CniVersion::new(1, 1, 0);

    pub const fn new(major: u32, minor: u32, patch: u32) -> CniVersion {
        CniVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parse `a.b.c` (all three parts, decimal); `None` for anything else.
    pub fn parse(s: &str) -> Option<CniVersion> {
        let mut parts = s.split('.');
        let mut next = || -> Option<u32> {
            let p = parts.next()?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 9 {
                return None;
            }
            p.parse().ok()
        };
        let v = CniVersion::new(next()?, next()?, next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(v)
    }

    /// True when Berth can drive plugins at this version.
    pub fn is_supported(&self) -> bool {
        SUPPORTED_VERSIONS
            .iter()
            .any(|s| CniVersion::parse(s).as_ref() == Some(self))
    }

    /// CHECK exists, and DEL carries the cached `prevResult`.
    pub fn has_check(&self) -> bool {
        *self >= CniVersion::V0_4_0
    }

    /// STATUS and GC exist.
    pub fn has_status_and_gc(&self) -> bool {
        *self >= CniVersion::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        let v = |s| CniVersion::parse(s).expect("parse");
        assert!(v("0.3.1") < v("0.4.0"));
        assert!(v("0.4.0") < v("1.0.0"));
        assert!(v("1.0.0") < v("1.1.0"));
        assert_eq!(v("1.0.0").to_string(), "1.0.0");
        for bad in [
            "", "1", "1.0", "1.0.0.0", "a.b.c", "1.-1.0", "1..0", " 1.0.0",
        ] {
            assert_eq!(CniVersion::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn features_by_version() {
        let v = |s| CniVersion::parse(s).expect("parse");
        assert!(!v("0.3.1").has_check());
        assert!(v("0.4.0").has_check());
        assert!(!v("1.0.0").has_status_and_gc());
        assert!(v("1.1.0").has_status_and_gc());
        assert!(!v("0.2.0").is_supported());
        assert!(!v("1.2.0").is_supported());
        assert!(v("1.0.0").is_supported());
    }
}
