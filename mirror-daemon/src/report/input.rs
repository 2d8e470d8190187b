//! What a card is drawn from, borrowed: the store's evidence (`report`, end of run) or the
//! live run's (the dashboard), without copying either into the other's shape.
use crate::accounting::LedgerSnapshot;
use crate::store::{
    DiffKindStats, EffectsFigures, EgressSummary, HostLedger, KernelCounters, PairingCounters,
    RouteLatency, RouteStats, RunInfo, StoredEvidence,
};

/// The evidence behind a card. Routes and latency sorted by route; diffs in any order.
#[derive(Clone, Copy, Debug)]
pub struct CardEvidence<'a> {
    /// Runs and ledgers of the selection (for the scope line); empty live.
    pub runs: &'a [RunInfo],
    pub ledgers: &'a [HostLedger],
    pub ledger_total: &'a LedgerSnapshot,
    pub kernel_total: &'a KernelCounters,
    /// `None` when no ledger recorded pairing figures.
    pub pairing_total: Option<&'a PairingCounters>,
    /// `None` when no ledger recorded side-effect figures.
    pub side_effects_total: Option<&'a EffectsFigures>,
    pub routes: &'a [RouteStats],
    pub diffs: &'a [DiffKindStats],
    pub latency: &'a [RouteLatency],
    pub egress: &'a [EgressSummary],
}

impl<'a> From<&'a StoredEvidence> for CardEvidence<'a> {
    fn from(ev: &'a StoredEvidence) -> Self {
        CardEvidence {
            runs: &ev.runs,
            ledgers: &ev.ledgers,
            ledger_total: &ev.ledger_total,
            kernel_total: &ev.kernel_total,
            pairing_total: ev.pairing_total.as_ref(),
            side_effects_total: ev.side_effects_total.as_ref(),
            routes: &ev.routes,
            diffs: &ev.diffs,
            latency: &ev.latency,
            egress: &ev.egress,
        }
    }
}
