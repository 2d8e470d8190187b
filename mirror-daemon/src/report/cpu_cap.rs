//! A CPU cap on the candidate that legacy does not have: `--candidate-cpu` (default one
//! CPU) throttles a candidate mirror starts for the rest of a 100 ms period whenever a
//! burst uses its quota, so an identical candidate shows a longer p95 tail than an
//! uncapped legacy (docs/fidelity.md: 1.05–7.22× capped vs 1.00–1.48× uncapped at 1k
//! req/s). The run records the candidate's CPU in the store (`runs.candidate_cpu`,
//! schema 4) so every card drawn from the store can say so next to the latency; runs
//! written by schema 3 builds carried a binding cap in their `args` summary
//! (`candidate_cpu=100% host_cpus=2`), which is still read.
use crate::store::{CandidateCpu, RunInfo};

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

    /// The binding cap of what a run recorded.
    pub fn of(cpu: CandidateCpu) -> Option<Self> {
        Self::binding(cpu.cap_percent, cpu.host_cpus)
    }

    /// What a stored run says of the candidate's CPU: `Err(())` when it was not
    /// recorded (a run written before schema 4 whose `args` name no cap).
    pub fn of_run(run: &RunInfo) -> Result<Option<Self>, NotRecorded> {
        match run.candidate_cpu {
            Some(cpu) => Ok(Self::of(cpu)),
            None => Self::from_run_args(&run.args).map(Some).ok_or(NotRecorded),
        }
    }

    /// Reads the tokens schema 3 builds put in a run's `args` summary
    /// (`candidate_cpu=100% host_cpus=2`, written only for a binding cap).
    fn from_run_args(args: &str) -> Option<Self> {
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

/// A run whose candidate CPU the store does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotRecorded;

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

    fn run(args: &str, candidate_cpu: Option<CandidateCpu>) -> RunInfo {
        RunInfo {
            host: "h".into(),
            run_id: "r".into(),
            started_unix_ms: 1,
            args: args.into(),
            criteria: String::new(),
            candidate_cpu,
        }
    }

    #[test]
    fn a_run_says_its_cap_from_its_column_else_from_older_args_else_not_recorded() {
        let capped = CandidateCpu {
            cap_percent: Some(150),
            host_cpus: 4,
        };
        let cap = CandidateCpuCap::of(capped).expect("binds");
        assert_eq!(
            CandidateCpuCap::of_run(&run("x", Some(capped))),
            Ok(Some(cap))
        );
        let uncapped = CandidateCpu {
            cap_percent: None,
            host_cpus: 4,
        };
        assert_eq!(CandidateCpuCap::of_run(&run("x", Some(uncapped))), Ok(None));
        // A schema 3 run: the cap in its args.
        let old = run(
            "candidate=http://10.0.0.2:8080 sample=100% candidate_cpu=150% host_cpus=4",
            None,
        );
        assert_eq!(CandidateCpuCap::of_run(&old), Ok(Some(cap)));
        // An older run without the tokens: unknown, not "uncapped".
        assert_eq!(
            CandidateCpuCap::of_run(&run("candidate=http://h:1 sample=10%", None)),
            Err(NotRecorded)
        );
    }

    #[test]
    fn the_cap_survives_the_schema_3_args_summary() {
        let cap = CandidateCpuCap::binding(Some(150), 4).expect("binds");
        let args = "candidate=http://10.0.0.2:8080 sample=100% candidate_cpu=150% host_cpus=4";
        assert_eq!(CandidateCpuCap::from_run_args(args), Some(cap));
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
