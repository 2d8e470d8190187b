//! A shadow run as three steps: [`start`] builds every stage from a [`Plan`] (typed once
//! from the flags) and returns the [`Running`] pipeline; [`Running::tick`] does the
//! periodic duties; [`Running::shutdown`] stops the stages in order, each within its
//! [`Deadlines`], and returns the [`Final`] figures. The caller owns the loop: it ticks
//! every [`TICK`] until a tick says the run is over or a stop is requested.
//!
//! Start order: store, fence (a candidate we start never runs unfenced; with
//! `--virtualize-egress` it redirects to the virtual dependencies bound by the plan),
//! candidate reachable, ledger and stages, dashboard, side-effect recorder and virtual
//! dependencies, capture thread, replays, tap attached last.
//! Shutdown order: tap detached (the legacy path is untouched from then on), capture
//! drained, replays, store writer, ledger sealed, egress reports, fence.
mod plan;
mod schedule;
mod shutdown;
mod start;
#[cfg(test)]
mod tests;

pub use plan::{Fencing, Input, Plan, Retention};
pub use schedule::{Due, Schedule, TICK};
pub use shutdown::{Deadlines, Drained, StopReason, drain};
pub use start::start;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Instant,
};

use mirror_common::PPM_ALL;
use tokio::task::JoinHandle;

use crate::app::{
    capture_loop::CaptureFigures,
    egress::{self, EgressReports},
    fence::{ChildGuard, Fence},
    live::LiveEvidence,
};
use crate::{
    accounting::{Ledger, LedgerSnapshot},
    capture::{
        kernel::{KernelCounters, Tap},
        pcap::PcapError,
    },
    compare::NoiseRule,
    effects::{Effects, EffectsFigures},
    http::PairingCounters,
    quota::{QuotaAlarm, QuotaReading},
    report::{self, ParityCard},
    sample::{SampleConfig, SampleError, Sampler},
    serve::{DaemonCpuView, LiveSnapshot, Metrics, RunView},
    store::{ReportFilter, Store},
    verdict::Criteria,
};

/// What one tick found.
pub struct Tick {
    /// One line for the progress display.
    pub status: String,
    /// `Some` when the run is over by itself (end of input, `--duration`).
    pub stop: Option<StopReason>,
}

/// A started run: every stage up, the tap attached.
pub struct Running {
    /// Where the dashboard and `/metrics` listen.
    pub dashboard: SocketAddr,
    host: String,
    run_id: String,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    live: Arc<Mutex<LiveEvidence>>,
    store: Arc<Store>,
    sampler: Arc<Sampler>,
    criteria: Criteria,
    snapshot: Arc<arc_swap::ArcSwap<LiveSnapshot>>,
    run_view: RunView,
    ready: Arc<AtomicBool>,
    /// The kernel pre-sampling rate wanted (dashboard, SIGHUP) and the one applied.
    desired_ppm: Arc<AtomicU32>,
    applied_ppm: u32,
    tap: Option<Tap>,
    kernel: KernelCounters,
    /// The daemon's own CPU quota since the pipeline was up (stored in `kernel` with
    /// the ledger; published each tick).
    quota: crate::quota::QuotaWatch,
    /// The quota as the last tick read it.
    quota_now: QuotaReading,
    quota_alarm: QuotaAlarm,
    capture: std::thread::JoinHandle<Result<CaptureFigures, PcapError>>,
    /// The capture thread's figures as they stand (pairing, for /metrics and the card).
    figures: Arc<Mutex<CaptureFigures>>,
    pairing: PairingCounters,
    stop_capture: Arc<AtomicBool>,
    replays: JoinHandle<()>,
    writer: JoinHandle<()>,
    egress: EgressReports,
    retention: Retention,
    schedule: Schedule,
    watchdog: bool,
    /// Dropped last: the fence ends the candidate.
    fence: Option<Fence>,
    unfenced: Option<ChildGuard>,
    stop_dashboard: tokio::sync::oneshot::Sender<()>,
    /// Side effects (`--dependency`), for the figures at the end.
    effects: Option<Arc<Effects>>,
    /// The live card last drawn and what it was drawn from.
    last_card: Option<(CardInputs, Arc<ParityCard>)>,
}

/// What the live card is a function of (the criteria are fixed for the run): when none
/// of it moved since the last tick, the card is the same and is not drawn again (its
/// latency percentiles sort every route's samples).
#[derive(Clone, Debug, PartialEq)]
struct CardInputs {
    evidence_changes: u64,
    ledger: LedgerSnapshot,
    kernel: KernelCounters,
    pairing: PairingCounters,
    side_effects: Option<EffectsFigures>,
}

/// The end of a run: the card drawn from the store, and the figures behind it.
pub struct Final {
    pub card: ParityCard,
    pub ledger: LedgerSnapshot,
    pub capture: CaptureFigures,
    pub drained: Drained,
    /// Side-effect figures (`--dependency`), once every replay has concluded.
    pub side_effects: Option<EffectsFigures>,
    pub criteria: Criteria,
    pub host: String,
    pub run_id: String,
}

impl Running {
    /// The periodic duties: kernel sample rate and counters, egress reports, the live
    /// card on the dashboard, the ledger and retention in the store, the watchdog.
    pub async fn tick(&mut self, now: Instant) -> Tick {
        self.follow_kernel();
        self.follow_quota(now);
        let attempts = self.egress.ready(now, false);
        self.report_egress(attempts).await;
        let side_effects = self.effects.as_ref().map(|e| e.figures());
        let card = self.card_now(side_effects.as_ref());
        self.publish(&card, side_effects);
        let due = self.schedule.due(now);
        if due.write_ledger {
            self.write_ledger().await;
        }
        if due.retention {
            self.enforce_retention().await;
        }
        if self.watchdog {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
        let s = self.ledger.snapshot();
        let caveat = self
            .quota_caveat()
            .map_or_else(String::new, |c| format!("; CAVEAT: {c}"));
        let status = format!(
            "{}s: seen {} matched {} differed {} candidate errors {} sampled out {} dropped {} in flight {} — {}{caveat}",
            self.schedule.elapsed(now).as_secs(),
            s.seen,
            s.matched,
            s.differed,
            s.candidate_errors(),
            s.sampled_out,
            s.drops(),
            s.in_flight(),
            card.verdict.label()
        );
        let stop = if due.duration_reached {
            Some(StopReason::Duration)
        } else if self.capture.is_finished() && self.replays.is_finished() {
            Some(StopReason::EndOfInput)
        } else {
            None
        };
        Tick { status, stop }
    }

    /// The run's ledger as it stands.
    pub fn ledger(&self) -> LedgerSnapshot {
        self.ledger.snapshot()
    }

    /// New sampling settings (SIGHUP re-read the config file), without detaching.
    pub fn reload_sampling(&self, cfg: SampleConfig) -> Result<(), SampleError> {
        self.sampler.update(cfg)?;
        self.desired_ppm.store(
            self.sampler.kernel_ppm().unwrap_or(PPM_ALL),
            Ordering::SeqCst,
        );
        Ok(())
    }

    /// Stops every stage in order, each within `deadlines`; what is still in flight then
    /// is counted as `dropped{shutdown_deadline}`, so the identity holds with
    /// `in_flight = 0`. The card is drawn from what the store holds.
    pub async fn shutdown(mut self, deadlines: Deadlines) -> anyhow::Result<Final> {
        self.ready.store(false, Ordering::SeqCst);
        // Detach first (the legacy path is untouched from here), then let the capture
        // thread drain the ring and flush every flow, then let in-flight replays finish.
        if let Some(t) = self.tap.take() {
            self.kernel = t.counters();
        }
        self.stop_capture.store(true, Ordering::SeqCst);
        let capture = self.capture;
        let figures = match tokio::task::spawn_blocking(move || capture.join()).await? {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context("reading the capture")),
            Err(_) => anyhow::bail!("capture thread panicked"),
        };
        let drained = drain(self.replays, self.writer, &self.ledger, deadlines).await;
        // Up to the last replay: the ones finishing during the drain were paced too.
        self.kernel.daemon_quota = self.quota.since_start();
        // Every replay has concluded: the side-effect figures are final.
        let side_effects = self.effects.as_ref().map(|e| e.figures());
        // Attempts still waiting for their sink capture are reported without bytes.
        let attempts = self.egress.ready(Instant::now(), true);
        egress::report(
            attempts,
            &self.metrics,
            &self.live,
            &self.store,
            &self.host,
            &self.run_id,
        )
        .await;
        self.store
            .write_ledger(
                &self.host,
                &self.run_id,
                crate::clock::unix_ms(),
                &self.ledger.snapshot(),
                &self.kernel,
                &figures.pairing(),
                side_effects.as_ref(),
            )
            .await?;
        drop(self.fence);
        drop(self.unfenced);
        crate::guard::cgroup::release_private_mount();
        let _ = self.stop_dashboard.send(());

        let filter = ReportFilter {
            run_id: Some(self.run_id.clone()),
            ..Default::default()
        };
        let stored = self.store.load(&filter).await?;
        let card = report::build(&stored, &self.criteria, &NoiseRule::default());
        Ok(Final {
            card,
            ledger: self.ledger.snapshot(),
            capture: figures,
            drained,
            side_effects,
            criteria: self.criteria,
            host: self.host,
            run_id: self.run_id,
        })
    }

    /// The kernel's pre-sampling follows the wanted rate; its counters are read.
    fn follow_kernel(&mut self) {
        if let Some(t) = self.tap.as_mut() {
            let want = self.desired_ppm.load(Ordering::SeqCst);
            if want != self.applied_ppm && t.set_sample_ppm(want).is_ok() {
                self.applied_ppm = want;
            }
            self.kernel = t.counters();
            self.metrics.set_kernel(&self.kernel);
        }
        self.pairing = CaptureFigures::pairing_of(&self.figures);
        self.metrics.set_pairing(&self.pairing);
    }

    /// The daemon's quota: on `/metrics`, and a warning once when it starts binding.
    fn follow_quota(&mut self, now: Instant) {
        self.quota_now = self.quota.read();
        self.metrics.set_daemon_quota(&self.quota_now);
        let t = &self.quota_now.throttling;
        if self.quota_alarm.observe(t, now)
            && let Some(said) = t.caveat()
        {
            tracing::warn!(
                quota = %self.quota_now.limit.map_or_else(|| "?".into(), |l| l.to_string()),
                "{said}"
            );
        }
    }

    /// The quota's caveat on the latency verdict, by the card's rule: a p95 criterion is
    /// set and the quota stopped the daemon in at least 5 % of its periods.
    fn quota_caveat(&self) -> Option<String> {
        self.criteria
            .judges_p95()
            .then(|| self.quota_now.throttling.caveat())
            .flatten()
    }

    async fn report_egress(&self, attempts: Vec<crate::guard::EgressAttempt>) {
        egress::report(
            attempts,
            &self.metrics,
            &self.live,
            &self.store,
            &self.host,
            &self.run_id,
        )
        .await;
    }

    async fn write_ledger(&self) {
        let snapshot = self.ledger.snapshot();
        let at = crate::clock::unix_ms();
        // The quota's figures as this tick read them (the live card leaves them out: it
        // is redrawn when its inputs move, and the periods move on every tick).
        let kernel = KernelCounters {
            daemon_quota: self.quota_now.throttling,
            ..self.kernel
        };
        if let Err(e) = self
            .store
            .write_ledger(
                &self.host,
                &self.run_id,
                at,
                &snapshot,
                &kernel,
                &self.pairing,
                self.effects.as_ref().map(|e| e.figures()).as_ref(),
            )
            .await
        {
            tracing::warn!(error = %e, "storing the ledger failed");
        }
    }

    async fn enforce_retention(&self) {
        match self
            .store
            .enforce_retention(self.retention.age, self.retention.bytes)
            .await
        {
            Ok(r) if r.exchanges_deleted > 0 => tracing::info!(
                deleted = r.exchanges_deleted,
                bytes_after = r.bytes_after,
                "retention applied"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
    }

    /// The live card, drawn from the run's evidence in place (no copy into the store's
    /// shape); the last one again when nothing it is drawn from moved.
    fn card_now(&mut self, side_effects: Option<&EffectsFigures>) -> Arc<ParityCard> {
        let live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let inputs = CardInputs {
            evidence_changes: live.changes(),
            ledger: self.ledger.snapshot(),
            kernel: self.kernel,
            pairing: self.pairing,
            side_effects: side_effects.copied(),
        };
        if let Some((drawn_from, card)) = &self.last_card
            && *drawn_from == inputs
        {
            return card.clone();
        }
        let card = Arc::new(report::build(
            live.card_evidence(
                &inputs.ledger,
                &self.kernel,
                Some(&self.pairing),
                side_effects,
            ),
            &self.criteria,
            &NoiseRule::default(),
        ));
        drop(live);
        self.last_card = Some((inputs, card.clone()));
        card
    }

    /// What the dashboard shows.
    fn publish(&self, card: &ParityCard, side_effects: Option<EffectsFigures>) {
        let (mut verdict, routes, diffs, egress) = report::live_views(card);
        // The live card is drawn without the quota's figures (they move every tick and
        // would redraw it each time): its caveat is added here, as the card words it.
        verdict.caveats.extend(self.quota_caveat());
        let mut run = self.run_view.clone();
        run.sample_percent = f64::from(self.sampler.ppm()) / 10_000.0;
        let snap = LiveSnapshot {
            run,
            ledger: self.ledger.snapshot(),
            completeness: card.completeness,
            kernel: KernelCounters {
                daemon_quota: self.quota_now.throttling,
                ..self.kernel
            },
            daemon_cpu: DaemonCpuView::of(&self.quota_now),
            pairing: self.pairing,
            side_effects,
            side_effect_mismatched: card.side_effect_mismatched,
            verdict,
            routes,
            diffs,
            egress,
        };
        self.snapshot.store(Arc::new(snap));
    }
}
