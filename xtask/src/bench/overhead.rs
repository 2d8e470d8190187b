//! Sections 1–3: legacy-path overhead (a/b/c/d interleaved, medians over rounds),
//! capture completeness and cost, all from the same kind of measured run.
use std::time::Instant;

use anyhow::Result;
use mirror_common::cpu_priority::CandidatePriority;
use serde::Serialize;

use super::Ctx;
use super::lab::{SERVER_IP, check_interrupted};
use super::load::{self, Load, LoadResult};
use super::procs::{SchedTimes, cpu_seconds, status_mib, tree_sched_times};
use super::servers::{
    DATA_PATH, EXAMPLES_PATH, EXAMPLES_PORT, NGINX_PORT, TEE_PROXY_PORT, TEE_STATIC_PORT,
};
use super::table::{Table, f, median, ratio};
use super::tap::{self, BpfStats, TAP_MODE, TapDaemon, TapMode, TapReport, Tcpdump, TcpdumpReport};

/// What is attached to the legacy path; (b)–(d) are `mirror-daemon run` the ways it is
/// meant to be used, each with the same CPU settings as deploy/mirror.service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Config {
    /// (a) nothing attached.
    Nothing,
    /// (b) capture only: tap, reassembly, HTTP framing and the ledger, nothing replayed
    /// (`run --sample 0`).
    Capture,
    /// (c) the production setting: 5 % of clients shadowed, chosen in the kernel
    /// (`--sample 5 --sticky client-ip`; the load comes from 20 client addresses).
    Shadow5,
    /// (d) every request shadowed (`--sample 100`).
    Shadow100,
    /// (e) nginx's `mirror` directive as an in-path tee.
    NginxMirror,
    /// (f) tcpdump writing a capture.
    Tcpdump,
}

pub const CONFIGS: [Config; 6] = [
    Config::Nothing,
    Config::Capture,
    Config::Shadow5,
    Config::Shadow100,
    Config::NginxMirror,
    Config::Tcpdump,
];

impl Build {
    /// The configuration's label, marked when the baseline build ran it.
    pub fn label(self, config: Config) -> String {
        match self {
            Build::This => config.label().into(),
            Build::Baseline => format!("{} (baseline)", config.label()),
        }
    }
}

impl Config {
    pub fn label(self) -> &'static str {
        match self {
            Config::Nothing => "a nothing",
            Config::Capture => "b capture",
            Config::Shadow5 => "c shadow 5%",
            Config::Shadow100 => "d shadow 100%",
            Config::NginxMirror => "e nginx mirror",
            Config::Tcpdump => "f tcpdump",
        }
    }

    /// The `run` sampling flags of the daemon configurations.
    pub fn sampling(self) -> Option<&'static [&'static str]> {
        match self {
            Config::Capture => Some(&["--sample", "0"]),
            Config::Shadow5 => Some(&["--sample", "5", "--sticky", "client-ip"]),
            Config::Shadow100 => Some(&["--sample", "100"]),
            Config::Nothing | Config::NginxMirror | Config::Tcpdump => None,
        }
    }
}

/// Which `mirror-daemon` build ran (b)–(d): this tree's, or `--baseline-daemon`'s,
/// measured in the same round next to this build's (before it in odd rounds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Build {
    This,
    Baseline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Target {
    Nginx,
    Examples,
}

pub const TARGETS: [Target; 2] = [Target::Nginx, Target::Examples];

/// `cargo xtask bench --target`: only this legacy service (default both).
static ONLY_TARGET: std::sync::OnceLock<Target> = std::sync::OnceLock::new();

pub fn set_only_target(target: Option<Target>) {
    if let Some(t) = target {
        let _ = ONLY_TARGET.set(t);
    }
}

/// The legacy services this run measures.
pub fn targets() -> Vec<Target> {
    match ONLY_TARGET.get() {
        Some(t) => vec![*t],
        None => TARGETS.to_vec(),
    }
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Nginx => "nginx static",
            Target::Examples => "mirror-examples legacy",
        }
    }

    pub fn port(self) -> u16 {
        match self {
            Target::Nginx => NGINX_PORT,
            Target::Examples => EXAMPLES_PORT,
        }
    }

    fn tee_port(self) -> u16 {
        match self {
            Target::Nginx => TEE_STATIC_PORT,
            Target::Examples => TEE_PROXY_PORT,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Target::Nginx => DATA_PATH,
            Target::Examples => EXAMPLES_PATH,
        }
    }
}

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub target: Target,
    pub load: String,
    #[serde(skip)]
    pub load_spec: Load,
    pub config: Config,
    pub build: Build,
    pub round: usize,
    pub result: LoadResult,
    pub tap: Option<TapReport>,
    pub tcpdump: Option<TcpdumpReport>,
    /// CPU seconds of the daemon (or tcpdump) during the load.
    pub observer_cpu_s: Option<f64>,
    pub observer_hwm_mib: Option<f64>,
    pub bpf: Option<BpfStats>,
    pub load_wall_s: f64,
    /// The candidate cgroup's CPU priority during the run (`--candidate-priority`).
    pub candidate_priority: &'static str,
    /// Legacy's threads (every process of the server) over the load, per completed
    /// request, from schedstat: time on a CPU, and time runnable but waiting for one. The
    /// wait is what the daemon, the candidate and the rest of the box add to legacy's
    /// latency, whatever the box's clock speed; the other helpers' load adds to it too.
    pub legacy_cpu_us_per_req: Option<f64>,
    pub legacy_wait_us_per_req: Option<f64>,
    /// The candidate's CPU seconds over the load (its share of the box).
    pub candidate_cpu_s: Option<f64>,
}

impl Run {
    pub fn completeness(&self) -> Option<f64> {
        let tap = self.tap.as_ref()?;
        (self.result.completed > 0).then(|| tap.exchanges as f64 / self.result.completed as f64)
    }
}

/// Runs one load against one target with one configuration attached.
pub fn measure(
    ctx: &Ctx,
    target: Target,
    load_spec: Load,
    config: Config,
    build: Build,
    round: usize,
    with_bpf_stats: bool,
) -> Result<Run> {
    measure_with(
        ctx,
        target,
        load_spec,
        config,
        build,
        round,
        with_bpf_stats,
        ctx.default_priority(),
    )
}

/// [`measure`] with the candidate's cgroup at `priority` for this run (put back after).
#[allow(clippy::too_many_arguments)]
pub fn measure_with(
    ctx: &Ctx,
    target: Target,
    load_spec: Load,
    config: Config,
    build: Build,
    round: usize,
    with_bpf_stats: bool,
    priority: CandidatePriority,
) -> Result<Run> {
    check_interrupted()?;
    ctx.set_candidate_priority(priority)?;
    let daemon_path = match build {
        Build::This => &ctx.daemon,
        Build::Baseline => ctx
            .baseline
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no --baseline-daemon given"))?,
    };
    let port = if config == Config::NginxMirror {
        target.tee_port()
    } else {
        target.port()
    };
    let url = format!("http://{SERVER_IP}:{port}{}", target.path());
    // The observer stops by itself well after the load would have.
    let bound = ctx.seconds * 4 + 60;
    let mut daemon = None;
    let mut dump = None;
    if let Some(sampling) = config.sampling() {
        daemon = Some(TapDaemon::start_sampled(
            &ctx.lab,
            daemon_path,
            TAP_MODE,
            target.port(),
            bound,
            sampling,
        )?);
    } else if config == Config::Tcpdump {
        dump = Some(Tcpdump::start(&ctx.lab, target.port())?);
    }
    let observer = daemon
        .as_ref()
        .map(TapDaemon::pid)
        .or(dump.as_ref().map(Tcpdump::pid));
    let cpu0 = observer.map(|p| cpu_seconds(p, ctx.ticks)).transpose()?;
    let legacy_pid = ctx
        .legacy_pids
        .iter()
        .find(|(t, _)| *t == target)
        .map(|(_, p)| *p);
    let sched0 = legacy_pid.map(tree_sched_times);
    let cand0 = ctx
        .candidate_pid
        .and_then(|p| cpu_seconds(p, ctx.ticks).ok());
    let t0 = Instant::now();
    let result = load::run(
        &ctx.lab,
        &ctx.oha,
        load_spec,
        &url,
        ctx.seconds,
        &format!("load-{}-{round}", config.label().replace(' ', "-")),
    )?;
    let load_wall_s = t0.elapsed().as_secs_f64();
    let sched = sched0
        .zip(legacy_pid.map(tree_sched_times))
        .map(|(a, b): (SchedTimes, SchedTimes)| a.until(b));
    let cand1 = ctx
        .candidate_pid
        .and_then(|p| cpu_seconds(p, ctx.ticks).ok());
    // Let the observer catch up with what is already queued before reading its CPU.
    super::lab::sleep(std::time::Duration::from_millis(300))?;
    let cpu1 = observer.map(|p| cpu_seconds(p, ctx.ticks)).transpose()?;
    let hwm = observer.map(|p| status_mib(p, "VmHWM:")).transpose()?;
    let bpf = match (&daemon, with_bpf_stats) {
        (Some(d), true) => Some(tap::bpf_stats(d.pid())?),
        _ => None,
    };
    let tap = daemon.map(|d| d.stop(&ctx.lab, daemon_path)).transpose()?;
    let tcpdump = dump.map(Tcpdump::stop).transpose()?;
    let completed = result.completed;
    let per_req = |pick: fn(&SchedTimes) -> u64| {
        sched
            .filter(|_| completed > 0)
            .map(|s| pick(&s) as f64 / 1e3 / completed as f64)
    };
    let run = Run {
        target,
        load: load_spec.label(),
        load_spec,
        config,
        build,
        round,
        result,
        tap,
        tcpdump,
        observer_cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
        observer_hwm_mib: hwm,
        bpf,
        load_wall_s,
        candidate_priority: priority.as_str(),
        legacy_cpu_us_per_req: per_req(|s| s.run_ns),
        legacy_wait_us_per_req: per_req(|s| s.wait_ns),
        candidate_cpu_s: cand0.zip(cand1).map(|(a, b)| b - a),
    };
    ctx.set_candidate_priority(ctx.default_priority())?;
    eprintln!(
        "xtask bench: {:<22} {:<10} {:<26} round {}: {:>8.0} req/s p50 {:>7.3} ms p99 {:>7.3} ms{}",
        target.label(),
        run.load,
        build.label(config),
        round + 1,
        run.result.rps,
        run.result.p50_ms,
        run.result.p99_ms,
        run.completeness()
            .map(|c| format!(" completeness {:.3}%", c * 100.0))
            .unwrap_or_default()
            + &run
                .legacy_wait_us_per_req
                .map(|w| format!(" legacy wait {w:.1} us/req"))
                .unwrap_or_default()
            + &run
                .candidate_cpu_s
                .filter(|c| *c > 0.0)
                .map(|c| format!(" cand {c:.2} CPU-s ({})", priority.as_str()))
                .unwrap_or_default()
            + &run
                .tap
                .as_ref()
                .and_then(TapReport::replayed_share)
                .map(|r| format!(" replayed {:.1}%", r * 100.0))
                .unwrap_or_default()
    );
    Ok(run)
}

/// Section 1: every configuration, interleaved a,b,c,d per load, repeated `rounds` times.
pub fn overhead(ctx: &Ctx, loads: &[Load]) -> Result<Vec<Run>> {
    // One unmeasured pass per target warms caches, connection pools and the JIT'd paths.
    for target in targets() {
        for config in [Config::Nothing, Config::NginxMirror] {
            let port = if config == Config::NginxMirror {
                target.tee_port()
            } else {
                target.port()
            };
            let url = format!("http://{SERVER_IP}:{port}{}", target.path());
            load::run(&ctx.lab, &ctx.oha, Load::Saturation, &url, 1, "warm-up")?;
        }
    }
    let mut runs = Vec::new();
    for round in 0..ctx.rounds {
        for target in targets() {
            for &l in loads {
                for config in CONFIGS {
                    // With a baseline, both builds back to back under the same conditions,
                    // this build first in even rounds and second in odd ones.
                    let mut builds = vec![Build::This];
                    if ctx.baseline.is_some() && config.sampling().is_some() {
                        builds.push(Build::Baseline);
                        if round % 2 == 1 {
                            builds.reverse();
                        }
                    }
                    for build in builds {
                        runs.push(measure(ctx, target, l, config, build, round, false)?);
                    }
                    // The candidate's other priorities, side by side with the default.
                    if config == Config::Shadow100 {
                        for &p in &ctx.candidate_priorities[1..] {
                            runs.push(measure_with(
                                ctx,
                                target,
                                l,
                                config,
                                Build::This,
                                round,
                                false,
                                p,
                            )?);
                        }
                    }
                }
            }
        }
    }
    Ok(runs)
}

pub fn overhead_table(runs: &[Run], rounds: usize) -> Table {
    let mut t = Table::new(
        format!(
            "1. legacy-path overhead (median of {rounds} round(s); ratios to (a) nothing attached)"
        ),
        &[
            "legacy",
            "load",
            "config",
            "req/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "req/s×",
            "p50×",
            "p99×",
            "max×",
            "errors",
            "replayed",
            "legacy wait µs/req",
            "legacy CPU µs/req",
            "cand CPU %",
        ],
        3,
    );
    // The candidate priority of (a)–(f); `d` may also have run with others.
    let default_prio = runs.first().map_or("idle", |r| r.candidate_priority);
    let mut priorities: Vec<&'static str> = vec![default_prio];
    for r in runs {
        if !priorities.contains(&r.candidate_priority) {
            priorities.push(r.candidate_priority);
        }
    }
    let priorities = &priorities;
    for target in targets() {
        for l in distinct_loads(runs) {
            let of = |config: Config, build: Build, prio: &'static str| {
                runs.iter().filter(move |r| {
                    r.target == target
                        && r.load_spec == l
                        && r.config == config
                        && r.build == build
                        && r.candidate_priority == prio
                })
            };
            let base = |pick: fn(&LoadResult) -> f64| {
                median(
                    of(Config::Nothing, Build::This, default_prio)
                        .map(|r| pick(&r.result))
                        .collect(),
                )
                .unwrap_or(f64::NAN)
            };
            for (config, build, prio) in CONFIGS.into_iter().flat_map(|c| {
                [(c, Build::This), (c, Build::Baseline)]
                    .into_iter()
                    .flat_map(move |(c, b)| priorities.iter().map(move |p| (c, b, *p)))
            }) {
                let med = |pick: fn(&LoadResult) -> f64| {
                    median(of(config, build, prio).map(|r| pick(&r.result)).collect())
                };
                let med_of = |pick: fn(&Run) -> Option<f64>| {
                    median(of(config, build, prio).filter_map(pick).collect())
                };
                let Some(rps) = med(|r| r.rps) else {
                    continue;
                };
                let p50 = med(|r| r.p50_ms).unwrap_or(f64::NAN);
                let p99 = med(|r| r.p99_ms).unwrap_or(f64::NAN);
                let max = med(|r| r.max_ms).unwrap_or(f64::NAN);
                let errors: u64 = of(config, build, prio).map(|r| r.result.errors).sum();
                let replayed = median(
                    of(config, build, prio)
                        .filter_map(|r| r.tap.as_ref()?.replayed_share())
                        .collect(),
                );
                let label = if prio == default_prio {
                    build.label(config)
                } else {
                    format!("{} (candidate {prio})", build.label(config))
                };
                let cand_pct = med_of(|r| {
                    r.candidate_cpu_s
                        .filter(|_| r.load_wall_s > 0.0)
                        .map(|c| c / r.load_wall_s * 100.0)
                });
                let opt = |v: Option<f64>, digits: usize| {
                    v.map_or("-".into(), |v| format!("{v:.digits$}"))
                };
                t.row(vec![
                    target.label().into(),
                    l.label(),
                    label,
                    format!("{rps:.0}"),
                    format!("{p50:.3}"),
                    format!("{p99:.3}"),
                    format!("{max:.2}"),
                    ratio(rps, base(|r| r.rps)),
                    ratio(p50, base(|r| r.p50_ms)),
                    ratio(p99, base(|r| r.p99_ms)),
                    ratio(max, base(|r| r.max_ms)),
                    errors.to_string(),
                    replayed.map_or("-".into(), |r| format!("{:.1}%", r * 100.0)),
                    opt(med_of(|r| r.legacy_wait_us_per_req), 1),
                    opt(med_of(|r| r.legacy_cpu_us_per_req), 1),
                    opt(cand_pct, 0),
                ]);
            }
        }
    }
    t.note(format!(
        "(b)–(d) = mirror-daemon {} --pipeline-priority {} in a cgroup with cpu weight {} and \
         quota {}% per {} ms (deploy/mirror.service); the candidate in its own cgroup limited to {}% of a \
         CPU at priority {default_prio} (`run --candidate-priority`); legacy wait = schedstat run-queue \
         wait of legacy's threads per request; cand CPU % = the candidate's CPU over the load; load from {} client addresses (one in the 5% sample); fixed rates by oha (-q, \
         --latency-correction), saturation by wrk (-t2 -c64); (e) for mirror-examples is nginx \
         proxy+mirror in front of it, so it includes a proxy hop; replayed = share of rebuilt \
         exchanges sent to the candidate",
        TAP_MODE.label(),
        tap::pipeline_priority(),
        super::cgroups::daemon_weight(),
        super::cgroups::daemon_cpu_quota().0,
        super::cgroups::daemon_cpu_quota().1 / 1_000,
        super::cgroups::CANDIDATE_CPU_PERCENT,
        super::clients::CLIENTS,
    ));
    t
}

fn distinct_loads(runs: &[Run]) -> Vec<Load> {
    let mut loads: Vec<Load> = runs.iter().map(|r| r.load_spec).collect();
    loads.sort();
    loads.dedup();
    loads
}

/// Section 2 from every (b) run measured so far (and tcpdump's own drops for contrast).
pub fn completeness_table(runs: &[Run]) -> Table {
    let mut t = Table::new(
        "2. capture completeness (exchanges rebuilt ÷ requests completed, summed over runs)",
        &[
            "legacy",
            "load",
            "config",
            "completed",
            "in capture",
            "tap %",
            "exchanges",
            "completeness",
            "kernel ring_full",
            "daemon drops",
            "drop reasons",
            "tcpdump drops",
        ],
        3,
    );
    for target in targets() {
        for (l, config) in distinct_loads(runs)
            .into_iter()
            .flat_map(|l| CONFIGS.map(|c| (l, c)))
        {
            let taps: Vec<&Run> = runs
                .iter()
                .filter(|r| {
                    r.target == target
                        && r.load_spec == l
                        && r.config == config
                        && r.build == Build::This
                        && r.tap.is_some()
                })
                .collect();
            if taps.is_empty() {
                continue;
            }
            let completed: u64 = taps.iter().map(|r| r.result.completed).sum();
            let exchanges: u64 = taps
                .iter()
                .filter_map(|r| r.tap.as_ref())
                .map(|t| t.exchanges)
                .sum();
            let in_capture: Option<u64> = taps
                .iter()
                .map(|r| r.tap.as_ref().and_then(|t| t.requests_in_capture))
                .sum();
            let ring: Option<u64> = taps
                .iter()
                .map(|r| r.tap.as_ref().and_then(|t| t.kernel_ring_full))
                .sum();
            let drops: u64 = taps
                .iter()
                .filter_map(|r| r.tap.as_ref())
                .map(|t| t.daemon_drops)
                .sum();
            let mut reasons: Vec<String> = taps
                .iter()
                .filter_map(|r| r.tap.as_ref())
                .map(|t| t.drop_reasons.clone())
                .filter(|s| !s.is_empty() && s != "none")
                .collect();
            reasons.dedup();
            let dumps: Option<u64> = runs
                .iter()
                .filter(|r| r.target == target && r.load_spec == l)
                .filter_map(|r| r.tcpdump.as_ref())
                .map(|d| d.dropped_by_kernel)
                .sum();
            t.row(vec![
                target.label().into(),
                l.label(),
                config.label().into(),
                completed.to_string(),
                in_capture.map_or("-".into(), |n| n.to_string()),
                in_capture.map_or("-".into(), |n| {
                    format!("{:.3}%", n as f64 * 100.0 / completed.max(1) as f64)
                }),
                exchanges.to_string(),
                format!("{:.3}%", exchanges as f64 * 100.0 / completed.max(1) as f64),
                ring.map_or("-".into(), |r| r.to_string()),
                drops.to_string(),
                if reasons.is_empty() {
                    "none".into()
                } else {
                    reasons.join("; ")
                },
                dumps.map_or("-".into(), |d| d.to_string()),
            ]);
        }
    }
    t.note(match TAP_MODE {
        TapMode::Run => "exchanges = ledger `seen` − dropped, from /metrics; (c) sees only the \
                         clients the kernel keeps (about 5%), so its completeness is that share"
            .to_string(),
        _ => "exchanges = `mirror-daemon exchanges --pcap` on the pcapng `record` wrote; \
              \"in capture\" = requests found in that file by xtask's own segment scan (what the \
              kernel tap delivered); at saturation wrk stops with requests in flight that the tap \
              saw, so >100% is possible"
            .to_string(),
    });
    if runs
        .iter()
        .filter_map(|r| r.tap.as_ref())
        .any(|t| t.drop_reasons.contains("evicted"))
    {
        t.note(
            "daemon drops `evicted`: `exchanges` builds CaptureSettings::default(), whose \
             derived max_connections is 0 (clamped to 1), so the HTTP tracker keeps one \
             connection's state and evicts the rest whenever more than one connection is \
             open: a mirror-daemon bug, not a capture loss",
        );
    }
    t
}

/// Section 3: (b) at fixed rates with BPF statistics on.
pub fn cost(ctx: &mut Ctx, rates: &[u32]) -> Result<Vec<Run>> {
    ctx.lab.set_bpf_stats(true)?;
    let mut runs = Vec::new();
    let res = (|| -> Result<()> {
        for &rate in rates {
            runs.push(measure(
                ctx,
                Target::Nginx,
                Load::Rate(rate),
                Config::Shadow100,
                Build::This,
                0,
                true,
            )?);
        }
        Ok(())
    })();
    ctx.lab.set_bpf_stats(false)?;
    res?;
    Ok(runs)
}

pub fn cost_table(runs: &[Run]) -> Table {
    let mut t = Table::new(
        "3. cost of the tap + daemon (nginx legacy, fixed rates, bpf_stats on)",
        &[
            "load",
            "req/s tapped",
            "daemon CPU %",
            "CPU % per 1k req/s",
            "peak RSS MiB",
            "RSS MiB per 1k req/s",
            "kernel ns/packet",
            "packets/request",
        ],
        1,
    );
    for r in runs {
        // Requests on the wire, not exchanges rebuilt: the tap's work follows the
        // traffic whatever the daemon's reader makes of it.
        let rps = r.result.completed as f64 / r.load_wall_s.max(0.001);
        let cpu_pct = r
            .observer_cpu_s
            .map(|c| c * 100.0 / r.load_wall_s.max(0.001));
        let per_k = |v: Option<f64>| v.map(|v| v / (rps / 1000.0).max(0.001));
        let bpf = r.bpf.as_ref();
        t.row(vec![
            r.load.clone(),
            format!("{rps:.0}"),
            f(cpu_pct, 1),
            f(per_k(cpu_pct), 2),
            f(r.observer_hwm_mib, 1),
            f(per_k(r.observer_hwm_mib), 1),
            f(bpf.and_then(BpfStats::ns_per_packet), 0),
            f(
                bpf.map(|b| b.run_cnt as f64 / r.result.completed.max(1) as f64),
                1,
            ),
        ]);
    }
    t.note(format!(
        "daemon = {}: CPU from /proc/PID/stat (utime+stime) over the load, RSS = VmHWM (includes \
         the mmap'd 64 MiB ring once touched); kernel ns/packet = run_time_ns/run_cnt of this \
         daemon's mirror_tap program (ingress and egress runs, all packets on the interface)",
        TAP_MODE.label()
    ));
    t
}
