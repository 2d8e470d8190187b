//! TCP reassembly: per flow and direction, seq-ordered byte streams with gaps.
//! Knows nothing of HTTP.
use crate::capture::{Direction, FlowKey};

/// What reassembly tells the next stage.
#[derive(Debug)]
pub enum StreamEvent<'a> {
    /// In-order bytes of one direction. `ts_ns` is the timestamp of the segment that
    /// carried them.
    Data {
        flow: FlowKey,
        direction: Direction,
        ts_ns: u64,
        bytes: &'a [u8],
    },
    /// Bytes of one direction were lost (never captured, evicted or over a memory cap):
    /// whatever message they belonged to is incomplete. The stream continues after them.
    Gap {
        flow: FlowKey,
        direction: Direction,
        ts_ns: u64,
        lost_bytes: u64,
    },
    /// The connection ended; no more events for this flow.
    Closed {
        flow: FlowKey,
        ts_ns: u64,
        reason: CloseReason,
    },
}

/// Why a connection's reassembly ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// FIN seen in both directions (or FIN + all data delivered).
    Fin,
    Reset,
    IdleTimeout,
    /// Evicted to respect the global memory cap or flow-table size.
    Evicted,
}
