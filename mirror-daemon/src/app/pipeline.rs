//! A shadow run as three steps: [`start`] builds every stage from a [`Plan`] (typed once
//! from the flags) and returns the [`Running`] pipeline; [`Running::tick`] does the
//! periodic duties; [`Running::shutdown`] stops the stages in order, each within its
//! [`Deadlines`], and returns the [`Final`] figures. The caller owns the loop: it ticks
//! every [`TICK`] until a tick says the run is over or a stop is requested.
//!
//! Start order: store, fence (a candidate we start never runs unfenced), candidate
//! reachable, ledger and stages, dashboard, capture thread, replays, tap attached last.
//! Shutdown order: tap detached (the legacy path is untouched from then on), capture
//! drained, replays, store writer, ledger sealed, egress reports, fence.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use mirror_common::PPM_ALL;
use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    capture_loop::{self, CaptureFigures, CaptureSettings, Source},
    egress::{self, EgressReports},
    fence::{ChildGuard, Fence, FenceConfig, start_unfenced},
    live::LiveEvidence,
    shadow::{self, Shadow},
};
use crate::{
    accounting::{Ledger, LedgerSnapshot},
    capture::{
        kernel::{KernelCounters, Tap, TapConfig},
        pcap::PcapError,
    },
    compare::{Comparator, NoiseRule, RouteTemplater},
    http::Limits,
    mask::Masker,
    pipeline::{EXCHANGE_QUEUE, STORE_QUEUE},
    replay::{LIVE_REPLAY_DELAY, Pace, ReplayConfig, Replayer, Speed},
    report::{self, ParityCard},
    sample::{SampleConfig, SampleError, Sampler},
    serve::{self, LiveSnapshot, Metrics, RunView, ServeConfig, ServeState},
    store::{ReportFilter, RunInfo, Store, StoreOptions, StoreUrl},
    verdict::Criteria,
};

/// How often [`Running::tick`] is due.
pub const TICK: Duration = Duration::from_millis(500);
/// How often the ledger is written to the store during a run.
const LEDGER_EVERY: Duration = Duration::from_secs(2);
/// How often retention is enforced.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Where exchanges come from.
pub enum Input {
    /// The kernel tap, until stopped or for `duration`.
    Live {
        tap: TapConfig,
        duration: Option<Duration>,
    },
    /// A capture file, replayed at `speed`.
    File {
        path: PathBuf,
        ports: Vec<u16>,
        reorder_window: usize,
        speed: Speed,
    },
}

/// How the candidate is fenced.
pub enum Fencing {
    /// The egress guard fences the candidate (the default).
    Guard(FenceConfig),
    /// `--no-egress-guard`: its outbound network is not fenced; a command we start
    /// still runs unprivileged in the configured user and network namespace.
    Off(FenceConfig),
}

/// Retention limits of the store (none: keep everything).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub age: Option<Duration>,
    pub bytes: Option<u64>,
}

impl Retention {
    fn enabled(&self) -> bool {
        self.age.is_some() || self.bytes.is_some()
    }
}

/// Everything a run needs, validated: the stages that validate as they are built are
/// built here; the rest are their own configuration types.
pub struct Plan {
    pub input: Input,
    pub sampler: Arc<Sampler>,
    pub masker: Arc<Masker>,
    pub comparator: Comparator,
    pub templater: Arc<RouteTemplater>,
    pub criteria: Criteria,
    /// The criteria as the user wrote them (stored with the run).
    pub criteria_text: String,
    pub replay: ReplayConfig,
    /// A second legacy instance, for legacy-vs-legacy noise.
    pub secondary: Option<ReplayConfig>,
    /// Send the candidate the captured values unmasked.
    pub replay_raw: bool,
    pub limits: Limits,
    pub store: StoreUrl,
    /// The store as the user wrote it (for messages).
    pub store_text: String,
    pub retention: Retention,
    pub serve: ServeConfig,
    pub fencing: Fencing,
    /// What the candidate must not read (the self-test proves it).
    pub secrets: Vec<PathBuf>,
    /// `--sample` as given (the run's record and the dashboard show it).
    pub sample_percent: f64,
    pub host: String,
    pub run_id: String,
}

/// How long shutdown waits for each stage before cutting what it still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// In-flight replays (and their comparisons).
    pub replays: Duration,
    /// The store writer's queued rows.
    pub store: Duration,
}

impl Deadlines {
    /// A replay gets its own timeout and a margin; the store writer 30 s.
    pub fn for_replay_timeout(timeout: Duration) -> Self {
        Self {
            replays: timeout + Duration::from_secs(5),
            store: Duration::from_secs(30),
        }
    }
}

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The capture file was read and every exchange has an outcome.
    EndOfInput,
    /// `--duration` elapsed.
    Duration,
    /// A stop signal, by name (`SIGINT`, `SIGTERM`).
    Signal(&'static str),
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndOfInput => "end of input",
            StopReason::Duration => "--duration",
            StopReason::Signal(name) => name,
        }
    }
}

/// What one tick found.
pub struct Tick {
    /// One line for the progress display.
    pub status: String,
    /// `Some` when the run is over by itself (end of input, `--duration`).
    pub stop: Option<StopReason>,
}

/// The periodic duties a tick is due for (pure: the clock is passed in).
#[derive(Clone, Debug)]
pub struct Schedule {
    started: Instant,
    duration: Option<Duration>,
    last_ledger_write: Instant,
    retention: bool,
    last_retention: Option<Instant>,
}

/// What is due at one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Due {
    pub write_ledger: bool,
    pub retention: bool,
    pub duration_reached: bool,
}

impl Schedule {
    pub fn new(started: Instant, duration: Option<Duration>, retention: bool) -> Self {
        Self {
            started,
            duration,
            last_ledger_write: started,
            retention,
            last_retention: None,
        }
    }

    /// What is due at `now`; what is due is taken as done.
    pub fn due(&mut self, now: Instant) -> Due {
        let write_ledger = now.saturating_duration_since(self.last_ledger_write) >= LEDGER_EVERY;
        if write_ledger {
            self.last_ledger_write = now;
        }
        // Retention runs at the first tick, then every minute.
        let retention = self.retention
            && self
                .last_retention
                .is_none_or(|t| now.saturating_duration_since(t) >= RETENTION_EVERY);
        if retention {
            self.last_retention = Some(now);
        }
        Due {
            write_ledger,
            retention,
            duration_reached: self.duration.is_some_and(|d| self.elapsed(now) >= d),
        }
    }

    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
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
    snapshot: Arc<RwLock<LiveSnapshot>>,
    run_view: RunView,
    ready: Arc<AtomicBool>,
    /// The kernel pre-sampling rate wanted (dashboard, SIGHUP) and the one applied.
    desired_ppm: Arc<AtomicU32>,
    applied_ppm: u32,
    tap: Option<Tap>,
    kernel: KernelCounters,
    capture: std::thread::JoinHandle<Result<CaptureFigures, PcapError>>,
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
}

/// The end of a run: the card drawn from the store, and the figures behind it.
pub struct Final {
    pub card: ParityCard,
    pub ledger: LedgerSnapshot,
    pub capture: CaptureFigures,
    pub drained: Drained,
    pub criteria: Criteria,
    pub host: String,
    pub run_id: String,
}

/// Builds and starts every stage of `plan`. Must run inside a tokio runtime.
pub async fn start(plan: Plan) -> anyhow::Result<Running> {
    let Plan {
        input,
        sampler,
        masker,
        comparator,
        templater,
        criteria,
        criteria_text,
        replay,
        secondary,
        replay_raw,
        limits,
        store: store_url,
        store_text,
        retention,
        serve: serve_cfg,
        fencing,
        secrets,
        sample_percent,
        host,
        run_id,
    } = plan;
    let store = open_store(&store_url, &store_text).await?;
    store
        .write_run(&RunInfo {
            host: host.clone(),
            run_id: run_id.clone(),
            started_unix_ms: crate::clock::unix_ms(),
            args: format!("candidate={} sample={sample_percent}%", replay.target.url),
            criteria: criteria_text,
        })
        .await?;
    // The fence first: a candidate we start must never run unfenced.
    let (mut fence, unfenced) =
        fence_candidate(&fencing, &run_id, &secrets, &replay, secondary.as_ref()).await?;

    let ledger = Arc::new(Ledger::default());
    let metrics = Arc::new(Metrics::for_ledger(ledger.clone()));
    let live = Arc::new(Mutex::new(LiveEvidence::default()));
    let (store_tx, store_rx) = mpsc::channel(STORE_QUEUE);
    let writer = tokio::spawn(shadow::store_writer(
        store.clone(),
        store_rx,
        ledger.clone(),
    ));
    let comparator = {
        let m = masker.clone();
        Arc::new(comparator.with_body_digest(Arc::new(move |b: &[u8]| m.digest(b))))
    };
    let workers = replay.concurrency.max(1);
    let shadow = Arc::new(Shadow {
        ledger: ledger.clone(),
        sampler: sampler.clone(),
        masker: masker.clone(),
        replayer: Replayer::new(replay.clone()),
        secondary: secondary.map(Replayer::new),
        comparator,
        templater,
        metrics: metrics.clone(),
        live: live.clone(),
        store_tx,
        replay_raw,
        workers,
        pace: Some(match &input {
            Input::File { speed, .. } => Pace::Capture(*speed),
            Input::Live { .. } => Pace::Live(LIVE_REPLAY_DELAY),
        }),
        host: host.clone(),
        run_id: run_id.clone(),
    });

    let desired_ppm = Arc::new(AtomicU32::new(sampler.kernel_ppm().unwrap_or(PPM_ALL)));
    let run_view = run_view(&input, &host, &run_id, &replay, sample_percent);
    let snapshot = Arc::new(RwLock::new(LiveSnapshot {
        run: run_view.clone(),
        ..Default::default()
    }));
    let ready = Arc::new(AtomicBool::new(false));
    let (dashboard, stop_dashboard) = open_dashboard(
        serve_cfg,
        ServeState {
            snapshot: snapshot.clone(),
            metrics: metrics.clone(),
            ready: ready.clone(),
            control: Some(sample_control(&sampler, &desired_ppm)),
        },
    )
    .await?;

    // Capture: the reader exists before the tap is attached, so nothing is missed.
    let (ex_tx, ex_rx) = mpsc::channel(EXCHANGE_QUEUE);
    let stop_capture = Arc::new(AtomicBool::new(false));
    let (source, mut tap, settings, duration) = capture_source(input, limits, &sampler)?;
    let capture = spawn_capture(source, settings, ex_tx, &ledger, &stop_capture)?;
    let replays = tokio::spawn(shadow.run(ex_rx));
    if let Some(t) = tap.as_mut() {
        t.attach()?;
        tracing::info!(iface = %t.iface(), "tap attached");
    }
    ready.store(true, Ordering::SeqCst);
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut watchdog_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);

    let egress = EgressReports::new(
        fence.as_mut().and_then(|f| f.guard.take_events()),
        fence.as_mut().and_then(|f| f.sink_rx.take()),
        fence.as_ref().map(|f| f.probe_pid).unwrap_or(0),
        masker,
    );
    let applied_ppm = desired_ppm.load(Ordering::SeqCst);
    Ok(Running {
        dashboard,
        host,
        run_id,
        ledger,
        metrics,
        live,
        store,
        sampler,
        criteria,
        snapshot,
        run_view,
        ready,
        desired_ppm,
        applied_ppm,
        tap,
        kernel: KernelCounters::default(),
        capture,
        stop_capture,
        replays,
        writer,
        egress,
        retention,
        schedule: Schedule::new(Instant::now(), duration, retention.enabled()),
        watchdog,
        fence,
        unfenced,
        stop_dashboard,
    })
}

/// Fences the candidate (or, with `--no-egress-guard`, starts it unfenced), then waits
/// until it, and the secondary, accept connections.
async fn fence_candidate(
    fencing: &Fencing,
    run_id: &str,
    secrets: &[PathBuf],
    replay: &ReplayConfig,
    secondary: Option<&ReplayConfig>,
) -> anyhow::Result<(Option<Fence>, Option<ChildGuard>)> {
    let (fence, unfenced, patience) = match fencing {
        Fencing::Off(cfg) => {
            tracing::warn!(
                "--no-egress-guard: the candidate's outbound network is NOT fenced; its side effects are real"
            );
            (None, start_unfenced(cfg)?, patience(cfg))
        }
        Fencing::Guard(cfg) => (
            Some(Fence::setup(cfg, run_id, secrets).await?),
            None,
            patience(cfg),
        ),
    };
    wait_reachable(replay.target.addr, patience).await?;
    if let Some(s) = secondary {
        wait_reachable(s.target.addr, Duration::from_secs(3))
            .await
            .context("--secondary")?;
    }
    Ok((fence, unfenced))
}

/// The dashboard, API and `/metrics` listener; it stops when the sender is used or
/// dropped.
async fn open_dashboard(
    cfg: ServeConfig,
    state: ServeState,
) -> anyhow::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let bound = serve::serve(cfg, state, async move {
        let _ = stopped.await;
    })
    .await?;
    eprintln!("dashboard: http://{bound}/   metrics: http://{bound}/metrics");
    Ok((bound, stop))
}

/// A candidate we start gets longer to come up.
fn patience(cfg: &FenceConfig) -> Duration {
    if cfg.command().is_some() {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(3)
    }
}

async fn open_store(url: &StoreUrl, text: &str) -> anyhow::Result<Arc<Store>> {
    if let StoreUrl::Sqlite(path) = url
        && let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = Store::open(url, StoreOptions::default())
        .await
        .with_context(|| format!("opening the store {text}"))?;
    Ok(Arc::new(store))
}

/// Live sample-rate control (dashboard POST); the kernel's pre-sampling follows when the
/// sticky key is the client address.
fn sample_control(sampler: &Arc<Sampler>, desired_ppm: &Arc<AtomicU32>) -> serve::SampleControl {
    let (sampler, desired_ppm) = (sampler.clone(), desired_ppm.clone());
    Arc::new(move |pct: f64| {
        sampler.set_percent(pct).map_err(|e| e.to_string())?;
        desired_ppm.store(sampler.kernel_ppm().unwrap_or(PPM_ALL), Ordering::SeqCst);
        tracing::info!(percent = pct, "sample rate changed");
        Ok(())
    })
}

fn run_view(
    input: &Input,
    host: &str,
    run_id: &str,
    replay: &ReplayConfig,
    sample_percent: f64,
) -> RunView {
    let (mode, iface, ports) = match input {
        Input::Live { tap, .. } => ("live", tap.iface.clone(), tap.ports.clone()),
        Input::File { path, ports, .. } => ("offline", path.display().to_string(), ports.clone()),
    };
    RunView {
        host: host.to_string(),
        run_id: run_id.to_string(),
        mode: mode.into(),
        candidate: replay.target.url.clone(),
        iface,
        ports,
        started_unix_ms: crate::clock::unix_ms(),
        sample_percent,
    }
}

type CaptureParts = (Source, Option<Tap>, CaptureSettings, Option<Duration>);

/// The capture's source (the tap loaded, not yet attached) and settings.
fn capture_source(input: Input, limits: Limits, sampler: &Sampler) -> anyhow::Result<CaptureParts> {
    let mut settings = CaptureSettings {
        limits,
        max_connections: 100_000,
        ..Default::default()
    };
    settings.reassembly.max_flows = 200_000;
    Ok(match input {
        Input::Live { mut tap, duration } => {
            tap.sample_ppm = sampler.kernel_ppm().unwrap_or(PPM_ALL);
            let mut t = Tap::load(&tap)?;
            let reader = t
                .take_reader()
                .context("ring buffer reader already taken")?;
            (Source::Live(reader), Some(t), settings, duration)
        }
        Input::File {
            path,
            ports,
            reorder_window,
            ..
        } => {
            settings.reorder_window = reorder_window;
            (Source::File { path, ports }, None, settings, None)
        }
    })
}

/// The capture thread (its own OS thread: nothing async can slow the reader).
fn spawn_capture(
    source: Source,
    settings: CaptureSettings,
    exchanges: mpsc::Sender<capture_loop::Captured>,
    ledger: &Arc<Ledger>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<Result<CaptureFigures, PcapError>>> {
    let figures = Arc::new(Mutex::new(CaptureFigures::default()));
    let (ledger, stop) = (ledger.clone(), stop.clone());
    Ok(std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || capture_loop::run(source, settings, exchanges, ledger, stop, figures))?)
}

/// Checks that the candidate accepts TCP connections (retrying while a candidate we
/// started is coming up).
async fn wait_reachable(addr: SocketAddr, patience: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(_)) => return Ok(()),
            other => {
                if Instant::now() >= deadline {
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    anyhow::bail!(
                        "candidate {addr} is not reachable ({why}); start it first or check --candidate"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Running {
    /// The periodic duties: kernel sample rate and counters, egress reports, the live
    /// card on the dashboard, the ledger and retention in the store, the watchdog.
    pub async fn tick(&mut self, now: Instant) -> Tick {
        self.follow_kernel();
        let attempts = self.egress.ready(now, false);
        self.report_egress(attempts).await;
        let card = self.card_now();
        self.publish(&card);
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
        let status = format!(
            "{}s: seen {} matched {} differed {} candidate errors {} sampled out {} dropped {} in flight {} — {}",
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
        if let Err(e) = self
            .store
            .write_ledger(&self.host, &self.run_id, at, &snapshot, &self.kernel)
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
    /// shape).
    fn card_now(&self) -> ParityCard {
        let snapshot = self.ledger.snapshot();
        let live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        report::build(
            live.card_evidence(&snapshot, &self.kernel),
            &self.criteria,
            &NoiseRule::default(),
        )
    }

    /// What the dashboard shows.
    fn publish(&self, card: &ParityCard) {
        let (verdict, routes, diffs, egress) = report::live_views(card);
        let mut run = self.run_view.clone();
        run.sample_percent = f64::from(self.sampler.ppm()) / 10_000.0;
        let snap = LiveSnapshot {
            run,
            ledger: self.ledger.snapshot(),
            completeness: card.completeness,
            kernel: self.kernel,
            verdict,
            routes,
            diffs,
            egress,
        };
        if let Ok(mut s) = self.snapshot.write() {
            *s = snap;
        }
    }
}

/// What the shutdown deadlines cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Replays were still in flight at their deadline (and were cancelled).
    pub replays_cut: bool,
    /// The store writer still had rows at its deadline (and was cancelled).
    pub store_cut: bool,
    /// Exchanges in flight when the ledger was sealed: `dropped{shutdown_deadline}`.
    pub sealed: u64,
}

/// Lets the replays, then the store writer, finish within their deadlines, cancels what
/// does not, and seals the ledger.
pub async fn drain(
    replays: JoinHandle<()>,
    writer: JoinHandle<()>,
    ledger: &Ledger,
    deadlines: Deadlines,
) -> Drained {
    let replays_cut = !finish_within(replays, deadlines.replays).await;
    if replays_cut {
        tracing::warn!(
            "replays still in flight after {:?}; they are counted as dropped{{shutdown_deadline}}",
            deadlines.replays
        );
    }
    let store_cut = !finish_within(writer, deadlines.store).await;
    if store_cut {
        tracing::warn!(
            "store writer still busy after {:?}; its queued rows are counted as dropped{{shutdown_deadline}}",
            deadlines.store
        );
    }
    // Whatever is still in flight now is cut by the deadline: the identity holds with
    // nothing in flight in the ledger every output reads.
    let sealed = ledger.seal();
    if sealed > 0 {
        tracing::warn!(
            exchanges = sealed,
            "exchanges in flight at the shutdown deadline counted as dropped{{shutdown_deadline}}"
        );
    }
    Drained {
        replays_cut,
        store_cut,
        sealed,
    }
}

/// Whether `task` ended within `limit`; if not, it is cancelled.
async fn finish_within(task: JoinHandle<()>, limit: Duration) -> bool {
    let abort = task.abort_handle();
    if tokio::time::timeout(limit, task).await.is_ok() {
        return true;
    }
    abort.abort();
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::{DropReason, Outcome};

    fn identity_holds(s: &LedgerSnapshot) -> bool {
        s.seen == s.terminal()
    }

    #[test]
    fn the_ledger_is_written_every_two_seconds_and_retention_every_minute() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, None, true);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let first = s.due(at(500));
        assert!(!first.write_ledger);
        assert!(first.retention, "retention runs at the first tick");
        assert!(s.due(at(2_000)).write_ledger);
        assert!(!s.due(at(2_500)).write_ledger);
        assert!(s.due(at(4_000)).write_ledger);
        assert!(!s.due(at(59_000)).retention);
        assert!(s.due(at(60_500)).retention);
        assert!(!s.due(at(61_000)).retention);
    }

    #[test]
    fn retention_is_never_due_without_a_limit() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, None, false);
        for secs in [0, 1, 60, 3600] {
            assert!(!s.due(t0 + Duration::from_secs(secs)).retention);
        }
    }

    #[test]
    fn the_duration_ends_the_run_once_elapsed() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, Some(Duration::from_secs(60)), false);
        assert!(!s.due(t0 + Duration::from_secs(59)).duration_reached);
        assert!(s.due(t0 + Duration::from_secs(60)).duration_reached);
        let mut forever = Schedule::new(t0, None, false);
        assert!(
            !forever
                .due(t0 + Duration::from_secs(86_400))
                .duration_reached
        );
    }

    #[test]
    fn stop_reasons_read_as_before() {
        assert_eq!(StopReason::EndOfInput.as_str(), "end of input");
        assert_eq!(StopReason::Duration.as_str(), "--duration");
        assert_eq!(StopReason::Signal("SIGTERM").as_str(), "SIGTERM");
    }

    fn short() -> Deadlines {
        Deadlines {
            replays: Duration::from_millis(20),
            store: Duration::from_millis(20),
        }
    }

    #[tokio::test]
    async fn at_the_deadline_what_is_in_flight_is_counted_and_nothing_stays_in_flight() {
        let ledger = Ledger::default();
        ledger.saw(5);
        ledger.record(Outcome::Matched);
        ledger.record(Outcome::Differed);
        ledger.record(Outcome::SampledOut);
        // Replays and a store writer that never finish.
        let replays = tokio::spawn(std::future::pending::<()>());
        let writer = tokio::spawn(std::future::pending::<()>());
        let drained = drain(replays, writer, &ledger, short()).await;
        assert_eq!(
            drained,
            Drained {
                replays_cut: true,
                store_cut: true,
                sealed: 2
            }
        );
        let s = ledger.snapshot();
        assert_eq!(s.count(Outcome::Dropped(DropReason::ShutdownDeadline)), 2);
        assert_eq!(s.in_flight(), 0);
        assert!(identity_holds(&s), "{s:?}");
    }

    #[tokio::test]
    async fn stages_that_finish_in_time_are_not_cut() {
        let ledger = Arc::new(Ledger::default());
        ledger.saw(2);
        let (l1, l2) = (ledger.clone(), ledger.clone());
        let replays = tokio::spawn(async move { l1.record(Outcome::Matched) });
        let writer = tokio::spawn(async move { l2.record(Outcome::Differed) });
        let deadlines = Deadlines {
            replays: Duration::from_secs(30),
            store: Duration::from_secs(30),
        };
        let drained = drain(replays, writer, &ledger, deadlines).await;
        assert_eq!(drained, Drained::default());
        let s = ledger.snapshot();
        assert_eq!((s.matched, s.differed, s.drops()), (1, 1, 0));
        assert!(identity_holds(&s), "{s:?}");
    }

    #[tokio::test]
    async fn a_store_writer_cut_at_its_deadline_leaves_its_rows_as_shutdown_deadline() {
        let ledger = Arc::new(Ledger::default());
        ledger.saw(3);
        let l = ledger.clone();
        // Replays end in time (one exchange dropped on the way); the writer never does.
        let replays = tokio::spawn(async move {
            l.record(Outcome::Dropped(DropReason::ReplayQueueFull));
        });
        let writer = tokio::spawn(std::future::pending::<()>());
        let drained = drain(replays, writer, &ledger, short()).await;
        assert!(!drained.replays_cut);
        assert!(drained.store_cut);
        assert_eq!(drained.sealed, 2);
        let s = ledger.snapshot();
        assert_eq!(s.count(Outcome::Dropped(DropReason::ShutdownDeadline)), 2);
        assert_eq!(s.count(Outcome::Dropped(DropReason::ReplayQueueFull)), 1);
        assert!(identity_holds(&s), "{s:?}");
    }

    /// A candidate on loopback: answers every request head with `{}`, or (`answer` off)
    /// accepts and never answers.
    async fn candidate(answer: bool) -> SocketAddr {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the candidate");
        let addr = listener.local_addr().expect("candidate address");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            if answer {
                                let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                                if conn.write_all(reply).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// A plan replaying a golden capture (50 GETs on 50 connections, one lane each) as
    /// fast as the candidate takes it,
    /// unfenced, into a SQLite store in `dir`.
    fn plan(dir: &std::path::Path, candidate: SocketAddr, timeout: Duration) -> Plan {
        use crate::{
            app::fence::CandidateSource,
            compare::CompareConfig,
            guard::limits::CandidateLimits,
            mask::{MaskConfig, MaskKey},
            replay::{RewriteRules, parse_candidate_url},
        };
        let key = MaskKey::from_bytes(&[7u8; 32]).expect("key");
        let masker = Masker::new(MaskConfig::with_defaults(key)).expect("masker");
        let replay = ReplayConfig {
            target: parse_candidate_url(&format!("http://{candidate}")).expect("url"),
            rules: RewriteRules {
                host: None,
                id_header: "X-Mirror-Id".into(),
                shadow_header: "X-Mirror-Shadow".into(),
            },
            concurrency: 64,
            timeout,
            rate_per_s: None,
            limits: Limits::default(),
        };
        Plan {
            input: Input::File {
                path: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../tests/golden/concurrent.pcap"),
                ports: Vec::new(),
                reorder_window: 0,
                speed: Speed::Max,
            },
            sampler: Arc::new(Sampler::new(SampleConfig::default()).expect("sampler")),
            masker: Arc::new(masker),
            comparator: Comparator::new(CompareConfig::default()).expect("comparator"),
            templater: Arc::new(RouteTemplater::new(&[]).expect("routes")),
            criteria: Criteria::default(),
            criteria_text: String::new(),
            replay,
            secondary: None,
            replay_raw: false,
            limits: Limits::default(),
            store: StoreUrl::Sqlite(dir.join("m.db")),
            store_text: "m.db".into(),
            retention: Retention::default(),
            serve: ServeConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                token: None,
            },
            fencing: Fencing::Off(FenceConfig {
                candidate: CandidateSource::External,
                identity: None,
                netns: None,
                limits: CandidateLimits {
                    memory_bytes: None,
                    cpu_percent: None,
                    pids: None,
                },
                allow_egress: Vec::new(),
                egress_sink: None,
                allow_dns: None,
                allow_unix: Vec::new(),
            }),
            secrets: Vec::new(),
            sample_percent: 100.0,
            host: "h".into(),
            run_id: "r".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_capture_file_run_ends_by_itself_with_every_exchange_compared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = candidate(true).await;
        let mut running = start(plan(dir.path(), addr, Duration::from_secs(30)))
            .await
            .expect("start");
        // Bounded: the file holds 50 exchanges.
        let mut stop = None;
        for _ in 0..600 {
            stop = running.tick(Instant::now()).await.stop;
            if stop.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(stop, Some(StopReason::EndOfInput));
        let end = running
            .shutdown(Deadlines::for_replay_timeout(Duration::from_secs(30)))
            .await
            .expect("shutdown");
        assert_eq!(end.drained, Drained::default(), "nothing cut");
        let s = &end.ledger;
        assert_eq!(s.seen, 50, "{s:?}");
        assert_eq!(s.matched + s.differed, 50, "{s:?}");
        assert!(identity_holds(s), "{s:?}");
        // The card is drawn from the store: it counts what the ledger counted.
        assert_eq!(end.card.accounting.seen, 50);
        assert_eq!(end.card.accounting.in_flight, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_while_the_candidate_hangs_cuts_the_replays_at_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = candidate(false).await;
        let mut running = start(plan(dir.path(), addr, Duration::from_secs(120)))
            .await
            .expect("start");
        for _ in 0..600 {
            running.tick(Instant::now()).await;
            if running.ledger().seen == 50 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let deadlines = Deadlines {
            replays: Duration::from_millis(300),
            store: Duration::from_secs(30),
        };
        let end = running.shutdown(deadlines).await.expect("shutdown");
        let s = &end.ledger;
        assert_eq!(s.seen, 50, "{s:?}");
        assert!(end.drained.replays_cut);
        let cut = s.count(Outcome::Dropped(DropReason::ShutdownDeadline));
        assert!(cut > 0, "{s:?}");
        assert_eq!(end.drained.sealed, cut);
        assert_eq!(s.matched + s.differed, 0, "the candidate never answered");
        assert_eq!(s.in_flight(), 0);
        assert!(identity_holds(s), "{s:?}");
        assert_eq!(end.card.accounting.in_flight, 0);
        assert_eq!(end.card.accounting.seen, 50);
    }
}
