//! Waiting in the task tests: on a condition until a deadline ([`eventually`], shared with the shim tests),
//! for nothing to happen in a window ([`holds_for`]), and on a Tasks.Wait sent in the background
//! ([`TaskFixture::spawn_wait`], [`assert_wait_pending`], [`wait_answer`]). Never a fixed sleep in place of
//! a condition.

use std::time::Duration;

use berth_proto::containerd_client::services::v1::WaitRequest;

use super::{req, TaskFixture};

/// How often the waits of this module re-check their condition.
pub const POLL: Duration = Duration::from_millis(10);

/// How long a Wait must stay unanswered for the tests to call it pending. The Wait request cannot be seen
/// arriving at berthd, so "pending" is "not answered within this window" (checked every [`POLL`]).
pub const PENDING: Duration = Duration::from_millis(200);

pub use crate::shim_fixture::{eventually, holds_for};

impl TaskFixture {
    /// Tasks.Wait sent from a background task (connected before this returns), for tests that check what a
    /// pending Wait sees: see [`assert_wait_pending`] and [`wait_answer`].
    pub async fn spawn_wait(
        &self,
        id: &str,
        exec_id: &str,
    ) -> tokio::task::JoinHandle<Result<u32, tonic::Status>> {
        let mut t = self.tasks().await;
        let r = req(
            &self.ns,
            WaitRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            },
        );
        tokio::spawn(async move { t.wait(r).await.map(|r| r.into_inner().exit_status) })
    }
}

/// Assert that the Wait in `waiter` is pending: not answered (with anything) within [`PENDING`]. A window,
/// not a wait for something: nothing must happen in it.
pub async fn assert_wait_pending<T>(waiter: &tokio::task::JoinHandle<T>, what: &str) {
    holds_for(what, PENDING, || !waiter.is_finished()).await;
}

/// The answer of a Wait started with [`TaskFixture::spawn_wait`], within 10 s; panics naming `what` otherwise.
pub async fn wait_answer(
    waiter: tokio::task::JoinHandle<Result<u32, tonic::Status>>,
    what: &str,
) -> u32 {
    match tokio::time::timeout(Duration::from_secs(10), waiter).await {
        Ok(Ok(Ok(status))) => status,
        Ok(Ok(Err(e))) => panic!("{what}: the Wait failed: {e}"),
        Ok(Err(e)) => panic!("{what}: the Wait task panicked: {e}"),
        Err(_) => panic!("{what}: the Wait did not return within 10 s"),
    }
}
