//! The chaos driver: rounds of one fault each, chosen by a seeded [`Rng`], while the load runs; after each
//! round the load parks and the invariants are checked. Faults: SIGKILL berthd at a random moment; restart
//! it with one failpoint armed as `exit` (berthd SIGKILLs itself there) and wait for it to die; SIGKILL a
//! random shim; fill the tmpfs root and pull an image that does not fit. This module never cleans up after
//! berthd: what it finds left is a violation.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proto::containerd_client::services::v1::images_client::ImagesClient;
use berth_proto::containerd_client::services::v1::DeleteImageRequest;
use nix::sys::signal::Signal;

use super::load::Shared;
use super::rig::{answers, connect, log_tail, Rig, ANSWER_BOUND};
use super::{Rng, Settings};
use crate::oci_layout::{write_image, TarBuilder};

/// The failpoints armed with `exit`, one per failpoint round (`name` as in `failpoint::hit`).
pub const FAILPOINTS: &[&str] = &[
    "container_actor.create",
    "container_actor.create.before_bundle",
    "container_actor.start",
    "container_actor.exec",
    "container_actor.kill",
    "container_actor.delete",
    "container_actor.delete.after_shim_delete",
    "shim_actor.after_journal_before_ack",
    "shim_actor.before_journal_delete",
    "events.before_commit",
    "events.after_commit",
    "store.before_commit",
    "store.after_commit",
    "pull.before_commit",
    "pull.blob_committed",
    "pull.unpack.mid_layer",
    "pull.unpack.before_commit",
    "gc.before_sweep",
    "gc.after_sweep",
    "attachment_actor.attach",
    "attachment_actor.attach.after",
    "attachment_actor.detach",
    "attachment_actor.detach.after",
];

/// How long an armed failpoint may take to be hit before the round gives up on it.
const FAILPOINT_WAIT: Duration = Duration::from_secs(30);
/// How long the clients may take to finish their containers and park.
const PARK_BOUND: Duration = Duration::from_secs(300);

/// One round's fault.
#[derive(Debug, Clone)]
pub enum Fault {
    /// SIGKILL berthd.
    KillBerthd,
    /// Restart berthd with this failpoint armed as `1*exit`.
    Failpoint(&'static str),
    /// SIGKILL one shim.
    KillShim,
    /// Fill the root, then pull an image that does not fit.
    FillRoot,
}

/// The driver's state across rounds.
pub struct Driver {
    rng: Rng,
    /// Failpoints not yet used in this pass (each is used once before any repeats).
    pending: Vec<&'static str>,
    /// Time from a restart to berthd answering, per restart.
    pub answer_times: Vec<Duration>,
    /// Images pulled by the driver during a fault, to pull again and delete once the round is quiet.
    to_repull: Vec<String>,
    n_images: u64,
    only: Option<String>,
}

impl Driver {
    /// A driver replaying `settings.seed`.
    pub fn new(settings: &Settings) -> Driver {
        Driver {
            rng: Rng::new(settings.seed),
            pending: Vec::new(),
            answer_times: Vec::new(),
            to_repull: Vec::new(),
            n_images: 0,
            only: settings.only.clone(),
        }
    }

    /// The fault of round `round`: the kinds in turn (so a short run has each), the failpoint and the
    /// moment from the seed.
    pub fn choose(&mut self, round: u64) -> Fault {
        let kind = match self.only.as_deref() {
            Some("berthd") => 0,
            Some("shim") => 2,
            Some("fill") => 4,
            Some("failpoint") => 1,
            Some(other) => {
                panic!("BERTH_FAULT_ONLY={other:?}: expected berthd, failpoint, shim or fill")
            }
            None => round % 5,
        };
        match kind {
            0 => Fault::KillBerthd,
            2 => Fault::KillShim,
            4 => Fault::FillRoot,
            _ => {
                if self.pending.is_empty() {
                    self.pending = FAILPOINTS.to_vec();
                }
                let i = self.rng.below(self.pending.len() as u64) as usize;
                Fault::Failpoint(self.pending.swap_remove(i))
            }
        }
    }

    /// Run one round: let the load run, inject `fault` at a random moment, bring berthd back.
    pub async fn inject(&mut self, rig: &mut Rig, sh: &Arc<Shared>, fault: &Fault) {
        let delay = self
            .rng
            .between(Duration::from_millis(300), Duration::from_millis(2500));
        tokio::time::sleep(delay).await;
        match fault {
            Fault::KillBerthd => {
                rig.nf.fx.daemon.kill();
                sh.counts.add("fault berthd SIGKILLed");
                self.restart(rig, sh).await;
            }
            Fault::Failpoint(name) => self.failpoint(rig, sh, name).await,
            Fault::KillShim => {
                // Wait (bounded) for a task in the window where a shim may be killed.
                let deadline = Instant::now() + Duration::from_secs(10);
                while sh
                    .killable
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                self.kill_shim(rig, sh)
            }
            Fault::FillRoot => self.fill_root(rig, sh).await,
        }
    }

    async fn restart(&mut self, rig: &mut Rig, sh: &Shared) {
        for _ in 0..3 {
            if let Some(t) = rig.start_berthd("").await {
                self.answer_times.push(t);
                sh.counts.add("berthd restarts");
                return;
            }
        }
        panic!(
            "berthd does not start again; log tail:\n{}",
            log_tail(&rig.nf.fx.daemon.log(), 80)
        );
    }

    async fn failpoint(&mut self, rig: &mut Rig, sh: &Arc<Shared>, name: &'static str) {
        rig.nf.fx.daemon.kill();
        let pull = name.starts_with("pull.");
        let reference = if pull {
            Some(self.churn_image(rig, 3 << 20))
        } else {
            None
        };
        let spec = format!("{name}=1*exit");
        let started = rig.start_berthd(&spec).await.is_some();
        if let Some(r) = &reference {
            // A pull of fresh blobs, so that the pull and unpack failpoints are on its way.
            let (addr, ns, r2) = (rig.address(), rig.ns().to_string(), r.clone());
            tokio::spawn(async move {
                if let Ok(ch) = connect(&addr).await {
                    let _ = crate::transfer::Transfer::new(ch, &ns)
                        .pull(&r2, &crate::transfer::PullOptions::default())
                        .await;
                }
            });
            self.to_repull.push(r.clone());
        }
        let pid = rig.berthd_pid();
        let deadline = Instant::now() + FAILPOINT_WAIT;
        let mut hit = !started;
        while !hit && Instant::now() < deadline {
            hit = pid.is_none_or(|p| !crate::proc::alive(p));
            if !hit {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        rig.nf.fx.daemon.kill();
        if hit {
            sh.counts.add(format!("fault failpoint hit {name}"));
        } else {
            sh.counts
                .add(format!("fault failpoint not reached {name} (then SIGKILL)"));
        }
        self.restart(rig, sh).await;
    }

    fn kill_shim(&mut self, rig: &Rig, sh: &Shared) {
        let dir = rig.state().join("tasks").join(rig.ns());
        let killable = sh.killable.lock().unwrap_or_else(|e| e.into_inner());
        let mut shims: Vec<(String, i32)> = killable
            .iter()
            .filter_map(|id| {
                let pid = std::fs::read_to_string(dir.join(id).join("shim.pid")).ok()?;
                Some((id.clone(), pid.trim().parse().ok()?))
            })
            .collect();
        shims.sort();
        if shims.is_empty() {
            sh.counts
                .add("fault shim SIGKILL skipped (no running task)");
            return;
        }
        let (id, pid) = self.rng.pick(&shims).clone();
        sh.shim_killed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        if crate::proc::alive(pid) && crate::proc::cmdline(pid).iter().any(|a| a.contains(&id)) {
            crate::proc::kill(pid, Signal::SIGKILL);
            sh.counts.add("fault shim SIGKILLed");
        } else {
            sh.counts
                .add("fault shim SIGKILL skipped (shim already gone)");
        }
        drop(killable);
    }

    async fn fill_root(&mut self, rig: &mut Rig, sh: &Shared) {
        let reference = self.churn_image(rig, 12 << 20);
        let filler = rig.root.join("fault-suite-filler");
        let free = nix::sys::statvfs::statvfs(&rig.root)
            .map(|s| s.blocks_available() * s.fragment_size())
            .unwrap_or(0);
        let size = free.saturating_sub(4 << 20);
        let written = tokio::task::block_in_place(|| write_filler(&filler, size));
        sh.counts.add("fault root filled");
        let res = rig.pull(&reference).await;
        let _ = std::fs::remove_file(&filler);
        match res {
            Ok(()) => sh.violation(format!(
                "a pull of 12 MiB succeeded with {} KiB free in the root",
                free.saturating_sub(written) >> 10
            )),
            Err(e) => {
                sh.counts.add("check full-root pull error names the cause");
                let m = e.message().to_ascii_lowercase();
                if !(m.contains("space") || m.contains("enospc")) {
                    sh.violation(format!(
                        "a pull into a full root failed without saying so: {:?} {}",
                        e.code(),
                        e.message()
                    ));
                }
            }
        }
        self.to_repull.push(reference);
        let alive = rig.berthd_pid().is_some_and(crate::proc::alive);
        if !alive {
            sh.violation("berthd died when its root filled up".into());
            rig.nf.fx.daemon.kill();
            self.restart(rig, sh).await;
        }
        if let Err(e) = answers(&rig.address(), rig.ns(), ANSWER_BOUND).await {
            sh.violation(format!(
                "berthd does not answer after its root was full: {e}"
            ));
        }
    }

    /// Push a fresh image of one `size`-byte incompressible layer; its reference.
    fn churn_image(&mut self, rig: &Rig, size: usize) -> String {
        self.n_images += 1;
        let name = format!("fault/churn{}:latest", self.n_images);
        let mut t = TarBuilder::new();
        t.file("noise.bin", 0o644, &noise(self.rng.next_u64(), size));
        let dir = rig.nf.fx.dir.join(format!("churn{}", self.n_images));
        let layout = write_image(&dir, &[t.finish()], serde_json::json!({}), "latest");
        rig.registry.push_oci_layout(&layout.path, &name);
        let _ = std::fs::remove_dir_all(&dir);
        rig.registry.reference(&name)
    }

    /// With the load parked: pull again every image a fault interrupted (the next pull must complete), then
    /// delete it with a synchronous GC.
    pub async fn settle_images(&mut self, rig: &Rig, sh: &Shared) {
        for r in std::mem::take(&mut self.to_repull) {
            match rig.pull(&r).await {
                Ok(()) => sh.counts.add("check pull after a fault completes"),
                Err(e) => sh.violation(format!("pulling {r} again after a fault failed: {e}")),
            }
            if let Err(e) = delete_image(rig, &r).await {
                sh.violation(format!("deleting {r}: {e}"));
            }
        }
    }

    /// Unpark the load.
    pub fn resume(sh: &Shared) {
        sh.pause.store(false, Ordering::Release);
    }

    /// Park the load and wait until every client has nothing in flight.
    pub async fn park(sh: &Shared, clients: usize) {
        sh.pause.store(true, Ordering::Release);
        let deadline = Instant::now() + PARK_BOUND;
        while sh.parked.load(Ordering::Acquire) < clients {
            assert!(
                Instant::now() < deadline,
                "the load clients did not finish their containers within {PARK_BOUND:?}; violations: {:#?}",
                sh.violations.lock().unwrap_or_else(|e| e.into_inner())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Images.Delete with a synchronous garbage collection.
pub async fn delete_image(rig: &Rig, name: &str) -> Result<(), tonic::Status> {
    let ch = connect(&rig.address()).await?;
    let r = ImagesClient::new(ch)
        .delete(crate::grpc::req(
            rig.ns(),
            DeleteImageRequest {
                name: name.into(),
                sync: true,
                ..Default::default()
            },
        ))
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Write up to `size` bytes into `path` (stops at ENOSPC); how many were written.
fn write_filler(path: &std::path::Path, size: u64) -> u64 {
    use std::io::Write;
    let Ok(mut f) = std::fs::File::create(path) else {
        return 0;
    };
    let chunk = vec![0x5au8; 1 << 20];
    let mut done = 0u64;
    while done < size {
        let n = (size - done).min(chunk.len() as u64) as usize;
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
        done += n as u64;
    }
    done
}

/// `len` pseudo-random bytes (incompressible, so the blob is as big as the layer).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}
