//! Image references, parsed and normalised the way docker and containerd do it, so that `busybox`
//! names the same image (`docker.io/library/busybox:latest`) here as in `ctr` and `docker`.
//!
//! This module only parses strings; it must never decide where to connect (that is [`crate::hosts`]),
//! apart from naming docker.io's API host.

use std::fmt;
use std::str::FromStr;

use crate::error::{RegistryError, Result};

/// The registry docker uses when a name has no domain.
pub const DOCKER_DOMAIN: &str = "docker.io";
/// The legacy spelling of [`DOCKER_DOMAIN`], normalised to it.
const LEGACY_DOCKER_DOMAIN: &str = "index.docker.io";
/// Where docker.io's registry API really lives.
pub const DOCKER_API_HOST: &str = "registry-1.docker.io";
/// Longest normalised name (domain + path) docker accepts.
pub const NAME_MAX: usize = 255;
/// Longest tag.
pub const TAG_MAX: usize = 128;

/// A normalised image reference: `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parse and normalise `s` (`busybox` → `docker.io/library/busybox:latest`).
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |reason: &str| RegistryError::InvalidReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("repository name must have at least one component"));
        }
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "cannot specify a 64-byte hexadecimal string (an image id) as a reference",
            ));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        let (registry, mut repository) = split_domain(name);
        if registry == DOCKER_DOMAIN && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if repository.is_empty() {
            return Err(bad("repository name must have at least one component"));
        }
        if repository.to_ascii_lowercase() != repository {
            return Err(bad("repository name must be lowercase"));
        }
        check_domain(&registry).map_err(|r| bad(&r))?;
        for component in repository.split('/') {
            check_path_component(component).map_err(|r| bad(&r))?;
        }
        if registry.len() + 1 + repository.len() > NAME_MAX {
            return Err(bad(&format!(
                "repository name must not be more than {NAME_MAX} characters"
            )));
        }
        if let Some(t) = tag {
            check_tag(t).map_err(|r| bad(&r))?;
        }
        if let Some(d) = digest {
            check_digest(d).map_err(|r| bad(&r))?;
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// The registry as written in the reference (`docker.io`, `localhost:5000`): the key for hosts.toml.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host to send API requests to when no hosts.toml says otherwise (`registry-1.docker.io` for
    /// docker.io).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_DOMAIN {
            DOCKER_API_HOST
        } else {
            &self.registry
        }
    }

    /// The repository path (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` is filled in when there is neither tag nor digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry for: the digest when there is one (it wins), else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The same name pinned to `digest` (the tag is kept for display).
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// Whether the registry host is a loopback address (`localhost`, `127.0.0.0/8`, `::1`).
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

/// Whether `host` (`host[:port]`, IPv6 in brackets) names this machine.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    bare.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Reference> {
        Reference::parse(s)
    }
}

/// Docker's rule: the first component is a domain when it has a `.` or `:`, is `localhost`, or has
/// upper-case letters (which a repository path cannot have).
fn split_domain(name: &str) -> (String, String) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_ascii_lowercase() != first =>
        {
            let domain = if first == LEGACY_DOCKER_DOMAIN {
                DOCKER_DOMAIN
            } else {
                first
            };
            (domain.to_string(), rest.to_string())
        }
        _ => (DOCKER_DOMAIN.to_string(), name.to_string()),
    }
}

fn check_domain(domain: &str) -> std::result::Result<(), String> {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("invalid domain {domain:?}: unclosed '['"))?;
        if ip.is_empty() || !ip.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!("invalid IPv6 address in domain {domain:?}"));
        }
        if !after.is_empty() && !after.starts_with(':') {
            return Err(format!("invalid domain {domain:?}"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        for label in host.split('.') {
            let ok = !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(format!("invalid domain {domain:?}"));
            }
        }
    }
    if let Some(p) = port {
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("invalid port in domain {domain:?}"));
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn check_path_component(c: &str) -> std::result::Result<(), String> {
    let bad = || format!("invalid repository path component {c:?}");
    if c.is_empty() {
        return Err("repository path has an empty component".to_string());
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(bad());
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or any number of '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// `[\w][\w.-]{0,127}`
fn check_tag(t: &str) -> std::result::Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = t.chars();
    let ok = chars.next().is_some_and(word)
        && chars.all(|c| word(c) || c == '.' || c == '-')
        && t.len() <= TAG_MAX;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {t:?}: tags are [A-Za-z0-9_][A-Za-z0-9_.-]*, at most {TAG_MAX} characters"
        ))
    }
}

/// `algorithm:hex`, with sha256/sha512 checked for their exact lengths.
pub(crate) fn check_digest(d: &str) -> std::result::Result<(), String> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err(format!("invalid digest {d:?}: no algorithm"));
    };
    let alg_ok = !alg.is_empty()
        && alg.starts_with(|c: char| c.is_ascii_alphabetic())
        && alg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_+.".contains(c));
    if !alg_ok {
        return Err(format!("invalid digest {d:?}: bad algorithm"));
    }
    let want = match alg {
        "sha256" => Some(64),
        "sha512" => Some(128),
        _ => None,
    };
    let hex_ok = match want {
        Some(n) => {
            hex.len() == n
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        None => hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
    };
    if hex_ok {
        Ok(())
    } else {
        Err(format!(
            "invalid digest {d:?}: {alg} needs {} lowercase hex characters",
            want.map_or("32 or more".to_string(), |n| n.to_string())
        ))
    }
}
