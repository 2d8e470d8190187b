//! Accounting: every captured exchange ends in exactly one terminal outcome, and each
//! outcome is a counter. The report prints the identity
//! `seen = matched + differed + sampled_out + excluded + candidate_error + dropped`.
//!
//! The [`Ledger`] is the only place outcomes are recorded: `/metrics`
//! (`mirror_exchanges_total`), the dashboard, the store's ledger rows and the report are
//! all read from it. A replayed exchange becomes terminal when its row reaches the store
//! (or is lost on the way, with a reason), so the ledger and the store agree. After a
//! stop, [`Ledger::seal`] turns whatever is still in flight into
//! `dropped{shutdown_deadline}`, so the identity holds with nothing in flight.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Why an exchange (or the bytes that would have made one) was dropped.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The kernel ring buffer was full (counted by the kernel, in records).
    RingFull,
    /// The capture → pipeline queue was full (the pipeline fell behind the capture).
    QueueFull,
    /// The replay queue was full: the candidate (or the replay concurrency) could not keep
    /// up. A replay decision like rate limiting, not a capture loss.
    ReplayQueueFull,
    /// Its replay lane reached the exchange more than `--replay-max-lateness` (10 s by
    /// default) after it was due (behind a hanging candidate or a starved daemon): dropped
    /// rather than sent in a burst long after legacy got it. A replay decision, like
    /// `replay_queue_full`.
    ReplayLate,
    /// Bytes of the exchange were never captured.
    Gap,
    /// The request or response was not valid HTTP/1.x.
    ParseError,
    /// Headers or body over the configured limits.
    Oversize,
    /// TLS, HTTP/2, Upgrade/WebSocket, CONNECT: not covered.
    Unsupported,
    /// A request with no response before the connection ended (or the reverse).
    Unpaired,
    /// Connection state evicted (idle timeout or memory cap) with a message in flight.
    Evicted,
    /// The replay rate limit was reached.
    RateLimited,
    /// A new connection was refused because the flow table was full (counted per refused
    /// segment that would have opened a flow).
    FlowTableFull,
    /// The store writer's queue was full: the exchange was compared but its row was not
    /// kept.
    StoreQueueFull,
    /// The store refused the write: the exchange's row was not kept.
    StoreFailed,
    /// A stage (masking, comparing) panicked on this exchange.
    StagePanic,
    /// Still in flight (replaying, or its row queued for the store) when the shutdown
    /// deadline passed.
    ShutdownDeadline,
    /// The side-effect book (`--dependency`) was full: the exchange's calls could not be
    /// followed, so it was not replayed.
    SideEffectsFull,
}

impl DropReason {
    pub const ALL: [DropReason; 17] = [
        DropReason::RingFull,
        DropReason::QueueFull,
        DropReason::ReplayQueueFull,
        DropReason::ReplayLate,
        DropReason::Gap,
        DropReason::ParseError,
        DropReason::Oversize,
        DropReason::Unsupported,
        DropReason::Unpaired,
        DropReason::Evicted,
        DropReason::RateLimited,
        DropReason::FlowTableFull,
        DropReason::StoreQueueFull,
        DropReason::StoreFailed,
        DropReason::StagePanic,
        DropReason::ShutdownDeadline,
        DropReason::SideEffectsFull,
    ];
    /// The reason's name in every output (metrics label, JSON key, card text).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::RingFull => "ring_full",
            DropReason::QueueFull => "queue_full",
            DropReason::ReplayQueueFull => "replay_queue_full",
            DropReason::ReplayLate => "replay_late",
            DropReason::Gap => "gap",
            DropReason::ParseError => "parse_error",
            DropReason::Oversize => "oversize",
            DropReason::Unsupported => "unsupported",
            DropReason::Unpaired => "unpaired",
            DropReason::Evicted => "evicted",
            DropReason::RateLimited => "rate_limited",
            DropReason::FlowTableFull => "flow_table_full",
            DropReason::StoreQueueFull => "store_queue_full",
            DropReason::StoreFailed => "store_failed",
            DropReason::StagePanic => "stage_panic",
            DropReason::ShutdownDeadline => "shutdown_deadline",
            DropReason::SideEffectsFull => "side_effects_full",
        }
    }
}

/// How a replay to the candidate failed.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CandidateErrorKind {
    Timeout,
    Refused,
    Reset,
    /// The candidate's response was not valid HTTP/1.x.
    Malformed,
}

impl CandidateErrorKind {
    pub const ALL: [CandidateErrorKind; 4] = [
        CandidateErrorKind::Timeout,
        CandidateErrorKind::Refused,
        CandidateErrorKind::Reset,
        CandidateErrorKind::Malformed,
    ];
    /// The kind's name in every output (metrics label, JSON key, card text).
    pub fn as_str(self) -> &'static str {
        match self {
            CandidateErrorKind::Timeout => "timeout",
            CandidateErrorKind::Refused => "refused",
            CandidateErrorKind::Reset => "reset",
            CandidateErrorKind::Malformed => "malformed",
        }
    }
}

/// The one terminal outcome of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "detail")]
pub enum Outcome {
    Matched,
    Differed,
    SampledOut,
    Excluded,
    CandidateError(CandidateErrorKind),
    Dropped(DropReason),
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for CandidateErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Outcome {
    /// Every (outcome, reason) pair, in the ledger's order: what `/metrics` exposes.
    pub fn all() -> impl Iterator<Item = Outcome> {
        [
            Outcome::Matched,
            Outcome::Differed,
            Outcome::SampledOut,
            Outcome::Excluded,
        ]
        .into_iter()
        .chain(CandidateErrorKind::ALL.map(Outcome::CandidateError))
        .chain(DropReason::ALL.map(Outcome::Dropped))
    }

    /// The outcome's name and its reason (drop reason or candidate error kind; empty
    /// for the others), as `/metrics` labels them.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Matched => ("matched", ""),
            Outcome::Differed => ("differed", ""),
            Outcome::SampledOut => ("sampled_out", ""),
            Outcome::Excluded => ("excluded", ""),
            Outcome::CandidateError(k) => ("candidate_error", k.as_str()),
            Outcome::Dropped(r) => ("dropped", r.as_str()),
        }
    }
}

/// Lock-free outcome counters, shared by every stage.
#[derive(Debug, Default)]
pub struct Ledger {
    pub seen: AtomicU64,
    pub matched: AtomicU64,
    pub differed: AtomicU64,
    pub sampled_out: AtomicU64,
    pub excluded: AtomicU64,
    candidate_error: [AtomicU64; CandidateErrorKind::ALL.len()],
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// Set by [`Ledger::seal`]: later counts are ignored (and counted in `late`).
    sealed: AtomicBool,
    /// Recorders between their check of `sealed` and their count (seal waits for them).
    recording: AtomicU64,
    late: AtomicU64,
}

/// A consistent-enough copy of the ledger for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerSnapshot {
    pub seen: u64,
    pub matched: u64,
    pub differed: u64,
    pub sampled_out: u64,
    pub excluded: u64,
    pub candidate_error: Vec<(CandidateErrorKind, u64)>,
    pub dropped: Vec<(DropReason, u64)>,
}

impl LedgerSnapshot {
    /// Exchanges that ended in `outcome`.
    pub fn count(&self, outcome: Outcome) -> u64 {
        fn pick<K: PartialEq>(pairs: &[(K, u64)], key: K) -> u64 {
            pairs
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, n)| n)
                .sum()
        }
        match outcome {
            Outcome::Matched => self.matched,
            Outcome::Differed => self.differed,
            Outcome::SampledOut => self.sampled_out,
            Outcome::Excluded => self.excluded,
            Outcome::CandidateError(k) => pick(&self.candidate_error, k),
            Outcome::Dropped(r) => pick(&self.dropped, r),
        }
    }
    pub fn candidate_errors(&self) -> u64 {
        self.candidate_error.iter().map(|(_, n)| n).sum()
    }
    pub fn drops(&self) -> u64 {
        self.dropped.iter().map(|(_, n)| n).sum()
    }
    /// Exchanges with a terminal outcome.
    pub fn terminal(&self) -> u64 {
        self.matched
            + self.differed
            + self.sampled_out
            + self.excluded
            + self.candidate_errors()
            + self.drops()
    }
    /// Seen but not yet terminal (in a queue or waiting for the candidate).
    pub fn in_flight(&self) -> u64 {
        self.seen.saturating_sub(self.terminal())
    }
}

impl Ledger {
    /// An exchange (or a message that could not become one) entered the pipeline.
    pub fn saw(&self, n: u64) {
        self.count(&self.seen, n);
    }

    pub fn record(&self, outcome: Outcome) {
        self.record_n(outcome, 1);
    }

    pub fn record_n(&self, outcome: Outcome, n: u64) {
        self.count(self.slot(outcome), n);
    }

    fn slot(&self, outcome: Outcome) -> &AtomicU64 {
        match outcome {
            Outcome::Matched => &self.matched,
            Outcome::Differed => &self.differed,
            Outcome::SampledOut => &self.sampled_out,
            Outcome::Excluded => &self.excluded,
            Outcome::CandidateError(k) => &self.candidate_error[k as usize],
            Outcome::Dropped(r) => &self.dropped[r as usize],
        }
    }

    fn count(&self, slot: &AtomicU64, n: u64) {
        self.recording.fetch_add(1, Ordering::SeqCst);
        if self.sealed.load(Ordering::SeqCst) {
            self.late.fetch_add(n, Ordering::Relaxed);
        } else {
            slot.fetch_add(n, Ordering::Relaxed);
        }
        self.recording.fetch_sub(1, Ordering::SeqCst);
    }

    /// Ends the run's accounting: every exchange still in flight becomes
    /// `dropped{shutdown_deadline}` and later counts (a replay that finishes after the
    /// deadline) are ignored, so the identity holds with `in_flight = 0`. Returns how
    /// many exchanges the deadline cut.
    pub fn seal(&self) -> u64 {
        self.sealed.store(true, Ordering::SeqCst);
        // A recorder that saw `sealed` unset is finishing its one add: wait for it.
        while self.recording.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        let cut = self.snapshot().in_flight();
        self.dropped[DropReason::ShutdownDeadline as usize].fetch_add(cut, Ordering::Relaxed);
        cut
    }

    /// Counts that arrived after [`Ledger::seal`] (and were left out).
    pub fn late(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// Seen and dropped in one step, for losses found before an exchange exists.
    pub fn saw_dropped(&self, reason: DropReason, n: u64) {
        self.saw(n);
        self.record_n(Outcome::Dropped(reason), n);
    }

    pub fn snapshot(&self) -> LedgerSnapshot {
        LedgerSnapshot {
            seen: self.seen.load(Ordering::Relaxed),
            matched: self.matched.load(Ordering::Relaxed),
            differed: self.differed.load(Ordering::Relaxed),
            sampled_out: self.sampled_out.load(Ordering::Relaxed),
            excluded: self.excluded.load(Ordering::Relaxed),
            candidate_error: CandidateErrorKind::ALL
                .iter()
                .map(|k| {
                    (
                        *k,
                        self.candidate_error[*k as usize].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            dropped: DropReason::ALL
                .iter()
                .map(|r| (*r, self.dropped[*r as usize].load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_holds_for_every_outcome() {
        let ledger = Ledger::default();
        let outcomes = [
            Outcome::Matched,
            Outcome::Differed,
            Outcome::SampledOut,
            Outcome::Excluded,
            Outcome::CandidateError(CandidateErrorKind::Reset),
            Outcome::Dropped(DropReason::Gap),
        ];
        for o in outcomes {
            ledger.saw(1);
            ledger.record(o);
        }
        ledger.saw(1);
        let s = ledger.snapshot();
        assert_eq!(s.seen, 7);
        assert_eq!(s.terminal(), 6);
        assert_eq!(s.in_flight(), 1);
    }

    fn dropped(s: &LedgerSnapshot, reason: DropReason) -> u64 {
        s.dropped
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    #[test]
    fn seal_turns_what_is_in_flight_into_shutdown_deadline_drops() {
        let ledger = Ledger::default();
        ledger.saw(5);
        ledger.record(Outcome::Matched);
        ledger.record(Outcome::Dropped(DropReason::StagePanic));
        assert_eq!(ledger.seal(), 3);
        // A replay that finishes after the deadline was already counted as cut.
        ledger.record(Outcome::Differed);
        ledger.saw(1);
        let s = ledger.snapshot();
        assert_eq!((s.seen, s.terminal(), s.in_flight()), (5, 5, 0));
        assert_eq!(dropped(&s, DropReason::ShutdownDeadline), 3);
        assert_eq!(dropped(&s, DropReason::StagePanic), 1);
        assert_eq!(s.differed, 0);
        assert_eq!(ledger.late(), 2);
    }

    #[test]
    fn every_reason_has_its_own_counter_and_name() {
        let ledger = Ledger::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            ledger.saw_dropped(*r, i as u64 + 1);
        }
        let s = ledger.snapshot();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(dropped(&s, *r), i as u64 + 1, "{r}");
        }
        let names: std::collections::BTreeSet<_> = Outcome::all().map(Outcome::labels).collect();
        assert_eq!(
            names.len(),
            Outcome::all().count(),
            "label pairs are distinct"
        );
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn seal_is_exact_while_other_threads_record() {
        let ledger = std::sync::Arc::new(Ledger::default());
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let l = ledger.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        l.saw(1);
                        l.record(Outcome::Matched);
                    }
                })
            })
            .collect();
        ledger.saw(7);
        ledger.seal();
        for w in workers {
            w.join().unwrap();
        }
        let s = ledger.snapshot();
        assert_eq!(s.seen, s.terminal(), "{s:?}");
    }
}
