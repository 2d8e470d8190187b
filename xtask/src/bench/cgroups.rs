//! The CPU settings the bench gives the daemon and the candidate: the daemon's are the
//! ones deploy/mirror.service gives it in production (`CPUWeight=`, `CPUQuota=`), the
//! candidate's a stated limit, as `mirror-daemon run --candidate-cpu` sets it, so the
//! figures measure the daemon and not a candidate sharing the legacy host's two cores.
//! cgroup v2 when mounted as such, else the v1 `cpu` hierarchy (a hybrid host).
use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result};
use mirror_common::cpu_priority::CandidatePriority;

/// deploy/mirror.service: `CPUWeight=1` (cgroup v1: shares = weight × 1024 / 100).
pub const DAEMON_CPU_WEIGHT: u64 = 1;
/// The bench's measuring instruments (fidelity's tap on the candidate's side): the
/// daemon's weight before it went to 1, so they time what they timed before.
pub const INSTRUMENTS_CPU_WEIGHT: u64 = 20;

/// How the daemon's threads sit in its cgroup (`--daemon-cpu-weight`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum DaemonWeight {
    /// `cpu.weight` of the daemon's cgroup, every thread in it (deploy/mirror.service:
    /// 1). `SCHED_IDLE` threads inside still get the group's share: the policy ranks
    /// them only against the group's other threads.
    Weight(u64),
    /// Started at deploy/mirror.service's weight, then (once the tap is attached) the daemon's cgroup marked
    /// `cpu.idle` until it is stopped: the whole daemon, reader included, runs only on
    /// CPU nothing outside it wants (deploy/mirror.service would say `CPUWeight=idle`).
    Idle,
}

impl std::str::FromStr for DaemonWeight {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "idle" => Ok(DaemonWeight::Idle),
            n => match n.parse::<u64>() {
                Ok(w) if (1..=10_000).contains(&w) => Ok(DaemonWeight::Weight(w)),
                _ => Err(format!("`{n}`: expected `idle` or a weight 1–10000")),
            },
        }
    }
}

static DAEMON_WEIGHT: std::sync::OnceLock<DaemonWeight> = std::sync::OnceLock::new();

pub fn set_daemon_weight(w: DaemonWeight) {
    let _ = DAEMON_WEIGHT.set(w);
}

/// The daemon cgroup's weight for this run (deploy/mirror.service's unless overridden).
pub fn daemon_weight() -> DaemonWeight {
    DAEMON_WEIGHT
        .get()
        .copied()
        .unwrap_or(DaemonWeight::Weight(DAEMON_CPU_WEIGHT))
}

/// The weight of the daemon's cgroup itself (`Idle` starts there).
pub fn daemon_group_weight() -> u64 {
    match daemon_weight() {
        DaemonWeight::Weight(w) => w,
        DaemonWeight::Idle => DAEMON_CPU_WEIGHT,
    }
}

impl std::fmt::Display for DaemonWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonWeight::Idle => f.write_str("idle (cpu.idle once attached)"),
            DaemonWeight::Weight(w) => write!(f, "{w}"),
        }
    }
}

/// deploy/mirror.service: `CPUQuota=50%`.
pub const DAEMON_CPU_PERCENT: u64 = 50;
/// The candidate's limit, as `--candidate-cpu 50%` would set it.
pub const CANDIDATE_CPU_PERCENT: u64 = 50;
/// deploy/mirror.service's quota period (systemd's default, `CPUQuotaPeriodSec=`):
/// the quota is enforced per period, so a daemon that used its share early in one is
/// stopped for the rest of it.
pub const DAEMON_CPU_PERIOD_US: u64 = 100_000;
/// `cargo xtask bench --daemon-cpu-percent / --daemon-cpu-period-ms`: another quota for
/// the daemon's cgroup than the unit's (what the quota does to the figures).
static DAEMON_QUOTA: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

pub fn set_daemon_cpu_quota(percent: u64, period_ms: u64) {
    let _ = DAEMON_QUOTA.set((percent, period_ms * 1_000));
}

/// The daemon cgroup's quota: (percent of a CPU, period in µs).
pub fn daemon_cpu_quota() -> (u64, u64) {
    DAEMON_QUOTA
        .get()
        .copied()
        .unwrap_or((DAEMON_CPU_PERCENT, DAEMON_CPU_PERIOD_US))
}

/// The candidate's quota period, as `mirror-daemon run --candidate-cpu` sets it.
pub const CANDIDATE_CPU_PERIOD_US: u64 = 100_000;

/// How often a cgroup's quota stopped it (`cpu.stat`), for the figures of one leg.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ms: u64,
}

impl Throttling {
    /// What happened between `self` (earlier) and `later`.
    pub fn until(self, later: Throttling) -> Throttling {
        Throttling {
            periods: later.periods.saturating_sub(self.periods),
            throttled_periods: later
                .throttled_periods
                .saturating_sub(self.throttled_periods),
            throttled_ms: later.throttled_ms.saturating_sub(self.throttled_ms),
        }
    }

    /// `cpu.stat` of cgroup v2 or v1, as the daemon reads its own
    /// ([`mirror_common::cpu_stat::CpuStat`]).
    fn parse(stat: &str) -> Throttling {
        let t = mirror_common::cpu_stat::CpuStat::parse(stat);
        Throttling {
            periods: t.periods,
            throttled_periods: t.throttled_periods,
            throttled_ms: t.throttled_us / 1_000,
        }
    }
}

/// One cgroup created for the run, removed (once empty) when dropped.
pub struct Cgroup {
    dir: PathBuf,
    v2: bool,
}

impl Cgroup {
    /// `name` under the cpu controller's root, with a weight (if any) and a quota of
    /// `cpu_percent` per `period_us`.
    pub fn create(
        name: &str,
        weight: Option<u64>,
        cpu_percent: u64,
        period_us: u64,
    ) -> Result<Cgroup> {
        let v2 = PathBuf::from("/sys/fs/cgroup/cgroup.controllers").exists();
        let root = if v2 {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/cpu")
        };
        if v2 {
            // The cpu controller must be enabled for the root's children.
            let _ = fs::write(root.join("cgroup.subtree_control"), "+cpu");
        }
        let dir = root.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cg = Cgroup { dir, v2 };
        let quota = cpu_percent * period_us / 100;
        if v2 {
            cg.write("cpu.max", &format!("{quota} {period_us}"))?;
            if let Some(w) = weight {
                cg.write("cpu.weight", &w.to_string())?;
            }
        } else {
            cg.write("cpu.cfs_period_us", &period_us.to_string())?;
            cg.write("cpu.cfs_quota_us", &quota.to_string())?;
            if let Some(w) = weight {
                cg.write("cpu.shares", &(w * 1024 / 100).to_string())?;
            }
        }
        Ok(cg)
    }

    /// Marks the cgroup `cpu.idle` or not (kernel 5.15+, either hierarchy): idle, its
    /// threads compete with its siblings (here the legacy service, in the root) as
    /// `SCHED_IDLE` tasks do. A `cpu.idle` child of it would not do: idle only against
    /// the group's other members, while the group keeps its weight (docs/cost.md).
    pub fn set_idle(&self, idle: bool) -> Result<()> {
        self.write("cpu.idle", if idle { "1" } else { "0" })
    }

    /// Moves a process (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// Sets how the cgroup competes for the CPU, with the writes `mirror-daemon run
    /// --candidate-priority` makes on a candidate's cgroup.
    pub fn set_priority(&self, p: CandidatePriority) -> Result<()> {
        for w in p.writes(self.v2) {
            if w.optional && !self.dir.join(w.file).exists() {
                continue;
            }
            if w.file == "cpu.idle" && !self.dir.join(w.file).exists() {
                let f = CandidatePriority::idle_fallback(self.v2);
                self.write(f.file, f.value)?;
                continue;
            }
            self.write(w.file, w.value)?;
        }
        Ok(())
    }

    /// The quota's effect so far (zero when `cpu.stat` cannot be read).
    pub fn throttling(&self) -> Throttling {
        fs::read_to_string(self.dir.join("cpu.stat"))
            .map(|s| Throttling::parse(&s))
            .unwrap_or_default()
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its processes may take a moment to exit after the lab's SIGTERM.
        for _ in 0..60 {
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        eprintln!("xtask bench: clean-up: {} not removed", self.dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_weight_is_idle_or_a_cgroup_weight() {
        assert_eq!("idle".parse(), Ok(DaemonWeight::Idle));
        assert!("split".parse::<DaemonWeight>().is_err());
        assert_eq!("20".parse(), Ok(DaemonWeight::Weight(20)));
        assert!("0".parse::<DaemonWeight>().is_err());
        assert!("10001".parse::<DaemonWeight>().is_err());
        assert!("Idle".parse::<DaemonWeight>().is_err());
    }

    #[test]
    fn cpu_stat_of_either_hierarchy_gives_the_throttling() {
        let v2 = "usage_usec 5\nnr_periods 40\nnr_throttled 7\nthrottled_usec 12500\n";
        let v1 = "nr_periods 40\nnr_throttled 7\nthrottled_time 12500000\n";
        let want = Throttling {
            periods: 40,
            throttled_periods: 7,
            throttled_ms: 12,
        };
        assert_eq!(Throttling::parse(v2), want);
        assert_eq!(Throttling::parse(v1), want);
        let later = Throttling {
            periods: 50,
            throttled_periods: 9,
            throttled_ms: 20,
        };
        assert_eq!(
            want.until(later),
            Throttling {
                periods: 10,
                throttled_periods: 2,
                throttled_ms: 8
            }
        );
    }
}
