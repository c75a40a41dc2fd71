//! Talking to one berth-shim: its tonic client over the shim's unix socket (here), starting it and cleaning up
//! after a dead one (`process.rs`), and the ShimActor pumping its acked event stream into the journal
//! (`pump.rs`).
//!
//! This module must never ack a shim event before it is journaled.

mod process;
mod pump;

use std::path::Path;
use std::time::Duration;

use berth_proto::shim::shim_client::ShimClient as GenClient;
use tonic::transport::{Channel, Endpoint};

pub use process::{delete_shim, set_oom_score_adj, start_shim, StartArgs};
pub use pump::{Pump, ShimActor, StopPump};

use super::error::TaskError;

/// A client of one shim.
pub type ShimClient = GenClient<Channel>;

/// Connect to a shim's unix socket (eagerly, so a dead shim is noticed at once).
pub async fn connect(address: &Path, timeout: Duration) -> Result<ShimClient, TaskError> {
    let path = address.to_path_buf();
    let endpoint = Endpoint::try_from("http://[::]")
        .map_err(|e| TaskError::ShimUnavailable(e.to_string()))?
        .connect_timeout(timeout);
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| {
            TaskError::ShimUnavailable(format!("connecting to {}: {e}", address.display()))
        })?;
    Ok(GenClient::new(channel))
}
