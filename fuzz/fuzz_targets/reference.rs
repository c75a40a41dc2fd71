//! Image references (`berth_registry::Reference::parse`, what `berth pull`, Images and Transfer
//! parse). Oracle: no panic; an accepted reference prints as a string that parses back to the
//! same reference, and its accessors agree with that string.
#![no_main]

use berth_registry::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(r) = Reference::parse(s) else {
        return;
    };
    let printed = r.to_string();
    let again = Reference::parse(&printed)
        .unwrap_or_else(|e| panic!("{s:?} parsed, but its normal form {printed:?} does not: {e}"));
    assert_eq!(r, again, "{s:?} → {printed:?} parses to another reference");
    assert_eq!(r.name(), format!("{}/{}", r.registry(), r.repository()));
    assert!(
        r.tag().is_some() || r.digest().is_some(),
        "{s:?}: neither tag nor digest"
    );
    let _ = (r.api_host(), r.object(), r.is_loopback());
    let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let pinned = r.with_digest(d);
    assert_eq!(pinned.digest(), Some(d));
    assert_eq!(
        Reference::parse(&pinned.to_string()).ok().as_ref(),
        Some(&pinned)
    );
});
