//! Per-flow state: two half-streams, each a seq-ordered byte stream with a reorder buffer.
//!
//! Positions inside a half-stream are u64 stream offsets (bytes since the first byte we
//! know of), so wrap-around only matters when a 32-bit sequence number is turned into an
//! offset: that is done once, relative to the next expected sequence number, with serial
//! arithmetic (`wrapping_sub` read as i32).
use std::collections::BTreeMap;

use super::{CloseReason, ReassemblyConfig, ReassemblyStats, StreamEvent};
use crate::capture::{Direction, FlowKey, Segment};

/// A segment starting further ahead than TCP's largest window (2^30 with window scaling)
/// cannot belong to this stream; it is dropped rather than opening a giant hole.
const MAX_AHEAD: u64 = 1 << 30;

/// What one buffered chunk costs besides its payload (its Box allocation and its slot in
/// a BTreeMap node, rounded up). Charged against the buffer caps so that a flood of tiny
/// out-of-order segments cannot hold many times the configured memory.
pub const BUFFER_CHUNK_OVERHEAD: usize = 96;

/// `fin_off` value when no FIN was seen.
const NO_FIN: u64 = u64::MAX;

const INIT: u8 = 1;
/// The direction was opened by a SYN: `isn` is valid and there was no mid-stream join.
const SYN_INIT: u8 = 2;
const FIN_DONE: u8 = 4;
/// The direction's mid-stream `Gap { lost_bytes: 0 }` was emitted (possibly before any of
/// its segments, when the other direction's first segment joined the flow).
const JOIN_SHOWN: u8 = 8;

/// Why a hole is given up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GapReason {
    ReorderTimeout,
    FlowBufferCap,
    GlobalBufferCap,
    Close,
    /// The peer acknowledged bytes after the hole.
    PeerAcked,
}

/// What the per-flow code needs from the reassembler while it works on one direction.
pub(super) struct Ctx<'a, F> {
    pub key: FlowKey,
    pub dir: Direction,
    pub cfg: &'a ReassemblyConfig,
    pub stats: &'a mut ReassemblyStats,
    /// Out-of-order bytes held by all flows.
    pub total: &'a mut usize,
    pub out: &'a mut F,
}

/// Out-of-order bytes waiting for the hole before them.
struct Chunk {
    ts_ns: u64,
    ack: Option<u32>,
    data: Box<[u8]>,
}

impl Chunk {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn cost(&self) -> usize {
        self.data.len() + BUFFER_CHUNK_OVERHEAD
    }
}

/// One direction of a connection.
pub(super) struct Half {
    /// Non-overlapping chunks keyed by stream offset, all after `next_off`. An empty
    /// BTreeMap does not allocate, so idle flows cost only the struct.
    ooo: BTreeMap<u64, Chunk>,
    /// Stream offset of the next byte to deliver (bytes delivered + lost so far).
    next_off: u64,
    /// Stream offset of the FIN, or `NO_FIN`.
    fin_off: u64,
    /// When the oldest unfilled hole (before the first chunk, or before the FIN) was seen.
    hole_since_ns: u64,
    /// Memory charged for `ooo`: payload plus `BUFFER_CHUNK_OVERHEAD` per chunk.
    buffered: usize,
    /// Sequence number of `next_off`.
    next_seq: u32,
    isn: u32,
    flags: u8,
}

/// Both directions of a connection, indexed by `Direction::index`.
pub(super) struct Flow {
    halves: [Half; 2],
    pub last_ts_ns: u64,
}

impl Flow {
    pub fn new(ts_ns: u64) -> Self {
        Self {
            halves: [Half::new(), Half::new()],
            last_ts_ns: ts_ns,
        }
    }

    /// A SYN without ACK in `dir`: does it start a new connection on this 4-tuple rather
    /// than repeat the current one's?
    pub fn superseded_by_syn(&self, dir: Direction, seq: u32) -> bool {
        let this = &self.halves[dir.index()];
        let other = &self.halves[1 - dir.index()];
        let repeat = this.flags & SYN_INIT != 0 && this.isn == seq;
        (this.is_init() && !repeat) || other.fin_off != NO_FIN
    }

    /// Handles one segment of this flow. Returns a reason when the flow has ended.
    pub fn on_segment<F: FnMut(StreamEvent<'_>)>(
        &mut self,
        seg: &Segment<'_>,
        cx: &mut Ctx<'_, F>,
    ) -> Option<CloseReason> {
        let ts = seg.ts_ns;
        self.last_ts_ns = self.last_ts_ns.max(ts);
        if !seg.flags.syn()
            && self
                .halves
                .iter()
                .all(|h| !h.is_init() && h.flags & JOIN_SHOWN == 0)
        {
            // The flow is joined mid-stream: both directions are, and the consumer must
            // know it for both before any data. Otherwise the other direction's join would
            // only be reported with its first bytes, after requests were already paired
            // on the assumption that it was at a message boundary.
            let dirs = match seg.direction {
                Direction::ToServer => [Direction::ToServer, Direction::ToClient],
                Direction::ToClient => [Direction::ToClient, Direction::ToServer],
            };
            for dir in dirs {
                cx.dir = dir;
                self.halves[dir.index()].show_join(ts, cx);
            }
        }
        if seg.flags.ack() && !seg.flags.rst() && !seg.flags.syn() {
            // Whatever the peer received before this segment was sent is known to exist:
            // a hole it covers is lost, and must be reported before these bytes.
            let peer = seg.direction.peer();
            cx.dir = peer;
            self.halves[peer.index()].on_peer_ack(seg.ack, ts, cx);
        }
        cx.dir = seg.direction;
        let ack = seg.flags.ack().then_some(seg.ack);
        let half = &mut self.halves[seg.direction.index()];
        let mut data_seq = seg.seq;
        if seg.flags.syn() {
            // The SYN occupies one sequence number; data (TCP Fast Open) follows it.
            data_seq = seg.seq.wrapping_add(1);
            if !half.is_init() {
                half.init_syn(seg.seq);
            } else if !(half.flags & SYN_INIT != 0 && half.isn == seg.seq) {
                cx.stats.syn_ignored += 1;
            }
        }
        if seg.flags.rst() {
            if half.is_init() {
                half.on_payload(data_seq, seg.payload, ts, ack, cx);
            }
            return Some(CloseReason::Reset);
        }
        if !seg.payload.is_empty() || seg.flags.fin() {
            if !half.is_init() {
                half.init_midstream(data_seq, ts, cx);
            }
            half.on_payload(data_seq, seg.payload, ts, ack, cx);
            if seg.flags.fin() {
                half.on_fin(data_seq.wrapping_add(seg.payload.len() as u32), ts, cx);
            }
        }
        // Segments advance the clock too: a hole older than the reorder timeout is given
        // up on without waiting for the next `expire`.
        self.expire_holes(ts, cx);
        self.fin_done().then_some(CloseReason::Fin)
    }

    /// Both directions reached their FIN.
    pub fn fin_done(&self) -> bool {
        self.halves.iter().all(|h| h.flags & FIN_DONE != 0)
    }

    /// Gives up on holes older than the reorder timeout, in both directions.
    pub fn expire_holes<F: FnMut(StreamEvent<'_>)>(&mut self, now_ns: u64, cx: &mut Ctx<'_, F>) {
        for (half, dir) in self
            .halves
            .iter_mut()
            .zip([Direction::ToServer, Direction::ToClient])
        {
            if half.pending() {
                cx.dir = dir;
                half.expire_holes(now_ns, cx);
            }
        }
    }

    /// Delivers everything buffered (gaps for the holes) and emits `Closed`.
    pub fn close<F: FnMut(StreamEvent<'_>)>(
        &mut self,
        ts_ns: u64,
        reason: CloseReason,
        cx: &mut Ctx<'_, F>,
    ) {
        for (half, dir) in self
            .halves
            .iter_mut()
            .zip([Direction::ToServer, Direction::ToClient])
        {
            cx.dir = dir;
            half.flush(ts_ns, GapReason::Close, cx);
        }
        let counter = match reason {
            CloseReason::Fin => &mut cx.stats.flows_closed_fin,
            CloseReason::Reset => &mut cx.stats.flows_closed_reset,
            CloseReason::IdleTimeout => &mut cx.stats.flows_closed_idle,
            CloseReason::Evicted => &mut cx.stats.flows_closed_evicted,
            CloseReason::PortReuse => &mut cx.stats.flows_closed_port_reuse,
            CloseReason::EndOfCapture => &mut cx.stats.flows_closed_end_of_capture,
        };
        *counter += 1;
        (cx.out)(StreamEvent::Closed {
            flow: cx.key,
            ts_ns,
            reason,
        });
    }

    /// Out-of-order bytes held per direction.
    pub fn buffered(&self) -> [usize; 2] {
        [self.halves[0].buffered, self.halves[1].buffered]
    }
}

impl Half {
    fn new() -> Self {
        Self {
            ooo: BTreeMap::new(),
            next_off: 0,
            fin_off: NO_FIN,
            hole_since_ns: 0,
            buffered: 0,
            next_seq: 0,
            isn: 0,
            flags: 0,
        }
    }

    fn is_init(&self) -> bool {
        self.flags & INIT != 0
    }

    fn init_syn(&mut self, isn: u32) {
        self.isn = isn;
        self.next_seq = isn.wrapping_add(1);
        self.flags |= INIT | SYN_INIT;
    }

    /// First sight of this direction is not a SYN: start at `seq` and tell the consumer to
    /// resynchronise.
    fn init_midstream<F: FnMut(StreamEvent<'_>)>(
        &mut self,
        seq: u32,
        ts: u64,
        cx: &mut Ctx<'_, F>,
    ) {
        self.next_seq = seq;
        self.flags |= INIT;
        self.show_join(ts, cx);
    }

    /// Emits this direction's mid-stream join, once.
    fn show_join<F: FnMut(StreamEvent<'_>)>(&mut self, ts: u64, cx: &mut Ctx<'_, F>) {
        if self.flags & JOIN_SHOWN != 0 {
            return;
        }
        self.flags |= JOIN_SHOWN;
        cx.stats.gaps_midstream_join += 1;
        (cx.out)(StreamEvent::Gap {
            flow: cx.key,
            direction: cx.dir,
            ts_ns: ts,
            lost_bytes: 0,
        });
    }

    fn fin_known(&self) -> bool {
        self.fin_off != NO_FIN
    }

    /// Is there a hole: buffered bytes, or a FIN, beyond what was delivered?
    fn pending(&self) -> bool {
        !self.ooo.is_empty() || (self.fin_known() && self.next_off < self.fin_off)
    }

    /// Where the first hole ends, if there is one.
    fn first_hole_end(&self) -> Option<u64> {
        match self.ooo.first_key_value() {
            Some((&start, _)) => Some(start),
            None if self.fin_known() && self.next_off < self.fin_off => Some(self.fin_off),
            None => None,
        }
    }

    /// The peer acknowledged everything before `ack`: bytes up to there that were not
    /// captured are lost (hole by hole, so buffered chunks in between are delivered).
    fn on_peer_ack<F: FnMut(StreamEvent<'_>)>(&mut self, ack: u32, ts: u64, cx: &mut Ctx<'_, F>) {
        if !self.is_init() {
            return;
        }
        let delta = ack.wrapping_sub(self.next_seq) as i32;
        if delta <= 0 || u64::from(delta.unsigned_abs()) > MAX_AHEAD {
            return;
        }
        let mut target = self.next_off + u64::from(delta.unsigned_abs());
        if self.fin_known() {
            // The FIN occupies a sequence number but is no byte of the stream.
            target = target.min(self.fin_off);
        }
        // Each round moves `next_off` forward, so this terminates.
        while self.next_off < target {
            let end = self
                .ooo
                .first_key_value()
                .map_or(target, |(&start, _)| start.min(target));
            if end <= self.next_off {
                break;
            }
            self.skip_to(end, ts, GapReason::PeerAcked, cx);
        }
    }

    fn on_payload<F: FnMut(StreamEvent<'_>)>(
        &mut self,
        seq: u32,
        payload: &[u8],
        ts: u64,
        ack: Option<u32>,
        cx: &mut Ctx<'_, F>,
    ) {
        if payload.is_empty() {
            return;
        }
        let whole = payload.len() as u64;
        let delta = seq.wrapping_sub(self.next_seq) as i32;
        let (mut start, mut data) = if delta < 0 {
            let behind = u64::from(delta.unsigned_abs());
            if behind >= whole {
                cx.stats.retransmitted_segments += 1;
                cx.stats.retransmitted_bytes += whole;
                return;
            }
            cx.stats.overlap_bytes += behind;
            (self.next_off, &payload[behind as usize..])
        } else {
            let ahead = u64::from(delta.unsigned_abs());
            if ahead > MAX_AHEAD {
                cx.stats.out_of_window_segments += 1;
                cx.stats.out_of_window_bytes += whole;
                return;
            }
            (self.next_off + ahead, payload)
        };
        if self.fin_known() {
            if start >= self.fin_off {
                cx.stats.bytes_after_fin += data.len() as u64;
                return;
            }
            let room = self.fin_off - start;
            if data.len() as u64 > room {
                cx.stats.bytes_after_fin += data.len() as u64 - room;
                data = &data[..room as usize];
            }
        }

        // Each round either finishes with the segment or moves `next_off` forward, so it
        // terminates.
        loop {
            if start < self.next_off {
                // A skipped hole made part of the segment old.
                let old = self.next_off - start;
                if old >= data.len() as u64 {
                    cx.stats.overlap_bytes += data.len() as u64;
                    return;
                }
                cx.stats.overlap_bytes += old;
                data = &data[old as usize..];
                start = self.next_off;
            }
            if start == self.next_off {
                // Hot path: zero copy.
                self.deliver(data, ts, ack, cx);
                if self.drain(cx) {
                    self.hole_moved();
                }
                return;
            }

            let pieces = self.uncovered(start, data.len() as u64);
            let fresh: u64 = pieces.iter().map(|&(s, e)| e - s).sum();
            if fresh == 0 {
                cx.stats.retransmitted_segments += 1;
                cx.stats.retransmitted_bytes += data.len() as u64;
                return;
            }
            let cost = fresh as usize + pieces.len() * BUFFER_CHUNK_OVERHEAD;
            let flow_ok = self.buffered + cost <= cx.cfg.max_flow_buffer_bytes;
            let total_ok = *cx.total + cost <= cx.cfg.max_total_buffer_bytes;
            if flow_ok && total_ok {
                self.buffer(start, data, &pieces, ts, ack, cx);
                return;
            }
            // Over a cap: give up on the first hole and retry. If the segment itself is the
            // earliest thing we hold, the hole before it goes and it is delivered directly.
            let reason = if flow_ok {
                GapReason::GlobalBufferCap
            } else {
                GapReason::FlowBufferCap
            };
            let target = match self.ooo.first_key_value() {
                Some((&first, _)) if first < start => first,
                _ => start,
            };
            self.skip_to(target, ts, reason, cx);
        }
    }

    /// Records the FIN at sequence `fin_seq` (the sequence number it occupies).
    fn on_fin<F: FnMut(StreamEvent<'_>)>(&mut self, fin_seq: u32, ts: u64, cx: &mut Ctx<'_, F>) {
        if self.fin_known() {
            // Retransmitted FIN; the first one stands.
            return;
        }
        let delta = fin_seq.wrapping_sub(self.next_seq) as i32;
        let fin_off = if delta <= 0 {
            // At or before what was delivered: the stream ends here.
            self.next_off
        } else {
            let ahead = u64::from(delta.unsigned_abs());
            if ahead > MAX_AHEAD {
                return;
            }
            self.next_off + ahead
        };
        let was_pending = self.pending();
        self.fin_off = fin_off;
        self.drop_beyond_fin(cx);
        if !was_pending && self.pending() {
            self.hole_since_ns = ts;
        }
        if self.next_off >= self.fin_off {
            self.flags |= FIN_DONE;
        }
    }

    /// Buffered bytes at or after the FIN can never be delivered.
    fn drop_beyond_fin<F>(&mut self, cx: &mut Ctx<'_, F>) {
        let fin = self.fin_off;
        let beyond = self.ooo.split_off(&fin);
        for chunk in beyond.values() {
            self.forget(chunk.cost(), cx);
            cx.stats.bytes_after_fin += chunk.len();
        }
        // A chunk straddling the FIN keeps only its part before it.
        let straddling = match self.ooo.last_key_value() {
            Some((&start, chunk)) if start + chunk.len() > fin => Some(start),
            _ => None,
        };
        if let Some(start) = straddling
            && let Some(chunk) = self.ooo.remove(&start)
        {
            let keep = (fin - start) as usize;
            self.forget(chunk.data.len() - keep, cx);
            cx.stats.bytes_after_fin += (chunk.data.len() - keep) as u64;
            let data = chunk.data[..keep].into();
            self.ooo.insert(
                start,
                Chunk {
                    ts_ns: chunk.ts_ns,
                    ack: chunk.ack,
                    data,
                },
            );
        }
    }

    /// Releases `cost` bytes of buffer accounting.
    fn forget<F>(&mut self, cost: usize, cx: &mut Ctx<'_, F>) {
        self.buffered -= cost;
        *cx.total -= cost;
    }

    /// The parts of `[start, start+len)` not already buffered, in order.
    fn uncovered(&self, start: u64, len: u64) -> Vec<(u64, u64)> {
        let end = start + len;
        let mut cursor = start;
        let mut pieces = Vec::new();
        if let Some((&s, c)) = self.ooo.range(..=start).next_back() {
            cursor = cursor.max((s + c.len()).min(end));
        }
        for (&s, c) in self.ooo.range(start + 1..end) {
            if s > cursor {
                pieces.push((cursor, s));
            }
            cursor = cursor.max(s + c.len());
        }
        if cursor < end {
            pieces.push((cursor, end));
        }
        pieces
    }

    /// Copies the new parts of a segment that starts beyond the next expected byte.
    fn buffer<F>(
        &mut self,
        start: u64,
        data: &[u8],
        pieces: &[(u64, u64)],
        ts: u64,
        ack: Option<u32>,
        cx: &mut Ctx<'_, F>,
    ) {
        if !self.pending() {
            self.hole_since_ns = ts;
        }
        let mut fresh = 0;
        for &(s, e) in pieces {
            let data = data[(s - start) as usize..(e - start) as usize].into();
            let chunk = Chunk {
                ts_ns: ts,
                ack,
                data,
            };
            fresh += chunk.data.len();
            self.buffered += chunk.cost();
            *cx.total += chunk.cost();
            self.ooo.insert(s, chunk);
        }
        cx.stats.out_of_order_segments += 1;
        cx.stats.out_of_order_bytes += fresh as u64;
        cx.stats.overlap_bytes += (data.len() - fresh) as u64;
    }

    fn deliver<F: FnMut(StreamEvent<'_>)>(
        &mut self,
        bytes: &[u8],
        ts: u64,
        ack: Option<u32>,
        cx: &mut Ctx<'_, F>,
    ) {
        let n = bytes.len() as u64;
        let seq = self.next_seq;
        self.next_off += n;
        self.next_seq = self.next_seq.wrapping_add(n as u32);
        cx.stats.delivered_bytes += n;
        (cx.out)(StreamEvent::Data {
            flow: cx.key,
            direction: cx.dir,
            ts_ns: ts,
            seq,
            ack,
            bytes,
        });
    }

    /// Delivers the buffered chunks that became contiguous. Returns whether any was
    /// taken off the buffer (the first hole is then a different one).
    fn drain<F: FnMut(StreamEvent<'_>)>(&mut self, cx: &mut Ctx<'_, F>) -> bool {
        let mut took = false;
        while let Some(entry) = self.ooo.first_entry() {
            if *entry.key() > self.next_off {
                break;
            }
            let (start, chunk) = entry.remove_entry();
            took = true;
            self.forget(chunk.cost(), cx);
            let old = self.next_off - start;
            if old >= chunk.len() {
                // A later in-order segment covered it already.
                cx.stats.overlap_bytes += chunk.len();
                continue;
            }
            cx.stats.overlap_bytes += old;
            self.deliver(&chunk.data[old as usize..], chunk.ts_ns, chunk.ack, cx);
        }
        if self.fin_known() && self.next_off >= self.fin_off {
            self.flags |= FIN_DONE;
        }
        took
    }

    /// The first hole changed: its age is at least that of the chunk after it.
    fn hole_moved(&mut self) {
        if let Some((_, chunk)) = self.ooo.first_key_value() {
            self.hole_since_ns = chunk.ts_ns;
        }
    }

    /// Declares `[next_off, target)` lost and delivers what follows it.
    fn skip_to<F: FnMut(StreamEvent<'_>)>(
        &mut self,
        target: u64,
        ts: u64,
        reason: GapReason,
        cx: &mut Ctx<'_, F>,
    ) {
        if target > self.next_off {
            let lost = target - self.next_off;
            self.next_off = target;
            // Mod 2^32, like the sequence space; `lost` is bounded by MAX_AHEAD anyway.
            self.next_seq = self.next_seq.wrapping_add(lost as u32);
            reason.record(cx.stats, lost);
            (cx.out)(StreamEvent::Gap {
                flow: cx.key,
                direction: cx.dir,
                ts_ns: ts,
                lost_bytes: lost,
            });
        }
        self.drain(cx);
        self.hole_moved();
    }

    fn expire_holes<F: FnMut(StreamEvent<'_>)>(&mut self, now_ns: u64, cx: &mut Ctx<'_, F>) {
        while now_ns.saturating_sub(self.hole_since_ns) >= cx.cfg.reorder_timeout_ns {
            let Some(target) = self.first_hole_end() else {
                return;
            };
            self.skip_to(target, now_ns, GapReason::ReorderTimeout, cx);
        }
    }

    /// Gives up on every hole: delivers all buffered bytes and reports what is missing up
    /// to a known FIN.
    fn flush<F: FnMut(StreamEvent<'_>)>(
        &mut self,
        ts: u64,
        reason: GapReason,
        cx: &mut Ctx<'_, F>,
    ) {
        while let Some(target) = self.first_hole_end() {
            self.skip_to(target, ts, reason, cx);
        }
    }
}
