//! The fault suite's machinery (`tests/tests/fault_suite.rs`): a berthd on a small tmpfs root with networks
//! ([`rig`]), a bounded load of concurrent gRPC clients that record what berthd acknowledged ([`load`]), a
//! seeded chaos driver that kills berthd, arms failpoints, kills shims and fills the root ([`chaos`]), and the
//! invariants checked against the clients' ground truth after every round ([`checks`]).
//!
//! Randomness comes only from [`Rng`] seeded by [`Settings::seed`] (printed; `BERTH_FAULT_SEED` replays the
//! same fault schedule). This module must never clean up what berthd should have removed itself: leftovers
//! are findings, reported by the checks, and only the fixtures' guards remove them at the very end.

pub mod chaos;
pub mod checks;
pub mod load;
mod recover;
pub mod rig;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// How big a run is: from the environment, with CI-sized defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `BERTH_FAULT_SEED` (decimal or 0x-hex), else from the clock.
    pub seed: u64,
    /// `BERTH_FAULT_ROUNDS` (default 40): fault rounds, each followed by the invariant checks.
    pub rounds: u64,
    /// `BERTH_FAULT_SECS`: also stop starting rounds after this long (soak mode); unset = rounds only.
    pub secs: Option<u64>,
    /// `BERTH_FAULT_CLIENTS` (default 3): concurrent load clients.
    pub clients: usize,
    /// `BERTH_FAULT_ONLY` (`berthd`, `failpoint`, `shim` or `fill`): only that kind of fault, to chase one.
    pub only: Option<String>,
}

impl Settings {
    /// Read the environment; a variable that is set but does not parse is an error naming it.
    pub fn from_env() -> Settings {
        fn num(var: &str) -> Option<u64> {
            let v = std::env::var(var).ok().filter(|v| !v.trim().is_empty())?;
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            };
            Some(parsed.unwrap_or_else(|| panic!("{var}={v:?} is not a number")))
        }
        let seed = num("BERTH_FAULT_SEED").unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ u64::from(std::process::id())
        });
        let secs = num("BERTH_FAULT_SECS");
        // A soak given only a duration runs rounds until the time is up.
        let default_rounds = if secs.is_some() { u64::MAX } else { 40 };
        Settings {
            seed,
            rounds: num("BERTH_FAULT_ROUNDS").unwrap_or(default_rounds),
            secs,
            clients: num("BERTH_FAULT_CLIENTS").map_or(3, |n| n.clamp(1, 32) as usize),
            only: std::env::var("BERTH_FAULT_ONLY")
                .ok()
                .filter(|v| !v.is_empty()),
        }
    }
}

/// splitmix64: small, seedable, good enough to pick faults and timings.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A duration uniform in `lo..hi`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.below(span.max(1)))
    }

    /// One element of `items` (panics when empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Named counters (operations by kind, faults by kind, invariant checks), printed at the end.
#[derive(Debug, Default)]
pub struct Counts(Mutex<BTreeMap<String, u64>>);

impl Counts {
    /// Add one to `key`.
    pub fn add(&self, key: impl Into<String>) {
        self.add_n(key, 1);
    }

    /// Add `n` to `key`.
    pub fn add_n(&self, key: impl Into<String>, n: u64) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.into())
            .or_default() += n;
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The counters whose key starts with `prefix`, one per line, and their sum.
    pub fn report(&self, prefix: &str) -> (String, u64) {
        let mut text = String::new();
        let mut sum = 0;
        for (k, v) in self.snapshot() {
            if let Some(rest) = k.strip_prefix(prefix) {
                text.push_str(&format!("  {rest:<58} {v}\n"));
                sum += v;
            }
        }
        (text, sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_replays_from_its_seed() {
        let a: Vec<u64> = (0..5)
            .scan(Rng::new(42), |r, _| Some(r.below(1000)))
            .collect();
        let b: Vec<u64> = (0..5)
            .scan(Rng::new(42), |r, _| Some(r.below(1000)))
            .collect();
        let c: Vec<u64> = (0..5)
            .scan(Rng::new(43), |r, _| Some(r.below(1000)))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|x| *x < 1000));
    }
}
