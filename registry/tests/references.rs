//! Reference parsing: docker's normalisation and its errors, as a table.

use berth_registry::{Reference, RegistryError};

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// input, Display, registry, repository, tag, digest, API host.
type Row<'a> = (
    &'a str,
    String,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
);

#[test]
fn normalises_like_docker() {
    let table: &[Row] = &[
        (
            "busybox",
            "docker.io/library/busybox:latest".into(),
            "docker.io",
            "library/busybox",
            Some("latest"),
            None,
            "registry-1.docker.io",
        ),
        (
            "busybox:1.36",
            "docker.io/library/busybox:1.36".into(),
            "docker.io",
            "library/busybox",
            Some("1.36"),
            None,
            "registry-1.docker.io",
        ),
        (
            "user/app",
            "docker.io/user/app:latest".into(),
            "docker.io",
            "user/app",
            Some("latest"),
            None,
            "registry-1.docker.io",
        ),
        (
            "docker.io/busybox",
            "docker.io/library/busybox:latest".into(),
            "docker.io",
            "library/busybox",
            Some("latest"),
            None,
            "registry-1.docker.io",
        ),
        (
            "index.docker.io/user/app:v1",
            "docker.io/user/app:v1".into(),
            "docker.io",
            "user/app",
            Some("v1"),
            None,
            "registry-1.docker.io",
        ),
        (
            "localhost/x",
            "localhost/x:latest".into(),
            "localhost",
            "x",
            Some("latest"),
            None,
            "localhost",
        ),
        (
            "localhost:5000/x",
            "localhost:5000/x:latest".into(),
            "localhost:5000",
            "x",
            Some("latest"),
            None,
            "localhost:5000",
        ),
        (
            "127.0.0.1:5000/a/b:tag",
            "127.0.0.1:5000/a/b:tag".into(),
            "127.0.0.1:5000",
            "a/b",
            Some("tag"),
            None,
            "127.0.0.1:5000",
        ),
        (
            "[::1]:5000/a",
            "[::1]:5000/a:latest".into(),
            "[::1]:5000",
            "a",
            Some("latest"),
            None,
            "[::1]:5000",
        ),
        (
            "quay.io/org/sub/img_x.y-z__w:T_1.2-3",
            "quay.io/org/sub/img_x.y-z__w:T_1.2-3".into(),
            "quay.io",
            "org/sub/img_x.y-z__w",
            Some("T_1.2-3"),
            None,
            "quay.io",
        ),
        (
            &format!("x@{D}"),
            format!("docker.io/library/x@{D}"),
            "docker.io",
            "library/x",
            None,
            Some(D),
            "registry-1.docker.io",
        ),
        (
            &format!("x:tag@{D}"),
            format!("docker.io/library/x:tag@{D}"),
            "docker.io",
            "library/x",
            Some("tag"),
            Some(D),
            "registry-1.docker.io",
        ),
        (
            &format!("r.example:443/a@{D}"),
            format!("r.example:443/a@{D}"),
            "r.example:443",
            "a",
            None,
            Some(D),
            "r.example:443",
        ),
    ];
    for (input, display, registry, repo, tag, digest, api) in table {
        let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(&r.to_string(), display, "{input}");
        assert_eq!(r.registry(), *registry, "{input}");
        assert_eq!(r.repository(), *repo, "{input}");
        assert_eq!(r.tag(), *tag, "{input}");
        assert_eq!(r.digest(), *digest, "{input}");
        assert_eq!(r.api_host(), *api, "{input}");
        // The digest wins for fetching; the tag otherwise.
        assert_eq!(r.object(), digest.or(*tag).unwrap_or("latest"), "{input}");
        // Display is a fixed point.
        assert_eq!(
            Reference::parse(display).expect("reparse").to_string(),
            *display
        );
    }
}

#[test]
fn refuses_bad_references_saying_why() {
    let long = format!("r.example/{}", "a".repeat(250));
    let long_tag = format!("x:{}", "t".repeat(129));
    let table: &[(&str, &str)] = &[
        ("", "at least one component"),
        ("Foo", "repository name must be lowercase"),
        ("user/App", "repository name must be lowercase"),
        ("r.example/Foo/bar", "repository name must be lowercase"),
        ("a//b", "empty component"),
        ("a/b/", "empty component"),
        ("-a", "invalid repository path component"),
        ("a..b", "invalid repository path component"),
        ("a___b", "invalid repository path component"),
        ("a-", "invalid repository path component"),
        ("x:", "invalid tag"),
        ("x:-tag", "invalid tag"),
        ("x:t@g", "invalid digest"),
        (&long_tag, "invalid tag"),
        (&long, "must not be more than 255 characters"),
        ("x@sha256:abc", "invalid digest"),
        (
            "x@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
            "invalid digest",
        ),
        ("x@md5", "no algorithm"),
        ("r.example:port/x", "invalid port"),
        ("-r.example/x", "invalid domain"),
        (
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "64-byte hexadecimal",
        ),
    ];
    for (input, want) in table {
        match Reference::parse(input) {
            Ok(r) => panic!("{input:?} parsed as {r}"),
            Err(e @ RegistryError::InvalidReference { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with(&format!("invalid reference {input:?}: "))
                        && msg.contains(want),
                    "{input:?}: {msg}"
                );
            }
            Err(e) => panic!("{input:?}: wrong error kind {e:?}"),
        }
    }
    assert_eq!(
        Reference::parse("Foo").expect_err("upper").to_string(),
        "invalid reference \"Foo\": repository name must be lowercase"
    );
}

#[test]
fn loopback_hosts() {
    for (r, lo) in [
        ("localhost:5000/x", true),
        ("127.0.0.1:5000/x", true),
        ("127.1.2.3/x", true),
        ("[::1]:5000/x", true),
        ("r.example/x", false),
        ("busybox", false),
    ] {
        assert_eq!(Reference::parse(r).expect("parse").is_loopback(), lo, "{r}");
    }
}
