//! PullActor: the one actor of a (namespace, reference). It runs one job at a time on the tokio runtime: the
//! requests whose plans are equal form a group and share the job (blobs fetched once, one progress story told
//! to every client, one answer for all); a request with another plan waits in the queue and runs next (its
//! blobs are mostly there by then). When nothing is left it tells its supervisor ([`Idle`]) and stops when told.
//!
//! A panic in a handler or in the job is a failure: the job is cancelled and every request the actor had goes
//! back to the supervisor ([`Failed`]), which restarts the work in a new actor within its limit. This actor
//! must never do I/O itself: jobs run on the runtime, their blocking parts on blocking threads.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;
use tonic::Status;

use super::job::{self, JobOutput, JobShared};
use super::supervisor::{Failed, Idle, Key, Orphans, PullSupervisor};
use super::{CredentialSource, Plan, PullRequest, Reply, Shared};
use crate::store::leases::LeaseResource;
use progress_sink::Sink;

mod progress_sink {
    pub type Sink = super::super::progress::ProgressSink;
}

/// One client of a group.
pub(super) struct Member {
    progress: Option<Sink>,
    auth: Option<Arc<dyn CredentialSource>>,
    client_lease: Option<String>,
    reply: Reply,
}

/// Requests with one plan.
pub(super) struct Group {
    ns: String,
    plan: Plan,
    members: Vec<Member>,
}

impl Group {
    /// Answer every member with `err`.
    pub fn fail(self, err: &Status) {
        for m in self.members {
            let _ = m.reply.send(Err(err.clone()));
        }
    }

    /// Back into single requests (to hand them to another actor).
    pub fn into_joins(self) -> Vec<Join> {
        let (ns, plan) = (self.ns, self.plan);
        self.members
            .into_iter()
            .map(|member| Join {
                ns: ns.clone(),
                plan: plan.clone(),
                member,
            })
            .collect()
    }
}

/// A request for this actor's reference.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Join {
    ns: String,
    plan: Plan,
    member: Member,
}

impl Join {
    /// From a client's request.
    pub fn new(req: PullRequest, reply: Reply) -> Join {
        Join {
            ns: req.ns,
            plan: req.plan,
            member: Member {
                progress: req.progress,
                auth: req.auth,
                client_lease: req.client_lease,
                reply,
            },
        }
    }

    /// A group of one.
    pub fn into_group(self) -> Group {
        Group {
            ns: self.ns,
            plan: self.plan,
            members: vec![self.member],
        }
    }
}

/// Stop if still idle (sent by the supervisor after [`Idle`]); answers whether it stopped.
#[derive(Message)]
#[rtype(result = "bool")]
pub(super) struct Stop {
    pub gen: u64,
}

struct Running {
    group: Group,
    job: Arc<JobShared>,
    handle: tokio::task::AbortHandle,
}

/// The actor.
pub struct PullActor {
    shared: Arc<Shared>,
    key: Key,
    gen: u64,
    sup: Addr<PullSupervisor>,
    queue: VecDeque<Group>,
    running: Option<Running>,
    failed: bool,
}

impl PullActor {
    pub(super) fn new(
        shared: Arc<Shared>,
        key: Key,
        gen: u64,
        sup: Addr<PullSupervisor>,
        groups: Vec<Group>,
    ) -> PullActor {
        PullActor {
            shared,
            key,
            gen,
            sup,
            queue: groups.into(),
            running: None,
            failed: false,
        }
    }

    /// Take a group's members into a running job (progress, credentials).
    fn attach(job: &JobShared, m: &Member) {
        if let Some(p) = &m.progress {
            job.hub.attach(p.clone());
        }
        if let Some(a) = &m.auth {
            job.add_auth(a.clone());
        }
    }

    fn enqueue(&mut self, j: Join) {
        if let Some(r) = self.running.as_mut() {
            if r.group.plan == j.plan && r.group.ns == j.ns {
                Self::attach(&r.job, &j.member);
                r.group.members.push(j.member);
                return;
            }
        }
        if let Some(g) = self
            .queue
            .iter_mut()
            .find(|g| g.plan == j.plan && g.ns == j.ns)
        {
            g.members.push(j.member);
            return;
        }
        self.queue.push_back(j.into_group());
    }

    /// Start the next group's job, or report idle.
    fn next(&mut self, ctx: &mut Context<Self>) {
        if self.running.is_some() || self.failed {
            return;
        }
        let Some(group) = self.queue.pop_front() else {
            self.sup.do_send(Idle {
                key: self.key.clone(),
                gen: self.gen,
            });
            return;
        };
        let job = Arc::new(JobShared::default());
        for m in &group.members {
            Self::attach(&job, m);
        }
        let fut = job::run(
            self.shared.clone(),
            group.ns.clone(),
            group.plan.clone(),
            job.clone(),
        );
        let handle = self.shared.rt.spawn(fut);
        self.running = Some(Running {
            group,
            job,
            handle: handle.abort_handle(),
        });
        ctx.spawn(
            handle
                .into_actor(self)
                .map(|res, act, ctx| act.finished(res, ctx)),
        );
    }

    fn finished(
        &mut self,
        res: Result<Result<JobOutput, Status>, tokio::task::JoinError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(running) = self.running.take() else {
            return;
        };
        match res {
            Ok(result) => {
                running.job.hub.detach_all();
                let shared = self.shared.clone();
                let group = running.group;
                // Client leases get what the pull wrote, then every client hears the result.
                self.shared.rt.spawn(answer(shared, group, result));
                self.next(ctx);
            }
            Err(e) => {
                let reason = if e.is_panic() {
                    crate::supervision::panic_message(&*e.into_panic())
                } else {
                    format!("the pull task ended: {e}")
                };
                tracing::error!(reference = %self.key.1, %reason, "pull job failed");
                self.queue.push_front(running.group);
                self.fail(ctx, reason);
            }
        }
    }

    /// Hand everything back to the supervisor and stop.
    fn fail(&mut self, ctx: &mut Context<Self>, reason: String) {
        if let Some(r) = self.running.take() {
            r.job.cancel();
            r.handle.abort();
            self.queue.push_front(r.group);
        }
        self.failed = true;
        self.sup.do_send(Failed {
            key: self.key.clone(),
            gen: self.gen,
            groups: self.queue.drain(..).collect(),
            reason,
        });
        ctx.stop();
    }

    fn guarded(
        &mut self,
        ctx: &mut Context<Self>,
        what: &str,
        f: impl FnOnce(&mut Self, &mut Context<Self>),
    ) {
        let point = format!("pull_actor.{what}");
        let res = crate::supervision::catch(|| {
            crate::failpoint::hit(&point);
            f(self, ctx)
        });
        if let Err(panic) = res {
            tracing::error!(reference = %self.key.1, %what, %panic, "pull actor panicked");
            self.fail(ctx, format!("pull actor panicked: {panic}"));
        }
    }
}

/// Add what the pull wrote to the clients' own leases, then answer them.
async fn answer(shared: Arc<Shared>, group: Group, result: Result<JobOutput, Status>) {
    let ns = group.ns.clone();
    for m in group.members {
        let reply = match &result {
            Ok(out) => {
                let added = match &m.client_lease {
                    Some(l) => add_to_lease(&shared, &ns, l, &out.resources).await,
                    None => Ok(()),
                };
                added.map(|()| out.saved.clone())
            }
            Err(e) => Err(e.clone()),
        };
        let _ = m.reply.send(reply);
    }
}

async fn add_to_lease(
    shared: &Shared,
    ns: &str,
    lease: &str,
    resources: &[LeaseResource],
) -> Result<(), Status> {
    for r in resources {
        shared
            .ctx
            .store
            .add_lease_resource(ns, lease, r.clone())
            .await?;
    }
    Ok(())
}

impl Actor for PullActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.next(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(r) = self.running.take() {
            r.job.cancel();
            r.handle.abort();
            self.queue.push_front(r.group);
        }
        if !self.queue.is_empty() {
            self.sup.do_send(Orphans {
                key: self.key.clone(),
                groups: self.queue.drain(..).collect(),
            });
        }
    }
}

impl Handler<Join> for PullActor {
    type Result = ();

    fn handle(&mut self, msg: Join, ctx: &mut Self::Context) {
        let mut msg = Some(msg);
        self.guarded(ctx, "join", |act, ctx| {
            if let Some(m) = msg.take() {
                act.enqueue(m);
            }
            act.next(ctx);
        });
        if let Some(m) = msg {
            // The handler failed before taking it: the supervisor gets it with the others.
            self.sup.do_send(Orphans {
                key: self.key.clone(),
                groups: vec![m.into_group()],
            });
        }
    }
}

impl Handler<Stop> for PullActor {
    type Result = bool;

    fn handle(&mut self, msg: Stop, ctx: &mut Self::Context) -> bool {
        if msg.gen == self.gen && self.running.is_none() && self.queue.is_empty() {
            ctx.stop();
            return true;
        }
        false
    }
}
