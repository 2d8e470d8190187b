//! A cgroup's `cpu.stat`: how often its CPU quota stopped it. Read by the daemon about
//! itself (its quota caveat) and by the bench about the daemon's cgroup, so both count
//! the same figures the same way.

/// The quota's counters in one `cpu.stat` reading (cumulative since the cgroup was made).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_us: u64,
}

impl CpuStat {
    /// `cpu.stat` of cgroup v2 (`throttled_usec`) or v1 (`throttled_time`, in ns); lines
    /// it does not know or cannot read leave their figure at zero.
    pub fn parse(stat: &str) -> CpuStat {
        let mut t = CpuStat::default();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_hierarchy_reads_the_same() {
        let v2 = "usage_usec 5\nnr_periods 40\nnr_throttled 7\nthrottled_usec 12500\n";
        let v1 = "nr_periods 40\nnr_throttled 7\nthrottled_time 12500000\n";
        let want = CpuStat {
            periods: 40,
            throttled_periods: 7,
            throttled_us: 12_500,
        };
        assert_eq!(CpuStat::parse(v2), want);
        assert_eq!(CpuStat::parse(v1), want);
        assert_eq!(CpuStat::parse("garbage\nnr_periods x"), CpuStat::default());
    }
}
