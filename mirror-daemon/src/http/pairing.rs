//! The pairing figures of a run: how many exchanges the TCP byte ranges proved, and what
//! joining live traffic cost. One shape for every place that shows them: `exchanges`'
//! and `run`'s summaries, `mirror_pairing_*_total` on `/metrics`, and the report (stored
//! with each ledger snapshot).
use std::fmt;

use serde::{Deserialize, Serialize};

use super::HttpStats;

/// Cumulative pairing counters of the http stage (see the tracker's module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingCounters {
    /// Exchanges rebuilt: a request paired with its response.
    pub exchanges: u64,
    /// Of them, paired with proof from the TCP byte ranges (sequence and ACK numbers).
    pub proven: u64,
    /// Requests dropped (`gap` or `unpaired`) on connections joined mid-stream, before
    /// their first proven exchange: the cost of attaching to live traffic.
    pub dropped_at_join: u64,
    /// Responses whose request was not captured, discarded.
    pub responses_unpaired: u64,
    /// Requests still waiting for their response when the capture ended (the tap
    /// detached or the file ended), dropped as `unpaired`: in flight at the end.
    #[serde(default)]
    pub dropped_at_end: u64,
}

impl PairingCounters {
    /// Adds another host's or run's counters (reports aggregate across hosts).
    pub fn add(&mut self, o: &PairingCounters) {
        self.exchanges += o.exchanges;
        self.proven += o.proven;
        self.dropped_at_join += o.dropped_at_join;
        self.responses_unpaired += o.responses_unpaired;
        self.dropped_at_end += o.dropped_at_end;
    }
}

impl PairingCounters {
    /// These counters without `o` (a part of them), never below zero.
    pub fn minus(&self, o: &PairingCounters) -> PairingCounters {
        PairingCounters {
            exchanges: self.exchanges.saturating_sub(o.exchanges),
            proven: self.proven.saturating_sub(o.proven),
            dropped_at_join: self.dropped_at_join.saturating_sub(o.dropped_at_join),
            responses_unpaired: self.responses_unpaired.saturating_sub(o.responses_unpaired),
            dropped_at_end: self.dropped_at_end.saturating_sub(o.dropped_at_end),
        }
    }
}

impl From<&HttpStats> for PairingCounters {
    fn from(h: &HttpStats) -> Self {
        PairingCounters {
            exchanges: h.exchanges,
            proven: h.exchanges_proven,
            dropped_at_join: h.dropped_at_join,
            responses_unpaired: h.responses_unpaired,
            dropped_at_end: h.dropped_at_end,
        }
    }
}

/// The `pairing:` summary line (`exchanges` and `run` print it on stderr).
impl fmt::Display for PairingCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pairing: {} of {} exchanges proven by TCP byte ranges; joined mid-stream: {} dropped; {} responses without a captured request; {} waiting for a response at the end",
            self.proven,
            self.exchanges,
            self.dropped_at_join,
            self.responses_unpaired,
            self.dropped_at_end
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_from_the_tracker_figures_and_summed() {
        let h = HttpStats {
            exchanges: 10,
            exchanges_proven: 8,
            dropped_at_join: 2,
            responses_unpaired: 1,
            dropped_at_end: 3,
            dropped_gap: 5,
            ..HttpStats::default()
        };
        let mut p = PairingCounters::from(&h);
        assert_eq!(
            p.to_string(),
            "pairing: 8 of 10 exchanges proven by TCP byte ranges; joined mid-stream: 2 dropped; 1 responses without a captured request; 3 waiting for a response at the end"
        );
        p.add(&PairingCounters::from(&h));
        assert_eq!(
            p,
            PairingCounters {
                exchanges: 20,
                proven: 16,
                dropped_at_join: 4,
                responses_unpaired: 2,
                dropped_at_end: 6,
            }
        );
    }
}
