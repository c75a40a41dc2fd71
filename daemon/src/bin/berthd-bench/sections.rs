//! The measured sections: events (exit latency on a tmpfs and on disk, fan-out) with both daemons up and
//! interleaved sample by sample, and the container ladder (memory, Tasks.List/Get, exit latency and recovery at
//! each count), one daemon at a time so that 1,000 containers of each never run at once.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;

use crate::api::{self, Clients};
use crate::daemon::{rss_kib, Daemon, Kind};
use crate::events::{self, CtrEvents, FanOut};
use crate::report::{Point, Report};
use crate::Ctx;

/// Clients of a running daemon.
async fn clients(ctx: &Ctx, d: &Daemon) -> anyhow::Result<Clients> {
    Ok(Clients::new(
        api::connect(&d.address()).await?,
        &ctx.rootfs,
        &ctx.cgroup_parent,
    ))
}

/// Remove every container of a daemon (restarting it if it is down), then stop it.
pub async fn teardown(ctx: &Ctx, d: &mut Daemon) -> anyhow::Result<()> {
    if !d.running() {
        d.start()?;
    }
    let left = clients(ctx, d).await?.remove_all(ctx.parallel).await;
    d.signal(Signal::SIGTERM);
    if left != 0 {
        bail!(
            "{} still lists {left} containers after cleanup",
            d.kind.name()
        );
    }
    Ok(())
}

/// Exit-to-subscriber latency through `ctr events`, state dir on a tmpfs and on disk, and the fan-out to
/// `ctx.fanout` subscribers (tmpfs only).
pub async fn events(ctx: &Ctx, fleet: &mut Vec<Daemon>, report: &mut Report) -> anyhow::Result<()> {
    for on_disk in [false, true] {
        let where_ = if on_disk { "disk" } else { "tmpfs" };
        fleet.clear();
        for kind in [Kind::Berthd, Kind::Containerd] {
            let mut d = Daemon::new(
                kind,
                &ctx.work,
                &format!("-ev-{where_}"),
                &ctx.bindir,
                &ctx.runtime,
                on_disk,
            )?;
            d.start()?;
            fleet.push(d);
        }
        let mut cl = Vec::new();
        let mut subs = Vec::new();
        for d in fleet.iter() {
            cl.push(clients(ctx, d).await?);
            subs.push(CtrEvents::start(d)?);
        }
        let mut lat = [Vec::new(), Vec::new()];
        // One warm-up sample each (first shim exec, page cache), then interleaved samples.
        for i in 0..=ctx.samples {
            for k in 0..2 {
                let ms =
                    events::ctr_sample(&mut cl[k], &subs[k], &format!("ev{where_}{i}")).await?;
                if i > 0 {
                    lat[k].push(ms);
                }
            }
        }
        let med = |v: &[f64]| {
            crate::report::Stats::of(v)
                .map(|s| s.median)
                .unwrap_or(f64::NAN)
        };
        println!(
            "events ({where_}): berthd median {:.2} ms, containerd {:.2} ms",
            med(&lat[0]),
            med(&lat[1])
        );
        report.row(
            format!("events: exit-to-subscriber via ctr events, state on {where_}"),
            "ms",
            &lat[0],
            &lat[1],
            Some(0.5),
        );
        drop(subs);
        if !on_disk && ctx.fanout > 0 {
            let mut fan = Vec::new();
            for (k, d) in fleet.iter().enumerate() {
                fan.push(FanOut::start(d, &mut cl[k], ctx.fanout).await?);
            }
            let (mut first, mut last) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
            for i in 0..=ctx.fanout_samples {
                for k in 0..2 {
                    let (f, l) = fan[k].sample(&mut cl[k], &format!("fan{i}")).await?;
                    if i > 0 {
                        first[k].push(f);
                        last[k].push(l);
                    }
                }
            }
            let n = ctx.fanout;
            report.row(
                format!("events: fan-out, last of {n} subscribers has the exit"),
                "ms",
                &last[0],
                &last[1],
                Some(0.5),
            );
            report.row(
                format!("events: fan-out, first of {n} subscribers has the exit"),
                "ms",
                &first[0],
                &first[1],
                None,
            );
        }
        for d in fleet.iter_mut() {
            teardown(ctx, d).await?;
        }
        fleet.clear();
    }
    Ok(())
}

/// What the ladder measures at which counts.
pub struct Ladder {
    /// Container counts to climb to, ascending.
    pub steps: Vec<usize>,
    /// Counts at which berthd/containerd are SIGKILLed and restarted.
    pub recover_at: Vec<usize>,
    /// Samples of Tasks.List/Get and exit latency per step.
    pub samples: usize,
}

/// Climb the ladder on one daemon: RSS idle and at each count; Tasks.List/Get, exit latency at each count;
/// recovery where asked.
pub async fn ladder(
    ctx: &Ctx,
    kind: Kind,
    plan: &Ladder,
    fleet: &mut Vec<Daemon>,
    report: &mut Report,
) -> anyhow::Result<()> {
    fleet.clear();
    fleet.push(Daemon::new(
        kind,
        &ctx.work,
        "-ladder",
        &ctx.bindir,
        &ctx.runtime,
        false,
    )?);
    let d = &mut fleet[0];
    d.start()?;
    let name = kind.name();
    let point = |report: &mut Report, figure, unit, count, value| {
        report.points.push(Point {
            figure,
            unit,
            count,
            daemon: name,
            value,
        })
    };
    let mut c = clients(ctx, d).await?;
    // Idle: after the first call has been served (both daemons load lazily).
    c.running().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    point(
        report,
        "daemon RSS",
        "MiB",
        0,
        rss_kib(d.pid()) as f64 / 1024.0,
    );
    let mut have = 0;
    for &n in &plan.steps {
        let t = Instant::now();
        c.run_many("s", have, n, ctx.parallel).await?;
        println!(
            "{name}: {} -> {n} containers in {:.1} s",
            have,
            t.elapsed().as_secs_f64()
        );
        have = n;
        tokio::time::sleep(Duration::from_millis(300)).await;
        point(
            report,
            "daemon RSS",
            "MiB",
            n,
            rss_kib(d.pid()) as f64 / 1024.0,
        );
        for _ in 0..plan.samples {
            let (l, g) = c.list_get_ms("s0").await?;
            point(report, "Tasks.List", "ms", n, l);
            point(report, "Tasks.Get", "ms", n, g);
        }
        {
            let mut fan = FanOut::start(d, &mut c, 1).await?;
            for i in 0..=plan.samples.min(10) {
                let (ms, _) = fan.sample(&mut c, &format!("x{n}-{i}")).await?;
                if i > 0 {
                    point(report, "exit-to-subscriber", "ms", n, ms);
                }
            }
        }
        if plan.recover_at.contains(&n) {
            drop(c);
            d.signal(Signal::SIGKILL);
            let t = Instant::now();
            d.start()?;
            let up = t.elapsed();
            c = clients(ctx, d).await?;
            loop {
                // A daemon still recovering may refuse calls: retry until every task is listed RUNNING.
                if let Ok(r) = c.running().await {
                    if r >= n {
                        break;
                    }
                }
                if t.elapsed() > Duration::from_secs(120) {
                    bail!("{name}: not all {n} tasks RUNNING 120 s after restart");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let all = t.elapsed().as_secs_f64() * 1000.0;
            println!(
                "{name}: recovery of {n}: socket up {:.1} ms, all RUNNING {all:.1} ms",
                up.as_secs_f64() * 1000.0
            );
            point(report, "recovery", "ms", n, all);
        }
    }
    let t = Instant::now();
    teardown(ctx, d)
        .await
        .context("removing the ladder's containers")?;
    println!(
        "{name}: removed {have} containers in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    fleet.clear();
    Ok(())
}
