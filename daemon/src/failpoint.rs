//! Failpoints: named places in berthd where a test can inject a fault (panic, instant death, delay).
//!
//! Compiled in and off by default; switched on by `BERTH_FAILPOINTS="name=action;..."` or the `failpoints`
//! config key. Actions: `panic`, `exit` (SIGKILL itself: no cleanup, no flush), `sleep(ms)`, `off`; `N*action`
//! fires N times, then the failpoint switches itself off (a supervisor test needs one panic, not a crash loop).
//! [`hit`] costs one relaxed atomic load when no failpoint is configured. This module must never be used to
//! change behaviour other than injecting the configured fault.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

/// What a failpoint does when hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `panic!` at the failpoint.
    Panic,
    /// SIGKILL the whole process at once.
    Exit,
    /// Sleep this many milliseconds (blocking the calling thread).
    Sleep(u64),
    /// Nothing.
    Off,
}

/// A failpoint specification that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid failpoint {0:?}: expected name=panic|exit|sleep(MS)|off")]
pub struct FailpointError(String);

static ENABLED: AtomicBool = AtomicBool::new(false);
/// A configured failpoint: what it does and how many more times (None: every time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    action: Action,
    remaining: Option<u64>,
}

static POINTS: OnceLock<RwLock<HashMap<String, Point>>> = OnceLock::new();

fn points() -> &'static RwLock<HashMap<String, Point>> {
    POINTS.get_or_init(|| RwLock::new(HashMap::new()))
}

/// Parse `name=action;name=N*action` (empty items are ignored).
pub fn parse(spec: &str) -> Result<Vec<(String, Action)>, FailpointError> {
    Ok(parse_counted(spec)?
        .into_iter()
        .map(|(name, p)| (name, p.action))
        .collect())
}

fn parse_counted(spec: &str) -> Result<Vec<(String, Point)>, FailpointError> {
    let mut out = Vec::new();
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, action) = item
            .split_once('=')
            .ok_or_else(|| FailpointError(item.to_string()))?;
        let name = name.trim();
        let action = action.trim();
        if name.is_empty() {
            return Err(FailpointError(item.to_string()));
        }
        let (remaining, action) = match action.split_once('*') {
            Some((n, a)) => (
                Some(
                    n.trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| FailpointError(item.to_string()))?,
                ),
                a.trim(),
            ),
            None => (None, action),
        };
        let action = match action {
            "panic" => Action::Panic,
            "exit" => Action::Exit,
            "off" => Action::Off,
            a if a.starts_with("sleep(") && a.ends_with(')') => {
                let ms = a["sleep(".len()..a.len() - 1]
                    .parse::<u64>()
                    .map_err(|_| FailpointError(item.to_string()))?;
                Action::Sleep(ms)
            }
            _ => return Err(FailpointError(item.to_string())),
        };
        out.push((name.to_string(), Point { action, remaining }));
    }
    Ok(out)
}

/// Configure failpoints from a spec (adds to / overrides what is set).
pub fn configure(spec: &str) -> Result<(), FailpointError> {
    let parsed = parse_counted(spec)?;
    let mut map = points().write().unwrap_or_else(|e| e.into_inner());
    for (name, point) in parsed {
        if point.action == Action::Off {
            map.remove(&name);
        } else {
            map.insert(name, point);
        }
    }
    ENABLED.store(!map.is_empty(), Ordering::Release);
    Ok(())
}

/// Configure from the config key, then from `BERTH_FAILPOINTS` (which wins).
pub fn init(config_spec: &str) -> Result<(), FailpointError> {
    configure(config_spec)?;
    if let Ok(env) = std::env::var("BERTH_FAILPOINTS") {
        configure(&env)?;
    }
    Ok(())
}

/// The action configured for `name`, if any (counting down a `N*action`, which is removed after its last use).
pub fn action(name: &str) -> Option<Action> {
    if !ENABLED.load(Ordering::Acquire) {
        return None;
    }
    let point = {
        let map = points().read().unwrap_or_else(|e| e.into_inner());
        *map.get(name)?
    };
    if point.remaining.is_none() {
        return Some(point.action);
    }
    let mut map = points().write().unwrap_or_else(|e| e.into_inner());
    let p = map.get_mut(name)?;
    match p.remaining {
        Some(n) if n <= 1 => {
            let action = p.action;
            map.remove(name);
            Some(action)
        }
        Some(n) => {
            p.remaining = Some(n - 1);
            Some(p.action)
        }
        None => Some(p.action),
    }
}

/// Perform the action configured for `name`, if any.
pub fn hit(name: &str) {
    if let Some(action) = action(name) {
        perform(name, action);
    }
}

/// [`hit`] for async code: a `sleep(ms)` waits without blocking the thread (an actor's arbiter runs other
/// actors meanwhile); other actions are as in [`hit`].
pub async fn hit_async(name: &str) {
    match action(name) {
        None => {}
        Some(Action::Sleep(ms)) => {
            tracing::warn!(failpoint = name, ms, "failpoint hit (async sleep)");
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Some(action) => perform(name, action),
    }
}

/// Perform `action` as the failpoint `name` (for a caller that looked it up with [`action`] first).
pub fn perform(name: &str, action: Action) {
    tracing::warn!(failpoint = name, ?action, "failpoint hit");
    match action {
        Action::Panic => panic!("failpoint {name} triggered"),
        Action::Exit => {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
            // SIGKILL to ourselves is delivered before kill() returns; never continue past it.
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Action::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
        Action::Off => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_actions() {
        let p = parse("a=panic; b=sleep(5);c=exit;;d=off").expect("parses");
        assert_eq!(
            p,
            vec![
                ("a".into(), Action::Panic),
                ("b".into(), Action::Sleep(5)),
                ("c".into(), Action::Exit),
                ("d".into(), Action::Off)
            ]
        );
        assert!(parse("x").is_err());
        assert!(parse("x=boom").is_err());
        assert!(parse("x=sleep(a)").is_err());
        assert_eq!(
            parse("x=2*panic").expect("parses"),
            vec![("x".into(), Action::Panic)]
        );
        assert!(parse("x=0*panic").is_err());
        assert!(parse("x=a*panic").is_err());
    }

    #[test]
    fn counted_failpoint_switches_itself_off() {
        configure("unit.test.counted=2*sleep(0)").expect("configure");
        assert_eq!(action("unit.test.counted"), Some(Action::Sleep(0)));
        assert_eq!(action("unit.test.counted"), Some(Action::Sleep(0)));
        assert_eq!(action("unit.test.counted"), None);
    }

    #[test]
    fn configured_panic_fires_and_off_clears() {
        configure("unit.test.fp=panic").expect("configure");
        let r = std::panic::catch_unwind(|| hit("unit.test.fp"));
        assert!(r.is_err());
        configure("unit.test.fp=off").expect("configure");
        hit("unit.test.fp");
        hit("never.configured");
    }
}
