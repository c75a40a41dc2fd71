//! Supervision vocabulary and the RootSupervisor.
//!
//! - [`RestartPolicy`] (Permanent / Transient / Never) and [`RestartLimit`] (at most N restarts per window) are
//!   what every Berth supervisor applies.
//! - [`catch`] runs a handler body and turns a panic into an `Err`, so the actor can mark itself failed,
//!   `ctx.stop()` and let its supervisor restart it (actix's own Supervisor restarts on stop, not on panic).
//! - [`RootSupervisor`] is an actix actor owning named children: each child is started by a factory closure on the
//!   supervisor's arbiter and reports its stop through [`SupervisedBy`]; the supervisor restarts it according to
//!   its policy and limit, and escalates (calls its escalation hook) when the limit is exceeded.
//!
//! This module must never restart an actor from stale in-memory state: factories rebuild state from the store.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use actix::prelude::*;

/// When a supervisor restarts a child that stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Always restart (the child should run for the daemon's lifetime).
    Permanent,
    /// Restart only after an abnormal stop (a caught panic, a failure).
    Transient,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// Whether a child that stopped (abnormally or not) is restarted under this policy.
    pub fn should_restart(self, abnormal: bool) -> bool {
        match self {
            RestartPolicy::Permanent => true,
            RestartPolicy::Transient => abnormal,
            RestartPolicy::Never => false,
        }
    }
}

/// At most `max` restarts within a sliding `window`.
#[derive(Debug, Clone)]
pub struct RestartLimit {
    max: u32,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartLimit {
    /// A limit of `max` restarts per `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        RestartLimit {
            max,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Record a restart if the limit allows one now; false means the supervisor must escalate.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        while let Some(first) = self.recent.front() {
            if now.duration_since(*first) > self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() as u64 >= u64::from(self.max) {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

impl Default for RestartLimit {
    /// 5 restarts per 10 seconds.
    fn default() -> Self {
        RestartLimit::new(5, Duration::from_secs(10))
    }
}

/// Run `f`, catching a panic: `Err(message)` if it panicked.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|payload| panic_message(&*payload))
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Sent by a supervised child when it has stopped.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ChildExited {
    /// The child's name under its supervisor.
    pub name: String,
    /// True when it stopped because of a failure (a caught panic), false on an orderly stop.
    pub abnormal: bool,
}

/// A child's link to its supervisor: keep it in the actor, call [`SupervisedBy::failed`] before `ctx.stop()` on a
/// failure, and [`SupervisedBy::stopped`] from `Actor::stopped`.
#[derive(Debug, Clone)]
pub struct SupervisedBy {
    name: String,
    to: Recipient<ChildExited>,
    abnormal: bool,
}

impl SupervisedBy {
    /// Mark the child as failed (its stop will be reported as abnormal).
    pub fn failed(&mut self) {
        self.abnormal = true;
    }

    /// Report the stop to the supervisor.
    pub fn stopped(&self) {
        self.to.do_send(ChildExited {
            name: self.name.clone(),
            abnormal: self.abnormal,
        });
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Starts a child on the current arbiter (the supervisor's), handing it its [`SupervisedBy`].
pub type StartChild = Box<dyn Fn(SupervisedBy) + Send>;

/// A child the RootSupervisor owns.
pub struct ChildSpec {
    /// Unique name.
    pub name: String,
    /// Restart policy.
    pub policy: RestartPolicy,
    /// Restart limit; exceeding it escalates.
    pub limit: RestartLimit,
    /// Factory (rebuilds the child's state from the store).
    pub start: StartChild,
}

/// Add and start a child.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddChild(pub ChildSpec);

/// Called when a child exceeds its restart limit (argument: the child's name).
pub type Escalate = Box<dyn Fn(&str) + Send>;

/// The root of berthd's supervision tree (OneForOne: a failed child is restarted alone).
pub struct RootSupervisor {
    children: HashMap<String, ChildSpec>,
    escalate: Escalate,
}

impl RootSupervisor {
    /// A supervisor that calls `escalate` when a child exceeds its restart limit.
    pub fn new(escalate: Escalate) -> Self {
        RootSupervisor {
            children: HashMap::new(),
            escalate,
        }
    }

    fn link(ctx: &mut Context<Self>, name: &str) -> SupervisedBy {
        SupervisedBy {
            name: name.to_string(),
            to: ctx.address().recipient(),
            abnormal: false,
        }
    }
}

impl Actor for RootSupervisor {
    type Context = Context<Self>;
}

impl Handler<AddChild> for RootSupervisor {
    type Result = ();
    fn handle(&mut self, msg: AddChild, ctx: &mut Context<Self>) {
        let spec = msg.0;
        tracing::debug!(child = %spec.name, policy = ?spec.policy, "supervising child");
        (spec.start)(Self::link(ctx, &spec.name));
        self.children.insert(spec.name.clone(), spec);
    }
}

impl Handler<ChildExited> for RootSupervisor {
    type Result = ();
    fn handle(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        let Some(spec) = self.children.get_mut(&msg.name) else {
            return;
        };
        if !spec.policy.should_restart(msg.abnormal) {
            tracing::info!(child = %msg.name, abnormal = msg.abnormal, "child stopped; not restarting");
            self.children.remove(&msg.name);
            return;
        }
        if !spec.limit.allow() {
            tracing::error!(child = %msg.name, "child exceeded its restart limit; escalating");
            self.children.remove(&msg.name);
            (self.escalate)(&msg.name);
            return;
        }
        tracing::warn!(child = %msg.name, abnormal = msg.abnormal, "restarting child");
        (spec.start)(Self::link(ctx, &msg.name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn policies() {
        assert!(RestartPolicy::Permanent.should_restart(false));
        assert!(RestartPolicy::Transient.should_restart(true));
        assert!(!RestartPolicy::Transient.should_restart(false));
        assert!(!RestartPolicy::Never.should_restart(true));
    }

    #[test]
    fn limit_window() {
        let mut l = RestartLimit::new(2, Duration::from_millis(50));
        assert!(l.allow());
        assert!(l.allow());
        assert!(!l.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert!(l.allow());
    }

    #[test]
    fn catch_returns_panic_message() {
        assert_eq!(catch(|| 3), Ok(3));
        let e = catch(|| -> u32 { panic!("boom {}", 1) }).expect_err("panicked");
        assert_eq!(e, "boom 1");
    }

    struct Crashy {
        link: SupervisedBy,
    }
    impl Actor for Crashy {
        type Context = Context<Self>;
        fn stopped(&mut self, _: &mut Self::Context) {
            self.link.stopped();
        }
    }
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Boom;
    impl Handler<Boom> for Crashy {
        type Result = ();
        fn handle(&mut self, _: Boom, ctx: &mut Context<Self>) {
            if catch(|| panic!("handler failed")).is_err() {
                self.link.failed();
                ctx.stop();
            }
        }
    }

    #[test]
    fn root_supervisor_restarts_then_escalates() {
        let sys = actix::System::new();
        let starts = Arc::new(AtomicUsize::new(0));
        let escalated = Arc::new(AtomicUsize::new(0));
        let addr_slot: Arc<std::sync::Mutex<Option<Addr<Crashy>>>> = Arc::default();
        sys.block_on(async {
            let esc = escalated.clone();
            let root = RootSupervisor::new(Box::new(move |_| {
                esc.fetch_add(1, Ordering::SeqCst);
            }))
            .start();
            let s = starts.clone();
            let slot = addr_slot.clone();
            root.send(AddChild(ChildSpec {
                name: "crashy".into(),
                policy: RestartPolicy::Transient,
                limit: RestartLimit::new(2, Duration::from_secs(10)),
                start: Box::new(move |link| {
                    s.fetch_add(1, Ordering::SeqCst);
                    let addr = Crashy { link }.start();
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
                }),
            }))
            .await
            .expect("add child");
            for _ in 0..3 {
                let addr = addr_slot
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .expect("started");
                let _ = addr.send(Boom).await;
                for _ in 0..100 {
                    if !addr.connected() {
                        break;
                    }
                    actix::clock::sleep(Duration::from_millis(5)).await;
                }
                actix::clock::sleep(Duration::from_millis(20)).await;
            }
        });
        // First start + 2 restarts, then the third failure escalates.
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert_eq!(escalated.load(Ordering::SeqCst), 1);
    }
}
