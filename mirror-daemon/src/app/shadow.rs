//! The shadow pipeline after capture: sample → mask → replay → compare → store, with
//! every exchange ending in exactly one counted outcome.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinSet};

use super::live::{Finished, LiveEvidence};
use crate::{
    accounting::{DropReason, Ledger, Outcome},
    compare::{Comparator, Comparison, RouteTemplater},
    http::Exchange,
    mask::{Masker, PersistBody, Taint},
    pipeline::{self, REPLAY_QUEUE},
    replay::Replayer,
    sample::Sampler,
    serve::Metrics,
    store::{Example, ExchangeRecord, LatencySample, Store},
};

/// Everything the workers share.
pub struct Shadow {
    pub ledger: Arc<Ledger>,
    pub sampler: Arc<Sampler>,
    pub masker: Arc<Masker>,
    pub replayer: Arc<Replayer>,
    pub secondary: Option<Arc<Replayer>>,
    pub comparator: Arc<Comparator>,
    pub templater: Arc<RouteTemplater>,
    pub metrics: Arc<Metrics>,
    pub live: Arc<Mutex<LiveEvidence>>,
    pub store_tx: mpsc::Sender<ExchangeRecord>,
    /// Rows not persisted because the store writer fell behind (outcomes still counted).
    pub store_rows_dropped: AtomicU64,
    /// Send the candidate the captured values unmasked.
    pub replay_raw: bool,
    pub workers: usize,
    pub host: String,
    pub run_id: String,
}

fn outcome_labels(o: Outcome) -> (&'static str, &'static str) {
    match o {
        Outcome::Matched => ("matched", ""),
        Outcome::Differed => ("differed", ""),
        Outcome::SampledOut => ("sampled_out", ""),
        Outcome::Excluded => ("excluded", ""),
        Outcome::CandidateError(k) => ("candidate_error", k.as_str()),
        Outcome::Dropped(r) => ("dropped", r.as_str()),
    }
}

impl Shadow {
    fn finish(&self, o: Outcome) {
        self.ledger.record(o);
        let (outcome, reason) = outcome_labels(o);
        self.metrics.outcome(outcome, reason);
    }

    /// Runs until `rx` closes (capture ended) and every queued exchange has an outcome.
    pub async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Exchange>) {
        let (replay_tx, replay_rx) = mpsc::channel::<Exchange>(REPLAY_QUEUE);
        let replay_rx = Arc::new(tokio::sync::Mutex::new(replay_rx));
        let mut workers = JoinSet::new();
        for _ in 0..self.workers.max(1) {
            let (me, rx) = (self.clone(), replay_rx.clone());
            workers.spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(ex) = next else { break };
                    me.clone().handle(ex).await;
                }
            });
        }
        while let Some(ex) = rx.recv().await {
            if let Some(o) = self.sampler.decide(&ex).outcome() {
                self.finish(o);
                continue;
            }
            if !self.replayer.try_rate() {
                self.finish(Outcome::Dropped(DropReason::RateLimited));
                continue;
            }
            // A slow candidate fills this queue; the newest exchange is then dropped and
            // counted, and the capture never waits.
            if !pipeline::offer_or_drop(&replay_tx, ex, &self.ledger, DropReason::ReplayQueueFull) {
                self.metrics
                    .outcome("dropped", DropReason::ReplayQueueFull.as_str());
            }
        }
        drop(replay_tx);
        while workers.join_next().await.is_some() {}
    }

    /// One exchange: mask, replay (and replay to the secondary), compare, record.
    ///
    /// Masking and comparing are CPU work: they run on the blocking pool so the runtime
    /// threads stay free to poll the candidate sockets, whose read times are the
    /// candidate's latency.
    async fn handle(self: Arc<Self>, ex: Exchange) {
        let me = self.clone();
        let Ok((ex, (masked, taint))) = tokio::task::spawn_blocking(move || {
            let masked = me.masker.mask_exchange_tainted(&ex);
            (ex, masked)
        })
        .await
        else {
            self.finish(Outcome::Dropped(DropReason::QueueFull));
            return;
        };
        let to_send = if self.replay_raw {
            &ex.request
        } else {
            &masked.request
        };
        let secondary = async {
            match &self.secondary {
                Some(s) => Some(s.send(to_send, &ex.id).await),
                None => None,
            }
        };
        let (reply, secondary) = tokio::join!(self.replayer.send(to_send, &ex.id), secondary);
        let me = self.clone();
        let finished =
            tokio::task::spawn_blocking(move || me.conclude(ex, masked, &taint, reply, secondary))
                .await;
        if finished.is_err() {
            self.finish(Outcome::Dropped(DropReason::QueueFull));
        }
    }

    fn conclude(
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
        let (outcome, comparison, candidate_status, cand_timing, example) = match reply {
            Err(kind) => (Outcome::CandidateError(kind), None, None, None, None),
            Ok(reply) => {
                self.metrics
                    .latency(&route, "candidate", reply.ttfb_ns, reply.ttlb_ns);
                // The request's masked values are masked in every response the same way,
                // so an echo of a secret reads alike on both sides.
                let cand = self.masker.mask_response_tainted(&reply.response, taint);
                let cmp = self.comparator.compare(&masked.response, &cand);
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
            Some(Ok(r)) => Some(self.comparator.compare(
                &masked.response,
                &self.masker.mask_response_tainted(&r.response, taint),
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
        if self.store_tx.try_send(row).is_err() {
            self.store_rows_dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.finish(outcome);
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

/// Writes rows in batches (every 500 rows or 200 ms); stops when the queue closes.
pub async fn store_writer(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<ExchangeRecord>,
    failures: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(500);
    loop {
        let timed = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
        let closed = match timed {
            Ok(Some(row)) => {
                batch.push(row);
                while batch.len() < 500 {
                    match rx.try_recv() {
                        Ok(row) => batch.push(row),
                        Err(_) => break,
                    }
                }
                false
            }
            Ok(None) => true,
            Err(_) => false,
        };
        if !batch.is_empty() {
            if let Err(e) = store.write_batch(&batch).await {
                failures.fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::warn!(error = %e, rows = batch.len(), "store write failed; rows not persisted (outcomes still counted)");
            }
            batch.clear();
        }
        if closed {
            break;
        }
    }
}
