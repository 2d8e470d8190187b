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
//! 4. Pairing resumes with a request only if, when it starts, nothing is pending and the
//!    response direction is not inside a parsed message; the response direction is then
//!    declared to be at a message boundary. This relies on the client not pipelining
//!    across the loss (it sent this request after the previous response ended), so a
//!    connection where pipelining was observed never resumes: its later requests are
//!    dropped (`Gap`) until it closes.
//! 5. Safety net: once paired again, a response that does not parse, or arrives with
//!    nothing pending, desynchronizes again (2.). A wrong guess costs drops, never a
//!    mispaired exchange.
use std::collections::{HashMap, HashSet, VecDeque};

use crate::accounting::DropReason;
use crate::capture::{Direction, FlowKey};
use crate::reassembly::{CloseReason, StreamEvent};

use super::decoder::{Decoder, Event, GapEffect, Kind, Message};
use super::error::{FramingError, Limits, OversizeKind, Protocol};
use super::exchange::{CorrelationId, Exchange, Request, Response, Timing};
use super::head::ResponseCtx;

/// Pending (pipelined) requests per connection; beyond it the connection desynchronizes.
pub const MAX_PENDING: usize = 64;

/// What the tracker emits: one item per request it saw.
#[derive(Debug)]
pub enum HttpOutput {
    Exchange(Exchange),
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
            | DropReason::FlowTableFull
            | DropReason::StoreQueueFull
            | DropReason::StoreFailed
            | DropReason::StagePanic
            | DropReason::ShutdownDeadline => &mut self.dropped_unpaired,
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
        }
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
    mode: Mode,
    pipelining_seen: bool,
    last_used: u64,
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
            mode: Mode::Paired,
            pipelining_seen: false,
            last_used,
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

/// Everything an event handler needs besides the connection itself.
struct Sink<'a, F: FnMut(HttpOutput)> {
    flow: FlowKey,
    stats: &'a mut HttpStats,
    out: &'a mut F,
}

impl<F: FnMut(HttpOutput)> Sink<'_, F> {
    fn drop_one(&mut self, reason: DropReason, detail: &'static str) {
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

/// Rebuilds exchanges from [`StreamEvent`]s of many connections.
#[derive(Debug)]
pub struct ExchangeTracker {
    limits: Limits,
    max_connections: usize,
    conns: HashMap<FlowKey, Conn>,
    /// Flows whose state was evicted: if they come back, they are joined mid-stream.
    evicted: HashSet<FlowKey>,
    tick: u64,
    stats: HttpStats,
}

impl ExchangeTracker {
    /// `max_connections`: connection states kept; beyond it the least recently used is
    /// evicted (its pending requests dropped as `Evicted`).
    pub fn new(limits: Limits, max_connections: usize) -> Self {
        Self {
            limits,
            max_connections: max_connections.max(1),
            conns: HashMap::new(),
            evicted: HashSet::new(),
            tick: 0,
            stats: HttpStats::default(),
        }
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
        self.conns.values().map(Conn::memory_bytes).sum()
    }

    pub fn on_event(&mut self, ev: &StreamEvent<'_>, out: &mut impl FnMut(HttpOutput)) {
        match *ev {
            StreamEvent::Data {
                flow,
                direction,
                ts_ns,
                bytes,
            } => {
                match direction {
                    Direction::ToServer => self.stats.bytes_to_server += bytes.len() as u64,
                    Direction::ToClient => self.stats.bytes_to_client += bytes.len() as u64,
                }
                let Some((conn, stats)) = self.conn(flow, false, out) else {
                    return;
                };
                let mut sink = Sink { flow, stats, out };
                match direction {
                    Direction::ToServer => on_request_bytes(conn, bytes, ts_ns, &mut sink),
                    Direction::ToClient => on_response_bytes(conn, bytes, ts_ns, &mut sink),
                }
            }
            StreamEvent::Gap {
                flow,
                direction,
                lost_bytes,
                ..
            } => {
                let Some((conn, stats)) = self.conn(flow, true, out) else {
                    return;
                };
                let mut sink = Sink { flow, stats, out };
                on_gap(conn, direction, lost_bytes, &mut sink);
            }
            StreamEvent::Closed {
                flow,
                ts_ns,
                reason,
            } => {
                if let Some(mut conn) = self.conns.remove(&flow) {
                    let mut sink = Sink {
                        flow,
                        stats: &mut self.stats,
                        out,
                    };
                    close(&mut conn, ts_ns, reason, &mut sink);
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
                let mut sink = Sink {
                    flow,
                    stats: &mut self.stats,
                    out,
                };
                drop_all(
                    &mut conn,
                    DropReason::Unpaired,
                    "no response before end of input",
                    &mut sink,
                );
            }
        }
        self.evicted.clear();
    }

    /// The connection's state, created if needed. `joined`: created by a gap, so the
    /// stream position is unknown.
    fn conn(
        &mut self,
        flow: FlowKey,
        joined: bool,
        out: &mut impl FnMut(HttpOutput),
    ) -> Option<(&mut Conn, &mut HttpStats)> {
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
            }
            self.stats.connections_opened += 1;
            self.conns.insert(flow, conn);
        }
        let conn = self.conns.get_mut(&flow)?;
        conn.last_used = tick;
        Some((conn, &mut self.stats))
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
            if let Some(mut conn) = self.conns.remove(&flow) {
                self.stats.connections_evicted += 1;
                let mut sink = Sink {
                    flow,
                    stats: &mut self.stats,
                    out,
                };
                drop_all(
                    &mut conn,
                    DropReason::Evicted,
                    "connection state evicted (max_connections)",
                    &mut sink,
                );
                if self.evicted.len() >= self.max_connections {
                    // Bounded memory over perfect recall: a forgotten flow that comes back
                    // is treated as new, and a mid-stream start then fails to parse.
                    self.evicted.clear();
                }
                self.evicted.insert(flow);
            }
        }
    }
}

fn on_request_bytes<F: FnMut(HttpOutput)>(
    conn: &mut Conn,
    bytes: &[u8],
    ts: u64,
    sink: &mut Sink<'_, F>,
) {
    let mut rest = bytes;
    while conn.mode != Mode::Ignored {
        let step = match conn.requests.decode(rest, ts, ResponseCtx::default()) {
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
            Event::Started => request_started(conn, ts, sink),
            Event::HeadParsed { resynced_at, ctx } => {
                if let Some(first_ns) = resynced_at {
                    request_started(conn, first_ns, sink);
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

fn request_started<F: FnMut(HttpOutput)>(conn: &mut Conn, ts: u64, sink: &mut Sink<'_, F>) {
    sink.stats.requests_started += 1;
    conn.request_tracked = false;
    // A request while an earlier one is unanswered: the client pipelines (or reassembly
    // delivered the directions out of causal order). Either way rule 4 cannot be trusted.
    let busy = !conn.queue.is_empty();
    if busy {
        conn.pipelining_seen = true;
    }
    let mut entry = Entry::new(ts);
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
        Mode::Suspended if !busy && !conn.pipelining_seen && conn.responses.between_messages() => {
            // Rule 4 of the module docs.
            conn.responses.assume_boundary();
            conn.response_tracked = false;
            conn.mode = Mode::Paired;
            sink.stats.resyncs += 1;
        }
        Mode::Suspended if conn.pipelining_seen => {
            // Never resumes: no placeholder needed, and none accumulates.
            sink.drop_one(
                DropReason::Gap,
                "pipelining connection cannot resynchronize",
            );
            return;
        }
        Mode::Suspended => {
            sink.drop_entry(&mut entry, DropReason::Gap, "request while resynchronizing")
        }
    }
    conn.queue.push_back(entry);
    conn.request_tracked = true;
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
    sink: &mut Sink<'_, F>,
) {
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
            Event::Started => conn.response_first_ns = ts,
            Event::HeadParsed { resynced_at, .. } => {
                if let Some(first_ns) = resynced_at {
                    conn.response_first_ns = first_ns;
                }
                conn.response_tracked = conn.answered < conn.queue.len();
                if !conn.response_tracked {
                    sink.stats.responses_unpaired += 1;
                    if conn.mode == Mode::Paired {
                        desync(
                            conn,
                            DropReason::Unpaired,
                            "response without a pending request",
                            false,
                            sink,
                        );
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
                (sink.out)(HttpOutput::Exchange(Exchange {
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
                }));
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
        GapEffect::Desync => desync(
            conn,
            DropReason::Gap,
            "bytes lost in a stream",
            direction == Direction::ToServer,
            sink,
        ),
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
        for entry in conn.queue.iter_mut() {
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
