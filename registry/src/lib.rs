//! OCI distribution client: references, hosts config, auth, TLS, manifests, blob fetches.
