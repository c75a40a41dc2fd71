//! The PodActor: one per pod sandbox, running that pod's mutating verbs one at a time (each an
//! `AtomicResponse`), so a StopPodSandbox never interleaves with a CreateContainer of the same pod. A verb's
//! I/O runs on the tonic runtime (the actor only awaits it). The actor holds no state of the pod: its truth is
//! its records and tasks, so a restart loses nothing.
//!
//! This module must never run a verb's I/O on the actix thread, nor two verbs of one pod at once.

use std::future::Future;

use actix::prelude::*;
use tonic::Status;
use tracing::Instrument;

use super::messages::*;
use super::{CriSupervisor, PodStopped};
use crate::cri::{containers, pods, stats, Cri, NAMESPACE};

/// A pod's serialising actor.
pub struct PodActor {
    pub(super) pod: String,
    pub(super) cri: Cri,
    pub(super) rt: tokio::runtime::Handle,
    pub(super) supervisor: Addr<CriSupervisor>,
}

impl Actor for PodActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.supervisor.do_send(PodStopped {
            pod: self.pod.clone(),
        });
    }
}

/// What a verb handler answers: its result once the verb's future is done, the next verb after it.
type Verb<T> = AtomicResponse<PodActor, Result<T, Status>>;

impl PodActor {
    /// The one shape of every verb: run `op` (given the CRI layer) on the tonic runtime in the span of `verb`
    /// on `id`. A panicking verb fails its caller with Internal and stops this actor (the supervisor starts a
    /// fresh one on the pod's next verb).
    fn verb<T, F, Fut>(&self, verb: &'static str, id: &str, op: F) -> Verb<T>
    where
        T: Send + 'static,
        F: FnOnce(Cri) -> Fut,
        Fut: Future<Output = Result<T, Status>> + Send + 'static,
    {
        let span = tracing::info_span!("cri", verb, namespace = NAMESPACE, container_id = %id);
        let queued = std::time::Instant::now();
        let fut = op(self.cri.clone());
        let job = self.rt.spawn(
            async move {
                let r = fut.await;
                // The figure berth-cri-bench's breakdown reads (`[cri] ... took_us`).
                tracing::debug!(
                    took_us = queued.elapsed().as_micros() as u64,
                    ok = r.is_ok(),
                    "verb done"
                );
                r
            }
            .instrument(span),
        );
        AtomicResponse::new(Box::pin(job.into_actor(self).map(
            move |r, act, ctx| match r {
                Ok(answer) => answer,
                Err(e) => {
                    let why = if e.is_panic() {
                        "panicked"
                    } else {
                        "was cancelled"
                    };
                    tracing::error!(namespace = NAMESPACE, pod = %act.pod, verb, "a pod verb {why}; restarting its actor");
                    ctx.stop();
                    Err(Status::internal(format!(
                        "pod {}: {verb} {why}",
                        act.pod
                    )))
                }
            },
        )))
    }
}

impl Handler<RunPod> for PodActor {
    type Result = Verb<String>;

    fn handle(&mut self, m: RunPod, _: &mut Self::Context) -> Self::Result {
        let name = self.pod.clone();
        self.verb("run_pod_sandbox", &name, move |cri| async move {
            pods::run(&cri, m.config, &m.runtime_handler).await
        })
    }
}

impl Handler<StopPod> for PodActor {
    type Result = Verb<()>;

    fn handle(&mut self, m: StopPod, _: &mut Self::Context) -> Self::Result {
        self.verb("stop_pod_sandbox", &m.id.clone(), move |cri| async move {
            pods::stop(&cri, &m.id).await
        })
    }
}

impl Handler<RemovePod> for PodActor {
    type Result = Verb<()>;

    fn handle(&mut self, m: RemovePod, _: &mut Self::Context) -> Self::Result {
        self.verb("remove_pod_sandbox", &m.id.clone(), move |cri| async move {
            pods::remove(&cri, &m.id).await
        })
    }
}

impl Handler<CreateContainer> for PodActor {
    type Result = Verb<String>;

    fn handle(&mut self, m: CreateContainer, _: &mut Self::Context) -> Self::Result {
        self.verb("create_container", &m.pod.clone(), move |cri| async move {
            containers::create(&cri, &m.pod, m.config, m.sandbox_config).await
        })
    }
}

impl Handler<StartContainer> for PodActor {
    type Result = Verb<()>;

    fn handle(&mut self, m: StartContainer, _: &mut Self::Context) -> Self::Result {
        self.verb("start_container", &m.id.clone(), move |cri| async move {
            containers::start(&cri, &m.id).await
        })
    }
}

impl Handler<StopContainer> for PodActor {
    type Result = Verb<()>;

    fn handle(&mut self, m: StopContainer, _: &mut Self::Context) -> Self::Result {
        self.verb("stop_container", &m.id.clone(), move |cri| async move {
            containers::stop(&cri, &m.id, m.timeout).await
        })
    }
}

impl Handler<RemoveContainer> for PodActor {
    type Result = Verb<()>;

    fn handle(&mut self, m: RemoveContainer, _: &mut Self::Context) -> Self::Result {
        self.verb("remove_container", &m.id.clone(), move |cri| async move {
            containers::remove(&cri, &m.id).await
        })
    }
}

impl Handler<UpdateResources> for PodActor {
    type Result = Verb<()>;

    fn handle(&mut self, m: UpdateResources, _: &mut Self::Context) -> Self::Result {
        self.verb(
            "update_container_resources",
            &m.id.clone(),
            move |cri| async move { stats::update(&cri, &m.id, m.linux).await },
        )
    }
}
