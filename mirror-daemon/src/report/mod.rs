//! Report: what the store holds (or the live run, through [`CardEvidence`]), turned into the parity card an SRE reads and a cutover
//! script gates on (`render_table`, `render_markdown`, `render_json`), and into the
//! dashboard's views (`live_views`). Definitions in brief (details in `REPORT.md`):
//!
//! - **Compared** (per route) = stored matched + differed; **replayed** = compared +
//!   candidate errors. Rates and latencies are over stored exchanges; the accounting
//!   block is over the ledgers.
//! - **Noise model**, rebuilt from stored counts with the user's `NoiseRule`: per route,
//!   candidate key → exchanges with that diff; with secondary (legacy-vs-legacy) data,
//!   key → secondary exchanges, and every compared exchange is assumed to have had a
//!   secondary comparison (the store does not count them). Classes: signal, likely noise
//!   (still counted), noise (not counted).
//! - **Mismatched** = exchanges with at least one diff that is not noise. Without noise
//!   keys on a route it is `differed`. With noise keys the per-key counts only bound it
//!   (`mismatch_bounds`): the card uses the upper bound and says so, unless per-exchange
//!   key sets are supplied (`ReportOptions::key_sets`, `mismatched_from_key_sets`).
//! - **Completeness** = `(covered - capture_losses) / covered × records / (records +
//!   ring_full)` (`completeness`).
//! - **Latency**: nearest-rank p50/p95/p99 of the stored samples, both sides, ttfb and
//!   ttlb; `p95 ratio = candidate p95 ttlb / legacy p95 ttlb`.
//! - **Identity**: `seen = matched + differed + sampled_out + excluded + candidate_error +
//!   dropped + in_flight`, printed with its numbers and whether it holds.
//! - **Verdict**: `verdict::decide(criteria, &evidence(..))`.
mod build;
mod card;
mod cpu_cap;
mod input;
mod latency;
mod live;
mod mismatch;
mod render;
mod sections;
#[cfg(test)]
mod tests;

pub use build::{
    CAPTURE_LOSSES, ReportOptions, build, build_with, completeness, completeness_detail, evidence,
    evidence_with, suggested_ignore_for_key,
};
pub use card::{
    Accounting, CARD_VERSION, CompletenessDetail, DiffCard, EgressCard, ExampleCard, KernelCard,
    LatencyCard, MismatchBasis, PairingCard, ParityCard, Percentiles, RouteCard, RouteLatencyCard,
    Scope, SideEffectCard, SideEffectCounts, SideLatency, StoredCard,
};
pub use cpu_cap::{CandidateCpuCap, host_cpus};
pub use input::CardEvidence;
pub use live::live_views;
pub use mismatch::{KeySetCount, Mismatch, mismatch_bounds, mismatched_from_key_sets, noise_model};
pub use render::{banner, render_json, render_markdown, render_table};

use crate::compare::NoiseRule;
use crate::store::{ReportFilter, Store, StoreError};
use crate::verdict::Criteria;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading the store: {0}")]
    Store(#[from] StoreError),
}

/// Loads the selection from the store and builds its card.
pub async fn load(
    store: &Store,
    filter: &ReportFilter,
    criteria: &Criteria,
    noise_rule: &NoiseRule,
) -> Result<ParityCard, ReportError> {
    let ev = store.load(filter).await?;
    let opts = ReportOptions {
        since_unix_ms: filter.since,
        ..ReportOptions::default()
    };
    Ok(build_with(&ev, criteria, noise_rule, &opts))
}
