//! A CPU cap on the candidate that legacy does not have: `--candidate-cpu` (default one
//! CPU) throttles a candidate mirror starts for the rest of a 100 ms period whenever a
//! burst uses its quota, so an identical candidate shows a longer p95 tail than an
//! uncapped legacy (docs/fidelity.md: 1.05–7.22× capped vs 1.00–1.48× uncapped at 1k
//! req/s). The run records the cap in its `args` summary (`candidate_cpu=100%
//! host_cpus=2`) so every card drawn from the store can say so next to the latency.

/// The candidate's CPU cap, when it is below what the host offers legacy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CandidateCpuCap {
    /// Percent of one CPU (`--candidate-cpu`).
    pub percent: u32,
    /// CPUs online on the host the run was on.
    pub host_cpus: u32,
}

impl CandidateCpuCap {
    /// `Some` when a cap of `percent` (`None`: `max`) leaves the candidate less CPU than
    /// the host's `host_cpus` give legacy.
    pub fn binding(percent: Option<u32>, host_cpus: u32) -> Option<Self> {
        let percent = percent?;
        (u64::from(percent) < u64::from(host_cpus) * 100).then_some(Self { percent, host_cpus })
    }

    /// The tokens the run's `args` summary carries.
    pub fn run_args(&self) -> String {
        format!(
            "candidate_cpu={}% host_cpus={}",
            self.percent, self.host_cpus
        )
    }

    /// Reads [`Self::run_args`] back from a run's `args` summary.
    pub fn from_run_args(args: &str) -> Option<Self> {
        let token = |key: &str| {
            args.split_whitespace()
                .find_map(|t| t.strip_prefix(key))
                .map(|v| v.trim_end_matches('%'))
                .and_then(|v| v.parse::<u32>().ok())
        };
        Some(Self {
            percent: token("candidate_cpu=")?,
            host_cpus: token("host_cpus=")?,
        })
    }

    /// What the reader of a p95 criterion must know.
    pub fn caveat(&self) -> String {
        format!(
            "the candidate's CPU was capped at {}% of one CPU (--candidate-cpu) on a host \
             with {} CPUs, and legacy's was not: its p95 may show the cap rather than the \
             candidate; give it legacy's CPU (--candidate-cpu max, or legacy's own limit) \
             to judge latency like for like",
            self.percent, self.host_cpus
        )
    }
}

/// CPUs online on this host (at least 1).
pub fn host_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).ok().filter(|n| *n > 0).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_binds_only_below_the_hosts_cpus() {
        let cap = CandidateCpuCap::binding(Some(100), 2).expect("one of two CPUs");
        assert_eq!(cap.run_args(), "candidate_cpu=100% host_cpus=2");
        assert!(
            cap.caveat().contains("capped at 100% of one CPU"),
            "{}",
            cap.caveat()
        );
        assert!(cap.caveat().contains("--candidate-cpu max"));
        assert_eq!(CandidateCpuCap::binding(Some(200), 2), None);
        assert_eq!(CandidateCpuCap::binding(None, 2), None);
        assert!(CandidateCpuCap::binding(Some(50), 1).is_some());
    }

    #[test]
    fn the_cap_survives_the_runs_args_summary() {
        let cap = CandidateCpuCap::binding(Some(150), 4).expect("binds");
        let args = format!(
            "candidate=http://10.0.0.2:8080 sample=100% {}",
            cap.run_args()
        );
        assert_eq!(CandidateCpuCap::from_run_args(&args), Some(cap));
        assert_eq!(
            CandidateCpuCap::from_run_args("candidate=http://h:1 sample=10%"),
            None
        );
        assert_eq!(
            CandidateCpuCap::from_run_args("--port 8080 --sample 10%"),
            None
        );
    }
}
