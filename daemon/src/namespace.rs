//! Request metadata helpers: the `containerd-namespace` and `containerd-lease` headers, and containerd's
//! identifier and label rules.
//!
//! This module only validates; it must never create namespaces or touch the store.

use std::collections::HashMap;

use tonic::metadata::MetadataMap;
use tonic::Status;

/// The header carrying the namespace on every containerd call.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The header carrying the client's lease.
pub const LEASE_HEADER: &str = "containerd-lease";
/// Longest identifier containerd accepts.
pub const MAX_ID_LEN: usize = 76;
/// Longest `key + value` of one label.
pub const MAX_LABEL_LEN: usize = 4096;

/// The request's namespace: FailedPrecondition "namespace is required" when absent, InvalidArgument when invalid.
pub fn namespace_from(md: &MetadataMap) -> Result<String, Status> {
    let ns =
        namespace_opt(md)?.ok_or_else(|| Status::failed_precondition("namespace is required"))?;
    Ok(ns)
}

/// The request's namespace if one is given (validated).
pub fn namespace_opt(md: &MetadataMap) -> Result<Option<String>, Status> {
    let Some(v) = md.get(NAMESPACE_HEADER) else {
        return Ok(None);
    };
    let ns = v
        .to_str()
        .map_err(|_| Status::invalid_argument("namespace header is not valid ASCII"))?;
    if ns.is_empty() {
        return Err(Status::failed_precondition("namespace is required"));
    }
    validate_id("namespace", ns)?;
    Ok(Some(ns.to_string()))
}

/// The request's lease, if any.
pub fn lease_from(md: &MetadataMap) -> Option<String> {
    md.get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Whether `id` follows `^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$` and is at most 76 characters.
pub fn is_valid_id(id: &str) -> bool {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return false;
    }
    let mut prev_sep = true; // the first char must be alphanumeric
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() {
            prev_sep = false;
        } else if matches!(b, b'.' | b'_' | b'-') {
            if prev_sep {
                return false;
            }
            prev_sep = true;
        } else {
            return false;
        }
    }
    !prev_sep
}

/// InvalidArgument unless `id` is a valid identifier; `kind` names it in the message ("container", "namespace").
pub fn validate_id(kind: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{kind} id must not be empty"
        )));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "{kind} id {id:?} is longer than {MAX_ID_LEN} characters"
        )));
    }
    if !is_valid_id(id) {
        return Err(Status::invalid_argument(format!(
            "{kind} id {id:?} must match ^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$"
        )));
    }
    Ok(())
}

/// InvalidArgument when a label is too long or has an empty key.
pub fn validate_labels(labels: &HashMap<String, String>) -> Result<(), Status> {
    for (k, v) in labels {
        validate_label(k, v)?;
    }
    Ok(())
}

/// One label's rule: non-empty key, `len(k) + len(v) <= 4096`.
pub fn validate_label(k: &str, v: &str) -> Result<(), Status> {
    if k.is_empty() {
        return Err(Status::invalid_argument("label key must not be empty"));
    }
    if k.len() + v.len() > MAX_LABEL_LEN {
        return Err(Status::invalid_argument(format!(
            "label key and value of {k:?} are longer than {MAX_LABEL_LEN} bytes"
        )));
    }
    Ok(())
}

/// InvalidArgument unless `topic` is `/` followed by `/`-separated identifiers.
pub fn validate_topic(topic: &str) -> Result<(), Status> {
    let Some(rest) = topic.strip_prefix('/') else {
        return Err(Status::invalid_argument(format!(
            "topic {topic:?} must start with '/'"
        )));
    };
    if rest.is_empty() || rest.split('/').any(|c| !is_valid_id(c)) {
        return Err(Status::invalid_argument(format!(
            "topic {topic:?} must be /-separated identifiers"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "default", "a.b-c_d", "A1", &"x".repeat(76)] {
            assert!(is_valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a b",
            "a/b",
            "ü",
            &"x".repeat(77),
            ".",
        ] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn headers() {
        let mut md = MetadataMap::new();
        assert_eq!(
            namespace_from(&md).expect_err("absent").code(),
            tonic::Code::FailedPrecondition
        );
        md.insert(NAMESPACE_HEADER, "bad ns".parse().expect("ascii"));
        assert_eq!(
            namespace_from(&md).expect_err("bad").code(),
            tonic::Code::InvalidArgument
        );
        md.insert(NAMESPACE_HEADER, "good".parse().expect("ascii"));
        assert_eq!(namespace_from(&md).expect("good"), "good");
    }

    #[test]
    fn topics() {
        assert!(validate_topic("/tasks/exit").is_ok());
        assert!(validate_topic("/a").is_ok());
        assert!(validate_topic("tasks/exit").is_err());
        assert!(validate_topic("/").is_err());
        assert!(validate_topic("/tasks//exit").is_err());
    }
}
