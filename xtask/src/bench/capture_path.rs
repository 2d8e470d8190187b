//! `--only capture-path`: what the capture path costs the legacy host per packet under
//! `b capture` (`run --sample 0`) at saturation, measured so that load on a shared box
//! moves it little: the tap's BPF run time per packet (`run_time_ns / run_cnt` with
//! kernel.bpf_stats_enabled on for the leg only) and the capture thread's CPU per
//! exchange counted (its `schedstat` run time over the leg plus a drain). With
//! `--baseline-daemon` the other build runs the same legs, interleaved leg by leg.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::Ctx;
use super::lab::{SERVER_IP, check_interrupted, in_netns, sleep};
use super::load::{self, Load, LoadResult};
use super::overhead::Target;
use super::table::{Table, f, median};
use super::tap::{self, BpfStats, TapDaemon, TapMode, TapReport};

/// Unmeasured load before each leg: the daemon's pools, the JIT'd tap and nginx warm up.
const WARM_UP_S: u64 = 2;
/// After the load the capture thread still reads what the ring holds: its CPU and the
/// exchanges it counts are taken over the leg plus this drain.
const DRAIN: Duration = Duration::from_secs(3);

/// One leg: one build, one saturation load with the tap attached.
#[derive(Clone, Debug, Serialize)]
pub struct Leg {
    /// `this` or `baseline`.
    pub build: String,
    pub daemon: PathBuf,
    pub round: usize,
    pub result: LoadResult,
    /// The tap's BPF statistics over the load (both hooks).
    pub bpf: BpfStats,
    /// Run time of the daemon's `capture` thread over the load plus the drain.
    pub capture_thread_ns: u64,
    /// Run time of every daemon thread over the load plus the drain, with its policy
    /// (`SCHED_IDLE` threads run only on CPU nothing else wanted).
    pub threads: Vec<ThreadTime>,
    /// Exchanges the daemon counted (every outcome) over the load plus the drain.
    pub exchanges_counted: u64,
    /// Kernel records lost to a full ring over the load plus the drain.
    pub ring_full: u64,
    pub loadavg: String,
    pub target: Target,
}

/// One daemon thread's run time over a leg.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadTime {
    pub name: String,
    /// The kernel's policy number (0 = `SCHED_OTHER`, 5 = `SCHED_IDLE`).
    pub policy: u32,
    pub run_ns: u64,
}

/// `SCHED_IDLE`'s policy number in /proc/PID/task/TID/sched.
const SCHED_IDLE: u32 = 5;

impl Leg {
    pub fn ns_per_packet(&self) -> Option<f64> {
        self.bpf.ns_per_packet()
    }

    pub fn packets_per_request(&self) -> Option<f64> {
        (self.result.completed > 0).then(|| self.bpf.run_cnt as f64 / self.result.completed as f64)
    }

    /// CPU seconds per second of load of the daemon's threads that are not `SCHED_IDLE`.
    pub fn non_idle_cpu_per_s(&self, seconds: u64) -> f64 {
        let ns: u64 = self
            .threads
            .iter()
            .filter(|t| t.policy != SCHED_IDLE)
            .map(|t| t.run_ns)
            .sum();
        ns as f64 / 1e9 / (seconds as f64 + DRAIN.as_secs_f64())
    }

    /// The same for the `SCHED_IDLE` threads.
    pub fn idle_cpu_per_s(&self, seconds: u64) -> f64 {
        let ns: u64 = self
            .threads
            .iter()
            .filter(|t| t.policy == SCHED_IDLE)
            .map(|t| t.run_ns)
            .sum();
        ns as f64 / 1e9 / (seconds as f64 + DRAIN.as_secs_f64())
    }

    pub fn capture_ns_per_exchange(&self) -> Option<f64> {
        (self.exchanges_counted > 0)
            .then(|| self.capture_thread_ns as f64 / self.exchanges_counted as f64)
    }
}

/// Every round runs one leg of each build (with a baseline), this build first in even
/// rounds and second in odd ones, so a drift in the shared box's load favours neither.
pub fn run(ctx: &mut Ctx, target: Target, baseline: Option<&Path>) -> Result<Vec<Leg>> {
    let mut builds: Vec<(&str, PathBuf)> = vec![("this", ctx.daemon.clone())];
    if let Some(b) = baseline {
        if !b.is_file() {
            bail!("--baseline-daemon {}: no such file", b.display());
        }
        builds.push(("baseline", b.to_path_buf()));
    }
    let mut legs = Vec::new();
    for round in 0..ctx.rounds {
        let mut order = builds.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for (build, daemon) in &order {
            legs.push(leg(ctx, target, build, daemon, round)?);
        }
    }
    Ok(legs)
}

fn leg(ctx: &mut Ctx, target: Target, build: &str, daemon: &Path, round: usize) -> Result<Leg> {
    check_interrupted()?;
    let url = format!("http://{SERVER_IP}:{}{}", target.port(), target.path());
    let bound = ctx.seconds * 4 + 60;
    let tapd = TapDaemon::start_sampled(
        &ctx.lab,
        daemon,
        TapMode::Run,
        target.port(),
        bound,
        &["--sample", "0"],
    )?;
    load::run(
        &ctx.lab,
        &ctx.oha,
        Load::Saturation,
        &url,
        WARM_UP_S,
        "capture-path-warm-up",
    )?;
    let capture = capture_thread(tapd.pid())?;
    let measured = (|| -> Result<Leg> {
        ctx.lab.set_bpf_stats(true)?;
        let bpf0 = tap::bpf_stats(tapd.pid())?;
        let m0 = metrics(&ctx.lab)?;
        let cpu0 = thread_run_ns(tapd.pid(), capture)?;
        let threads0 = threads(tapd.pid())?;
        let result = load::run(
            &ctx.lab,
            &ctx.oha,
            Load::Saturation,
            &url,
            ctx.seconds,
            &format!("capture-path-{build}-{round}"),
        )?;
        let bpf1 = tap::bpf_stats(tapd.pid())?;
        ctx.lab.set_bpf_stats(false)?;
        sleep(DRAIN)?;
        let cpu1 = thread_run_ns(tapd.pid(), capture)?;
        let threads1 = threads(tapd.pid())?;
        let m1 = metrics(&ctx.lab)?;
        Ok(Leg {
            build: build.into(),
            daemon: daemon.to_path_buf(),
            round,
            result,
            bpf: BpfStats {
                prog_ids: bpf1.prog_ids.clone(),
                run_cnt: bpf1.run_cnt.saturating_sub(bpf0.run_cnt),
                run_time_ns: bpf1.run_time_ns.saturating_sub(bpf0.run_time_ns),
            },
            capture_thread_ns: cpu1.saturating_sub(cpu0),
            threads: threads1
                .into_iter()
                .map(|(tid, mut t)| {
                    let before = threads0.iter().find(|(id, _)| *id == tid);
                    t.run_ns = t.run_ns.saturating_sub(before.map_or(0, |(_, b)| b.run_ns));
                    t
                })
                .collect(),
            target,
            exchanges_counted: counted(&m1).saturating_sub(counted(&m0)),
            ring_full: m1
                .kernel_ring_full
                .unwrap_or(0)
                .saturating_sub(m0.kernel_ring_full.unwrap_or(0)),
            loadavg: super::loadavg(),
        })
    })();
    // Off again whatever happened (the lab also restores it when dropped).
    ctx.lab.set_bpf_stats(false)?;
    let leg = measured?;
    tapd.stop(&ctx.lab, daemon)?;
    eprintln!(
        "xtask bench: capture path {} {build:<8} round {}: {:>8.0} req/s, tap {} ns/packet ({} packets/request), capture thread {} ns/exchange, daemon CPU s/s non-idle {:.3} idle {:.3}, ring_full {}, load {}",
        target.label(),
        round + 1,
        leg.result.rps,
        f(leg.ns_per_packet(), 0),
        f(leg.packets_per_request(), 2),
        f(leg.capture_ns_per_exchange(), 0),
        leg.non_idle_cpu_per_s(ctx.seconds),
        leg.idle_cpu_per_s(ctx.seconds),
        leg.ring_full,
        leg.loadavg
    );
    Ok(leg)
}

/// Exchanges of every outcome, dropped included: each is work the capture thread did.
fn counted(r: &TapReport) -> u64 {
    r.exchanges + r.daemon_drops
}

fn metrics(lab: &super::lab::Lab) -> Result<TapReport> {
    let text = in_netns(&lab.server_ns, || {
        tap::http_get(tap::METRICS_ADDR, "/metrics")
    })?;
    let mut r = TapReport::default();
    tap::parse_metrics(&text, &mut r);
    Ok(r)
}

/// The daemon's thread named `capture` (the ring-buffer reader and reassembly).
fn capture_thread(pid: u32) -> Result<u32> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "capture" {
            return entry
                .file_name()
                .to_string_lossy()
                .parse()
                .context("task id");
        }
    }
    bail!("mirror-daemon {pid} has no thread named `capture`")
}

/// Every thread of the daemon: (task id, name, policy, run time so far).
fn threads(pid: u32) -> Result<Vec<(u32, ThreadTime)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let sched = std::fs::read_to_string(entry.path().join("sched")).unwrap_or_default();
        let policy = sched
            .lines()
            .find(|l| l.starts_with("policy"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        // A thread that ended between the two reads has no run time left to count.
        let run_ns = thread_run_ns(pid, tid).unwrap_or(0);
        out.push((
            tid,
            ThreadTime {
                name: name.trim().to_string(),
                policy,
                run_ns,
            },
        ));
    }
    Ok(out)
}

/// Nanoseconds thread `tid` has run (the first field of its `schedstat`).
fn thread_run_ns(pid: u32, tid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/task/{tid}/schedstat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{path}: {text:?}"))
}

pub fn table(legs: &[Leg], seconds: u64) -> Table {
    let mut t = Table::new(
        format!(
            "capture path at saturation ({}, `run --sample 0`, wrk -t2 -c64 for {seconds}s, bpf_stats on for the load only; daemon CPU s/s over the load plus {} s of drain)",
            legs.first().map_or("nginx static", |l| l.target.label()),
            DRAIN.as_secs()
        ),
        &[
            "build",
            "round",
            "req/s",
            "tap ns/packet",
            "packets/request",
            "capture thread ns/exchange",
            "daemon CPU s/s non-idle threads",
            "idle threads",
            "exchanges counted / requests",
            "ring_full",
            "load average",
        ],
        2,
    );
    let builds: Vec<&str> = ["this", "baseline"]
        .into_iter()
        .filter(|b| legs.iter().any(|l| l.build == *b))
        .collect();
    for l in legs {
        t.row(vec![
            l.build.clone(),
            (l.round + 1).to_string(),
            format!("{:.0}", l.result.rps),
            f(l.ns_per_packet(), 0),
            f(l.packets_per_request(), 2),
            f(l.capture_ns_per_exchange(), 0),
            format!("{:.3}", l.non_idle_cpu_per_s(seconds)),
            format!("{:.3}", l.idle_cpu_per_s(seconds)),
            format!("{} / {}", l.exchanges_counted, l.result.completed),
            l.ring_full.to_string(),
            l.loadavg.clone(),
        ]);
    }
    let med = |build: &str, pick: fn(&Leg) -> Option<f64>| {
        median(
            legs.iter()
                .filter(|l| l.build == build)
                .filter_map(pick)
                .collect(),
        )
    };
    let med_s = |build: &str, pick: fn(&Leg, u64) -> f64| {
        median(
            legs.iter()
                .filter(|l| l.build == build)
                .map(|l| pick(l, seconds))
                .collect(),
        )
    };
    for b in &builds {
        t.row(vec![
            format!("{b} (median)"),
            "-".into(),
            f(med(b, |l| Some(l.result.rps)), 0),
            f(med(b, Leg::ns_per_packet), 0),
            f(med(b, Leg::packets_per_request), 2),
            f(med(b, Leg::capture_ns_per_exchange), 0),
            f(med_s(b, Leg::non_idle_cpu_per_s), 3),
            f(med_s(b, Leg::idle_cpu_per_s), 3),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
    }
    if builds.len() == 2 {
        let ratio = |pick: fn(&Leg) -> Option<f64>| {
            med("this", pick)
                .zip(med("baseline", pick))
                .map(|(a, b)| format!("{:.3}×", a / b))
                .unwrap_or_else(|| "-".into())
        };
        t.row(vec![
            "this / baseline".into(),
            "-".into(),
            ratio(|l| Some(l.result.rps)),
            ratio(Leg::ns_per_packet),
            ratio(Leg::packets_per_request),
            ratio(Leg::capture_ns_per_exchange),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
    }
    t.note(
        "tap ns/packet = Δrun_time_ns / Δrun_cnt of the daemon's mirror_tap programs (ingress \
         and egress, every packet on the interface) over the load; capture thread = Δ of its \
         /proc schedstat run time over the load plus a 3 s drain, divided by the exchanges \
         (every outcome) the daemon counted in that window; daemon CPU s/s = run time of its \
         threads (policy read from /proc) per second of that window; the daemon runs in the bench's \
         daemon cgroup (deploy/mirror.service's CPU settings). Builds alternate leg by leg, \
         this build first in odd-numbered rounds, the baseline first in even-numbered ones.",
    );
    t
}
