//! The PodActor's messages: one per mutating CRI verb, each with its own result, as the kubelet's call carries
//! it. Reads (statuses, lists, stats) and ExecSync are not messages: they must not wait behind a long stop.

use actix::Message;
use berth_proto::cri;
use tonic::Status;

/// RunPodSandbox (sent to the actor of the pod's *name*: two runs of one pod do not race past the uniqueness
/// check); answers the new pod's id.
pub struct RunPod {
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
}

impl Message for RunPod {
    type Result = Result<String, Status>;
}

/// StopPodSandbox.
pub struct StopPod {
    pub id: String,
}

impl Message for StopPod {
    type Result = Result<(), Status>;
}

/// RemovePodSandbox; the pod's actor stops after it.
pub struct RemovePod {
    pub id: String,
}

impl Message for RemovePod {
    type Result = Result<(), Status>;
}

/// CreateContainer in the pod; answers the new container's id.
pub struct CreateContainer {
    pub pod: String,
    pub config: cri::ContainerConfig,
    pub sandbox_config: Option<cri::PodSandboxConfig>,
}

impl Message for CreateContainer {
    type Result = Result<String, Status>;
}

/// StartContainer.
pub struct StartContainer {
    pub id: String,
}

impl Message for StartContainer {
    type Result = Result<(), Status>;
}

/// StopContainer: the stop signal, SIGKILL after `timeout` seconds.
pub struct StopContainer {
    pub id: String,
    pub timeout: i64,
}

impl Message for StopContainer {
    type Result = Result<(), Status>;
}

/// RemoveContainer.
pub struct RemoveContainer {
    pub id: String,
}

impl Message for RemoveContainer {
    type Result = Result<(), Status>;
}

/// UpdateContainerResources.
pub struct UpdateResources {
    pub id: String,
    pub linux: Option<cri::LinuxContainerResources>,
}

impl Message for UpdateResources {
    type Result = Result<(), Status>;
}
