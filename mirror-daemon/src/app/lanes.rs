//! The shape of the captured traffic, kept on the candidate side: one lane per captured
//! connection, each owning one candidate connection. A lane replays its exchanges in
//! captured order; requests that were pipelined on the captured connection are written
//! back to back before their responses are read; the candidate connection is closed when
//! legacy's was (a `Connection: close` on either side) or after [`LANE_IDLE`] without
//! traffic.
//!
//! Bounded: at most `max` lanes (candidate connections); waiting per lane at most
//! [`LANE_QUEUE`] exchanges and [`LANE_BYTES`] bytes, across all lanes
//! [`REPLAY_QUEUE`](crate::pipeline::REPLAY_QUEUE) exchanges and [`REPLAY_QUEUE_BYTES`]
//! bytes; an exchange that finds no room is dropped and counted as `replay_queue_full`
//! (those refused by a byte bound also in the replay's summary line), and the capture
//! never waits. An exchange its lane reaches more than `--replay-max-lateness`
//! ([`LANE_MAX_LATE`], 10 s, by default) after it was due is dropped and counted as
//! `replay_late`, so a hanging candidate leaves no minutes of backlog behind one
//! connection.
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::mpsc::{self, error::TrySendError},
    task::{JoinHandle, JoinSet},
    time::{Instant, sleep_until, timeout},
};

use super::shadow::Shadow;
use crate::{
    accounting::{CandidateErrorKind, DropReason, Outcome},
    capture::FlowKey,
    http::{CorrelationId, Exchange, Request, Response, Timing, header},
    mask::Taint,
    pipeline::REPLAY_QUEUE,
    replay::{Attempt, CandidateConn, ReplayResult, Replayer},
};

/// A lane closes its candidate connection after this long without an exchange (the
/// capture does not report connection closes, only exchanges).
pub const LANE_IDLE: Duration = Duration::from_secs(5);
/// Requests written back to back on one connection at most.
const MAX_PIPELINE: usize = 16;

/// Exchanges waiting in one lane at most: each waits there up to the live delay (or the
/// hand-over lead), 50 ms, so this holds that long of ~40k requests per second on one
/// connection (256 places capped one keep-alive connection at ~5k/s); memory is bounded
/// by [`LANE_BYTES`], and the queue's places are allocated as used.
pub const LANE_QUEUE: usize = 2048;
/// Bytes (bodies, heads, a fixed overhead: [`held_bytes`]) waiting in one lane at most:
/// a fast connection of small exchanges fits; one of large bodies holds a few of them,
/// so a hanging candidate does not leave minutes of backlog behind one connection.
pub const LANE_BYTES: usize = 8 * 1024 * 1024;
/// Bytes waiting in all lanes together at most.
pub const REPLAY_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// What an exchange costs a queue beyond its bodies and head fields: the structs, the
/// timing, the queue's slot.
const EXCHANGE_OVERHEAD_BYTES: usize = 512;

/// The bytes `ex` holds while it waits in a lane (bodies, head fields, a fixed overhead).
pub fn held_bytes(ex: &Exchange) -> usize {
    let heads: usize = ex
        .request
        .headers
        .iter()
        .chain(&ex.response.headers)
        .map(|h| h.name.len() + h.value.len())
        .sum();
    EXCHANGE_OVERHEAD_BYTES
        + ex.request.target.len()
        + heads
        + ex.request.body.len()
        + ex.response.body.len()
}

/// What waits in a queue: exchanges and their bytes ([`held_bytes`]).
#[derive(Debug, Default)]
pub struct Held {
    exchanges: AtomicUsize,
    bytes: AtomicUsize,
}

/// Why a queue refused an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Count,
    Bytes,
}

/// A bound on what waits: at most `exchanges` and `bytes`. An exchange alone always fits
/// an empty queue, so one larger than the byte bound is replayed, not starved.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub exchanges: usize,
    pub bytes: usize,
}

impl Held {
    /// Whether one more exchange of `bytes` fits under `bound` (nothing taken yet).
    pub fn fits(&self, bound: Bound, bytes: usize) -> Result<(), Refused> {
        let n = self.exchanges.load(Ordering::Relaxed);
        if n >= bound.exchanges {
            return Err(Refused::Count);
        }
        let held = self.bytes.load(Ordering::Relaxed);
        if n > 0 && held.saturating_add(bytes) > bound.bytes {
            return Err(Refused::Bytes);
        }
        Ok(())
    }

    pub fn add(&self, bytes: usize) {
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn take(&self, bytes: usize) {
        self.exchanges.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

const LANE_BOUND: Bound = Bound {
    exchanges: LANE_QUEUE,
    bytes: LANE_BYTES,
};
const ALL_LANES_BOUND: Bound = Bound {
    exchanges: REPLAY_QUEUE,
    bytes: REPLAY_QUEUE_BYTES,
};

/// What a lane is told, in capture order, each with the instant it is due (paced input:
/// the lane masks it meanwhile and waits; `None`: at once).
enum LaneItem {
    Exchange(Exchange, Option<Instant>),
    /// The captured connection closed: close the candidate connection too.
    Close(Option<Instant>),
}

/// One lane as the dispatcher sees it: its queue and what waits there.
struct LaneTx {
    tx: mpsc::Sender<LaneItem>,
    held: Arc<Held>,
}

/// The lanes of the run, keyed by captured connection.
pub struct Lanes {
    max: usize,
    lanes: HashMap<FlowKey, LaneTx>,
    tasks: JoinSet<()>,
    /// Exchanges offered to a lane and not yet taken off its queue, all lanes together.
    queued: Arc<Held>,
    /// Exchanges refused because a byte bound was reached (part of `replay_queue_full`).
    refused_for_bytes: u64,
}

impl Lanes {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            lanes: HashMap::new(),
            tasks: JoinSet::new(),
            queued: Arc::new(Held::default()),
            refused_for_bytes: 0,
        }
    }

    /// Exchanges refused so far because a lane's or all lanes' bytes were at their bound.
    pub fn refused_for_bytes(&self) -> u64 {
        self.refused_for_bytes
    }

    /// Hands `ex` to its connection's lane (opening one if there is room); false when
    /// there is none, for the caller to count as dropped.
    /// `send_at`: when to write it to the candidate (paced input), else at once.
    pub fn offer(&mut self, shadow: &Arc<Shadow>, ex: Exchange, send_at: Option<Instant>) -> bool {
        let bytes = held_bytes(&ex);
        let offered = self
            .queued
            .fits(ALL_LANES_BOUND, bytes)
            .and_then(|()| self.try_offer(shadow, ex, send_at, bytes));
        if offered == Err(Refused::Bytes) {
            self.refused_for_bytes += 1;
        }
        offered.is_ok()
    }

    fn try_offer(
        &mut self,
        shadow: &Arc<Shadow>,
        ex: Exchange,
        send_at: Option<Instant>,
        bytes: usize,
    ) -> Result<(), Refused> {
        while self.tasks.try_join_next().is_some() {}
        let ex = match self.lanes.get(&ex.flow) {
            Some(lane) => {
                lane.held.fits(LANE_BOUND, bytes)?;
                // Counted before it is queued: the lane takes it off as soon as it is.
                lane.held.add(bytes);
                self.queued.add(bytes);
                match lane.tx.try_send(LaneItem::Exchange(ex, send_at)) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        lane.held.take(bytes);
                        self.queued.take(bytes);
                        match e {
                            TrySendError::Full(_) => return Err(Refused::Count),
                            TrySendError::Closed(LaneItem::Exchange(ex, _)) => {
                                self.lanes.remove(&ex.flow);
                                ex
                            }
                            TrySendError::Closed(LaneItem::Close(_)) => return Ok(()),
                        }
                    }
                }
            }
            None => ex,
        };
        if self.lanes.len() >= self.max {
            self.lanes.retain(|_, lane| !lane.tx.is_closed());
        }
        if self.lanes.len() >= self.max {
            return Err(Refused::Count);
        }
        let (tx, rx) = mpsc::channel(LANE_QUEUE);
        let held = Arc::new(Held::default());
        let flow = ex.flow;
        held.add(bytes);
        self.queued.add(bytes);
        if tx.try_send(LaneItem::Exchange(ex, send_at)).is_err() {
            held.take(bytes);
            self.queued.take(bytes);
            return Err(Refused::Count);
        }
        self.tasks
            .spawn(lane(shadow.clone(), rx, self.queued.clone(), held.clone()));
        self.lanes.insert(flow, LaneTx { tx, held });
        Ok(())
    }

    /// The captured connection `flow` closed: its lane finishes what it holds, then closes
    /// the candidate connection. (When its queue is full the lane closes when idle.)
    pub fn close(&mut self, flow: &FlowKey, at: Option<Instant>) {
        if let Some(lane) = self.lanes.remove(flow) {
            let _ = lane.tx.try_send(LaneItem::Close(at));
        }
    }

    /// Lets every lane finish what it holds, then closes their connections.
    pub async fn finish(mut self) {
        self.lanes.clear();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Whether `next` was written on the captured connection before `head`'s response was
/// complete (HTTP/1.1 pipelining).
fn pipelined(head: &Timing, next: &Timing) -> bool {
    next.request_first_ns < head.response_last_ns
}

/// Whether legacy's connection ended with this exchange.
fn legacy_closed(req: &Request, resp: &Response) -> bool {
    let close = |h: &[crate::http::Header]| {
        header(h, "connection").is_some_and(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"))
        })
    };
    let keep_alive_10 = |h: &[crate::http::Header]| {
        header(h, "connection").is_some_and(|v| v.eq_ignore_ascii_case(b"keep-alive"))
    };
    close(&req.headers)
        || close(&resp.headers)
        || (resp.version == 0 && !keep_alive_10(&resp.headers))
}

/// One exchange ready to go: the captured one, its masked twin, the bytes for the
/// candidate and for the secondary (`--secondary`).
struct Prepared {
    ex: Exchange,
    masked: Exchange,
    /// The request values masking removed, masked again wherever a response echoes them.
    taint: Taint,
    wire: Vec<u8>,
    secondary_wire: Option<Vec<u8>>,
}

/// A captured exchange, its masked twin and what masking removed from its request.
type Masked = (Exchange, Exchange, Taint);

/// Exchanges whose bodies (request and legacy response) are at most this long together
/// are masked and compared on the lane's own thread (see [`in_place`]): tens of
/// microseconds, less than the hand-over to the blocking pool costs (a thread woken per
/// exchange, twice: most of the live run's CPU beyond the stages). Longer ones still go
/// to the blocking pool, so a large body never holds the runtime's timers and sockets for
/// milliseconds.
const IN_PLACE_BODY_BYTES: usize = 16 * 1024;

/// Whether `ex` is masked or compared on the lane's thread: by its size only. A lane that
/// has fallen behind keeps doing so too: it fell behind because the daemon was short
/// of CPU (its quota, or a busy host at `SCHED_IDLE`), and the pool's threads add no CPU
/// then, only a hand-over per exchange (two thread wake-ups and context switches), so
/// handing its exchanges to the pool made each cost more just when CPU was short
/// (round 5b of docs/fidelity.md: the blocking pool's wake-ups were the largest source of
/// context switches of a live run that fell behind).
fn in_place(ex: &Exchange) -> bool {
    ex.request.body.len() + ex.response.body.len() <= IN_PLACE_BODY_BYTES
}

/// An exchange's masking: done in place, or running on the blocking pool.
enum Masking {
    Done(Box<std::thread::Result<Masked>>),
    Pool(JoinHandle<Masked>),
}

impl Masking {
    /// The masked exchange, or the outcome to count when masking panicked (or was cut by
    /// the shutdown deadline).
    async fn get(self) -> Result<Masked, Outcome> {
        match self {
            Masking::Done(done) => (*done).map_err(|_| {
                tracing::error!("masking an exchange panicked; the exchange is dropped");
                Outcome::Dropped(DropReason::StagePanic)
            }),
            Masking::Pool(job) => job.await.map_err(|e| super::shadow::stage_failure(&e)),
        }
    }
}

/// An item taken from the lane's queue: an exchange being masked (CPU work, started as
/// soon as it is queued so it overlaps the candidate's time), or a close.
enum Ahead {
    Exchange {
        id: CorrelationId,
        timing: Timing,
        masked: Masking,
        send_at: Option<Instant>,
    },
    Close(Option<Instant>),
}

fn mask(shadow: &Shadow, ex: Exchange) -> Masked {
    let (masked, taint) = shadow.masker.mask_exchange_tainted(&ex);
    (ex, masked, taint)
}

fn start(shadow: &Arc<Shadow>, item: LaneItem) -> Ahead {
    match item {
        LaneItem::Close(at) => Ahead::Close(at),
        LaneItem::Exchange(ex, send_at) => {
            let (id, timing) = (ex.id, ex.timing);
            let masked = if in_place(&ex) {
                let me = &**shadow;
                let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| mask(me, ex)));
                Masking::Done(Box::new(done))
            } else {
                let me = shadow.clone();
                Masking::Pool(tokio::task::spawn_blocking(move || mask(&me, ex)))
            };
            Ahead::Exchange {
                id,
                send_at,
                timing,
                masked,
            }
        }
    }
}

/// A lane more than this behind an exchange's due time drops it (`replay_late`) instead
/// of sending it (the default of `--replay-max-lateness`): a hanging
/// candidate then leaves no minutes of backlog behind a connection, whatever the lane's
/// bounds hold. Seconds, not less: a burst legacy served faster than the candidate
/// connection's round trips allow falls behind by that much and is still replayed
/// whole (e2e `shadow`: 1 s dropped half of a 2000-request burst under load).
pub const LANE_MAX_LATE: Duration = Duration::from_secs(10);

/// The drop of an exchange due at `send_at` (`None`: unpaced, never late) that its lane
/// reaches at `now`: `replay_late` when it is more than `bound` late, else none (sent).
fn lateness_drop(send_at: Option<Instant>, now: Instant, bound: Duration) -> Option<DropReason> {
    send_at
        .is_some_and(|at| now.saturating_duration_since(at) > bound)
        .then_some(DropReason::ReplayLate)
}

/// Exchanges masked ahead of the one in flight, per lane, at most.
const MAX_AHEAD: usize = 16;
/// Batches being compared and recorded, per lane, at most (the lane waits beyond).
const MAX_CONCLUDING: usize = 32;

/// One captured connection's exchanges, in order, over one candidate connection. Masking
/// runs ahead and comparing runs behind, so the candidate connection is never idle for
/// the daemon's own work.
async fn lane(
    shadow: Arc<Shadow>,
    mut rx: mpsc::Receiver<LaneItem>,
    queued: Arc<Held>,
    held: Arc<Held>,
) {
    let max_lateness = shadow.replayer.config().max_lateness;
    let start = |item: LaneItem| {
        if let LaneItem::Exchange(ex, _) = &item {
            let bytes = held_bytes(ex);
            queued.take(bytes);
            held.take(bytes);
        }
        start(&shadow, item)
    };
    let mut conn: Option<CandidateConn> = None;
    let mut secondary_conn: Option<CandidateConn> = None;
    let mut ahead: VecDeque<Ahead> = VecDeque::new();
    let mut concluding = JoinSet::new();
    // Small exchanges replied to, waiting for their requests' transmit stamps.
    let mut unsettled: Vec<Concluding> = Vec::new();
    let mut unsettled_since = Instant::now();
    loop {
        while ahead.len() < MAX_AHEAD {
            match rx.try_recv() {
                Ok(item) => ahead.push_back(start(item)),
                Err(_) => break,
            }
        }
        if ahead.is_empty() {
            // Nothing else to do: conclude what waits before waiting.
            settle(&shadow, [&mut conn, &mut secondary_conn], &mut unsettled);
            conclude_yielding(&shadow, &mut unsettled).await;
            match timeout(LANE_IDLE, rx.recv()).await {
                Ok(Some(item)) => ahead.push_back(start(item)),
                Ok(None) => break,
                Err(_) => {
                    // Idle: close the connection and take no more; what is already
                    // queued is still replayed (on a new connection).
                    conn = None;
                    secondary_conn = None;
                    rx.close();
                    continue;
                }
            }
        }
        while concluding.try_join_next().is_some() {}
        while concluding.len() >= MAX_CONCLUDING && concluding.join_next().await.is_some() {}
        let (id, timing, masked, send_at) = match ahead.pop_front() {
            Some(Ahead::Exchange {
                id,
                timing,
                masked,
                send_at,
            }) => (id, timing, masked, send_at),
            Some(Ahead::Close(at)) => {
                wait_until(at).await;
                conn = None;
                secondary_conn = None;
                continue;
            }
            None => continue,
        };
        let mut batch = vec![masked];
        let mut ids = vec![id];
        while batch.len() < MAX_PIPELINE {
            match ahead.front() {
                Some(Ahead::Exchange { timing: next, .. }) if pipelined(&timing, next) => {
                    if let Some(Ahead::Exchange { masked, id, .. }) = ahead.pop_front() {
                        batch.push(masked);
                        ids.push(id);
                    }
                }
                _ => break,
            }
        }
        if let Some(reason) = lateness_drop(send_at, Instant::now(), max_lateness) {
            // Behind a hanging candidate (or a starved daemon): dropped and counted
            // rather than sent in a burst long after legacy got them.
            for id in &ids {
                if let Some(e) = &shadow.effects {
                    e.forget(id);
                }
                shadow.finish(Outcome::Dropped(reason));
            }
            continue;
        }
        let Some(prepared) = prepare(&shadow, batch).await else {
            continue;
        };
        // Paced: masked while waiting, written when due, so each connection keeps the
        // spacing legacy saw instead of the bursts of the ring's polling or of masking.
        wait_until(send_at).await;
        let closes = prepared
            .last()
            .is_some_and(|p| legacy_closed(&p.ex.request, &p.ex.response));
        // The secondary (`--secondary`) gets the same requests at the same time over its
        // own connection for this captured one.
        let (replies, secondary) = {
            let to_candidate: Vec<(&[u8], &str)> = prepared
                .iter()
                .map(|p| (&p.wire[..], p.ex.request.method.as_str()))
                .collect();
            let to_secondary: Option<Vec<(&[u8], &str)>> = prepared
                .iter()
                .map(|p| Some((p.secondary_wire.as_deref()?, p.ex.request.method.as_str())))
                .collect();
            let secondary = async {
                match (&shadow.secondary, &to_secondary) {
                    (Some(s), Some(batch)) => {
                        Some(replay_batch(s, &mut secondary_conn, batch).await)
                    }
                    _ => None,
                }
            };
            tokio::join!(
                replay_batch(&shadow.replayer, &mut conn, &to_candidate),
                secondary
            )
        };
        if closes {
            conn = None;
            secondary_conn = None;
        }
        let small = prepared.iter().all(|p| in_place(&p.ex));
        let mut done = with_replies(prepared, replies, secondary);
        if small {
            // Small: compared and recorded here, no hand-over, once SETTLE_EVERY have
            // been replied to: their transmit stamps are then read in one system call.
            if unsettled.is_empty() {
                unsettled_since = Instant::now();
            }
            unsettled.append(&mut done);
            let bytes: usize = unsettled.iter().map(|c| held_bytes(&c.0)).sum();
            if unsettled.len() >= SETTLE_EVERY
                || bytes >= SETTLE_BYTES
                || unsettled_since.elapsed() >= SETTLE_WITHIN
            {
                settle(&shadow, [&mut conn, &mut secondary_conn], &mut unsettled);
                conclude_yielding(&shadow, &mut unsettled).await;
            }
        } else {
            settle(&shadow, [&mut conn, &mut secondary_conn], &mut done);
            concluding.spawn(conclude(shadow.clone(), done));
        }
    }
    settle(&shadow, [&mut conn, &mut secondary_conn], &mut unsettled);
    conclude_yielding(&shadow, &mut unsettled).await;
    while concluding.join_next().await.is_some() {}
}

/// Small exchanges a lane concludes together, at most, so their requests' transmit
/// stamps are read from the error queue in one system call (`stamps::TX_BATCH` per call)
/// rather than one per request. It delays their outcomes by as many exchanges of their
/// connection (about 0.1 s at 10k req/s over 64 connections, at most [`SETTLE_WITHIN`]);
/// a lane with nothing else queued concludes what it holds before it waits.
const SETTLE_EVERY: usize = 16;
/// ... or once the first of them has waited this long, so a slow candidate's outcomes
/// (each a timeout long) are not held 16 timeouts (e2e `reliability`: a run stopped
/// right after its load had them still in flight) ...
const SETTLE_WITHIN: Duration = Duration::from_millis(100);
/// ... or exchanges holding this many bytes (`held_bytes`), so what a lane holds back is
/// bounded in bytes too (all lanes: `--concurrency` times this).
const SETTLE_BYTES: usize = 64 * 1024;

/// Concludes `done` on the lane's thread, one exchange at a time, letting the runtime run
/// its other tasks once a millisecond has gone: concluding a whole batch at once held a
/// worker for the batch's time (seconds in a debug build under load), so other lanes'
/// timeouts fired late and the API did not answer (e2e `shadow`, hanging candidate).
async fn conclude_yielding(shadow: &Shadow, done: &mut Vec<Concluding>) {
    let mut since = Instant::now();
    for c in done.drain(..) {
        conclude_all(shadow, [c]);
        if since.elapsed() > Duration::from_millis(1) {
            tokio::task::yield_now().await;
            since = Instant::now();
        }
    }
}

/// Times `done`'s replies with their requests' transmit stamps (read from `conns` now;
/// a connection dropped since read its own when it closed) and counts them in their
/// replayer's figures.
fn settle<const N: usize>(
    shadow: &Shadow,
    conns: [&mut Option<CandidateConn>; N],
    done: &mut [Concluding],
) {
    if done.is_empty() {
        return;
    }
    for conn in conns.into_iter().flatten() {
        conn.read_tx_stamps();
    }
    for (_, _, _, reply, secondary) in done.iter_mut() {
        if let Ok(r) = reply {
            r.settle();
        }
        shadow.replayer.figures.reply(reply);
        if let (Some(s), Some(r)) = (&shadow.secondary, secondary) {
            if let Ok(r) = r {
                r.settle();
            }
            s.figures.reply(r);
        }
    }
}

/// Sleeps until `at` when it is still ahead (a past deadline would wait for the timer's
/// next tick). tokio's timer wakes on whole milliseconds, so lanes due within the same
/// millisecond write together; a per-lane `timerfd` that woke each lane at its own due
/// time was tried and made the identical candidate slower at 1k req/s in both
/// measured runs (docs/fidelity.md, round 2), so it was not kept; neither was one pacer
/// thread writing every lane's batch at its instant (round 3: not shown to help on the
/// loaded box, and never reached at 10k req/s, where a starved daemon's lanes are late).
async fn wait_until(at: Option<Instant>) {
    if let Some(at) = at.filter(|at| *at > Instant::now()) {
        sleep_until(at).await;
    }
}

/// Waits for the batch's masking and builds the requests' bytes.
async fn prepare(shadow: &Arc<Shadow>, batch: Vec<Masking>) -> Option<Vec<Prepared>> {
    let mut prepared = Vec::with_capacity(batch.len());
    for job in batch {
        let (ex, masked, taint) = match job.get().await {
            Ok(done) => done,
            Err(outcome) => {
                shadow.finish(outcome);
                continue;
            }
        };
        let to_send = if shadow.replay_raw {
            &ex.request
        } else {
            &masked.request
        };
        if let Some(e) = &shadow.effects {
            e.bind_sent(ex.id, to_send);
        }
        let mut wire = Vec::with_capacity(512 + to_send.body.len());
        shadow.replayer.wire(to_send, &ex.id, &mut wire);
        let secondary_wire = shadow.secondary.as_ref().map(|s| {
            let mut w = Vec::with_capacity(wire.len());
            s.wire(to_send, &ex.id, &mut w);
            w
        });
        prepared.push(Prepared {
            ex,
            masked,
            taint,
            wire,
            secondary_wire,
        });
    }
    (!prepared.is_empty()).then_some(prepared)
}

/// Writes the batch's requests back to back, then reads their responses in order. A
/// reused connection that turns out dead before any response byte is replaced once.
async fn replay_batch(
    replayer: &Replayer,
    conn: &mut Option<CandidateConn>,
    batch: &[(&[u8], &str)],
) -> Vec<ReplayResult> {
    let cfg = replayer.config();
    let all = |kind: CandidateErrorKind| vec![Err(kind); batch.len()];
    for attempt in 0..2 {
        let fresh = conn.is_none();
        if fresh {
            match timeout(cfg.timeout, replayer.connect()).await {
                Ok(Ok(c)) => *conn = Some(c),
                Ok(Err(kind)) => return all(kind),
                Err(_) => return all(CandidateErrorKind::Timeout),
            }
        }
        let Some(c) = conn.as_mut() else {
            return all(CandidateErrorKind::Refused);
        };
        let retry = |a: Attempt| a == Attempt::Stale && !fresh && attempt == 0;
        let mut sent = Vec::with_capacity(batch.len());
        let mut failed = None;
        for (wire, _) in batch {
            match timeout(cfg.timeout, c.write_request(wire)).await {
                Ok(Ok(s)) => sent.push(s),
                Ok(Err(a)) => {
                    failed = Some(a);
                    break;
                }
                Err(_) => {
                    failed = Some(Attempt::Failed(CandidateErrorKind::Timeout));
                    break;
                }
            }
        }
        replayer
            .figures
            .requests
            .fetch_add(sent.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(a) = failed {
            *conn = None;
            if retry(a) {
                continue;
            }
            return all(a.kind());
        }
        let mut out: Vec<ReplayResult> = Vec::with_capacity(batch.len());
        for ((_, method), s) in batch.iter().zip(sent) {
            let read = timeout(cfg.timeout, c.read_response(method, cfg.limits, s)).await;
            let failure = match read {
                Ok(Ok((reply, open))) => {
                    out.push(Ok(reply));
                    if open {
                        continue;
                    }
                    // The candidate closed: requests still pipelined behind are lost.
                    Attempt::Failed(CandidateErrorKind::Reset)
                }
                Ok(Err(a)) if out.is_empty() && retry(a) => break,
                Ok(Err(a)) => a,
                Err(_) => Attempt::Failed(CandidateErrorKind::Timeout),
            };
            *conn = None;
            out.resize(batch.len(), Err(failure.kind()));
            return out;
        }
        if out.len() == batch.len() {
            return out;
        }
        *conn = None;
    }
    all(CandidateErrorKind::Reset)
}

/// The batch's exchanges with their candidate's and secondary's replies.
fn with_replies(
    prepared: Vec<Prepared>,
    replies: Vec<ReplayResult>,
    secondary: Option<Vec<ReplayResult>>,
) -> Vec<Concluding> {
    let n = prepared.len();
    let secondary: Vec<Option<ReplayResult>> = match secondary {
        Some(v) => v.into_iter().map(Some).collect(),
        None => std::iter::repeat_with(|| None).take(n).collect(),
    };
    prepared
        .into_iter()
        .zip(replies)
        .zip(secondary)
        .map(|((p, reply), sec)| (p.ex, p.masked, p.taint, reply, sec))
        .collect()
}

/// Compares and records each exchange of the batch (on the blocking pool).
async fn conclude(shadow: Arc<Shadow>, done: Vec<Concluding>) {
    let n = done.len();
    let me = shadow.clone();
    let finished = tokio::task::spawn_blocking(move || conclude_all(&me, done)).await;
    if finished.is_err() {
        // Only a runtime stopping at the shutdown deadline cancels this task; the ledger's
        // seal counts what it held as `shutdown_deadline`.
        tracing::warn!(
            exchanges = n,
            "concluding a batch was cut by the shutdown deadline"
        );
    }
}

/// An exchange ready to be compared and recorded.
type Concluding = (
    Exchange,
    Exchange,
    Taint,
    ReplayResult,
    Option<ReplayResult>,
);

/// Compares and records each exchange, each in its own outcome.
fn conclude_all(shadow: &Shadow, done: impl IntoIterator<Item = Concluding>) {
    for (ex, masked, taint, reply, secondary) in done {
        // One exchange's bug must not lose the rest of the batch from the ledger.
        let concluded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shadow.conclude(ex, masked, &taint, reply, secondary)
        }));
        if concluded.is_err() {
            tracing::error!("comparing or recording an exchange panicked; it is dropped");
            shadow.finish(Outcome::Dropped(DropReason::StagePanic));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Header;

    fn ex(req_first: u64, resp_last: u64, conn: &str) -> Exchange {
        Exchange {
            id: crate::http::CorrelationId::new(),
            flow: FlowKey {
                client: "10.0.0.1:5000".parse().unwrap(),
                server: "10.0.0.2:80".parse().unwrap(),
            },
            request: Request {
                method: "GET".into(),
                target: "/".into(),
                version: 1,
                headers: vec![],
                body: bytes::Bytes::new(),
            },
            response: Response {
                version: 1,
                status: 200,
                reason: "OK".into(),
                headers: vec![Header::new("Connection", conn.as_bytes())],
                body: bytes::Bytes::new(),
            },
            timing: Timing {
                request_first_ns: req_first,
                request_last_ns: req_first,
                response_first_ns: resp_last,
                response_last_ns: resp_last,
            },
        }
    }

    #[test]
    fn pipelining_is_read_from_the_capture_timing() {
        let head = ex(100, 500, "").timing;
        assert!(pipelined(&head, &ex(200, 900, "").timing));
        assert!(!pipelined(&head, &ex(600, 900, "").timing));
    }

    #[test]
    fn an_exchange_holds_its_bodies_heads_and_an_overhead() {
        let mut e = ex(1, 2, "keep-alive");
        let small = held_bytes(&e);
        assert_eq!(
            small,
            EXCHANGE_OVERHEAD_BYTES + "/".len() + "Connection".len() + "keep-alive".len()
        );
        e.request.body = bytes::Bytes::from(vec![b'x'; 1000]);
        e.response.body = bytes::Bytes::from(vec![b'y'; 3000]);
        assert_eq!(held_bytes(&e), small + 4000);
    }

    #[test]
    fn a_queue_refuses_by_count_and_by_bytes_and_frees_what_is_taken() {
        let bound = Bound {
            exchanges: 3,
            bytes: 1000,
        };
        let q = Held::default();
        // Many small exchanges: the count binds.
        for _ in 0..3 {
            assert_eq!(q.fits(bound, 10), Ok(()));
            q.add(10);
        }
        assert_eq!(q.fits(bound, 10), Err(Refused::Count));
        q.take(10);
        assert_eq!(q.fits(bound, 10), Ok(()));
        // Large ones: the bytes bind before the count.
        let q = Held::default();
        q.add(600);
        assert_eq!(q.fits(bound, 400), Ok(()));
        assert_eq!(q.fits(bound, 401), Err(Refused::Bytes));
        q.take(600);
        // Alone, an exchange over the byte bound still fits an empty queue...
        assert_eq!(q.fits(bound, 5000), Ok(()));
        q.add(5000);
        // ...and nothing fits behind it until it is taken.
        assert_eq!(q.fits(bound, 1), Err(Refused::Bytes));
        q.take(5000);
        assert_eq!(q.exchanges.load(Ordering::Relaxed), 0);
        assert_eq!(q.bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn one_fast_connection_fits_a_lane_for_the_live_delay() {
        // 10k small requests per second on one keep-alive connection, each waiting the
        // live delay: what waits at once fits one lane and all lanes.
        let waiting = 10_000 * crate::replay::LIVE_REPLAY_DELAY.as_millis() as usize / 1000;
        let e = ex(1, 2, "keep-alive");
        let q = Held::default();
        for _ in 0..waiting {
            assert_eq!(q.fits(LANE_BOUND, held_bytes(&e)), Ok(()));
            assert_eq!(q.fits(ALL_LANES_BOUND, held_bytes(&e)), Ok(()));
            q.add(held_bytes(&e));
        }
    }

    #[test]
    fn an_exchange_more_than_the_bound_behind_is_dropped_as_replay_late() {
        let at = Instant::now();
        let late = |send_at, now| lateness_drop(send_at, now, LANE_MAX_LATE);
        assert_eq!(late(None, at + Duration::from_secs(60)), None, "unpaced");
        assert_eq!(late(Some(at), at), None);
        assert_eq!(late(Some(at + Duration::from_secs(5)), at), None, "ahead");
        assert_eq!(late(Some(at), at + LANE_MAX_LATE), None, "at the bound");
        assert_eq!(
            late(Some(at), at + LANE_MAX_LATE + Duration::from_millis(1)),
            Some(DropReason::ReplayLate),
            "its own reason, not replay_queue_full"
        );
    }

    #[test]
    fn the_lateness_bound_is_the_one_configured() {
        let at = Instant::now();
        let bound = Duration::from_millis(300);
        let due = Some(at);
        assert_eq!(lateness_drop(due, at + bound, bound), None);
        assert_eq!(
            lateness_drop(due, at + Duration::from_millis(301), bound),
            Some(DropReason::ReplayLate)
        );
        assert_eq!(
            lateness_drop(due, at + Duration::from_secs(9), LANE_MAX_LATE),
            None,
            "the default bound is wider"
        );
    }

    #[test]
    fn legacy_close_is_seen_on_either_side() {
        let e = ex(1, 2, "close");
        assert!(legacy_closed(&e.request, &e.response));
        let e = ex(1, 2, "keep-alive");
        assert!(!legacy_closed(&e.request, &e.response));
        let mut e = ex(1, 2, "");
        e.response.version = 0;
        assert!(legacy_closed(&e.request, &e.response));
    }
}
