//! Accounting: every captured exchange ends in exactly one terminal outcome, and each
//! outcome is a counter. The report prints the identity
//! `seen = matched + differed + sampled_out + excluded + candidate_error + dropped`.
use std::sync::atomic::{AtomicU64, Ordering};

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
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::RingFull,
        DropReason::QueueFull,
        DropReason::ReplayQueueFull,
        DropReason::Gap,
        DropReason::ParseError,
        DropReason::Oversize,
        DropReason::Unsupported,
        DropReason::Unpaired,
        DropReason::Evicted,
        DropReason::RateLimited,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::RingFull => "ring_full",
            DropReason::QueueFull => "queue_full",
            DropReason::ReplayQueueFull => "replay_queue_full",
            DropReason::Gap => "gap",
            DropReason::ParseError => "parse_error",
            DropReason::Oversize => "oversize",
            DropReason::Unsupported => "unsupported",
            DropReason::Unpaired => "unpaired",
            DropReason::Evicted => "evicted",
            DropReason::RateLimited => "rate_limited",
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

/// Lock-free outcome counters, shared by every stage.
#[derive(Debug, Default)]
pub struct Ledger {
    pub seen: AtomicU64,
    pub matched: AtomicU64,
    pub differed: AtomicU64,
    pub sampled_out: AtomicU64,
    pub excluded: AtomicU64,
    candidate_error: [AtomicU64; 4],
    dropped: [AtomicU64; 10],
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
        self.seen.fetch_add(n, Ordering::Relaxed);
    }

    pub fn record(&self, outcome: Outcome) {
        self.record_n(outcome, 1);
    }

    pub fn record_n(&self, outcome: Outcome, n: u64) {
        let slot = match outcome {
            Outcome::Matched => &self.matched,
            Outcome::Differed => &self.differed,
            Outcome::SampledOut => &self.sampled_out,
            Outcome::Excluded => &self.excluded,
            Outcome::CandidateError(k) => &self.candidate_error[k as usize],
            Outcome::Dropped(r) => &self.dropped[r as usize],
        };
        slot.fetch_add(n, Ordering::Relaxed);
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
}
