//! The candidate's CPU priority against the legacy service on the same host
//! (`run --candidate-priority`): what the daemon writes on the cgroup of a candidate it
//! starts, and what the bench writes on its candidate's cgroup, so both set the same.
//!
//! A cgroup's weight only counts when its tasks and legacy's want the same CPU at the
//! same moment: then a candidate at the default weight takes as much as legacy, and a
//! legacy request that arrives meanwhile waits for the candidate's slice
//! (docs/fidelity.md, round 6). `idle` makes the cgroup's tasks run only on CPU time
//! nothing else wants, as `SCHED_IDLE` does for a thread: a legacy task that wakes up
//! preempts them at once. The price is on the candidate's side: on a busy host it waits
//! for legacy, and its latency reads higher than legacy's for that reason alone.

/// How the candidate's cgroup competes with legacy for the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CandidatePriority {
    /// `cpu.idle = 1`: only CPU time nothing else wants (kernels >= 5.15; below, the
    /// lowest weight).
    Idle,
    /// A tenth of legacy's weight (`cpu.weight` 10, v1 `cpu.shares` 102).
    Low,
    /// The kernel's default weight (100, v1 1024): equal to legacy.
    Normal,
}

/// The flag's default.
/// `normal`: measured side by side on the shared 2-core box (docs/fidelity.md, round 6),
/// `low` and `idle` made an identical candidate read 2–8× and 20–320× slower than legacy,
/// while what they saved legacy stayed inside the box's noise.
pub const DEFAULT: &str = "normal";

/// One write to a cgroup file, in order; `optional` files may be absent (older kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write {
    pub file: &'static str,
    pub value: &'static str,
    pub optional: bool,
}

const fn w(file: &'static str, value: &'static str, optional: bool) -> Write {
    Write {
        file,
        value,
        optional,
    }
}

impl CandidatePriority {
    pub const ALL: [CandidatePriority; 3] = [Self::Idle, Self::Low, Self::Normal];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Low => "low",
            Self::Normal => "normal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// The writes on a cgroup v2 (`v2`) or v1 `cpu` hierarchy's cgroup. `cpu.idle` goes
    /// first: the kernel refuses a weight for an idle group. For `Idle` without
    /// `cpu.idle` (kernel < 5.15) the caller writes [`Self::idle_fallback`].
    pub fn writes(self, v2: bool) -> &'static [Write] {
        const IDLE: [Write; 1] = [w("cpu.idle", "1", false)];
        const NOT_IDLE: Write = w("cpu.idle", "0", true);
        const LOW_V2: [Write; 2] = [NOT_IDLE, w("cpu.weight", "10", false)];
        const LOW_V1: [Write; 2] = [NOT_IDLE, w("cpu.shares", "102", false)];
        const NORMAL_V2: [Write; 2] = [NOT_IDLE, w("cpu.weight", "100", false)];
        const NORMAL_V1: [Write; 2] = [NOT_IDLE, w("cpu.shares", "1024", false)];
        match (self, v2) {
            (Self::Idle, _) => &IDLE,
            (Self::Low, true) => &LOW_V2,
            (Self::Low, false) => &LOW_V1,
            (Self::Normal, true) => &NORMAL_V2,
            (Self::Normal, false) => &NORMAL_V1,
        }
    }

    /// `Idle` where the kernel has no `cpu.idle`: the lowest weight it accepts.
    pub fn idle_fallback(v2: bool) -> Write {
        if v2 {
            w("cpu.weight", "1", false)
        } else {
            w("cpu.shares", "2", false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_idle_is_written_first() {
        for p in CandidatePriority::ALL {
            assert_eq!(CandidatePriority::parse(p.as_str()), Some(p));
            for v2 in [true, false] {
                assert_eq!(p.writes(v2)[0].file, "cpu.idle");
            }
        }
        assert_eq!(
            CandidatePriority::parse(DEFAULT),
            Some(CandidatePriority::Normal)
        );
        assert_eq!(
            CandidatePriority::parse("IDLE"),
            Some(CandidatePriority::Idle)
        );
        assert_eq!(CandidatePriority::parse("lowest"), None);
        assert_eq!(CandidatePriority::Low.writes(false)[1].value, "102");
    }
}
