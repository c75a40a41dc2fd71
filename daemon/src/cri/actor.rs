//! CriSupervisor and a PodActor per pod sandbox (the supervision tree's "cri" slot).
//!
//! Every verb on a pod or on one of its containers runs as an operation of that pod's PodActor, one at a
//! time (an `AtomicResponse`): a StopPodSandbox never interleaves with a CreateContainer of the same pod, and
//! two RemoveContainer of one container do not race. The operation itself runs on the tonic runtime (the
//! actor only awaits it), so the actix thread never does a verb's I/O. A PodActor holds no state: the pod's
//! truth is its records and its tasks (`meta.rs`), so a restart loses nothing.
//!
//! Supervision: CriSupervisor is Permanent under the root (restart limit in `tree.rs`); it starts a PodActor
//! on a pod's first operation and forgets it when it stops. A panicking operation fails its caller with an
//! Internal error and stops its PodActor (Transient: the next operation starts a fresh one).
//!
//! This module must never run an operation's I/O on the actix thread, nor run two operations of one pod at
//! once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use futures::future::BoxFuture;
use tonic::Status;

use crate::supervision::{StartChild, SupervisedBy};

/// One operation of a pod: a future run on the tonic runtime.
struct Op(BoxFuture<'static, ()>);

impl Message for Op {
    type Result = Result<(), String>;
}

/// A pod's serialising actor.
pub struct PodActor {
    pod: String,
    rt: tokio::runtime::Handle,
    supervisor: Addr<CriSupervisor>,
}

impl Actor for PodActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.supervisor.do_send(PodStopped {
            pod: self.pod.clone(),
        });
    }
}

impl Handler<Op> for PodActor {
    type Result = AtomicResponse<Self, Result<(), String>>;

    fn handle(&mut self, op: Op, _: &mut Context<Self>) -> Self::Result {
        let job = self.rt.spawn(op.0);
        AtomicResponse::new(Box::pin(job.into_actor(self).map(
            |r, act, ctx| match r {
                Ok(()) => Ok(()),
                Err(e) => {
                    let why = if e.is_panic() {
                        "panicked"
                    } else {
                        "was cancelled"
                    };
                    tracing::error!(namespace = super::NAMESPACE, pod = %act.pod, "a pod operation {why}; restarting its actor");
                    ctx.stop();
                    Err(format!("the operation {why}"))
                }
            },
        )))
    }
}

/// Starts and tracks the PodActors.
pub struct CriSupervisor {
    pods: HashMap<String, Addr<PodActor>>,
    rt: tokio::runtime::Handle,
    link: SupervisedBy,
}

impl Actor for CriSupervisor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.link.stopped();
    }
}

/// The PodActor of a pod (started on demand).
struct PodAddr(String);

impl Message for PodAddr {
    type Result = Addr<PodActor>;
}

impl Handler<PodAddr> for CriSupervisor {
    type Result = MessageResult<PodAddr>;

    fn handle(&mut self, msg: PodAddr, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(a) = self.pods.get(&msg.0).filter(|a| a.connected()) {
            return MessageResult(a.clone());
        }
        let addr = PodActor {
            pod: msg.0.clone(),
            rt: self.rt.clone(),
            supervisor: ctx.address(),
        }
        .start();
        self.pods.insert(msg.0, addr.clone());
        MessageResult(addr)
    }
}

/// A PodActor stopped (its pod was removed, or it failed).
#[derive(Message)]
#[rtype(result = "()")]
struct PodStopped {
    pod: String,
}

impl Handler<PodStopped> for CriSupervisor {
    type Result = ();

    fn handle(&mut self, msg: PodStopped, _: &mut Context<Self>) {
        if self.pods.get(&msg.pod).is_some_and(|a| !a.connected()) {
            self.pods.remove(&msg.pod);
        }
    }
}

/// Stop a removed pod's actor once its queue is done.
#[derive(Message)]
#[rtype(result = "()")]
struct Forget(String);

impl Handler<Forget> for CriSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Forget, _: &mut Context<Self>) {
        self.pods.remove(&msg.0);
    }
}

/// The handle the CRI layer reaches PodActors through; cheap to clone.
#[derive(Clone, Default)]
pub struct Pods {
    supervisor: Arc<Mutex<Option<Addr<CriSupervisor>>>>,
}

impl Pods {
    async fn supervisor(&self) -> Result<Addr<CriSupervisor>, Status> {
        for _ in 0..250 {
            let current = self
                .supervisor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .filter(|a| a.connected());
            if let Some(a) = current {
                return Ok(a);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(Status::unavailable(
            "the CRI supervisor is not running; retry",
        ))
    }

    /// Run `op` as the next operation of pod `pod` and return its result.
    pub async fn run<T, F>(&self, pod: &str, op: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, Status>> + Send + 'static,
    {
        let addr = self
            .supervisor()
            .await?
            .send(PodAddr(pod.to_string()))
            .await
            .map_err(|_| Status::unavailable("the CRI supervisor stopped; retry"))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let fut = Box::pin(async move {
            let _ = tx.send(op.await);
        });
        match addr.send(Op(fut)).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(Status::internal(format!("pod {pod}: {why}"))),
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "pod {pod}: its actor stopped; retry"
                )))
            }
        }
        rx.await.map_err(|_| {
            Status::internal(format!("pod {pod}: the operation ended without an answer"))
        })?
    }

    /// The pod is gone: its actor may stop.
    pub async fn forget(&self, pod: &str) {
        if let Ok(s) = self.supervisor().await {
            s.do_send(Forget(pod.to_string()));
        }
    }
}

/// The handle and the factory the supervision tree starts the CriSupervisor with. Call on the tokio runtime
/// operations should run on.
pub fn new() -> (Pods, StartChild) {
    let pods = Pods::default();
    let slot = pods.supervisor.clone();
    let rt = tokio::runtime::Handle::current();
    let factory: StartChild = Box::new(move |link| {
        let addr = CriSupervisor {
            pods: HashMap::new(),
            rt: rt.clone(),
            link,
        }
        .start();
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    });
    (pods, factory)
}
