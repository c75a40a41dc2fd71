//! Manifests, indexes and image configs, as a pull, `berth image import` and Transfer read them:
//! the shared serde types of `berth_image::oci`, the registry's index selection
//! (`berth_registry::select_manifest`), digests and chain ids. Oracle: no panic; what parses
//! re-serialises to JSON that parses to the same value.
#![no_main]

use berth_image::oci::{chain_ids, ImageConfig, Index, Manifest, Platform};
use berth_image::Digest;
use libfuzzer_sys::fuzz_target;

fn roundtrip<T>(v: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_vec(v).expect("a parsed value serialises");
    let back: T = serde_json::from_slice(&json).expect("re-serialised JSON parses");
    assert_eq!(&back, v);
}

fuzz_target!(|data: &[u8]| {
    let host = Platform::host();
    let _ = berth_registry::select_manifest(data, &host);
    if let Ok(idx) = serde_json::from_slice::<Index>(data) {
        roundtrip(&idx);
        for d in &idx.manifests {
            let _ = d.digest.parse::<Digest>();
            if let Some(p) = &d.platform {
                let _ = (p.matches(&host), Platform::parse(&p.to_string()));
            }
        }
        let _ = idx.select(&host);
    }
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        roundtrip(&m);
        for d in std::iter::once(&m.config).chain(&m.layers) {
            let _ = d.digest.parse::<Digest>();
        }
    }
    if let Ok(c) = serde_json::from_slice::<ImageConfig>(data) {
        roundtrip(&c);
        let ids = chain_ids(&c.rootfs.diff_ids);
        assert_eq!(ids.len(), c.rootfs.diff_ids.len());
        let _ = c.platform().to_string();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(p) = Platform::parse(s) {
            assert!(p.matches(&p), "{s:?}: a platform must match itself");
        }
    }
});
