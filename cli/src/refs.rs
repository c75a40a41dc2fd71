//! Image references as Docker users type them: `busybox` means
//! `docker.io/library/busybox:latest`, `me/app` means `docker.io/me/app:latest`, a name
//! without a tag gets `:latest`.
//!
//! Pure string work; this module must never ask berthd or a registry anything.

/// The fully qualified form of `reference` (unchanged when it already is one).
pub fn normalize(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    // A tag is a ':' after the last '/'.
    let last = name.rsplit('/').next().unwrap_or(name);
    let (name, tag) = match last.rfind(':') {
        Some(i) => {
            let cut = name.len() - last.len() + i;
            (&name[..cut], Some(&name[cut + 1..]))
        }
        None => (name, None),
    };
    let mut parts = name.splitn(2, '/');
    let first = parts.next().unwrap_or("");
    let rest = parts.next();
    let full = match rest {
        Some(rest) if first.contains('.') || first.contains(':') || first == "localhost" => {
            format!("{first}/{rest}")
        }
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    };
    match (tag, digest) {
        (Some(t), Some(d)) => format!("{full}:{t}@{d}"),
        (Some(t), None) => format!("{full}:{t}"),
        (None, Some(d)) => format!("{full}@{d}"),
        (None, None) => format!("{full}:latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_style_names() {
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize("me/app"), "docker.io/me/app:latest");
        assert_eq!(
            normalize("127.0.0.1:5000/busybox"),
            "127.0.0.1:5000/busybox:latest"
        );
        assert_eq!(
            normalize("127.0.0.1:5000/busybox:x"),
            "127.0.0.1:5000/busybox:x"
        );
        assert_eq!(normalize("localhost/a/b:1"), "localhost/a/b:1");
        assert_eq!(
            normalize("docker.io/library/busybox:latest"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("busybox@sha256:ab"),
            "docker.io/library/busybox@sha256:ab"
        );
    }
}
