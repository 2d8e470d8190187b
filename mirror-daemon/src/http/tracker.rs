//! Pairing of requests with responses per connection, from reassembled byte streams.
//!
//! # Gaps and resynchronization
//!
//! 1. A gap that lies entirely inside a body of known remaining length (Content-Length
//!    body, current chunk's data, close-delimited response) is bridged exactly: only the
//!    exchange owning that message is dropped (`Gap`); framing and pairing go on.
//! 2. Any other gap (in a head or chunk framing, across a message boundary, or a join
//!    with unknown position, `lost_bytes == 0`), a parse error, a head over the limits,
//!    a response with no pending request, or a pipeline over [`MAX_PENDING`]
//!    desynchronizes the connection: every pending request is dropped (reason of the
//!    cause), a damaged direction scans line by line for the next request/status line,
//!    and pairing is suspended. If only the request direction is damaged, the dropped
//!    requests stay queued as placeholders: the response direction is still in step and
//!    their responses are consumed in order.
//! 3. While suspended, requests that start are dropped (`Gap`) but stay queued as
//!    placeholders as well; responses with nothing pending are discarded and counted
//!    (`responses_unpaired`).
//! 4. Pairing resumes with a request only if, when it starts, nothing is pending, the
//!    response direction is not inside a parsed message, and the request's ACK number
//!    says the client had read exactly the response bytes seen so far (or, if none was
//!    seen since a join, the next response byte seen is the one that ACK names): the
//!    response direction is then at a message boundary. A client sends a request at
//!    such a point only after reading every response it waited for (keep-alive, or a
//!    pipelined batch read to its end).
//!    A request found by scanning over the rest of one whose start was not seen (a join
//!    or a loss no tracked request owns) never resumes pairing: that unseen request may
//!    still wait for its response, which comes first, and a pipelining client sends both
//!    before reading, so no number tells them apart. It holds a place and is dropped.
//! 5. Safety net: once paired again, a response that does not parse, or arrives with
//!    nothing pending and no TCP numbers to place it, desynchronizes again (2.).
//!
//! # Byte-range proof (TCP numbers)
//!
//! Every request remembers the sequence number of its first byte and the ACK number its
//! first segment carried (how far the client had read the responses); every response the
//! same. A response is given to the oldest waiting request only if the ranges agree:
//!
//! * the response's ACK is past the request's first byte (the server had received it),
//!   and the response starts at or after the request's ACK (the client had not yet read
//!   any of it when it sent the request). Otherwise the response answers an earlier
//!   request that was not captured: it is counted (`responses_unpaired`) and skipped,
//!   and pairing goes on with the next one.
//! * the response bytes from the request's ACK onwards were all seen (no join or
//!   unbridged gap since then). Otherwise its response may have been the one not
//!   captured: the request is dropped (`Unpaired`) and the next waiting request tried.
//!
//! A loss or a mid-stream join therefore costs the exchanges it touched, never a
//! mispaired one; exchanges paired this way are counted in `exchanges_proven`. Input
//! without ACK numbers (synthetic streams) is paired in order as before, unproven.
use std::collections::VecDeque;

use crate::accounting::DropReason;
use crate::capture::{Direction, FlowKey, FlowMap, FlowSet};
use crate::reassembly::{CloseReason, StreamEvent};

use super::decoder::{Decoder, Event, GapEffect, Kind, Message};
use super::error::{FramingError, Limits, OversizeKind, Protocol};
use super::exchange::{CorrelationId, Exchange, Request, Response, Timing};
use super::head::ResponseCtx;

/// Pending (pipelined) requests per connection; beyond it the connection desynchronizes.
pub const MAX_PENDING: usize = 64;
/// Bytes all connections may hold together by default ([`ExchangeTracker::with_budget`]).
pub const DEFAULT_BUDGET_BYTES: usize = 64 << 20;

/// What the tracker emits: one item per request it saw.
#[derive(Debug)]
pub enum HttpOutput {
    Exchange(Exchange),
    /// An exchange framed without its content (empty bodies, no response header fields;
    /// see `ResponseCtx::frame_only`), because the tracker's [`FrameOnly`] rule held when
    /// its request head was parsed: counted like any other, never to be replayed.
    FramedOnly(Exchange),
    /// `count` exchanges were lost (always 1 here: one record per request).
    Dropped {
        flow: FlowKey,
        reason: DropReason,
        count: u64,
        detail: &'static str,
    },
}

/// Counters of the http stage. `requests_started == exchanges + dropped()` once every
/// connection has ended (see [`ExchangeTracker::pending`] before that).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HttpStats {
    /// Requests seen: first byte at a message boundary, or a head found by resync.
    pub requests_started: u64,
    pub exchanges: u64,
    /// Exchanges whose pairing the TCP byte ranges proved (module docs).
    pub exchanges_proven: u64,
    /// Requests dropped (gap or unpaired) on connections joined mid-stream, before their
    /// first proven exchange: the cost of attaching to live traffic.
    pub dropped_at_join: u64,
    /// Requests still waiting for (the rest of) their response when the capture ended
    /// (the tap detached, or the file ended): dropped as `unpaired`, in flight at the end.
    pub dropped_at_end: u64,
    pub dropped_gap: u64,
    pub dropped_parse_error: u64,
    pub dropped_oversize: u64,
    pub dropped_unsupported: u64,
    pub dropped_unpaired: u64,
    pub dropped_evicted: u64,
    pub dropped_queue_full: u64,
    /// Malformed messages (either direction).
    pub parse_errors: u64,
    /// Messages over `max_header_bytes` (head, chunk-size line or trailers).
    pub oversize_header_bytes: u64,
    /// Messages over `max_headers`.
    pub oversize_header_count: u64,
    /// Messages over `max_body_bytes`.
    pub oversize_body: u64,
    /// Connections found speaking something else, by protocol.
    pub unsupported_tls: u64,
    pub unsupported_http2: u64,
    pub unsupported_connect: u64,
    pub unsupported_upgrade: u64,
    pub unsupported_transfer_coding: u64,
    /// Gaps inside a body, bridged without losing synchronization.
    pub gaps_bridged: u64,
    /// Times a connection lost request/response synchronization.
    pub desyncs: u64,
    /// Times pairing resumed after a desync.
    pub resyncs: u64,
    /// Responses with no request to pair with (discarded).
    pub responses_unpaired: u64,
    /// 1xx interim responses skipped.
    pub interim_responses: u64,
    /// Requests arriving with [`MAX_PENDING`] already pending.
    pub pipeline_overflow: u64,
    pub connections_opened: u64,
    /// Connection states evicted to stay within `max_connections`.
    pub connections_evicted: u64,
    /// Connection states evicted to keep the bytes held for all connections within the
    /// tracker's budget (their pending requests count as `evicted`).
    pub connections_evicted_budget: u64,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
}

impl HttpStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_gap
            + self.dropped_parse_error
            + self.dropped_oversize
            + self.dropped_unsupported
            + self.dropped_unpaired
            + self.dropped_evicted
            + self.dropped_queue_full
    }

    fn count_drop(&mut self, reason: DropReason) {
        let slot = match reason {
            DropReason::Gap => &mut self.dropped_gap,
            DropReason::ParseError => &mut self.dropped_parse_error,
            DropReason::Oversize => &mut self.dropped_oversize,
            DropReason::Unsupported => &mut self.dropped_unsupported,
            DropReason::Evicted => &mut self.dropped_evicted,
            DropReason::QueueFull | DropReason::ReplayQueueFull => &mut self.dropped_queue_full,
            DropReason::Unpaired => &mut self.dropped_unpaired,
            // Reasons of other stages; the tracker never gives them.
            DropReason::RingFull
            | DropReason::RateLimited
            | DropReason::ReplayLate
            | DropReason::FlowTableFull
            | DropReason::StoreQueueFull
            | DropReason::StoreFailed
            | DropReason::StagePanic
            | DropReason::ShutdownDeadline
            | DropReason::SideEffectsFull => &mut self.dropped_unpaired,
        };
        *slot += 1;
    }

    fn count_error(&mut self, e: &FramingError) {
        let slot = match (e.oversize(), e.protocol()) {
            (Some(OversizeKind::HeaderBytes), _) => &mut self.oversize_header_bytes,
            (Some(OversizeKind::HeaderCount), _) => &mut self.oversize_header_count,
            (Some(OversizeKind::Body), _) => &mut self.oversize_body,
            (None, Some(Protocol::Tls)) => &mut self.unsupported_tls,
            (None, Some(Protocol::Http2)) => &mut self.unsupported_http2,
            (None, Some(Protocol::Connect)) => &mut self.unsupported_connect,
            (None, Some(Protocol::Upgrade)) => &mut self.unsupported_upgrade,
            (None, Some(Protocol::TransferCoding)) => &mut self.unsupported_transfer_coding,
            (None, None) => &mut self.parse_errors,
        };
        *slot += 1;
    }
}

/// One request and, once seen, its response.
#[derive(Debug)]
struct Entry {
    ctx: ResponseCtx,
    request_first_ns: u64,
    request_last_ns: u64,
    request: Option<Request>,
    request_done: bool,
    response_first_ns: u64,
    response_last_ns: u64,
    response: Option<Response>,
    response_done: bool,
    /// Already reported as `Dropped`; kept only to consume its response in order.
    dropped: bool,
    /// Sequence number of the request's first byte and the ACK its segment carried.
    request_seq: Option<u32>,
    request_ack: Option<u32>,
    /// The response was given to it with byte-range proof.
    proven: bool,
}

impl Entry {
    fn new(first_ns: u64) -> Self {
        Self {
            ctx: ResponseCtx::default(),
            request_first_ns: first_ns,
            request_last_ns: first_ns,
            request: None,
            request_done: false,
            response_first_ns: 0,
            response_last_ns: 0,
            response: None,
            response_done: false,
            dropped: false,
            request_seq: None,
            request_ack: None,
            proven: false,
        }
    }
}

/// `a` before `b` in sequence space (serial arithmetic).
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Where a response stands against the oldest waiting request (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fit {
    /// Byte ranges agree.
    Proven,
    /// No TCP numbers to check: paired in order, unproven.
    Unknown,
    /// The response answers an earlier request that was not captured.
    Earlier,
    /// The request's response may lie in bytes that were not seen.
    Missed,
}

/// The start of a response: its first byte's sequence number and its segment's ACK.
#[derive(Clone, Copy, Debug, Default)]
struct ResponseStart {
    seq: Option<u32>,
    ack: Option<u32>,
}

/// `scanned`: the response was found by scanning for a status line, which could also
/// be text inside a body; it is then accepted only exactly where the request's ACK says
/// the client's reading stood (the boundary a keep-alive client leaves).
fn fit(entry: &Entry, resp: ResponseStart, resp_since: Option<u32>, scanned: bool) -> Fit {
    let (Some(req_seq), Some(req_ack), Some(resp_seq), Some(resp_ack)) =
        (entry.request_seq, entry.request_ack, resp.seq, resp.ack)
    else {
        return if scanned { Fit::Missed } else { Fit::Unknown };
    };
    if seq_lt(resp_seq, req_ack) || !seq_lt(req_seq, resp_ack) {
        return Fit::Earlier;
    }
    if scanned && resp_seq != req_ack {
        return Fit::Missed;
    }
    match resp_since {
        Some(since) if !seq_lt(req_ack, since) => Fit::Proven,
        _ => Fit::Missed,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Paired,
    /// Pairing suspended after a loss of synchronization (module docs, rules 2–4).
    Suspended,
    /// Not HTTP/1.x: ignored until it closes.
    Ignored,
}

#[derive(Debug)]
struct Conn {
    requests: Decoder,
    responses: Decoder,
    /// Oldest first. Entries `..answered` have a complete response (their request is
    /// still arriving); entry `answered` receives the response in progress.
    queue: VecDeque<Entry>,
    answered: usize,
    /// The request being received has an entry (the last one).
    request_tracked: bool,
    /// The response being received has an entry (`queue[answered]`).
    response_tracked: bool,
    response_first_ns: u64,
    response_start: ResponseStart,
    mode: Mode,
    pipelining_seen: bool,
    last_used: u64,
    /// Sequence number after the last byte seen, per direction (`Direction::index`).
    next_seq: [Option<u32>; 2],
    /// Response bytes were followed without a join or unbridged gap from here on.
    resp_since: Option<u32>,
    /// Pairing resumed before any response byte was seen since a join: the response
    /// direction is at a boundary only if its next byte is this one.
    resp_expect: Option<u32>,
    /// Joined mid-stream and no proven exchange yet (drops count as `dropped_at_join`).
    joining: bool,
    /// The request direction is scanning after a join or a loss that no tracked request
    /// owns: bytes it passes over are the rest of a request whose start was not seen.
    requests_unowned: bool,
}

impl Conn {
    fn new(limits: Limits, last_used: u64) -> Self {
        Self {
            requests: Decoder::new(Kind::Request, limits),
            responses: Decoder::new(Kind::Response, limits),
            queue: VecDeque::new(),
            answered: 0,
            request_tracked: false,
            response_tracked: false,
            response_first_ns: 0,
            response_start: ResponseStart::default(),
            mode: Mode::Paired,
            pipelining_seen: false,
            last_used,
            next_seq: [None; 2],
            resp_since: None,
            resp_expect: None,
            joining: false,
            requests_unowned: false,
        }
    }

    fn memory_bytes(&self) -> usize {
        let queued: usize = self
            .queue
            .iter()
            .map(|e| {
                e.request
                    .as_ref()
                    .map_or(0, |r| r.body.len() + head_bytes(&r.headers))
                    + e.response
                        .as_ref()
                        .map_or(0, |r| r.body.len() + head_bytes(&r.headers))
            })
            .sum();
        queued + self.requests.buffered_bytes() + self.responses.buffered_bytes()
    }
}

fn head_bytes(headers: &[super::exchange::Header]) -> usize {
    headers.iter().map(|h| h.name.len() + h.value.len()).sum()
}

/// Empty request queues kept for reuse, at most [`SPARE_QUEUES`]: a keep-alive
/// connection's queue empties after every exchange and an idle connection holds none
/// (see [`ExchangeTracker::on_event`]), so without them every request allocated a queue
/// (four entries, about 1 KiB) and every exchange freed it.
pub(crate) const SPARE_QUEUES: usize = 256;

/// At most `max` spare values for reuse (bounded memory: what does not fit is dropped).
#[derive(Debug)]
pub(crate) struct SparePool<T> {
    spare: Vec<T>,
    max: usize,
}

impl<T> SparePool<T> {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            spare: Vec::new(),
            max,
        }
    }

    pub(crate) fn take(&mut self) -> Option<T> {
        self.spare.pop()
    }

    /// Keeps `v` for reuse; false (and `v` dropped) when the pool is full.
    pub(crate) fn give(&mut self, v: T) -> bool {
        if self.spare.len() >= self.max {
            return false;
        }
        self.spare.push(v);
        true
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.spare.len()
    }
}

/// Request queues for reuse.
type SpareQueues = SparePool<VecDeque<Entry>>;

impl Conn {
    /// Before request bytes: an allocated queue from `spare` when this one has none.
    fn lend_queue(&mut self, spare: &mut SpareQueues) {
        if self.queue.capacity() == 0
            && let Some(q) = spare.take()
        {
            self.queue = q;
        }
    }

    /// After an event: an empty queue goes back to `spare`, so an idle keep-alive
    /// connection holds none (its capacity times 100k open connections was most of the
    /// tracker's memory).
    fn return_queue(&mut self, spare: &mut SpareQueues) {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            spare.give(std::mem::take(&mut self.queue));
        }
    }
}

/// Everything an event handler needs besides the connection itself.
struct Sink<'a, F: FnMut(HttpOutput)> {
    flow: FlowKey,
    stats: &'a mut HttpStats,
    out: &'a mut F,
    /// Request heads parsed now start framing-only exchanges (`FrameOnly`).
    frame_only: bool,
}

impl<F: FnMut(HttpOutput)> Sink<'_, F> {
    fn drop_one(&mut self, reason: DropReason, detail: &'static str) {
        tracing::debug!(flow = %self.flow, reason = reason.as_str(), detail, "exchange dropped");
        self.stats.count_drop(reason);
        (self.out)(HttpOutput::Dropped {
            flow: self.flow,
            reason,
            count: 1,
            detail,
        });
    }

    fn drop_entry(&mut self, entry: &mut Entry, reason: DropReason, detail: &'static str) {
        if !entry.dropped {
            entry.dropped = true;
            entry.request = None;
            entry.response = None;
            self.drop_one(reason, detail);
        }
    }
}

/// Which connections' exchanges need framing only, no content (asked once per
/// request-direction segment): the capture thread's "nothing will be replayed" rule
/// (`--sample 0`, inbound traffic). A body then costs its framing, not a copy, and a
/// response head no allocation per header field.
pub struct FrameOnly(Box<dyn Fn(&FlowKey) -> bool + Send>);

impl FrameOnly {
    pub fn new(rule: impl Fn(&FlowKey) -> bool + Send + 'static) -> Self {
        Self(Box::new(rule))
    }

    /// Whether `flow`'s exchanges starting now need framing only.
    pub fn applies(&self, flow: &FlowKey) -> bool {
        (self.0)(flow)
    }
}

impl std::fmt::Debug for FrameOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameOnly")
    }
}

/// Rebuilds exchanges from [`StreamEvent`]s of many connections.
#[derive(Debug)]
pub struct ExchangeTracker {
    frame_only_rule: Option<FrameOnly>,
    limits: Limits,
    max_connections: usize,
    /// Bytes all connections may hold together (buffers, bodies, queued messages).
    budget: usize,
    /// Bytes held now: the sum of every connection's `Conn::memory_bytes`, kept up to
    /// date per event (each event changes one connection).
    held: usize,
    /// Boxed, like the reassembler's flows: a slot is a key and a pointer, so the table's
    /// spare capacity and its growth (old and new table held at once) cost 72 bytes a
    /// slot rather than a whole state's 336 (−21 MiB at the peak with 100k connections).
    conns: FlowMap<Box<Conn>>,
    /// Flows whose state was evicted: if they come back, they are joined mid-stream.
    evicted: FlowSet,
    tick: u64,
    stats: HttpStats,
    spare_queues: SpareQueues,
}

impl ExchangeTracker {
    /// `max_connections`: connection states kept; beyond it the least recently used is
    /// evicted (its pending requests dropped as `Evicted`).
    pub fn new(limits: Limits, max_connections: usize) -> Self {
        Self {
            frame_only_rule: None,
            limits,
            max_connections: max_connections.max(1),
            budget: DEFAULT_BUDGET_BYTES,
            held: 0,
            conns: FlowMap::default(),
            evicted: FlowSet::default(),
            tick: 0,
            stats: HttpStats::default(),
            spare_queues: SparePool::new(SPARE_QUEUES),
        }
    }

    /// Bytes all connections may hold together; past it the connection whose bytes went
    /// over is evicted (its pending requests dropped as `evicted`, counted in
    /// `connections_evicted_budget`). Without a global cap, `max_body_bytes` times the
    /// open connections would bound nothing a host can hold.
    pub fn with_budget(mut self, bytes: usize) -> Self {
        self.budget = bytes.max(1);
        self
    }

    /// Exchanges of connections for which `rule` holds when their request head is parsed
    /// are framed without keeping their content and come out as
    /// [`HttpOutput::FramedOnly`].
    pub fn with_frame_only(mut self, rule: FrameOnly) -> Self {
        self.frame_only_rule = Some(rule);
        self
    }

    pub fn stats(&self) -> &HttpStats {
        &self.stats
    }

    /// Requests seen but not yet reported (in flight on open connections).
    pub fn pending(&self) -> u64 {
        self.conns
            .values()
            .map(|c| c.queue.iter().filter(|e| !e.dropped).count() as u64)
            .sum()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Bytes held for open connections (buffers, bodies, queued messages).
    pub fn memory_bytes(&self) -> usize {
        self.held
    }

    pub fn on_event(&mut self, ev: &StreamEvent<'_>, out: &mut impl FnMut(HttpOutput)) {
        match *ev {
            StreamEvent::Data {
                flow,
                direction,
                ts_ns,
                seq,
                ack,
                bytes,
            } => {
                match direction {
                    Direction::ToServer => self.stats.bytes_to_server += bytes.len() as u64,
                    Direction::ToClient => self.stats.bytes_to_client += bytes.len() as u64,
                }
                let frame_only = direction == Direction::ToServer
                    && self
                        .frame_only_rule
                        .as_ref()
                        .is_some_and(|s| s.applies(&flow));
                let Some((conn, stats, spare)) = self.conn(flow, false, out) else {
                    return;
                };
                let held_before = conn.memory_bytes();
                let before = (stats.dropped(), conn.joining);
                let mut sink = Sink {
                    flow,
                    stats,
                    out,
                    frame_only,
                };
                let at = Position { seq, ack };
                match direction {
                    Direction::ToServer => {
                        conn.lend_queue(spare);
                        on_request_bytes(conn, bytes, ts_ns, at, &mut sink)
                    }
                    Direction::ToClient => on_response_bytes(conn, bytes, ts_ns, at, &mut sink),
                }
                conn.return_queue(spare);
                conn.next_seq[direction.index()] = Some(seq.wrapping_add(bytes.len() as u32));
                count_join_cost(conn, before, sink.stats);
                let held_after = conn.memory_bytes();
                self.held_changed(flow, held_before, held_after, out);
            }
            StreamEvent::Gap {
                flow,
                direction,
                lost_bytes,
                ..
            } => {
                let Some((conn, stats, spare)) = self.conn(flow, true, out) else {
                    return;
                };
                let held_before = conn.memory_bytes();
                let before = (stats.dropped(), conn.joining);
                let mut sink = Sink {
                    flow,
                    stats,
                    out,
                    frame_only: false,
                };
                on_gap(conn, direction, lost_bytes, &mut sink);
                conn.return_queue(spare);
                count_join_cost(conn, before, sink.stats);
                let held_after = conn.memory_bytes();
                self.held_changed(flow, held_before, held_after, out);
            }
            StreamEvent::Closed {
                flow,
                ts_ns,
                reason,
            } => {
                if let Some(mut conn) = self.conns.remove(&flow) {
                    let before = self.stats.dropped();
                    self.held = self.held.saturating_sub(conn.memory_bytes());
                    let mut sink = Sink {
                        flow,
                        stats: &mut self.stats,
                        out,
                        frame_only: false,
                    };
                    close(&mut conn, ts_ns, reason, &mut sink);
                    if reason == CloseReason::EndOfCapture {
                        self.stats.dropped_at_end += self.stats.dropped() - before;
                    }
                }
                self.evicted.remove(&flow);
            }
        }
    }

    /// End of input: every pending request becomes `Dropped{Unpaired}`.
    pub fn finish(&mut self, out: &mut impl FnMut(HttpOutput)) {
        let mut flows: Vec<FlowKey> = self.conns.keys().copied().collect();
        flows.sort();
        for flow in flows {
            if let Some(mut conn) = self.conns.remove(&flow) {
                let before = self.stats.dropped();
                let mut sink = Sink {
                    flow,
                    stats: &mut self.stats,
                    out,
                    frame_only: false,
                };
                drop_all(
                    &mut conn,
                    DropReason::Unpaired,
                    "no response before end of input",
                    &mut sink,
                );
                self.stats.dropped_at_end += self.stats.dropped() - before;
            }
        }
        self.evicted.clear();
        self.held = 0;
    }

    /// Accounts one connection's change in held bytes; over the budget, that connection
    /// (the one whose bytes went over) is evicted.
    fn held_changed(
        &mut self,
        flow: FlowKey,
        before: usize,
        after: usize,
        out: &mut impl FnMut(HttpOutput),
    ) {
        self.held = (self.held + after).saturating_sub(before);
        if self.held <= self.budget {
            return;
        }
        if self.evict_one(
            flow,
            "connection state evicted (tracker memory budget)",
            out,
        ) {
            self.stats.connections_evicted_budget += 1;
        }
    }

    /// Removes one connection's state, drops what it held as `evicted` and remembers the
    /// flow (if it comes back, it is joined mid-stream). False when it was not tracked.
    fn evict_one(
        &mut self,
        flow: FlowKey,
        why: &'static str,
        out: &mut impl FnMut(HttpOutput),
    ) -> bool {
        let Some(mut conn) = self.conns.remove(&flow) else {
            return false;
        };
        self.held = self.held.saturating_sub(conn.memory_bytes());
        let mut sink = Sink {
            flow,
            stats: &mut self.stats,
            out,
            frame_only: false,
        };
        drop_all(&mut conn, DropReason::Evicted, why, &mut sink);
        self.remember_evicted(flow);
        true
    }

    /// A flow whose state is gone: if it comes back, it is joined mid-stream.
    fn remember_evicted(&mut self, flow: FlowKey) {
        if self.evicted.len() >= self.max_connections {
            // Bounded memory over perfect recall: a forgotten flow that comes back is
            // treated as new, and a mid-stream start then fails to parse.
            self.evicted.clear();
        }
        self.evicted.insert(flow);
    }

    /// The connection's state, created if needed. `joined`: created by a gap, so the
    /// stream position is unknown.
    fn conn(
        &mut self,
        flow: FlowKey,
        joined: bool,
        out: &mut impl FnMut(HttpOutput),
    ) -> Option<(&mut Conn, &mut HttpStats, &mut SpareQueues)> {
        self.tick += 1;
        let tick = self.tick;
        if !self.conns.contains_key(&flow) {
            if self.conns.len() >= self.max_connections {
                self.evict(out);
            }
            let mut conn = Conn::new(self.limits, tick);
            if !joined && self.evicted.remove(&flow) {
                // Its earlier state is gone: we are somewhere mid-stream.
                conn.requests.resync();
                conn.responses.resync();
                conn.mode = Mode::Suspended;
                conn.joining = true;
                conn.requests_unowned = true;
            }
            self.stats.connections_opened += 1;
            self.conns.insert(flow, Box::new(conn));
        }
        let conn: &mut Conn = self.conns.get_mut(&flow)?;
        conn.last_used = tick;
        Some((conn, &mut self.stats, &mut self.spare_queues))
    }

    /// Evicts the least recently used sixteenth of the table (at least one), so that the
    /// O(n) search runs once per many new connections.
    fn evict(&mut self, out: &mut impl FnMut(HttpOutput)) {
        let mut ages: Vec<(u64, FlowKey)> =
            self.conns.iter().map(|(k, c)| (c.last_used, *k)).collect();
        let n = (ages.len() / 16).max(1).min(ages.len());
        if n == 0 {
            return;
        }
        ages.select_nth_unstable(n - 1);
        for (_, flow) in ages.into_iter().take(n) {
            if self.evict_one(flow, "connection state evicted (max_connections)", out) {
                self.stats.connections_evicted += 1;
            }
        }
    }
}

/// Where a `Data` event's bytes sit in TCP sequence space.
#[derive(Clone, Copy, Debug)]
struct Position {
    /// Sequence number of the first byte.
    seq: u32,
    /// ACK number of the segment that carried them.
    ack: Option<u32>,
}

impl Position {
    /// The sequence number of `bytes[consumed]`.
    fn at(self, consumed: usize) -> u32 {
        self.seq.wrapping_add(consumed as u32)
    }
}

/// `before`: drops so far and whether the connection was joining, before the event.
fn count_join_cost(conn: &Conn, before: (u64, bool), stats: &mut HttpStats) {
    if before.1 || conn.joining {
        stats.dropped_at_join += stats.dropped() - before.0;
    }
}

fn on_request_bytes<F: FnMut(HttpOutput)>(
    conn: &mut Conn,
    bytes: &[u8],
    ts: u64,
    at: Position,
    sink: &mut Sink<'_, F>,
) {
    let mut rest = bytes;
    while conn.mode != Mode::Ignored {
        let ctx = ResponseCtx {
            frame_only: sink.frame_only,
            ..ResponseCtx::default()
        };
        let step = match conn.requests.decode(rest, ts, ctx) {
            Ok(step) => step,
            Err(e) => {
                on_error(conn, Direction::ToServer, &e, sink);
                // Scan the same bytes again: the next request line may be in them. Each
                // error is preceded by consumed input, so this terminates.
                conn.requests.resync();
                continue;
            }
        };
        rest = rest.get(step.consumed..).unwrap_or_default();
        let Some(event) = step.event else { return };
        match event {
            Event::Started => {
                let start = (at.at(bytes.len() - rest.len()), at.ack);
                request_started(conn, ts, Some(start), sink)
            }
            Event::HeadParsed {
                resynced_at,
                ctx,
                head_len,
            } => {
                if let Some(first_ns) = resynced_at {
                    // Found by scanning. Its ACK is known only if its first byte came in
                    // these bytes (a later segment may acknowledge more).
                    let end = bytes.len() - rest.len();
                    let start = (head_len <= end)
                        .then(|| (at.at(end).wrapping_sub(head_len as u32), at.ack));
                    // After the rest of a request whose start was not seen: that request
                    // may still be waiting for its response, which would come first. Its
                    // position is no proof (a pipelining client sends both before
                    // reading), so this one only holds a place; the next one may resume.
                    let after_unseen =
                        std::mem::take(&mut conn.requests_unowned) && conn.requests.skipped();
                    request_started(conn, first_ns, start.filter(|_| !after_unseen), sink);
                }
                if conn.request_tracked
                    && let Some(entry) = conn.queue.back_mut()
                {
                    entry.ctx = ctx;
                }
            }
            Event::Lost(e) => {
                sink.stats.count_error(&e);
                if conn.request_tracked
                    && let Some(entry) = conn.queue.back_mut()
                {
                    sink.drop_entry(entry, e.drop_reason(), e.detail());
                }
            }
            Event::Complete(message) => {
                request_complete(conn, message, ts, sink);
            }
            Event::Interim => {}
        }
    }
}

/// `start`: sequence number of the request's first byte and the ACK its segment carried.
fn request_started<F: FnMut(HttpOutput)>(
    conn: &mut Conn,
    ts: u64,
    start: Option<(u32, Option<u32>)>,
    sink: &mut Sink<'_, F>,
) {
    sink.stats.requests_started += 1;
    conn.request_tracked = false;
    // A request while an earlier one is unanswered: the client pipelines (or reassembly
    // delivered the directions out of causal order).
    let busy = !conn.queue.is_empty();
    if busy {
        conn.pipelining_seen = true;
    }
    let mut entry = Entry::new(ts);
    if let Some((seq, ack)) = start {
        entry.request_seq = Some(seq);
        entry.request_ack = ack;
    }
    match conn.mode {
        Mode::Ignored => return,
        Mode::Paired if conn.queue.len() >= MAX_PENDING => {
            sink.stats.pipeline_overflow += 1;
            desync(
                conn,
                DropReason::QueueFull,
                "pipelined requests over the pending cap",
                false,
                sink,
            );
            sink.drop_one(
                DropReason::QueueFull,
                "pipelined requests over the pending cap",
            );
            return;
        }
        Mode::Paired => {}
        Mode::Suspended if !busy && can_resume(conn, &entry) => {
            // Rule 4 of the module docs.
            conn.responses.assume_boundary();
            conn.response_tracked = false;
            conn.mode = Mode::Paired;
            // The response bytes are followed from the request's ACK on.
            conn.resp_since = entry.request_ack;
            if conn.next_seq[Direction::ToClient.index()].is_none() {
                conn.resp_expect = entry.request_ack;
            }
            sink.stats.resyncs += 1;
        }
        Mode::Suspended => {
            sink.drop_entry(&mut entry, DropReason::Gap, "request while resynchronizing")
        }
    }
    conn.queue.push_back(entry);
    conn.request_tracked = true;
}

/// Rule 4: the client had read exactly the response bytes seen (or none was seen since
/// a join), so the response direction is at a boundary.
fn can_resume(conn: &Conn, entry: &Entry) -> bool {
    let Some(ack) = entry.request_ack else {
        return false;
    };
    if entry.request_seq.is_none() || !conn.responses.between_messages() {
        return false;
    }
    match conn.next_seq[Direction::ToClient.index()] {
        Some(next) => next == ack,
        None => true,
    }
}

fn request_complete<F: FnMut(HttpOutput)>(
    conn: &mut Conn,
    message: Option<Message>,
    ts: u64,
    sink: &mut Sink<'_, F>,
) {
    if !conn.request_tracked {
        return;
    }
    conn.request_tracked = false;
    if let Some(entry) = conn.queue.back_mut() {
        entry.request_done = true;
        entry.request_last_ns = ts;
        if !entry.dropped
            && let Some(Message::Request(request)) = message
        {
            entry.request = Some(request);
        }
    }
    pop_complete(conn, sink);
}

fn on_response_bytes<F: FnMut(HttpOutput)>(
    conn: &mut Conn,
    bytes: &[u8],
    ts: u64,
    at: Position,
    sink: &mut Sink<'_, F>,
) {
    if conn.next_seq[Direction::ToClient.index()].is_none() {
        // The first response byte since a join.
        conn.resp_since.get_or_insert(at.seq);
        if let Some(expect) = conn.resp_expect.take()
            && expect != at.seq
        {
            // Pairing resumed on the assumption that the response would start here; it
            // does not, so find the next status line. Waiting requests whose ACK is
            // before these bytes lose their response (`Fit::Missed`).
            conn.responses.resync();
            conn.resp_since = Some(at.seq);
        }
    }
    let mut rest = bytes;
    while conn.mode != Mode::Ignored {
        let ctx = conn
            .queue
            .get(conn.answered)
            .map_or_else(ResponseCtx::default, |e| e.ctx);
        let step = match conn.responses.decode(rest, ts, ctx) {
            Ok(step) => step,
            Err(e) => {
                on_error(conn, Direction::ToClient, &e, sink);
                conn.responses.resync();
                continue;
            }
        };
        rest = rest.get(step.consumed..).unwrap_or_default();
        let Some(event) = step.event else { return };
        match event {
            Event::Started => {
                conn.response_first_ns = ts;
                conn.response_start = ResponseStart {
                    seq: Some(at.at(bytes.len() - rest.len())),
                    ack: at.ack,
                };
                conn.response_tracked = select_request(conn, false, sink);
                if !conn.response_tracked {
                    response_unpaired(conn, sink);
                }
            }
            Event::HeadParsed {
                resynced_at,
                head_len,
                ..
            } => {
                if let Some(first_ns) = resynced_at {
                    conn.response_first_ns = first_ns;
                    let end = bytes.len() - rest.len();
                    if head_len <= end {
                        // Found by scanning, its first byte in these bytes: placed.
                        conn.response_start = ResponseStart {
                            seq: Some(at.at(end).wrapping_sub(head_len as u32)),
                            ack: at.ack,
                        };
                        conn.response_tracked = select_request(conn, true, sink);
                    } else {
                        // Where it started is not known, so it cannot be proven to
                        // answer a live request; it only consumes a placeholder.
                        conn.response_start = ResponseStart::default();
                        conn.response_tracked = conn.answered < conn.queue.len();
                        if let Some(entry) = conn.queue.get_mut(conn.answered)
                            && entry.request_seq.is_some()
                        {
                            sink.drop_entry(entry, DropReason::Unpaired, "response start not seen");
                        }
                    }
                    if !conn.response_tracked {
                        response_unpaired(conn, sink);
                    }
                }
            }
            Event::Interim => sink.stats.interim_responses += 1,
            Event::Lost(e) => {
                sink.stats.count_error(&e);
                if conn.response_tracked
                    && let Some(entry) = conn.queue.get_mut(conn.answered)
                {
                    sink.drop_entry(entry, e.drop_reason(), e.detail());
                }
            }
            Event::Complete(message) => response_complete(conn, message, ts, sink),
        }
    }
}

/// A response with no request to answer: counted and skipped. With TCP numbers the
/// response direction is still in step; without them it is a sign of a wrong guess.
fn response_unpaired<F: FnMut(HttpOutput)>(conn: &mut Conn, sink: &mut Sink<'_, F>) {
    sink.stats.responses_unpaired += 1;
    let placed = conn.response_start.seq.is_some() && conn.response_start.ack.is_some();
    if conn.mode == Mode::Paired && !placed {
        desync(
            conn,
            DropReason::Unpaired,
            "response without a pending request",
            false,
            sink,
        );
    }
}

/// Picks the request the response that just started answers (`queue[answered]`),
/// dropping waiting requests whose response was not captured. Returns whether there is
/// one.
fn select_request<F: FnMut(HttpOutput)>(
    conn: &mut Conn,
    scanned: bool,
    sink: &mut Sink<'_, F>,
) -> bool {
    loop {
        let Some(entry) = conn.queue.get_mut(conn.answered) else {
            return false;
        };
        // A placeholder reports nothing: it may consume any response in order.
        let scanned = scanned && !entry.dropped;
        match fit(entry, conn.response_start, conn.resp_since, scanned) {
            Fit::Proven => {
                entry.proven = true;
                return true;
            }
            Fit::Unknown => {
                entry.proven = false;
                return true;
            }
            Fit::Earlier => return false,
            Fit::Missed => {
                sink.drop_entry(entry, DropReason::Unpaired, "response not captured");
                entry.response_done = true;
                conn.answered += 1;
                pop_complete(conn, sink);
            }
        }
    }
}

fn response_complete<F: FnMut(HttpOutput)>(
    conn: &mut Conn,
    message: Option<Message>,
    ts: u64,
    sink: &mut Sink<'_, F>,
) {
    if !conn.response_tracked {
        return;
    }
    conn.response_tracked = false;
    let first_ns = conn.response_first_ns;
    if let Some(entry) = conn.queue.get_mut(conn.answered) {
        entry.response_done = true;
        entry.response_first_ns = first_ns;
        entry.response_last_ns = ts;
        if !entry.dropped
            && let Some(Message::Response(response)) = message
        {
            entry.response = Some(response);
        }
        conn.answered += 1;
    }
    pop_complete(conn, sink);
}

/// Emits the exchanges at the front of the queue whose request and response are done.
fn pop_complete<F: FnMut(HttpOutput)>(conn: &mut Conn, sink: &mut Sink<'_, F>) {
    while conn
        .queue
        .front()
        .is_some_and(|e| e.request_done && e.response_done)
    {
        let Some(entry) = conn.queue.pop_front() else {
            break;
        };
        conn.answered = conn.answered.saturating_sub(1);
        if entry.dropped {
            continue;
        }
        match (entry.request, entry.response) {
            (Some(request), Some(response)) => {
                sink.stats.exchanges += 1;
                if entry.proven {
                    sink.stats.exchanges_proven += 1;
                    conn.joining = false;
                }
                let ex = Exchange {
                    id: CorrelationId::new(),
                    flow: sink.flow,
                    request,
                    response,
                    timing: Timing {
                        request_first_ns: entry.request_first_ns,
                        request_last_ns: entry.request_last_ns,
                        response_first_ns: entry.response_first_ns,
                        response_last_ns: entry.response_last_ns,
                    },
                };
                (sink.out)(if entry.ctx.frame_only {
                    HttpOutput::FramedOnly(ex)
                } else {
                    HttpOutput::Exchange(ex)
                });
            }
            // Both sides done without content and not reported: cannot happen (content
            // is only lost through `drop_entry`), but never lose the count.
            _ => sink.drop_one(DropReason::ParseError, "message content missing"),
        }
    }
}

fn on_gap<F: FnMut(HttpOutput)>(
    conn: &mut Conn,
    direction: Direction,
    lost: u64,
    sink: &mut Sink<'_, F>,
) {
    if conn.mode == Mode::Ignored {
        return;
    }
    let d = direction.index();
    if lost == 0 {
        // A mid-stream join: positions are learnt from the next bytes.
        conn.next_seq[d] = None;
        conn.joining = true;
        if direction == Direction::ToClient {
            conn.resp_since = None;
        }
    } else if let Some(next) = conn.next_seq[d] {
        conn.next_seq[d] = Some(next.wrapping_add(lost as u32));
    }
    let (effect, tracked, index) = match direction {
        Direction::ToServer => (
            conn.requests.on_gap(lost),
            conn.request_tracked,
            conn.queue.len().checked_sub(1),
        ),
        Direction::ToClient => (
            conn.responses.on_gap(lost),
            conn.response_tracked,
            Some(conn.answered),
        ),
    };
    match effect {
        GapEffect::Bridged | GapEffect::BridgedComplete => {
            sink.stats.gaps_bridged += 1;
            if tracked && let Some(entry) = index.and_then(|i| conn.queue.get_mut(i)) {
                sink.drop_entry(entry, DropReason::Gap, "bytes lost inside a body");
            }
            if effect == GapEffect::BridgedComplete {
                match direction {
                    Direction::ToServer => request_complete(conn, None, 0, sink),
                    Direction::ToClient => response_complete(conn, None, 0, sink),
                }
            }
        }
        GapEffect::Desync => {
            if direction == Direction::ToClient {
                // Responses are followed again only after the lost bytes.
                conn.resp_since = conn.next_seq[d];
            } else if !tracked {
                conn.requests_unowned = true;
            }
            desync(
                conn,
                DropReason::Gap,
                "bytes lost in a stream",
                direction == Direction::ToServer,
                sink,
            )
        }
    }
}

fn on_error<F: FnMut(HttpOutput)>(
    conn: &mut Conn,
    direction: Direction,
    e: &FramingError,
    sink: &mut Sink<'_, F>,
) {
    sink.stats.count_error(e);
    tracing::debug!(flow = %sink.flow, ?direction, error = %e, "http framing error");
    if e.protocol().is_some() {
        drop_all(conn, DropReason::Unsupported, e.detail(), sink);
        conn.mode = Mode::Ignored;
    } else {
        desync(
            conn,
            e.drop_reason(),
            e.detail(),
            direction == Direction::ToServer,
            sink,
        );
    }
}

/// Rule 2 of the module docs: drop everything pending and suspend pairing.
/// `keep_placeholders`: the loss is on the request side only, so the response direction
/// is still in step and the dropped requests stay queued to consume their responses.
fn desync<F: FnMut(HttpOutput)>(
    conn: &mut Conn,
    reason: DropReason,
    detail: &'static str,
    keep_placeholders: bool,
    sink: &mut Sink<'_, F>,
) {
    if conn.mode == Mode::Paired {
        sink.stats.desyncs += 1;
    }
    if keep_placeholders {
        // Requests received whole are intact and their responses still come in order;
        // only the one in progress is lost. Requests after the loss wait for rule 4.
        for entry in conn.queue.iter_mut().filter(|e| !e.request_done) {
            sink.drop_entry(entry, reason, detail);
            // Its remaining bytes, if any, are not followed any more.
            entry.request_done = true;
        }
        conn.request_tracked = false;
        pop_complete(conn, sink);
    } else {
        drop_all(conn, reason, detail, sink);
    }
    if conn.mode != Mode::Ignored {
        conn.mode = Mode::Suspended;
    }
}

fn drop_all<F: FnMut(HttpOutput)>(
    conn: &mut Conn,
    reason: DropReason,
    detail: &'static str,
    sink: &mut Sink<'_, F>,
) {
    for mut entry in conn.queue.drain(..) {
        sink.drop_entry(&mut entry, reason, detail);
    }
    conn.answered = 0;
    conn.request_tracked = false;
    conn.response_tracked = false;
}

fn close<F: FnMut(HttpOutput)>(
    conn: &mut Conn,
    ts: u64,
    reason: CloseReason,
    sink: &mut Sink<'_, F>,
) {
    if conn.mode == Mode::Ignored {
        return;
    }
    // The server closing ends a close-delimited body.
    match conn.responses.finish() {
        Ok(Some(message)) => response_complete(conn, Some(message), ts, sink),
        Ok(None) => {}
        Err(_) => {
            if conn.response_tracked
                && let Some(entry) = conn.queue.get_mut(conn.answered)
            {
                sink.drop_entry(entry, DropReason::Unpaired, "response incomplete at close");
            }
        }
    }
    let (reason, detail) = match reason {
        CloseReason::Evicted => (DropReason::Evicted, "connection evicted by reassembly"),
        CloseReason::Fin
        | CloseReason::Reset
        | CloseReason::IdleTimeout
        | CloseReason::PortReuse
        | CloseReason::EndOfCapture => (DropReason::Unpaired, "no complete response before close"),
    };
    drop_all(conn, reason, detail, sink);
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
