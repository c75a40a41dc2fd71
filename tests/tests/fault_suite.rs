//! The fault suite (issue 13): a bounded load of concurrent gRPC clients (pull, snapshot, container, task,
//! start, exec, kill, wait, delete; 40% of containers on a CNI network) against one berthd whose `--root` is
//! a 160 MiB tmpfs, while a seeded chaos driver, once per round, SIGKILLs berthd at a random moment, or
//! restarts it with one failpoint armed as `exit` (create, start, exec, kill, delete, shim event journaling,
//! event and store commits, pull, unpack mid-layer, GC, network ADD/DEL before and after), or SIGKILLs a
//! random shim, or fills the root and pulls an image that does not fit. After each round the clients finish
//! their containers and park, and the suite checks, against what berthd acknowledged to them:
//! - every container acknowledged as created exists until its delete was sent (checked after each fault);
//! - each task's journal has at most one /tasks/create, /tasks/start, /tasks/exit, /tasks/delete; a started
//!   task exactly one exit and one delete, in the order start < exit < delete, the exit with the status Wait
//!   and Delete answered and the init really exits with (137 after SIGKILL, K after `exit K`), execs alike;
//! - nothing is left: containers, tasks, active snapshots (API), task and runtime state dirs, mounts, cgroups,
//!   shims, veths, netns, iptables rules, IPAM reservations, CNI cache entries; at the end, after the images
//!   are deleted, no snapshot, blob, ingest or lease either;
//! - a pull interrupted by a fault completes when run again; a pull into a full root fails naming the cause;
//! - berthd answers Version, Containers.List and Tasks.List within 30 s of each restart;
//! - a journal subscriber resuming from its cursor across every kill saw every event once and missed none.
//!
//! Seed: printed at the start; `BERTH_FAULT_SEED=N` replays the same fault schedule (timings of the load
//! still vary). CI size: 40 rounds, 3 clients (2-4 minutes). Soak, stopping by itself:
//! `BERTH_FAULT_ROUNDS=200 BERTH_FAULT_SECS=3600 BERTH_FAULT_CLIENTS=4 cargo test -p berth-tests --test
//! fault_suite -- --nocapture` (rounds, a time limit, or both; whichever ends first). `BERTH_FAULT_VERBOSE=1`
//! logs every interrupted container. Counts (operations, faults, checks) are printed at the end. Root only.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_tests::fault::chaos::{delete_image, Driver, Fault};
use berth_tests::fault::checks::{leftovers, task_event_violations, Subscriber};
use berth_tests::fault::load::{client, Shared};
use berth_tests::fault::rig::Rig;
use berth_tests::fault::{Counts, Settings};

/// Fail now with every violation so far (and the seed to replay).
#[track_caller]
fn assert_none(sh: &Shared, seed: u64, when: &str) {
    let v = sh.violations.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        v.is_empty(),
        "fault suite (seed {seed}, replay with BERTH_FAULT_SEED={seed}) {when}: {} violations:\n  {}",
        v.len(),
        v.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_suite() {
    if !berth_tests::require_root() {
        return;
    }
    let settings = Settings::from_env();
    let seed = settings.seed;
    eprintln!(
        "fault suite: seed {seed} (replay: BERTH_FAULT_SEED={seed}), rounds {}, secs {:?}, clients {}",
        settings.rounds, settings.secs, settings.clients
    );
    let Some(mut rig) = Rig::start("fault-suite") else {
        return;
    };
    let sh = Arc::new(Shared {
        addr: rig.address(),
        ns: rig.ns().to_string(),
        state: rig.state(),
        image: rig.image.clone(),
        chain: rig.chain.clone(),
        truth: Mutex::default(),
        counts: Counts::default(),
        violations: Mutex::default(),
        pause: AtomicBool::new(true),
        parked: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        shim_killed: Mutex::default(),
        killable: Mutex::default(),
        network: "berth".into(),
    });
    let subscriber = Subscriber::spawn(&rig.address(), rig.ns(), sh.clone());
    // The image is there before the clients start (their first pull then only checks it).
    rig.pull(&rig.image).await.expect("first pull of the image");
    let clients: Vec<_> = (0..settings.clients)
        .map(|n| {
            tokio::spawn(client(
                sh.clone(),
                n,
                seed ^ (0x1000 + n as u64).wrapping_mul(0x9e37_79b9),
            ))
        })
        .collect();
    let mut driver = Driver::new(&settings);
    let t0 = Instant::now();
    let mut round = 0;
    while round < settings.rounds
        && settings
            .secs
            .is_none_or(|s| t0.elapsed() < Duration::from_secs(s))
    {
        let fault = driver.choose(round);
        eprintln!(
            "fault suite: round {round} ({:?} in): {fault:?}",
            t0.elapsed()
        );
        Driver::resume(&sh);
        driver.inject(&mut rig, &sh, &fault).await;
        Driver::park(&sh, settings.clients).await;
        driver.settle_images(&rig, &sh).await;
        match leftovers(&rig, &sh, false).await {
            Ok(left) if left.is_empty() => {}
            Ok(left) => sh.violation(format!(
                "after round {round} ({fault:?}), with every container deleted, left: {left:#?}"
            )),
            Err(e) => sh.violation(format!("listing after round {round}: {e}")),
        }
        let events = rig.nf.fx.journal(0, Duration::from_millis(200)).await;
        let truth = sh.truth.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for v in task_event_violations(&events, &truth, &sh) {
            sh.violation(format!("after round {round} ({fault:?}): {v}"));
        }
        assert_none(&sh, seed, &format!("after round {round} ({fault:?})"));
        round += 1;
        if matches!(fault, Fault::FillRoot) {
            sh.counts.add("rounds with a full root");
        }
    }
    sh.stop.store(true, std::sync::atomic::Ordering::Release);
    for c in clients {
        c.await.expect("a load client panicked");
    }

    // The end: delete the image, then nothing of the run may be left, and the subscriber saw the journal.
    delete_image(&rig, &rig.image)
        .await
        .expect("delete the image");
    let left = leftovers(&rig, &sh, true).await.expect("final listing");
    if !left.is_empty() {
        sh.violation(format!("after everything was deleted, left: {left:#?}"));
    }
    let events = rig.nf.fx.journal(0, Duration::from_millis(500)).await;
    for v in subscriber.finish(&events, &sh).await {
        sh.violation(format!("subscriber: {v}"));
    }
    let panics = rig
        .nf
        .fx
        .daemon
        .log()
        .lines()
        .filter(|l| l.contains("panicked") && !l.contains("failpoint"))
        .count();
    sh.counts
        .add_n("berthd log lines with a panic", panics as u64);

    let mut times = driver.answer_times.clone();
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    let max = times.last().copied().unwrap_or_default();
    let (ops, n_ops) = sh.counts.report("op ");
    let (errs, n_errs) = sh.counts.report("error ");
    let (faults, n_faults) = sh.counts.report("fault ");
    let (checks, n_checks) = sh.counts.report("check ");
    let all = sh.counts.snapshot();
    let other: String = all
        .iter()
        .filter(|(k, _)| {
            !["op ", "error ", "fault ", "check "]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .map(|(k, v)| format!("  {k:<58} {v}\n"))
        .collect();
    eprintln!(
        "fault suite: seed {seed}, {round} rounds in {:?}, {} containers\n\
         operations acknowledged ({n_ops}):\n{ops}failed calls ({n_errs}):\n{errs}\
         faults ({n_faults}):\n{faults}invariant checks ({n_checks}):\n{checks}other:\n{other}\
         berthd answered after a restart in: median {median:?}, max {max:?} ({} restarts)",
        t0.elapsed(),
        sh.truth.lock().unwrap_or_else(|e| e.into_inner()).len(),
        times.len()
    );
    assert_none(&sh, seed, "at the end");
}

/// Found by the suite: berthd SIGKILLed in the middle of a CNI ADD chain, after the firewall plugin added its
/// rules and before the chain's result was cached, DELeted the attachment at its restart without a
/// `prevResult`, and the firewall plugin (which finds the container's IP only there) left its two ACCEPT
/// rules in CNI-FORWARD. A plugin after the firewall SIGKILLs berthd at ADD to hit that window every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berthd_killed_between_cni_plugins_leaves_no_firewall_rules() {
    use berth_tests::net_fixture::{NetFixture, NETWORKS};
    if !berth_tests::require_root() {
        return;
    }
    let mut nf = NetFixture::new("fault-cni-crash", "");
    let berthd = nf.fx.daemon.pid().expect("berthd runs");
    nf.write_plugin(
        "crash",
        &format!(
            "cat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && {{ kill -9 {berthd}; sleep 30; exit 1; }}\nexit 0\n"
        ),
    );
    nf.write_conflist(
        "10-crash.conflist",
        &serde_json::json!({"cniVersion": "1.0.0", "name": "crash", "plugins": [
            nf.bridge_plugin(None), {"type": "firewall"}, {"type": "crash"}
        ]}),
    );
    let err = nf
        .run("c1", &[(NETWORKS, "crash")], &["sleep", "1000"])
        .await
        .expect_err("berthd dies in the ADD");
    nf.fx.daemon.kill();
    assert!(
        !nf.marked_rules().is_empty(),
        "the firewall plugin ran before berthd died ({err:?})"
    );
    nf.fx.daemon.start_again();
    // The attachment is DELeted by the restart's recovery or, when the task outlived the crash, by its delete.
    nf.fx.kill_and_delete("c1").await;
    let gone = berth_tests::net_fixture::eventually(Duration::from_secs(20), || {
        nf.cache_entries().is_empty()
    });
    assert!(
        gone,
        "the attachment is still cached: {:?}",
        nf.cache_entries()
    );
    nf.assert_no_leaks();
}

/// Found by the suite: a shim SIGKILLed right after the runtime created the container failed Tasks.Create,
/// and the undo could not reach the dead shim's Delete, so the runtime's state dir, the container's cgroups
/// and its init (blocked on the exec fifo) stayed. A runtime wrapper kills its shim after `create`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_killed_during_create_leaves_nothing() {
    use berth_tests::task_fixture::TaskFixture;
    use std::os::unix::fs::PermissionsExt;
    if !berth_tests::require_root() {
        return;
    }
    let mut fx = TaskFixture::new("fault-shim-create", "");
    let wrapper = fx.dir.join("runtime-wrapper");
    let runtime = berth_tests::task_fixture::runtime();
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n{runtime} \"$@\"\nrc=$?\ncase \" $* \" in *\" create \"*) kill -9 $PPID;; esac\nexit $rc\n"
        ),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(
        &fx.config_path,
        format!(
            "runtime_binary = {:?}\nshim_binary = {:?}\n",
            wrapper.display().to_string(),
            berth_tests::bin("berth-shim").display().to_string()
        ),
    )
    .expect("write the config");
    fx.daemon.restart();
    let b = fx.bundle("c1", &["sleep", "1000"]);
    fx.create_container("c1", &b).await;
    let err = fx
        .create_task("c1", "", "")
        .await
        .expect_err("the shim dies in the create");
    let runtime_state = fx.daemon.state().join("runc").join(&fx.ns).join("c1");
    let left = || {
        let mut left: Vec<String> = berth_tests::guard::cgroup_dirs(&b.cgroups_path())
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        for p in [runtime_state.clone(), fx.task_dir("c1")] {
            if p.exists() {
                left.push(p.display().to_string());
            }
        }
        left
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !left().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(left().is_empty(), "after {err:?}, left: {:#?}", left());
    fx.kill_and_delete("c1").await;
}
