//! Exit waiters for Tasks.Wait, kept OUTSIDE the ContainerActor so a pending Wait survives an actor restart.
//!
//! One `watch` channel per process (init or exec): the actor (or its rebuilt successor) sets the exit, every
//! waiter sees it, and a Wait that comes later returns at once. Entries go away only with Delete/DeleteProcess.
//! Never block here: waiting is the caller's `await`.

use dashmap::DashMap;
use tokio::sync::watch;

use super::state::ExitInfo;

/// (namespace, container id, exec id — empty for init).
type ProcKey = (String, String, String);

/// All exit watches of berthd.
#[derive(Default)]
pub struct Waiters {
    map: DashMap<ProcKey, watch::Sender<Option<ExitInfo>>>,
}

fn key(ns: &str, id: &str, exec_id: &str) -> ProcKey {
    (ns.to_string(), id.to_string(), exec_id.to_string())
}

impl Waiters {
    /// Make sure a watch exists for the process (keeps an existing one and its waiters).
    pub fn register(&self, ns: &str, id: &str, exec_id: &str) {
        self.map
            .entry(key(ns, id, exec_id))
            .or_insert_with(|| watch::channel(None).0);
    }

    /// A fresh watch for a new process (an exec id can be reused after DeleteProcess: never keep an old exit).
    pub fn reset(&self, ns: &str, id: &str, exec_id: &str) {
        self.map
            .insert(key(ns, id, exec_id), watch::channel(None).0);
    }

    /// Record the exit of a registered process; wakes every waiter. Unknown processes are ignored (a replayed
    /// exit of an exec that was already deleted must not come back).
    pub fn exited(&self, ns: &str, id: &str, exec_id: &str, exit: ExitInfo) {
        if let Some(entry) = self.map.get(&key(ns, id, exec_id)) {
            entry.send_if_modified(|cur| {
                if cur.is_none() {
                    *cur = Some(exit);
                    true
                } else {
                    false
                }
            });
        }
    }

    /// A receiver for the process's exit, if the process is known.
    pub fn subscribe(
        &self,
        ns: &str,
        id: &str,
        exec_id: &str,
    ) -> Option<watch::Receiver<Option<ExitInfo>>> {
        self.map.get(&key(ns, id, exec_id)).map(|s| s.subscribe())
    }

    /// Forget one process (DeleteProcess).
    pub fn remove(&self, ns: &str, id: &str, exec_id: &str) {
        self.map.remove(&key(ns, id, exec_id));
    }

    /// Forget a task and all its execs (Delete).
    pub fn remove_task(&self, ns: &str, id: &str) {
        self.map.retain(|k, _| !(k.0 == ns && k.1 == id));
    }
}

/// Wait until the watched process has exited. `None` when the process was deleted meanwhile.
pub async fn wait_exit(mut rx: watch::Receiver<Option<ExitInfo>>) -> Option<ExitInfo> {
    loop {
        if let Some(exit) = *rx.borrow_and_update() {
            return Some(exit);
        }
        if rx.changed().await.is_err() {
            return *rx.borrow();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_before_and_after_exit() {
        let w = Waiters::default();
        w.register("ns", "c", "");
        let rx = w.subscribe("ns", "c", "").expect("registered");
        let pending = tokio::spawn(wait_exit(rx));
        // Registering again (as a restarted actor does) keeps the pending waiter.
        w.register("ns", "c", "");
        let exit = ExitInfo::new(1, 3, None);
        w.exited("ns", "c", "", exit);
        assert_eq!(pending.await.expect("joins"), Some(exit));
        // A late Wait returns at once, with the first exit kept.
        w.exited("ns", "c", "", ExitInfo::new(1, 9, None));
        let late = wait_exit(w.subscribe("ns", "c", "").expect("kept")).await;
        assert_eq!(late.map(|e| e.status), Some(3));
        w.remove_task("ns", "c");
        assert!(w.subscribe("ns", "c", "").is_none());
        // An exit for a process nobody registered is dropped; a reused exec id starts afresh.
        w.exited("ns", "c", "gone", exit);
        assert!(w.subscribe("ns", "c", "gone").is_none());
        w.register("ns", "c", "e");
        w.exited("ns", "c", "e", exit);
        w.reset("ns", "c", "e");
        assert_eq!(*w.subscribe("ns", "c", "e").expect("reset").borrow(), None);
    }
}
