//! What the dashboard and `/api/snapshot` show. Plain data: the app fills it from the
//! other stages about once a second, so this module knows nothing of how it is computed.
use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{
    accounting::LedgerSnapshot,
    capture::kernel::KernelCounters,
    effects::EffectsFigures,
    guard::{EgressAction, EgressAttempt},
    http::PairingCounters,
};

/// The whole live view of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LiveSnapshot {
    pub run: RunView,
    /// Outcome counts; the dashboard shows the identity
    /// `seen = matched + differed + sampled_out + excluded + candidate_error + dropped + in flight`.
    pub ledger: LedgerSnapshot,
    /// Capture completeness, 0..=1.
    pub completeness: f64,
    pub kernel: KernelCounters,
    /// How the http stage paired requests with responses (the join's cost).
    #[serde(default)]
    pub pairing: PairingCounters,
    /// Legacy's calls to its dependencies and how the candidate's were answered
    /// (`--dependency`; `None` without dependencies).
    #[serde(default)]
    pub side_effects: Option<EffectsFigures>,
    /// Compared exchanges with a side-effect diff, as the card counts them (an upper
    /// bound over diff kinds).
    #[serde(default)]
    pub side_effect_mismatched: u64,
    /// The daemon's own CPU quota and how often it stopped the daemon since the
    /// pipeline was up (`None` while its cgroup has no quota).
    #[serde(default)]
    pub daemon_cpu: Option<DaemonCpuView>,
    pub verdict: VerdictView,
    pub routes: Vec<RouteView>,
    pub diffs: Vec<DiffView>,
    pub egress: Vec<EgressView>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    pub host: String,
    pub run_id: String,
    /// `live` or `offline`.
    pub mode: String,
    /// The candidate's base URL.
    pub candidate: String,
    pub iface: String,
    pub ports: Vec<u16>,
    pub started_unix_ms: i64,
    pub sample_percent: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VerdictView {
    /// `GO`, `NO-GO`, `INSUFFICIENT EVIDENCE` or `NO CRITERIA`.
    pub status: String,
    pub criteria: Vec<CriterionView>,
    pub reasons: Vec<String>,
    /// What the verdict must be read with, the card's `CAVEAT:` lines (without the
    /// prefix): the candidate's CPU cap, the daemon's own quota binding, ….
    #[serde(default)]
    pub caveats: Vec<String>,
}

/// The daemon's own CPU quota (see [`crate::quota`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DaemonCpuView {
    /// As set on its cgroup, e.g. `50 % of one CPU per 100 ms`.
    pub quota: String,
    /// Quota periods in which the daemon ran, since the pipeline was up.
    pub periods: u64,
    /// Of those, periods in which the quota stopped it.
    pub throttled_periods: u64,
    /// Time its threads waited for the next period.
    pub throttled_seconds: f64,
    /// Stopped in at least 5 % of its periods: the candidate's latency reads high.
    pub binds: bool,
}

impl DaemonCpuView {
    /// The view of a reading, `None` without a quota.
    pub fn of(r: &crate::quota::QuotaReading) -> Option<DaemonCpuView> {
        let limit = r.limit?;
        let t = r.throttling;
        Some(DaemonCpuView {
            quota: limit.to_string(),
            periods: t.periods,
            throttled_periods: t.throttled_periods,
            throttled_seconds: t.throttled_us as f64 / 1e6,
            binds: t.binds(),
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CriterionView {
    pub name: String,
    /// The limit as the user wrote it, e.g. `<= 0.5%`.
    pub limit: String,
    /// The current value, formatted the same way.
    pub measured: String,
    pub passed: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteView {
    pub route: String,
    pub exchanges: u64,
    pub matched: u64,
    pub differed: u64,
    pub candidate_errors: u64,
    /// 0..=1.
    pub mismatch_rate: f64,
    pub legacy: LatencyView,
    pub candidate: LatencyView,
    /// candidate p95 / legacy p95 (time to last byte); `None` without both.
    pub p95_ratio: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyView {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiffView {
    pub route: String,
    /// e.g. `field($.user.name,value)`.
    pub kind: String,
    pub count: u64,
    /// Share of the route's compared exchanges with this diff, 0..=1.
    pub rate: f64,
    /// `signal`, `likely_noise` or `noise`.
    pub class: String,
    /// Already masked.
    pub examples: Vec<ExampleView>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExampleView {
    /// Correlation id of the exchange.
    pub id: String,
    pub legacy: String,
    pub candidate: String,
}

/// Outbound attempts of the candidate, grouped by destination, protocol and action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EgressView {
    pub destination: SocketAddr,
    /// `tcp` or `udp`.
    pub protocol: String,
    pub action: EgressAction,
    pub count: u64,
    pub last_command: String,
    pub last_seen_unix_ms: i64,
}

/// Groups egress attempts for the view, most frequent first.
pub fn egress_views(attempts: &[EgressAttempt]) -> Vec<EgressView> {
    let mut groups: BTreeMap<(SocketAddr, &str, u8), EgressView> = BTreeMap::new();
    for a in attempts {
        let key = (a.destination, a.protocol.as_str(), a.action as u8);
        let v = groups.entry(key).or_insert_with(|| EgressView {
            destination: a.destination,
            protocol: a.protocol.clone(),
            action: a.action,
            count: 0,
            last_command: String::new(),
            last_seen_unix_ms: i64::MIN,
        });
        v.count += 1;
        if a.ts_unix_ms >= v.last_seen_unix_ms {
            v.last_seen_unix_ms = a.ts_unix_ms;
            v.last_command.clone_from(&a.command);
        }
    }
    let mut out: Vec<EgressView> = groups.into_values().collect();
    out.sort_by_key(|v| std::cmp::Reverse(v.count));
    out
}
