//! The shadow pipeline after capture (which already sampled): mask → replay → compare → store, with
//! every exchange ending in exactly one counted outcome. A replayed exchange's outcome is
//! recorded by the store writer once its row is written (or lost, with its reason), so
//! the ledger never counts a comparison the report cannot show.
use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use tokio::sync::mpsc;

use super::{
    capture_loop::Captured,
    lanes::Lanes,
    live::{Finished, LiveEvidence},
};
use crate::{
    accounting::{DropReason, Ledger, Outcome},
    compare::{Comparator, Comparison, RouteTemplater},
    http::Exchange,
    mask::{Masker, PersistBody, Taint},
    replay::{Pace, Pacer, Replayer, live_wait},
    serve::Metrics,
    store::{Example, ExchangeRecord, LatencySample, Store},
};

/// Paced from a capture, an exchange goes to its lane this long before it is due.
const HAND_OVER_LEAD: Duration = crate::replay::LIVE_REPLAY_DELAY;

/// Everything the workers share.
pub struct Shadow {
    pub ledger: Arc<Ledger>,
    pub masker: Arc<Masker>,
    pub replayer: Arc<Replayer>,
    pub secondary: Option<Arc<Replayer>>,
    pub comparator: Arc<Comparator>,
    pub templater: Arc<RouteTemplater>,
    pub metrics: Arc<Metrics>,
    pub live: Arc<Mutex<LiveEvidence>>,
    pub store_tx: mpsc::Sender<ExchangeRecord>,
    /// Send the candidate the captured values unmasked.
    pub replay_raw: bool,
    /// Candidate connections open at most (one per captured connection being replayed).
    pub workers: usize,
    /// How requests are spaced: the capture's pace (`--speed`) offline; live, a fixed
    /// delay after legacy got each one. `None`: as they come.
    pub pace: Option<Pace>,
    pub host: String,
    pub run_id: String,
    /// Side effects (`--dependency`): each replayed exchange is followed, and with
    /// `--virtualize-egress` its calls are diffed.
    pub effects: Option<Arc<crate::effects::Effects>>,
}

/// The outcome of an exchange whose stage task did not return: a panic is the stage's
/// fault; a cancelled task only happens when the runtime stops at the deadline.
pub(super) fn stage_failure(e: &tokio::task::JoinError) -> Outcome {
    if e.is_panic() {
        tracing::error!(error = %e, "a pipeline stage panicked; the exchange is dropped");
        Outcome::Dropped(DropReason::StagePanic)
    } else {
        Outcome::Dropped(DropReason::ShutdownDeadline)
    }
}

impl Shadow {
    /// When what legacy got at `ts_ns` is due at the candidate. Live: a fixed delay after
    /// legacy got it (tap time, `CLOCK_MONOTONIC`). From a capture: its capture time
    /// scaled by `--speed`, and this loop waits until [`HAND_OVER_LEAD`] before that, so
    /// the file is read no faster than replayed while the lane has time to mask it. The
    /// lane waits out the rest: requests leave with the spacing legacy saw, neither in
    /// the ring's polling bursts nor behind another connection's wait or masking.
    async fn send_at(
        &self,
        ts_ns: u64,
        pacer: Option<&mut Pacer>,
        started: tokio::time::Instant,
    ) -> Option<tokio::time::Instant> {
        match self.pace {
            Some(Pace::Live(delay)) => {
                let wait = live_wait(ts_ns, crate::clock::monotonic_ns(), delay);
                Some(tokio::time::Instant::now() + wait)
            }
            Some(Pace::Capture(_)) => {
                let at = started + pacer?.due(ts_ns)?;
                if let Some(hand_over) = at.checked_sub(HAND_OVER_LEAD)
                    && hand_over > tokio::time::Instant::now()
                {
                    tokio::time::sleep_until(hand_over).await;
                }
                Some(at)
            }
            None => None,
        }
    }

    pub(super) fn finish(&self, o: Outcome) {
        self.ledger.record(o);
    }

    /// Runs until `rx` closes (capture ended) and every queued exchange has an outcome.
    ///
    /// Exchanges go to one lane per captured connection (see `lanes`), at the capture's
    /// pace when `pace` is set (offline input).
    pub async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Captured>) {
        let mut lanes = Lanes::new(self.workers);
        let mut pacer = match self.pace {
            Some(Pace::Capture(speed)) => Some(Pacer::new(speed)),
            _ => None,
        };
        let started = tokio::time::Instant::now();
        let mut replayed = 0u64;
        while let Some(item) = rx.recv().await {
            let ex = match item {
                Captured::Exchange(ex) => ex,
                Captured::Closed { flow, ts_ns } => {
                    let at = self.send_at(ts_ns, pacer.as_mut(), started).await;
                    lanes.close(&flow, at);
                    continue;
                }
            };
            // Sampling and `--exclude` were decided by the capture thread, before the
            // queue (`capture_loop::CaptureSettings::sampler`).
            if !self.replayer.try_rate() {
                self.finish(Outcome::Dropped(DropReason::RateLimited));
                continue;
            }
            let send_at = self
                .send_at(ex.timing.request_first_ns, pacer.as_mut(), started)
                .await;
            if let Some(e) = &self.effects
                && e.register(&ex).is_err()
            {
                self.finish(Outcome::Dropped(DropReason::SideEffectsFull));
                continue;
            }
            let id = ex.id;
            // A slow candidate fills its lanes; the newest exchange is then dropped and
            // counted, and the capture never waits.
            if lanes.offer(&self, ex, send_at) {
                replayed += 1;
            } else {
                if let Some(e) = &self.effects {
                    e.forget(&id);
                }
                self.finish(Outcome::Dropped(DropReason::ReplayQueueFull));
            }
        }
        let refused_for_bytes = lanes.refused_for_bytes();
        lanes.finish().await;
        self.summary(replayed, refused_for_bytes, started.elapsed());
    }

    /// The replay's throughput and shape, on stderr and in the log.
    /// `refused_for_bytes`: of the `replay_queue_full` drops, those over a byte bound.
    fn summary(&self, replayed: u64, refused_for_bytes: u64, took: Duration) {
        let f = &self.replayer.figures;
        let (requests, connections, userspace) = (
            f.requests.load(Ordering::Relaxed),
            f.connections.load(Ordering::Relaxed),
            f.userspace_timed.load(Ordering::Relaxed),
        );
        let secs = took.as_secs_f64().max(1e-9);
        let ledger = self.ledger.snapshot();
        let dropped = ledger.count(Outcome::Dropped(DropReason::ReplayQueueFull));
        let late = ledger.count(Outcome::Dropped(DropReason::ReplayLate));
        let bound = humantime::format_duration(self.replayer.config().max_lateness);
        tracing::info!(
            requests,
            connections,
            dropped_replay_queue_full = dropped,
            of_which_over_the_byte_bound = refused_for_bytes,
            dropped_replay_late = late,
            timed_by_daemon_clock = userspace,
            "replay finished"
        );
        eprintln!(
            "replay: {requests} requests sent to the candidate over {connections} connections in {secs:.1}s ({:.0} req/s reached); dropped replay_queue_full: {dropped} (over the lanes' byte bound: {refused_for_bytes}); dropped replay_late: {late} (over {bound} late); handed to lanes: {replayed}; timed by the daemon's clock (no kernel timestamps): {userspace}",
            requests as f64 / secs
        );
    }

    pub(super) fn conclude(
        &self,
        ex: Exchange,
        masked: Exchange,
        taint: &Taint,
        reply: crate::replay::ReplayResult,
        secondary: Option<crate::replay::ReplayResult>,
    ) {
        let route = self
            .templater
            .route(&masked.request.method, &masked.request.target);
        let legacy_sample = (ex.timing.ttfb_ns(), ex.timing.ttlb_ns());
        self.metrics
            .latency(&route, "legacy", legacy_sample.0, legacy_sample.1);
        let side_effects = self
            .effects
            .as_ref()
            .map(|e| e.conclude(&ex.id, &self.comparator))
            .unwrap_or_default();
        let (outcome, comparison, candidate_status, cand_timing, example) = match reply {
            Err(kind) => (Outcome::CandidateError(kind), None, None, None, None),
            Ok(reply) => {
                self.metrics
                    .latency(&route, "candidate", reply.ttfb_ns, reply.ttlb_ns);
                // The request's masked values are masked in every response the same way,
                // so an echo of a secret reads alike on both sides.
                let cand = self.masker.mask_response_tainted(&reply.response, taint);
                // Legacy's body, as the masker's scan found it, is not scanned again.
                let mut cmp =
                    self.comparator
                        .compare_known(&masked.response, &cand, taint.value_json_body());
                // What the candidate would have sent its dependencies counts like the
                // response: an exchange with a side-effect diff differed.
                if !side_effects.is_empty()
                    && let Some(e) = &self.effects
                {
                    e.counters
                        .exchanges_with_diffs
                        .fetch_add(1, Ordering::Relaxed);
                }
                cmp.diffs.extend(side_effects);
                let outcome = if cmp.matched() {
                    Outcome::Matched
                } else {
                    Outcome::Differed
                };
                let example = (!cmp.matched()).then(|| Example {
                    request: format!("{} {}", masked.request.method, masked.request.target),
                    legacy_body: self.shown_body(&masked.response.headers, &masked.response.body),
                    candidate_body: self.shown_body(&cand.headers, &cand.body),
                });
                (
                    outcome,
                    Some(cmp),
                    Some(reply.response.status),
                    Some((reply.ttfb_ns, reply.ttlb_ns)),
                    example,
                )
            }
        };
        let secondary_cmp: Option<Comparison> = match secondary {
            Some(Ok(r)) => Some(self.comparator.compare_known(
                &masked.response,
                &self.masker.mask_response_tainted(&r.response, taint),
                taint.value_json_body(),
            )),
            _ => None,
        };
        let id = ex.id.to_string();
        let ts_unix_ms = crate::clock::unix_ms();
        let sample = LatencySample {
            legacy_ttfb_ns: legacy_sample.0,
            legacy_ttlb_ns: legacy_sample.1,
            candidate_ttfb_ns: cand_timing.map(|t| t.0),
            candidate_ttlb_ns: cand_timing.map(|t| t.1),
        };
        if let Ok(mut live) = self.live.lock() {
            live.record(&Finished {
                id: &id,
                host: &self.host,
                run_id: &self.run_id,
                ts_unix_ms,
                route: &route,
                outcome,
                legacy_status: ex.response.status,
                candidate_status,
                comparison: comparison.as_ref(),
                secondary: secondary_cmp.as_ref(),
                sample,
            });
        }
        if !matches!(outcome, Outcome::Matched) {
            tracing::debug!(id = %id, route = %route, ?outcome, "exchange differed or failed");
        }
        let row = ExchangeRecord {
            id,
            host: self.host.clone(),
            run_id: self.run_id.clone(),
            ts_unix_ms,
            route,
            method: masked.request.method.clone(),
            target: masked.request.target.clone(),
            outcome,
            legacy_status: ex.response.status,
            candidate_status,
            diffs: comparison.map(|c| c.diffs).unwrap_or_default(),
            secondary_diffs: secondary_cmp
                .map(|c| c.diffs.into_iter().map(|d| d.kind).collect())
                .unwrap_or_default(),
            legacy_ttfb_ns: sample.legacy_ttfb_ns,
            legacy_ttlb_ns: sample.legacy_ttlb_ns,
            candidate_ttfb_ns: sample.candidate_ttfb_ns,
            candidate_ttlb_ns: sample.candidate_ttlb_ns,
            example,
        };
        // The writer records the outcome once the row is written.
        if self.store_tx.try_send(row).is_err() {
            self.finish(Outcome::Dropped(DropReason::StoreQueueFull));
        }
    }

    /// A body as it may be stored and shown: masked text, or only length and digest.
    fn shown_body(&self, headers: &[crate::http::Header], body: &[u8]) -> String {
        match self.masker.persistable_body(headers, body) {
            PersistBody::Text(t) => truncate(t, 4096),
            PersistBody::Opaque { len, sha256 } => format!("[{len} bytes, digest {sha256}]"),
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Rows per store transaction at most.
const STORE_BATCH: usize = 500;
/// How long a row waits for others to share its transaction at most.
const STORE_LINGER: Duration = Duration::from_millis(200);

/// Writes rows in batches (every [`STORE_BATCH`] rows, or [`STORE_LINGER`] after the
/// batch's first row) and records each row's outcome in the ledger: its own once written,
/// `dropped{store_failed}` when the store refused it. Stops when the queue closes (what it
/// holds is written first); rows it never reaches are still in flight, and
/// [`Ledger::seal`] counts them at the shutdown deadline.
///
/// Rows are gathered rather than written as they come: rows arriving one at a time would
/// otherwise each make a transaction (WAL frames for every index page, a blocking-pool
/// hop, frequent checkpoints), the largest cost of the live run after the stages.
pub async fn store_writer(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<ExchangeRecord>,
    ledger: Arc<Ledger>,
) {
    let mut batch = Vec::with_capacity(STORE_BATCH);
    loop {
        let closed = gather(&mut rx, &mut batch).await;
        if !batch.is_empty() {
            match store.write_batch(&batch).await {
                Ok(_) => {
                    for row in &batch {
                        ledger.record(row.outcome);
                    }
                }
                Err(e) => {
                    let n = batch.len() as u64;
                    ledger.record_n(Outcome::Dropped(DropReason::StoreFailed), n);
                    tracing::warn!(error = %e, rows = n, "store write failed; rows not persisted (counted as dropped{{store_failed}})");
                }
            }
            batch.clear();
        }
        if closed {
            break;
        }
    }
}

/// While a batch fills, the queue is emptied this often, not as each row arrives: at
/// 10k exchanges/s a wake-up per row was 10k task wake-ups a second for the writer
/// alone. (At that rate 10 ms is 100 rows, far from the queue's bound.)
const STORE_DRAIN_EVERY: Duration = Duration::from_millis(10);

/// Fills `batch` with the rows of one transaction: waits for a first row, then takes
/// what has arrived every [`STORE_DRAIN_EVERY`] until [`STORE_BATCH`] or
/// [`STORE_LINGER`] after the first. True when the queue closed (and is empty).
async fn gather(rx: &mut mpsc::Receiver<ExchangeRecord>, batch: &mut Vec<ExchangeRecord>) -> bool {
    if rx.recv_many(batch, STORE_BATCH).await == 0 {
        return true;
    }
    let until = tokio::time::Instant::now() + STORE_LINGER;
    while batch.len() < STORE_BATCH {
        let now = tokio::time::Instant::now();
        if now >= until {
            break;
        }
        tokio::time::sleep_until(until.min(now + STORE_DRAIN_EVERY)).await;
        while batch.len() < STORE_BATCH {
            match rx.try_recv() {
                Ok(row) => batch.push(row),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return true,
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreOptions, StoreUrl};

    /// Rows queued together share one transaction, at most [`STORE_BATCH`] each; a
    /// closed queue is emptied first, then reported closed.
    #[tokio::test]
    async fn store_rows_are_gathered_into_batches() {
        let (tx, mut rx) = mpsc::channel(STORE_BATCH * 2);
        let mut batch = Vec::new();
        for i in 0..3 {
            tx.try_send(row(i, Outcome::Matched)).expect("room");
        }
        assert!(!gather(&mut rx, &mut batch).await);
        assert_eq!(batch.len(), 3, "rows queued together share a batch");
        batch.clear();
        for i in 0..(STORE_BATCH as u32 + 100) {
            tx.try_send(row(i, Outcome::Matched)).expect("room");
        }
        assert!(!gather(&mut rx, &mut batch).await);
        assert_eq!(
            batch.len(),
            STORE_BATCH,
            "a batch holds STORE_BATCH rows at most"
        );
        batch.clear();
        drop(tx);
        assert!(gather(&mut rx, &mut batch).await, "the queue closed");
        assert_eq!(batch.len(), 100, "what was queued before the close is kept");
        batch.clear();
        assert!(gather(&mut rx, &mut batch).await);
        assert!(batch.is_empty());
    }

    fn row(i: u32, outcome: Outcome) -> ExchangeRecord {
        ExchangeRecord {
            id: format!("x{i}"),
            host: "h".into(),
            run_id: "r".into(),
            ts_unix_ms: 1_760_000_000_000,
            route: "GET /".into(),
            method: "GET".into(),
            target: "/".into(),
            outcome,
            legacy_status: 200,
            candidate_status: Some(200),
            diffs: Vec::new(),
            secondary_diffs: Vec::new(),
            legacy_ttfb_ns: 1,
            legacy_ttlb_ns: 2,
            candidate_ttfb_ns: Some(1),
            candidate_ttlb_ns: Some(2),
            example: None,
        }
    }

    #[tokio::test]
    async fn a_panicking_stage_is_its_own_drop_reason() {
        let e = tokio::task::spawn_blocking(|| panic!("a stage bug"))
            .await
            .expect_err("the stage panicked");
        assert_eq!(stage_failure(&e), Outcome::Dropped(DropReason::StagePanic));
    }

    /// A real SQLite store in `dir`, a ledger and the writer's queue.
    async fn writer_parts(
        dir: &std::path::Path,
    ) -> (
        Arc<Store>,
        Arc<Ledger>,
        mpsc::Sender<ExchangeRecord>,
        mpsc::Receiver<ExchangeRecord>,
    ) {
        let url = StoreUrl::Sqlite(dir.join("m.db"));
        let store = Store::open(&url, StoreOptions::default())
            .await
            .expect("store");
        let (tx, rx) = mpsc::channel(8);
        (Arc::new(store), Arc::new(Ledger::default()), tx, rx)
    }

    #[tokio::test]
    async fn the_writer_records_each_outcome_once_its_row_is_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, ledger, tx, rx) = writer_parts(dir.path()).await;
        ledger.saw(3);
        for (i, o) in [Outcome::Matched, Outcome::Differed, Outcome::Matched]
            .into_iter()
            .enumerate()
        {
            tx.send(row(i as u32, o)).await.expect("queued");
        }
        drop(tx);
        store_writer(store.clone(), rx, ledger.clone()).await;
        let s = ledger.snapshot();
        assert_eq!((s.matched, s.differed, s.in_flight()), (2, 1, 0));
        let ev = store.load(&Default::default()).await.expect("load");
        assert_eq!(ev.routes[0].matched + ev.routes[0].differed, 3);
    }

    #[tokio::test]
    async fn rows_the_store_refuses_are_dropped_as_store_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, ledger, tx, rx) = writer_parts(dir.path()).await;
        ledger.saw(2);
        // A store that cannot take the rows: its table is gone.
        tx.send(row(1, Outcome::Matched)).await.expect("queued");
        tx.send(row(2, Outcome::Differed)).await.expect("queued");
        drop(tx);
        let conn = rusqlite::Connection::open(dir.path().join("m.db")).expect("open");
        conn.execute_batch("DROP TABLE exchanges").expect("drop");
        store_writer(store, rx, ledger.clone()).await;
        let s = ledger.snapshot();
        assert_eq!(s.count(Outcome::Dropped(DropReason::StoreFailed)), 2);
        assert_eq!((s.matched, s.differed, s.in_flight()), (0, 0, 0));
    }
}
