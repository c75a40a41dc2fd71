//! CNI plugin success output (`berth_net::AttachResult::from_json`, what a plugin chain's last
//! plugin prints and what the attachment cache reads back). Oracle: no panic; every accepted
//! result's interface indexes are in range, so the sandbox-IP helpers never index out of bounds.
#![no_main]

use berth_net::{AttachResult, CniVersion, IpNet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Some(v) = raw.get("cniVersion").and_then(|v| v.as_str()) {
        if let Some(parsed) = CniVersion::parse(v) {
            let _ = (
                parsed.is_supported(),
                parsed.has_check(),
                parsed.has_status_and_gc(),
            );
        }
    }
    let Ok(r) = AttachResult::from_json(raw.clone()) else {
        return;
    };
    assert_eq!(r.raw, raw, "the raw result must be kept as it was");
    let _ = (r.first_ip(true), r.first_ip(false));
    for ip in r.sandbox_ips() {
        let shown = ip.address.to_string();
        let back: IpNet = shown
            .parse()
            .unwrap_or_else(|e| panic!("{shown:?} printed from a parsed address: {e:?}"));
        assert_eq!(back, ip.address);
        let net = ip.address;
        assert!(
            net.contains(net.addr),
            "{net} does not contain its own address"
        );
        if let Some(gw) = net.nth(1) {
            assert!(net.contains(gw), "{net}: nth(1) = {gw} lies outside");
        }
    }
});
