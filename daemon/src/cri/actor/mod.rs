//! CriSupervisor and a PodActor per pod sandbox (the supervision tree's "cri" slot).
//!
//! Every mutating verb on a pod or on one of its containers is a typed message (`messages.rs`) handled by that
//! pod's PodActor (`pod.rs`), one at a time. The gRPC layer reaches them through [`Pods::call`].
//!
//! Supervision: CriSupervisor is Permanent under the root (restart limit in `tree.rs`); it starts a PodActor
//! on a pod's first verb and forgets it when it stops. A panicking verb fails its caller with an Internal error
//! and stops its PodActor (Transient: the next verb starts a fresh one).
//!
//! This module must never run a verb's I/O on the actix thread, nor run two verbs of one pod at once.

pub mod messages;
mod pod;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tonic::Status;

use crate::supervision::{StartChild, SupervisedBy};

pub use pod::PodActor;

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

/// The PodActor of a pod (started on demand, with the CRI layer it works on).
struct PodAddr {
    pod: String,
    cri: super::Cri,
}

impl Message for PodAddr {
    type Result = Addr<PodActor>;
}

impl Handler<PodAddr> for CriSupervisor {
    type Result = MessageResult<PodAddr>;

    fn handle(&mut self, msg: PodAddr, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(a) = self.pods.get(&msg.pod).filter(|a| a.connected()) {
            return MessageResult(a.clone());
        }
        let addr = PodActor {
            pod: msg.pod.clone(),
            cri: msg.cri,
            rt: self.rt.clone(),
            supervisor: ctx.address(),
        }
        .start();
        self.pods.insert(msg.pod, addr.clone());
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

    /// Send `msg` to pod `pod`'s actor (after the pod's earlier verbs) and return its answer.
    pub async fn call<M, T>(&self, cri: &super::Cri, pod: &str, msg: M) -> Result<T, Status>
    where
        M: Message<Result = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
        PodActor: Handler<M>,
    {
        let addr = self
            .supervisor()
            .await?
            .send(PodAddr {
                pod: pod.to_string(),
                cri: cri.clone(),
            })
            .await
            .map_err(|_| Status::unavailable("the CRI supervisor stopped; retry"))?;
        addr.send(msg)
            .await
            .map_err(|_| Status::unavailable(format!("pod {pod}: its actor stopped; retry")))?
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
