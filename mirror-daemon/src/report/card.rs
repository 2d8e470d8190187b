//! The parity card: plain data, serialized as-is for `--format json`.
//!
//! Field names are a contract with cutover scripts: add fields, never rename or remove
//! them without bumping [`CARD_VERSION`]. Times are Unix milliseconds, durations
//! nanoseconds, rates fractions in 0..=1 (`null` when the denominator is 0).
use std::collections::BTreeMap;

use serde::Serialize;

use crate::compare::NoiseClass;
use crate::guard::EgressAction;
use crate::verdict::{CriterionResult, Verdict};

/// Version of the JSON layout; bumped on any incompatible change.
pub const CARD_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParityCard {
    /// [`CARD_VERSION`].
    pub version: u32,
    pub scope: Scope,
    pub accounting: Accounting,
    /// Capture completeness, 0..=1; `null` in JSON when nothing covered reached an
    /// outcome (then `min_completeness` is "not measured").
    pub completeness: f64,
    /// The terms of the completeness formula.
    pub completeness_detail: CompletenessDetail,
    /// Sorted by route.
    pub routes: Vec<RouteCard>,
    /// Signal first, then likely noise, then noise; most exchanges first within each.
    pub diffs: Vec<DiffCard>,
    pub latency: LatencyCard,
    pub egress: Vec<EgressCard>,
    /// What the candidate's calls to dependencies did differently from legacy's
    /// (`--virtualize-egress`), most exchanges first.
    pub side_effects: Vec<SideEffectCard>,
    /// Compared exchanges with a side-effect diff (upper bound, see the verdict).
    pub side_effect_mismatched: u64,
    /// How legacy's calls were recorded and attributed and how the candidate's were
    /// answered, summed over the ledgers that stored them; `null` when none did (no
    /// `--dependency`, or ledgers written by an older build).
    pub side_effect_counts: Option<SideEffectCounts>,
    /// Every criterion with its measured value, run-wide first, then per route.
    pub criteria: Vec<CriterionResult>,
    pub verdict: Verdict,
    /// GO 0, NO-GO 1, INSUFFICIENT EVIDENCE 3.
    pub exit_code: i32,
    /// Caveats a reader must know (bounds used, ledger/store disagreement, sampling).
    pub notes: Vec<String>,
}

/// What the card covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Scope {
    /// Hosts with a ledger or a run in the selection, sorted.
    pub hosts: Vec<String>,
    /// Run ids in the selection, sorted.
    pub run_ids: Vec<String>,
    /// The `--since` bound, when given.
    pub since_unix_ms: Option<i64>,
    /// Earliest start of a selected run.
    pub first_run_started_unix_ms: Option<i64>,
    /// Latest ledger snapshot of the selection (how fresh the accounting is).
    pub last_ledger_unix_ms: Option<i64>,
    pub generated_at_unix_ms: i64,
}

/// Outcome counters summed over the latest ledger of every (host, run).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Accounting {
    pub seen: u64,
    pub matched: u64,
    pub differed: u64,
    pub sampled_out: u64,
    pub excluded: u64,
    /// Every kind (`timeout`, `refused`, `reset`, `malformed`), zeros included.
    pub candidate_errors: BTreeMap<String, u64>,
    pub candidate_errors_total: u64,
    /// Every reason (`ring_full`, `queue_full`, `gap`, …), zeros included.
    pub dropped: BTreeMap<String, u64>,
    pub dropped_total: u64,
    /// `seen` minus every terminal outcome (0 when they exceed `seen`).
    pub in_flight: u64,
    /// `seen == matched + differed + sampled_out + excluded + candidate_errors_total
    /// + dropped_total + in_flight`.
    pub identity_holds: bool,
    pub kernel: KernelCard,
    /// How requests were paired with responses, summed over the ledgers that recorded it;
    /// `null` when none of the selection did (ledgers written by an older build).
    pub pairing: Option<PairingCard>,
    /// Exchanges in the store; rates and latencies are computed over these.
    pub stored: StoredCard,
}

/// The kernel tap's counters, summed over hosts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelCard {
    pub segments: u64,
    pub payload_bytes: u64,
    /// Records written to the ring buffer.
    pub records: u64,
    /// Records lost because the ring buffer was full.
    pub ring_full: u64,
    /// Segments skipped on purpose by in-kernel pre-sampling (not a loss).
    pub pre_sampled: u64,
    /// Payload bytes beyond the per-packet record limit (they show up as gaps).
    pub oversize_bytes: u64,
    pub load_errors: u64,
}

/// The http stage's pairing figures: byte-range proof and the cost of joining live
/// traffic. Drops by reason (`gap`, `unpaired`) are in `accounting.dropped`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PairingCard {
    /// Exchanges rebuilt (a request paired with its response).
    pub exchanges: u64,
    /// Of them, paired with proof from the TCP sequence and ACK numbers.
    pub proven: u64,
    /// Requests dropped (`gap` or `unpaired`) on connections joined mid-stream, before
    /// their first proven exchange.
    pub dropped_at_join: u64,
    /// Responses whose request was not captured (discarded, not exchanges).
    pub responses_unpaired: u64,
    /// Requests still waiting for their response when the capture ended (the tap
    /// detached at the stop), dropped as `unpaired`.
    pub dropped_at_end: u64,
    /// Ledgers of the selection without pairing figures (written by an older build).
    pub ledgers_not_recorded: u64,
}

/// What the store holds for the selection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StoredCard {
    /// Stored matched + differed.
    pub compared: u64,
    pub candidate_errors: u64,
}

/// `completeness = exchange_factor × kernel_factor`; see `REPORT.md`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CompletenessDetail {
    /// Terminal exchanges of supported traffic: every terminal outcome except
    /// `dropped{unsupported}` and `dropped{ring_full}` (the kernel factor counts those).
    pub covered: u64,
    /// `dropped{gap, parse_error, oversize, evicted, unpaired, queue_full, flow_table_full}`.
    pub capture_losses: u64,
    /// `dropped{unsupported}`: TLS, HTTP/2, upgrades; uncovered, not lost.
    pub uncovered: u64,
    /// `(covered - capture_losses) / covered`; `null` when `covered` is 0.
    pub exchange_factor: f64,
    /// `records / (records + ring_full)`; 1 when the kernel reported nothing.
    pub kernel_factor: f64,
}

/// How a route's mismatched count was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MismatchBasis {
    /// No diff key of the route is noise (so mismatched = differed), or the bounds meet.
    Exact,
    /// Counted from per-exchange diff-key sets.
    KeySets,
    /// Some keys are noise and per-exchange key sets were not available: the upper
    /// bound is used (conservative), the lower bound is reported beside it.
    UpperBound,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteCard {
    /// As stored (templated and masked by the daemon).
    pub route: String,
    /// matched + differed.
    pub compared: u64,
    pub matched: u64,
    pub differed: u64,
    /// Exchanges with at least one diff that is not noise (what the verdict uses).
    pub mismatched: u64,
    pub mismatched_low: u64,
    pub mismatched_high: u64,
    pub mismatch_basis: MismatchBasis,
    /// mismatched / compared.
    pub mismatch_rate: Option<f64>,
    pub candidate_errors: u64,
    /// compared + candidate_errors: what was replayed and stored.
    pub replayed: u64,
    /// candidate_errors / replayed.
    pub candidate_error_rate: Option<f64>,
    /// Exchanges where the candidate answered another status code.
    pub status_mismatches: u64,
    pub latency: RouteLatencyCard,
}

/// Nearest-rank percentiles, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub p50_ns: Option<u64>,
    pub p95_ns: Option<u64>,
    pub p99_ns: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SideLatency {
    /// Samples with a timing on this side.
    pub samples: u64,
    /// Time to first byte.
    pub ttfb: Percentiles,
    /// Time to last byte.
    pub ttlb: Percentiles,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RouteLatencyCard {
    /// Stored exchanges of the route (samples are fewer when the store sampled).
    pub exchanges: u64,
    pub legacy: SideLatency,
    pub candidate: SideLatency,
    /// candidate p95 ttlb / legacy p95 ttlb.
    pub p95_ttlb_ratio: Option<f64>,
    /// candidate p95 ttlb − legacy p95 ttlb, ns, and its interval (at least 95 %).
    pub p95_ttlb_delta_ns: Option<i64>,
    pub p95_ttlb_delta_interval_ns: Option<(i64, i64)>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencyCard {
    pub exchanges: u64,
    pub legacy: SideLatency,
    pub candidate: SideLatency,
    pub p95_ttlb_ratio: Option<f64>,
    pub p95_ttlb_delta_ns: Option<i64>,
    pub p95_ttlb_delta_interval_ns: Option<(i64, i64)>,
    /// Samples were weighted by route (exchanges / samples) because the store sampled
    /// some route; otherwise every sample counts once.
    pub weighted: bool,
    /// The floor the p95 criteria were judged with (`--min-latency-delta`, 1 ms unless
    /// given), ns; `null` when none applied (`--min-latency-delta 0`) or no p95
    /// criterion was set.
    pub min_latency_delta_ns: Option<u64>,
    /// The tightest CPU cap a selected run put on the candidate, percent of one CPU,
    /// when it was below the host's CPUs (legacy is not capped by mirror).
    pub candidate_cpu_cap_percent: Option<u32>,
    /// Selected runs that did not record the candidate's CPU (written before store
    /// schema 4, without a cap in their `args`): "not recorded", not "uncapped".
    pub candidate_cpu_not_recorded_runs: u64,
    /// What the reader of a p95 criterion must know (a CPU cap on the candidate only).
    pub caveats: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiffCard {
    pub route: String,
    /// The aggregation key, e.g. `field($.items[*].price,value)`, `header(etag)`, `status`.
    pub key: String,
    /// Exchanges with this diff.
    pub count: u64,
    /// Occurrences (an exchange can have several, e.g. one per array element).
    pub occurrences: u64,
    /// count / the route's compared exchanges.
    pub rate: Option<f64>,
    /// `"class": "signal" | "likely_noise" | "noise"`, plus `"reason"` for noise.
    #[serde(flatten)]
    pub class: NoiseClass,
    /// Whether the verdict counts this key as a mismatch (everything but noise).
    pub counts_as_mismatch: bool,
    /// Legacy-vs-secondary-legacy exchanges with this diff, when secondary data exists.
    pub secondary_count: Option<u64>,
    pub secondary_rate: Option<f64>,
    /// The flag that would silence it, for likely noise and noise.
    pub suggested_ignore: Option<String>,
    pub examples: Vec<ExampleCard>,
    /// Exchanges with this diff whose example was not kept (store quota).
    pub examples_not_kept: u64,
}

/// One exchange with this diff, as stored (masked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExampleCard {
    /// Correlation id.
    pub id: String,
    pub host: String,
    pub run_id: String,
    pub ts_unix_ms: i64,
    pub legacy: Option<String>,
    pub candidate: Option<String>,
    /// Masked bodies are kept in the store for this exchange.
    pub has_bodies: bool,
}

/// One kind of side-effect difference on one inbound route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SideEffectCard {
    /// The inbound route whose exchanges made the call.
    pub route: String,
    /// The call (`POST /charges`).
    pub call: String,
    /// `missing` (legacy made it, the candidate did not), `extra` (the other way round)
    /// or the payload's diff key (`field($.amount,value)`).
    pub what: String,
    pub exchanges: u64,
    /// An example's masked renderings of both sides.
    pub legacy: Option<String>,
    pub candidate: Option<String>,
}

/// The side-effect stages' figures (`--dependency`, `--virtualize-egress`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SideEffectCounts {
    /// Legacy's calls to the dependencies, captured.
    pub calls_recorded: u64,
    /// Tied to their inbound exchange by a propagated id.
    pub attributed_by_id: u64,
    /// Tied by the inbound exchange's time window (no id).
    pub attributed_by_window: u64,
    /// Of those, calls several inbound exchanges' windows held when they came.
    pub ambiguous: u64,
    /// Of those, calls an exchange registered later fitted better and took over.
    pub taken_over: u64,
    /// Unused calls not judged missing: their exchange concluded before the capture had
    /// moved far enough past them to rule out a later owner.
    pub unsettled: u64,
    /// Calls no inbound exchange claimed.
    pub unattributed: u64,
    /// Calls not kept: over the per-exchange cap, over the byte budget.
    pub over_cap: u64,
    pub over_budget: u64,
    /// Calls lost on the capture → recorder queue.
    pub recorder_queue_full: u64,
    /// Exchanges on a dependency's port to a server not given with `--dependency`
    /// (neither calls nor inbound exchanges).
    pub other_on_dependency_ports: u64,
    /// Inbound exchanges not replayed because the book was full
    /// (`dropped{side_effects_full}` in the ledger).
    pub side_effects_full: u64,
    /// The candidate's calls to the virtual dependency.
    pub candidate_calls: u64,
    pub answered_by_id: u64,
    pub answered_by_content: u64,
    /// Calls without an id that several recordings fit equally well (answered 502).
    pub refused_as_ties: u64,
    /// Calls no recording matched (answered 502).
    pub unmatched: u64,
    pub malformed: u64,
    /// Compared exchanges with at least one side-effect diff (exact; `mirror_side_effect_
    /// mismatched_total` on /metrics).
    pub exchanges_with_diffs: u64,
    /// Messages the virtual mail relay accepted from the candidate (`--dependency
    /// smtp://…`; none delivered), and those not tied to an inbound exchange.
    pub candidate_mail: u64,
    pub candidate_mail_unattributed: u64,
    /// Ledgers of the selection without these figures.
    pub ledgers_not_recorded: u64,
}

/// The candidate's outbound attempts, grouped by destination, protocol and action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EgressCard {
    pub destination: String,
    pub protocol: String,
    pub action: EgressAction,
    pub attempts: u64,
    pub hosts: u64,
    pub first_seen_unix_ms: i64,
    pub last_seen_unix_ms: i64,
    /// Process names, sorted.
    pub commands: Vec<String>,
}
