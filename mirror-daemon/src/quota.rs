//! How often the daemon's own CPU quota stopped it during a run.
//!
//! deploy/mirror.service caps the daemon at `CPUQuota=50%`, enforced per 100 ms period:
//! once the daemon has used its share of a period, every thread waits for the next one.
//! The lanes then send what came due meanwhile together, so the candidate receives
//! bursts legacy never saw and its latency reads higher than it is (docs/fidelity.md,
//! round 4). The run reads its cgroup's `cpu.stat` and the card states the cost as a
//! caveat on the latency verdict.
use std::path::{Path, PathBuf};

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

impl QuotaThrottling {
    /// `cpu.stat` of cgroup v2 (`throttled_usec`) or v1 (`throttled_time`, in ns).
    pub fn parse(stat: &str) -> QuotaThrottling {
        let mut t = QuotaThrottling::default();
        for line in stat.lines() {
            let mut kv = line.split_whitespace();
            let (Some(k), Some(Ok(v))) = (kv.next(), kv.next().map(str::parse::<u64>)) else {
                continue;
            };
            match k {
                "nr_periods" => t.periods = v,
                "nr_throttled" => t.throttled_periods = v,
                "throttled_usec" => t.throttled_us = v,
                "throttled_time" => t.throttled_us = v / 1_000,
                _ => {}
            }
        }
        t
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

    /// The caveat for the latency verdict when the quota stopped the daemon in at least
    /// [`CAVEAT_SHARE_PERCENT`] of its periods.
    pub fn caveat(&self) -> Option<String> {
        (self.periods > 0 && self.throttled_periods * 100 >= CAVEAT_SHARE_PERCENT * self.periods)
            .then(|| {
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
    /// `cpu.stat`: every figure stays zero).
    pub fn start() -> QuotaWatch {
        let w = QuotaWatch::default();
        w.since_start();
        w
    }

    /// What the quota did since [`QuotaWatch::start`] (or since the daemon was moved).
    pub fn since_start(&self) -> QuotaThrottling {
        let Some((path, now)) = current() else {
            return QuotaThrottling::default();
        };
        let mut origin = self
            .origin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match origin.as_ref() {
            Some((p, start)) if *p == path => start.until(now),
            _ => {
                *origin = Some((path, now));
                QuotaThrottling::default()
            }
        }
    }
}

/// This process's cgroup `cpu.stat` and what it says now.
fn current() -> Option<(PathBuf, QuotaThrottling)> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cpu_stat_path(&cgroups, Path::new("/sys/fs/cgroup"))?;
    let stat = std::fs::read_to_string(&path).ok()?;
    Some((path, QuotaThrottling::parse(&stat)))
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
}
