//! The candidate's egress attempts during a run: the guard's kernel reports and the sink's
//! captures paired, each attempt reported exactly once (counted, logged without payload,
//! shown on the dashboard, stored).
use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::sync::mpsc;

use super::{fence::describe, live::LiveEvidence};
use crate::{
    guard::{
        EgressAction, EgressAttempt,
        kernel::GuardEvents,
        sink::{PAIRING_GRACE, RedirectPairing, SinkCapture},
    },
    mask::Masker,
    serve::Metrics,
    store::Store,
};

/// Where a run's egress reports come from and go to.
pub struct EgressReports {
    pub events: Option<GuardEvents>,
    pub sink_rx: Option<mpsc::Receiver<SinkCapture>>,
    pairing: RedirectPairing,
    buf: Vec<EgressAttempt>,
    /// The self-test probe's attempt is the guard's own (logged at start-up), not the
    /// candidate's.
    probe_pid: u32,
    masker: Arc<Masker>,
}

impl EgressReports {
    pub fn new(
        events: Option<GuardEvents>,
        sink_rx: Option<mpsc::Receiver<SinkCapture>>,
        probe_pid: u32,
        masker: Arc<Masker>,
    ) -> Self {
        Self {
            events,
            sink_rx,
            pairing: RedirectPairing::default(),
            buf: Vec::new(),
            probe_pid,
            masker,
        }
    }

    /// Kernel reports and sink captures turned into attempts to report, each exactly once:
    /// a redirected attempt waits (bounded) for the first bytes the sink captured on its
    /// connection; with `closing`, nothing waits.
    pub fn ready(&mut self, now: Instant, closing: bool) -> Vec<EgressAttempt> {
        let masker = &self.masker;
        let with_bytes = |(mut a, bytes): (EgressAttempt, Vec<u8>)| {
            a.first_bytes = Some(masker.mask_wire_request(&bytes));
            a
        };
        if let Some(ev) = self.events.as_mut() {
            ev.drain(&mut self.buf);
        }
        let mut ready = Vec::new();
        for a in self.buf.drain(..) {
            if a.action == EgressAction::Redirected && self.sink_rx.is_some() {
                ready.extend(self.pairing.attempt(a, now).map(with_bytes));
            } else {
                ready.push(a);
            }
        }
        if let Some(rx) = self.sink_rx.as_mut() {
            while let Ok(cap) = rx.try_recv() {
                ready.extend(self.pairing.capture(cap, now).map(with_bytes));
            }
        }
        ready.extend(self.pairing.expired(now, PAIRING_GRACE));
        if closing {
            ready.extend(self.pairing.drain());
        }
        ready.retain(|a| a.pid != self.probe_pid);
        ready
    }
}

/// Counts, logs (no payload), shows and stores egress attempts.
pub async fn report(
    attempts: Vec<EgressAttempt>,
    metrics: &Metrics,
    live: &Mutex<LiveEvidence>,
    store: &Store,
    host: &str,
    run_id: &str,
) {
    if attempts.is_empty() {
        return;
    }
    for a in &attempts {
        metrics.egress(a.action.as_str(), &a.protocol);
        tracing::info!("{}", describe(a));
        if let Ok(mut l) = live.lock() {
            l.record_egress(a);
        }
    }
    if let Err(e) = store.write_egress(host, run_id, &attempts).await {
        tracing::warn!(error = %e, "storing egress attempts failed");
    }
}
