//! How often the daemon's own CPU quota stopped it during a run.
//!
//! deploy/mirror.service caps the daemon at `CPUQuota=50%`, enforced per 100 ms period:
//! once the daemon has used its share of a period, every thread waits for the next one.
//! The lanes then send what came due meanwhile together, so the candidate receives
//! bursts legacy never saw and its latency reads higher than it is (docs/fidelity.md,
//! round 4). The run reads its cgroup's `cpu.stat` and says the cost where a user looks:
//! a caveat on the card's latency verdict, the same caveat on the dashboard and the
//! progress line while the run goes, `mirror_daemon_cpu_*_total` on `/metrics`, and one
//! warning in the log when the share first reaches [`CAVEAT_SHARE_PERCENT`].
//!
//! **What the figures span**: from the moment the pipeline is up (tap attached, every
//! stage running) until every replay has concluded at the stop. Start-up is left out on
//! purpose: loading and verifying the tap's eBPF programs takes a burst of CPU that a
//! 50 % quota stops for a few periods (measured: 2–5 throttled periods, all before the
//! tap is attached, then none in 120 periods at 1k req/s), and no request is replayed
//! then. A daemon moved into another cgroup counts from its first read there.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// What the quota did over a span: periods that elapsed while the daemon ran, those in
/// which the quota stopped it, and the time its threads waited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuotaThrottling {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_us: u64,
}

/// A share of periods from which the stops are said with the verdict: below it the
/// bursts are too rare to move a p95.
pub const CAVEAT_SHARE_PERCENT: u64 = 5;

/// The fewest periods a share is judged on (2 s of activity at systemd's 100 ms period):
/// right after the pipeline is up, one short stop in a handful of periods (measured: 1
/// of 5, under a millisecond, in a debug build) would read as 20 %.
pub const MIN_PERIODS_JUDGED: u64 = 20;

impl QuotaThrottling {
    /// `cpu.stat` of cgroup v2 or v1 ([`mirror_common::cpu_stat::CpuStat`]).
    pub fn parse(stat: &str) -> QuotaThrottling {
        let t = mirror_common::cpu_stat::CpuStat::parse(stat);
        QuotaThrottling {
            periods: t.periods,
            throttled_periods: t.throttled_periods,
            throttled_us: t.throttled_us,
        }
    }

    /// What happened between `self` (earlier) and `later`.
    pub fn until(self, later: QuotaThrottling) -> QuotaThrottling {
        QuotaThrottling {
            periods: later.periods.saturating_sub(self.periods),
            throttled_periods: later
                .throttled_periods
                .saturating_sub(self.throttled_periods),
            throttled_us: later.throttled_us.saturating_sub(self.throttled_us),
        }
    }

    /// Sums another host's or run's figures (reports aggregate across runs).
    pub fn add(&mut self, o: &QuotaThrottling) {
        self.periods += o.periods;
        self.throttled_periods += o.throttled_periods;
        self.throttled_us += o.throttled_us;
    }

    /// Whether the quota stopped the daemon in at least [`CAVEAT_SHARE_PERCENT`] of its
    /// periods, over at least [`MIN_PERIODS_JUDGED`]: the rule for the caveat, on the
    /// card and live alike.
    pub fn binds(&self) -> bool {
        self.periods >= MIN_PERIODS_JUDGED
            && u128::from(self.throttled_periods) * 100
                >= u128::from(CAVEAT_SHARE_PERCENT) * u128::from(self.periods)
    }

    /// The caveat for the latency verdict when the quota binds ([`Self::binds`]).
    pub fn caveat(&self) -> Option<String> {
        self.binds().then(|| {
            format!(
                "the daemon's CPU quota stopped it in {} of {} periods ({:.1} s of waiting): \
                     requests then reached the candidate in bursts, so its latency reads \
                     higher than it is; give the daemon more CPU (the unit's CPUQuota=) or \
                     replay a smaller sample before trusting a p95 regression",
                self.throttled_periods,
                self.periods,
                self.throttled_us as f64 / 1e6
            )
        })
    }
}

/// The `cpu.stat` of the cgroup this process is in, from `/proc/self/cgroup`'s text:
/// the v1 hierarchy that holds the cpu controller, else the v2 one.
pub fn cpu_stat_path(proc_self_cgroup: &str, root: &Path) -> Option<PathBuf> {
    let mut v2 = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            v2 = Some(root.join(rel).join("cpu.stat"));
        } else if controllers.split(',').any(|c| c == "cpu") {
            return Some(root.join(controllers).join(rel).join("cpu.stat"));
        }
    }
    v2
}

/// The quota set on a cgroup: `quota_us` of CPU time per `period_us` (cgroup v2
/// `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

impl CpuQuota {
    /// `cpu.max` (`50000 100000`, or `max 100000` for no quota).
    pub fn parse_v2(cpu_max: &str) -> Option<CpuQuota> {
        let mut f = cpu_max.split_whitespace();
        let quota_us = f.next()?.parse().ok()?;
        let period_us = f.next().map_or(Some(100_000), |p| p.parse().ok())?;
        (quota_us > 0 && period_us > 0).then_some(CpuQuota {
            quota_us,
            period_us,
        })
    }

    /// `cpu.cfs_quota_us` (`-1` for no quota) and `cpu.cfs_period_us`.
    pub fn parse_v1(quota_us: &str, period_us: &str) -> Option<CpuQuota> {
        let quota_us: i64 = quota_us.trim().parse().ok()?;
        let period_us: u64 = period_us.trim().parse().ok()?;
        (quota_us > 0 && period_us > 0).then_some(CpuQuota {
            quota_us: quota_us.unsigned_abs(),
            period_us,
        })
    }

    /// The quota of the cgroup directory `dir` (either hierarchy), `None` without one.
    pub fn of_cgroup(dir: &Path) -> Option<CpuQuota> {
        if let Ok(max) = std::fs::read_to_string(dir.join("cpu.max")) {
            return CpuQuota::parse_v2(&max);
        }
        let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?;
        let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?;
        CpuQuota::parse_v1(&quota, &period)
    }
}

impl std::fmt::Display for CpuQuota {
    /// `50 % of one CPU per 100 ms`, as systemd's `CPUQuota=` and `CPUQuotaPeriodSec=`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let percent = self.quota_us as f64 * 100.0 / self.period_us as f64;
        let period_ms = self.period_us as f64 / 1_000.0;
        write!(f, "{percent:.0} % of one CPU per {period_ms} ms")
    }
}

/// The daemon's quota as one read found it: the limit on its cgroup (`None` without
/// one) and what the quota did since the run's pipeline was up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaReading {
    pub limit: Option<CpuQuota>,
    pub throttling: QuotaThrottling,
}

/// The quota's effect from the start of a run, read on demand. The cgroup is looked up
/// at every read: a daemon moved into another cgroup (by hand, or a unit reloaded)
/// counts from its first read there.
#[derive(Debug, Default)]
pub struct QuotaWatch {
    /// The `cpu.stat` read last and its figures then, as the count's origin.
    origin: std::sync::Mutex<Option<(PathBuf, QuotaThrottling)>>,
}

impl QuotaWatch {
    /// Starts watching this process's cgroup (nothing to watch when it has no readable
    /// `cpu.stat`: every figure stays zero). The run starts it once its pipeline is up.
    pub fn start() -> QuotaWatch {
        let w = QuotaWatch::default();
        w.since_start();
        w
    }

    /// What the quota did since [`QuotaWatch::start`] (or since the daemon was moved).
    pub fn since_start(&self) -> QuotaThrottling {
        self.read().throttling
    }

    /// The quota set now and what it did since [`QuotaWatch::start`].
    pub fn read(&self) -> QuotaReading {
        let Some((path, now)) = current() else {
            return QuotaReading::default();
        };
        let limit = path.parent().and_then(CpuQuota::of_cgroup);
        let mut origin = self
            .origin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let throttling = match origin.as_ref() {
            Some((p, start)) if *p == path => start.until(now),
            _ => {
                *origin = Some((path, now));
                QuotaThrottling::default()
            }
        };
        QuotaReading { limit, throttling }
    }
}

/// This process's cgroup (the directory of its `cpu.stat`) and the quota set on it now
/// (`None` without one), for the start-up log line; `None` without a readable cgroup.
pub fn current_limit() -> Option<(PathBuf, Option<CpuQuota>)> {
    let (path, _) = current()?;
    let dir = path.parent()?.to_path_buf();
    let limit = CpuQuota::of_cgroup(&dir);
    Some((dir, limit))
}

/// Says the quota at a run's start, so a user sees what the daemon runs under before
/// any caveat.
pub fn log_limit() {
    match current_limit() {
        Some((cgroup, Some(q))) => tracing::info!(
            cgroup = %cgroup.display(),
            "daemon CPU quota {q}; the run says so when it stops the daemon in {CAVEAT_SHARE_PERCENT} % of periods or more"
        ),
        Some((cgroup, None)) => {
            tracing::info!(cgroup = %cgroup.display(), "daemon CPU quota: none")
        }
        None => tracing::info!("daemon CPU quota: unknown (no readable cgroup cpu.stat)"),
    }
}

/// Another process's quota, as `status` shows it: its cgroup, the quota set on it, and
/// what the quota did since the cgroup was created (not since a run started: the run's
/// own span is on its `/metrics`).
pub fn of_process(pid: u32) -> Option<(PathBuf, Option<CpuQuota>, QuotaThrottling)> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    // Through the process's own root: `ip netns exec` remounts /sys without cgroups.
    let root = PathBuf::from(format!("/proc/{pid}/root/sys/fs/cgroup"));
    let path = cpu_stat_path(&cgroups, &root)?;
    let stat = std::fs::read_to_string(&path).ok()?;
    let dir = path.parent()?.to_path_buf();
    let limit = CpuQuota::of_cgroup(&dir);
    Some((dir, limit, QuotaThrottling::parse(&stat)))
}

/// This process's cgroup `cpu.stat` and what it says now.
fn current() -> Option<(PathBuf, QuotaThrottling)> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cpu_stat_path(&cgroups, Path::new("/sys/fs/cgroup"))?;
    let stat = std::fs::read_to_string(&path).ok()?;
    Some((path, QuotaThrottling::parse(&stat)))
}

/// At least this long between two warnings that the quota binds: a share hovering
/// around the threshold must not fill the log.
pub const WARN_AT_MOST_EVERY: Duration = Duration::from_secs(300);

/// Decides when to log that the quota binds: once when the share of throttled periods
/// reaches [`CAVEAT_SHARE_PERCENT`], again only after it fell below and rose again, and
/// never twice within [`WARN_AT_MOST_EVERY`].
#[derive(Debug, Default)]
pub struct QuotaAlarm {
    /// Warned while the quota binds: no warning until it stops binding.
    said: bool,
    warned_at: Option<Instant>,
}

impl QuotaAlarm {
    /// Whether to warn now, given the figures since the run started. A crossing the rate
    /// limit held back is said once the limit allows, if the quota still binds then.
    pub fn observe(&mut self, t: &QuotaThrottling, now: Instant) -> bool {
        if !t.binds() {
            self.said = false;
            return false;
        }
        let quiet_long_enough = self
            .warned_at
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_AT_MOST_EVERY);
        if self.said || !quiet_long_enough {
            return false;
        }
        self.said = true;
        self.warned_at = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stat_of_either_hierarchy_is_read() {
        let v2 = "usage_usec 5\nnr_periods 40\nnr_throttled 7\nthrottled_usec 12500\n";
        let v1 = "nr_periods 40\nnr_throttled 7\nthrottled_time 12500000\n";
        let want = QuotaThrottling {
            periods: 40,
            throttled_periods: 7,
            throttled_us: 12_500,
        };
        assert_eq!(QuotaThrottling::parse(v2), want);
        assert_eq!(QuotaThrottling::parse(v1), want);
        assert_eq!(
            QuotaThrottling::parse("garbage\nnr_periods x"),
            QuotaThrottling::default()
        );
        let later = QuotaThrottling {
            periods: 50,
            throttled_periods: 9,
            throttled_us: 20_000,
        };
        assert_eq!(
            want.until(later),
            QuotaThrottling {
                periods: 10,
                throttled_periods: 2,
                throttled_us: 7_500
            }
        );
    }

    #[test]
    fn the_cpu_hierarchy_is_found_in_proc_self_cgroup() {
        let root = Path::new("/sys/fs/cgroup");
        let hybrid = "4:memory:/a\n1:cpu,cpuacct:/system.slice/mirror.service\n0::/x\n";
        assert_eq!(
            cpu_stat_path(hybrid, root),
            Some(PathBuf::from(
                "/sys/fs/cgroup/cpu,cpuacct/system.slice/mirror.service/cpu.stat"
            ))
        );
        let unified = "0::/system.slice/mirror.service\n";
        assert_eq!(
            cpu_stat_path(unified, root),
            Some(PathBuf::from(
                "/sys/fs/cgroup/system.slice/mirror.service/cpu.stat"
            ))
        );
        assert_eq!(cpu_stat_path("2:cpuacct:/\n", root), None);
    }

    #[test]
    fn the_caveat_is_said_from_five_percent_of_periods() {
        let t = |periods, throttled_periods| QuotaThrottling {
            periods,
            throttled_periods,
            throttled_us: 2_500_000,
        };
        assert_eq!(t(0, 0).caveat(), None);
        assert_eq!(t(100, 4).caveat(), None);
        let said = t(100, 5).caveat().expect("5 of 100 periods");
        assert!(
            said.contains("stopped it in 5 of 100 periods (2.5 s"),
            "{said}"
        );
    }

    #[test]
    fn the_quota_of_either_hierarchy_is_read_and_said_as_systemd_sets_it() {
        let half = CpuQuota {
            quota_us: 50_000,
            period_us: 100_000,
        };
        assert_eq!(CpuQuota::parse_v2("50000 100000\n"), Some(half));
        assert_eq!(CpuQuota::parse_v2("max 100000\n"), None);
        assert_eq!(CpuQuota::parse_v2(""), None);
        assert_eq!(CpuQuota::parse_v1("50000\n", "100000\n"), Some(half));
        assert_eq!(CpuQuota::parse_v1("-1\n", "100000\n"), None);
        assert_eq!(CpuQuota::parse_v1("50000", "0"), None);
        assert_eq!(half.to_string(), "50 % of one CPU per 100 ms");
        let two_cpus_10ms = CpuQuota {
            quota_us: 20_000,
            period_us: 10_000,
        };
        assert_eq!(two_cpus_10ms.to_string(), "200 % of one CPU per 10 ms");
    }

    #[test]
    fn binding_is_a_share_of_periods_not_a_count() {
        let t = |periods, throttled_periods| QuotaThrottling {
            periods,
            throttled_periods,
            throttled_us: 0,
        };
        assert!(!t(0, 0).binds());
        assert!(!t(1_000, 49).binds());
        assert!(t(1_000, 50).binds());
        assert!(t(20, 1).binds());
        assert!(!t(21, 1).binds());
        assert!(!t(19, 19).binds(), "too few periods to judge");
        assert!(!t(u64::MAX, u64::MAX / 100).binds(), "no overflow");
        assert!(t(u64::MAX, u64::MAX / 10).binds(), "no overflow");
    }

    #[test]
    fn the_warning_is_said_once_per_crossing_and_rate_limited() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let quiet = QuotaThrottling {
            periods: 100,
            throttled_periods: 1,
            throttled_us: 0,
        };
        let binding = QuotaThrottling {
            throttled_periods: 10,
            ..quiet
        };
        let mut alarm = QuotaAlarm::default();
        assert!(!alarm.observe(&quiet, at(0)));
        assert!(alarm.observe(&binding, at(1)), "the first crossing is said");
        assert!(!alarm.observe(&binding, at(2)), "not again while it binds");
        assert!(!alarm.observe(&binding, at(1_000)));
        assert!(!alarm.observe(&quiet, at(1_001)));
        assert!(alarm.observe(&binding, at(1_002)), "a new crossing");
        assert!(!alarm.observe(&quiet, at(1_003)));
        assert!(
            !alarm.observe(&binding, at(1_004)),
            "within the rate limit of the last warning"
        );
        let later = 1_002 + WARN_AT_MOST_EVERY.as_secs();
        assert!(
            alarm.observe(&binding, at(later)),
            "held back, said once the limit allows"
        );
    }
}
