//! OCI runtime config.json loading and validation (`berth_oci::spec::parse`, what every
//! berth-runc create reads from a bundle). Oracle: no panic; an accepted spec has what berth-runc
//! relies on afterwards (root, non-empty args, absolute cwd and mount destinations).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = berth_oci::spec::parse(data, Path::new("fuzz/config.json")) else {
        return;
    };
    assert!(spec.root().is_some());
    let process = spec
        .process()
        .as_ref()
        .expect("validated spec has a process");
    assert!(process.args().as_ref().is_some_and(|a| !a.is_empty()));
    assert!(process.cwd().is_absolute());
    for m in spec.mounts().iter().flatten() {
        assert!(m.destination().is_absolute());
    }
});
