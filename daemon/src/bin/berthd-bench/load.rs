//! `--load` (issue 13): berthd alone with many running containers and many event subscribers, some of which never
//! read. Shows that berthd's memory stays bounded (a stalled subscriber is cut off with RESOURCE_EXHAUSTED, not
//! buffered forever), that the readers keep up, that Tasks.List/Get and `ctr tasks ls` stay fast, and that a
//! SIGKILLed berthd reattaches every task.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use berth_proto::containerd_client::services::v1::events_client::EventsClient;
use berth_proto::containerd_client::services::v1::SubscribeRequest;
use nix::sys::signal::Signal;
use tonic::Streaming;

use crate::api::{self, Clients};
use crate::daemon::{rss_kib, Daemon, Kind};
use crate::report::Report;
use crate::{Args, Ctx};

/// A subscriber stream that is never polled: its HTTP/2 windows are 64 KiB, so berthd's sends stall there.
type Stalled = Streaming<berth_proto::containerd_client::types::Envelope>;

fn mib(pid: u32) -> f64 {
    rss_kib(pid) as f64 / 1024.0
}

/// Lines of berthd's log saying a subscriber was cut off.
fn cut_offs(d: &Daemon) -> usize {
    std::fs::read_to_string(d.log())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("event subscriber too slow"))
        .count()
}

pub async fn run(
    args: &Args,
    ctx: &Ctx,
    fleet: &mut Vec<Daemon>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (n, subs, stalled_n) = (
        args.load_containers,
        args.load_subscribers,
        args.load_stalled.min(args.load_subscribers),
    );
    fleet.clear();
    fleet.push(Daemon::new(
        Kind::Berthd,
        &ctx.work,
        "-load",
        &ctx.bindir,
        &ctx.runtime,
        args.state_on_disk,
    )?);
    let d = &mut fleet[0];
    d.start()?;
    let mut c = Clients::new(
        api::connect(&d.address()).await?,
        &ctx.rootfs,
        &ctx.cgroup_parent,
    );
    c.running().await?;
    let idle = mib(d.pid());

    // Readers count what they get and keep the status their stream ended with.
    let mut readers = Vec::new();
    for _ in 0..subs - stalled_n {
        let mut s = EventsClient::new(api::connect(&d.address()).await?)
            .subscribe(api::req(SubscribeRequest::default()))
            .await?
            .into_inner();
        readers.push(tokio::spawn(async move {
            let mut got = 0u64;
            loop {
                match s.message().await {
                    Ok(Some(_)) => got += 1,
                    Ok(None) => return (got, None),
                    Err(st) => return (got, Some(st)),
                }
            }
        }));
    }
    let mut stalled: Vec<Stalled> = Vec::new();
    for _ in 0..stalled_n {
        stalled.push(
            EventsClient::new(api::connect_with(&d.address(), Some(65_535)).await?)
                .subscribe(api::req(SubscribeRequest::default()))
                .await?
                .into_inner(),
        );
    }
    let with_subs = mib(d.pid());
    let t = Instant::now();
    c.run_many("load", 0, n, ctx.parallel).await?;
    let start_s = t.elapsed().as_secs_f64();
    println!("berthd: started {n} containers in {start_s:.1} s with {subs} subscribers ({stalled_n} never read)");
    let after_start = mib(d.pid());

    // Churn until every stalled subscriber has been cut off (each run/kill/delete publishes 6 events), bounded.
    let mut churned = 0;
    while cut_offs(d) < stalled_n && churned < args.load_churn {
        let id = format!("churn{churned}");
        c.run(&id).await?;
        let _ = c
            .tasks
            .kill(api::req(
                berth_proto::containerd_client::services::v1::KillRequest {
                    container_id: id.clone(),
                    signal: 9,
                    ..Default::default()
                },
            ))
            .await;
        let _ = c
            .tasks
            .wait(api::req(
                berth_proto::containerd_client::services::v1::WaitRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                },
            ))
            .await;
        c.delete(&id).await;
        churned += 1;
    }
    let after_churn = mib(d.pid());
    let cut = cut_offs(d);

    // What a stalled subscriber sees when it finally reads: the buffered events, then the cut-off status.
    let mut statuses = Vec::new();
    for mut s in stalled {
        let mut got = 0u64;
        let st = loop {
            match tokio::time::timeout(Duration::from_secs(10), s.message()).await {
                Ok(Ok(Some(_))) => got += 1,
                Ok(Ok(None)) => break "stream ended without a status".to_string(),
                Ok(Err(st)) => break format!("{:?}: {}", st.code(), st.message()),
                Err(_) => break "still open after 10 s of silence (never cut off)".to_string(),
            }
        };
        statuses.push((got, st));
    }

    let mut list = Vec::new();
    let mut get = Vec::new();
    for _ in 0..30 {
        let (l, g) = c.list_get_ms("load0").await?;
        list.push(l);
        get.push(g);
    }
    let mut ctr_ls = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = tokio::process::Command::new("ctr")
            .arg("-a")
            .arg(d.address())
            .args(["-n", api::NS, "tasks", "ls"])
            .output()
            .await
            .context("running ctr tasks ls")?;
        ctr_ls.push(t.elapsed().as_secs_f64() * 1000.0);
        let lines = String::from_utf8_lossy(&out.stdout).lines().count();
        if !out.status.success() || lines < n + 1 {
            bail!(
                "ctr tasks ls listed {} lines for {n} tasks: {}",
                lines.saturating_sub(1),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // Readers still live before the kill: none of them may have been cut off.
    let live_readers = readers.iter().filter(|r| !r.is_finished()).count();
    drop(c);
    d.signal(Signal::SIGKILL);
    let t = Instant::now();
    d.start()?;
    let mut c = Clients::new(
        api::connect(&d.address()).await?,
        &ctx.rootfs,
        &ctx.cgroup_parent,
    );
    loop {
        if let Ok(r) = c.running().await {
            if r >= n {
                break;
            }
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("not all {n} tasks RUNNING 120 s after berthd's restart");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let recovery = t.elapsed().as_secs_f64() * 1000.0;
    let mut reader_events = Vec::new();
    for r in readers {
        if let Ok((got, _)) = r.await {
            reader_events.push(got as f64);
        }
    }

    println!("\nload: {n} containers, {subs} subscribers ({stalled_n} never read)");
    println!("  berthd RSS: idle {idle:.1} MiB, with subscribers {with_subs:.1}, after {n} starts {after_start:.1}, after {churned} churn containers {after_churn:.1} MiB (VmHWM in {})", d.log().display());
    println!("  stalled subscribers cut off: {cut} of {stalled_n} (berthd's log)");
    for (i, (got, st)) in statuses.iter().enumerate().take(3) {
        println!("  stalled subscriber {i}: {got} events, then {st}");
    }
    let all_exhausted = statuses
        .iter()
        .all(|(_, s)| s.starts_with("ResourceExhausted"));
    println!("  every stalled subscriber ended with RESOURCE_EXHAUSTED: {all_exhausted}");
    println!(
        "  readers still live before the SIGKILL: {live_readers} of {}",
        subs - stalled_n
    );
    println!("  recovery after SIGKILL: all {n} RUNNING after {recovery:.1} ms");
    for (name, unit, v) in [
        ("load: berthd RSS after starts", "MiB", vec![after_start]),
        ("load: berthd RSS after churn", "MiB", vec![after_churn]),
        ("load: Tasks.List", "ms", list),
        ("load: Tasks.Get", "ms", get),
        ("load: ctr tasks ls", "ms", ctr_ls),
        ("load: events per reader", "events", reader_events),
        ("load: recovery, all RUNNING", "ms", vec![recovery]),
    ] {
        report.row(
            format!("{name} ({n} containers, {subs} subscribers)"),
            unit,
            &v,
            &[],
            None,
        );
    }
    if live_readers != subs - stalled_n {
        bail!("a reading subscriber was cut off");
    }
    Ok(())
}
