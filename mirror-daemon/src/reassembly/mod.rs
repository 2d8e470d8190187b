//! TCP reassembly: per flow and direction, seq-ordered byte streams with gaps.
//! Knows nothing of HTTP.
//!
//! # Contract with the next stage
//!
//! For one flow, events come in this order and no other:
//!
//! * Per direction, the [`StreamEvent::Data`] and [`StreamEvent::Gap`] events describe the
//!   byte stream exactly: concatenating `Data` bytes and treating each `Gap` as
//!   `lost_bytes` unknown bytes reproduces the sender's stream from the first byte the
//!   reassembler knows of. Each byte is delivered at most once, in order; retransmissions
//!   and overlaps are trimmed away.
//! * `Data.bytes` borrows either the captured segment (the common in-order case, no copy)
//!   or a reassembly buffer; it is only valid during the callback.
//! * `Gap { lost_bytes: 0 }` is emitted once for a direction, before its first `Data`, when
//!   the stream was joined mid-connection (its first segment was not a SYN: capture started
//!   while the connection was open, or the flow was evicted/refused earlier). Nothing is
//!   known to be lost, but the first bytes may start in the middle of a message: the
//!   consumer must resynchronise at the next message boundary. A direction opened by a
//!   SYN gets no such event. When a flow's first segment is not a SYN, both directions
//!   get it then, before any `Data` of the flow.
//! * `Gap { lost_bytes: n > 0 }`: `n` bytes of the stream were never delivered (never
//!   captured, acknowledged by the peer without having been captured, not retransmitted
//!   within `reorder_timeout_ns`, or dropped to respect a memory cap). Delivery continues
//!   with the byte after them.
//! * A hole is given up on as soon as a segment of the other direction acknowledges bytes
//!   after it (the receiver has them: they will never be retransmitted), before that
//!   segment's own bytes are delivered. So a consumer sees a request's loss before the
//!   response that acknowledges it, and a response's loss before the next request sent
//!   after it was read. This needs input in causal order across directions (live capture
//!   on one host is; merged or SPAN captures go through `capture::reorder` first).
//! * [`StreamEvent::Closed`] is the last event of a flow. Any hole still open at that
//!   point (including missing bytes before a FIN) is reported as a `Gap` first, and every
//!   buffered byte is delivered first. A later segment with the same [`FlowKey`] starts a
//!   new flow (joined mid-stream unless it is a SYN).
//!
//! Close reasons: `Fin` when both directions' FINs were reached in sequence; `Reset` on a
//! RST in either direction; `IdleTimeout` after `idle_timeout_ns` without a segment;
//! `Evicted` to make room in a full flow table; `PortReuse` when a SYN opens a new
//! connection on the same 4-tuple; `EndOfCapture` from [`Reassembler::finish`].
//!
//! Timestamps: `Data.ts_ns` is the timestamp of the segment that carried the bytes;
//! `Gap`/`Closed` carry the timestamp of whatever triggered them (a segment, the `now_ns`
//! given to [`Reassembler::expire`], or the flow's last segment for `finish`).
//!
//! Time is the capture clock (`Segment::ts_ns`), never the wall clock, so pcap replays
//! behave like live capture.

use thiserror::Error;

use crate::capture::{Direction, FlowKey, Segment};

mod flow;
mod fuzz;
mod stats;
#[cfg(test)]
mod tests;

pub use flow::BUFFER_CHUNK_OVERHEAD;
pub use fuzz::fuzz_reassembly;
pub use stats::ReassemblyStats;

use flow::{Ctx, Flow, GapReason};

/// What reassembly tells the next stage.
#[derive(Debug)]
pub enum StreamEvent<'a> {
    /// In-order bytes of one direction. `ts_ns` is the timestamp of the segment that
    /// carried them, `seq` the TCP sequence number of the first byte and `ack` the
    /// acknowledgement number that segment carried (how much of the other direction its
    /// sender had received), if it had the ACK flag.
    Data {
        flow: FlowKey,
        direction: Direction,
        ts_ns: u64,
        seq: u32,
        ack: Option<u32>,
        bytes: &'a [u8],
    },
    /// Bytes of one direction were lost (never captured, evicted or over a memory cap):
    /// whatever message they belonged to is incomplete. The stream continues after them.
    /// `lost_bytes == 0` marks a mid-stream join (see the module docs).
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

impl StreamEvent<'_> {
    /// The connection the event is about.
    pub fn flow(&self) -> &FlowKey {
        match self {
            StreamEvent::Data { flow, .. }
            | StreamEvent::Gap { flow, .. }
            | StreamEvent::Closed { flow, .. } => flow,
        }
    }
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
    /// A new SYN reused the 4-tuple while this connection had not closed cleanly
    /// (half-closed, or its FIN/RST was never captured).
    PortReuse,
    /// End of input ([`Reassembler::finish`]): a pcap ended or the daemon shuts down.
    /// A close-delimited message still open at this point is not known to be complete.
    EndOfCapture,
}

/// Limits and timeouts. All times are in the capture clock's nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// A flow without segments for this long is closed (`IdleTimeout`).
    pub idle_timeout_ns: u64,
    /// A hole not filled for this long becomes a `Gap`.
    pub reorder_timeout_ns: u64,
    /// Reorder-buffer memory one direction of one flow may hold (payload plus
    /// [`BUFFER_CHUNK_OVERHEAD`] per buffered chunk).
    pub max_flow_buffer_bytes: usize,
    /// Reorder-buffer memory all flows together may hold (same accounting).
    pub max_total_buffer_bytes: usize,
    /// Flow-table size.
    pub max_flows: usize,
    /// When the table is full, flows quiet for at least this long are evicted to make
    /// room (`Evicted`); if none is, new flows are refused.
    pub evict_min_idle_ns: u64,
}

const SECOND_NS: u64 = 1_000_000_000;

/// A full table triggers at most one eviction sweep (O(flows)) per this much capture
/// time, so a table full of busy flows cannot turn every new SYN into a full scan.
const TABLE_SWEEP_INTERVAL_NS: u64 = SECOND_NS;

impl Default for ReassemblyConfig {
    fn default() -> Self {
        Self {
            idle_timeout_ns: 120 * SECOND_NS,
            reorder_timeout_ns: SECOND_NS,
            max_flow_buffer_bytes: 4 << 20,
            max_total_buffer_bytes: 256 << 20,
            max_flows: 200_000,
            evict_min_idle_ns: 10 * SECOND_NS,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("reassembly: {0} must be greater than zero")]
    Zero(&'static str),
    #[error("reassembly: max_flow_buffer_bytes ({flow}) exceeds max_total_buffer_bytes ({total})")]
    FlowOverTotal { flow: usize, total: usize },
}

impl ReassemblyConfig {
    /// Rejects settings that would make every flow lose data or never time out.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.idle_timeout_ns == 0 {
            return Err(ConfigError::Zero("idle_timeout_ns"));
        }
        if self.reorder_timeout_ns == 0 {
            return Err(ConfigError::Zero("reorder_timeout_ns"));
        }
        if self.max_flows == 0 {
            return Err(ConfigError::Zero("max_flows"));
        }
        if self.max_flow_buffer_bytes > self.max_total_buffer_bytes {
            return Err(ConfigError::FlowOverTotal {
                flow: self.max_flow_buffer_bytes,
                total: self.max_total_buffer_bytes,
            });
        }
        Ok(())
    }
}

/// Rebuilds per-direction byte streams from captured segments. Single-threaded: shard by
/// flow (e.g. by `FlowKey` hash) to use more cores.
pub struct Reassembler {
    cfg: ReassemblyConfig,
    // Clients choose their ports and addresses, so the table is hashed with a randomly
    // seeded hasher (`FlowMap`): a fixed hash would let them degrade it. Boxed: a slot is
    // a key and a pointer, so the table's spare capacity and its growth (old and new
    // table held at once) cost 72 bytes a slot rather than 216 (the memory of 100k idle
    // connections).
    flows: crate::capture::FlowMap<Box<Flow>>,
    stats: ReassemblyStats,
    /// Reorder-buffer memory held by all flows (see `buffered_bytes`).
    total_buffered: usize,
    last_table_sweep_ns: Option<u64>,
}

impl Reassembler {
    pub fn new(cfg: ReassemblyConfig) -> Self {
        Self {
            cfg,
            flows: crate::capture::FlowMap::default(),
            stats: ReassemblyStats::default(),
            total_buffered: 0,
            last_table_sweep_ns: None,
        }
    }

    pub fn config(&self) -> &ReassemblyConfig {
        &self.cfg
    }

    /// Feeds one segment; emits whatever it makes deliverable.
    pub fn process(&mut self, seg: &Segment<'_>, out: &mut impl FnMut(StreamEvent<'_>)) {
        self.stats.segments += 1;
        self.stats.payload_bytes += seg.payload.len() as u64;

        // Hot path: one lookup for a known flow.
        if let Some(flow) = self.flows.get_mut(&seg.flow) {
            let mut cx = Ctx {
                key: seg.flow,
                dir: seg.direction,
                cfg: &self.cfg,
                stats: &mut self.stats,
                total: &mut self.total_buffered,
                out,
            };
            if seg.flags.syn() && !seg.flags.ack() && flow.superseded_by_syn(seg.direction, seg.seq)
            {
                // A new connection on the same 4-tuple: end the old one, reuse the slot.
                flow.close(seg.ts_ns, CloseReason::PortReuse, &mut cx);
                **flow = Flow::new(seg.ts_ns);
                cx.stats.flows_opened += 1;
            }
            if let Some(reason) = flow.on_segment(seg, &mut cx) {
                flow.close(seg.ts_ns, reason, &mut cx);
                self.flows.remove(&seg.flow);
            }
            return;
        }

        if !opens_flow(seg) {
            // Pure ACKs, stray RSTs and FINs (often the tail of a flow already closed)
            // must not create state.
            self.stats.segments_unknown_flow += 1;
            return;
        }
        if !self.make_room(seg.ts_ns, out) {
            self.stats.new_flow_refusals_table_full += 1;
            return;
        }
        let mut flow = Flow::new(seg.ts_ns);
        self.stats.flows_opened += 1;
        let mut cx = Ctx {
            key: seg.flow,
            dir: seg.direction,
            cfg: &self.cfg,
            stats: &mut self.stats,
            total: &mut self.total_buffered,
            out,
        };
        // A flow can end with its first segment (e.g. SYN+RST); keep it only if not.
        match flow.on_segment(seg, &mut cx) {
            Some(reason) => flow.close(seg.ts_ns, reason, &mut cx),
            None => {
                self.flows.insert(seg.flow, Box::new(flow));
            }
        }
    }

    /// Applies the clock: closes idle flows and turns holes older than the reorder
    /// timeout into gaps. O(open flows); call it periodically (e.g. every 100 ms).
    pub fn expire(&mut self, now_ns: u64, out: &mut impl FnMut(StreamEvent<'_>)) {
        let Self {
            cfg,
            flows,
            stats,
            total_buffered,
            ..
        } = self;
        let idle = cfg.idle_timeout_ns;
        flows.retain(|key, flow| {
            let mut cx = Ctx {
                key: *key,
                dir: Direction::ToServer,
                cfg,
                stats: &mut *stats,
                total: &mut *total_buffered,
                out: &mut *out,
            };
            if now_ns.saturating_sub(flow.last_ts_ns) >= idle {
                flow.close(now_ns, CloseReason::IdleTimeout, &mut cx);
                return false;
            }
            flow.expire_holes(now_ns, &mut cx);
            // Giving up on a hole can make a pending FIN reachable.
            if flow.fin_done() {
                flow.close(now_ns, CloseReason::Fin, &mut cx);
                return false;
            }
            true
        });
    }

    /// End of input: delivers everything buffered (with gaps for the holes) and closes
    /// every flow with `EndOfCapture`.
    pub fn finish(&mut self, out: &mut impl FnMut(StreamEvent<'_>)) {
        let Self {
            cfg,
            flows,
            stats,
            total_buffered,
            ..
        } = self;
        for (key, mut flow) in flows.drain() {
            let mut cx = Ctx {
                key,
                dir: Direction::ToServer,
                cfg,
                stats: &mut *stats,
                total: &mut *total_buffered,
                out: &mut *out,
            };
            let ts = flow.last_ts_ns;
            flow.close(ts, CloseReason::EndOfCapture, &mut cx);
        }
    }

    pub fn stats(&self) -> &ReassemblyStats {
        &self.stats
    }

    pub fn open_flows(&self) -> usize {
        self.flows.len()
    }

    /// Reorder-buffer memory currently held, all flows together: payload plus
    /// [`BUFFER_CHUNK_OVERHEAD`] per chunk.
    pub fn buffered_bytes(&self) -> usize {
        self.total_buffered
    }

    /// Makes a slot for a new flow if the table is full. Returns whether there is one.
    fn make_room(&mut self, now_ns: u64, out: &mut impl FnMut(StreamEvent<'_>)) -> bool {
        if self.flows.len() < self.cfg.max_flows {
            return true;
        }
        let due = self
            .last_table_sweep_ns
            .is_none_or(|last| now_ns.saturating_sub(last) >= TABLE_SWEEP_INTERVAL_NS);
        if !due {
            return false;
        }
        self.last_table_sweep_ns = Some(now_ns);
        self.stats.table_sweeps += 1;
        let Self {
            cfg,
            flows,
            stats,
            total_buffered,
            ..
        } = self;
        let min_idle = cfg.evict_min_idle_ns.min(cfg.idle_timeout_ns);
        let idle_timeout = cfg.idle_timeout_ns;
        // Evict every quiet flow in one pass so the O(n) scan is amortised over many
        // new flows.
        flows.retain(|key, flow| {
            let quiet = now_ns.saturating_sub(flow.last_ts_ns);
            if quiet < min_idle {
                return true;
            }
            let reason = if quiet >= idle_timeout {
                CloseReason::IdleTimeout
            } else {
                CloseReason::Evicted
            };
            let mut cx = Ctx {
                key: *key,
                dir: Direction::ToServer,
                cfg,
                stats: &mut *stats,
                total: &mut *total_buffered,
                out: &mut *out,
            };
            flow.close(now_ns, reason, &mut cx);
            false
        });
        flows.len() < cfg.max_flows
    }
}

/// Whether a segment of an unknown flow starts tracking it: a SYN, or payload (mid-stream
/// join).
fn opens_flow(seg: &Segment<'_>) -> bool {
    !seg.flags.rst() && (seg.flags.syn() || !seg.payload.is_empty())
}

// Reason labels for gaps are internal; stats expose one counter pair per reason.
impl GapReason {
    fn record(self, stats: &mut ReassemblyStats, lost: u64) {
        let (gaps, bytes) = match self {
            GapReason::ReorderTimeout => (
                &mut stats.gaps_reorder_timeout,
                &mut stats.lost_bytes_reorder_timeout,
            ),
            GapReason::FlowBufferCap => (
                &mut stats.gaps_flow_buffer_cap,
                &mut stats.lost_bytes_flow_buffer_cap,
            ),
            GapReason::GlobalBufferCap => (
                &mut stats.gaps_global_buffer_cap,
                &mut stats.lost_bytes_global_buffer_cap,
            ),
            GapReason::Close => (&mut stats.gaps_at_close, &mut stats.lost_bytes_at_close),
            GapReason::PeerAcked => (&mut stats.gaps_peer_acked, &mut stats.lost_bytes_peer_acked),
        };
        *gaps += 1;
        *bytes += lost;
    }
}
