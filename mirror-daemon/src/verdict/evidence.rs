//! What the run measured, as the verdict sees it (assembled by the store/report from the
//! ledger, the noise model and the latency histograms).
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Exchanges compared: matched + differed.
    pub compared: u64,
    /// Exchanges with at least one non-noise diff (`NoiseModel::counts_as_mismatch`).
    pub mismatched: u64,
    /// Replays the candidate failed (timeout, refused, reset, malformed).
    pub candidate_errors: u64,
    /// Compared exchanges with a side-effect diff (an upper bound when exchanges have
    /// several kinds and no per-exchange key sets are available).
    #[serde(default)]
    pub side_effect_mismatched: u64,
    /// Requests replayed to the candidate (the denominator of the error rate).
    pub replayed: u64,
    /// Capture completeness, 0..=1.
    pub completeness: f64,
    /// Run-wide p95 time to last byte.
    pub p95_legacy_ttlb_ns: Option<u64>,
    pub p95_candidate_ttlb_ns: Option<u64>,
    /// Interval (at least 95 %) of `candidate p95 − legacy p95` of time to last byte, in
    /// ns, from the samples; `None` when not computed.
    #[serde(default)]
    pub p95_ttlb_delta_interval_ns: Option<(i64, i64)>,
    pub per_route: Vec<(String, RouteEvidence)>,
}

/// The same measures for one route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEvidence {
    pub compared: u64,
    pub mismatched: u64,
    pub candidate_errors: u64,
    pub replayed: u64,
    pub p95_legacy_ttlb_ns: Option<u64>,
    pub p95_candidate_ttlb_ns: Option<u64>,
    #[serde(default)]
    pub p95_ttlb_delta_interval_ns: Option<(i64, i64)>,
}
