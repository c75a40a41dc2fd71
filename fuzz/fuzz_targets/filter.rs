//! containerd filter strings (`berth_daemon::events::Filter::parse`, used by Events.Subscribe,
//! Containers.List and Leases.List). Input: one filter string per line. Oracle: no panic or
//! runaway regex; a parsed filter evaluates against events with and without the fields it names.
#![no_main]

use std::collections::BTreeMap;

use berth_daemon::events::{Fields, Filter};
use libfuzzer_sys::fuzz_target;

/// A flat event: field paths joined with `.`.
struct Event(BTreeMap<String, String>);

impl Fields for Event {
    fn field(&self, path: &[String]) -> Option<String> {
        self.0.get(&path.join(".")).cloned()
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let filters: Vec<String> = s.split('\n').map(str::to_string).collect();
    let Ok(filter) = Filter::parse(&filters) else {
        return;
    };
    let mut ev = BTreeMap::new();
    ev.insert("topic".to_string(), "/tasks/exit".to_string());
    ev.insert("namespace".to_string(), "default".to_string());
    ev.insert("event.container_id".to_string(), "c1".to_string());
    ev.insert("labels.a.b".to_string(), "x,y".to_string());
    let full = Event(ev);
    let empty = Event(BTreeMap::new());
    let _ = filter.matches(&full);
    // A missing field never matches, so a filter that is not match-all rejects an empty event...
    // unless one of its strings was blank (blank means match-all).
    if !filter.is_match_all() {
        assert!(
            !filter.matches(&empty),
            "{filters:?} matched an event without fields"
        );
    }
});
