//! The typed plan of a run: what the flags say, parsed and checked once at the edge.
use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{
    app::{fence::FenceConfig, isolation::PipelinePriority},
    capture::kernel::TapConfig,
    compare::{Comparator, RouteTemplater},
    effects::EffectsPlan,
    http::Limits,
    mask::Masker,
    replay::{ReplayConfig, Speed},
    sample::Sampler,
    serve::ServeConfig,
    store::StoreUrl,
    verdict::Criteria,
};

/// Where exchanges come from.
pub enum Input {
    /// The kernel tap, until stopped or for `duration`.
    Live {
        tap: TapConfig,
        duration: Option<Duration>,
    },
    /// A capture file, replayed at `speed`.
    File {
        path: PathBuf,
        ports: Vec<u16>,
        reorder_window: usize,
        speed: Speed,
    },
}

/// How the candidate is fenced.
pub enum Fencing {
    /// The egress guard fences the candidate (the default).
    Guard(FenceConfig),
    /// `--no-egress-guard`: its outbound network is not fenced; a command we start
    /// still runs unprivileged in the configured user and network namespace.
    Off(FenceConfig),
}

impl Fencing {
    /// The CPU cap (percent of one CPU) mirror puts on a candidate it starts; `None`
    /// when uncapped (`max`) or when the candidate's cgroup is the user's own.
    pub fn candidate_cpu_cap(&self) -> Option<u32> {
        let (Fencing::Guard(cfg) | Fencing::Off(cfg)) = self;
        match cfg.candidate {
            crate::app::fence::CandidateSource::Command(_) => cfg.limits.cpu_percent,
            _ => None,
        }
    }
}

impl Fencing {
    /// The CPU priority of a candidate mirror starts (`--candidate-priority`); `None`
    /// when the candidate's cgroup is the user's own.
    pub fn candidate_priority(&self) -> Option<crate::guard::limits::CandidatePriority> {
        let (Fencing::Guard(cfg) | Fencing::Off(cfg)) = self;
        match cfg.candidate {
            crate::app::fence::CandidateSource::Command(_) => Some(cfg.limits.priority),
            _ => None,
        }
    }
}

/// Retention limits of the store (none: keep everything).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub age: Option<Duration>,
    pub bytes: Option<u64>,
}

impl Retention {
    pub fn enabled(&self) -> bool {
        self.age.is_some() || self.bytes.is_some()
    }
}

/// Everything a run needs, validated: the stages that validate as they are built are
/// built here; the rest are their own configuration types.
pub struct Plan {
    pub input: Input,
    pub sampler: Arc<Sampler>,
    pub masker: Arc<Masker>,
    pub comparator: Comparator,
    pub templater: Arc<RouteTemplater>,
    pub criteria: Criteria,
    /// The criteria as the user wrote them (stored with the run).
    pub criteria_text: String,
    pub replay: ReplayConfig,
    /// A second legacy instance, for legacy-vs-legacy noise.
    pub secondary: Option<ReplayConfig>,
    /// Send the candidate the captured values unmasked.
    pub replay_raw: bool,
    pub limits: Limits,
    pub store: StoreUrl,
    /// The store as the user wrote it (for messages).
    pub store_text: String,
    pub retention: Retention,
    pub serve: ServeConfig,
    pub fencing: Fencing,
    /// What the candidate must not read (the self-test proves it).
    pub secrets: Vec<PathBuf>,
    /// `--sample` as given (the run's record and the dashboard show it).
    pub sample_percent: f64,
    pub host: String,
    pub run_id: String,
    /// Scheduling of the pipeline threads and the ring-buffer reader.
    pub priority: PipelinePriority,
    /// Side effects (`--dependency`): legacy's calls recorded, and with
    /// `--virtualize-egress` the candidate's answered from them and diffed. With virtual
    /// dependencies, `fencing` redirects to their listeners (`FenceConfig::virtual_deps`).
    pub effects: Option<EffectsPlan>,
}
